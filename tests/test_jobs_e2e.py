"""End to end on a real LocalCluster: synth -> ingest -> fit -> label -> export, the model bundle,
and the nightly job (drift exit codes, idempotence)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from vclust.jobs import steps as jobs
from vclust.errors import InputError
from vclust.storage.labels import read_labels
from vclust.model.bundle import Model
from vclust.jobs.params import FitParams
from vclust.storage.ingest import ingest
from vclust.synth import generate_case, read_truth

VCLUST = [sys.executable, "-m", "vclust.cli"]
SETS = ("vdc_color", "vdc_type")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 4,000-row synthetic case cut into batches: fit rows, a like-for-like batch, and a
    batch drawn from two colours only (shifted cluster shares)."""
    root = tmp_path_factory.mktemp("case")
    generate_case(root / "case", n_rows=4000, seed=3)
    truth = read_truth(root / "case")
    arrays = {s: pd.read_pickle(root / "case" / "descriptors" / f"{s}.pickle") for s in SETS}
    ids = truth["path"].to_numpy()
    inlier = (truth["outlier_kind"].fillna("") == "").to_numpy()
    rows = {"fit": np.arange(0, 2500), "same": np.arange(2500, 3200)}
    top2 = truth.loc[inlier, "colour"].value_counts().index[:2]
    rows["drifted"] = np.flatnonzero(truth["colour"].isin(top2).to_numpy() & inlier)[-700:]
    rows["drifted"] = rows["drifted"][rows["drifted"] >= 3200]
    batches = {}
    for name, idx in rows.items():
        d = root / name
        d.mkdir()
        for s in SETS:
            np.save(d / f"{s}.npy", arrays[s][idx])
        pd.DataFrame({"paths": ids[idx]}).to_csv(d / "ids.csv", index=False)
        batches[name] = [str(d / f"{s}.npy") for s in SETS] + ["--ids", str(d / "ids.csv")]
    return {"root": root, "truth": truth, "batches": batches, "rows": rows, "arrays": arrays}


def _ingest(store, case, name):
    files = [f for f in case["batches"][name] if f.endswith(".npy")]
    return ingest(store, files, ids_csv=case["batches"][name][-1], batch=name)


def test_fit_label_export_and_bundle(case, local_client, tmp_path):
    store = tmp_path / "store"
    _ingest(store, case, "fit")
    _ingest(store, case, "same")
    model = jobs.fit(store, FitParams(descriptor="vdc_color", k_range="4:6", seed=0))
    table = model.info["metrics"]
    assert [r["k"] for r in table] == [4, 5, 6]
    assert model.info["chosen_k"] in (4, 5, 6)
    path, model_id = jobs.save_model(model, registry=tmp_path / "reg")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["metrics"] == json.loads(json.dumps(table))
    assert not list(path.rglob("*.pkl")) and not list(path.rglob("*.pickle"))

    loaded = jobs.resolve_model(registry=tmp_path / "reg")
    assert loaded.model_id == model_id
    labels_dir = tmp_path / "labels"
    jobs.label(store, loaded, labels_dir, batches=["same"])
    jobs.label(store, loaded, labels_dir, all_batches=True)
    full = read_labels(labels_dir, model=model_id).sort_values("row")
    assert len(full) == 3200 and full["row"].is_unique
    # labels of a batch equal those of the same rows from a full relabel (relabel replaced it)
    again = tmp_path / "labels2"
    jobs.label(store, loaded, again, batches=["same"])
    one = read_labels(again, model=model_id).sort_values("row").reset_index(drop=True)
    same_rows = full[full["row"] >= 2500].reset_index(drop=True)
    pd.testing.assert_frame_equal(one[same_rows.columns], same_rows, check_categorical=False)
    # the saved and reloaded model gives the same labels as the fitted one
    from vclust.storage.store import Store

    x = {"vdc_color": Store.open(store).descriptors("vdc_color")}
    a = model.apply(x)[0].compute()
    b = Model.load(path).apply(x)[0].compute()
    np.testing.assert_array_equal(a, b)
    # a model written by an older format is refused with the fix, not scored differently
    old = tmp_path / "old-model"
    shutil.copytree(path, old)
    manifest["version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="predates this vclust .* fit it again"):
        Model.load(old)

    csv = tmp_path / "out.csv"
    out = subprocess.run(VCLUST + ["export", str(labels_dir), "--csv", str(csv), "--registry",
                                   str(tmp_path / "reg")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    exported = pd.read_csv(csv)
    assert list(exported.columns) == ["path", "image_id", "model", "cluster", "is_outlier",
                                      "outlier_score", "outlier_reason", "outlier_reasons"]
    assert len(exported) == 3200 and exported["path"].is_unique


def _nightly(tmp_path, store, case, batch, refit=False):
    spec = {
        "name": "nightly", "steps": ["ingest", "label", "drift"],
        "store": str(store), "registry": str(tmp_path / "reg"), "labels": str(tmp_path / "labels"),
        "refit": refit,
        "ingest": {"sources": [f for f in case["batches"][batch] if f.endswith(".npy")],
                   "ids": case["batches"][batch][-1], "batch": batch},
        "drift": {"report_dir": str(tmp_path / "drift"), "psi": 0.25},
        "fit": {"descriptor": "vdc_color", "k": 6},
    }
    path = tmp_path / f"nightly-{batch}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_nightly_drift_exit_codes_and_idempotence(case, tmp_path):
    store = tmp_path / "store"
    ingest(store, [f for f in case["batches"]["fit"] if f.endswith(".npy")],
           ids_csv=case["batches"]["fit"][-1], batch="fit")
    run = VCLUST + ["run", "--cluster", str(tmp_path / "local.yaml")]
    (tmp_path / "local.yaml").write_text("kind: local\nn_workers: 2\nthreads_per_worker: 1\n"
                                         "dashboard_address: null\nprocesses: false\n")
    out = subprocess.run(VCLUST + ["fit", str(store), "--descriptor", "vdc_color", "--k", "6",
                                   "--registry", str(tmp_path / "reg"), "--cluster",
                                   str(tmp_path / "local.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr

    same = subprocess.run(run + [str(_nightly(tmp_path, store, case, "same"))],
                          capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stderr
    drifted = subprocess.run(run + [str(_nightly(tmp_path, store, case, "drifted"))],
                             capture_output=True, text=True, timeout=300)
    assert drifted.returncode == 3, drifted.stderr
    report = json.loads(next((tmp_path / "drift").rglob("batch=drifted/*.json")).read_text())
    assert "psi" in report["alerts"]

    # the same night again: nothing changes, same exit code
    def snapshot():
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()
                and "nightly-" not in p.name}

    before = snapshot()
    again = subprocess.run(run + [str(_nightly(tmp_path, store, case, "drifted"))],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 3, again.stderr
    assert snapshot() == before


@pytest.mark.parametrize("algorithm", ["minibatch", "gmm", "bisecting", "agglomerative", "hdbscan"])
def test_each_algorithm_fits_and_labels_a_store(case, tmp_path, algorithm):
    from vclust.storage.store import Store

    store = tmp_path / "store"
    _ingest(store, case, "fit")
    model = jobs.fit(store, FitParams(descriptor="vdc_color", k_range="5:6", algorithm=algorithm),
                     sample_size=1500)
    assert [r["algorithm"] for r in model.info["metrics"]] == [algorithm] * 2
    path = model.save(tmp_path / "m")
    again = Model.load(path)
    x = {"vdc_color": Store.open(store).descriptors("vdc_color")}
    lab, dist, score, flag = (a.compute() for a in again.apply(x))
    np.testing.assert_array_equal(lab, model.apply(x)[0].compute())
    assert len(lab) == 2500 and (dist >= 0).all() and ((score >= 0) & (score <= 1)).all()
    truth = case["truth"].iloc[case["rows"]["fit"]]
    from sklearn.metrics import adjusted_rand_score

    inl = (truth["outlier_kind"] == "").to_numpy()
    assert adjusted_rand_score(truth["colour"].to_numpy()[inl], lab[inl]) > 0.3


def test_hdbscan_noise_rows_are_outliers_with_reason_noise(case, tmp_path):
    """HDBSCAN's noise is kept as evidence: a row whose nearest sample row HDBSCAN left as noise
    is flagged, with reason ``noise`` unless the score flagged it with a reason of its own;
    checked against an exact nearest-neighbour computation on the saved anchors."""
    from sklearn.neighbors import NearestNeighbors

    from vclust.numerics.outliers import REASONS
    from vclust.storage.store import Store

    store = tmp_path / "store"
    _ingest(store, case, "fit")
    # vdc_type: the synthetic set where HDBSCAN leaves about a tenth of the sample as noise
    model = jobs.fit(store, FitParams(descriptor="vdc_type", k=6, algorithm="hdbscan"),
                     sample_size=1500)
    model = Model.load(model.save(tmp_path / "m"))
    x = {"vdc_type": Store.open(store).descriptors("vdc_type")}
    lab, dist, score, flag, reason = (np.asarray(a.compute()) for a in model.apply(x, reasons=True))
    z = np.asarray(model.reduce(x).compute(), dtype=np.float32)
    anchors, noise_anchors = model.clusterer.arrays["anchors"], model.clusterer.arrays["noise_anchors"]
    assert len(noise_anchors) > 0
    nearest = NearestNeighbors(n_neighbors=1).fit(np.concatenate([anchors, noise_anchors]))
    noise = nearest.kneighbors(z, return_distance=False)[:, 0] >= len(anchors)
    assert 0 < noise.sum() < len(z)
    _, score_flag, score_reason = (np.asarray(a.compute()) for a in model.outliers.score(
        model.reduce(x), *model.apply(x)[:2], reasons=True, raw=x["vdc_type"]))
    np.testing.assert_array_equal(flag, score_flag | noise)
    expected = np.where(noise & ~score_flag, REASONS.index("noise"), score_reason)
    np.testing.assert_array_equal(reason, expected)
    assert (lab[noise] >= 0).all()  # noise rows still carry their nearest cluster
    # every reason that fired: the noise bit on every noise row, the score's own terms beside it
    from vclust.numerics.outliers import reason_bit, reason_names

    *_, mask = (np.asarray(a.compute()) for a in model.apply(x, reasons=True, all_reasons=True))
    assert ((mask & reason_bit(REASONS.index("noise"))) > 0).tolist() == noise.tolist()
    both = noise & score_flag
    for i in np.flatnonzero(flag):
        names = reason_names(int(mask[i]), int(reason[i]))
        assert names[0] == REASONS[reason[i]] and ("noise" in names) == bool(noise[i])
    assert not mask[~flag].any()
    if both.any():  # a row the score flagged that is also noise says both
        i = np.flatnonzero(both)[0]
        assert len(reason_names(int(mask[i]), int(reason[i]))) >= 2


def test_label_scores_each_row_block_once(case, tmp_path, monkeypatch):
    """Labelling writes seven columns from one scoring task per row block: each block's outlier
    query runs once (optimised one array at a time, dask gave each of the five outlier arrays
    its own copy of the task, and every block was scored five times). Each block's rows are
    read once and reduced once by the model's preprocessing and once by the scorer's
    projection: the score's inputs (the reduced rows, their clusters and distances, the rows
    as given), optimised one at a time, each fused its own copy of the read and the reduction
    (a 416k-row efficientnet-b7 label read every row 4 times and reduced it 3 times: 28-33 s,
    20 s once). Counted on this process's threads."""
    import dask

    from vclust.numerics.outliers import OutlierScorer
    from vclust.numerics.preprocess import Preprocessor
    from vclust.storage import rawrows
    from vclust.storage.store import Store

    store = tmp_path / "store"
    _ingest(store, case, "fit")
    _ingest(store, case, "same")
    with dask.config.set(scheduler="sync"):
        model = jobs.fit(store, FitParams(descriptor="vdc_color", k=5, seed=0))
        jobs.save_model(model, registry=tmp_path / "reg")
        calls = []
        original = OutlierScorer.score_block

        def counted(self, x, *args, **kwargs):
            calls.append(len(x))
            return original(self, x, *args, **kwargs)

        reads, reduced = [], {}
        read = rawrows.RawRows.read
        reduce, exact = Preprocessor.transform_block, Preprocessor.transform_exact

        def counted_read(self, start, stop, *args, **kwargs):
            reads.append(stop - start)
            return read(self, start, stop, *args, **kwargs)

        def counted_reduce(self, x):
            if len(x):  # (dask's meta calls pass empty blocks)
                reduced.setdefault(id(self), []).append(len(x))
            return reduce(self, x)

        def counted_exact(self, x):  # the scorer's projection (the same bits in any block)
            reduced.setdefault(id(self), []).append(len(x))
            return exact(self, x)

        monkeypatch.setattr(OutlierScorer, "score_block", counted)
        monkeypatch.setattr(rawrows.RawRows, "read", counted_read)
        monkeypatch.setattr(Preprocessor, "transform_block", counted_reduce)
        monkeypatch.setattr(Preprocessor, "transform_exact", counted_exact)
        jobs.label(store, model, tmp_path / "labels", all_batches=True)
    s = Store.open(store)
    blocks = [len(s.descriptors("vdc_color", *s.batch_rows(b)).chunks[0]) for b in ("fit", "same")]
    assert len(calls) == sum(blocks) and sum(calls) == s.n_rows == 3200
    assert len(reads) == sum(blocks) and sum(reads) == 3200  # each block read once
    assert sorted(map(len, reduced.values())) == [sum(blocks)] * 2  # the model's, the scorer's
    assert all(sum(v) == 3200 for v in reduced.values())
    assert len(read_labels(tmp_path / "labels", model=model.model_id)) == 3200


def test_a_second_fit_takes_the_outlier_index_from_the_cache(case, tmp_path):
    """Two `vclust fit` processes on the same rows with the disk cache on: the second takes the
    reference index and its answers from the first's cache entry (and says so), and saves the
    same model: thresholds, normalisation and the index the labelling restores. The second
    imports neither pynndescent nor scikit-learn (python -X importtime lists every import):
    its KMeans (under 64 columns) and its estimators are vclust's, and its index is restored
    only when a query needs it, so it imports no numba either. Neither imports xarray,
    pydata's sparse or scipy.fftpack, which dask.array imports wherever they are installed (the
    test extra installs xarray, dask-ml sparse) and a command never uses
    (jobs.imports.NOT_IMPORTED), nor executes scipy.stats, which scikit-learn imports for a
    helper a command never calls (jobs.imports.DEFERRED)."""
    import importlib.util

    from vclust.model.bundle import Model

    for name in ("xarray", "sparse"):
        assert importlib.util.find_spec(name) is not None, f"{name} is installed here"

    store = tmp_path / "store"
    _ingest(store, case, "fit")
    env = {**os.environ, "VCLUST_CACHE_DIR": str(tmp_path / "cache")}
    runs, imported = [], []
    for i, k in enumerate((6, 8)):  # another k: the index does not depend on the clusters
        out = subprocess.run([sys.executable, "-X", "importtime"] + VCLUST[1:] + [
            "fit", str(store), "--descriptor", "vdc_color", "--k", str(k),
            "--model", str(tmp_path / f"m{i}")],
            capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr
        runs.append(out.stderr)
        modules = {line.rsplit("|", 1)[-1].strip()
                   for line in out.stderr.splitlines() if line.startswith("import time:")}
        # dask.array.core imports xarray, dask.array.chunk_types sparse where installed
        assert {"dask.array.core", "dask.array.chunk_types"} <= modules, i
        # (an import refused as absent still writes its own line: what counts is what it loads)
        assert not [m for m in modules if m.partition(".")[0] == "xarray"
                    or m.startswith("scipy.fftpack.")], i
        assert "Warning" not in out.stderr, i  # numba loads sparse's extension unrefused
        # scikit-learn's import of scipy.stats: the module made, not executed (DEFERRED)
        assert not [m for m in modules if m.startswith("scipy.stats.")], i
        imported.append(modules)
    assert "from the cache" not in runs[0] and "taken from the cache" in runs[1]
    assert int(re.search(r"preprocessed: (\d+) components", runs[1]).group(1)) < 64
    tops = [{m.split(".")[0] for m in modules} for modules in imported]
    assert {"pynndescent", "sklearn"} <= tops[0]  # the first built the index
    assert not {"pynndescent", "sklearn", "numba"} & tops[1], tops[1] & {"numba", "sklearn"}
    assert not [m for m in imported[1] if m.startswith("sparse.")]
    assert list((tmp_path / "cache" / "outlier-index").iterdir())
    first, second = (Model.load(tmp_path / f"m{i}").outliers for i in (0, 1))
    np.testing.assert_array_equal(first.ref_rows_, second.ref_rows_)
    for name in ("knn_norm_", "lof_norm_", "kdist_", "lrd_"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    (p1, a1), (p2, a2) = first.ref_index_.state(), second.ref_index_.state()
    assert p1 == p2
    for key, a in a1.items():
        np.testing.assert_array_equal(a2[key], a, err_msg=key)
