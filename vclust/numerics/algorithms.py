"""Clustering algorithms to compare, all extended to every row in parallel.

"kmeans" is vclust's KMeans on all rows. The others are fitted on a seeded sample of rows
(``sample_size``) with scikit-learn and extended to all rows by ``map_blocks``, from arrays only
(no pickle in the model):

    minibatch, bisecting   nearest of the fitted centres (bisecting: flat nearest centre, not
                           the tree descent; the difference only touches rows near a split)
    gmm                    most probable component, from stored weights, means and Cholesky
                           factors of the precisions (full covariances; on rows wider than
                           GMM_WIDE columns in the GMM_DIMS of most variance: ``fit_gmm``)
    agglomerative          Ward linkage with a 10-nearest-neighbour connectivity graph; rows take
                           the label of their nearest sample row
    hdbscan                density clusters (their number is found, not given); every row
                           joins the cluster of its nearest clustered sample row, and a row
                           whose nearest sample row is one HDBSCAN left as noise is *noise*
                           (``noise``): flagged as an outlier with reason ``noise``, kept as
                           evidence rather than silently given to the nearest cluster

Every clusterer reports, per row, its cluster and the distance to that cluster's centre (the
mean of its sample members for the non-centroid methods).
"""

from __future__ import annotations

import numpy as np

from . import ALGORITHMS, FIT_SAMPLE
from .blocks import is_dask, sample_rows
from .kmeans import KMeans, assign


#: float32 cells of the (rows, anchors) distance slice ``nearest_anchor`` fills at a time
NEAREST_CELLS = 2**24
#: rows narrower than NARROW_DIMS columns fill slices of NARROW_CELLS cells (8 MB): the matrix
#: product is cheap there, and the slice's add and argmin ran at memory speed. 100,000 rows
#: against 20,000 anchors, one thread: 13 columns 2.30 -> 1.41 s, 24 2.80 -> 1.89 s, 38 3.35
#: -> 2.48 s, 62 4.33 -> 3.87 s, the same labels; at 256 columns small slices were slower
#: (benchmarks/RESULTS.md)
NARROW_DIMS, NARROW_CELLS = 64, 2**21


def nearest_anchor(block, anchors, anchor_labels):
    """Label of the nearest anchor row for each row (brute force in row slices).

    Each slice's ||a||^2 - 2 x.a^T goes into one reused buffer (NEAREST_CELLS cells, 64 MB;
    NARROW_CELLS under NARROW_DIMS columns), written by the matrix product and shifted in
    place, then its argmin: faster than
    building the same values with two temporaries per slice (benchmarks/RESULTS.md, figures behind the code), with the
    same labels: scaling by -2 is exact, so every distance is bit for bit the one
    ||a||^2 - 2 x.a^T gives."""
    x = np.asarray(block, dtype=np.float32)
    a = np.asarray(anchors, dtype=np.float32)
    m2 = np.ascontiguousarray((-2.0 * a).T)
    asq = np.einsum("ij,ij->i", a, a)
    out = np.empty(len(x), np.int32)
    step = _nearest_step(*a.shape)
    buf = np.empty((min(step, len(x)), len(a)), np.float32)
    for s in range(0, len(x), step):
        xs = x[s:s + step]
        d = buf[:len(xs)]
        np.matmul(xs, m2, out=d)
        d += asq
        out[s:s + step] = anchor_labels[d.argmin(axis=1)]
    return out


def _nearest_step(n_anchors: int, dims: int) -> int:
    """Rows of one ``nearest_anchor`` slice against ``n_anchors`` anchors of ``dims`` columns."""
    if dims < NARROW_DIMS:
        return int(np.clip(NARROW_CELLS // max(n_anchors, 1), 64, 8192))
    return int(np.clip(NEAREST_CELLS // max(n_anchors, 1), 256, 8192))


def nearest_anchor_local(x, anchors, anchor_labels):
    """``nearest_anchor`` of a large numpy array on this process's threads (``run_local``),
    with every row's label bit for bit the one call's: the array is split at multiples of
    that call's slice, so each slice's matrix product is the same rows in the same order.
    At 416,314 rows against 20,000 anchors of 256 columns, 26.5 s on two threads against
    49.5 s on one (benchmarks/RESULTS.md, the sixteenth session). Not for a thread of
    ``run_local``'s own pool (it waits on that pool)."""
    step = _nearest_step(*np.shape(anchors))
    per = step * max(1, PREDICT_ROWS // step)
    if len(x) <= per:
        return nearest_anchor(x, anchors, anchor_labels)
    from .blocks import run_local

    return np.concatenate(run_local(lambda b: nearest_anchor(b, anchors, anchor_labels),
                                    [x[s:s + per] for s in range(0, len(x), per)]))


def distance_to_centre(x, labels, centres) -> np.ndarray:
    """Each row's distance (float32) to the centre of its cluster ``labels``."""
    d = np.asarray(x, np.float32) - centres[np.asarray(labels).ravel()]
    return np.sqrt(np.einsum("ij,ij->i", d, d)).astype(np.float32)


#: rows per block when one large numpy array is predicted on this process's threads
PREDICT_ROWS = 32_768
#: rows of one slice of ``FittedClusterer._gmm_labels`` (its (rows, components x columns)
#: float64 product: 4 MB at 16 components of 32 columns)
GMM_ROWS = 1_024


class FittedClusterer:
    """A fitted clustering, applied to row blocks."""

    def __init__(self, name, centers, params=None, arrays=None):
        self.name = name
        self.cluster_centers_ = np.asarray(centers, dtype=np.float32)
        self.n_clusters_ = len(self.cluster_centers_)
        self.params = dict(params or {})
        self.arrays = dict(arrays or {})

    def _labels_block(self, x):
        if self.name == "gmm":
            return self._gmm_labels(x)
        if self.name in ("agglomerative", "hdbscan"):
            return nearest_anchor(x, self.arrays["anchors"], self.arrays["anchor_labels"])
        return assign(x, self.cluster_centers_)[0]

    def _gmm_labels(self, x):
        """Each row's most probable component, GMM_ROWS rows at a time, scikit-learn's
        log-probability (``X @ P - mu @ P`` squared and summed, P the Cholesky factor of a
        component's precision) for every component in one matrix product per slice: one pass
        over a slice for all the components instead of four per component. 416,314 rows, one
        thread: 38 columns and 13 components 1.00 -> 0.60 s, 62 and 11 1.27 -> 1.04 s, the same
        labels (benchmarks/RESULTS.md, 2026-12-06). A slice's float64 temporaries stay in
        the core's cache; every row's label is the one a whole block gives (a test cuts
        slices of 97 rows)."""
        means, chol, w = self.arrays["means"], self.arrays["precisions_cholesky"], self.arrays["weights"]
        cols = self.arrays.get("columns")  # the columns it models (fit_gmm), else all
        x = np.asarray(x if cols is None else np.asarray(x)[:, cols], dtype=np.float64)
        k, d = means.shape
        every = np.ascontiguousarray(np.concatenate(list(chol), axis=1))  # (d, k d)
        shift = np.concatenate([np.dot(means[c], chol[c]) for c in range(k)])
        const = np.array([np.log(np.diag(chol[c])).sum() + np.log(w[c]) for c in range(k)])
        out = np.empty(len(x), np.int32)
        y = np.empty((min(GMM_ROWS, len(x)), k * d))
        for s in range(0, len(x), GMM_ROWS):
            xs = x[s:s + GMM_ROWS]
            ys = y[:len(xs)]
            np.matmul(xs, every, out=ys)
            ys -= shift
            ys *= ys
            lp = ys.reshape(len(xs), k, d).sum(axis=2)
            lp *= -0.5
            lp += const
            out[s:s + GMM_ROWS] = lp.argmax(axis=1)
        return out

    def predict_block(self, block):
        """(labels int32, distance float32 to the assigned cluster's centre) for a numpy block;
        a large one (every row, clustered in this process) in row blocks on this process's
        threads."""
        x = np.asarray(block, dtype=np.float32)
        if len(x) > 2 * PREDICT_ROWS:
            from .blocks import run_local

            parts = run_local(self.predict_block, [x[a:a + PREDICT_ROWS]
                                                    for a in range(0, len(x), PREDICT_ROWS)])
            return (np.concatenate([p[0] for p in parts]),
                    np.concatenate([p[1] for p in parts]))
        labels = self._labels_block(x)
        return labels, distance_to_centre(x, labels, self.cluster_centers_)

    def noise_block(self, block):
        """Whether each row of a numpy block is HDBSCAN noise: its nearest sample row is one
        HDBSCAN did not cluster. All False for the other algorithms."""
        x = np.asarray(block, dtype=np.float32)
        noise_anchors = self.arrays.get("noise_anchors")
        if self.name != "hdbscan" or noise_anchors is None or len(noise_anchors) == 0:
            return np.zeros(len(x), bool)
        anchors = np.concatenate([self.arrays["anchors"], noise_anchors])
        is_noise = np.r_[np.zeros(len(self.arrays["anchors"]), np.int32),
                         np.ones(len(noise_anchors), np.int32)]
        return nearest_anchor(x, anchors, is_noise).astype(bool)

    def noise(self, X):
        """``noise_block`` over a dask array (lazy) or a numpy array."""
        if is_dask(X):
            return X.map_blocks(lambda b: self.noise_block(b), dtype=bool, drop_axis=1,
                                chunks=(X.chunks[0],))
        return self.noise_block(X)

    def predict(self, X):
        if is_dask(X):
            return X.map_blocks(lambda b: self._labels_block(b), dtype=np.int32, drop_axis=1,
                                chunks=(X.chunks[0],))
        return self._labels_block(X)

    def to_state(self):
        params = {"name": self.name, **self.params}
        return params, {"cluster_centers": self.cluster_centers_, **self.arrays}

    @classmethod
    def from_state(cls, params, arrays):
        arrays = dict(arrays)
        centers = arrays.pop("cluster_centers")
        p = {k: v for k, v in params.items() if k != "name"}
        return cls(params["name"], centers, p, arrays)


def load_clusterer(params, arrays):
    """A clusterer back from its saved state (any algorithm)."""
    if params.get("name") not in ALGORITHMS:
        raise ValueError(f"unknown algorithm in model: {params.get('name')!r}")
    return FittedClusterer.from_state(params, arrays)


def centres_of(x, labels, k):
    return np.stack([x[labels == c].mean(axis=0) if (labels == c).any() else np.zeros(x.shape[1])
                     for c in range(k)])


#: gmm on reduced rows wider than GMM_WIDE columns models the GMM_DIMS of most variance
GMM_WIDE, GMM_DIMS = 64, 32


def gmm_dims(width: int) -> int:
    """Columns the "gmm" clusterer models on rows ``width`` wide (``fit_gmm`` says why)."""
    return width if width <= GMM_WIDE else GMM_DIMS


def fit_gmm(sample, n_clusters, random_state=0):
    """The "gmm" clusterer fitted on ``sample`` (the rows ``sample_rows`` drew, float64).

    Full covariances; on rows wider than GMM_WIDE columns, in the GMM_DIMS columns of most
    variance only (the leading components; of a mixture, each set's leading ones). A
    full covariance in d columns has d (d + 1) / 2 parameters, 32,896 at 256 (efficientnet-b7
    reduced to 0.95 of its variance), against 20,000 sample rows shared by up to 16
    components: the fit is held up by its regularisation more than by the rows. Of 256, 64
    and 32 columns, 32 is the one that never lost ARI against the known classes on the real
    MVTec sets and the synthetic efficientnet-b7, and the fastest (benchmarks/RESULTS.md, figures behind the code);
    narrower rows keep every column. The centres (for distances) are the components' means in
    the modelled columns and their members' means in the others."""
    from sklearn.mixture import GaussianMixture

    d = gmm_dims(sample.shape[1])
    params = {"sample_size": int(len(sample)), "random_state": int(random_state)}
    # the d columns of most variance: the leading components of a single set's rows, and
    # those of every set of a mixture (its columns are each set's components, set after set)
    cols = np.sort(np.argsort(-sample.var(axis=0), kind="stable")[:d])
    m = GaussianMixture(n_clusters, covariance_type="full", random_state=random_state,
                        reg_covar=1e-5).fit(sample[:, cols])
    arrays = {"means": m.means_, "precisions_cholesky": m.precisions_cholesky_,
              "weights": m.weights_}
    centres = m.means_
    if d < sample.shape[1]:
        labels = m.predict(sample[:, cols])
        centres = centres_of(sample, labels, n_clusters)
        empty = np.bincount(labels, minlength=n_clusters) == 0
        centres[empty] = sample.mean(axis=0)
        centres[:, cols] = m.means_
        arrays["columns"] = cols.astype(np.int64)
    return FittedClusterer("gmm", centres, params, arrays)


class AgglomerativeTree:
    """Ward linkage with a 10-nearest-neighbour connectivity graph on a seeded sample of X
    (the sample ``fit_algorithm`` draws), built once and cut at any k: a k-range builds one
    tree. The tree is scikit-learn's ``ward_tree`` and each cut ``AgglomerativeClustering``'s
    labels, merge for merge and label for label, built by vclust.numerics.ward (compiled:
    about 1 s against 10 s for 20,000 rows of 38 columns). ``labels(X, clusterer)`` gives every row of
    X its nearest sample row's label, the nearest sample row found once per X."""

    def __init__(self, X, sample_size=FIT_SAMPLE, random_state=0):
        from sklearn.neighbors import kneighbors_graph

        sample, _ = sample_rows(X, sample_size, random_state, stream=21)
        self.sample = sample.astype(np.float64)
        self.conn = kneighbors_graph(self.sample, n_neighbors=min(10, len(sample) - 1),
                                     include_self=False)
        self.params = {"sample_size": int(len(sample)), "random_state": int(random_state)}
        self._tree = None
        self._nearest = None

    def cut(self, n_clusters) -> FittedClusterer:
        from .ward import cut, ward_children

        if self._tree is None:
            self._tree = ward_children(self.sample, self.conn)
        labels = cut(self._tree[0], self._tree[2], n_clusters).astype(np.int32)
        return FittedClusterer("agglomerative", centres_of(self.sample, labels, n_clusters),
                               self.params, {"anchors": self.sample.astype(np.float32),
                                             "anchor_labels": labels})

    def labels(self, X, clusterer):
        """Every row's label under ``clusterer`` (a cut of this tree): its nearest sample
        row's, that row found once per X (dask, kept in worker memory, or numpy)."""
        if self._nearest is None or self._nearest[0] is not X:
            idx = np.arange(len(self.sample), dtype=np.int32)
            anchors = self.sample.astype(np.float32)
            if is_dask(X):
                import dask

                near = X.map_blocks(nearest_anchor, anchors, idx, dtype=np.int32, drop_axis=1,
                                    chunks=(X.chunks[0],))
                (near,) = dask.persist(near)
            else:
                near = nearest_anchor_local(X, anchors, idx)
            self._nearest = (X, near)
        near, table = self._nearest[1], clusterer.arrays["anchor_labels"]
        if is_dask(near):
            return near.map_blocks(_take, table, dtype=np.int32)
        return table[near]


def _take(idx, table):
    return table[idx]


def fit_algorithm(name, X, n_clusters, *, sample_size=FIT_SAMPLE, random_state=0, **kwargs):
    """Fit ``name`` (one of ALGORITHMS) with ``n_clusters`` on X (numpy or dask, reduced rows)."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}; got {name!r}")
    if name == "kmeans":
        km = KMeans(n_clusters, random_state=random_state, **kwargs).fit(X)
        return FittedClusterer("kmeans", km.cluster_centers_,
                               {"n_iter": int(km.n_iter_), "inertia": float(km.inertia_)})
    sample, _ = sample_rows(X, sample_size, random_state, stream=21)
    sample = sample.astype(np.float64)
    params = {"sample_size": int(len(sample)), "random_state": int(random_state)}
    if name == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        m = MiniBatchKMeans(n_clusters, random_state=random_state, n_init=3).fit(sample)
        return FittedClusterer(name, m.cluster_centers_, params)
    if name == "bisecting":
        from sklearn.cluster import BisectingKMeans

        m = BisectingKMeans(n_clusters, random_state=random_state).fit(sample)
        return FittedClusterer(name, m.cluster_centers_, params)
    if name == "gmm":
        return fit_gmm(sample, n_clusters, random_state)
    if name == "agglomerative":
        return AgglomerativeTree(X, sample_size, random_state).cut(n_clusters)
    # hdbscan
    from sklearn.cluster import HDBSCAN

    min_size = max(5, len(sample) // (4 * n_clusters))
    labels = HDBSCAN(min_cluster_size=min_size, copy=False).fit_predict(sample)  # our copy
    keep = labels >= 0
    if keep.sum() == 0 or labels.max() < 1:
        raise ValueError(f"HDBSCAN found fewer than 2 clusters on the {len(sample)}-row sample "
                         f"(min_cluster_size {min_size}); try another algorithm or a larger k")
    k = int(labels.max()) + 1
    params.update(min_cluster_size=int(min_size), noise_share=float(1 - keep.mean()))
    return FittedClusterer(name, centres_of(sample, labels, k), params,
                           {"anchors": sample[keep].astype(np.float32),
                            "anchor_labels": labels[keep].astype(np.int32),
                            "noise_anchors": sample[~keep].astype(np.float32)})
