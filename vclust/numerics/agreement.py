"""Agreement between partitions of the same rows, computed exactly over all rows as map-reduce.

One pass over two label arrays (numpy or dask, chunked by rows) gives their contingency table;
everything else is computed from the table alone, on the client:

    ARI  adjusted Rand index            equal to sklearn.metrics.adjusted_rand_score
    AMI  adjusted mutual information    equal to sklearn.metrics.adjusted_mutual_info_score
                                        (average_method="arithmetic" by default)

on the same labels, with scikit-learn's edge cases (single cluster, identical labelings, all
singletons, no rows). The expected mutual information under the permutation model is summed
over the hypergeometric terms that are not zero in float64 only (see ``expected_mutual_info``),
so its cost is about sqrt(R * C * n) terms instead of up to R * C * n.

Also the Jaccard index of two outlier flag arrays, and ``match_clusters``: the renumbering that
gives a refitted model's clusters the ids of the previous model's clusters they continue.

Labels are integers. Every negative label (HDBSCAN's noise -1, and its -2 / -3) is one label,
"noise", counted in the table's last row / column; as a label like any other, so ARI and AMI
equal scikit-learn's on the same labels whenever a labeling has a single negative value (as
vclust's labels do: -1).
"""

from __future__ import annotations

from math import log

import numpy as np
from scipy.special import gammaln

from .blocks import is_dask, map_blocks_reduce

# ---------------------------------------------------------------------------------------------
# contingency table


def _codes(labels: np.ndarray, n: int | None, what: str) -> tuple[np.ndarray, int]:
    """Labels of a block as int64 table indices, negative ones at index ``n`` (the noise slot),
    and ``n``: the given count of non-negative labels, or the block's largest label + 1."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"{what} must be integers; got dtype {labels.dtype}")
    codes = labels.astype(np.int64, copy=False)
    top = int(codes.max()) + 1 if codes.size else 0
    if n is None:
        n = max(top, 0)
    elif top > n:
        raise ValueError(f"{what} has label {top - 1}, outside 0..{n - 1} (n={n})")
    noise = codes < 0
    if noise.any():
        codes = np.where(noise, n, codes)
    return codes, n


def _table_block(a, b, row0, n_a, n_b):
    a, ka = _codes(a, n_a, "labels_a")
    b, kb = _codes(b, n_b, "labels_b")
    if len(a) != len(b):
        raise ValueError(f"labels_a and labels_b differ in length ({len(a)} and {len(b)})")
    flat = np.bincount(a * (kb + 1) + b, minlength=(ka + 1) * (kb + 1))
    return flat.reshape(ka + 1, kb + 1).astype(np.int64, copy=False)


def _add_block_table(total: np.ndarray, t: np.ndarray) -> None:
    """Add a block's table (its own label counts, noise last) into ``total`` (noise last)."""
    ka, kb = t.shape[0] - 1, t.shape[1] - 1
    total[:ka, :kb] += t[:-1, :-1]
    total[:ka, -1] += t[:-1, -1]
    total[-1, :kb] += t[-1, :-1]
    total[-1, -1] += t[-1, -1]


def _check_1d(x, what):
    if x.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one label per row); got shape {x.shape}")


def _paired(a, b, what: str):
    """Two 1-D arrays (numpy or dask) over the same rows, checked: ``what``_a and ``what``_b."""
    a = a if is_dask(a) else np.asarray(a)
    b = b if is_dask(b) else np.asarray(b)
    _check_1d(a, f"{what}_a")
    _check_1d(b, f"{what}_b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what}_a and {what}_b differ in length ({a.shape[0]} and {b.shape[0]})")
    return a, b


def contingency(labels_a, labels_b, n_a: int | None = None, n_b: int | None = None) -> np.ndarray:
    """Contingency table of two labelings of the same rows, in one pass over the rows.

    Parameters
    ----------
    labels_a, labels_b : array_like of int, shape (n_samples,)
        Labels of the same rows, numpy or dask (chunked by rows). When both are dask and their
        chunks differ, ``labels_b`` is rechunked to ``labels_a``'s chunks (inside the same
        graph: still one pass). A numpy array beside a dask one is cut into the dask array's
        blocks. Non-negative labels are cluster ids; every negative label is "noise".
    n_a, n_b : int, optional
        Number of non-negative labels of each labeling (labels ``0 .. n - 1``); a larger label
        raises ValueError. Default: the largest label + 1 (0 when there is none), found in the
        same pass.

    Returns
    -------
    table : ndarray of int64, shape (n_a + 1, n_b + 1)
        ``table[i, j]`` is the number of rows with label ``i`` in ``labels_a`` and ``j`` in
        ``labels_b``; the last row (column) counts the rows whose label in ``labels_a``
        (``labels_b``) is negative, all zero when there is none. The noise row and column are
        always there, so ``table[:-1, :-1]`` is the table of the rows labelled by both.

    Notes
    -----
    All negative values of a labeling are merged into its noise label. Treated as one more
    label by ``adjusted_rand`` and ``adjusted_mutual_info``, as scikit-learn treats -1, the
    scores equal scikit-learn's on the same labels whenever each labeling has at most one
    distinct negative value. Rows and columns of labels that never occur are zero and change no
    score. With dask inputs each task returns a table of its block's labels only (at most
    ``(n_a + 1) * (n_b + 1)`` integers), and the client sums them in block order.
    """
    if not is_dask(labels_a) and is_dask(labels_b):
        return np.ascontiguousarray(contingency(labels_b, labels_a, n_b, n_a).T)
    labels_a, labels_b = _paired(labels_a, labels_b, "labels")
    for n, what in ((n_a, "n_a"), (n_b, "n_b")):
        if n is not None and int(n) < 0:
            raise ValueError(f"{what} must be >= 0; got {n}")
    n_a = None if n_a is None else int(n_a)
    n_b = None if n_b is None else int(n_b)
    parts = map_blocks_reduce(_table_block, labels_a, labels_b, args=(n_a, n_b))
    ka = n_a if n_a is not None else max((p.shape[0] - 1 for p in parts), default=0)
    kb = n_b if n_b is not None else max((p.shape[1] - 1 for p in parts), default=0)
    total = np.zeros((ka + 1, kb + 1), np.int64)
    for p in parts:
        _add_block_table(total, p)
    return total


# ---------------------------------------------------------------------------------------------
# scores from the table


def _as_table(table) -> np.ndarray:
    t = np.asarray(table)
    if t.ndim != 2:
        raise ValueError(f"table must be 2-D; got shape {t.shape}")
    if t.dtype.kind not in "biuf" or (t.dtype.kind == "f" and not np.all(t == np.round(t))):
        raise ValueError("table must hold counts (non-negative integers)")
    t = t.astype(np.int64)
    if (t < 0).any():
        raise ValueError("table must hold counts (non-negative integers)")
    return t


def _nonempty(t: np.ndarray) -> np.ndarray:
    """The table without the rows and columns of labels that occur in no row (scikit-learn's
    contingency has none)."""
    return t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]


def adjusted_rand(table) -> float:
    """Adjusted Rand index of the two labelings a contingency table describes.

    Parameters
    ----------
    table : array_like of int, shape (R, C)
        A contingency table, for example from ``contingency``. Empty rows and columns are
        ignored.

    Returns
    -------
    float
        Equal to ``sklearn.metrics.adjusted_rand_score`` on the labels (the same pair counts in
        int64, the same expression on Python integers): 1.0 for identical labelings up to
        renumbering, for no rows, and when both labelings are a single cluster or all
        singletons; about 0 for independent labelings; may be negative.
    """
    t = _as_table(table)
    n = int(t.sum())
    n_c = t.sum(axis=1)
    n_k = t.sum(axis=0)
    sum_squares = int((t**2).sum())
    tp = sum_squares - n
    fp = int((n_k.astype(object) ** 2).sum()) - sum_squares
    fn = int((n_c.astype(object) ** 2).sum()) - sum_squares
    tn = n**2 - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _entropy(counts: np.ndarray) -> float:
    """Entropy (nats) of a labeling from its cluster sizes, as scikit-learn computes it."""
    pi = counts[counts > 0].astype(np.float64)
    if pi.size == 0:
        return 1.0
    if pi.size == 1:
        return 0.0
    pi_sum = np.sum(pi)
    return float(-np.sum((pi / pi_sum) * (np.log(pi) - log(pi_sum))))


def mutual_info(table) -> float:
    """Mutual information (nats) of the two labelings a contingency table describes.

    Parameters
    ----------
    table : array_like of int, shape (R, C)

    Returns
    -------
    float
        Equal to ``sklearn.metrics.mutual_info_score`` on the labels (same terms, same order).
    """
    t = _nonempty(_as_table(table))
    if t.shape[0] <= 1 or t.shape[1] <= 1:
        return 0.0
    nzx, nzy = np.nonzero(t)
    nz_val = t[nzx, nzy]
    total = t.sum()
    pi = t.sum(axis=1)
    pj = t.sum(axis=0)
    log_nm = np.log(nz_val)
    nm = nz_val / total
    outer = pi.take(nzx) * pj.take(nzy)
    log_outer = -np.log(outer) + log(pi.sum()) + log(pj.sum())
    mi = nm * (log_nm - log(total)) + nm * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    return float(np.clip(mi.sum(), 0.0, None))


_LOG_FLOOR = -750.0  # exp(x) is exactly 0.0 in float64 for x < -745.14
_TERMS_PER_STEP = 1 << 21  # hypergeometric terms evaluated at once (bounds the temporaries)


def expected_mutual_info(table) -> float:
    """Expected mutual information (nats) of two labelings with the table's cluster sizes, under
    the permutation model (Vinh, Epps and Bailey 2010), as AMI subtracts it.

    Parameters
    ----------
    table : array_like of int, shape (R, C)
        Only its row sums ``a`` and column sums ``b`` matter.

    Returns
    -------
    float
        ``sum_ij sum_k P_ij(k) * k / N * log(N k / (a_i b_j))`` over ``k >= 1``, where ``P_ij``
        is the hypergeometric probability of ``k`` common rows; 0.0 when either labeling has a
        single cluster.

    Notes
    -----
    The terms are scikit-learn's (the same log-gamma expression for ``P_ij(k)``), vectorised
    over all (i, j, k) at once. For each pair (i, j) only the ``k`` whose ``log P_ij(k)`` is at
    least -750 are evaluated: ``exp`` of anything below -745.14 is exactly 0.0 in float64, so
    the terms left out are exactly zero in the full sum too. The hypergeometric distribution is
    log-concave, so those ``k`` are one interval around the mode, found by bisection on each
    side (about 20 vectorised steps). The interval is about 77 standard deviations wide,
    ``sqrt(a_i b_j / N)`` roughly, so the whole sum has O(sqrt(R C N)) terms (about 1.5 million
    for 416,314 rows and 30 x 30 clusters) instead of up to ``N * min(R, C)``. Only the order of
    the floating-point additions differs from scikit-learn's loop (relative 1e-15).
    """
    t = _nonempty(_as_table(table))
    a = t.sum(axis=1)
    b = t.sum(axis=0)
    if a.size <= 1 or b.size <= 1:
        return 0.0
    n = int(a.sum())
    ai = np.repeat(a, b.size)
    bj = np.tile(b, a.size)
    gln_const = (gammaln(ai + 1) + gammaln(bj + 1) + gammaln(n - ai + 1) + gammaln(n - bj + 1))

    def log_p(k, idx=slice(None)):
        """log P(k common rows) for the pairs ``idx``, as scikit-learn writes it."""
        aa, bb = ai[idx], bj[idx]
        return (gln_const[idx] - (gammaln(k + 1) + gammaln(n + 1)) - gammaln(aa - k + 1)
                - gammaln(bb - k + 1) - gammaln(n - aa - bb + k + 1))

    lo = np.maximum(1, ai + bj - n)
    hi = np.minimum(ai, bj)
    mode = np.clip((ai + 1) * (bj + 1) // (n + 2), lo, hi)
    has = (lo <= hi) & (log_p(mode) >= _LOG_FLOOR)
    # smallest k in [lo, mode] with log_p >= floor (log_p rises up to the mode)
    left, right = lo.copy(), mode.copy()
    while np.any(live := left < right):
        mid = (left + right) // 2
        ok = np.ones_like(live)
        ok[live] = log_p(mid[live], live) >= _LOG_FLOOR
        right = np.where(live & ok, mid, right)
        left = np.where(live & ~ok, mid + 1, left)
    start = left
    # largest k in [mode, hi] with log_p >= floor
    left, right = mode.copy(), hi.copy()
    while np.any(live := left < right):
        mid = (left + right + 1) // 2
        ok = np.ones_like(live)
        ok[live] = log_p(mid[live], live) >= _LOG_FLOOR
        left = np.where(live & ok, mid, left)
        right = np.where(live & ~ok, mid - 1, right)
    stop = np.where(has, left + 1, start)  # exclusive; empty when the pair has no term

    log_a = np.log(ai.astype(np.float64))
    log_b = np.log(bj.astype(np.float64))
    log_n = np.log(n)
    widths = stop - start
    ends = np.cumsum(widths)
    emi = 0.0
    first = 0
    while first < len(widths):  # pairs in groups of about _TERMS_PER_STEP terms
        base = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + _TERMS_PER_STEP, side="right")))
        sel = np.arange(first, last)
        w = widths[sel]
        pair = np.repeat(sel, w)
        k = (np.arange(int(w.sum())) - np.repeat(np.cumsum(w) - w, w) + start[pair])
        kf = k.astype(np.float64)
        term1 = kf / n
        term2 = (log_n + np.log(kf)) - log_a[pair] - log_b[pair]
        term3 = np.exp(log_p(k, pair))
        emi += float(np.sum(term1 * term2 * term3))
        first = last
    return emi


def adjusted_mutual_info(table, average_method: str = "arithmetic") -> float:
    """Adjusted mutual information of the two labelings a contingency table describes.

    Parameters
    ----------
    table : array_like of int, shape (R, C)
        A contingency table, for example from ``contingency``. Empty rows and columns are
        ignored.
    average_method : {"arithmetic", "geometric", "min", "max"}, default "arithmetic"
        How the two entropies are averaged in the normaliser, as in scikit-learn.

    Returns
    -------
    float
        ``(MI - E[MI]) / (mean(H_a, H_b) - E[MI])``, equal to
        ``sklearn.metrics.adjusted_mutual_info_score`` on the labels, with its edge cases:
        1.0 when both labelings are a single cluster (or there are no rows); 0.0 when exactly
        one is; numerator and denominator kept at least machine epsilon away from 0 with their
        sign (so identical labelings, all singletons included, give 1.0).
    """
    t = _nonempty(_as_table(table))
    n_classes, n_clusters = t.shape
    if n_classes == n_clusters == 1 or n_classes == n_clusters == 0:
        return 1.0
    if n_classes == 1 or n_clusters == 1:
        return 0.0
    mi = mutual_info(t)
    emi = expected_mutual_info(t)
    h_a, h_b = _entropy(t.sum(axis=1)), _entropy(t.sum(axis=0))
    if average_method == "arithmetic":
        normalizer = np.mean([h_a, h_b])
    elif average_method == "geometric":
        normalizer = np.sqrt(h_a * h_b)
    elif average_method == "min":
        normalizer = min(h_a, h_b)
    elif average_method == "max":
        normalizer = max(h_a, h_b)
    else:
        raise ValueError("average_method must be 'arithmetic', 'geometric', 'min' or 'max'; "
                         f"got {average_method!r}")
    eps = np.finfo("float64").eps
    denominator = normalizer - emi
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    numerator = mi - emi
    numerator = min(numerator, -eps) if numerator < 0 else max(numerator, eps)
    return float(numerator / denominator)


# ---------------------------------------------------------------------------------------------
# outliers


def _jaccard_block(a, b, row0):
    a = np.asarray(a).astype(bool, copy=False)
    b = np.asarray(b).astype(bool, copy=False)
    if len(a) != len(b):
        raise ValueError(f"flags_a and flags_b differ in length ({len(a)} and {len(b)})")
    return int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))


def outlier_jaccard(flags_a, flags_b) -> float:
    """Jaccard index of two sets of outlier rows, in one pass.

    Parameters
    ----------
    flags_a, flags_b : array_like of bool, shape (n_samples,)
        Outlier flags of the same rows (non-zero is an outlier), numpy or dask (chunked as for
        ``contingency``).

    Returns
    -------
    float
        ``|A & B| / |A | B|``; 1.0 when neither flags a row.
    """
    if not is_dask(flags_a) and is_dask(flags_b):
        flags_a, flags_b = flags_b, flags_a
    flags_a, flags_b = _paired(flags_a, flags_b, "flags")
    parts = map_blocks_reduce(_jaccard_block, flags_a, flags_b)
    inter = sum(p[0] for p in parts)
    union = sum(p[1] for p in parts)
    return 1.0 if union == 0 else inter / union


# ---------------------------------------------------------------------------------------------
# model succession


def match_clusters(table, min_share: float = 0.5, next_id: int | None = None) -> dict[int, int]:
    """Ids for a refitted model's clusters: the previous model's id of the cluster each continues.

    Parameters
    ----------
    table : array_like of int, shape (R, C)
        Contingency table of the previous model's labels (rows: previous ids ``0 .. R - 1``)
        against the new model's labels (columns: new clusters ``0 .. C - 1``) on the rows both
        label, for example ``contingency(previous, new)[:-1, :-1]`` (noise row and column left
        out). Previous ids that no row carries any more keep their (empty) row, so that they are
        not given again.
    min_share : float, default 0.5
        A new cluster keeps the previous id it is matched with only when at least this share of
        its rows carried that id (and at least one did): ``table[p, c] >= min_share *
        table[:, c].sum()``. With 0.5, a new cluster continues a previous one when that previous
        cluster gave it at least half its rows. In (0, 1].
    next_id : int, optional
        The first id for new clusters; default ``R`` (largest previous id + 1). Pass a larger
        one to never reuse ids retired before the previous model.

    Returns
    -------
    dict[int, int]
        ``{new cluster: id}`` for every column ``0 .. C - 1``.

    Notes
    -----
    The previous and new clusters are paired by the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment`` maximising the total overlap, one new cluster per
    previous cluster at most). A paired new cluster that passes ``min_share`` gets the previous
    id. The others (more new clusters than previous ones, paired with too small an overlap, or
    empty) get ``next_id, next_id + 1, ...`` in the order of their column. So a permuted
    identical partition gets its previous ids back, a cluster split in two keeps its id on the
    larger part (when the larger part is at least ``min_share`` of its own rows from that
    cluster) and the other part gets a new id. The result depends on the table only
    (``linear_sum_assignment`` is deterministic; on exactly tied overlaps the pairing is its
    own, stable, choice).
    """
    from scipy.optimize import linear_sum_assignment

    t = _as_table(table)
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1]; got {min_share}")
    n_prev, n_new = t.shape
    next_id = n_prev if next_id is None else int(next_id)
    if next_id < n_prev:
        raise ValueError(f"next_id must be at least the number of previous ids ({n_prev}); "
                         f"got {next_id}")
    sizes = t.sum(axis=0)
    mapping: dict[int, int] = {}
    if n_prev and n_new:
        rows, cols = linear_sum_assignment(t, maximize=True)
        for p, c in zip(rows.tolist(), cols.tolist()):
            overlap = int(t[p, c])
            if overlap > 0 and overlap >= min_share * int(sizes[c]):
                mapping[c] = p
    for c in range(n_new):
        if c not in mapping:
            mapping[c] = next_id
            next_id += 1
    return {c: mapping[c] for c in range(n_new)}
