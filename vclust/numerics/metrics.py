"""Partition metrics computed exactly over all rows as map-reduce, plus a sampled silhouette.

Two passes over the rows: the first gathers per-cluster counts and sums (the cluster means),
the second the squared and plain distances of every row to its cluster mean. From those:

    Calinski-Harabasz = [B / (k - 1)] / [W / (n - k)]
        W = sum_i ||x_i - mu_c(i)||^2,   B = sum_c n_c ||mu_c - mu||^2
    Davies-Bouldin = mean_c max_{c' != c} (S_c + S_c') / ||mu_c - mu_c'||
        S_c = mean distance of the members of c to mu_c

Both equal sklearn.metrics on in-memory data (same edge cases), in float64.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .blocks import run_local, is_dask, map_blocks_reduce, row_uniform


#: rows per slice inside a block: the float64 temporaries of a slice stay small and are
#: reused, instead of a fresh block-sized one per call, whose new pages cost more to touch
#: than the arithmetic (benchmarks/RESULTS.md, "Partition metrics in slices")
SLICE_ROWS = 2048


def _sums_block(block, labels, row0, k):
    x = np.asarray(block)
    labels = np.asarray(labels)
    sums = np.zeros((k, x.shape[1]))
    for a in range(0, len(x), SLICE_ROWS):
        xs = x[a:a + SLICE_ROWS].astype(np.float64)
        onehot = sp.csr_matrix((np.ones(len(xs)), (labels[a:a + SLICE_ROWS], np.arange(len(xs)))),
                               shape=(k, len(xs)))
        sums += onehot @ xs
    return np.bincount(labels, minlength=k), sums


def _dist_block(block, labels, row0, means):
    x = np.asarray(block)
    labels = np.asarray(labels)
    k = len(means)
    sq = np.empty(len(x))
    for a in range(0, len(x), SLICE_ROWS):
        xs = x[a:a + SLICE_ROWS].astype(np.float64)
        xs -= means[labels[a:a + SLICE_ROWS]]
        np.einsum("ij,ij->i", xs, xs, out=sq[a:a + SLICE_ROWS])
    return (np.bincount(labels, weights=sq, minlength=k),
            np.bincount(labels, weights=np.sqrt(sq), minlength=k))


def _n_clusters(labels, n_clusters):
    if n_clusters is not None:
        return int(n_clusters)
    top = labels.max().compute() if is_dask(labels) else np.max(labels)
    return int(top) + 1


def _sums_blocks(block, *rest):
    """``_sums_block`` of one row block under each of several labellings (``rest``: their label
    blocks, the block's first row, their cluster counts)."""
    *labellings, row0, ks = rest
    return [_sums_block(block, labels, row0, k) for labels, k in zip(labellings, ks)]


def _dist_blocks(block, *rest):
    """``_dist_block`` of one row block under each of several labellings (``rest``: their label
    blocks, the block's first row, their cluster means)."""
    *labellings, row0, means = rest
    return [_dist_block(block, labels, row0, m) for labels, m in zip(labellings, means)]


def _partition_stats_many(X, labellings, n_clusters):
    """(counts, sums, means, squared and plain distances to the means) of X under each of
    ``labellings`` (``n_clusters``: a list alike), in two passes over X for all of them: each
    labelling's figures come from the same blocks summed in the same order as alone, so they
    are the same bits, and a dask X costs two round trips to the workers, not two each."""
    ks = [_n_clusters(labels, n) for labels, n in zip(labellings, n_clusters)]

    def total(parts, j, i):  # labelling j's i-th figure, summed over the blocks in order
        return np.sum([p[j][i] for p in parts], axis=0)

    parts = map_blocks_reduce(_sums_blocks, X, *labellings, args=(ks,))
    counts = [total(parts, j, 0) for j in range(len(ks))]
    sums = [total(parts, j, 1) for j in range(len(ks))]
    means = [s / np.maximum(c, 1)[:, None] for c, s in zip(counts, sums)]
    parts = map_blocks_reduce(_dist_blocks, X, *labellings, args=(means,))
    return [(counts[j], sums[j], means[j], total(parts, j, 0), total(parts, j, 1))
            for j in range(len(ks))]


def _partition_stats(X, labels, n_clusters=None):
    return _partition_stats_many(X, [labels], [n_clusters])[0]


def _check_labels(counts):
    k = int((counts > 0).sum())
    n = int(counts.sum())
    if not 1 < k < n:
        raise ValueError(f"number of labels is {k}; valid values are 2 to n_samples - 1 ({n - 1})")


def _ch(counts, sums, means, sq):
    n = counts.sum()
    k = int((counts > 0).sum())
    mu = sums.sum(axis=0) / n
    within = sq.sum()
    between = float((counts * ((means - mu) ** 2).sum(axis=1)).sum())
    return 1.0 if within == 0 else float(between * (n - k) / (within * (k - 1)))


def _db(counts, means, dist):
    keep = counts > 0
    means, s = means[keep], dist[keep] / counts[keep]
    if np.allclose(s, 0):
        return 0.0
    diff = means[:, None, :] - means[None, :, :]
    centroid = np.sqrt((diff**2).sum(axis=2))
    if np.allclose(centroid, 0):
        return 0.0
    centroid[centroid == 0] = np.inf
    scores = (s[:, None] + s[None, :]) / centroid
    np.fill_diagonal(scores, -np.inf)  # a cluster is not compared with itself
    return float(np.mean(scores.max(axis=1)))


def calinski_harabasz(X, labels, n_clusters=None) -> float:
    counts, sums, means, sq, _ = _partition_stats(X, labels, n_clusters)
    _check_labels(counts)
    return _ch(counts, sums, means, sq)


def davies_bouldin(X, labels, n_clusters=None) -> float:
    counts, _, means, _, dist = _partition_stats(X, labels, n_clusters)
    _check_labels(counts)
    return _db(counts, means, dist)


def _sample_positions(n, sample_size, random_state):
    """Rows of the silhouette sample: those whose row hash falls under sample_size / n (the same
    rows for every labelling of the same X, whatever its chunking)."""
    p = min(1.0, sample_size / n)
    return np.flatnonzero(row_uniform(np.arange(n), random_state, 11) < p)


def _distance_rows(x, sq, a, b):
    """Euclidean distances of rows a:b of x to every row of x (float64 in, float64 out), as
    scikit-learn computes them for float32 input; a row to itself is exactly 0."""
    d = x[a:b] @ x.T
    d *= -2
    d += sq[a:b, None]
    d += sq[None, :]
    np.maximum(d, 0, out=d)
    d[np.arange(b - a), np.arange(a, b)] = 0
    np.sqrt(d, out=d)
    return d


def _pairwise_distances(xs, step=64):
    """Euclidean distances between the rows of xs (m x m, float32), computed in float64 in
    slices (as scikit-learn does for float32 input) and stored in float32."""
    x = np.asarray(xs, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty((len(x), len(x)), np.float32)

    def fill(a):
        out[a:a + step] = _distance_rows(x, sq, a, min(a + step, len(x)))

    run_local(fill, range(0, len(x), step))  # slices side by side on the process's threads
    return out


def _onehot(ls):
    uniq, lab = np.unique(np.asarray(ls), return_inverse=True)
    onehot = np.zeros((len(lab), len(uniq)), np.float32)
    onehot[np.arange(len(lab)), lab] = 1
    return lab, onehot


def _silhouette_from_sums(sums, lab) -> float:
    """scikit-learn's silhouette_score from each row's summed distance to each cluster
    (m x k): a = mean distance to the other members of its cluster, b = least mean distance to
    another cluster, s = (b - a) / max(a, b), 0 for a row alone in its cluster."""
    m, k = sums.shape
    counts = np.bincount(lab, minlength=k).astype(np.float64)
    own = counts[lab]
    a = sums[np.arange(m), lab] / np.maximum(own - 1, 1)
    other = sums / counts
    other[np.arange(m), lab] = np.inf
    b = other.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b - a) / np.maximum(a, b)
    return float(np.where(own > 1, np.nan_to_num(s), 0.0).mean())


def _silhouette_from_distances(D, ls) -> float:
    """scikit-learn's silhouette_score from a precomputed distance matrix."""
    lab, onehot = _onehot(ls)
    return _silhouette_from_sums((D @ onehot).astype(np.float64), lab)


def _silhouette_streamed(xs, ls, step=64) -> float:
    """The same silhouette without the m x m matrix: each slice of distance rows is summed by
    cluster as it is made: no sample_size^2 matrix to allocate, whose fresh memory costs more
    to touch than the sums (benchmarks/RESULTS.md, figures behind the code)."""
    lab, onehot = _onehot(ls)
    x = np.asarray(xs, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    sums = np.empty(onehot.shape, np.float64)

    def fill(a):
        b = min(a + step, len(x))
        sums[a:b] = _distance_rows(x, sq, a, b).astype(np.float32) @ onehot

    run_local(fill, range(0, len(x), step))
    return _silhouette_from_sums(sums, lab)


def silhouette_sampled(X, labels, sample_size=10_000, random_state=0, cache=None) -> float:
    """scikit-learn's silhouette on a seeded sample of rows (chosen by row hash).

    ``cache``: a dict kept across calls on the same X (a k-range): the sample's rows and their
    distance matrix (sample_size^2 float32: 400 MB for 10,000) are computed on the first call
    only, so each further labelling costs one product with its one-hot matrix instead of
    sample_size^2 distances again (benchmarks/RESULTS.md, figures behind the code).
    Without a cache (one labelling) the distances are summed slice by slice, never held."""
    n = X.shape[0]
    key = (X.shape, sample_size, random_state)
    if cache is not None and cache.get("key") == key:
        pos, D, xs = cache["pos"], cache["D"], None
    else:
        pos, D = _sample_positions(n, sample_size, random_state), None
        xs = X[pos]
        xs = np.asarray(xs.compute() if is_dask(xs) else xs)
    ls = labels[pos]
    ls = np.asarray(ls.compute() if is_dask(ls) else ls)
    if len(np.unique(ls)) < 2 or len(ls) < 3:
        return float("nan")
    if cache is None:
        return _silhouette_streamed(xs, ls)
    if D is None:
        D = _pairwise_distances(xs)
        cache.update(key=key, pos=pos, D=D)
    return _silhouette_from_distances(D, ls)


def evaluate_partition(X, labels, *, n_clusters=None, silhouette_sample=10_000,
                       random_state=0, cache=None) -> dict:
    """Calinski-Harabasz, Davies-Bouldin, the within-cluster sum of squares, sizes and a sampled
    silhouette. Reads X three times (sums, distances, silhouette sample).

    ``within_ss`` is the sum of squared distances to the cluster *means*; KMeans' ``inertia_``
    is the sum to its *centres*, the same number only when the centres are the means
    (at convergence). ``cache``: see :func:`silhouette_sampled` (one dict per X)."""
    return evaluate_partitions(X, [labels], [n_clusters], silhouette_sample=silhouette_sample,
                               random_state=random_state, cache=cache)[0]


def evaluate_partitions(X, labellings, n_clusters, *, silhouette_sample=10_000, random_state=0,
                        cache=None) -> list[dict]:
    """``evaluate_partition`` of X under each of ``labellings`` (``n_clusters``: a list alike),
    the same figures, from two passes over X for all of them (``_partition_stats_many``). Give
    numpy labels where X is held on workers: the silhouette's rows of them are then taken here,
    not computed there."""
    out = []
    stats = _partition_stats_many(X, labellings, n_clusters)
    for labels, (counts, sums, means, sq, dist) in zip(labellings, stats):
        _check_labels(counts)
        out.append({
            "n_clusters": int(len(counts)),
            "calinski_harabasz": _ch(counts, sums, means, sq),
            "davies_bouldin": _db(counts, means, dist),
            "silhouette": silhouette_sampled(X, labels, silhouette_sample, random_state, cache),
            "within_ss": float(sq.sum()),
            "sizes": [int(c) for c in counts],
        })
    return out


def choose_k(table: list[dict]) -> int:
    """The k to keep from a k-range table.

    Rule: rank the rows by Calinski-Harabasz (higher is better), by Davies-Bouldin (lower is
    better) and by the sampled silhouette (higher is better); the best mean rank wins; ties go to
    the smaller k. Each metric alone drifts with k (CH keeps favouring few clusters on CNN
    descriptors, DB and silhouette are noisier); their agreement is a steadier choice.
    """
    if not table:
        raise ValueError("empty k-range table")
    ks = np.array([r["k"] for r in table])
    ch = np.array([r["calinski_harabasz"] for r in table])
    db = np.array([r["davies_bouldin"] for r in table])
    rank_ch = (-ch).argsort(kind="stable").argsort()
    rank_db = db.argsort(kind="stable").argsort()
    sil = np.array([r.get("silhouette", np.nan) for r in table], dtype=float)
    sil = np.where(np.isnan(sil), -np.inf, sil)
    rank_sil = (-sil).argsort(kind="stable").argsort()
    score = (rank_ch + rank_db + rank_sil) / 3.0
    order = np.lexsort((ks, score))
    return int(ks[order[0]])


def identity_consistency(labels, groups) -> dict:
    """How well clusters follow an identity (in VeRi-Wild, the vehicle: the folder of an image).

    For a row i of cluster c whose group g holds n_g >= 2 rows, the share of g's *other* rows
    that are also in c: (n_gc - 1) / (n_g - 1). A cluster's consistency is the mean over its rows
    in such groups; the overall figure is the mean over all such rows. Near 1: the clusters keep a
    vehicle's images together (they follow colour, type); low: they cut across vehicles (view,
    camera). Rows of single-row groups are left out.

    Parameters
    ----------
    labels : array (n_samples,) of int cluster ids
    groups : array (n_samples,) of hashable group keys

    Returns
    -------
    dict with ``overall`` (float or None when no group has two rows), ``per_cluster``
    ({cluster: float or None}), ``rows`` (rows counted) and ``groups`` (groups of >= 2 rows).

    Counted with numpy on integer codes: ``groups`` given as integers are taken as codes
    (negative: no group), any other keys are factorised first: `vclust compare` factorises the
    image folders once for all its partitions (benchmarks/RESULTS.md, figures behind the code).
    """
    import pandas as pd

    labels = np.asarray(labels)
    g = np.asarray(groups)
    if g.dtype.kind not in "iu":
        g = pd.factorize(np.asarray(groups, dtype=object))[0]  # missing keys: -1
    g = g.astype(np.int64, copy=False)
    if labels.dtype.kind in "iu" and labels.size and labels.min() >= 0:
        present = np.bincount(labels) > 0
        clusters = np.flatnonzero(present)
        c = (np.cumsum(present) - 1)[labels]
    else:
        clusters, c = np.unique(labels, return_inverse=True)
        c = c.reshape(-1)
    ok = g >= 0
    n_g = np.zeros(len(g), np.int64)
    n_gc = np.zeros(len(g), np.int64)
    if ok.any():
        go, key = g[ok], g[ok] * len(clusters) + c[ok]
        n_g[ok] = np.bincount(go)[go]
        if int(key.max()) < 16 * len(key):  # a count per (group, cluster): no sort
            n_gc[ok] = np.bincount(key)[key]
        else:
            _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
            n_gc[ok] = counts[inv.reshape(-1)]
    keep = n_g >= 2
    share = np.where(keep, (n_gc - 1) / np.maximum(n_g - 1, 1), np.nan)
    kept = np.bincount(c[keep], minlength=len(clusters))
    sums = np.bincount(c[keep], weights=share[keep], minlength=len(clusters))
    return {
        "overall": float(np.mean(share[keep])) if keep.any() else None,
        "per_cluster": {int(cl): (float(sums[i] / kept[i]) if kept[i] else None)
                        for i, cl in enumerate(clusters)},
        "rows": int(keep.sum()),
        "groups": int(np.count_nonzero(np.bincount(g[keep]))) if keep.any() else 0,
    }
