"""Partitioned Parquet labels, CSV export, the model registry and drift reports."""

import subprocess
import sys
import threading
import time

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from vclust.errors import InputError
from vclust.storage.export import export_csv
from vclust.storage.labels import list_partitions, read_labels, write_batch
from vclust.numerics.drift import drift_report, population_stability_index, reference_profile
from vclust.report.drift import write_report
from vclust.model.registry import Registry


def frame(start, n, cluster=0):
    rows = np.arange(start, start + n)
    return pd.DataFrame({"image_id": [f"veriwild/1/{r:06d}.jpg" for r in rows], "row": rows,
                         "cluster": np.full(n, cluster, np.int32), "distance": np.ones(n, np.float32),
                         "outlier_score": np.linspace(0, 1, n).astype(np.float32),
                         "is_outlier": rows % 10 == 0})


def test_round_trip_and_readable_without_vclust(tmp_path, local_client):
    parts = [dask.delayed(frame)(0, 100), dask.delayed(frame)(100, 50)]
    assert write_batch(tmp_path, "m1", "b1", parts) == 150
    write_batch(tmp_path, "m1", "b2", [frame(150, 30)])
    got = read_labels(tmp_path, model="m1").sort_values("row")
    assert len(got) == 180 and set(got["batch"]) == {"b1", "b2"}
    p = pd.read_parquet(tmp_path)
    assert len(p) == 180 and p["cluster"].dtype == np.int32 and p["is_outlier"].dtype == bool
    assert set(p["batch"].astype(str)) == {"b1", "b2"}
    d = dd.read_parquet(str(tmp_path / "model=m1")).compute()
    assert len(d) == 180 and str(d["distance"].dtype) == "float32"
    t = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert t.num_rows == 180 and str(t.schema.field("row").type) == "int64"


def test_rewriting_a_batch_leaves_one_copy(tmp_path):
    write_batch(tmp_path, "m1", "b1", [frame(0, 100)])
    write_batch(tmp_path, "m1", "b1", [frame(0, 60), frame(60, 40, cluster=3)])
    got = read_labels(tmp_path)
    assert len(got) == 100 and got["row"].is_unique and (got.loc[got.row >= 60, "cluster"] == 3).all()
    assert [p["batch"] for p in list_partitions(tmp_path)] == ["b1"]


SLOW_WRITER = """
import sys, time, numpy as np, pandas as pd
sys.path.insert(0, {repo!r})
from vclust.storage import labels
orig = labels._write_part
def slow(frame, path):
    n = orig(frame, path)
    print("part", flush=True)
    time.sleep(0.3)
    return n
labels._write_part = slow
from tests.test_labels import frame
labels.write_batch({out!r}, "m1", "b1", [frame(i * 10, 10, cluster=7) for i in range(100)])
"""


def test_killed_writer_leaves_previous_partition(tmp_path):
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    write_batch(tmp_path, "m1", "b1", [frame(0, 100)])
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER.format(repo=repo, out=str(tmp_path))],
                            stdout=subprocess.PIPE, text=True, cwd=repo)
    for _ in range(3):
        assert proc.stdout.readline().startswith("part")
    proc.kill()
    proc.wait()
    got = read_labels(tmp_path)
    assert len(got) == 100 and (got["cluster"] == 0).all()  # the previous, complete partition
    write_batch(tmp_path, "m1", "b1", [frame(0, 100, cluster=2)])
    assert not any((tmp_path / ".staging").iterdir()) if (tmp_path / ".staging").exists() else True
    assert (read_labels(tmp_path)["cluster"] == 2).all()


def test_interrupted_swap_is_restored(tmp_path):
    import os

    write_batch(tmp_path, "m1", "b1", [frame(0, 10)])
    (tmp_path / ".trash").mkdir()
    os.replace(tmp_path / "model=m1" / "batch=b1", tmp_path / ".trash" / "x-model=m1--batch=b1")
    assert len(read_labels(tmp_path)) == 10


def test_export_csv(tmp_path):
    write_batch(tmp_path / "l", "m1", "b2", [frame(50, 50)])
    write_batch(tmp_path / "l", "m1", "b1", [frame(0, 50)])
    n = export_csv(tmp_path / "l", tmp_path / "out.csv")
    got = pd.read_csv(tmp_path / "out.csv")
    assert n == 100 and list(got.columns) == ["path", "image_id", "model", "cluster",
                                            "is_outlier", "outlier_score", "outlier_reason",
                                            "outlier_reasons"]
    assert got["path"].is_unique and got["path"].iloc[0].endswith("000000.jpg")
    # labels without the delivered spelling (frames written before it): path is the id
    assert (got["path"] == got["image_id"]).all() and set(got["model"]) == {"m1"}
    write_batch(tmp_path / "l", "m2", "b1", [frame(0, 50)])
    with pytest.raises(InputError, match="several models"):
        export_csv(tmp_path / "l", tmp_path / "out2.csv")
    assert export_csv(tmp_path / "l", tmp_path / "out2.csv", model="m2") == 50
    with pytest.raises(InputError, match="cannot name a partition"):
        write_batch(tmp_path / "l", "../x", "b1", [frame(0, 1)])


def test_registry_ids_sort_and_current_switches_atomically(tmp_path):
    reg = Registry(tmp_path)
    ids = []
    for _ in range(3):
        st = reg.stage()
        (st / "manifest.json").write_text("{}")
        ids.append(reg.register(st))
        time.sleep(1.05)
    assert ids == sorted(ids) == reg.list() and reg.current() == ids[-1]
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(reg.current())

    t = threading.Thread(target=reader)
    t.start()
    for i in range(300):
        reg.set_current(ids[i % 3])
    stop.set()
    t.join()
    assert seen <= set(ids)  # never None, never partial
    with pytest.raises(InputError, match="no model 'nope'"):
        reg.set_current("nope")


def test_psi_and_drift_alerts(tmp_path):
    assert population_stability_index([0.5, 0.5], [0.5, 0.5]) == 0
    hand = (0.7 - 0.5) * np.log(0.7 / 0.5) + (0.3 - 0.5) * np.log(0.3 / 0.5)
    assert population_stability_index([0.5, 0.5], [0.7, 0.3]) == pytest.approx(hand)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 4000)
    dist = rng.random(4000)
    flags = rng.random(4000) < 0.02
    profile = reference_profile(labels, dist, flags, 4)
    same = pd.DataFrame({"cluster": labels[:1000], "distance": dist[:1000], "is_outlier": flags[:1000]})
    assert drift_report(profile, same)["alerts"] == []
    shifted = same.assign(cluster=np.where(rng.random(1000) < 0.8, 0, same["cluster"]))
    rep = drift_report(profile, shifted, {"psi": 0.2})
    assert rep["psi"] > 0.2 and rep["alerts"] == ["psi"]
    noisy = same.assign(is_outlier=rng.random(1000) < 0.1)
    assert drift_report(profile, noisy)["alerts"] == ["outlier_rate_ratio"]
    with pytest.raises(ValueError, match="unknown drift threshold"):
        drift_report(profile, same, {"psii": 1})
    j, t = write_report(rep, tmp_path)
    assert t.read_text().startswith("DRIFT: psi")
