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
    jobs.ingest(root / "store", IngestParams(sources=[str(root / "case")], batch="b0"))
    return root / "store"


def _fit(store, descriptor, release_bytes, monkeypatch, tmp_path):
    lines = []
    monkeypatch.setattr(fitmod, "RELEASE_BYTES", release_bytes)
    with dask.config.set(scheduler="threads"):  # as `vclust fit` runs a small fit: here
        model = jobs.fit(store, FitParams(descriptor=descriptor, k_range="3:5", seed=0),
                         say=lines.append)
    out = tmp_path / f"m{release_bytes}-{descriptor.replace('*', 'x')}"
    jobs.save_model(model, out)
    return Model.load(out), lines


@pytest.mark.parametrize("descriptor", ["osnet", "vdc_type+vdc_color*2"])
def test_freed_rows_give_the_same_model(store, descriptor, monkeypatch, tmp_path):
    kept, kept_lines = _fit(store, descriptor, 2**62, monkeypatch, tmp_path)
    freed, freed_lines = _fit(store, descriptor, 0, monkeypatch, tmp_path)
    assert any(m.startswith("descriptor rows freed") for m in freed_lines), freed_lines
    assert not any(m.startswith("descriptor rows freed") for m in kept_lines), kept_lines
    # rows to be freed: the reference rows are projected before the preprocessing starts
    order = [next(i for i, m in enumerate(freed_lines) if m.startswith(p))
             for p in ("outliers: reference rows projected", "preprocessed")]
    assert order == sorted(order), freed_lines
    assert not any(m.startswith("outliers: reference rows projected") for m in kept_lines)
    # the silhouette's last bits move with the BLAS threads of the moment (the outlier
    # reference, prepared on another thread, sets them process-wide): 1e-10, as between two fits
    # of the same rows keeping their rows
    for f, k in zip(freed.info["metrics"], kept.info["metrics"]):
        assert f.pop("algorithm") == k.pop("algorithm")
        assert f == pytest.approx(k, rel=1e-8, abs=1e-12)
    np.testing.assert_array_equal(freed.clusterer.cluster_centers_, kept.clusterer.cluster_centers_)
    np.testing.assert_array_equal(freed.outliers.ref_rows_, kept.outliers.ref_rows_)
    assert freed.outliers.threshold_z_ == kept.outliers.threshold_z_
    # every row labelled and scored by both models alike (the scorer reads the raw rows too)
    st = Store.open(store)
    sets = {d: st.descriptors(d) for d in kept.descriptors}
    with dask.config.set(scheduler="threads"):
        a, b = (dask.compute(*m.apply(sets, reasons=True)) for m in (kept, freed))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
