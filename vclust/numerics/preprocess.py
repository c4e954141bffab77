"""Out-of-core preprocessing: optional L2 normalisation, standardisation and PCA to a variance
target, fitted on numpy or dask arrays in as few passes as possible.

``svd_method="covariance"`` (the default for sets up to 4096 dims) reads the rows once: every
block returns its count, mean and centred scatter matrix (float32 BLAS on the block, combined in
float64 with the parallel-variance formula of Chan et al.) of its rows in the covariance
sample, then the eigendecomposition runs on the client (for the components a fit can keep only,
from LEADING_EIGH_DIMS columns up: ``_leading_eigh``). The sample (``covariance_rows``) is every
row up to max(50,000, 40 per column) rows, else a seeded share of every block, drawn per
absolute row so it is the same whatever the chunking (docs/preprocessing.md has the evidence).
``"randomized"`` (wider sets) never forms the d x d matrix: a mean pass, a few power-iteration
passes with a d x l sketch over every row, and a last pass for the small projected matrix.
The projection is one matrix product per block.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import (COVARIANCE_MIN_ROWS, COVARIANCE_ROWS_PER_DIM, DEFAULT_MAX_COMPONENTS,
               DEFAULT_PCA_VARIANCE, LEADING_EIGH_DIMS)
from .blocks import check_2d, is_dask, map_blocks_reduce, map_blocks_tree, row_uniform, scratch
from .estimator import Estimator

MAX_COVARIANCE_DIMS = 4096

#: rows of a d x d outer product made at a time (the scatter's corrections): the whole one is
#: three new d x d temporaries per block, 52 MB each at 2560 dims, and this VM is slow to touch
#: new memory. The same values, element by element: efficientnet-b7's moments (416k x 2560)
#: 11.3-11.5 s -> 10.4-10.6 s, bit-equal (benchmarks/RESULTS.md)
OUTER_ROWS = 256
#: ``row_uniform``'s stream of the covariance sample (the outlier reference's is 31)
COVARIANCE_STREAM = 41


#: rows per float64 product of ``Preprocessor.transform_exact`` (2,560 columns: 84 MB)
EXACT_ROWS = 4096


def _norms(x):
    """Each row's Euclidean norm (1 for a zero row), as a column; no (n, d) temporary."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    norms[norms == 0] = 1.0
    return norms


def _l2(block, out=None):
    return np.divide(block, _norms(block), out=out)


def _block_moments(block, row0, l2, share=1.0, seed=0):
    """(n, mean float64, centred scatter float32, n_bad) of one block's rows in the covariance
    sample (those whose ``row_uniform`` draw is under ``share``; all of them at 1).

    The block is centred on its float32 column sums (one BLAS call), into a per-thread scratch
    buffer, and the small residual mean of the centred rows corrects the scatter: a block costs
    little beyond its float32 syrk, with no float64 mean, no fresh centred copy and no NaN scan
    (benchmarks/RESULTS.md has the per-block figures).
    NaN/Inf anywhere makes the column sums non-finite; only then are bad rows counted."""
    x = np.asarray(block, dtype=np.float32)
    if share < 1:
        # every row is still checked for NaN/Inf (one matrix-vector product), only the sample
        # enters the moments
        if not np.isfinite(np.ones(x.shape[0], np.float32) @ x).all():
            bad = int((~np.isfinite(x).all(axis=1)).sum())
            if bad:
                return x.shape[0], None, None, bad
        x = x[row_uniform(np.arange(row0, row0 + x.shape[0]), seed, COVARIANCE_STREAM) < share]
    n = x.shape[0]
    if not n:
        return 0, None, None, 0
    if l2:
        x = _l2(x, out=scratch(x.shape, np.float32))  # centred in place below
    ones = np.ones(n, np.float32)
    shift = (ones @ x) / np.float32(n)
    if not np.isfinite(shift).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        if bad:
            return n, None, None, bad
        shift = x.mean(axis=0, dtype=np.float64).astype(np.float32)  # float32 sums overflowed
    xc = x if l2 else scratch(x.shape, np.float32)
    np.subtract(x, shift, out=xc)
    resid = (ones @ xc).astype(np.float64) / n  # ~0: the float32 shift's rounding
    scatter = xc.T @ xc  # numpy runs syrk for a product of an array with its own transpose
    for a in range(0, len(resid), OUTER_ROWS):
        part = n * np.outer(resid[a:a + OUTER_ROWS], resid)
        scatter[a:a + OUTER_ROWS] -= part.astype(np.float32)
    return n, shift.astype(np.float64) + resid, scatter, 0


def _combine(a, b):
    """Chan et al.: merge (n, mean, scatter, n_bad) of two row sets (scatter summed in float64)."""
    na, ma, sa, ba = a
    nb, mb, sb, bb = b
    if ba or bb or not na or not nb:  # a block with NaN/Inf poisons the sum: keep only counts
        if ba or bb:
            return na + nb, None, None, ba + bb
        return a if nb == 0 else b
    n = na + nb
    delta = mb - ma
    scatter = sa.astype(np.float64)
    scatter += sb
    for i in range(0, len(delta), OUTER_ROWS):
        scatter[i:i + OUTER_ROWS] += np.outer(delta[i:i + OUTER_ROWS], delta) * (na * nb / n)
    return n, ma + delta * (nb / n), scatter, 0


def _moments(X, l2, rows=None, seed=0):
    """(n, mean, scatter) of ``rows`` (about; None: all) of X's rows in one pass, merged on the
    workers (``map_blocks_tree``). Every row is looked at for NaN/Inf, sampled or not."""
    share = 1.0 if rows is None or rows >= X.shape[0] else rows / X.shape[0]
    n, mean, scatter, bad = map_blocks_tree(_block_moments, _combine, X, args=(l2, share, seed))
    if scatter is not None:
        scatter = np.asarray(scatter, dtype=np.float64)  # a single block comes back as float32
    if bad:
        raise ValueError(f"{bad} row(s) hold NaN or Inf; drop them before fitting "
                         "(vclust ingest --on-invalid drop)")
    return n, mean, scatter


def _block_mean(block, row0, l2):
    x = np.asarray(block, dtype=np.float64)
    if l2:
        x = _l2(x)
    return x.shape[0], x.sum(axis=0), (x * x).sum(axis=0), int((~np.isfinite(x).all(axis=1)).sum())


def _block_sketch(block, row0, l2, mean, scale, q):
    x = np.asarray(block, dtype=np.float32)
    if l2:
        x = _l2(x)
    xs = (x - mean.astype(np.float32)) / scale.astype(np.float32)
    y = xs @ q.astype(np.float32)
    return (xs.T @ y).astype(np.float64)


def _leading_eigh(mat, m):
    """(eigenvalues in descending order, clipped at 0; their eigenvectors as columns) of the
    symmetric ``mat``: the leading ``m`` pairs (LAPACK's syevr through scipy) when ``mat`` is
    at least LEADING_EIGH_DIMS wide and ``m`` under half of it, else all of them (numpy). The
    variance shares divide by the trace, not by the eigenvalues' sum, so they are the same
    either way. BLAS at one thread (``one_blas_thread``): scipy's OpenBLAS is a library of its
    own, and a decomposition's last bits depend on its thread count. A caller on a thread beside
    background imports imports scipy.linalg first (vclust.jobs.fit does)."""
    from .blocks import one_blas_thread

    d = mat.shape[0]
    if d >= LEADING_EIGH_DIMS and m < d // 2:
        from scipy.linalg import eigh

        with one_blas_thread():
            evals, evecs = eigh(mat, subset_by_index=[d - m, d - 1], driver="evr")
    else:
        evals, evecs = np.linalg.eigh(mat)
    return evals[::-1].clip(min=0), evecs[:, ::-1]


class Preprocessor(Estimator):
    """L2 / standardise / PCA for one descriptor set, with scikit-learn's estimator interface
    (``fit``, ``transform``, ``fit_transform``, ``get_params``) but not its base classes
    (``estimator.Estimator``): this module imports no scikit-learn.

    Parameters
    ----------
    l2 : bool
        Divide each row by its Euclidean norm first (default; see docs/preprocessing.md).
    standardize : bool
        Scale each column to unit variance (columns with zero variance keep scale 1). Off by
        default: on real CNN descriptors it amplifies near-dead units and costs ~0.15 ARI.
    pca_variance : float or None
        Keep the fewest components whose explained variance reaches this share; None keeps
        every column (no projection).
    n_components : int or None
        A fixed number of components (overrides ``pca_variance``).
    max_components : int
        Cap on the number of components.
    svd_method : {"auto", "covariance", "randomized"}
        "auto" uses the covariance for up to 4096 columns.
    covariance_rows : "auto", int or None
        The covariance is measured on a seeded sample of about this many rows (None: every
        row); "auto" takes max(COVARIANCE_MIN_ROWS, COVARIANCE_ROWS_PER_DIM x columns)
        (docs/preprocessing.md). The projection is applied to every row either way.
    random_state : int
        Seed of the randomized sketch and of the covariance sample.
    """

    def __init__(self, *, l2=True, standardize=False, pca_variance=DEFAULT_PCA_VARIANCE, n_components=None,
                 max_components=DEFAULT_MAX_COMPONENTS, svd_method="auto", covariance_rows="auto",
                 random_state=0):
        self.l2 = l2
        self.standardize = standardize
        self.pca_variance = pca_variance
        self.n_components = n_components
        self.max_components = max_components
        self.svd_method = svd_method
        self.covariance_rows = covariance_rows
        self.random_state = random_state

    def fit_transform(self, X, y=None):
        return self.fit(X).transform(X)

    def _validate(self, X):
        check_2d(X)
        if self.pca_variance is not None and not 0 < self.pca_variance <= 1:
            raise ValueError(f"pca_variance must be in (0, 1] or None; got {self.pca_variance}")
        if self.svd_method not in ("auto", "covariance", "randomized"):
            raise ValueError("svd_method must be 'auto', 'covariance' or 'randomized'; "
                             f"got {self.svd_method!r}")
        if X.shape[0] < 2:
            raise ValueError(f"need at least 2 rows to fit; got {X.shape[0]}")
        rows = self.covariance_rows
        whole = isinstance(rows, numbers.Integral) and not isinstance(rows, bool)
        if not (rows is None or (isinstance(rows, str) and rows == "auto") or (whole and rows >= 2)):
            raise ValueError(f"covariance_rows must be 'auto', None or an int >= 2; got {rows!r}")

    def fit(self, X, y=None):
        self._validate(X)
        d = X.shape[1]
        method = self.svd_method
        if method == "auto":
            method = "covariance" if d <= MAX_COVARIANCE_DIMS else "randomized"
        if method == "covariance" or self.pca_variance is None:
            n, mean, scatter = _moments(X, self.l2, self._covariance_rows(d), self.random_state)
            if n < 2:  # a sample that drew fewer than two rows: every row instead
                n, mean, scatter = _moments(X, self.l2)
            self.covariance_rows_ = int(n)  # rows the covariance was measured on
            cov = scatter / (n - 1)
            var = np.diag(scatter) / n  # population variance, as StandardScaler
            scale = np.sqrt(var) if self.standardize else np.ones(d)
            scale[scale < 1e-12] = 1.0
            mat = cov / np.outer(scale, scale)
            evals, evecs = _leading_eigh(mat, self._most_components(d))
            total = float(np.trace(mat))
        else:
            n, mean, scale, evals, evecs, total = self._fit_randomized(X)
            self.covariance_rows_ = int(n)
        self.mean_ = mean
        self.scale_ = scale
        self.total_variance_ = total
        ratio = evals / total if total > 0 else np.zeros_like(evals)
        if self.pca_variance is None and self.n_components is None:
            self.components_ = None
            self.n_components_ = d
            self.explained_variance_ = evals
            self.explained_variance_ratio_ = ratio
        else:
            k = self.n_components or int(np.searchsorted(np.cumsum(ratio), self.pca_variance - 1e-12) + 1)
            k = max(1, min(k, self.max_components, len(evals)))
            comps = evecs[:, :k].T
            # sign convention: the largest entry of each component is positive
            signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
            signs[signs == 0] = 1
            self.components_ = comps * signs[:, None]
            self.n_components_ = k
            self.explained_variance_ = evals[:k]
            self.explained_variance_ratio_ = ratio[:k]
        self.n_features_in_ = d
        self._build()
        return self

    def sampled_note(self, n_rows) -> str:
        """" (covariance from N of M rows)" after a fit on a sample of its rows, else "" (the
        progress line of a fit says so)."""
        n = getattr(self, "covariance_rows_", n_rows)
        return f" (covariance from {n:,} of {n_rows:,} rows)" if n < n_rows else ""

    def _covariance_rows(self, d):
        """Rows the covariance is measured on (None: all of them)."""
        if self.covariance_rows == "auto":
            return max(COVARIANCE_MIN_ROWS, COVARIANCE_ROWS_PER_DIM * d)
        return self.covariance_rows

    def _most_components(self, d):
        """The most components this fit can keep: all ``d`` when it keeps every column."""
        if self.pca_variance is None and self.n_components is None:
            return d
        return max(1, min(self.n_components or self.max_components, self.max_components, d))

    def _fit_randomized(self, X):
        d = X.shape[1]
        parts = map_blocks_reduce(_block_mean, X, args=(self.l2,))
        if sum(p[3] for p in parts):
            raise ValueError(f"{sum(p[3] for p in parts)} row(s) hold NaN or Inf; drop them before fitting")
        n = sum(p[0] for p in parts)
        mean = sum(p[1] for p in parts) / n
        var = (sum(p[2] for p in parts) - n * mean**2) / n
        scale = np.sqrt(var) if self.standardize else np.ones(d)
        scale[scale < 1e-12] = 1.0
        total = float((var / scale**2).sum()) * n / (n - 1)
        rank = min(d, self.n_components or self.max_components)
        width = min(d, rank + 16)
        q = np.random.default_rng(self.random_state).normal(size=(d, width))
        for _ in range(3):  # power iterations: each one pass computing C @ q
            cq = sum(map_blocks_reduce(_block_sketch, X, args=(self.l2, mean, scale, q)))
            q, _ = np.linalg.qr(cq / (n - 1))
        cq = sum(map_blocks_reduce(_block_sketch, X, args=(self.l2, mean, scale, q))) / (n - 1)
        small = q.T @ cq
        evals, evecs = np.linalg.eigh((small + small.T) / 2)
        order = np.argsort(evals)[::-1]
        return n, mean, scale, evals[order].clip(min=0), q @ evecs[:, order], total

    def _build(self):
        """Fold centring, scaling and projection into one (d, k) matrix and a bias."""
        if self.components_ is None:
            self._w = (np.diag(1.0 / self.scale_)).astype(np.float32)
        else:
            self._w = (self.components_ / self.scale_).T.astype(np.float32)
        self._b = (self.mean_.astype(np.float64) @ self._w.astype(np.float64)).astype(np.float32)

    def transform_block(self, block):
        """Transform one numpy block of rows: (n, n_features) -> (n, n_components_) float32.
        The L2 division comes after the projection ((x / |x|) W = (x W) / |x|): the rows are
        read twice (norms, product) and never copied."""
        x = np.asarray(block, dtype=np.float32)
        y = x @ self._w
        if self.l2:
            y /= _norms(x)
        y -= self._b
        return y

    def transform_exact(self, block):
        """``transform_block`` with the same bits for a row whatever rows come with it: the
        product in float64, rounded once to float32. A float32 product's last bits follow
        OpenBLAS's blocking, which follows the number of rows and threads (about half the
        rows of a 10,000-row block differ in chunks of 500), and a short nearest-neighbour
        walk turns on them. 2.2-2.5 times the float32 product's CPU (benchmarks/RESULTS.md,
        2026-12-05); the outlier scorer's rows are made so."""
        x = np.asarray(block, dtype=np.float32)
        w, b = self._w.astype(np.float64), self._b.astype(np.float64)
        out = np.empty((len(x), w.shape[1]), dtype=np.float32)
        for a in range(0, len(x), EXACT_ROWS):  # a float64 copy of a part at a time
            part = x[a:a + EXACT_ROWS]
            y = part.astype(np.float64) @ w
            if self.l2:
                y /= _norms(part)
            y -= b
            out[a:a + EXACT_ROWS] = y
        return out

    def transform(self, X):
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features; the preprocessor was fitted on "
                             f"{self.n_features_in_}")
        if is_dask(X):
            return X.map_blocks(self.transform_block, dtype=np.float32,
                                chunks=(X.chunks[0], (self.n_components_,)))
        return self.transform_block(X)

    # ------------------------------------------------------------------ state

    def to_state(self):
        params = self.get_params()
        params.update(n_components_=int(self.n_components_), n_features_in_=int(self.n_features_in_),
                      total_variance_=float(self.total_variance_))
        arrays = {"mean": self.mean_, "scale": self.scale_,
                  "explained_variance": self.explained_variance_,
                  "explained_variance_ratio": self.explained_variance_ratio_}
        if self.components_ is not None:
            arrays["components"] = self.components_
        return params, arrays

    @classmethod
    def from_state(cls, params, arrays):
        fitted = {k: params[k] for k in ("n_components_", "n_features_in_", "total_variance_")}
        obj = cls(**{k: v for k, v in params.items() if k not in fitted})
        for k, v in fitted.items():
            setattr(obj, k, v)
        obj.mean_, obj.scale_ = arrays["mean"], arrays["scale"]
        obj.explained_variance_ = arrays["explained_variance"]
        obj.explained_variance_ratio_ = arrays["explained_variance_ratio"]
        obj.components_ = arrays.get("components")
        obj._build()
        return obj


class MixturePreprocessor:
    """Several descriptor sets, each reduced by its own Preprocessor, weighted so that every set
    contributes the same total variance (weight = 1 / sqrt(variance kept by that set)), then
    concatenated column-wise.

    ``weights`` ({name: w}, optional, default 1 each): a set's total variance in the mixture
    is w times that of a weight-1 set (its columns are scaled by sqrt(w) / sqrt(variance kept)).
    """

    def __init__(self, preprocessors: dict, weights: dict | None = None):
        self.preprocessors = dict(preprocessors)
        self.weights = dict(weights or {})
        bad = {k: w for k, w in self.weights.items() if not (np.isfinite(w) and w > 0)}
        if bad or set(self.weights) - set(self.preprocessors):
            raise ValueError(f"weights must be positive, for the mixture's sets; got {self.weights}")

    def fit(self, sets: dict):
        missing = set(self.preprocessors) - set(sets)
        if missing:
            raise ValueError(f"missing descriptor sets {sorted(missing)}")
        for name, pre in self.preprocessors.items():
            pre.fit(sets[name])
        return self.fitted()

    def fitted(self):
        """Set the mixture's scales from preprocessors that are already fitted (each set fitted
        once, shared by several mixtures: vclust.jobs.compare)."""
        self.weights_ = {}
        for name, pre in self.preprocessors.items():
            kept = float(np.sum(pre.explained_variance_))
            w = float(self.weights.get(name, 1.0))
            self.weights_[name] = np.sqrt(w) / np.sqrt(kept) if kept > 0 else np.sqrt(w)
        self.n_components_ = sum(p.n_components_ for p in self.preprocessors.values())
        return self

    def transform_exact(self, sets: dict):
        """``transform`` of numpy blocks, each set's part by ``Preprocessor.transform_exact``."""
        return np.concatenate([self.preprocessors[n].transform_exact(sets[n])
                               * np.float32(self.weights_[n]) for n in self.preprocessors], axis=1)

    def transform(self, sets: dict):
        import dask.array as da

        parts = [self.preprocessors[n].transform(sets[n]) * np.float32(self.weights_[n])
                 for n in self.preprocessors]
        if is_dask(parts[0]):
            return da.concatenate(parts, axis=1).rechunk({1: -1})
        return np.concatenate(parts, axis=1)

    def to_state(self):
        params = {"names": list(self.preprocessors), "weights": self.weights_, "sets": {},
                  "user_weights": {n: float(self.weights.get(n, 1.0)) for n in self.preprocessors}}
        arrays = {}
        for name, pre in self.preprocessors.items():
            p, a = pre.to_state()
            params["sets"][name] = p
            arrays.update({f"{name}/{k}": v for k, v in a.items()})
        return params, arrays

    @classmethod
    def from_state(cls, params, arrays):
        pres = {}
        for name in params["names"]:
            sub = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.split("/", 1)[0] == name}
            pres[name] = Preprocessor.from_state(params["sets"][name], sub)
        obj = cls(pres, params.get("user_weights"))
        obj.weights_ = {k: float(v) for k, v in params["weights"].items()}
        obj.n_components_ = sum(p.n_components_ for p in pres.values())
        return obj
