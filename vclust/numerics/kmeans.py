"""Scalable KMeans on numpy or dask arrays.

Every Lloyd iteration is one map-reduce over the row blocks: each block computes its squared
distances to the centres with one float32 matrix product (||x||^2 - 2 x.C^T + ||c||^2), takes the
argmin, and returns per-cluster sums (float64, via a sparse one-hot product), counts, its inertia,
its farthest rows (for empty-cluster repair) and how many of its rows changed cluster. The client
combines the blocks in order and moves the centres. Per-row state (labels, nearest candidate so
far) stays on the workers between passes (``blocks.map_blocks_state``). When no row changed
cluster the centres are final and that pass's labels and inertia are kept; a stop on the
tolerance or ``max_iter`` costs one more pass for them. The rows are persisted in worker memory
when they fit; otherwise every iteration streams them from their source.

Initialisation: "k-means||" (Bahmani et al.: five rounds over all rows, each adding
``oversampling_factor * k`` rows drawn with probability proportional to their squared distance to
the candidates so far, in one pass per round by weighted reservoir keys; each round measures
only the previous round's new candidates; then a weighted k-means++ with 20 restarts on the
candidates), "k-means++" on a seeded sample, or given centres. Row sampling uses a hash of
the absolute row index, so the result does not depend on the chunking. The candidates are
clustered here (``_weighted_kmeans``: greedy k-means++ and weighted Lloyd, as scikit-learn's
KMeans does with sample weights, CANDIDATE_INITS restarts): a hundred-odd rows, no need to
import it.
Rows given as one numpy array (clustered in this process, see ``jobs.in_process``) of
SKLEARN_DIMS columns or more go through scikit-learn's Lloyd from the same initial centres,
with the same tolerance rule: its chunked Cython passes are faster there than the block
passes. From ELKAN_DIMS columns it runs scikit-learn's Elkan variant, the same iterations with
distances skipped by the triangle inequality (faster on wide rows, the same inertia to float32
rounding; at 64 columns it lost as often as it won). Narrower rows (the osnet and vdc sets
reduce to 14-60 columns) run the block passes here on this process's threads: as fast as
scikit-learn's there, and a fit that needs no scikit-learn does not import it (scikit-learn
imports scipy.stats, pandas and pyarrow) (benchmarks/RESULTS.md, figures behind the code).
scikit-learn's own KMeans copies, measures and centres its rows at every call; a k-range does
that once (``SklearnRows``) and calls scikit-learn's single run at each k.
``algorithm="minibatch"`` runs mini-batch updates over row blocks for data far beyond memory.
"""

from __future__ import annotations

import logging

import numpy as np

from .blocks import (
    balanced,
    check_2d,
    concat_states,
    hold,
    is_dask,
    map_blocks_reduce,
    map_blocks_state,
    row_uniform,
    sample_rows,
)
from .estimator import Estimator

log = logging.getLogger(__name__)


ASSIGN_ROWS = 8192


def assign(X_block, centers, centers_sqnorm=None):
    """Nearest centre and squared distance for each row of a numpy block.

    Returns (labels int32 (n,), sqdist float32 (n,)). Rows go through in slices of
    ``ASSIGN_ROWS`` so the (rows, centres) distance matrix stays in cache (it matters with the
    ~100 k-means|| candidates; benchmarks/RESULTS.md).
    """
    x = np.asarray(X_block, dtype=np.float32)
    c = np.asarray(centers, dtype=np.float32)
    if centers_sqnorm is None:
        centers_sqnorm = np.einsum("ij,ij->i", c, c)
    if len(x) > 2 * ASSIGN_ROWS:
        labels = np.empty(len(x), np.int32)
        sq = np.empty(len(x), np.float32)
        for a in range(0, len(x), ASSIGN_ROWS):
            labels[a:a + ASSIGN_ROWS], sq[a:a + ASSIGN_ROWS] = _assign(
                x[a:a + ASSIGN_ROWS], c, centers_sqnorm)
        return labels, sq
    return _assign(x, c, centers_sqnorm)


def _assign(x, c, centers_sqnorm):
    d = x @ c.T
    d *= -2
    d += centers_sqnorm
    labels = d.argmin(axis=1)
    best = np.take_along_axis(d, labels[:, None], 1)[:, 0] + np.einsum("ij,ij->i", x, x)
    return labels.astype(np.int32), np.maximum(best, 0, out=best)


def _farthest(sq, n):
    """Positions of the n largest values, largest first, ties by position (no full sort)."""
    if n >= len(sq):
        return np.argsort(-sq, kind="stable")
    top = np.argpartition(-sq, n - 1)[:n]
    return top[np.lexsort((top, -sq[top]))]


def _lloyd_block(block, prev, row0, centers, n_far):
    """One Lloyd pass over a block: state = the block's labels (to count the rows that moved)."""
    import scipy.sparse as sp  # here: a command that never clusters need not import it (~0.15 s)

    x = np.asarray(block, dtype=np.float32)
    k = centers.shape[0]
    labels, sq = assign(x, centers)
    onehot = sp.csr_matrix((np.ones(len(x), np.float32), (labels, np.arange(len(x)))),
                           shape=(k, len(x)))
    # float32 within a block (no float64 copy of the rows), float64 across blocks
    sums = (onehot @ x).astype(np.float64)
    counts = np.bincount(labels, minlength=k)
    far = _farthest(sq, n_far)
    moved = len(x) if prev is None else int(np.count_nonzero(labels != prev))
    return labels, (sums, counts, float(sq.sum(dtype=np.float64)), sq[far], x[far], far + row0,
                    moved)


def _final_block(block, prev, row0, centers):
    """Labels (the new state) and inertia of a block for the final centres."""
    labels, sq = assign(block, centers)
    return labels, float(sq.sum(dtype=np.float64))


def _stats_block(block, row0):
    x = np.asarray(block, dtype=np.float64)
    return x.shape[0], x.sum(axis=0), (x * x).sum(axis=0)


def _count_nearest_block(block, row0, centers):
    return np.bincount(assign(block, centers)[0], minlength=len(centers))


def _kmeans_parallel_block(block, state, row0, new, ell, seed, rnd):
    """One k-means|| round over a block, in a single pass.

    ``state`` carries each row's squared distance to its nearest candidate so far and that
    candidate's index, so a round only measures the ``new`` candidates of the previous round
    (about ``2 k`` rows) instead of all of them. The block returns its ``ell`` best rows by the
    Efraimidis-Spirakis key log(u) / d^2 (u from the row's hash): the ``ell`` best keys over all
    blocks are a sample of ``ell`` rows drawn with probability proportional to d^2, without
    replacement, so a round needs no separate pass for the cost phi. Round 0 (``new`` None) draws
    one uniform row and returns the column sums and sums of squares (for the tolerance); with
    ``ell`` 0 the block returns the count of rows nearest each candidate (the weights)."""
    x = np.asarray(block, dtype=np.float32)
    rows = np.arange(row0, row0 + len(x))
    if new is None:
        sq, idx = np.ones(len(x)), None
        stats = (len(x), x.sum(axis=0, dtype=np.float64), np.einsum("ij,ij->j", x, x, dtype=np.float64))
    else:
        base, cands = new
        idx, sq = assign(x, cands)
        idx += base
        if state is not None:
            keep = state[0] <= sq
            sq = np.where(keep, state[0], sq)
            idx = np.where(keep, state[1], idx)
        stats = None
        if ell == 0:
            return None, np.bincount(idx, minlength=base + len(cands))
    state = None if idx is None else (sq, idx)
    sq = sq.astype(np.float64)
    u = row_uniform(rows, seed, 100 + rnd)
    with np.errstate(divide="ignore"):
        key = np.where(sq > 0, np.log(np.maximum(u, 1e-300)) / np.maximum(sq, 1e-300), -np.inf)
    top = _farthest(key, min(ell, len(key)))
    top = top[np.isfinite(key[top])]
    return state, (key[top], rows[top], x[top], float(sq.sum()), stats)


#: restarts of the candidates' weighted k-means (k-means|| init). On the 15 MVTec categories
#: (docs/preprocessing.md, 20 seeds, one init) 10 restarts missed the optimum on 1 seed of 20
#: with l2 + PCA 0.95, 9 with PCA 0.90 and 5 with the rows as given; 20 restarts on 0, 6 and 2
#: (30: 0, 6, 1). More restarts only add draws: the first 10 are the same. Cost: RESULTS.md.
CANDIDATE_INITS = 20

#: columns from which numpy rows go through scikit-learn's Lloyd, and its Elkan iterations
#: (module docstring)
SKLEARN_DIMS = 64
ELKAN_DIMS = 128


def _weighted_kmeans(x, w, k, n_init, seed, max_iter=300, tol=1e-4):
    """Centres (k, d) float64 of weighted k-means on a few hundred rows ``x`` (weights ``w``):
    greedy k-means++ (2 + log k trials a centre, as scikit-learn's) then Lloyd until no row
    moves or the squared centre shift is under ``tol`` times the weighted mean variance; the
    best of ``n_init`` seeded runs by weighted inertia. Returns the centres."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n = len(x)
    xsq = np.einsum("ij,ij->i", x, x)
    mean = w @ x / w.sum()
    limit = tol * float(np.mean(w @ (x - mean) ** 2 / w.sum()))
    trials = 2 + int(np.log(k))
    rng = np.random.default_rng(seed)

    def sqdist(c):  # (len(c), n)
        return np.maximum(np.einsum("ij,ij->i", c, c)[:, None] - 2 * c @ x.T + xsq, 0)

    best = None
    for _ in range(n_init):
        pick = [int(rng.choice(n, p=w / w.sum()))]
        closest = sqdist(x[pick])[0]
        for _c in range(1, k):
            pot = closest @ w
            if pot <= 0:  # every row sits on a centre: any row not taken yet
                rest = np.setdiff1d(np.arange(n), pick)
                pick.append(int(rng.choice(rest)) if len(rest) else pick[-1])
                continue
            ids = np.searchsorted(np.cumsum(w * closest), rng.uniform(size=trials) * pot)
            ids = np.minimum(ids, n - 1)
            cand = np.minimum(closest, sqdist(x[ids]))
            j = int(np.argmin(cand @ w))
            pick.append(int(ids[j]))
            closest = cand[j]
        centers, labels = x[pick].copy(), None
        for _it in range(max_iter):
            d = sqdist(centers)
            prev, labels = labels, d.argmin(axis=0)
            if prev is not None and np.array_equal(prev, labels):
                break  # no row moved: the centres are final
            mass = np.bincount(labels, weights=w, minlength=k)
            sums = np.zeros_like(centers)
            np.add.at(sums, labels, x * w[:, None])
            new = centers.copy()
            nz = mass > 0
            new[nz] = sums[nz] / mass[nz, None]
            cost = d[labels, np.arange(n)] * w
            for c in np.flatnonzero(~nz):  # an empty centre moves to the costliest row left
                far = int(np.argmax(cost))
                new[c], cost[far] = x[far], -1.0
            shift = float(((new - centers) ** 2).sum())
            centers = new
            if shift <= limit:
                break
        inertia = float(sqdist(centers).min(axis=0) @ w)
        if best is None or inertia < best[0]:
            best = (inertia, centers)
    return best[1]


#: scikit-learn versions whose private single runs (``_kmeans_single_lloyd``,
#: ``_kmeans_single_elkan``) and OpenMP thread count ``SklearnRows`` calls (and the Ward
#: tree's graph completion and cut, vclust.numerics.ward): pyproject.toml holds the same
#: range, and tests/test_dependencies.py fails outside it
SKLEARN_SUPPORTED = ">=1.4,<1.10"


def sklearn_rows(X, algorithm="lloyd") -> bool:
    """Whether ``KMeans`` clusters X through scikit-learn's Lloyd: numpy rows of SKLEARN_DIMS
    columns or more (module docstring)."""
    return not is_dask(X) and algorithm == "lloyd" and X.shape[1] >= SKLEARN_DIMS


class SklearnRows:
    """Numpy rows made ready once for scikit-learn's Lloyd (its Elkan variant from ELKAN_DIMS
    columns) at every k of a k-range. scikit-learn's ``KMeans.fit`` copies its rows, measures
    their column variances (the tolerance) and centres them at every call, before its single
    run: on 416,314 x 256 rows (efficientnet-b7 reduced) 2.3 s of each k's 3.2-4.5 s
    (benchmarks/RESULTS.md). Here that is done once, as ``KMeans.fit`` does it, and each k
    runs scikit-learn's own single run on it: centres, labels, inertia and iterations are
    those of ``KMeans(k, init=centres, n_init=1, max_iter, tol).fit(X)``, bit for bit. Holds
    a centred copy of the rows (as that call does while it runs); ``X`` the rows themselves."""

    def __init__(self, X):
        self.X = X
        x = np.asarray(X)
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        self._rows = np.array(x, dtype=dtype, order="C", copy=True)
        self._var = np.mean(np.var(self._rows, axis=0))  # _tolerance's, before centring
        self._mean = self._rows.mean(axis=0)
        self._rows -= self._mean

    def lloyd(self, centers, max_iter, tol):
        """(centres float64, n_iter, ([labels int32], inertia)) from ``centers``."""
        from sklearn.cluster._kmeans import _kmeans_single_elkan, _kmeans_single_lloyd
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        x = self._rows
        init = np.array(centers, dtype=x.dtype, order="C", copy=True)
        init -= self._mean
        single = _kmeans_single_elkan if x.shape[1] >= ELKAN_DIMS else _kmeans_single_lloyd
        labels, inertia, out, n_iter = single(
            x, np.ones(len(x), dtype=x.dtype), init, max_iter=max_iter, verbose=False,
            tol=self._var * tol if tol else 0, n_threads=_openmp_effective_n_threads())
        out += self._mean
        return (out.astype(np.float64), int(n_iter),
                ([np.asarray(labels).astype(np.int32)], float(inertia)))


def _labels_of(block, centers):
    return assign(block, centers)[0]


def _distances_to(block, centers):
    x = np.asarray(block, dtype=np.float32)
    c = np.asarray(centers, dtype=np.float32)
    d = np.einsum("ij,ij->i", x, x)[:, None] - 2 * x @ c.T + np.einsum("ij,ij->i", c, c)[None, :]
    return np.sqrt(np.maximum(d, 0)).astype(np.float32)


class KMeans(Estimator):
    """KMeans for numpy or dask arrays (n_samples, n_features), scikit-learn style.

    Parameters
    ----------
    n_clusters : int
    init : {"k-means||", "k-means++"} or ndarray (n_clusters, n_features)
    n_init : int
        Runs from different seeded inits; the one with the lowest inertia is kept.
    max_iter : int
        Lloyd iterations (passes over the data), or mini-batch epochs.
    tol : float
        Stop when the squared centre shift summed over centres is below
        ``tol * mean feature variance`` (scikit-learn's rule).
    oversampling_factor : float
        k-means|| draws about ``oversampling_factor * n_clusters`` rows per round.
    init_sample_size : int or None
        Rows used by "k-means++" (default max(100 k, 20000)).
    algorithm : {"lloyd", "minibatch"}
    batch_size : int
        Rows per mini-batch step (mini-batch only).
    persist : {"auto", True, False}
        Keep dask input in worker memory, in compact blocks, while iterating ("auto": when it
        takes under a quarter of the workers' memory, see ``blocks.hold``).
    random_state : int
    """

    def __init__(self, n_clusters=8, *, init="k-means||", n_init=1, max_iter=100, tol=1e-4,
                 oversampling_factor=2.0, init_sample_size=None, algorithm="lloyd",
                 batch_size=10_000, max_no_improvement=10, persist="auto", random_state=0):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.oversampling_factor = oversampling_factor
        self.init_sample_size = init_sample_size
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.max_no_improvement = max_no_improvement
        self.persist = persist
        self.random_state = random_state

    # ------------------------------------------------------------------ validation

    def _validate(self, X):
        check_2d(X)
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive integer; got {self.n_clusters!r}")
        if X.shape[0] < self.n_clusters:
            raise ValueError(f"n_samples={X.shape[0]} should be >= n_clusters={self.n_clusters}")
        if self.algorithm not in ("lloyd", "minibatch"):
            raise ValueError(f"algorithm must be 'lloyd' or 'minibatch'; got {self.algorithm!r}")
        if isinstance(self.init, str):
            if self.init not in ("k-means||", "k-means++"):
                raise ValueError(f"init must be 'k-means||', 'k-means++' or an array; got {self.init!r}")
        elif np.shape(self.init) != (self.n_clusters, X.shape[1]):
            raise ValueError(f"init array must have shape ({self.n_clusters}, {X.shape[1]}); "
                             f"got {np.shape(self.init)}")
        if self.max_iter < 1 or self.tol < 0 or self.n_init < 1:
            raise ValueError("max_iter and n_init must be >= 1 and tol >= 0")
        if self.persist not in ("auto", True, False):
            raise ValueError(f"persist must be 'auto', True or False; got {self.persist!r}")

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y=None):
        """Fit on X (numpy or dask rows), or on a ``SklearnRows`` of numpy rows made ready
        once for every k of a k-range."""
        ready = X if isinstance(X, SklearnRows) else None
        X = X.X if ready is not None else X
        self._validate(X)
        X = self._maybe_persist(X)
        self._tol = None  # set from the column variances by the first pass that sees them
        if not sklearn_rows(X, self.algorithm):
            ready = None
        elif ready is None:
            ready = SklearnRows(X)
        n_init = self.n_init if isinstance(self.init, str) else 1
        best = None
        for run in range(n_init):
            seed = int(np.random.default_rng([self.random_state, run]).integers(1 << 31))
            centers = self._init_centers(X, seed)
            if ready is not None:
                # wide rows in this process: scikit-learn's Lloyd (chunked Cython, OpenMP) from
                # our initial centres, same rule and tolerance (module docstring)
                centers, n_iter, final = ready.lloyd(centers, self.max_iter, self.tol)
                if best is None or final[1] < best[0]:
                    best = (final[1], centers, n_iter, final[0])
                continue
            if self._tol is None:
                stats = map_blocks_reduce(_stats_block, X)
                self._set_tol(*(np.sum(v, axis=0) for v in zip(*stats)))
            if self.algorithm == "minibatch":
                centers, n_iter = self._minibatch(X, centers, seed), self.max_iter
                final = None
            else:
                centers, n_iter, final = self._lloyd(X, centers)
            if final is None:  # labels and inertia for the returned centres: one more pass
                states, parts = map_blocks_state(_final_block, X,
                                                 args=(centers.astype(np.float32),))
                final = (states, float(sum(parts)))
            if best is None or final[1] < best[0]:
                best = (final[1], centers, n_iter, final[0])
        self.inertia_, centers, self.n_iter_, states = best
        self.cluster_centers_ = centers.astype(np.float32)
        self.n_features_in_ = X.shape[1]
        self.labels_ = concat_states(X, states, np.int32)
        return self

    def _set_tol(self, n, s1, s2):
        mean_var = float(np.mean(s2 / n - (s1 / n) ** 2))
        self._tol = self.tol * mean_var

    def _maybe_persist(self, X):
        """Persisted in balanced blocks (see ``blocks.balanced``) when it fits, else streamed."""
        if not is_dask(X) or self.persist is False:
            return X
        (X,), held = hold([X], budget=None if self.persist == "auto" else np.inf,
                          layout=balanced)
        if not held:
            log.info("streaming %d MB of rows each iteration (too big to persist)", X.nbytes // 1e6)
        return X

    def _init_centers(self, X, seed):
        k = self.n_clusters
        if not isinstance(self.init, str):
            return np.asarray(self.init, dtype=np.float64)
        rng = np.random.default_rng(seed)
        if self.init == "k-means++":
            from sklearn.cluster import kmeans_plusplus

            size = self.init_sample_size or max(100 * k, 20_000)
            sample, _ = sample_rows(X, size, seed, stream=1)
            if len(sample) < k:
                sample, _ = sample_rows(X, X.shape[0], seed)
            centers, _ = kmeans_plusplus(sample.astype(np.float64), k,
                                         random_state=int(rng.integers(1 << 31)))
            return centers
        # k-means|| (Bahmani et al.): one uniform row, then rounds that each add ``ell`` rows
        # drawn with probability proportional to d^2 to the candidates so far (one pass each;
        # every row's nearest candidate is carried between passes)
        ell = max(1, int(round(self.oversampling_factor * k)))
        cand, state, new = None, None, None
        for rnd in range(6):
            state, parts = map_blocks_state(_kmeans_parallel_block, X, state,
                                            args=(new, 1 if cand is None else ell, seed, rnd))
            if cand is None:
                if self._tol is None:
                    self._set_tol(*(np.sum(v, axis=0) for v in zip(*(p[4] for p in parts))))
            elif sum(p[3] for p in parts) <= 0:
                break  # every row sits on a candidate
            keys = np.concatenate([p[0] for p in parts])
            rows = np.concatenate([p[1] for p in parts])
            xs = np.concatenate([p[2] for p in parts])
            pick = np.lexsort((rows, -keys))[:1 if cand is None else ell]
            new = (0 if cand is None else len(cand), xs[pick])
            cand = xs[pick] if cand is None else np.concatenate([cand, xs[pick]])
        if len(cand) <= k:
            extra, _ = sample_rows(X, 20 * k, seed, stream=3)
            cand = np.concatenate([cand, extra.astype(np.float32)])
            weights = np.sum(map_blocks_reduce(_count_nearest_block, X, args=(cand,)), axis=0)
        else:  # the last round's rows still to be measured: the weights' pass does it
            _, parts = map_blocks_state(_kmeans_parallel_block, X, state, args=(new, 0, seed, 6))
            weights = np.sum(parts, axis=0)
        return _weighted_kmeans(cand, weights.astype(np.float64) + 1e-12, k,
                                n_init=CANDIDATE_INITS,
                                seed=int(rng.integers(1 << 31)))

    def _step(self, X, centers, labels):
        k = self.n_clusters
        labels, parts = map_blocks_state(_lloyd_block, X, labels,
                                         args=(centers.astype(np.float32), k))
        sums = np.sum([p[0] for p in parts], axis=0)
        counts = np.sum([p[1] for p in parts], axis=0)
        inertia = float(sum(p[2] for p in parts))
        far_d = np.concatenate([p[3] for p in parts])
        far_x = np.concatenate([p[4] for p in parts])
        far_r = np.concatenate([p[5] for p in parts])
        moved = sum(p[6] for p in parts)
        new = centers.copy()
        nz = counts > 0
        new[nz] = sums[nz] / counts[nz, None]
        empty = np.flatnonzero(~nz)
        if len(empty):  # re-seed empty clusters at the farthest rows (ties broken by row)
            order = np.lexsort((far_r, -far_d))
            for c, i in zip(empty, order):
                new[c] = far_x[i]
            log.info("re-seeded %d empty cluster(s)", len(empty))
        return new, labels, inertia, moved, len(empty)

    def _lloyd(self, X, centers):
        """Lloyd passes from ``centers``. Returns (centers, n_iter, final) where final is
        (label states, inertia) for the returned centres when the last pass proves them (no
        row changed cluster, so the new centres are the old ones), else None."""
        centers = np.asarray(centers, dtype=np.float64)
        labels, n_iter, repaired = None, 0, True
        for it in range(self.max_iter):
            new, labels, inertia, moved, empty = self._step(X, centers, labels)
            n_iter = it + 1
            if moved == 0 and not repaired:  # (no row moved: any empty cluster was empty before)
                return centers, n_iter, (labels, inertia)
            repaired = bool(empty)
            shift = float(((new - centers) ** 2).sum())
            centers = new
            if shift <= self._tol:
                break
        return centers, n_iter, None

    def _minibatch(self, X, centers, seed):
        """Mini-batch updates (Sculley 2010) over blocks of rows in a seeded order."""
        centers = np.asarray(centers, dtype=np.float64)
        counts = np.zeros(self.n_clusters)
        rng = np.random.default_rng(seed)
        n = X.shape[0]
        starts = np.arange(0, n, self.batch_size)
        best, stale = np.inf, 0
        for _ in range(self.max_iter):
            for a in rng.permutation(starts):
                block = X[a:a + self.batch_size]
                block = np.asarray(block.compute() if is_dask(block) else block, dtype=np.float32)
                labels, sq = assign(block, centers)
                k_counts = np.bincount(labels, minlength=self.n_clusters)
                sums = np.zeros_like(centers)
                np.add.at(sums, labels, block)
                hit = k_counts > 0
                counts[hit] += k_counts[hit]
                eta = k_counts[hit] / counts[hit]
                centers[hit] += eta[:, None] * (sums[hit] / k_counts[hit, None] - centers[hit])
                batch_inertia = float(sq.mean())
                if batch_inertia < best * (1 - 1e-4):
                    best, stale = batch_inertia, 0
                else:
                    stale += 1
                if stale >= self.max_no_improvement * max(1, len(starts) // 10):
                    return centers
        return centers

    # ------------------------------------------------------------------ applying

    def _check_fitted(self):
        if not hasattr(self, "cluster_centers_"):
            raise ValueError("this KMeans is not fitted yet; call fit first")

    def _predict_block(self, block):
        return assign(block, self.cluster_centers_, self._csq())[0]

    def _csq(self):
        c = self.cluster_centers_
        return np.einsum("ij,ij->i", c, c)

    def predict(self, X):
        self._check_fitted()
        if is_dask(X):  # a plain function of the centres: the graph must not hold self.labels_
            return X.map_blocks(_labels_of, self.cluster_centers_, dtype=np.int32, drop_axis=1,
                                chunks=(X.chunks[0],))
        return self._predict_block(X)

    def predict_block(self, block):
        """(labels int32, distance float32 to the assigned centre) for a numpy block."""
        labels, sq = assign(block, self.cluster_centers_, self._csq())
        return labels, np.sqrt(sq)

    def _transform_block(self, block):
        return _distances_to(block, self.cluster_centers_)

    def transform(self, X):
        self._check_fitted()
        if is_dask(X):
            return X.map_blocks(_distances_to, self.cluster_centers_, dtype=np.float32,
                                chunks=(X.chunks[0], (self.n_clusters,)))
        return self._transform_block(X)

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    # ------------------------------------------------------------------ state

    def to_state(self):
        params = {k: v for k, v in self.get_params().items() if k != "init"}
        params["init"] = self.init if isinstance(self.init, str) else "array"
        params.update(n_iter_=int(getattr(self, "n_iter_", 0)), inertia_=float(self.inertia_))
        return params, {"cluster_centers": self.cluster_centers_}

    @classmethod
    def from_state(cls, params, arrays):
        fitted = ("n_iter_", "inertia_")
        p = {k: v for k, v in params.items() if k not in fitted}
        if p.get("init") == "array":
            p["init"] = "k-means++"
        obj = cls(**p)
        obj.n_iter_, obj.inertia_ = params["n_iter_"], params["inertia_"]
        obj.cluster_centers_ = np.asarray(arrays["cluster_centers"], dtype=np.float32)
        obj.n_features_in_ = obj.cluster_centers_.shape[1]
        return obj
