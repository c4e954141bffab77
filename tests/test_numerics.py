"""Preprocessing, KMeans, metrics and the comparison algorithms against scikit-learn."""


import os
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score as ari
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
from sklearn.preprocessing import StandardScaler

from vclust.numerics.algorithms import ALGORITHMS, fit_algorithm, load_clusterer
from vclust.numerics.kmeans import KMeans
from vclust.numerics.metrics import (
    calinski_harabasz,
    choose_k,
    davies_bouldin,
    evaluate_partition,
)
from vclust.numerics.preprocess import MixturePreprocessor, Preprocessor

DATA = Path(__file__).resolve().parent / "data"  # real embedding sets shipped with the tests (data/README.md)


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(4000, n_features=12, centers=5, cluster_std=1.0, random_state=1)
    return x.astype(np.float32), y


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("chunks", [4000, 333])
def test_pca_matches_sklearn(blobs, chunks):
    x, _ = blobs
    x = np.abs(x)
    pre = Preprocessor(l2=False, standardize=True, pca_variance=0.9).fit(da.from_array(x, chunks=(chunks, -1)))
    sk = PCA(pre.n_components_).fit(StandardScaler().fit_transform(x))
    np.testing.assert_allclose(pre.explained_variance_ratio_, sk.explained_variance_ratio_, rtol=1e-5)
    assert np.cumsum(pre.explained_variance_ratio_)[-1] >= 0.9
    assert np.cumsum(pre.explained_variance_ratio_)[-2] < 0.9
    ours = pre.transform(x)
    theirs = sk.transform(StandardScaler().fit_transform(x))
    signs = np.sign((ours * theirs).sum(axis=0))
    np.testing.assert_allclose(ours, theirs * signs, atol=1e-4)


def test_randomized_pca_close_to_exact(blobs):
    x, _ = blobs
    exact = Preprocessor(standardize=False, l2=False, n_components=4).fit(x)
    rnd = Preprocessor(standardize=False, l2=False, n_components=4, svd_method="randomized").fit(
        da.from_array(x, chunks=(1000, -1)))
    np.testing.assert_allclose(rnd.explained_variance_, exact.explained_variance_, rtol=1e-3)


def test_a_wide_set_takes_only_the_components_it_can_keep(monkeypatch):
    """At LEADING_EIGH_DIMS columns and more, the covariance gives only its leading
    ``max_components`` pairs (scipy's syevr): the components and variance shares are numpy's
    full decomposition's, to rounding, and every shortcut a variance target can take (the cap,
    fewer components, every column) keeps its meaning."""
    import scipy.linalg

    from vclust.numerics import preprocess as pp

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 1100)) * np.linspace(3, 0.05, 1100)).astype(np.float32)
    calls = []
    real = scipy.linalg.eigh
    monkeypatch.setattr(scipy.linalg, "eigh", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    for kw in (dict(pca_variance=0.95, max_components=64),  # the cap
               dict(pca_variance=0.2, max_components=256),  # the target, under the cap
               dict(n_components=10)):
        leading = Preprocessor(**kw).fit(x)
        assert calls.pop()["subset_by_index"][1] == 1099
        with monkeypatch.context() as m:
            m.setattr(pp, "LEADING_EIGH_DIMS", 10**9)
            full = Preprocessor(**kw).fit(x)
        assert not calls
        assert leading.n_components_ == full.n_components_ > 1
        np.testing.assert_allclose(leading.components_, full.components_, atol=1e-9)
        np.testing.assert_allclose(leading.explained_variance_ratio_,
                                   full.explained_variance_ratio_, rtol=1e-10)
        assert leading.total_variance_ == pytest.approx(full.total_variance_, rel=1e-12)
    every = Preprocessor(pca_variance=None).fit(x)  # every column kept: all of the pairs
    assert not calls and every.components_ is None and len(every.explained_variance_) == 1100


def test_constant_columns_and_nan():
    x = np.random.default_rng(0).random((200, 6)).astype(np.float32)
    x[:, 2] = 0  # a dead unit
    pre = Preprocessor(standardize=True, l2=False, pca_variance=None).fit(x)
    assert np.isfinite(pre.transform(x)).all() and pre.scale_[2] == 1
    x[5, 1] = np.nan
    with pytest.raises(ValueError, match="1 row"):
        Preprocessor().fit(da.from_array(x, chunks=(50, -1)))


def _covariance_sample_rows(n, rows, seed):
    from vclust.numerics.blocks import row_uniform
    from vclust.numerics.preprocess import COVARIANCE_STREAM

    return row_uniform(np.arange(n), seed, COVARIANCE_STREAM) < rows / n


def test_the_covariance_is_measured_on_its_seeded_sample_whatever_the_chunking():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6000, 10)) * np.arange(1, 11)).astype(np.float32)
    x[:3000] += 5  # the sample must come from every block, not the first rows
    keep = _covariance_sample_rows(6000, 1500, 4)
    pre = Preprocessor(l2=False, pca_variance=None, covariance_rows=1500, random_state=4)
    one = pre.fit(x)
    sk = PCA().fit(x[keep])  # the sample's own PCA, by another library
    np.testing.assert_allclose(one.mean_, x[keep].mean(axis=0, dtype=np.float64), atol=1e-5)
    np.testing.assert_allclose(one.explained_variance_, sk.explained_variance_, rtol=1e-4)
    assert one.sampled_note(6000) == f" (covariance from {keep.sum():,} of 6,000 rows)"
    for chunks in (6000, 777):
        other = Preprocessor(l2=False, pca_variance=None, covariance_rows=1500,
                             random_state=4).fit(da.from_array(x, chunks=(chunks, -1)))
        np.testing.assert_allclose(other.explained_variance_, one.explained_variance_, rtol=1e-5)
    # "auto" samples above max(COVARIANCE_MIN_ROWS, 40 per column) only; None takes every row
    from vclust.numerics import COVARIANCE_MIN_ROWS

    big = np.repeat(x, COVARIANCE_MIN_ROWS // 6000 + 2, axis=0)[:, :4]
    big += rng.standard_normal(big.shape).astype(np.float32)
    auto = Preprocessor(l2=False, pca_variance=None, random_state=4).fit(big)
    sampled = _covariance_sample_rows(len(big), COVARIANCE_MIN_ROWS, 4)
    assert 0.5 < sampled.mean() < 0.95
    np.testing.assert_allclose(auto.mean_, big[sampled].mean(axis=0, dtype=np.float64), atol=1e-4)
    every = Preprocessor(l2=False, pca_variance=None, covariance_rows=None).fit(big)
    np.testing.assert_allclose(every.mean_, big.mean(axis=0, dtype=np.float64), atol=1e-4)
    assert every.sampled_note(len(big)) == ""
    small = Preprocessor(l2=False, pca_variance=None, random_state=4).fit(x)  # under the rule
    np.testing.assert_allclose(small.mean_, x.mean(axis=0, dtype=np.float64), atol=1e-5)
    np.testing.assert_array_equal(Preprocessor(l2=False, pca_variance=None, random_state=4,
                                               covariance_rows=np.int64(1500)).fit(x).mean_,
                                  one.mean_)
    for bad in (1, True, 0.5, "all"):
        with pytest.raises(ValueError, match="covariance_rows"):
            Preprocessor(covariance_rows=bad).fit(x)


def test_a_sampled_covariance_still_refuses_nan_outside_its_sample():
    x = np.random.default_rng(0).random((4000, 6)).astype(np.float32)
    outside = np.flatnonzero(~_covariance_sample_rows(4000, 400, 0))
    x[outside[7], 2] = np.inf
    with pytest.raises(ValueError, match="1 row"):
        Preprocessor(covariance_rows=400).fit(da.from_array(x, chunks=(1000, -1)))


def test_the_outlier_projection_takes_every_reference_row():
    from vclust.numerics.outlier_rows import projection

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((60_000, 6)) * [5, 4, 3, 2, 1, 0.5]).astype(np.float32)
    got = projection(x, 0.95, 256, 0)
    np.testing.assert_allclose(got.mean_, x.mean(axis=0, dtype=np.float64), atol=1e-5)


def test_moments_far_from_the_origin():
    """Blocks are centred on float32 column sums: rows whose mean dwarfs their spread (ReLU
    features, offsets) still give the float64 covariance to float32 precision."""
    from vclust.numerics.preprocess import _moments

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((30_000, 8)) * [1e-2, 1, 5, 1e-3, 1, 1, 1, 1]
         + [1e3, -50, 0, 7, 1, 2, 3, 4]).astype(np.float32)
    x64 = x.astype(np.float64)
    for data in (x, da.from_array(x, chunks=(7000, -1))):
        n, mean, scatter = _moments(data, False)
        assert n == len(x)
        # to a millionth of each column's spread (float32 data resolve ~1e-7 of their value)
        err = np.abs(mean - x64.mean(axis=0))
        assert np.all(err <= 1e-6 * x64.std(axis=0) + 1e-7 * np.abs(x64.mean(axis=0))), err
        np.testing.assert_allclose(scatter / n, np.cov(x64.T, bias=True),
                                   rtol=1e-4, atol=1e-7 * np.abs(np.cov(x64.T)).max())


def test_moments_corrections_in_row_slices_are_the_whole_products(monkeypatch):
    """The scatter's rank-one corrections go in slices of OUTER_ROWS rows (no d x d temporary):
    each element is the whole product's, bit for bit, for a width that leaves a partial slice;
    and they are applied to every row (a slicing slip would leave rows uncorrected)."""
    from vclust.numerics import preprocess as P

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3000, 300)) + rng.uniform(-3, 3, 300)).astype(np.float32)
    monkeypatch.setattr(P, "OUTER_ROWS", 128)  # 300 columns: slices of 128, 128 and 44
    blocks = [P._block_moments(x[a:a + 1000], a, True) for a in (0, 1000, 2000)]
    merged = P._combine(P._combine(blocks[0], blocks[1]), blocks[2])
    monkeypatch.setattr(P, "OUTER_ROWS", 10_000)  # one slice: the whole products
    whole = [P._block_moments(x[a:a + 1000], a, True) for a in (0, 1000, 2000)]
    for got, want in zip(blocks, whole):
        assert got[2].dtype == np.float32 and np.array_equal(got[2], want[2])
    ref = P._combine(P._combine(whole[0], whole[1]), whole[2])
    assert merged[0] == ref[0] == 3000 and np.array_equal(merged[1], ref[1])
    assert np.array_equal(merged[2], ref[2])
    y = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(merged[2] / 3000, np.cov(y.T, bias=True), rtol=1e-3,
                               atol=1e-6 * np.abs(np.cov(y.T)).max())


def test_mixture_weights_equal_variance_and_state(blobs):
    x, _ = blobs
    sets = {"a": np.abs(x[:, :6]) * 10, "b": np.abs(x[:, 6:])}
    mix = MixturePreprocessor({n: Preprocessor() for n in sets}).fit(sets)
    z = mix.transform(sets)
    na = mix.preprocessors["a"].n_components_
    var_a, var_b = z[:, :na].var(axis=0).sum(), z[:, na:].var(axis=0).sum()
    assert abs(var_a / var_b - 1) < 1e-2
    params, arrays = mix.to_state()
    again = MixturePreprocessor.from_state(params, arrays)
    np.testing.assert_array_equal(again.transform(sets), z)


# --------------------------------------------------------------------------- kmeans


@pytest.mark.parametrize("init", ["k-means||", "k-means++"])
def test_kmeans_matches_sklearn(blobs, init):
    x, y = blobs
    ours = KMeans(5, init=init, random_state=0).fit(x)
    sk = SKKMeans(5, n_init=3, random_state=0).fit(x)
    assert ari(ours.labels_, sk.labels_) == 1.0 and ari(ours.labels_, y) == 1.0
    assert ours.inertia_ == pytest.approx(sk.inertia_, rel=1e-5)
    np.testing.assert_array_equal(ours.predict(x), ours.labels_)
    np.testing.assert_allclose(ours.transform(x[:10]),
                               np.linalg.norm(x[:10, None] - ours.cluster_centers_[None], axis=2), rtol=1e-4)


@pytest.mark.parametrize("max_iter, tol", [(100, 1e-4), (1, 1e-4), (100, 1e3)])
@pytest.mark.parametrize("dask_input", [False, True])
def test_labels_and_inertia_belong_to_the_returned_centres(blobs, local_client, max_iter, tol,
                                                           dask_input):
    """Whether Lloyd stops because no row moved (no extra pass), on the tolerance or on
    max_iter (one more pass), labels_ and inertia_ are those of cluster_centers_."""
    x, _ = blobs
    x = x + np.random.default_rng(0).normal(0, 2.0, x.shape).astype(np.float32)  # overlapping
    data = da.from_array(x, chunks=(900, -1)) if dask_input else x
    km = KMeans(5, max_iter=max_iter, tol=tol, random_state=0).fit(data)
    labels = np.asarray(km.labels_.compute() if dask_input else km.labels_)
    d2 = ((x[:, None].astype(np.float64) - km.cluster_centers_[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, d2.argmin(axis=1))
    assert km.inertia_ == pytest.approx(d2.min(axis=1).sum(), rel=1e-5)
    assert km.n_iter_ <= max_iter


def test_balanced_blocks_are_even_equal_and_bounded():
    from vclust.numerics.blocks import PAIR_BYTES, balanced

    assert balanced(da.zeros((10_000, 11), chunks=(999, 11), dtype=np.float32)).numblocks == (1, 1)
    for n, d, chunks in [(416_314, 11, 65_536), (416_314, 256, 8192), (4_163_140, 14, 100_000)]:
        for c in (chunks, chunks // 3):  # the layout follows the size, not the input chunks
            b = balanced(da.zeros((n, d), chunks=(c, d), dtype=np.float32))
            sizes = b.chunks[0]
            assert len(sizes) % 2 == 0 and b.numblocks[1] == 1
            assert max(sizes) - min(sizes) <= len(sizes)  # equal but for rounding
            assert max(sizes) * d * 4 <= PAIR_BYTES // 2 + d * 4
            assert sizes == balanced(da.zeros((n, d), chunks=(chunks, d), dtype=np.float32)).chunks[0]


def test_same_labels_whatever_chunking_and_workers(blobs, local_client):
    x, _ = blobs
    ref = KMeans(5, random_state=3).fit(x).labels_
    for chunks in (4000, 999, 250):
        got = KMeans(5, random_state=3).fit(da.from_array(x, chunks=(chunks, -1))).labels_.compute()
        np.testing.assert_array_equal(got, ref)


def test_same_labels_one_worker(blobs):
    from distributed import Client, LocalCluster

    x, _ = blobs
    ref = KMeans(5, random_state=3).fit(x).labels_
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, Client(c):
        got = KMeans(5, random_state=3).fit(da.from_array(x, chunks=(700, -1))).labels_.compute()
    np.testing.assert_array_equal(got, ref)


def test_empty_cluster_is_repaired(blobs):
    x, _ = blobs
    init = np.vstack([x[:4], np.full((1, x.shape[1]), 1e4, np.float32)])
    km = KMeans(5, init=init, random_state=0).fit(x)
    assert len(np.unique(km.labels_)) == 5


def test_minibatch_close_to_lloyd(blobs):
    x, _ = blobs
    lloyd = KMeans(5, random_state=0).fit(x).labels_
    mb = KMeans(5, algorithm="minibatch", batch_size=500, max_iter=5, random_state=0).fit(
        da.from_array(x, chunks=(1000, -1))).labels_.compute()
    assert ari(lloyd, mb) >= 0.95


def test_candidate_reclustering_is_weighted_kmeans():
    """k-means|| reclusters its weighted candidates in numpy (``kmeans._weighted_kmeans``): on
    three separated groups the centres are the groups' weighted means, and a heavy row pulls
    its group's centre to itself."""
    from vclust.numerics.kmeans import _weighted_kmeans

    rng = np.random.default_rng(0)
    groups = [rng.normal(c, 0.1, (40, 3)) for c in ((0, 0, 0), (5, 0, 0), (0, 5, 0))]
    x, w = np.vstack(groups), rng.uniform(0.5, 3.0, 120)
    for weights in (w, np.where(np.arange(120) == 7, 1e6, w)):
        got = _weighted_kmeans(x, weights, 3, n_init=10, seed=1)
        for g in range(3):
            part = slice(40 * g, 40 * (g + 1))
            want = np.average(x[part], axis=0, weights=weights[part])
            assert np.min(np.linalg.norm(got - want, axis=1)) < 1e-9
    assert np.min(np.linalg.norm(got - x[7], axis=1)) < 1e-3


def test_estimator_params_without_scikit_learn(blobs):
    """KMeans and Preprocessor keep scikit-learn's parameter interface (vclust/numerics/
    estimator.py) without its base classes."""
    km = KMeans(3, random_state=4)
    assert km.get_params()["n_clusters"] == 3 and km.get_params()["random_state"] == 4
    assert km.set_params(n_clusters=5) is km and km.n_clusters == 5
    assert repr(km).startswith("KMeans(n_clusters=5, init='k-means||'")
    with pytest.raises(ValueError, match="invalid parameter 'k' for KMeans"):
        km.set_params(k=2)
    x, _ = blobs
    np.testing.assert_array_equal(km.fit_transform(x).argmin(axis=1), km.labels_)
    pre = Preprocessor(pca_variance=0.9)
    assert pre.get_params()["pca_variance"] == 0.9 and "l2=True" in repr(pre)


def test_kmeans_state_and_errors(blobs):
    x, _ = blobs
    km = KMeans(5, random_state=0).fit(x)
    again = KMeans.from_state(*km.to_state())
    np.testing.assert_array_equal(again.predict(x), km.predict(x))
    with pytest.raises(ValueError, match="n_clusters must be a positive integer"):
        KMeans(0).fit(x)
    with pytest.raises(ValueError, match="init must be"):
        KMeans(3, init="random").fit(x)
    with pytest.raises(ValueError, match="chunked by rows only"):
        KMeans(3).fit(da.from_array(x, chunks=(1000, 6)))


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunks", [4000, 777])
def test_ch_db_equal_sklearn(blobs, dtype, chunks):
    x, _ = blobs
    x = x.astype(dtype)
    labels = KMeans(6, random_state=0).fit(x).labels_
    xd, ld = da.from_array(x, chunks=(chunks, -1)), da.from_array(labels, chunks=chunks)
    assert calinski_harabasz(xd, ld) == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-6)
    assert davies_bouldin(xd, ld) == pytest.approx(davies_bouldin_score(x, labels), rel=1e-6)
    ev = evaluate_partition(xd, ld)
    assert ev["within_ss"] == pytest.approx(KMeans(6, random_state=0).fit(x).inertia_, rel=1e-4)
    assert sum(ev["sizes"]) == len(x)


def test_partitions_scored_together_equal_each_scored_alone(blobs, local_client, monkeypatch):
    """`vclust compare` scores every kept partition in every space in one go
    (``evaluate_partitions``), the space's rows held on workers and the labels numpy: each
    figure is the bits of that partition scored alone with dask labels
    (``evaluate_partition``), on numpy rows too; two passes over the rows for all of them."""
    from vclust.numerics import metrics

    x, _ = blobs
    xd = da.from_array(x, chunks=(777, -1)).persist()  # held in the workers' memory
    labellings, ks = [], (3, 5, 8)
    for k in ks:
        labels = KMeans(k, random_state=1).fit(x).labels_.astype(np.int32)
        labels[::89] = k  # a small extra cluster
        labellings.append(labels)
    ns = [k + 1 for k in ks]
    alone = [evaluate_partition(xd, da.from_array(lab, chunks=777), n_clusters=n,
                                silhouette_sample=900, random_state=2, cache={})
             for lab, n in zip(labellings, ns)]
    passes = []
    real = metrics.map_blocks_reduce
    monkeypatch.setattr(metrics, "map_blocks_reduce",
                        lambda *a, **kw: passes.append(a[0]) or real(*a, **kw))
    together = metrics.evaluate_partitions(xd, labellings, ns, silhouette_sample=900,
                                           random_state=2, cache={})
    assert together == alone  # every figure to the bit, sizes and k included
    assert len({f["calinski_harabasz"] for f in together}) == len(ks)  # three partitions
    assert len(passes) == 2  # the sums, then the distances to the means, for all three
    assert metrics.evaluate_partitions(x, labellings, ns, silhouette_sample=900,
                                       random_state=2) == \
        [evaluate_partition(x, lab, n_clusters=n, silhouette_sample=900, random_state=2)
         for lab, n in zip(labellings, ns)]


@pytest.mark.parametrize("as_dask", [False, True])
def test_sampled_silhouette_equals_sklearn_on_the_same_rows(blobs, as_dask):
    """The silhouette of the hashed sample, from one distance matrix kept across labelings (the
    k-range's cache), equals scikit-learn's silhouette_score of the same rows, for every
    labeling, with and without the cache, on numpy and dask input."""
    from sklearn.metrics import silhouette_score

    from vclust.numerics.metrics import _sample_positions, silhouette_sampled

    x, _ = blobs
    x = x.astype(np.float32)
    pos = _sample_positions(len(x), 1500, 4)
    assert 1200 < len(pos) < 1800
    cache = {}
    for k in (2, 5, 9):
        labels = KMeans(k, random_state=0).fit(x).labels_
        labels[::97] = k  # a few rows of a small extra cluster
        X, L = (da.from_array(x, chunks=(777, -1)), da.from_array(labels, chunks=777)) \
            if as_dask else (x, labels)
        expected = silhouette_score(x[pos], labels[pos])
        assert silhouette_sampled(X, L, 1500, 4, cache) == pytest.approx(expected, abs=1e-6)
        assert silhouette_sampled(X, L, 1500, 4) == pytest.approx(expected, abs=1e-6)
    assert cache["D"].shape == (len(pos), len(pos))
    one = np.zeros(len(x), int)
    one[pos[0]] = 1  # a cluster of one row scores 0, as in scikit-learn
    assert silhouette_sampled(x, one, 1500, 4) == pytest.approx(
        silhouette_score(x[pos], one[pos]), abs=1e-6)


def test_fit_partition_over_a_k_range_chooses_the_blobs_k(blobs):
    """The fit core (vclust.model.core) over a k-range, in this process and on dask rows: one
    table row per k, the k of choose_k kept, the same partition either way."""
    from vclust.model.core import fit_partition

    x, y = blobs
    z = da.from_array(x, chunks=(1000, -1))
    here = fit_partition(z, "kmeans", [3, 4, 5, 6, 7], local=x, cache={})
    there = fit_partition(z, "kmeans", [3, 4, 5, 6, 7], cache={})
    assert [r["k"] for r in here.table] == [3, 4, 5, 6, 7]
    assert choose_k(here.table) == here.k == there.k == 5
    assert ari(y, here.labels) == 1.0
    np.testing.assert_array_equal(here.labels, there.labels.compute())
    with pytest.raises(ValueError, match="number of labels is 1"):
        calinski_harabasz(x, np.zeros(len(x), int))


def test_a_k_range_on_wide_rows_readies_them_for_scikit_learn_once(monkeypatch):
    """Wide rows clustered in this process (scikit-learn's Lloyd, kmeans.SKLEARN_DIMS columns
    and more) are copied, centred and measured once for a whole k-range, not at each k, and
    each k's partition is the one KMeans fitted alone gives."""
    from vclust.model.core import fit_partition
    from vclust.numerics import kmeans

    x, _ = make_blobs(3000, n_features=kmeans.SKLEARN_DIMS + 6, centers=4, random_state=2)
    x = x.astype(np.float32)
    made = []
    real = kmeans.SklearnRows.__init__
    monkeypatch.setattr(kmeans.SklearnRows, "__init__",
                        lambda self, X: made.append(X.shape) or real(self, X))
    part = fit_partition(da.from_array(x, chunks=(1000, -1)), "kmeans", [3, 4, 5], local=x,
                         cache={})
    assert made == [x.shape]
    alone = KMeans(part.k, random_state=0).fit(x)
    assert len(made) == 2  # a fit on its own readies its own rows
    np.testing.assert_array_equal(part.labels, alone.predict(x))


# --------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("name", ALGORITHMS)
def test_each_algorithm_end_to_end(blobs, name):
    x, y = blobs
    xd = da.from_array(x, chunks=(1000, -1))
    cl = fit_algorithm(name, xd, 5, sample_size=1500, random_state=0)
    labels = cl.predict(xd).compute()
    assert ari(labels, y) >= 0.9, (name, ari(labels, y))
    again = load_clusterer(*cl.to_state())
    np.testing.assert_array_equal(again.predict_block(x)[0], labels)
    np.testing.assert_allclose(again.predict_block(x)[1],
                               np.linalg.norm(x - cl.cluster_centers_[labels], axis=1), rtol=1e-4)


def test_agglomerative_on_separate_groups_warns_nothing_and_finds_them():
    """Groups far apart give the tree's 10-neighbour graph one component each; scikit-learn
    joins them and warns, which a command would print to the analyst at every k-range. The cut
    says nothing and still finds the groups."""
    import warnings

    from sklearn.metrics import adjusted_rand_score

    from vclust.numerics.algorithms import AgglomerativeTree
    from vclust.numerics.blocks import sample_rows

    rng = np.random.default_rng(4)
    truth = np.repeat(np.arange(6), 300)
    x = (rng.normal(size=(6, 8)) * 50)[truth] + rng.normal(size=(len(truth), 8))
    tree = AgglomerativeTree(x, sample_size=1200, random_state=0)
    from scipy.sparse.csgraph import connected_components

    assert connected_components(tree.conn)[0] >= 6  # the case the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cl = tree.cut(6)
    sample_truth = truth[sample_rows(x, 1200, 0, stream=21)[1]]  # the tree's sample
    assert adjusted_rand_score(sample_truth, cl.arrays["anchor_labels"]) == 1.0
    assert adjusted_rand_score(truth, tree.labels(x, cl)) == 1.0


def test_nearest_sample_rows_on_threads_are_the_one_calls_bit_for_bit(monkeypatch):
    """The agglomerative tree's nearest sample row of every row, found in blocks on this
    process's threads (``nearest_anchor_local``), is the one call's label for every row, ties
    included. Rows halfway between two anchors are ties up to rounding. Whether a block cut
    elsewhere than at the one call's own slices flips some of them depends on the BLAS kernel
    the CPU gets: OpenBLAS's Haswell kernel (AVX2) did, its SkylakeX kernel (AVX-512) computes
    each row alike in any block. So the cuts themselves are checked too: every block starts at
    a multiple of the one call's slice, whatever the CPU."""
    from vclust.numerics import algorithms
    from vclust.numerics.blocks import one_blas_thread

    monkeypatch.setattr(algorithms, "PREDICT_ROWS", 1_000)  # blocks of one slice (1,048 rows)
    rng = np.random.default_rng(2)
    anchors = rng.normal(size=(2_000, 39)).astype(np.float32)
    i, j = rng.integers(0, len(anchors), (2, 30_001))
    x = (anchors[i] + anchors[j]) / 2
    idx = np.arange(len(anchors), dtype=np.int32)
    with one_blas_thread():
        one = algorithms.nearest_anchor(x, anchors, idx)
    starts, plain = [], algorithms.nearest_anchor

    def recorded(block, *args):
        offset = block.__array_interface__["data"][0] - x.__array_interface__["data"][0]
        starts.append((offset // x.strides[0], len(block)))
        return plain(block, *args)

    monkeypatch.setattr(algorithms, "nearest_anchor", recorded)
    local = algorithms.nearest_anchor_local(x, anchors, idx)
    step = algorithms._nearest_step(*anchors.shape)
    assert len(starts) > 2 and sorted(starts)[0][0] == 0
    assert all(s % step == 0 for s, _ in starts), (step, starts)
    assert sum(n for _, n in starts) == len(x)
    np.testing.assert_array_equal(local, one)
    assert set(one.tolist()) <= set(i.tolist()) | set(j.tolist())


def test_gmm_on_wide_rows_models_the_columns_of_most_variance(figure, monkeypatch):
    """Rows wider than GMM_WIDE columns: gmm models the GMM_DIMS columns of most variance,
    also when they lie in two blocks (a mixture: each set's components, set after set); the
    labels are scikit-learn's GaussianMixture on those columns, the distances are to centres
    in every column, and the state round-trips. Narrow rows keep every column."""
    from sklearn.mixture import GaussianMixture

    from vclust.numerics.algorithms import GMM_DIMS, GMM_WIDE, fit_gmm, gmm_dims

    rng = np.random.default_rng(2)
    k, n = 4, 3000
    y = rng.integers(0, k, n)
    block = lambda: np.c_[rng.normal(0, 1, (k, 20))[y] * 3 + rng.normal(0, 1, (n, 20)),
                          rng.normal(0, 0.1, (n, 40))]  # 20 strong columns, 40 weak ones
    x = np.c_[block(), block()]  # 120 columns: a mixture of two 60-column sets
    assert x.shape[1] > GMM_WIDE and gmm_dims(x.shape[1]) == GMM_DIMS == 32
    cl = fit_gmm(x, k, random_state=0)
    cols = cl.arrays["columns"]
    assert len(cols) == 32 and set(range(20)) | set(range(60, 80)) >= set(cols)
    assert (cols < 60).any() and (cols >= 60).any()
    labels, dist = cl.predict_block(x)
    want = GaussianMixture(k, covariance_type="full", random_state=0,
                           reg_covar=1e-5).fit(x[:, cols]).predict(x[:, cols])
    np.testing.assert_array_equal(labels, want)
    figure(f"gmm on 120 columns (32 modelled): ARI {ari(y, labels):.3f}")
    assert ari(y, labels) >= 0.95
    assert cl.cluster_centers_.shape == (k, 120)
    np.testing.assert_allclose(dist, np.linalg.norm(x - cl.cluster_centers_[labels], axis=1),
                               rtol=1e-4)
    again = load_clusterer(*cl.to_state())
    np.testing.assert_array_equal(again.predict_block(x)[0], labels)
    from vclust.numerics import algorithms

    monkeypatch.setattr(algorithms, "GMM_ROWS", 97)  # slices of 97 rows, the last one short
    np.testing.assert_array_equal(again.predict_block(x)[0], labels)
    narrow = fit_gmm(x[:, :50], k, random_state=0)
    assert "columns" not in narrow.arrays and narrow.arrays["means"].shape == (k, 50)


# --------------------------------------------------------------------------- real descriptors


def test_real_descriptors_default_pipeline_ari(figure):
    xs, ys = [], []
    files = sorted((DATA / "real-descriptors").glob("*.npz"))
    assert len(files) == 15, "real descriptors not found"
    for i, f in enumerate(files):
        xs.append(np.load(f)["X"])
        ys.append(np.full(len(xs[-1]), i))
    x, y = np.concatenate(xs), np.concatenate(ys)
    xd = da.from_array(x, chunks=(1000, -1))
    z = Preprocessor().fit(xd).transform(xd)
    labels = KMeans(15, random_state=0).fit(z).labels_.compute()
    score = ari(y, labels)
    figure(f"MVTec 15 categories, default preprocessing + KMeans(15): ARI {score:.3f}")
    assert score >= 0.95, f"ARI {score:.3f}"


def _blas_threads():
    from threadpoolctl import threadpool_info

    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_a_blas_loaded_after_the_first_limit_is_limited_too():
    """scipy.special loads scipy's own OpenBLAS without scipy.linalg: a BLAS loaded after
    one_blas_thread first ran is limited too (the full suite once saw two threads inside a
    task, after another test had imported scipy.special)."""
    code = (
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info, threadpool_limits\n"
        "from vclust.numerics.blocks import one_blas_thread\n"
        "with one_blas_thread():\n"
        "    pass\n"
        "import scipy.special  # noqa: F401 - a second BLAS arrives\n"
        "with threadpool_limits(2, user_api='blas'):\n"
        "    with one_blas_thread():\n"
        "        print(max(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def _blas_counts_seen(code: str) -> dict:
    """What ``code`` prints as JSON, run in a fresh interpreter at two OpenBLAS threads."""
    import json

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_blas_loaded_while_the_limit_holds_is_limited_at_the_next_entry():
    """A fit holds one_blas_thread from start to end, and scipy's OpenBLAS arrives during it
    (scipy.linalg, for a wide set's eigendecomposition): the next entry, nested, limits it too,
    and the last exit gives every library its own count back."""
    code = (
        "import json\n"
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info\n"
        "from vclust.numerics.blocks import one_blas_thread\n"
        "def counts():\n"
        "    return [i['num_threads'] for i in sorted(threadpool_info(),\n"
        "            key=lambda i: i['filepath']) if i['user_api'] == 'blas']\n"
        "seen = {}\n"
        "with one_blas_thread():\n"
        "    import scipy.linalg  # noqa: F401 - a second BLAS arrives while the limit holds\n"
        "    seen['arrived'] = counts()\n"
        "    with one_blas_thread():\n"
        "        seen['nested'] = counts()\n"
        "    seen['nested left'] = counts()\n"
        "seen['all left'] = counts()\n"
        "print(json.dumps(seen))\n")
    seen = _blas_counts_seen(code)
    assert sorted(seen["arrived"]) == [1, 2], seen  # numpy's limited, scipy's not yet
    assert seen["nested"] == [1, 1], seen
    assert seen["nested left"] == [1, 1], seen  # still inside the outer one
    assert seen["all left"] == [2, 2], seen


def test_one_blas_thread_takes_from_any_thread():
    """threadpoolctl (3.6 on) lets the one Python thread inside a limit control a pthreads
    OpenBLAS and ignores a limit set from any other meanwhile: the fit held one_blas_thread
    on its main thread, scipy's OpenBLAS arrived, and the outlier thread's limit on it was
    ignored (it kept two threads, and the scorer's eigendecomposition summed in another
    order). one_blas_thread sets OpenBLAS's process-wide count itself, from any thread, while
    the calling thread or another holds a limit of its own (scikit-learn's, this module's), and
    gives each library its count back."""
    code = (
        "import json, threading\n"
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info, threadpool_limits\n"
        "from vclust.numerics.blocks import one_blas_thread\n"
        "def counts():\n"
        "    return sorted(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas')\n"
        "seen = {}\n"
        "def other(key):\n"
        "    with one_blas_thread():\n"
        "        seen[key] = counts()\n"
        "def on_another_thread(key):\n"
        "    t = threading.Thread(target=other, args=(key,))\n"
        "    t.start(); t.join()\n"
        "with one_blas_thread():  # as a fit holds it on its main thread\n"
        "    import scipy.linalg  # noqa: F401 - scipy's OpenBLAS arrives meanwhile\n"
        "    on_another_thread('fit: another thread, after scipy arrived')\n"
        "seen['fit: after'] = counts()\n"
        "with threadpool_limits(2, user_api='blas'):  # scikit-learn's, on the main thread\n"
        "    on_another_thread('another thread, beside a threadpoolctl limit')\n"
        "    seen['threadpoolctl limit: after'] = counts()\n"
        "print(json.dumps(seen))\n")
    assert _blas_counts_seen(code) == {
        "fit: another thread, after scipy arrived": [1, 1], "fit: after": [2, 2],
        "another thread, beside a threadpoolctl limit": [1, 1],
        "threadpoolctl limit: after": [2, 2]}


_BLAS_CHECK = """
from contextlib import ExitStack

import dask
import dask.array as da
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from vclust.numerics.blocks import LOCAL_SCHEDULERS, one_blas_thread, threads_get


def blas_threads():
    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


assert threads_get in LOCAL_SCHEDULERS  # no client is looked for under it
with threadpool_limits(2, user_api="blas"):
    assert blas_threads() == 2
    x = da.zeros((8, 2), chunks=(2, 2))
    with dask.config.set(scheduler=threads_get):
        seen = x.map_blocks(lambda b: np.full(b.shape, blas_threads())).compute()
    assert (seen == 1).all(), seen
    assert blas_threads() == 2
    with dask.config.set(scheduler="threads"):  # dask's own: the setting as it is
        assert (x.map_blocks(lambda b: np.full(b.shape, blas_threads())).compute() == 2).all()
    first, second = ExitStack(), ExitStack()
    first.enter_context(one_blas_thread())
    second.enter_context(one_blas_thread())
    first.close()
    assert blas_threads() == 1  # the second user is still inside
    second.close()
    assert blas_threads() == 2
print("ok")
"""


def test_in_process_graphs_run_blas_at_one_thread_a_block():
    """Graphs run on this process's threads (the scheduler vclust sets when it starts no
    cluster) see BLAS at one thread inside their tasks, and the process's setting comes back
    after; overlapping users (two threads computing at once) restore it only when the last
    one leaves. In a process of its own: in the whole suite a thread another test left
    running inside one_blas_thread kept the count above zero (which thread is not found yet)."""
    out = subprocess.run([sys.executable, "-c", _BLAS_CHECK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


_WIDTH_CHECK = """
import threading, time

# as vclust's import thread does in a fit: dask.threaded first imported away from the main thread
t = threading.Thread(target=lambda: __import__("dask.threaded")); t.start(); t.join()

import dask
import dask.array as da
from dask.system import CPU_COUNT

from vclust.numerics.blocks import threads_get

def width():
    now, most, lock = [0], [0], threading.Lock()
    def task(b):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        return b
    with dask.config.set(scheduler=threads_get):
        da.ones((48, 1), chunks=(1, 1)).map_blocks(task).sum().compute()
    return most[0]  # tasks running at once

main = width()
other = []
t = threading.Thread(target=lambda: other.append(width())); t.start(); t.join()
print(CPU_COUNT, main, other[0])
"""


def test_in_process_graphs_run_on_as_many_threads_as_cores():
    """dask takes the thread that first imported dask.threaded for the main one and gives any
    other caller a pool of concurrent.futures' default width (cores + 4); vclust imports in the
    background, so a fit's graphs ran on 6 threads on 2 cores (and 6 more for the outlier
    reference's). threads_get names the width: as many threads as cores, from any thread."""
    out = subprocess.run([sys.executable, "-c", _WIDTH_CHECK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    cores, main, other = map(int, out.stdout.split())
    assert 1 <= main <= cores and 1 <= other <= cores, out.stdout
    assert max(main, other) == cores or cores > 8, out.stdout  # the cores are used, too


@pytest.mark.parametrize("kind", ["numpy", "views", "tasks"])
def test_gathered_rows_are_held_once(kind):
    """The outlier scorer's reference rows gathered from the rows as given (outlier_rows.gather)
    are the rows at those positions, in order; from a numpy array (a fit in its own process),
    or from dask blocks that are views of one (as fit.read_here holds the rows it read), the
    gather holds them once, not a second time for a concatenation (numpy's allocations, as
    tracemalloc counts them); from computed dask blocks each block's pieces are joined."""
    import tracemalloc

    from vclust.jobs.fit import _blocks_of
    from vclust.numerics.outlier_rows import gather, in_memory

    x = np.random.default_rng(2).normal(size=(40_000, 200)).astype(np.float32)
    pos = np.flatnonzero(np.random.default_rng(3).random(len(x)) < 0.5)
    a = {"numpy": lambda: x, "views": lambda: _blocks_of(x, 5_000, "gather-views"),
         "tasks": lambda: da.from_array(x, chunks=(5_000, -1)) * 1}[kind]()
    if kind != "numpy":
        assert (in_memory(a) is x) == (kind == "views")
    tracemalloc.start()
    try:
        (got,) = gather(a, (pos,))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, x[pos])
    if kind != "tasks":
        assert peak < 1.4 * got.nbytes, (peak, got.nbytes)


@pytest.mark.parametrize("l2", [False, True])
def test_exact_transform_gives_a_row_the_same_bits_whatever_rows_come_with_it(l2):
    """The outlier scorer's rows (``transform_exact``): a float32 product's last bits follow
    OpenBLAS's blocking, so a row projected with 499 others differs from the same row
    projected with 2,999; a short nearest-neighbour walk turns on those bits."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(5)
    x = (rng.normal(size=(3000, 400)) + 3).astype(np.float32)
    pre = Preprocessor(l2=l2, standardize=False, n_components=100).fit(x)
    whole = pre.transform_exact(x)
    assert whole.dtype == np.float32 and whole.shape == (3000, 100)
    np.testing.assert_allclose(whole, pre.transform_block(x), rtol=0, atol=1e-4 * np.abs(whole).max())
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            for size in (1, 7, 500, 2048):
                parts = np.concatenate([pre.transform_exact(x[a:a + size])
                                        for a in range(0, len(x), size)])
                assert (parts != whole).any(axis=1).sum() == 0, (threads, size)
    mix = MixturePreprocessor({"a": Preprocessor(l2=l2, n_components=20),
                               "b": Preprocessor(l2=l2, n_components=30)}).fit(
        {"a": x[:, :100], "b": x[:, 100:]})
    sets = {"a": x[:, :100], "b": x[:, 100:]}
    one = mix.transform_exact(sets)
    np.testing.assert_array_equal(np.concatenate([mix.transform_exact({k: v[a:a + 500] for k, v in sets.items()})
                                                  for a in range(0, 3000, 500)]), one)
    np.testing.assert_allclose(one, mix.transform(sets), rtol=0, atol=1e-4 * np.abs(one).max())
