"""Faults tried as a hostile user would (docs/faults.md lists them): concurrent writers, stray
files in the labels, damaged models, bad specs and addresses, a read-only store, a full disk,
old pickles, and dask processes killed mid-run. Real processes, real files; no mocks."""

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = str(Path(__file__).resolve().parents[1])
VCLUST = [sys.executable, "-m", "vclust.cli"]
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_cli(args, timeout=120, **kw):
    return subprocess.run(VCLUST + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=REPO, **kw)


def assert_one_line(out, code, match=None):
    """Exit ``code``, no traceback, and the last stderr line is the one error line."""
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vclust: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-3000:]
    if match is not None:
        import re

        assert re.search(match, errors[0]), errors[0]
    return errors[0]


# --------------------------------------------------------------------------- store lock race

LOCKER = r"""
import os, sys, time
from vclust.errors import StoreLockedError
from vclust.storage.store import store_lock
store, flag = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        with store_lock(store):
            try:
                fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                print("overlap", flush=True)
                time.sleep(0.05)
                continue
            time.sleep(0.05)
            os.close(fd)
            os.unlink(flag)
        print("held", flush=True)
    except StoreLockedError:
        print("refused", flush=True)
"""


def test_store_lock_takeover_never_gives_two_holders(tmp_path):
    """Six processes race to take over a dead writer's lock, 20 times: never two holders."""
    store = tmp_path / "store"
    lock = tmp_path / "store.lock"
    flag = tmp_path / "holder"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, str(store), str(flag)], env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    results = []
    try:
        for _ in range(20):
            lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "since": 0}))
            for p in procs:
                p.stdin.write("go\n")
            for p in procs:
                p.stdin.flush()
            results.append([p.stdout.readline().strip() for p in procs])
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    assert not any("overlap" in r for r in results), results
    assert all(r.count("held") >= 1 for r in results), results
    assert not lock.exists()


# --------------------------------------------------------------------------- labels dir

def label_frame(start, n, cluster=0):
    rows = np.arange(start, start + n)
    return pd.DataFrame({"image_id": [f"img/{r:06d}.jpg" for r in rows], "row": rows,
                         "cluster": np.full(n, cluster, np.int32),
                         "distance": np.ones(n, np.float32),
                         "outlier_score": np.linspace(0, 1, n).astype(np.float32),
                         "is_outlier": rows % 10 == 0})


SLOW_LABEL_RUN = r"""
import sys, time
from vclust import labels
from tests.test_faults import label_frame
out, batch, cluster = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = 0 if batch == "b1" else 1000
orig = labels._write_part
def slow(frame, path):
    n = orig(frame, path)
    print("part", flush=True)
    time.sleep(0.05)
    return n
labels._write_part = slow
labels.write_batch(out, "m1", batch, [label_frame(first + i * 10, 10, cluster) for i in range(20)])
print("done", flush=True)
"""


@pytest.mark.parametrize("second_batch", ["b2", "b1"])
def test_concurrent_label_runs_both_complete(tmp_path, second_batch):
    """A nightly run and a manual relabel write into one labels dir at once: the second's start
    used to clear the first's staging (FileNotFoundError, batch never written)."""
    from vclust.labels import read_labels

    def start(batch, cluster):
        return subprocess.Popen([sys.executable, "-c", SLOW_LABEL_RUN, str(tmp_path), batch,
                                 str(cluster)], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = start("b1", 1)
    assert first.stdout.readline().strip() == "part"  # the first run is writing its parts
    second = start(second_batch, 2)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-2000:] for o in outs]
    got = read_labels(tmp_path, model="m1")
    for batch, part in got.groupby("batch"):
        assert len(part) == 200 and part["row"].is_unique, batch
        assert part["cluster"].nunique() == 1  # one run's complete partition, not a mixture
    assert set(got["batch"]) == {"b1", second_batch}
    staging = tmp_path / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def _stray_cases(labels):
    """(what, how to damage the labels dir) -> the file that must be named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = labels / "model=m1" / "batch=b1"

    def foreign():
        f = part / "other.parquet"
        pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), f)
        return f

    def copied():
        f = part / "part-00000 (copy).parquet"
        f.write_bytes((part / "part-00000.parquet").read_bytes())
        return f

    def copied_batch():
        import shutil

        f = labels / "model=m1" / "batch=b1-copy"
        shutil.copytree(part, f)
        return f / "part-00000.parquet"

    def not_parquet():
        f = part / "part-00009.parquet"
        f.write_text("path,cluster\nimg/1.jpg,3\n")
        return f

    return {"foreign": foreign, "copied": copied, "copied_batch": copied_batch,
            "not_parquet": not_parquet}


@pytest.mark.parametrize("what", ["foreign", "copied", "copied_batch", "not_parquet"])
def test_export_and_readers_refuse_stray_label_files(tmp_path, what):
    from vclust.errors import InputError
    from vclust.labels import export_csv, read_labels, write_batch

    labels = tmp_path / "labels"
    write_batch(labels, "m1", "b1", [label_frame(0, 50), label_frame(50, 50)])
    write_batch(labels, "m1", "b2", [label_frame(100, 30)])
    assert export_csv(labels, tmp_path / "ok.csv") == 130
    bad = _stray_cases(labels)[what]()
    out = run_cli(["export", labels, "--csv", tmp_path / "out.csv"])
    assert_one_line(out, 2, match=str(bad).replace("(", r"\(").replace(")", r"\)"))
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(InputError, match="remove it"):
        read_labels(labels, model="m1")


# --------------------------------------------------------------------------- old pickles

@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_old_protocol_numpy_pickles_are_read_safely(tmp_path, protocol):
    """Protocols 0-2 store bytes as ``_codecs.encode(text, 'latin1')``: that call is allowed,
    with exactly those arguments, and nothing more."""
    from vclust.storage.ingest import ingest
    from vclust.storage.store import Store

    x = np.random.default_rng(protocol).random((40, 6)).astype(np.float32)
    x[0, 0] = 1e-45  # bytes above 0x7f and zeros survive the latin1 text
    (tmp_path / "osnet.pickle").write_bytes(pickle.dumps(x, protocol=protocol))
    assert ingest(tmp_path / "store", [tmp_path / "osnet.pickle"], batch="b0")["rows"] == 40
    got = Store.open(tmp_path / "store").descriptors("osnet").compute()
    np.testing.assert_array_equal(got, x)


class _Evil:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize("protocol", [0, 2])
@pytest.mark.parametrize("payload", ["system", "codecs_other_encoding", "codecs_bytes"])
def test_old_protocol_malicious_pickles_are_still_refused(tmp_path, protocol, payload):
    import codecs

    from vclust.errors import InputError
    from vclust.storage.ingest import ingest

    target = tmp_path / "pwned"
    reduce = {"system": (os.system, (f"touch {target}",)),
              # _codecs.encode with anything but (str, 'latin1') is not a bytes literal
              "codecs_other_encoding": (codecs.encode, ("abc", "rot13")),
              "codecs_bytes": (codecs.encode, (b"abc", "hex"))}[payload]
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps([np.zeros(3), _Evil(reduce)], protocol=protocol))
    with pytest.raises(InputError, match="refused to unpickle"):
        ingest(tmp_path / "store", [evil])
    assert not target.exists() and not (tmp_path / "store").exists()
