"""Partition agreement (vclust.numerics.agreement): contingency tables by map-reduce, ARI and AMI
equal to scikit-learn's, the outlier Jaccard index, and cluster matching for model succession."""

import dask.array as da
import numpy as np
import pytest
from scipy.special import gammaln
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score
from sklearn.metrics.cluster import contingency_matrix

from vclust.numerics.agreement import (
    adjusted_mutual_info,
    adjusted_rand,
    contingency,
    expected_mutual_info,
    match_clusters,
    outlier_jaccard,
)


def _labels(rng, n, k, noise=0.0):
    lab = rng.integers(0, k, n)
    if noise:
        lab[rng.random(n) < noise] = -1
    return lab


def _like_sklearn(table):
    """Our table (noise last) in scikit-learn's order (sorted labels: -1 first), empty rows and
    columns dropped."""
    t = np.roll(np.roll(table, 1, axis=0), 1, axis=1)
    return t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]


def _check_scores(a, b, table=None):
    table = contingency(a, b) if table is None else table
    assert adjusted_rand(table) == adjusted_rand_score(a, b)  # same integer expression
    assert adjusted_mutual_info(table) == pytest.approx(adjusted_mutual_info_score(a, b),
                                                        abs=1e-9, rel=0)


# ---------------------------------------------------------------------------------------------
# contingency


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_contingency_equals_sklearn(noise):
    rng = np.random.default_rng(0)
    a, b = _labels(rng, 5000, 7, noise), _labels(rng, 5000, 12, noise)
    table = contingency(a, b)
    assert table.dtype == np.int64 and table.shape == (8, 13)
    np.testing.assert_array_equal(_like_sklearn(table), contingency_matrix(a, b))
    assert table.sum() == 5000
    assert (table[-1].sum(), table[:, -1].sum()) == ((a < 0).sum(), (b < 0).sum())


def test_contingency_sizes_and_errors():
    a = np.array([0, 1, 1, 3], np.int32)
    b = np.array([2, 0, -1, 2], np.int32)
    t = contingency(a, b)
    assert t.shape == (5, 4)  # labels 0..3 and 0..2, plus noise
    assert t[0, 2] == 1 and t[1, 0] == 1 and t[1, -1] == 1 and t[3, 2] == 1
    assert contingency(a, b, n_a=6, n_b=3).shape == (7, 4)
    assert np.all(contingency(a, b, n_a=6)[4:6] == 0)
    with pytest.raises(ValueError, match="label 3"):
        contingency(a, b, n_a=3)
    with pytest.raises(ValueError, match="integers"):
        contingency(a.astype(float), b)
    with pytest.raises(ValueError, match="length"):
        contingency(a, b[:3])
    with pytest.raises(ValueError, match="1-D"):
        contingency(a[:, None], b)
    empty = contingency(np.array([], int), np.array([], int))
    assert empty.shape == (1, 1) and empty.sum() == 0


def test_contingency_dask_any_chunking():
    rng = np.random.default_rng(1)
    n = 20_011
    a = _labels(rng, n, 9, 0.05).astype(np.int32)
    b = _labels(rng, n, 5, 0.02).astype(np.int32)
    want = contingency(a, b)
    uneven = (1, 4000, 7, 9000, n - 13_008)
    for chunks_a, chunks_b in [(uneven, uneven), (uneven, 3000), (n, 777), (5003, uneven)]:
        da_a, da_b = da.from_array(a, chunks=chunks_a), da.from_array(b, chunks=chunks_b)
        np.testing.assert_array_equal(contingency(da_a, da_b), want)
        np.testing.assert_array_equal(contingency(da_a, b), want)  # numpy beside dask
        np.testing.assert_array_equal(contingency(a, da_b), want)
    # a label that lives in one block only still gets its row; explicit sizes pad
    a2 = a.copy()
    a2[5] = 15
    got = contingency(da.from_array(a2, chunks=uneven), da.from_array(b, chunks=3000))
    np.testing.assert_array_equal(got, contingency(a2, b))
    assert got.shape == (17, 6)
    assert contingency(da.from_array(a, chunks=uneven), b, n_a=20, n_b=8).shape == (21, 9)


# ---------------------------------------------------------------------------------------------
# ARI and AMI against scikit-learn


@pytest.mark.parametrize("n,ka,kb,noise", [(10, 2, 3, 0.0), (57, 5, 5, 0.1), (400, 20, 3, 0.0),
                                           (2000, 7, 9, 0.05), (6000, 30, 30, 0.0),
                                           (30_000, 4, 12, 0.1), (1500, 200, 150, 0.0)])
def test_scores_equal_sklearn_on_random_labels(n, ka, kb, noise):
    rng = np.random.default_rng(n + ka)
    for _ in range(3):
        a, b = _labels(rng, n, ka, noise), _labels(rng, n, kb, noise)
        _check_scores(a, b)  # independent
        mixed = np.where(rng.random(n) < 0.8, a % kb, b)
        _check_scores(a, mixed)  # related


def test_scores_edge_cases_as_sklearn():
    rng = np.random.default_rng(2)
    n = 3000
    a = _labels(rng, n, 10, 0.1)
    one = np.zeros(n, int)
    perm = rng.permutation(np.unique(a))  # renumbered, noise -1 included
    renamed = perm[np.searchsorted(np.unique(a), a)]
    cases = [(one, one), (one, a), (a, one), (a, a), (a, renamed), (a, np.full(n, -1)),
             (a[:2], a[:2]), (a[:3], a[:3])]
    m = 400  # all singletons: R * C pairs for both
    cases += [(np.arange(m), np.arange(m)), (np.arange(m), rng.permutation(m)),
              (np.arange(m), one[:m]), (one[:m], np.arange(m)), (np.arange(m), a[:m])]
    for x, y in cases:
        _check_scores(x, y)
    for x, y in [(a, renamed), (np.arange(m), rng.permutation(m)), (a, a)]:
        t = contingency(x, y)
        assert adjusted_rand(t) == 1.0
        assert adjusted_mutual_info(t) == pytest.approx(1.0, abs=1e-12)
    for size in (2, 3, 5, 100, 501):  # all singletons
        _check_scores(np.arange(size), np.random.default_rng(size).permutation(size))
    t = contingency(one, a)
    assert adjusted_mutual_info(t) == 0.0 and adjusted_rand(t) == 0.0
    assert adjusted_rand(contingency(one, one)) == adjusted_mutual_info(contingency(one, one)) == 1.0
    empty = np.array([], int)
    assert adjusted_rand(contingency(empty, empty)) == adjusted_rand_score(empty, empty) == 1.0
    assert adjusted_mutual_info(contingency(empty, empty)) == 1.0


def test_scores_from_a_table_ignore_empty_rows_and_columns():
    rng = np.random.default_rng(3)
    a, b = _labels(rng, 800, 6, 0.0), _labels(rng, 800, 4, 0.0)
    wide = contingency(a, b, n_a=10, n_b=9)
    assert adjusted_rand(wide) == adjusted_rand_score(a, b)
    assert adjusted_mutual_info(wide) == pytest.approx(adjusted_mutual_info_score(a, b), abs=1e-12)
    assert adjusted_mutual_info(contingency_matrix(a, b)) == adjusted_mutual_info(wide)
    for method in ("arithmetic", "geometric", "min", "max"):
        assert adjusted_mutual_info(wide, method) == pytest.approx(
            adjusted_mutual_info_score(a, b, average_method=method), abs=1e-12)
    with pytest.raises(ValueError, match="average_method"):
        adjusted_mutual_info(wide, "mean")
    with pytest.raises(ValueError, match="counts"):
        adjusted_rand(-wide)


def _emi_full(table):
    """The expected mutual information summed over every k of every pair (no window)."""
    a, b = table.sum(axis=1), table.sum(axis=0)
    a, b = a[a > 0], b[b > 0]
    n = int(a.sum())
    total = 0.0
    for ai in a:
        for bj in b:
            k = np.arange(max(1, ai + bj - n), min(ai, bj) + 1, dtype=np.float64)
            lp = (gammaln(ai + 1) + gammaln(bj + 1) + gammaln(n - ai + 1) + gammaln(n - bj + 1)
                  - gammaln(k + 1) - gammaln(n + 1) - gammaln(ai - k + 1) - gammaln(bj - k + 1)
                  - gammaln(n - ai - bj + k + 1))
            total += float(np.sum(k / n * (np.log(n * k) - np.log(ai) - np.log(bj)) * np.exp(lp)))
    return total


@pytest.mark.parametrize("sizes", [([20_000, 20_000], [30_000, 10_000]),
                                   ([39_000, 500, 500], [1, 38_999, 1000]),
                                   ([5000] * 8, [8000] * 5), ([3, 4, 5], [6, 6])])
def test_expected_mutual_info_window_is_exact(sizes):
    """The windowed sum (only terms not zero in float64) equals the full sum."""
    rs, cs = (np.array(s) for s in sizes)
    rng = np.random.default_rng(4)
    a = rng.permutation(np.repeat(np.arange(len(rs)), rs))
    b = rng.permutation(np.repeat(np.arange(len(cs)), cs))
    table = contingency(a, b)
    assert expected_mutual_info(table) == pytest.approx(_emi_full(table), rel=1e-9, abs=1e-15)


def test_scores_at_full_size_equal_sklearn():
    """416,314 rows, 30 x 30 clusters (the real delivery's size), uneven cluster sizes."""
    rng = np.random.default_rng(5)
    n = 416_314
    a = np.minimum(rng.geometric(0.12, n) - 1, 29).astype(np.int32)
    b = np.where(rng.random(n) < 0.6, (a * 7) % 30, rng.integers(0, 30, n)).astype(np.int32)
    table = contingency(da.from_array(a, chunks=65_536), da.from_array(b, chunks=50_000))
    assert adjusted_rand(table) == adjusted_rand_score(a, b)
    assert adjusted_mutual_info(table) == pytest.approx(adjusted_mutual_info_score(a, b),
                                                        abs=1e-9, rel=0)
    assert table.shape == (31, 31) and table.sum() == n


def test_agreement_dask_equals_numpy():
    rng = np.random.default_rng(6)
    n = 9001
    a, b = _labels(rng, n, 6, 0.1), _labels(rng, n, 8, 0.0)
    want = contingency(a, b)
    got = contingency(da.from_array(a, chunks=(1000, 3000, 5001)), da.from_array(b, chunks=2222))
    np.testing.assert_array_equal(got, want)
    assert adjusted_rand(got) == adjusted_rand(want) == adjusted_rand_score(a, b)
    assert adjusted_mutual_info(got) == adjusted_mutual_info(want)


# ---------------------------------------------------------------------------------------------
# outlier Jaccard


def test_outlier_jaccard_by_hand():
    a = np.array([1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 0, 1, 1, 0], bool)
    assert outlier_jaccard(a, b) == 2 / 4
    assert outlier_jaccard(a, a) == 1.0
    assert outlier_jaccard(a, ~a) == 0.0
    assert outlier_jaccard(np.zeros(6, bool), np.zeros(6, bool)) == 1.0
    assert outlier_jaccard(np.zeros(6, bool), b) == 0.0
    assert outlier_jaccard(a.astype(np.int8), b.astype(np.int8)) == 0.5
    with pytest.raises(ValueError, match="length"):
        outlier_jaccard(a, b[:5])


def test_outlier_jaccard_dask():
    rng = np.random.default_rng(7)
    n = 10_007
    a, b = rng.random(n) < 0.05, rng.random(n) < 0.07
    a[:300] = b[:300] = True
    want = (a & b).sum() / (a | b).sum()
    assert outlier_jaccard(a, b) == want
    chunks = (7, 5000, 3000, n - 8007)
    assert outlier_jaccard(da.from_array(a, chunks=chunks), da.from_array(b, chunks=999)) == want
    assert outlier_jaccard(a, da.from_array(b, chunks=chunks)) == want
    assert outlier_jaccard(da.from_array(a, chunks=chunks), b) == want


# ---------------------------------------------------------------------------------------------
# match_clusters


def _blobs(rng, sizes):
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes))


def test_match_permuted_identical_partition_maps_back():
    rng = np.random.default_rng(8)
    prev = _blobs(rng, [500, 300, 800, 50, 120])
    perm = np.array([3, 0, 4, 1, 2])  # previous id -> new model's number
    new = perm[prev]
    mapping = match_clusters(contingency(prev, new)[:-1, :-1])
    assert mapping == {int(perm[p]): p for p in range(5)}
    np.testing.assert_array_equal(np.vectorize(mapping.get)(new), prev)


def test_match_split_cluster_keeps_id_on_the_larger_part():
    rng = np.random.default_rng(9)
    prev = _blobs(rng, [1000, 600, 400])
    new = prev.copy()
    part = np.flatnonzero(prev == 1)
    new[part[:200]] = 3  # cluster 1 split: 400 stay, 200 go to a new cluster
    new[prev == 0] = 2  # and the others renumbered
    new[prev == 2] = 0
    mapping = match_clusters(contingency(prev, new)[:-1, :-1])
    assert mapping == {2: 0, 1: 1, 0: 2, 3: 3}  # the new part gets max(previous ids) + 1


def test_match_cluster_without_real_overlap_gets_a_new_id():
    # new cluster 1 takes a few rows of each previous cluster: the assignment pairs it with
    # previous 2, but only 30 of its 80 rows (37.5%) come from there
    table = np.array([[900, 40, 0],
                      [0, 10, 500],
                      [0, 30, 0]])
    assert match_clusters(table) == {0: 0, 1: 3, 2: 1}
    assert match_clusters(table, next_id=10) == {0: 0, 1: 10, 2: 1}
    # with a threshold at its share it keeps the id it is paired with
    assert match_clusters(table, min_share=30 / 80) == {0: 0, 1: 2, 2: 1}
    # paired with a previous cluster it shares no row with (previous 1 has none left)
    assert match_clusters(np.array([[500, 100], [0, 0]])) == {0: 0, 1: 2}
    # a new cluster with no row at all, and one previous id that vanished
    table = np.array([[0, 0, 0, 0],
                      [700, 0, 0, 0],
                      [0, 0, 300, 0]])
    assert match_clusters(table) == {0: 1, 1: 3, 2: 2, 3: 4}
    with pytest.raises(ValueError, match="min_share"):
        match_clusters(table, min_share=0)
    with pytest.raises(ValueError, match="next_id"):
        match_clusters(table, next_id=2)


def test_match_fewer_new_clusters_and_determinism():
    rng = np.random.default_rng(10)
    prev = _blobs(rng, [400, 400, 300, 200])
    new = np.where(prev == 3, 0, prev)  # previous 3 merged into 0; new numbering as before
    table = contingency(prev, new)[:-1, :-1]
    assert match_clusters(table) == {0: 0, 1: 1, 2: 2}
    tied = np.array([[50, 50, 0], [50, 50, 0], [0, 0, 80]])
    first = match_clusters(tied)
    assert all(match_clusters(tied.copy()) == first for _ in range(5))
    assert sorted(first.values()) == [0, 1, 2]
    big = rng.integers(0, 1000, (30, 32))
    assert match_clusters(big) == match_clusters(big.copy())
    assert sorted(match_clusters(big).values()) == sorted(set(match_clusters(big).values()))
    assert match_clusters(np.zeros((0, 2), int)) == {0: 0, 1: 1}


def test_expected_mutual_info_in_steps(monkeypatch):
    """The terms evaluated in several groups of pairs sum as in one."""
    import vclust.numerics.agreement as agreement_module

    rng = np.random.default_rng(11)
    table = contingency(_labels(rng, 50_000, 9), _labels(rng, 50_000, 7))
    whole = expected_mutual_info(table)
    monkeypatch.setattr(agreement_module, "_TERMS_PER_STEP", 1000)
    assert expected_mutual_info(table) == pytest.approx(whole, rel=1e-12)
    assert expected_mutual_info(table) == pytest.approx(_emi_full(table), rel=1e-9)
