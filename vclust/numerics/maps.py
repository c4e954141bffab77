"""2D and 3D maps of a sample of rows, for the report's interactive scatter plots.

The caller has already drawn the sample (~50,000 rows, every outlier included) and reduced it
(L2, PCA): these functions work on an in-memory numpy array and return float32 coordinates,
the same for the same seed.

Methods: ``"umap"`` (umap-learn, ``n_neighbors=15``), ``"tsne"`` (openTSNE, perplexity 30, its
default schedule), ``"pca"`` (the first principal components: fast, linear, always available)
and ``"auto"``: ``DEFAULT_METHOD``, chosen on the real descriptors in ``../shared/data`` by
``benchmarks/compare_maps.py`` (figures and reasons in ``docs/maps.md``), or PCA where that
library is not installed or there are too few rows for it.

Importing this module imports neither umap-learn nor openTSNE (nor numba): they are imported
inside the functions that use them.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np

from .annindex import enable_numba_cache

METHODS = ("umap", "tsne", "pca", "auto")
DEFAULT_METHOD = "umap"  # docs/maps.md: benchmarks/compare_maps.py on every real set
UMAP_NEIGHBORS = 15
TSNE_PERPLEXITY = 30.0
# A nonlinear map needs more rows than the neighbourhood it preserves; below this "auto" uses PCA
# and an explicit "umap" / "tsne" raises.
MIN_ROWS = UMAP_NEIGHBORS + 1
_LIBRARY = {"umap": "umap", "tsne": "openTSNE"}


def _check_X(X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (rows x features); got shape {X.shape}")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must have at least one row and one column; got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"X must hold real numbers; got dtype {X.dtype}")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise ValueError(f"{bad} row(s) of X hold NaN or Inf; drop them before mapping")
    return X


def _check_components(n_components) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) \
            or n_components < 1:
        raise ValueError(f"n_components must be a positive integer; got {n_components!r}")
    return int(n_components)


def available(method: str) -> bool:
    """Whether the library behind ``method`` is installed.

    Parameters
    ----------
    method : {"umap", "tsne", "pca"}
        A concrete method.

    Returns
    -------
    bool
        True for ``"pca"`` (scikit-learn is a dependency); for ``"umap"`` / ``"tsne"``, whether
        umap-learn / openTSNE can be imported (checked without importing it).
    """
    lib = _LIBRARY.get(method)
    return lib is None or importlib.util.find_spec(lib) is not None


def choose_method(method: str, n_rows: int) -> str:
    """The concrete method that :func:`embed` runs for ``method`` on ``n_rows`` rows.

    Parameters
    ----------
    method : {"umap", "tsne", "pca", "auto"}
        The method asked for.
    n_rows : int
        The number of rows to map.

    Returns
    -------
    str
        ``"umap"``, ``"tsne"`` or ``"pca"``. ``"auto"`` gives ``DEFAULT_METHOD`` when its library
        is installed and there are at least ``MIN_ROWS`` rows, else ``"pca"``.

    Raises
    ------
    ValueError
        If ``method`` is not one of ``METHODS``, or an explicit ``"umap"`` / ``"tsne"`` is asked
        for fewer than ``MIN_ROWS`` rows.
    ImportError
        If an explicit ``"umap"`` / ``"tsne"`` is asked and its library is not installed.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "auto":
        if n_rows >= MIN_ROWS and available(DEFAULT_METHOD):
            return DEFAULT_METHOD
        return "pca"
    if method != "pca":
        if n_rows < MIN_ROWS:
            raise ValueError(f"method {method!r} needs at least {MIN_ROWS} rows; got {n_rows} "
                             "(use method='pca', or 'auto' which falls back to it)")
        if not available(method):
            raise ImportError(f"method {method!r} needs the {_LIBRARY[method]} package "
                              "(use method='pca', or 'auto' which falls back to it)")
    return method


def _pca(X, n_components, random_state):
    """The first principal components, zero-padded when X has fewer rows or columns."""
    n, d = X.shape
    out = np.zeros((n, n_components), np.float32)
    m = min(n_components, d, n - 1)
    if m >= 1:
        from sklearn.decomposition import PCA

        out[:, :m] = PCA(n_components=m, random_state=random_state).fit_transform(X)
    return out


def _umap_graph(X, random_state):
    """The rows' UMAP_NEIGHBORS nearest rows (pynndescent, as umap-learn builds them on 4,096
    rows or more): every UMAP map takes its graph from here, whatever the row count. Below
    4,096 rows umap-learn would otherwise compute exact distances through scikit-learn with its
    own numba distance called once per pair from Python: 15 s for 3,000 rows against 0.1 s
    here, with kernels the install's warm-up does not compile (docs/maps.md)."""
    from sklearn.utils import check_random_state

    enable_numba_cache("pynndescent", "umap")
    from umap.umap_ import nearest_neighbors

    return nearest_neighbors(X, UMAP_NEIGHBORS, "euclidean", {}, False,
                             check_random_state(random_state), low_memory=True,
                             use_pynndescent=True,
                             n_jobs=1 if random_state is not None else -1)


def _umap(X, n_components, random_state, knn=None):
    enable_numba_cache("pynndescent", "umap")
    import warnings

    import umap

    if knn is None:
        knn = _umap_graph(X, random_state)
    if knn[2] is None:
        # the graph came without its search index (sent to another process): only transform()
        # needs that, and the report never transforms
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")

    reducer = umap.UMAP(n_neighbors=UMAP_NEIGHBORS, n_components=n_components,
                        random_state=random_state,
                        # a seed makes umap-learn single-threaded anyway: say so, no warning
                        n_jobs=1 if random_state is not None else -1,
                        precomputed_knn=knn)
    return reducer.fit_transform(X)


def _tsne_perplexity(n_rows):
    return min(TSNE_PERPLEXITY, (n_rows - 1) / 3)


def _tsne(X, n_components, random_state, affinities=None):
    """openTSNE on one thread: on 2 cores two threads were no faster and gave other
    coordinates than one (docs/maps.md)."""
    from openTSNE import TSNE

    tsne = TSNE(n_components=n_components, perplexity=_tsne_perplexity(len(X)),
                # FFT interpolation only exists for 1-2 dimensions; Barnes-Hut beyond
                negative_gradient_method="auto" if n_components <= 2 else "bh",
                # openTSNE's PCA start needs as many columns as map dimensions
                initialization="pca" if X.shape[1] >= n_components else "spectral",
                n_jobs=1, random_state=random_state)
    return np.asarray(tsne.fit(X, affinities=affinities))


def embed(X, n_components: int = 2, method: str = "auto", random_state: int | None = 0
          ) -> np.ndarray:
    """Map the rows of ``X`` to ``n_components`` dimensions.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        The rows to map, in memory (already sampled and reduced by the caller). Must be finite.
    n_components : int, default 2
        Dimensions of the map (2 or 3 for the report).
    method : {"auto", "umap", "tsne", "pca"}, default "auto"
        ``"auto"`` runs ``DEFAULT_METHOD``, or PCA when its library is missing or there are
        fewer than ``MIN_ROWS`` rows (see :func:`choose_method`).
    random_state : int or None, default 0
        Seed: the same seed gives the same coordinates. ``None`` is not reproducible, but lets
        umap-learn use every core.

    Returns
    -------
    numpy.ndarray of shape (n_rows, n_components), float32
        The map coordinates, one row per row of ``X``.

    Raises
    ------
    ValueError
        For an unknown method, a bad ``n_components``, an X that is not 2-D, empty or not
        finite, or an explicit nonlinear method on fewer than ``MIN_ROWS`` rows.
    ImportError
        If an explicit ``"umap"`` / ``"tsne"`` is asked and its library is not installed.
    """
    n_components = _check_components(n_components)
    X = _check_X(X)
    chosen = choose_method(method, len(X))
    if chosen == "umap":
        Y = _umap(X, n_components, random_state)
    elif chosen == "tsne":
        Y = _tsne(X, n_components, random_state)
    else:
        Y = _pca(X, n_components, random_state)
    return np.ascontiguousarray(Y, dtype=np.float32)


def embed_2d_3d(X, method: str = "auto", random_state: int | None = 0, submit=None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Both the 2D and the 3D map of the rows of ``X``, sharing what the method allows.

    PCA fits once (the 2D map is the first two columns of the 3D one). UMAP builds its
    nearest-neighbour graph once for both maps (umap-learn's ``precomputed_knn``; the maps are
    :func:`embed`'s). t-SNE computes its affinities once. The saving measured is in
    ``docs/maps.md``.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_features)
        The rows to map, in memory. Must be finite.
    method : {"auto", "umap", "tsne", "pca"}, default "auto"
        As in :func:`embed`.
    random_state : int or None, default 0
        Seed: the same seed gives the same coordinates. With a shared graph they are not
        bit-identical to two :func:`embed` calls (the random stream is consumed differently),
        but as good and as reproducible.
    submit : callable, optional
        ``submit(fn, *args)`` returning a future with ``.result()`` (a Dask client's
        ``submit``, a ``concurrent.futures`` executor's): the 2D and the 3D UMAP layouts then
        run at once in two workers. umap-learn with a seed runs each layout on one thread, so
        on two cores this halves their time; the coordinates are the same as without it.

    Returns
    -------
    xy : numpy.ndarray of shape (n_rows, 2), float32
        The 2D map.
    xyz : numpy.ndarray of shape (n_rows, 3), float32
        The 3D map.

    Raises
    ------
    ValueError, ImportError
        As in :func:`embed`.
    """
    return start_2d_3d(X, method, random_state, submit)()


def start_2d_3d(X, method: str = "auto", random_state: int | None = 0, submit=None):
    """:func:`embed_2d_3d` begun: the UMAP graph built and both layouts handed to ``submit``
    (when given); returns ``finish()``, which gives (xy, xyz) as :func:`embed_2d_3d` does. The
    caller does other work between the two while the layouts run elsewhere (the report: its
    cards, galleries and thumbnails). Without ``submit``, or for t-SNE and PCA, the maps are
    made by ``finish()``, in this process."""
    X = _check_X(X)
    chosen = choose_method(method, len(X))
    if chosen == "umap" and submit is not None:
        knn = _umap_graph(X, random_state)
        graph = (knn[0], knn[1], None)  # the search index stays here: layouts don't use it
        futures = [submit(_umap, X, d, random_state, graph) for d in (2, 3)]
        return lambda: _as_maps(*(f.result() for f in futures))
    return lambda: _as_maps(*_maps_here(X, chosen, random_state))


def _as_maps(xy, xyz):
    return (np.ascontiguousarray(xy, dtype=np.float32),
            np.ascontiguousarray(xyz, dtype=np.float32))


def _maps_here(X, chosen, random_state):
    if chosen == "pca":
        xyz = _pca(X, 3, random_state)
        return xyz[:, :2], xyz
    if chosen == "umap":
        knn = _umap_graph(X, random_state)
        return _umap(X, 2, random_state, knn), _umap(X, 3, random_state, knn)
    if chosen == "tsne":
        from openTSNE.affinity import MultiscaleMixture

        # as openTSNE's TSNE.fit builds them, so xy is embed(X, 2, "tsne")
        affinities = MultiscaleMixture(X, _tsne_perplexity(len(X)), method="auto",
                                       metric="euclidean", n_jobs=1, random_state=random_state)
        spare = copy.copy(affinities)
        spare.P = affinities.P.copy()  # the optimiser scales P in place during exaggeration
        return _tsne(X, 2, random_state, affinities), _tsne(X, 3, random_state, spare)
    return embed(X, 2, chosen, random_state), embed(X, 3, chosen, random_state)
