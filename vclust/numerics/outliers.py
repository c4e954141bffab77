"""Outlier scoring: the formula. The reference index it asks is vclust.numerics.refindex.

Two spaces. The *clustering rows* (``X``: what the clusters were fitted on, L2 + PCA 0.95 by
default) carry the clusters. The *scoring rows* are the scorer's own projection of the
descriptor rows as given (``raw=`` at fit and score: centred, PCA to ``pca_variance`` of the
variance, at most ``max_components``, no L2), else the clustering rows themselves. Each space
hides something the other shows: L2 erases a row's norm, so rows near zero (a frame with
little in it for the network to respond to) become ordinary directions in the clustering rows;
rows along one bright direction, each at its own brightness, collapse to one point only once
L2-normalised. So the group and centre terms are measured in both spaces and the larger taken.

Fit: a seeded reference sample of the rows (``reference_size``) gets a ReferenceIndex over its
scoring rows; the projection is fitted on those reference rows (BLAS at one thread: the same
whichever caller fitted it). Kept per reference row: k-distance, LOF's lrd, far distance, lift.

Components of a row x (its k nearest reference rows in the scoring rows; a row that is itself
in the reference is dropped from its own list by its row index, never by distance), each a
robust z ((v - median) / (1.4826 MAD) over the reference rows):

    knn         log of the mean distance to its k nearest reference rows
    lof         log of LOF: mean lrd of those neighbours / lrd(x)
    group       the median over those k neighbours of the log distance from each to its own
                (``index_neighbors`` - 1)-th nearest other reference row (read off the index's
                graph at fit: nothing more is queried): large when x sits in a small group far
                from everything else, which masks the kNN distance of its members (a group of
                up to about index_neighbors - 1 reference rows)
    tight       -log of the distance to the j-th nearest of those neighbours, j the rank that
                holds about k rows of the data (k while the reference is all the rows, k *
                reference / rows when it is a sample; at least 1), in the clustering rows and
                in the scoring rows, the larger: how close its group of about k + 1 rows sits
    centre      log of the distance to its cluster's centre in the clustering rows (against
                that cluster's median and MAD, the MAD floored at half the median MAD of the
                clusters); and log of the distance to the nearest cluster mean in the scoring
                rows (each cluster's mean and spread from its reference rows); and how faint
                the row is: log of its distance from the zero descriptor row in the scoring rows
                (its norm within the projection) below the reference rows' median, against
                their MAD floored at FAINT_MAD_FLOOR (L2-normalised descriptors have no spread
                of norms): the largest of the three

and the terms (``REASONS``) are

    isolated            knn + max(0, lof - ``lof_gate``); or group, where group > ``group_gate``
                        (a small group far from the rest is isolated as a group)
    tight_group         tight, where tight > ``tight_gate``; for a row under that gate, the
                        largest tight lift among its k nearest reference rows past it (a row at
                        the edge of a tight group, or in a part of it too small for rank j)
    far_from_centre     centre, where centre > ``centre_gate``
    degenerate_cluster  every row of a cluster whose reference rows' median tight exceeds
                        ``tight_gate`` (a tight group k-means gave a cluster of its own)

The combined z is the largest term; ``outlier_score = 1 / (1 + exp(-(z - 3)))``: it ranks as
kNN distance wherever the other terms have nothing to say (evidence: benchmarks/RESULTS.md).

``is_outlier`` = combined z above a threshold fitted on the fit rows: median + mad_z * 1.4826
MAD of their combined z (``threshold="mad"``), or the (1 - contamination) quantile
(``threshold="contamination"``), over every fit row (``threshold_rows="all"``) or a seeded
sample (``"reference"``, what `vclust fit` uses: the reference rows when they are all the rows,
else up to THRESHOLD_SAMPLE rows from outside the reference). A flagged row's reason is the term
that gave its combined z; its reasons (``all_reasons``, a bit mask: bit i - 1 for REASONS[i])
every term at or above the threshold, so a glare frame that is also isolated says both.

The reference does not depend on the clusters: ``prepare(raw, n)`` does it from the descriptor
rows alone (on a thread beside `vclust fit`'s preprocessing and clustering); an index cache
across processes is injected (``cache=``: vclust.storage.indexcache). State: arrays, no pickle.
"""

from __future__ import annotations

import numpy as np

from . import DEFAULT_MAD_Z, outlier_state
from .blocks import is_dask, row_uniform, shared
from .estimator import Estimator
from .outlier_rows import (Projected, fixed_context, gather, log_floor as _log, project_block,
                           projection, raw_parts, robust as _robust, same_rows, same_rows_held,
                           shape_only, strongest as _strongest)
from .refindex import ReferenceIndex, warm_up

__all__ = ["OutlierScorer", "REASONS", "NOISE", "reason_bit", "reason_names", "warm_up"]

#: rows outside the reference scored at fit for the threshold (``threshold_rows="reference"``)
THRESHOLD_SAMPLE = 20_000

#: the floor of the MAD of the reference rows' log norms for the faint part of the centre term:
#: with no spread of norms (L2-normalised descriptors), a row is far_from_centre at
#: ``centre_gate`` = 10 when its norm is under exp(-1) of the median; a frame with nothing in it
#: has 1-5 % (benchmarks/RESULTS.md, "Outlier score, quickly")
FAINT_MAD_FLOOR = 0.1

#: ``reason`` codes: index 0 = not an outlier; else the term that gave the row its combined z
REASONS = ("", "isolated", "tight_group", "far_from_centre", "degenerate_cluster", "noise")
_ISOLATED, _TIGHT, _CENTRE, _DEGENERATE = 1, 2, 3, 4
NOISE = REASONS.index("noise")  # not a term: HDBSCAN's noise rows (numerics.algorithms)


def reason_bit(reason: int) -> int:
    """The bit of REASONS[reason] in an ``all_reasons`` mask."""
    return 1 << (reason - 1)


def reason_names(mask: int, strongest: int = 0) -> list:
    """The names of the reasons in ``mask``, ``strongest`` (a REASONS index) first, then in
    REASONS order: what the labels' ``outlier_reasons`` column holds."""
    names = [REASONS[strongest]] if strongest and mask & reason_bit(strongest) else []
    return names + [REASONS[i] for i in range(1, len(REASONS))
                    if i != strongest and mask & reason_bit(i)]


class OutlierScorer(Estimator):
    """Outlier scores in [0, 1]; see the module docstring for the formula.

    ``fit(X, labels, center_dist, centers, row_index, raw=...)`` and ``score(..., raw=...)``:
    ``X`` the clustering rows; ``raw`` the descriptor rows as given (an array, or a dict of
    arrays for a mixture), from which the scorer fits and keeps its own projection. Without
    ``raw`` the nearest-neighbour terms run on ``X``.
    """

    def __init__(self, *, n_neighbors=10, reference_size=50_000, threshold="mad",
                 contamination=0.02, mad_z=DEFAULT_MAD_Z, lof_gate=5.0, tight_gate=8.0,
                 centre_gate=10.0, group_gate=10.0, pca_variance=0.99, max_components=256,
                 index_neighbors=30,
                 threshold_rows="all", random_state=0):
        self.n_neighbors = n_neighbors
        self.reference_size = reference_size
        self.threshold = threshold
        self.contamination = contamination
        self.mad_z = mad_z
        self.lof_gate = lof_gate
        self.tight_gate = tight_gate
        self.centre_gate = centre_gate
        self.group_gate = group_gate
        self.pca_variance = pca_variance
        self.max_components = max_components
        self.index_neighbors = index_neighbors
        self.threshold_rows = threshold_rows
        self.random_state = random_state

    def __getstate__(self):  # the caller's descriptor rows (``prepare``) are never shipped
        return {k: v for k, v in self.__dict__.items() if k != "_prepared"}

    # ------------------------------------------------------------------ the reference

    @property
    def reference_(self):
        """The reference rows in the scoring rows (float32)."""
        return self.ref_index_.rows

    @property
    def ref_rows_(self):
        """The reference rows' absolute row ids."""
        return self.ref_index_.ids

    @property
    def index_source_(self):
        """Where the fit's index came from: "this process", "cache" or "built"."""
        return self.ref_index_.source

    def neighbours(self, x, rows):
        """(positions (n, k), distances (n, k)) of the k nearest reference rows to the scoring
        rows ``x`` (absolute ids ``rows``), skipping a row's own reference entry."""
        return self.ref_index_.neighbours(x, rows, self.n_neighbors)

    def _set_reference(self, rows, ids, cache):
        self.ref_index_ = ReferenceIndex(rows, ids, self.index_neighbors, self.random_state,
                                         cache).build()
        k = self.n_neighbors
        ref_nbr, ref_d = self.ref_index_.own_neighbours(k)
        self.kdist_ = ref_d[:, -1].astype(np.float32)
        reach = np.maximum(ref_d, self.kdist_[ref_nbr])
        self.lrd_ = (1.0 / np.maximum(reach.mean(axis=1), 1e-12)).astype(np.float32)
        # each reference row's distance to its far neighbour (the group term), from the graph
        far = max(1, min(self.index_neighbors - 1, len(rows) - 1))
        far_d = self.ref_index_.own_neighbours(far)[1][:, -1].astype(np.float64)
        ok = np.isfinite(far_d)  # a row the graph left short: the largest far distance
        far_d[~ok] = far_d[ok].max() if ok.any() else 1.0
        self.far_log_ = _log(far_d).astype(np.float32)

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
        same_rows(X, raw)
        return raw

    def scoring_rows(self, raw_block):
        """The scoring rows of one numpy block of ``raw`` (None: score on the clustering rows)."""
        return None if raw_block is None else project_block(self.projection_, raw_block)

    def prepared_copy(self):
        """A scorer sharing what ``prepare`` made, to fit other clusters of the same rows."""
        other = object.__new__(type(self))  # not copy.copy: __getstate__ drops ``_prepared``
        other.__dict__.update(self.__dict__)
        return other

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

    def prepare(self, raw, n, row_index=None, cache=None, projected=lambda: None):
        """What the fit needs of the descriptor rows alone, before any clustering: the
        reference and threshold rows gathered from ``raw`` (as ``fit`` takes it; ``n`` rows,
        ``row_index`` their absolute ids), the scorer's projection fitted on the reference
        (then ``projected()``, the gathered rows dropped), the reference index (``cache``: an
        index cache across processes, or None), the faint term's origin and spread, and each
        of those rows' nearest reference rows. ``fit`` runs it unless run for those rows."""
        if raw is None:
            raise ValueError("prepare needs the descriptor rows (raw=)")
        self._validate(n)
        pos, extra = self._positions(n)
        got = gather(raw, (pos,) if extra is None else (pos, extra))
        def project(rows, more):
            self.projection_ = projection(rows, self.pca_variance, self.max_components,
                                          self.random_state)
            return self.scoring_rows(rows), None if more is None else self.scoring_rows(more)

        ref, extra_own = fixed_context(project, got[0], None if extra is None else got[1])
        del got
        projected()
        rows_abs = np.arange(n) if row_index is None else np.asarray(row_index)
        self._set_reference(ref, rows_abs[pos], cache)
        self._fit_faint(ref, raw)
        self.ref_index_.reference_answers(self.n_neighbors, sampled=len(pos) < n)
        if extra is not None:
            self.ref_index_.neighbours_cached(extra_own, rows_abs[extra], self.n_neighbors)
        self._prepared = {"raw": raw, "n": n, "row_index": row_index, "pos": pos,
                          "extra": extra, "extra_own": extra_own}
        return self

    def release_rows(self):
        """After ``prepare``: stand-ins of its rows (``outlier_rows.shape_only``) to give ``fit``
        as ``raw``, so the caller may free the rows themselves before it clusters."""
        self._prepared["raw"] = shape_only(self._prepared["raw"])
        return self._prepared["raw"]

    def _prepared_for(self, raw, n, row_index):
        prep = getattr(self, "_prepared", None)
        if prep is None or prep["n"] != n or not same_rows_held(prep["raw"], raw):
            return None
        same = (prep["row_index"] is None and row_index is None) or (
            prep["row_index"] is not None and row_index is not None
            and np.array_equal(prep["row_index"], row_index))
        return prep if same else None

    def fit(self, X, labels, center_dist, centers=None, row_index=None, raw=None, cache=None):
        """Fit the reference, the score's normalisation and threshold.

        X, labels, center_dist : the clustering rows (dask or numpy) of the fit, their clusters and
        distances to the centres; ``raw``: the same rows as given (array or dict of arrays), or
        None to score on X. ``row_index`` maps X's rows to absolute row ids (default 0..n-1),
        used to skip a reference row's own entry. What depends on ``raw`` alone comes from
        ``prepare`` (run here unless it ran for these rows); ``cache`` as for ``prepare``.
        """
        import dask

        n = X.shape[0]
        self._validate(n)
        rows_abs = np.arange(n) if row_index is None else np.asarray(row_index)
        if raw is not None:
            same_rows(X, raw)
            prep = (self._prepared_for(raw, n, row_index)  # prepared for these rows, or now
                    or self.prepare(raw, n, row_index, cache)._prepared)
            pos, extra = prep["pos"], prep["extra"]
            got_z = gather(X, (pos,) if extra is None else (pos, extra))
            ref_z = np.ascontiguousarray(got_z[0], dtype=np.float32)
            more = None if extra is None else (prep["extra_own"], got_z[1])
            self._prepared = None  # the descriptor rows are the caller's to release
        else:
            pos, extra = self._positions(n)
            got_z = gather(X, (pos,) if extra is None else (pos, extra))
            self.projection_ = None
            self._fit_faint(None, None)  # no projection: no faint term (else ``prepare`` made it)
            ref_z = np.ascontiguousarray(got_z[0], dtype=np.float32)
            more = None if extra is None else (got_z[1],) * 2
            self._set_reference(ref_z, rows_abs[pos], cache)
        ref = self.reference_
        self.reference_z_ = None if raw is None else ref_z
        # the group rank: the j-th reference neighbour stands for about k rows of the data
        self.tight_rank_ = int(np.clip(round(self.n_neighbors * len(ref) / n), 1, self.n_neighbors))
        lab, dist = dask.compute(labels, center_dist) if is_dask(labels) else (labels, center_dist)
        lab, dist = np.asarray(lab), np.asarray(dist, dtype=np.float64)
        n_clusters = int(lab.max()) + 1 if centers is None else len(centers)
        self._fit_clusters(lab, dist, n_clusters)
        self._fit_own_centres(ref, lab[pos], n_clusters)
        # normalisation of each component on the reference rows
        self.ref_index_.reference_answers(self.n_neighbors, sampled=len(pos) < n)
        comp = self._components(ref, ref_z, self.ref_rows_)
        self.knn_norm_ = np.array(_robust(comp["knn"]))
        self.lof_norm_ = np.array(_robust(comp["lof"]))
        self.tight_norm_ = np.array(_robust(comp["tight"]))
        self.tight_own_norm_ = np.array(_robust(comp["tight_own"]))
        self.group_norm_ = np.array(_robust(comp["group"]))
        lift = self._tight_lift(comp)
        self.ref_lift_ = lift.astype(np.float32)  # the tight lift of each reference row
        self.cluster_tight_ = np.full(n_clusters, -np.inf)
        for c in np.unique(lab[pos]):
            self.cluster_tight_[c] = float(np.median(lift[lab[pos] == c]))
        self.cluster_degenerate_ = self.cluster_tight_ > self.tight_gate
        # the threshold: on the combined z of every fit row (``threshold_rows="all"``), or of a
        # seeded sample of the rows (``"reference"``): the reference rows when they are all the
        # rows, else as many rows from outside the reference (the index finds an indexed row's
        # neighbours more surely than a stranger's, so reference rows score a little lower)
        if self.threshold_rows == "all":
            at = np.arange(n)
            t = self._terms_all(X, raw, lab, dist, rows_abs)
        elif extra is None:
            at = pos
            t = self._combine(comp, lab[pos], dist[pos])
        else:
            at = extra
            self.ref_index_.neighbours_cached(more[1] if raw is None else more[0], rows_abs[at],
                                              self.n_neighbors)
            t = self.terms(more[1], lab[at], dist[at], rows_abs[at],
                           own=None if raw is None else more[0])
        z, term = _strongest(t)
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
        self.fit_reason_masks_ = self._masks(t)
        self.fit_outlier_rate_ = float(self.fit_flags_.mean())
        return self

    def _fit_clusters(self, lab, dist, n_clusters):
        """Per cluster: the robust spread of log distance to its centre over all fit rows."""
        self.cluster_median_ = np.zeros(n_clusters)
        self.cluster_log_mad_ = np.ones(n_clusters)
        counts = np.bincount(lab, minlength=n_clusters)
        log_d = _log(dist)
        for c in np.flatnonzero(counts):
            med_log, self.cluster_log_mad_[c] = _robust(log_d[lab == c])
            self.cluster_median_[c] = np.exp(med_log)
        big = counts > self.n_neighbors
        pooled = float(np.median(self.cluster_log_mad_[big if big.any() else counts > 0]))
        self.cluster_log_mad_ = np.maximum(self.cluster_log_mad_, 0.5 * pooled)
        self.cluster_share_ = counts / len(lab)

    def _fit_faint(self, ref, raw):
        """The zero descriptor row in the scoring rows (``origin_``, empty without a projection)
        and the robust spread of the reference rows' log distance from it (``faint_norm_``)."""
        if raw is None or getattr(self, "projection_", None) is None:
            self.origin_, self.faint_norm_ = np.zeros(0, np.float32), np.array([0.0, 1.0])
            return
        zero = ({k: np.zeros((1, v.shape[1]), np.float32) for k, v in raw.items()}
                if isinstance(raw, dict) else np.zeros((1, raw.shape[1]), np.float32))
        self.origin_ = fixed_context(self.scoring_rows, zero)[0]  # any caller: the same bits
        med, mad = _robust(_log(np.linalg.norm(np.asarray(ref, np.float64) - self.origin_, axis=1)))
        self.faint_norm_ = np.array([med, max(mad, FAINT_MAD_FLOOR)])

    def _faint_z(self, x):
        """How much fainter than the reference rows each scoring row is, in robust deviations of
        log norm (-inf without a projection, or for a scorer saved before this term)."""
        origin = getattr(self, "origin_", None)
        if origin is None or not len(origin):
            return np.full(len(x), -np.inf)
        ln = _log(np.linalg.norm(np.asarray(x, np.float64) - origin, axis=1))
        return (self.faint_norm_[0] - ln) / self.faint_norm_[1]

    def _fit_own_centres(self, ref, ref_lab, n_clusters):
        """Each cluster's mean in the scoring rows (from its reference rows) and the robust
        spread of log distance to it, the MAD floored as for the clustering rows; clusters with
        n_neighbors reference rows or fewer are not used (``cluster_own_used_``)."""
        ref = np.asarray(ref, dtype=np.float64)
        self.cluster_own_centre_ = np.zeros((n_clusters, ref.shape[1]))
        self.cluster_own_median_ = np.zeros(n_clusters)
        self.cluster_own_mad_ = np.ones(n_clusters)
        self.cluster_own_used_ = np.bincount(ref_lab, minlength=n_clusters) > self.n_neighbors
        for c in np.flatnonzero(self.cluster_own_used_):
            rows = ref[ref_lab == c]
            self.cluster_own_centre_[c] = rows.mean(axis=0)
            self.cluster_own_median_[c], self.cluster_own_mad_[c] = _robust(
                _log(np.linalg.norm(rows - self.cluster_own_centre_[c], axis=1)))
        used = self.cluster_own_used_
        if used.any():
            pooled = float(np.median(self.cluster_own_mad_[used]))
            self.cluster_own_mad_ = np.maximum(self.cluster_own_mad_, 0.5 * pooled)

    # ------------------------------------------------------------------ scoring

    def _components(self, x, xz, rows, nearest=None):
        """The components of each row before normalisation, a dict: knn, lof, tight (clustering
        rows), tight_own (scoring rows), centre_own (already a z). ``x`` the scoring rows,
        ``xz`` the same rows in the clustering rows. ``nearest``, a list, receives (row,
        distance) of each row's nearest reference row other than itself (absolute row ids,
        scoring-row distances)."""
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
        j = self.tight_rank_ - 1
        far_log = getattr(self, "far_log_", None)  # None: a scorer saved before the group term
        return {"knn": knn, "lof": lof, "idx": idx,
                "tight": _log(np.partition(dz, j, axis=1)[:, j]),
                "group": None if far_log is None else np.median(far_log[idx], axis=1),
                "tight_own": _log(np.partition(d, j, axis=1)[:, j]),
                "centre_own": np.maximum(self._own_centre_z(x), self._faint_z(x))}

    def _own_centre_z(self, x):
        """How far each scoring row lies from the nearest cluster mean, in robust deviations of
        that cluster's log distances (-inf for a scorer saved without them)."""
        used = np.flatnonzero(getattr(self, "cluster_own_used_", np.zeros(0, bool)))
        if not len(used):
            return np.full(len(x), -np.inf)
        c = self.cluster_own_centre_[used]
        x = np.asarray(x, dtype=np.float64)
        d2 = (np.einsum("ij,ij->i", x, x)[:, None] - 2 * x @ c.T
              + np.einsum("ij,ij->i", c, c)[None, :])
        z = (0.5 * _log(np.maximum(d2, 0.0)) - self.cluster_own_median_[used]) \
            / self.cluster_own_mad_[used]
        return z.min(axis=1)

    def _tight_lift(self, comp):
        """How much tighter than the reference rows a row's group sits, in robust deviations:
        the larger of the two spaces (rows near zero are tight as given and scatter once
        L2-normalised; rows along one direction collapse once L2-normalised)."""
        lift = -(comp["tight"] - self.tight_norm_[0]) / self.tight_norm_[1]
        norm = getattr(self, "tight_own_norm_", None)
        return lift if norm is None else np.maximum(lift, -(comp["tight_own"] - norm[0]) / norm[1])

    def terms(self, x, labels, center_dist, rows, own=None, nearest=None):
        """The lifts of each row of a numpy block, (n, 4) float64 in REASONS order from
        "isolated" (-inf where a term has nothing to say); ``own`` its scoring rows (None: x);
        ``nearest`` as for ``_components``."""
        comp = self._components(x if own is None else own, x, rows, nearest)
        return self._combine(comp, labels, center_dist)

    def _combine(self, comp, labels, center_dist):
        """``terms`` from the components of ``_components``."""
        labels = np.asarray(labels)
        z_knn = (comp["knn"] - self.knn_norm_[0]) / self.knn_norm_[1]
        z_lof = (comp["lof"] - self.lof_norm_[0]) / self.lof_norm_[1]
        lift_tight = self._tight_lift(comp)
        ref_lift = getattr(self, "ref_lift_", None)  # None: saved before, or fitting
        if ref_lift is not None:  # a row under the gate: its group's lift, if its neighbours have it
            lift_tight = np.where(lift_tight > self.tight_gate, lift_tight,
                                  np.maximum(lift_tight, ref_lift[comp["idx"]].max(axis=1)))
        z_centre = ((_log(center_dist) - np.log(np.maximum(self.cluster_median_[labels], 1e-12)))
                    / self.cluster_log_mad_[labels])
        z_centre = np.maximum(z_centre, comp["centre_own"])
        out = np.full((len(labels), 4), -np.inf)
        out[:, _ISOLATED - 1] = z_knn + np.maximum(z_lof - self.lof_gate, 0.0)
        norm = getattr(self, "group_norm_", None)
        if norm is not None and comp.get("group") is not None:
            z_group = (comp["group"] - norm[0]) / norm[1]
            out[:, _ISOLATED - 1] = np.maximum(out[:, _ISOLATED - 1],
                                               np.where(z_group > self.group_gate, z_group, -np.inf))
        out[:, _TIGHT - 1] = np.where(lift_tight > self.tight_gate, lift_tight, -np.inf)
        out[:, _CENTRE - 1] = np.where(z_centre > self.centre_gate, z_centre, -np.inf)
        out[:, _DEGENERATE - 1] = np.where(self.cluster_degenerate_[labels],
                                           self.cluster_tight_[labels], -np.inf)
        return out

    def _masks(self, t):
        """The ``all_reasons`` bit mask of each row of the terms ``t``: every term at or above
        the threshold (0 for rows not flagged)."""
        fired = t >= getattr(self, "threshold_z_", np.inf)
        return (fired * (1 << np.arange(t.shape[1]))).sum(axis=1).astype(np.uint8)

    def z_block(self, x, labels, center_dist, rows, own=None, with_term=False, nearest=None):
        """The combined z of each row of a numpy block (and the REASONS index of the term that
        gave it, with ``with_term``)."""
        z, term = _strongest(self.terms(x, labels, center_dist, rows, own, nearest))
        return (z, term) if with_term else z

    def score_block(self, x, labels, center_dist, rows, own=None, reasons=False, nearest=None,
                    all_reasons=False):
        """(outlier_score float32, is_outlier bool[, reason int8][, reason mask uint8]) for one
        numpy block; ``nearest``, a list, receives (row, distance) of each row's nearest
        reference row."""
        t = self.terms(x, labels, center_dist, rows, own, nearest)
        z, term = _strongest(t)
        score = (1.0 / (1.0 + np.exp(-(np.clip(z, -50, 50) - 3.0)))).astype(np.float32)
        # the threshold is on z: scores of far outliers all round to 1.0 in float32
        flag = z >= getattr(self, "threshold_z_", np.inf)
        out = (score, flag)
        if reasons:
            out += (np.where(flag, term, 0).astype(np.int8),)
        return out + (self._masks(t),) if all_reasons else out

    def _terms_all(self, X, raw, labels, dist, rows_abs):
        """The terms of every fit row: on the workers, one task per block."""
        import dask
        import dask.array as da

        if not is_dask(X):
            X = da.from_array(X, chunks=(65_536, X.shape[1]))
        me = shared(self)
        tasks = []
        bounds = np.cumsum((0,) + tuple(X.chunks[0]))
        raws, (xs,) = raw_parts(raw, X.chunks[0], X)
        for i, (x, r) in enumerate(zip(xs, raws)):
            a, b = int(bounds[i]), int(bounds[i + 1])
            tasks.append(dask.delayed(_terms_task)(me, x, labels[a:b], dist[a:b], rows_abs[a:b], r))
        return np.concatenate(dask.compute(*tasks))

    def score(self, X, labels, center_dist, row_offset=0, reasons=False, raw=None,
              nearest=False, all_reasons=False):
        """(outlier_score, is_outlier) for every row; with ``reasons`` also the reason (int8
        index into REASONS, 0 for rows not flagged); with ``nearest`` also each row's nearest
        reference row other than itself (int64 absolute row id) and its distance in the scoring
        rows (float32), the near-duplicate evidence from the same query; with ``all_reasons``
        last the mask of every term that fired (uint8, ``reason_names``). Dask in -> dask out
        (one task per block, run on the workers), numpy in -> numpy out. ``row_offset`` is the
        absolute row id of X's first row (the reference skips a row's own entry by that id);
        ``raw`` the same rows as given, when the scorer was fitted with them (or their scoring
        rows already computed, ``outlier_rows.Projected``)."""
        import dask
        import dask.array as da

        raw = self._check_raw(X, raw)
        raw, done = (raw.rows, True) if isinstance(raw, Projected) else (raw, False)
        if not is_dask(X):
            rows = np.arange(row_offset, row_offset + X.shape[0])
            near = []
            s, f, r, m = self.score_block(X, labels, center_dist, rows,
                                          raw if done else self.scoring_rows(raw), True,
                                          nearest=near, all_reasons=True)
            return (s, f) + ((r,) if reasons else ()) + (near[0] if nearest else ()) \
                + ((m,) if all_reasons else ())
        me = shared(self)
        offsets = np.cumsum((row_offset,) + X.chunks[0][:-1])
        labels = labels.rechunk((X.chunks[0],))
        center_dist = center_dist.rechunk((X.chunks[0],))
        raws, aligned = raw_parts(raw, X.chunks[0], X, labels, center_dist)
        blocks = []
        for i, (x, lab, dist) in enumerate(zip(*aligned)):
            # not pure: hashing compare's held numpy blocks for a key took 0.3 s a labelling
            res = dask.delayed(_score_task)(me, x, lab, dist, int(offsets[i]), raws[i], done)
            blocks.append(da.from_delayed(res, shape=(X.chunks[0][i], 6), dtype=np.float64))
        both = da.concatenate(blocks, axis=0)
        out = (both[:, 0].astype(np.float32), both[:, 1] > 0.5)
        if reasons:
            out += (both[:, 2].astype(np.int8),)
        if nearest:
            out += (both[:, 3].astype(np.int64), both[:, 4].astype(np.float32))
        return out + (both[:, 5].astype(np.uint8),) if all_reasons else out

    # ------------------------------------------------------------------ state

    def to_state(self):
        return outlier_state.to_state(self)

    @classmethod
    def from_state(cls, params, arrays):
        return outlier_state.from_state(cls, params, arrays)


def _terms_task(scorer, x, labels, dist, rows, raw_block):
    return scorer.terms(x, labels, dist, rows, scorer.scoring_rows(raw_block))


def _score_task(scorer, x, lab, dist, row0, raw_block, projected=False):
    near = []
    own = np.asarray(raw_block, np.float32) if projected else scorer.scoring_rows(raw_block)
    s, f, why, mask = scorer.score_block(x, lab, dist, np.arange(row0, row0 + len(x)), own,
                                         reasons=True, nearest=near, all_reasons=True)
    return np.stack([s, f, why, near[0][0], near[0][1], mask], axis=1).astype(np.float64)
