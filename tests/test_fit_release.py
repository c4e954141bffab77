"""A fit frees the descriptor rows once they are reduced and the outlier reference is prepared
(``jobs.fit.RELEASE_BYTES``; a wide set's peak memory, benchmarks/RESULTS.md): the model it
makes is the one a fit keeping them makes, row for row and score for score."""

import dask
import numpy as np
import pytest

from vclust.jobs import fit as fitmod
from vclust.jobs import steps as jobs
from vclust.jobs.params import FitParams, IngestParams
from vclust.model.bundle import Model
from vclust.storage.store import Store
from vclust.synth import generate_case


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    generate_case(root / "case", n_rows=1500, seed=11, images=False)
    # chunks of 500 rows: a fit that streams them reads three chunks into one block
    jobs.ingest(root / "store", IngestParams(sources=[str(root / "case")], batch="b0",
                                             chunk_rows=500))
    return root / "store"


_STREAMS = fitmod._streams


def _fit(store, descriptor, release_bytes, monkeypatch, tmp_path, stream=False):
    """A fit in this process; ``stream``: large rows (over ``release_bytes``) read from the
    store on each pass (as `vclust fit` does from a local uncompressed store), else into memory
    and freed once reduced (as from a compressed or remote store)."""
    lines = []
    monkeypatch.setattr(fitmod, "RELEASE_BYTES", release_bytes)
    monkeypatch.setattr(fitmod, "_streams", _STREAMS if stream else lambda *a: None)
    with dask.config.set(scheduler="threads"):  # as `vclust fit` runs a small fit: here
        model = jobs.fit(store, FitParams(descriptor=descriptor, k_range="3:5", seed=0),
                         say=lines.append)
    out = tmp_path / f"m{release_bytes}-{int(stream)}-{descriptor.replace('*', 'x')}"
    jobs.save_model(model, out)
    return Model.load(out), lines


@pytest.mark.parametrize("descriptor", ["osnet", "vdc_type+vdc_color*2"])
def test_freed_rows_give_the_same_model(store, descriptor, monkeypatch, tmp_path):
    kept, kept_lines = _fit(store, descriptor, 2**62, monkeypatch, tmp_path)
    freed, freed_lines = _fit(store, descriptor, 0, monkeypatch, tmp_path)
    streamed, streamed_lines = _fit(store, descriptor, 0, monkeypatch, tmp_path, stream=True)
    assert any(m.startswith("descriptor rows freed") for m in freed_lines), freed_lines
    assert not any(m.startswith("descriptor rows freed") for m in kept_lines), kept_lines
    assert not any(m.startswith("streaming") for m in kept_lines + freed_lines)
    assert any(m.startswith("streaming") for m in streamed_lines), streamed_lines
    # streamed rows are not held, so neither freed nor waited for before the preprocessing
    assert not any(m.startswith(("descriptor rows freed", "outliers: reference rows projected"))
                   for m in streamed_lines), streamed_lines
    # rows to be freed: the reference rows are projected before the preprocessing starts
    order = [next(i for i, m in enumerate(freed_lines) if m.startswith(p))
             for p in ("outliers: reference rows projected", "preprocessed")]
    assert order == sorted(order), freed_lines
    assert not any(m.startswith("outliers: reference rows projected") for m in kept_lines)
    # every metric to the bit: the fit holds BLAS at one thread throughout, so its sums do not
    # depend on when the outlier thread, which sets it process-wide, prepares
    for other in (freed, streamed):
        assert other.info["metrics"] == kept.info["metrics"]
        np.testing.assert_array_equal(other.clusterer.cluster_centers_,
                                      kept.clusterer.cluster_centers_)
        np.testing.assert_array_equal(other.outliers.ref_rows_, kept.outliers.ref_rows_)
        assert other.outliers.threshold_z_ == kept.outliers.threshold_z_
    # every row labelled and scored by the models alike (the scorer reads the raw rows too)
    st = Store.open(store)
    sets = {d: st.descriptors(d) for d in kept.descriptors}
    with dask.config.set(scheduler="threads"):
        a, b, c = (dask.compute(*m.apply(sets, reasons=True)) for m in (kept, freed, streamed))
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


@pytest.mark.parametrize("descriptor", ["osnet", "vdc_type+vdc_color*2"])
def test_the_outlier_reference_is_prepared_once_from_the_rows_read(store, descriptor,
                                                                    monkeypatch, tmp_path):
    """A fit in its own process prepares the outlier reference from the numpy rows it read
    (while dask.array and pynndescent import) and fits on dask views of those rows: the scorer
    takes them for the rows it prepared on, and does not gather, project and query again."""
    from vclust.numerics.outliers import OutlierScorer

    calls = []
    real = OutlierScorer.prepare

    def counted(self, raw, *a, **kw):
        calls.append(type(raw).__name__ if not isinstance(raw, dict)
                     else {k: type(v).__name__ for k, v in raw.items()})
        return real(self, raw, *a, **kw)

    monkeypatch.setattr(OutlierScorer, "prepare", counted)
    _fit(store, descriptor, 2**62, monkeypatch, tmp_path)
    n_sets = len(descriptor.split("+"))
    assert calls == [("ndarray" if n_sets == 1 else
                      {d.split("*")[0]: "ndarray" for d in descriptor.split("+")})], calls


def test_rows_held_are_the_prepared_rows_only_when_they_share_their_memory():
    from vclust.jobs.fit import _blocks_of, as_blocks
    from vclust.numerics.outlier_rows import same_rows_held

    x = np.random.default_rng(0).random((3000, 6)).astype(np.float32)
    views = _blocks_of(x, 500, "held-views")
    assert views.numblocks == (6, 1)
    assert same_rows_held(x, views) and same_rows_held(x, x)
    assert same_rows_held(x, as_blocks({"a": x})["a"])  # the blocks `vclust fit` makes
    assert not same_rows_held(x, _blocks_of(x[:2500], 500, "fewer"))  # a part of the rows
    assert not same_rows_held(x.copy(), views)  # equal rows, other memory
    assert not same_rows_held(x[:2000], as_blocks({"a": x[:2000].copy()})["a"])
    assert same_rows_held({"a": x, "b": x}, {"a": views, "b": views})
    assert not same_rows_held({"a": x}, {"a": views, "b": views})
    assert not same_rows_held(x, dask.array.from_array(x, chunks=500))  # copied blocks


_FITS = r"""
import hashlib, sys, dask
from vclust.jobs import steps as jobs
from vclust.jobs.params import FitParams, IngestParams
case, store, out, ingest_first = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if ingest_first:  # an ingest in the same process first, as `vclust run` and a notebook do
    jobs.ingest(out, IngestParams(sources=[case], batch="b0"))
    store = out
for descriptor in sys.argv[5:]:
    with dask.config.set(scheduler="threads"):  # as `vclust fit` runs a small fit: here
        m = jobs.fit(store, FitParams(descriptor=descriptor, k_range="3:5", seed=0))
    parts = (m.preprocess.components_, m.clusterer.cluster_centers_, m.outliers.ref_rows_,
             m.outliers.projection_.components_)
    print(descriptor, hashlib.sha256(b"".join(p.tobytes() for p in parts)).hexdigest())
"""


def test_a_fit_gives_the_same_bits_whatever_the_blas_threads_and_the_timing(store, tmp_path):
    """OpenBLAS's thread count is one setting for the whole process, and the outlier thread
    limited it to one while it prepared: a fit's own products and eigendecomposition summed in
    another order when they ran outside that moment. With the reference index in the cache
    (its prepare takes a moment) the same rows gave other components after an ingest in the
    same process than in a fresh one. The fit now holds BLAS at one thread throughout; the
    fits below, at two BLAS threads (the default on two cores; forced, so that a one-core
    machine tests it too) and at one, make the same model to the bit. efficientnet-b7's 2,560
    columns take scipy's eigendecomposition (``preprocess._leading_eigh``), on scipy's own
    OpenBLAS, which arrives during the fit: the outlier thread's limit on it was ignored by
    threadpoolctl (another thread held one), so ``blocks.one_blas_thread`` sets it itself."""
    import os
    import subprocess
    import sys

    def start(threads, ingest_first, *descriptors):
        env = {k: v for k, v in os.environ.items()
               if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env["OPENBLAS_NUM_THREADS"] = str(threads)
        # an index cache, as a user has: a fit whose reference index is in it prepares its
        # outliers in a moment, and its thread's limit ended in the middle of the reduction
        env["VCLUST_CACHE_DIR"] = str(tmp_path / "cache")
        out = tmp_path / f"store-{threads}-{int(ingest_first)}"
        return subprocess.Popen([sys.executable, "-c", _FITS, str(store.parent / "case"),
                                 str(store), str(out), str(int(ingest_first)), *descriptors],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)

    def models(proc):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        return [line.split() for line in stdout.splitlines()
                if line.startswith(("osnet ", "efficientnet-b7 "))]

    # at one BLAS thread (as `make test` runs), filling the index cache, beside the first fit
    # of a fresh process at two; then, alone, a fit after an ingest and another in the same
    # process, their reference index in the cache (beside other processes its timing hid it)
    procs = [start(1, False, "osnet", "efficientnet-b7"), start(2, False, "efficientnet-b7")]
    one, wide = (models(p) for p in procs)
    after_ingest = models(start(2, True, "osnet", "osnet"))
    assert [d for d, _ in after_ingest] == ["osnet", "osnet"], after_ingest
    assert [d for d, _ in one] == ["osnet", "efficientnet-b7"], one
    assert after_ingest[0] == after_ingest[1] == one[0]
    assert wide == [one[1]]
