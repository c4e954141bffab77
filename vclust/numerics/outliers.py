"""Outlier scoring with a pynndescent reference index, run per row block across the workers.

Fit: a seeded reference sample of the reduced rows (``reference_size``) gets an NNDescent index,
built once. For each reference row we keep its k nearest reference neighbours *other than
itself*, its k-distance and its local reachability density (LOF's lrd).

Score of a row x (query k + 1 neighbours; a row that is itself in the reference is dropped from
its own neighbour list by its row index, never by distance, so exact duplicates still count):

    knn     log of the mean distance to its k nearest reference neighbours
    lof     log of LOF: mean lrd of those neighbours / lrd(x),
            lrd(x) = 1 / mean_o max(d(x, o), kdist(o))
    centre  distance to its cluster centre, as a robust z of its log within that cluster:
            (log d - log median_c) / (1.4826 MAD_c of log d); the log because distances to a
            centre are skewed right, and a z on them flags the far side of every cluster
    tight   a neighbourhood abnormally tight: -z(knn) - ``tight_offset``, the lower tail of the
            same robust z, counted beyond 3 deviations only (near-duplicate frames: glare, the
            empty scene of one camera, whose neighbours are each other at almost no distance)
    small   membership of a degenerate cluster: one holding less than ``min_cluster_share`` of
            the rows, or one far tighter than the others (median distance to its centre under
            ``tight_cluster_ratio`` times the median of the clusters' medians): near-identical
            frames that k-means gave a cluster of their own

knn and lof become robust z-scores against the reference rows ((v - median) / (1.4826 MAD)).
The combined z is the largest of the weighted z's (plus ``small_z`` for small clusters), and

    outlier_score = 1 / (1 + exp(-(z - 3)))          in (0, 1); z = 3 gives 0.5

A max is used because the two kinds of outlier light up different components: an isolated junk
vector has a large knn and lof, a tight group (glare frames, empty frames of one camera: each
other's nearest neighbours, so a plain knn score calls them the most normal rows of all) has a
neighbourhood far tighter than any vehicle's, and may also lie far from its cluster's centre or
form a cluster of its own. On the demo's vdc_type+vdc_color mixture the groups sit near their
centres (centre z 1-3) with knn z near -24, the tightest inlier at -3.8.

``is_outlier`` = combined z above a threshold fitted on the fit rows: by default a robust z-score
over them, median + mad_z * 1.4826 MAD of their combined z (``threshold="mad"``, mad_z 3.5: it
follows however many outliers the data holds); or the (1 - contamination) quantile
(``threshold="contamination"``: a fixed share). On the 416k synthetic osnet set the default flags
1.2% of inliers, all junk, 96% of glare and 92% of empty frames; on MVTec 2.9% of good parts and
25% of defects, where a 2% contamination flags 7%.

The index is built once per fit (pynndescent compiles its graph-building kernels once per
process, uncached; ``warm_up`` lets ``vclust fit`` pay that while the workers cluster). What it
learned is kept as arrays (vclust.numerics.annindex: the prepared index's own state, no pickle);
a worker process restores it once (the search kernels only) and caches it by fingerprint, so
chunks never rebuild or recompile it. Nothing numba-compiled is pickled. The costs are measured
in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from . import DEFAULT_MAD_Z
from .annindex import index_from_state, index_to_state
from .blocks import is_dask, sample_rows, shared

log = logging.getLogger(__name__)

_INDEX_CACHE: dict = {}


def _robust(v):
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    return med, mad if mad > 1e-12 else 1e-12


class OutlierScorer:
    """Outlier scores in [0, 1] for reduced rows; see the module docstring for the formula."""

    def __init__(self, *, n_neighbors=10, reference_size=50_000, threshold="mad",
                 contamination=0.02, mad_z=DEFAULT_MAD_Z, min_cluster_share=0.005, weights=None,
                 tight_cluster_ratio=0.15, small_z=6.0, tight_offset=3.0, index_neighbors=30,
                 random_state=0):
        self.n_neighbors = n_neighbors
        self.reference_size = reference_size
        self.threshold = threshold
        self.contamination = contamination
        self.mad_z = mad_z
        self.min_cluster_share = min_cluster_share
        self.weights = weights
        self.tight_cluster_ratio = tight_cluster_ratio
        self.small_z = small_z
        self.tight_offset = tight_offset
        self.index_neighbors = index_neighbors
        self.random_state = random_state

    # ------------------------------------------------------------------ pickling

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_index", None)  # numba state is rebuilt where the scorer lands
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ------------------------------------------------------------------ fitting

    def _validate(self, n):
        if self.threshold not in ("contamination", "mad"):
            raise ValueError(f"threshold must be 'contamination' or 'mad'; got {self.threshold!r}")
        if not 0 < self.contamination < 0.5:
            raise ValueError(f"contamination must be in (0, 0.5); got {self.contamination}")
        if n < self.n_neighbors + 2:
            raise ValueError(f"need more than n_neighbors + 1 = {self.n_neighbors + 1} rows; got {n}")

    @property
    def _w(self):
        w = {"knn": 1.0, "lof": 1.0, "centre": 1.0, "tight": 1.0}
        w.update(self.weights or {})
        return w

    def fit(self, X, labels, center_dist, centers=None, row_index=None):
        """Build the reference index and fit the score's normalisation and threshold.

        X, labels, center_dist : rows (dask or numpy) of the fit; ``row_index`` maps X's rows to
        absolute row ids (default 0..n-1), used to skip a reference row's own entry.
        """
        import dask

        n = X.shape[0]
        self._validate(n)
        k = self.n_neighbors
        ref, pos = sample_rows(X, self.reference_size, self.random_state, stream=31)
        ref = np.ascontiguousarray(ref, dtype=np.float32)
        rows_abs = np.arange(n) if row_index is None else np.asarray(row_index)
        self.ref_rows_ = rows_abs[pos].astype(np.int64)
        self.reference_ = ref
        from pynndescent import NNDescent

        m = len(ref)
        nn = NNDescent(ref, n_neighbors=min(self.index_neighbors, m - 1), random_state=self.random_state,
                       n_jobs=1, compressed=False, verbose=False)
        gi, gd = (a.copy() for a in nn.neighbor_graph)
        nn.prepare()
        self._index = nn
        self._index_params, self._index_arrays = index_to_state(nn)
        self._cache_index()
        # the reference's own neighbours, itself excluded (column 0 of the graph is the row)
        own = gi == np.arange(m)[:, None]
        nbr_i = np.where(own, -1, gi)
        idx = np.argsort(np.where(nbr_i < 0, np.inf, gd), axis=1, kind="stable")[:, :k]
        ref_nbr = np.take_along_axis(gi, idx, 1)
        ref_d = np.take_along_axis(gd, idx, 1)
        self.kdist_ = ref_d[:, -1].astype(np.float32)
        reach = np.maximum(ref_d, self.kdist_[ref_nbr])
        self.lrd_ = (1.0 / np.maximum(reach.mean(axis=1), 1e-12)).astype(np.float32)
        # per-cluster spread of distance-to-centre, and cluster shares, over all fit rows
        lab, dist = dask.compute(labels, center_dist) if is_dask(labels) else (labels, center_dist)
        lab, dist = np.asarray(lab), np.asarray(dist, dtype=np.float64)
        n_clusters = int(lab.max()) + 1 if centers is None else len(centers)
        self.cluster_median_ = np.zeros(n_clusters)
        self.cluster_log_mad_ = np.ones(n_clusters)
        for c in range(n_clusters):
            v = dist[lab == c]
            if len(v):
                med_log, self.cluster_log_mad_[c] = _robust(np.log(np.maximum(v, 1e-12)))
                self.cluster_median_[c] = np.exp(med_log)
        self.cluster_share_ = np.bincount(lab, minlength=n_clusters) / len(lab)
        typical = np.median(self.cluster_median_[self.cluster_share_ > 0])
        self.cluster_degenerate_ = ((self.cluster_share_ < self.min_cluster_share)
                                    | (self.cluster_median_ < self.tight_cluster_ratio * typical))
        # normalisation of knn and lof on the reference rows
        knn_raw, lof_raw = self._raw_components(ref, self.ref_rows_)
        self.knn_norm_ = np.array(_robust(knn_raw))
        self.lof_norm_ = np.array(_robust(lof_raw))
        # threshold on the combined z of every fit row
        z = self._z_all(X, lab, dist, rows_abs)
        if self.threshold == "contamination":
            self.threshold_z_ = float(np.quantile(z, 1 - self.contamination))
        else:
            med, mad = _robust(z)
            self.threshold_z_ = med + self.mad_z * mad
        self.threshold_ = float(1.0 / (1.0 + np.exp(-(min(self.threshold_z_, 50) - 3.0))))
        self.fit_flags_ = z >= self.threshold_z_  # of the fit rows (not saved with the model)
        self.fit_outlier_rate_ = float(self.fit_flags_.mean())
        return self

    # ------------------------------------------------------------------ the index

    def _fingerprint(self):
        h = hashlib.sha1(self.reference_.tobytes())
        h.update(self.ref_rows_.tobytes())
        return h.hexdigest()

    def _cache_index(self):
        _INDEX_CACHE.clear()  # one model's index per process at a time
        _INDEX_CACHE[self._fingerprint()] = self._index

    def index(self):
        """The NNDescent index: built at fit, else rebuilt once per process from the arrays."""
        if getattr(self, "_index", None) is None:
            key = self._fingerprint()
            cached = _INDEX_CACHE.get(key)
            if cached is None:
                log.info("restoring the outlier reference index (%d rows)", len(self.reference_))
                cached = index_from_state(self._index_params, self._index_arrays)
                _INDEX_CACHE.clear()
                _INDEX_CACHE[key] = cached
            self._index = cached
        return self._index

    def neighbours(self, x, rows):
        """(positions (n, k), distances (n, k)) of the k nearest reference rows, skipping a row's
        own reference entry."""
        k = self.n_neighbors
        idx, dist = self.index().query(np.asarray(x, dtype=np.float32), k=k + 1)
        is_self = self.ref_rows_[idx] == np.asarray(rows)[:, None]
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # self entries move last
        return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)

    # ------------------------------------------------------------------ scoring

    def _raw_components(self, x, rows):
        idx, d = self.neighbours(x, rows)
        knn = np.log(np.maximum(d.mean(axis=1), 1e-12))
        reach = np.maximum(d, self.kdist_[idx])
        lrd = 1.0 / np.maximum(reach.mean(axis=1), 1e-12)
        lof = np.log(np.maximum(self.lrd_[idx].mean(axis=1) / lrd, 1e-12))
        return knn, lof

    def z_block(self, x, labels, center_dist, rows):
        """The combined robust z of each row of a numpy block (see the module docstring)."""
        labels = np.asarray(labels)
        knn, lof = self._raw_components(x, rows)
        w = self._w
        z_knn = (knn - self.knn_norm_[0]) / self.knn_norm_[1]
        z_lof = (lof - self.lof_norm_[0]) / self.lof_norm_[1]
        log_d = np.log(np.maximum(np.asarray(center_dist, np.float64), 1e-12))
        z_centre = (log_d - np.log(np.maximum(self.cluster_median_[labels], 1e-12))) / self.cluster_log_mad_[labels]
        z_tight = -z_knn - self.tight_offset
        z = np.maximum.reduce([w["knn"] * z_knn, w["lof"] * z_lof, w["centre"] * z_centre,
                               w["tight"] * z_tight])
        small = self.cluster_degenerate_[labels]
        return np.where(small, np.maximum(z, self.small_z), z)

    def score_block(self, x, labels, center_dist, rows):
        """(outlier_score float32, is_outlier bool) for one numpy block."""
        z = self.z_block(x, labels, center_dist, rows)
        score = (1.0 / (1.0 + np.exp(-(np.clip(z, -50, 50) - 3.0)))).astype(np.float32)
        # the threshold is on z: scores of far outliers all round to 1.0 in float32
        return score, z >= getattr(self, "threshold_z_", np.inf)

    def _z_all(self, X, labels, dist, rows_abs):
        """Combined z of the fit rows: on the workers, one task per block."""
        import dask
        import dask.array as da

        if not is_dask(X):
            X = da.from_array(X, chunks=(65_536, X.shape[1]))
        me = shared(self)
        tasks = []
        for i, x in enumerate(X.to_delayed().ravel()):
            a = int(sum(X.chunks[0][:i]))
            b = a + X.chunks[0][i]
            tasks.append(dask.delayed(_z_task)(me, x, labels[a:b], dist[a:b], rows_abs[a:b]))
        return np.concatenate(dask.compute(*tasks))

    def score(self, X, labels, center_dist, row_offset=0):
        """(outlier_score, is_outlier) for every row; dask in -> dask out (one task per block,
        run on the workers), numpy in -> numpy out. ``row_offset`` is the absolute row id of X's
        first row (the reference skips a row's own entry by that id)."""
        import dask
        import dask.array as da

        if not is_dask(X):
            rows = np.arange(row_offset, row_offset + X.shape[0])
            return self.score_block(X, labels, center_dist, rows)
        me = shared(self)
        offsets = np.cumsum((row_offset,) + X.chunks[0][:-1])
        labels = labels.rechunk((X.chunks[0],))
        center_dist = center_dist.rechunk((X.chunks[0],))

        def one(scorer, x, lab, dist, row0):
            s, f = scorer.score_block(x, lab, dist, np.arange(row0, row0 + len(x)))
            return np.stack([s, f.astype(np.float32)], axis=1)

        blocks = []
        for i, (x, lab, dist) in enumerate(zip(X.to_delayed().ravel(), labels.to_delayed().ravel(),
                                               center_dist.to_delayed().ravel())):
            n = X.chunks[0][i]
            res = dask.delayed(one, pure=True)(me, x, lab, dist, int(offsets[i]))
            blocks.append(da.from_delayed(res, shape=(n, 2), dtype=np.float32))
        both = da.concatenate(blocks, axis=0)
        return both[:, 0], both[:, 1] > 0.5

    # ------------------------------------------------------------------ state

    _ARRAYS = ("reference_", "ref_rows_", "kdist_", "lrd_",
               "cluster_median_", "cluster_log_mad_", "cluster_share_", "cluster_degenerate_",
               "knn_norm_", "lof_norm_")
    _PARAMS = ("n_neighbors", "reference_size", "threshold", "contamination", "mad_z",
               "min_cluster_share", "weights", "tight_cluster_ratio", "small_z", "tight_offset",
               "index_neighbors", "random_state")

    def to_state(self):
        params = {k: getattr(self, k) for k in self._PARAMS}
        params.update(threshold_=self.threshold_, threshold_z_=self.threshold_z_,
                      fit_outlier_rate_=self.fit_outlier_rate_, index=self._index_params)
        arrays = {k.rstrip("_"): getattr(self, k) for k in self._ARRAYS}
        arrays.update({f"index/{k}": v for k, v in self._index_arrays.items()})
        return params, arrays

    @classmethod
    def from_state(cls, params, arrays):
        obj = cls(**{k: params[k] for k in cls._PARAMS})
        obj.threshold_, obj.threshold_z_ = params["threshold_"], params["threshold_z_"]
        obj.fit_outlier_rate_ = params["fit_outlier_rate_"]
        for k in cls._ARRAYS:
            setattr(obj, k, np.asarray(arrays[k.rstrip("_")]))
        obj._index_params = params["index"]
        obj._index_arrays = {k[len("index/"):]: v for k, v in arrays.items() if k.startswith("index/")}
        obj._index = None
        return obj


def warm_up(n_features: int = 8):
    """Compile pynndescent's index-building kernels in this process (a tiny index), once per
    process. ``vclust fit`` runs it on a client thread while the workers preprocess and
    cluster, so the outlier step later finds the kernels compiled."""
    from pynndescent import NNDescent

    x = np.random.default_rng(0).random((300, n_features)).astype(np.float32)
    NNDescent(x, n_neighbors=10, random_state=0, n_jobs=1, compressed=False).prepare()


def _z_task(scorer, x, labels, dist, rows):
    return scorer.z_block(x, labels, dist, rows)
