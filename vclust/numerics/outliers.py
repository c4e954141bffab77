"""Outlier scoring with a pynndescent reference index, run per row block across the workers.

Two spaces. The *clustering rows* (``X``: what the clusters were fitted on, L2 + PCA 0.95 by
default) carry the clusters and the tightness of a neighbourhood. The *scoring rows* carry the
nearest-neighbour distances: by default the scorer's own projection of the descriptor rows as
given (``raw=`` at fit and score: centred, PCA to ``pca_variance`` 0.99 of the variance, at most
``max_components``, no L2), else the clustering rows themselves. The evidence
(benchmarks/results/compare_outliers.md, 13 real embedding sets): 10-NN on L2 + PCA 0.95 rows
ranked anomalies below 10-NN on the rows as given by 0.016 ROC-AUC on average and by 0.10 on
ViT metal_nut (the row norm carries the defect there); on the projection to 0.99 it is within
0.006 of the rows as given on every set.

Fit: a seeded reference sample of the rows (``reference_size``) gets an NNDescent index over its
scoring rows, built once; the projection is fitted on those reference rows (a PCA of 50,000
rows finds the directions one of every row finds, for an eighth of the arithmetic on 416k rows).
For each reference row we keep its k nearest reference neighbours *other than itself*, its
k-distance and its local reachability density (LOF's lrd).

Terms of a row x (its k nearest reference rows in the scoring rows; a row that is itself in the
reference is dropped from its own list by its row index, never by distance), each a robust z
((v - median) / (1.4826 MAD) over the reference rows, or within its cluster for the centre):

    knn     log of the mean distance to its k nearest reference rows
    lof     log of LOF: mean lrd of those neighbours / lrd(x), lrd(x) = 1 / mean_o max(d(x, o),
            kdist(o))
    tight   log of the distance, in the clustering rows, to the j-th nearest of those same
            neighbours, j the rank that holds about k rows of the data (k while the reference
            is all the rows, k * reference / rows when it is a sample; at least 1): how close
            its group of about k + 1 rows sits. A handful of exact duplicates is not a group.
    centre  log of the distance to its cluster centre, against that cluster's median and MAD
            (the MAD floored at half the median MAD of the clusters)

and the combined z is the largest of

    isolated            knn + max(0, lof - ``lof_gate``)
    tight_group         -tight, where -tight > ``tight_gate``, else nothing
    far_from_centre     centre, where centre > ``centre_gate``, else nothing
    degenerate_cluster  for every row of a cluster whose reference rows' median -tight exceeds
                        ``tight_gate`` (a tight group k-means gave a cluster of its own): that
                        median

    outlier_score = 1 / (1 + exp(-(z - 3)))          in (0, 1); z = 3 gives 0.5

So the score ranks rows as the kNN distance does wherever the other terms have nothing to say,
and they lift a row only on evidence no ordinary row of the real sets gave
(benchmarks/results/compare_outliers.md): LOF beyond 2 deviations (a row far sparser than its
neighbours: ALOI and the stacked MVTec ResNet-18 gain 0.04 and 0.07 ROC-AUC, no set loses more
than 0.01); a group tighter than 8 deviations (the tightest row of the 13 real sets is at 5.7;
the synthetic glare and empty frames at 19.7 and beyond: each other's nearest neighbours, so
plain kNN distance calls them the most normal rows of all); a centre distance beyond 10
deviations (on the stacked MVTec with one cluster per category the rows beyond it are all
defects; with k = 12, where KMeans merges categories, gates of 4-8 lifted mostly good parts and
cost up to 0.007). A row's *reason* (``REASONS``) is the term that gave its combined z, for the
rows above the threshold.

``is_outlier`` = combined z above a threshold fitted on the fit rows: by default a robust z-score
over them, median + mad_z * 1.4826 MAD of their combined z (``threshold="mad"``, mad_z 3.5: it
follows however many outliers the data holds); or the (1 - contamination) quantile
(``threshold="contamination"``: a fixed share). Which fit rows: every one
(``threshold_rows="all"``, the default here), or a seeded sample (``"reference"``, what `vclust
fit` uses: all the rows when the reference is all of them, else up to THRESHOLD_SAMPLE rows from
outside the reference, since labelling scores every row anyway; on the 416k synthetic osnet case
the threshold z came out at 3.739 against 3.719 over every row; it flags 4.40% of the sample
and 4.53% of every row). On the 416k synthetic osnet case the default flags
1.7% of the inliers and every junk row, 99.97% of the glare and all empty frames; on the stacked
MVTec ResNet-18 0.8% of the good parts and 16% of the defects.

The index is built once per fit, on two threads (``build_threads``; its kernels come from
numba's disk cache). Nothing about the reference depends on the clusters, so ``prepare(raw, n)``
does all of it from the descriptor rows alone (the rows gathered, the projection, the index, the
reference and threshold rows' neighbours) and `vclust fit` runs it on a thread while it
preprocesses and clusters; the index and those answers are also kept on disk between processes
(vclust.numerics.indexcache), so a later fit of the same rows builds and asks nothing again.
Queries run without the GIL (``annindex.release_gil``), in parts of QUERY_PART rows side by side on threads. What it
learned is kept as arrays (vclust.numerics.annindex: the prepared index's own state, no pickle);
a worker process restores it once (the search kernels only) and caches it by fingerprint, so
chunks never rebuild or recompile it. Nothing numba-compiled is pickled. Threads of a worker
each query their own view of it (pynndescent keeps its per-query scratch on the index). The
costs are measured in benchmarks/RESULTS.md. One caveat: pynndescent draws from one random
state per query call, so a row's neighbours can in rare cases depend on the rows queried in the
same block; the tests find none on the synthetic case (same scores whatever the chunking).
"""

from __future__ import annotations

import hashlib
import logging
import threading

import numpy as np

from . import DEFAULT_MAD_Z
from .annindex import enable_numba_cache, index_from_state, index_to_state, release_gil
from .blocks import is_dask, row_uniform, shared
from .estimator import Estimator

log = logging.getLogger(__name__)

_INDEX_CACHE: dict = {}
_LOCAL = threading.local()


class _Memo:
    """A small per-process cache of pure results, least recently used out first, bounded in
    bytes. The reference index and each row block's nearest reference rows depend only on the
    reference sample and the rows queried, never on the clusters: `vclust compare` fits a
    scorer per (spec, algorithm) on the same rows, then labels with it, and each of those asks
    the same questions. Keys hold content digests, so a hit is the answer a fresh process
    would compute."""

    def __init__(self, max_bytes):
        from collections import OrderedDict

        self.max_bytes, self.items, self.lock = max_bytes, OrderedDict(), threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self.lock:
            hit = self.items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self.items.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key, value, nbytes):
        with self.lock:
            self.items[key] = (value, nbytes)
            while sum(v[1] for v in self.items.values()) > self.max_bytes and len(self.items) > 1:
                self.items.popitem(last=False)

    def clear(self):
        with self.lock:
            self.items.clear()
            self.hits = self.misses = 0


#: part of every disk cache key (indexcache): raise it when what an entry holds changes meaning
FIT_CACHE_VERSION = 1
#: rows outside the reference scored at fit for the threshold (``threshold_rows="reference"``)
THRESHOLD_SAMPLE = 20_000
#: rows per query call: a block's rows are queried in parts of this size, side by side
QUERY_PART = 4096
_QUERY_POOL = None


def _query_pool():
    global _QUERY_POOL
    if _QUERY_POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _QUERY_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                         thread_name_prefix="vclust-query")
    return _QUERY_POOL


#: each row block's k nearest reference rows (a 416k-row space: about 40 MB)
NEIGHBOUR_MEMO = _Memo(256 * 2**20)
#: the reference index built at fit (one: the latest reference)
INDEX_MEMO = _Memo(0)


def _digest(a) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(a.view(np.uint8).reshape(-1), digest_size=16)
    h.update(repr((a.dtype.str, a.shape)).encode())
    return h.hexdigest()

#: ``reason`` codes: index 0 = not an outlier; else the term that gave the row its combined z
REASONS = ("", "isolated", "tight_group", "far_from_centre", "degenerate_cluster", "noise")
_ISOLATED, _TIGHT, _CENTRE, _DEGENERATE = 1, 2, 3, 4
# not a term of the score: HDBSCAN's noise rows (numerics.algorithms), flagged by the clusterer
NOISE = REASONS.index("noise")


def _robust(v):
    v = np.asarray(v, dtype=np.float64)
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    return med, mad if mad > 1e-12 else 1e-12


def _log(v):
    return np.log(np.maximum(np.asarray(v, dtype=np.float64), 1e-12))


def _projection(raw, pca_variance, max_components, random_state):
    """The scorer's own rows: the descriptor rows as given, centred and projected (no L2); a
    dict of sets is a mixture (each set reduced, weighted to equal total variance)."""
    from .preprocess import MixturePreprocessor, Preprocessor

    kw = dict(l2=False, standardize=False, pca_variance=pca_variance,
              max_components=max_components, random_state=random_state)
    if isinstance(raw, dict):
        return MixturePreprocessor({name: Preprocessor(**kw) for name in raw}).fit(raw)
    return Preprocessor(**kw).fit(raw)


class OutlierScorer(Estimator):
    """Outlier scores in [0, 1]; see the module docstring for the formula.

    ``fit(X, labels, center_dist, centers, row_index, raw=...)`` and ``score(..., raw=...)``:
    ``X`` the clustering rows; ``raw`` the descriptor rows as given (an array, or a dict of
    arrays for a mixture), from which the scorer fits and keeps its own projection. Without
    ``raw`` the nearest-neighbour terms run on ``X``.
    """

    def __init__(self, *, n_neighbors=10, reference_size=50_000, threshold="mad",
                 contamination=0.02, mad_z=DEFAULT_MAD_Z, lof_gate=2.0, tight_gate=8.0,
                 centre_gate=10.0, pca_variance=0.99, max_components=256, index_neighbors=30,
                 threshold_rows="all", random_state=0):
        self.n_neighbors = n_neighbors
        self.reference_size = reference_size
        self.threshold = threshold
        self.contamination = contamination
        self.mad_z = mad_z
        self.lof_gate = lof_gate
        self.tight_gate = tight_gate
        self.centre_gate = centre_gate
        self.pca_variance = pca_variance
        self.max_components = max_components
        self.index_neighbors = index_neighbors
        self.threshold_rows = threshold_rows
        self.random_state = random_state

    # ------------------------------------------------------------------ pickling

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_index", None)  # numba state is rebuilt where the scorer lands
        state.pop("_prepared", None)  # the caller's descriptor rows: never shipped
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ------------------------------------------------------------------ fitting

    def _validate(self, n):
        if self.threshold not in ("contamination", "mad"):
            raise ValueError(f"threshold must be 'contamination' or 'mad'; got {self.threshold!r}")
        if self.threshold_rows not in ("all", "reference"):
            raise ValueError("threshold_rows must be 'all' or 'reference'; got "
                             f"{self.threshold_rows!r}")
        if not 0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5); got {self.contamination}")
        if n < self.n_neighbors + 2:
            raise ValueError(f"need more than n_neighbors + 1 = {self.n_neighbors + 1} rows; got {n}")

    def _check_raw(self, X, raw):
        """None to score on X, else ``raw`` checked against X's rows."""
        if getattr(self, "projection_", None) is None:
            return None
        if raw is None:
            raise ValueError("this outlier scorer was fitted on its own projection of the descriptor "
                             "rows: pass them as raw=")
        _same_rows(X, raw)
        return raw

    def _own_block(self, raw_block):
        """The scoring rows of one numpy block of ``raw`` (None: score on the clustering rows)."""
        if raw_block is None:
            return None
        if isinstance(raw_block, dict):
            raw_block = {k: np.asarray(v) for k, v in raw_block.items()}
        return np.asarray(self.projection_.transform(raw_block), dtype=np.float32)

    @staticmethod
    def _raw_parts(raw, chunks):
        """``raw`` cut into the row blocks ``chunks`` (numpy slices or delayed blocks; a dict per
        block for a mixture): the scoring rows are computed from them inside each task, so no
        dask collection of them is computed twice."""
        if raw is None:
            return [None] * len(chunks)
        offsets = np.cumsum((0,) + tuple(chunks[:-1]))

        def cut(a):
            if is_dask(a):
                return list(a.rechunk({0: tuple(chunks), 1: -1}).to_delayed().ravel())
            return [a[o:o + c] for o, c in zip(offsets, chunks)]

        if isinstance(raw, dict):
            parts = {k: cut(v) for k, v in raw.items()}
            return [{k: parts[k][i] for k in raw} for i in range(len(chunks))]
        return cut(raw)

    def _positions(self, n):
        """(reference positions, threshold positions) among n fit rows: the reference is the
        rows whose ``row_uniform`` draw falls under reference_size / n (as ``sample_rows``
        picks); the threshold rows (``threshold_rows="reference"`` with a sampled reference) up
        to THRESHOLD_SAMPLE rows from outside it, by another draw; else None."""
        u = row_uniform(np.arange(n), self.random_state, 31)
        if self.reference_size >= n:
            return np.arange(n), None
        pos = np.flatnonzero(u < self.reference_size / n)
        if self.threshold_rows != "reference":
            return pos, None
        m = len(pos)
        share = min(1.0, min(m, THRESHOLD_SAMPLE) / max(1, n - m))
        return pos, np.flatnonzero((u >= self.reference_size / n)
                                   & (row_uniform(np.arange(n), self.random_state, 37) < share))

    @staticmethod
    def _gather(a, parts):
        """The rows of ``a`` (a dask or numpy array, or a dict of them: a mixture) at each
        position array of ``parts``, in row order: one task per block of ``a`` as it is chunked
        (no rechunk: the rows as given sit in the store's chunks, the clustering rows in their
        own), each part's rows copied once."""
        import dask

        arrays = a if isinstance(a, dict) else {"_": a}

        def pick(x):
            if not is_dask(x):
                return [tuple(np.asarray(x[p]) for p in parts)]
            bounds = np.cumsum((0,) + tuple(x.chunks[0]))
            return [dask.delayed(_pick_task)(block, [p[(p >= bounds[i]) & (p < bounds[i + 1])]
                                                     - bounds[i] for p in parts])
                    for i, block in enumerate(x.rechunk({1: -1}).to_delayed().ravel())]

        done = dask.compute({k: pick(v) for k, v in arrays.items()})[0]
        done = {k: [np.concatenate([b[j] for b in v]) for j in range(len(parts))]
                for k, v in done.items()}
        if isinstance(a, dict):
            return [{k: v[j] for k, v in done.items()} for j in range(len(parts))]
        return done["_"]

    def prepare(self, raw, n, row_index=None):
        """What the fit needs of the descriptor rows alone, before any clustering: the
        reference and threshold rows gathered from ``raw`` (as ``fit`` takes it; ``n`` rows,
        ``row_index`` their absolute ids), the scorer's projection fitted on the reference, the
        reference index (this process's memo, the disk cache, or built) and each of those
        rows' nearest reference rows. None of it depends on the clusters, so `vclust fit` runs
        it on a thread while it preprocesses and clusters; ``fit`` runs it itself when it was
        not (or for other rows). Returns self."""
        if raw is None:
            raise ValueError("prepare needs the descriptor rows (raw=)")
        self._validate(n)
        pos, extra = self._positions(n)
        parts = (pos,) if extra is None else (pos, extra)
        got = self._gather(raw, parts)
        # a PCA of reference_size rows finds the directions one of every row finds, for an
        # eighth of the arithmetic on 416k rows
        self.projection_ = _projection(got[0], self.pca_variance, self.max_components,
                                       self.random_state)
        ref = np.ascontiguousarray(self._own_block(got[0]), dtype=np.float32)
        extra_own = None if extra is None else self._own_block(got[1])
        del got
        rows_abs = np.arange(n) if row_index is None else np.asarray(row_index)
        self.ref_rows_ = rows_abs[pos].astype(np.int64)
        self.reference_ = ref
        self._fp = None
        self._reference_index()
        self._neighbours_cached(ref, self.ref_rows_)
        if extra is not None:
            self._neighbours_cached(extra_own, rows_abs[extra])
        self._prepared = {"raw": raw, "n": n, "row_index": row_index, "pos": pos,
                          "extra": extra, "extra_own": extra_own}
        return self

    def _prepared_for(self, raw, n, row_index):
        prep = getattr(self, "_prepared", None)
        if prep is None or prep["raw"] is not raw or prep["n"] != n:
            return None
        same = (prep["row_index"] is None and row_index is None) or (
            prep["row_index"] is not None and row_index is not None
            and np.array_equal(prep["row_index"], row_index))
        return prep if same else None

    def _reference_index(self):
        """The index over ``reference_`` (this process's memo, the disk cache, or built) and
        the reference rows' k-distance and lrd from its graph."""
        k, m = self.n_neighbors, len(self.reference_)
        ref = self.reference_
        key = (self._fingerprint(), self.index_neighbors, self.random_state)
        built = INDEX_MEMO.get(key)
        self.index_source_ = "this process"
        if built is None:
            built = self._cached_index(key)
            self.index_source_ = "cache"
        if built is None:
            enable_numba_cache()
            from pynndescent import NNDescent

            nn = NNDescent(ref, n_neighbors=min(self.index_neighbors, m - 1),
                           random_state=self.random_state, n_jobs=build_threads(), compressed=False,
                           verbose=False)
            gi, gd = (a.copy() for a in nn.neighbor_graph)
            nn.prepare()
            release_gil(nn)
            built = (nn, *index_to_state(nn), gi, gd)
            self._cache_built(key, built)
            self.index_source_ = "built"
        if self.index_source_ != "this process":
            INDEX_MEMO.put(key, built, 0)
        nn, self._index_params, self._index_arrays, gi, gd = built
        self._index = nn  # None when it came from the disk cache: restored on first query
        if nn is not None:
            self._cache_index()
        # the reference's own neighbours, itself excluded (column 0 of the graph is the row)
        own_entry = gi == np.arange(m)[:, None]
        idx = np.argsort(np.where(own_entry | (gi < 0), np.inf, gd), axis=1, kind="stable")[:, :k]
        ref_nbr = np.take_along_axis(gi, idx, 1)
        ref_d = np.take_along_axis(gd, idx, 1)
        self.kdist_ = ref_d[:, -1].astype(np.float32)
        reach = np.maximum(ref_d, self.kdist_[ref_nbr])
        self.lrd_ = (1.0 / np.maximum(reach.mean(axis=1), 1e-12)).astype(np.float32)

    def fit(self, X, labels, center_dist, centers=None, row_index=None, raw=None):
        """Build the reference index and fit the score's normalisation and threshold.

        X, labels, center_dist : the clustering rows (dask or numpy) of the fit, their clusters and
        distances to the centres; ``raw``: the same rows as given (array or dict of arrays), or
        None to score on X. ``row_index`` maps X's rows to absolute row ids (default 0..n-1),
        used to skip a reference row's own entry. What depends on ``raw`` alone comes from
        ``prepare`` (run here unless it ran for these rows).
        """
        import dask

        n = X.shape[0]
        self._validate(n)
        k = self.n_neighbors
        rows_abs = np.arange(n) if row_index is None else np.asarray(row_index)
        if raw is not None:
            _same_rows(X, raw)
            prep = self._prepared_for(raw, n, row_index)
            if prep is None:
                self.prepare(raw, n, row_index)
                prep = self._prepared
            pos, extra = prep["pos"], prep["extra"]
            got_z = self._gather(X, (pos,) if extra is None else (pos, extra))
            ref = self.reference_
            ref_z = np.ascontiguousarray(got_z[0], dtype=np.float32)
            more = None if extra is None else (prep["extra_own"], got_z[1])
            self._prepared = None  # the descriptor rows are the caller's to release
        else:
            pos, extra = self._positions(n)
            got_z = self._gather(X, (pos,) if extra is None else (pos, extra))
            self.projection_ = None
            ref = ref_z = np.ascontiguousarray(got_z[0], dtype=np.float32)
            more = None if extra is None else (got_z[1],) * 2
            self.ref_rows_ = rows_abs[pos].astype(np.int64)
            self.reference_ = ref
            self._fp = None
            self._reference_index()
        self.reference_z_ = None if raw is None else ref_z
        m = len(ref)
        # the group rank: the j-th reference neighbour stands for about k rows of the data
        self.tight_rank_ = int(np.clip(round(k * m / n), 1, k))
        # normalisation of knn, lof and tight on the reference rows, queried as every row is
        self._neighbours_cached(ref, self.ref_rows_)  # from the disk cache when it has them
        knn_raw, lof_raw, tight_raw = self._raw_components(ref, ref_z, self.ref_rows_)
        self.knn_norm_ = np.array(_robust(knn_raw))
        self.lof_norm_ = np.array(_robust(lof_raw))
        self.tight_norm_ = np.array(_robust(tight_raw))
        # per cluster: spread of log distance-to-centre over all fit rows; tightness of its
        # reference rows
        lab, dist = dask.compute(labels, center_dist) if is_dask(labels) else (labels, center_dist)
        lab, dist = np.asarray(lab), np.asarray(dist, dtype=np.float64)
        n_clusters = int(lab.max()) + 1 if centers is None else len(centers)
        self.cluster_median_ = np.zeros(n_clusters)
        self.cluster_log_mad_ = np.ones(n_clusters)
        counts = np.bincount(lab, minlength=n_clusters)
        log_d = _log(dist)
        for c in np.flatnonzero(counts):
            med_log, self.cluster_log_mad_[c] = _robust(log_d[lab == c])
            self.cluster_median_[c] = np.exp(med_log)
        big = counts > k
        pooled = float(np.median(self.cluster_log_mad_[big if big.any() else counts > 0]))
        self.cluster_log_mad_ = np.maximum(self.cluster_log_mad_, 0.5 * pooled)
        self.cluster_share_ = counts / len(lab)
        lift = -(tight_raw - self.tight_norm_[0]) / self.tight_norm_[1]
        ref_lab = lab[pos]
        self.cluster_tight_ = np.full(n_clusters, -np.inf)
        for c in np.unique(ref_lab):
            self.cluster_tight_[c] = float(np.median(lift[ref_lab == c]))
        self.cluster_degenerate_ = self.cluster_tight_ > self.tight_gate
        # the threshold: on the combined z of every fit row (``threshold_rows="all"``), or of a
        # seeded sample of the rows (``"reference"``): the reference rows when they are all the
        # rows, else as many rows from outside the reference, scored here in the client with
        # the index just built. Not the reference rows themselves: the index finds an indexed
        # row's neighbours more surely than a stranger's, so they score a little lower than
        # the rows labelled later (416k synthetic osnet: 4.2% flagged against 4.6% of the
        # others at the same threshold).
        if self.threshold_rows == "all":
            at = np.arange(n)
            z, term = self._z_all(X, raw, lab, dist, rows_abs)
        elif extra is None:
            at = pos
            t = self._combine(knn_raw, lof_raw, tight_raw, lab[pos], dist[pos])
            term = np.argmax(t, axis=1)
            z, term = t[np.arange(len(t)), term], (term + 1).astype(np.int8)
        else:
            at = extra
            self._neighbours_cached(more[1] if raw is None else more[0], rows_abs[at])
            z, term = self.z_block(more[1], lab[at], dist[at], rows_abs[at],
                                   own=None if raw is None else more[0], with_term=True)
        if self.threshold == "contamination":
            self.threshold_z_ = float(np.quantile(z, 1 - self.contamination))
        else:
            med, mad = _robust(z)
            self.threshold_z_ = med + self.mad_z * mad
        self.threshold_ = float(1.0 / (1.0 + np.exp(-(min(self.threshold_z_, 50) - 3.0))))
        # flags and reasons of the rows the threshold was fitted on (not saved with the model),
        # at positions ``fit_rows_`` of X
        self.fit_rows_ = at
        self.fit_flags_ = z >= self.threshold_z_
        self.fit_reasons_ = np.where(self.fit_flags_, term, 0).astype(np.int8)
        self.fit_outlier_rate_ = float(self.fit_flags_.mean())
        return self

    # ------------------------------------------------------------------ the index

    # ------------------------------------------------------------------ the disk cache

    def _disk_key(self, key) -> tuple:
        """``key`` (a memo key: content digests and settings) with what else the answer depends
        on: the build's thread count (pynndescent shares work out by thread) and the library
        (its version read from the installed metadata: a fit served by the cache imports
        neither pynndescent nor numba)."""
        return ("outliers", FIT_CACHE_VERSION, _pynndescent_version(), build_threads()) + key

    def _cached_index(self, key):
        """The index built by an earlier process for the same reference (indexcache), as
        ``INDEX_MEMO`` holds it, or None. The NNDescent itself is restored from the arrays when
        a query first needs it (``index``): a fit whose neighbour answers the cache holds too
        asks none, and does not import pynndescent (0.6 s) for it. The state is decoded here,
        so an entry that does not decode is built again instead."""
        from . import indexcache
        from .annindex import decode_state

        hit = indexcache.load(self._disk_key(key))
        if hit is None:
            return None
        arrays = hit["arrays"]
        gi, gd = arrays.pop("__graph_indices"), arrays.pop("__graph_distances")
        try:
            decode_state(hit["params"], arrays)
        except Exception as exc:  # noqa: BLE001 - an entry of another make: build it again
            log.warning("outlier index cache: entry not usable (%s); building the index", exc)
            return None
        return (None, hit["params"], arrays, gi, gd)

    def _cache_built(self, key, built):
        from . import indexcache

        _, params, arrays, gi, gd = built
        indexcache.save(self._disk_key(key), params,
                        {**arrays, "__graph_indices": gi, "__graph_distances": gd})

    def _neighbours_cached(self, x, rows):
        """``neighbours`` for a question the fit asks (the reference rows, the threshold
        sample), answered from the disk cache when an earlier process asked it."""
        from . import indexcache

        k = self.n_neighbors
        x = np.ascontiguousarray(x, dtype=np.float32)
        key = self._neighbour_key(x, rows)
        disk_key = self._disk_key(("neighbours", self.index_neighbors, self.random_state) + key)
        if NEIGHBOUR_MEMO.get(key) is None:
            hit = indexcache.load(disk_key)
            if hit is not None and hit["arrays"]["idx"].shape == (len(x), k):
                out = (hit["arrays"]["idx"].astype(np.int32), hit["arrays"]["dist"])
                for a in out:
                    a.flags.writeable = False
                NEIGHBOUR_MEMO.put(key, out, out[0].nbytes + out[1].nbytes)
                return out
        out = self.neighbours(x, rows)
        indexcache.save(disk_key, {}, {"idx": out[0], "dist": out[1]})
        return out

    def _fingerprint(self):
        """Digest of the reference (its rows and their ids): names the index it gets."""
        fp = getattr(self, "_fp", None)
        if fp is None:
            h = hashlib.sha1(self.reference_.tobytes())
            h.update(self.ref_rows_.tobytes())
            fp = self._fp = h.hexdigest()
        return fp

    def _cache_index(self):
        _INDEX_CACHE.clear()  # one model's index per process at a time
        _INDEX_CACHE[self._fingerprint()] = self._index

    def index(self):
        """The NNDescent index for this thread: built at fit, else restored once per process from
        the arrays; each thread queries its own view of it (pynndescent keeps per-query scratch,
        its visited set and result heaps, on the index: threads sharing one index corrupt each
        other's neighbours)."""
        if getattr(self, "_index", None) is None:
            key = self._fingerprint()
            cached = _INDEX_CACHE.get(key)
            if cached is None:
                log.info("restoring the outlier reference index (%d rows)", len(self.reference_))
                cached = index_from_state(self._index_params, self._index_arrays)
                _INDEX_CACHE.clear()
                _INDEX_CACHE[key] = cached
            self._index = cached
        return _thread_view(self._index)

    def _query(self, x, k):
        """The index's k nearest neighbours of the rows ``x``, queried in parts of QUERY_PART
        rows side by side on threads (the search releases the GIL: annindex.release_gil). The
        parts are cut by row count only, so the answer does not depend on the machine."""
        n = len(x)
        if n <= QUERY_PART:
            return self.index().query(x, k=k)

        def part(a):
            i, d = self.index().query(x[a:a + QUERY_PART], k=k)
            return i.copy(), d.copy()  # the thread's query workspace holds them till its next

        parts = list(_query_pool().map(part, range(0, n, QUERY_PART)))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _neighbour_key(self, x, rows):
        return (self._fingerprint(), self.n_neighbors, _digest(x), _digest(np.asarray(rows)))

    def neighbours(self, x, rows):
        """(positions (n, k), distances (n, k)) of the k nearest reference rows to the scoring
        rows ``x``, skipping a row's own reference entry."""
        k = self.n_neighbors
        x = np.ascontiguousarray(x, dtype=np.float32)
        key = self._neighbour_key(x, rows)
        hit = NEIGHBOUR_MEMO.get(key)
        if hit is not None:
            return hit
        idx, dist = self._query(x, k + 1)
        is_self = self.ref_rows_[idx] == np.asarray(rows)[:, None]
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # self entries move last
        out = (np.take_along_axis(idx, order, 1).astype(np.int32),
               np.take_along_axis(dist, order, 1))
        for a in out:
            a.flags.writeable = False  # shared by every later caller with the same question
        NEIGHBOUR_MEMO.put(key, out, out[0].nbytes + out[1].nbytes)
        return out

    # ------------------------------------------------------------------ scoring

    def _raw_components(self, x, xz, rows, nearest=None):
        """(knn, lof, tight) before normalisation: ``x`` the scoring rows, ``xz`` the same rows
        in the clustering rows. ``nearest``, a list, receives (row, distance) of each row's
        nearest reference row other than itself (absolute row ids, scoring-row distances)."""
        idx, d = self.neighbours(x, rows)
        if nearest is not None:
            nearest.append((self.ref_rows_[idx[:, 0]], d[:, 0].astype(np.float32)))
        knn = _log(d.mean(axis=1))
        reach = np.maximum(d, self.kdist_[idx])
        lrd = 1.0 / np.maximum(reach.mean(axis=1), 1e-12)
        lof = _log(self.lrd_[idx].mean(axis=1) / lrd)
        ref_z = self.reference_ if getattr(self, "reference_z_", None) is None else self.reference_z_
        xz = np.asarray(xz, dtype=np.float32)
        dz = np.empty(idx.shape, np.float32)
        for j in range(idx.shape[1]):  # column by column: (rows, dims) temporaries only
            diff = ref_z[idx[:, j]] - xz
            dz[:, j] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        tight = _log(np.partition(dz, self.tight_rank_ - 1, axis=1)[:, self.tight_rank_ - 1])
        return knn, lof, tight

    def terms(self, x, labels, center_dist, rows, own=None, nearest=None):
        """The lifts of each row of a numpy block, (n, 4) float64 in REASONS order from
        "isolated" (-inf where a term has nothing to say); ``own`` its scoring rows (None: x);
        ``nearest`` as for ``_raw_components``."""
        knn, lof, tight = self._raw_components(x if own is None else own, x, rows, nearest)
        return self._combine(knn, lof, tight, labels, center_dist)

    def _combine(self, knn, lof, tight, labels, center_dist):
        """``terms`` from the raw components (knn, lof, tight) of ``_raw_components``."""
        labels = np.asarray(labels)
        z_knn = (knn - self.knn_norm_[0]) / self.knn_norm_[1]
        z_lof = (lof - self.lof_norm_[0]) / self.lof_norm_[1]
        lift_tight = -(tight - self.tight_norm_[0]) / self.tight_norm_[1]
        z_centre = ((_log(center_dist) - np.log(np.maximum(self.cluster_median_[labels], 1e-12)))
                    / self.cluster_log_mad_[labels])
        out = np.full((len(labels), 4), -np.inf)
        out[:, _ISOLATED - 1] = z_knn + np.maximum(z_lof - self.lof_gate, 0.0)
        out[:, _TIGHT - 1] = np.where(lift_tight > self.tight_gate, lift_tight, -np.inf)
        out[:, _CENTRE - 1] = np.where(z_centre > self.centre_gate, z_centre, -np.inf)
        out[:, _DEGENERATE - 1] = np.where(self.cluster_degenerate_[labels],
                                           self.cluster_tight_[labels], -np.inf)
        return out

    def z_block(self, x, labels, center_dist, rows, own=None, with_term=False, nearest=None):
        """The combined z of each row of a numpy block (and the REASONS index of the term that
        gave it, with ``with_term``)."""
        t = self.terms(x, labels, center_dist, rows, own, nearest)
        term = np.argmax(t, axis=1)
        z = t[np.arange(len(t)), term]
        return (z, (term + 1).astype(np.int8)) if with_term else z

    def score_block(self, x, labels, center_dist, rows, own=None, reasons=False, nearest=None):
        """(outlier_score float32, is_outlier bool[, reason int8]) for one numpy block;
        ``nearest``, a list, receives (row, distance) of each row's nearest reference row."""
        z, term = self.z_block(x, labels, center_dist, rows, own, with_term=True, nearest=nearest)
        score = (1.0 / (1.0 + np.exp(-(np.clip(z, -50, 50) - 3.0)))).astype(np.float32)
        # the threshold is on z: scores of far outliers all round to 1.0 in float32
        flag = z >= getattr(self, "threshold_z_", np.inf)
        if reasons:
            return score, flag, np.where(flag, term, 0).astype(np.int8)
        return score, flag

    def _z_all(self, X, raw, labels, dist, rows_abs):
        """(combined z, term) of the fit rows: on the workers, one task per block."""
        import dask
        import dask.array as da

        if not is_dask(X):
            X = da.from_array(X, chunks=(65_536, X.shape[1]))
        me = shared(self)
        tasks = []
        bounds = np.cumsum((0,) + tuple(X.chunks[0]))
        for i, (x, r) in enumerate(zip(X.to_delayed().ravel(), self._raw_parts(raw, X.chunks[0]))):
            a, b = int(bounds[i]), int(bounds[i + 1])
            tasks.append(dask.delayed(_z_task)(me, x, labels[a:b], dist[a:b], rows_abs[a:b], r))
        parts = dask.compute(*tasks)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def score(self, X, labels, center_dist, row_offset=0, reasons=False, raw=None,
              nearest=False):
        """(outlier_score, is_outlier) for every row, with ``reasons`` also the reason (int8
        index into REASONS, 0 for rows not flagged), with ``nearest`` also each row's nearest
        reference row other than itself (int64 absolute row id) and its distance in the scoring
        rows (float32): the near-duplicate evidence, from the same query; dask in -> dask out
        (one task per block, run on the workers), numpy in -> numpy out. ``row_offset`` is the
        absolute row id of X's first row (the reference skips a row's own entry by that id);
        ``raw`` the same rows as given, when the scorer was fitted with them."""
        import dask
        import dask.array as da

        raw = self._check_raw(X, raw)
        if not is_dask(X):
            rows = np.arange(row_offset, row_offset + X.shape[0])
            near = []
            out = self.score_block(X, labels, center_dist, rows, self._own_block(raw), reasons,
                                   nearest=near)
            return (*out, *near[0]) if nearest else out
        me = shared(self)
        offsets = np.cumsum((row_offset,) + X.chunks[0][:-1])
        labels = labels.rechunk((X.chunks[0],))
        center_dist = center_dist.rechunk((X.chunks[0],))
        raws = self._raw_parts(raw, X.chunks[0])

        def one(scorer, x, lab, dist, row0, r):
            near = []
            s, f, why = scorer.score_block(x, lab, dist, np.arange(row0, row0 + len(x)),
                                           scorer._own_block(r), reasons=True, nearest=near)
            return np.stack([s, f, why, near[0][0], near[0][1]], axis=1).astype(np.float64)

        blocks = []
        for i, (x, lab, dist) in enumerate(zip(X.to_delayed().ravel(), labels.to_delayed().ravel(),
                                               center_dist.to_delayed().ravel())):
            n = X.chunks[0][i]
            res = dask.delayed(one, pure=True)(me, x, lab, dist, int(offsets[i]), raws[i])
            blocks.append(da.from_delayed(res, shape=(n, 5), dtype=np.float64))
        both = da.concatenate(blocks, axis=0)
        out = (both[:, 0].astype(np.float32), both[:, 1] > 0.5)
        if reasons:
            out += (both[:, 2].astype(np.int8),)
        if nearest:
            out += (both[:, 3].astype(np.int64), both[:, 4].astype(np.float32))
        return out

    # ------------------------------------------------------------------ state

    _ARRAYS = ("reference_", "ref_rows_", "kdist_", "lrd_", "cluster_median_", "cluster_log_mad_",
               "cluster_share_", "cluster_tight_", "cluster_degenerate_", "knn_norm_", "lof_norm_",
               "tight_norm_")

    def to_state(self):
        params = self.get_params()
        params.update(threshold_=self.threshold_, threshold_z_=self.threshold_z_,
                      fit_outlier_rate_=self.fit_outlier_rate_, tight_rank_=self.tight_rank_,
                      index=self._index_params, projection=None)
        arrays = {k.rstrip("_"): getattr(self, k) for k in self._ARRAYS}
        arrays.update({f"index/{k}": v for k, v in self._index_arrays.items()})
        if self.projection_ is not None:
            from .preprocess import MixturePreprocessor

            p, a = self.projection_.to_state()
            params["projection"] = {"mixture": isinstance(self.projection_, MixturePreprocessor),
                                    "params": p}
            arrays["reference_z"] = self.reference_z_
            arrays.update({f"projection/{k}": v for k, v in a.items()})
        return params, arrays

    @classmethod
    def from_state(cls, params, arrays):
        from .preprocess import MixturePreprocessor, Preprocessor

        obj = cls(**{k: params[k] for k in cls._param_names() if k in params})  # older: no threshold_rows
        obj.threshold_, obj.threshold_z_ = params["threshold_"], params["threshold_z_"]
        obj.fit_outlier_rate_ = params["fit_outlier_rate_"]
        obj.tight_rank_ = int(params["tight_rank_"])
        for k in cls._ARRAYS:
            setattr(obj, k, np.asarray(arrays[k.rstrip("_")]))
        obj.cluster_degenerate_ = obj.cluster_degenerate_.astype(bool)
        obj.reference_ = np.ascontiguousarray(obj.reference_, dtype=np.float32)
        proj = params.get("projection")
        obj.projection_, obj.reference_z_ = None, None
        if proj is not None:
            sub = {k[len("projection/"):]: v for k, v in arrays.items() if k.startswith("projection/")}
            kind = MixturePreprocessor if proj["mixture"] else Preprocessor
            obj.projection_ = kind.from_state(proj["params"], sub)
            obj.reference_z_ = np.ascontiguousarray(arrays["reference_z"], dtype=np.float32)
        obj._index_params = params["index"]
        obj._index_arrays = {k[len("index/"):]: v for k, v in arrays.items() if k.startswith("index/")}
        obj._index = None
        return obj


def _same_rows(X, raw):
    for a in (raw.values() if isinstance(raw, dict) else [raw]):
        if a.shape[0] != X.shape[0]:
            raise ValueError(f"raw has {a.shape[0]} rows; X has {X.shape[0]}")


def build_threads() -> int:
    """Threads that build the reference index: 2 where numba has them. The graph depends on
    the thread count (pynndescent shares the candidate updates out by thread), not on the
    scheduling: the same count on every machine gives the same index for the same rows; 2
    threads build a 50,000 x 119 index in 2.1 s against 3.8 s for one. Numba's thread count,
    found as numba finds it (NUMBA_NUM_THREADS, else the CPUs this process may use) without
    importing it: a fit served by the cache never does, and another thread may be importing
    it half way."""
    import os

    if os.environ.get("NUMBA_NUM_THREADS"):
        count = int(os.environ["NUMBA_NUM_THREADS"])
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count() or 1
    return max(1, min(2, count))


_PYNNDESCENT_VERSION = []


def _pynndescent_version() -> str:
    if not _PYNNDESCENT_VERSION:
        from importlib import metadata

        _PYNNDESCENT_VERSION.append(metadata.version("pynndescent"))
    return _PYNNDESCENT_VERSION[0]


def _thread_view(index):
    """A shallow copy of ``index`` for the calling thread, with its own query scratch (the
    graph, trees, data and compiled search functions are shared, read only)."""
    views = getattr(_LOCAL, "views", None)
    if views is None or views[0] is not index:
        view = object.__new__(type(index))
        view.__dict__.update(index.__dict__)
        view._visited = np.zeros_like(index._visited)
        view._query_workspace = None
        _LOCAL.views = views = (index, view)
    return views[1]


def warm_up(n_features: int = 8):
    """Compile pynndescent's index-building kernels in this process (a tiny index), once per
    process. `vclust compare` runs it on a thread while it reads and reduces the sets, so its
    first outlier fit finds the kernels loaded (`vclust fit` prepares its reference on a thread
    instead: ``OutlierScorer.prepare``)."""
    enable_numba_cache()
    from pynndescent import NNDescent

    x = np.random.default_rng(0).random((300, n_features)).astype(np.float32)
    NNDescent(x, n_neighbors=10, random_state=0, n_jobs=1, compressed=False).prepare()


def _z_task(scorer, x, labels, dist, rows, raw_block):
    return scorer.z_block(x, labels, dist, rows, scorer._own_block(raw_block), with_term=True)


def _pick_task(block, locals_):
    """The rows of a block at each of the position arrays ``locals_`` (a tuple of arrays)."""
    block = np.asarray(block)
    return tuple(block[p] for p in locals_)
