"""Outlier scoring: ANN recall, both outlier kinds, invariance, pickling, real descriptors."""

import pickle
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from vclust.numerics.algorithms import fit_algorithm
from vclust.numerics.kmeans import KMeans
from vclust.numerics.outliers import OutlierScorer
from vclust.numerics.preprocess import Preprocessor
from vclust.synth import generate_case, read_truth

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the repo


@pytest.fixture(scope="module")
def synth_reduced(tmp_path_factory):
    """Reduced vdc_type rows of a synthetic case with planted junk and tight groups."""
    root = tmp_path_factory.mktemp("synth")
    generate_case(root, n_rows=10_000, seed=5, outlier_share=0.05)  # >= 2 groups: glare and empty
    truth = read_truth(root)
    x = np.load(root / "descriptors" / "vdc_type.pickle", allow_pickle=True)
    z = Preprocessor().fit(x).transform(x)
    km = KMeans(12, random_state=0).fit(z)
    labels, dist = km.predict_block(z)
    return z, labels, dist, km.cluster_centers_, truth["outlier_kind"].to_numpy()


@pytest.fixture(scope="module")
def fitted(synth_reduced):
    z, labels, dist, centers, _ = synth_reduced
    return OutlierScorer(reference_size=3000, random_state=0).fit(z, labels, dist, centers)


def test_ann_recall_against_exact(synth_reduced, fitted, figure):
    z = synth_reduced[0]
    q = np.arange(0, len(z), 7)
    idx, _ = fitted.neighbours(z[q], fitted.ref_rows_.max() + 1 + q)  # rows not in the reference
    exact = NearestNeighbors(n_neighbors=10).fit(fitted.reference_).kneighbors(z[q])[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact)])
    figure(f"pynndescent reference index: recall@10 = {recall:.3f}")
    assert recall >= 0.9, recall


def test_reference_row_is_not_its_own_neighbour(fitted):
    pos = np.arange(20)
    idx, d = fitted.neighbours(fitted.reference_[pos], fitted.ref_rows_[pos])
    assert not (idx == pos[:, None]).any()
    # the same rows queried as strangers find themselves at distance 0
    idx2, d2 = fitted.neighbours(fitted.reference_[pos], np.full(20, -1))
    assert (idx2[:, 0] == pos).all() and np.allclose(d2[:, 0], 0)


def test_both_outlier_kinds_are_found(synth_reduced, fitted, figure):
    z, labels, dist, _, kind = synth_reduced
    score, flag = fitted.score(z, labels, dist)
    inl = kind == ""
    for k in ("junk", "glare", "empty"):
        m = kind == k
        assert m.sum() >= 20, f"too few {k} rows planted"
        auc = roc_auc_score(np.r_[np.zeros(inl.sum()), np.ones(m.sum())], np.r_[score[inl], score[m]])
        figure(f"synthetic outliers: vclust ROC-AUC {k} vs inliers = {auc:.3f}")
        assert auc >= 0.95, (k, auc)
    # plain kNN distance misses the tight groups: that is why the score has other parts
    d10 = NearestNeighbors(n_neighbors=11).fit(z).kneighbors(z)[0][:, 1:].mean(axis=1)
    for k in ("glare", "empty"):
        m = kind == k
        knn_auc = roc_auc_score(np.r_[np.zeros(inl.sum()), np.ones(m.sum())], np.r_[d10[inl], d10[m]])
        figure(f"exact 10-NN mean distance, ROC-AUC {k} vs inliers = {knn_auc:.3f}")
        assert knn_auc < 0.5, (k, knn_auc)
    # the default threshold (robust z over the fit rows) flags the outliers, not the inliers
    figure(f"flagged: inliers {flag[inl].mean():.1%}, planted outliers {flag[~inl].mean():.1%}")
    assert flag[inl].mean() <= 0.03
    assert flag[~inl].mean() >= 0.5


def test_same_score_whatever_chunking_and_workers(synth_reduced, fitted, local_client):
    z, labels, dist, _, _ = synth_reduced
    ref = fitted.score(z, labels, dist)[0]
    for chunks in (1000, 2500):
        s, f = fitted.score(da.from_array(z, chunks=(chunks, -1)), da.from_array(labels, chunks=chunks),
                            da.from_array(dist, chunks=chunks))
        np.testing.assert_array_equal(s.compute(), ref)


def test_pickle_and_state_round_trip(synth_reduced, fitted):
    z, labels, dist, _, _ = synth_reduced
    ref = fitted.score(z[:500], labels[:500], dist[:500])
    again = pickle.loads(pickle.dumps(fitted))
    assert getattr(again, "_index", None) is None  # nothing numba-compiled travels
    np.testing.assert_array_equal(again.score(z[:500], labels[:500], dist[:500])[0], ref[0])
    params, arrays = fitted.to_state()
    restored = OutlierScorer.from_state(params, arrays)
    s, f = restored.score(z[:500], labels[:500], dist[:500])
    np.testing.assert_array_equal(s, ref[0])
    np.testing.assert_array_equal(f, ref[1])


def test_threshold_modes(synth_reduced):
    z, labels, dist, centers, _ = synth_reduced
    mad = OutlierScorer(reference_size=2000, threshold="mad", mad_z=3.5).fit(z, labels, dist, centers)
    assert 0 < mad.fit_outlier_rate_ < 0.2
    with pytest.raises(ValueError, match="threshold must be"):
        OutlierScorer(threshold="iqr").fit(z, labels, dist, centers)


def test_real_descriptors_auc_not_below_exact_knn(figure):
    xs, ys = [], []
    for f in sorted((SHARED / "real-descriptors").glob("*.npz")):
        d = np.load(f)
        xs.append(d["X"])
        ys.append(d["y"])
    assert xs, "real descriptors not found"
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    z = Preprocessor().fit(x).transform(x)
    cl = fit_algorithm("kmeans", z, 15, random_state=0)
    labels, dist = cl.predict_block(z)
    scorer = OutlierScorer(reference_size=len(z), random_state=0).fit(z, labels, dist, cl.cluster_centers_)
    ours = roc_auc_score(y, scorer.score(z, labels, dist)[0])
    d10 = NearestNeighbors(n_neighbors=11).fit(z).kneighbors(z)[0][:, 1:].mean(axis=1)
    exact = roc_auc_score(y, d10)
    figure(f"MVTec defects: vclust ROC-AUC {ours:.3f}, exact 10-NN mean distance {exact:.3f}")
    assert ours >= exact - 0.01, f"vclust {ours:.3f} vs exact 10-NN {exact:.3f}"
