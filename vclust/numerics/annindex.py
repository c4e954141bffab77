"""A prepared pynndescent index as JSON-able params plus numpy arrays, without pickle.

Building an NNDescent costs a numba compilation of its graph-building kernels in every process
(pynndescent does not cache them); restoring a prepared index from its state costs only the
search kernels, a fraction of that (benchmarks/RESULTS.md). So the model dir keeps the index's own state
(the ``__getstate__`` dict: search graph, search trees, vertex order, raw data ...) as arrays,
and a worker restores it with ``__setstate__``, never rebuilding the graph.

The numba functions in the state are dropped; ``__setstate__`` recreates them.
"""

from __future__ import annotations

import threading

import numpy as np

# The libraries whose numba kernels vclust runs: pynndescent (outlier index, UMAP's graph) and
# umap-learn (the report's map layouts).
_NUMBA_PACKAGES = ("pynndescent", "umap")
_numba_cache_done: set = set()
_NUMBA_CACHE_LOCK = threading.Lock()

#: pynndescent kernels vclust never runs, by pynndescent version: hub trees (``prepare_index``
#: builds a random projection search forest instead), bit-packed trees (binary data) and the
#: int8 quantized distances. pynndescent declares them with explicit signatures, so importing
#: it compiles them (a fresh numba cache: about 18 of the import's 27 s on this project's 2-core
#: machine) or loads them from the disk cache (every process, each command and each worker).
#: ``enable_numba_cache`` imports pynndescent with these left to compile on first call, which
#: never comes. Every kernel vclust runs keeps its declared signature, so the same code is
#: compiled for it and every graph and answer is the same, bit for bit (tests/test_outliers.py).
#: A version not listed imports as it comes.
DEFERRED_KERNELS = {
    "0.7.0": frozenset(
        [f"pynndescent.distances.quantized_int8_{kind}{norms}"
         for kind in ("alternative_cosine", "alternative_dot", "direct_cosine")
         for norms in ("", "_with_norms")]
        + [f"pynndescent.rp_trees.{name}" for name in (
            "angular_hub_split", "bit_hub_split", "euclidean_hub_split", "compute_global_degrees",
            "get_top_k_hub_indices", "get_top_k_hub_indices_bit", "make_bit_hub_tree_recursive",
            "make_hub_angular_tree", "make_hub_euclidean_tree",
            "angular_bitpacked_random_projection_split", "make_bit_tree", "search_flat_bit_tree",
            "select_side_bit")]),
}


def _deferring_njit(njit, deferred):
    """``numba.njit`` that drops the signatures of the kernels named in ``deferred`` (module.name)
    and passes every other use through unchanged, another thread's included."""

    def deferring_njit(*args, **kwargs):
        if not args or args[0] is None or callable(args[0]):
            return njit(*args, **kwargs)

        def decorate(func):
            if f"{func.__module__}.{func.__name__}" in deferred:
                return njit(*args[1:], **kwargs)(func)
            return njit(*args, **kwargs)(func)

        return decorate

    return deferring_njit


def _import_deferring(name: str):
    """Import ``name`` (pynndescent, or umap-learn, which imports it), with the kernels in
    ``DEFERRED_KERNELS`` for the installed pynndescent compiled only when called."""
    import importlib
    import sys

    if "pynndescent" in sys.modules:
        return importlib.import_module(name)
    from importlib import metadata

    import numba

    try:
        deferred = DEFERRED_KERNELS.get(metadata.version("pynndescent"))
    except metadata.PackageNotFoundError:
        deferred = None
    if not deferred:
        return importlib.import_module(name)
    njit = numba.njit
    numba.njit = _deferring_njit(njit, deferred)
    try:
        return importlib.import_module(name)
    finally:
        numba.njit = njit


def enable_numba_cache(*packages: str) -> int:
    """Let numba keep the module-level kernels of pynndescent and umap-learn on disk.

    Both libraries declare most of their kernels without ``cache=True``, so every new process
    (each ``vclust`` command, each Dask worker) compiled them again, far longer than a small
    build itself (benchmarks/RESULTS.md, figures behind the code). Numba's dispatcher can turn
    its on-disk cache on after the fact (``Dispatcher.enable_caching``); the cache is keyed by
    the source file's stamp, so an upgraded library recompiles. Kernels numba refuses to cache
    (pynndescent's ``nn_descent``, which asks numba for its thread count through a pointer)
    are replaced by a cacheable copy of that driver (``vclust.numerics.nndescent``). The cache lives beside the library (``__pycache__``) or under
    ``NUMBA_CACHE_DIR``. ``packages``: some of ``_NUMBA_PACKAGES`` (default: pynndescent, so
    that the fit does not import umap-learn). Idempotent, and one thread at a time: a thread
    that asks while another is at it waits until every kernel is switched (`vclust fit`
    imports pynndescent on a thread of its own while another prepares the index's rows).
    Returns how many kernels it switched.
    """
    with _NUMBA_CACHE_LOCK:
        return _enable_numba_cache(packages)


def _enable_numba_cache(packages) -> int:
    packages = packages or ("pynndescent",)
    unknown = set(packages) - set(_NUMBA_PACKAGES)
    if unknown:
        raise ValueError(f"unknown package(s) {sorted(unknown)}; choose from {_NUMBA_PACKAGES}")
    import importlib
    import pkgutil
    import warnings

    # the package first, whole: another thread may be importing it (dask.array does, through
    # pydata-sparse), and a submodule imported from here meanwhile can see it half made
    import numba  # noqa: F401
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    count = 0
    for name in packages:
        if name in _numba_cache_done:
            continue
        _numba_cache_done.add(name)
        try:
            package = _import_deferring(name)
        except ImportError:
            continue
        for info in pkgutil.iter_modules(package.__path__):
            if info.name in ("parametric_umap", "aligned_umap", "plot"):
                continue  # optional extras (tensorflow, matplotlib): not vclust's kernels
            try:
                module = importlib.import_module(f"{name}.{info.name}")
            except ImportError:
                continue
            for attr, value in vars(module).items():
                if not isinstance(value, Dispatcher):
                    continue
                if value.__dict__.get("_MemoMixin__uuid") is None:
                    # a name, not numba's random per-process uuid: kernels that take this one as
                    # an argument (the distance) then have the same signature in every process,
                    # which is what their cache entries are looked up by
                    value._set_uuid(f"vclust-stable:{name}.{info.name}.{attr}")
                if isinstance(value._cache, NullCache):
                    value.enable_caching()
                    count += 1
    # the ones numba refuses say so once per process: expected, not the user's concern
    warnings.filterwarnings("ignore", message="Cannot cache compiled function")
    if "pynndescent" in packages:
        from . import nndescent

        nndescent.install()  # the graph-building driver, cacheable (nndescent.py says why)
    return count


def _encode(value, path, arrays):
    import scipy.sparse as sp

    if isinstance(value, np.ndarray):
        arrays[path] = value
        return {"__array__": path}
    if isinstance(value, np.generic):
        return {"__scalar__": str(value.dtype), "value": value.item()}
    if sp.issparse(value):
        csr = value.tocsr()
        for part in ("data", "indices", "indptr"):
            arrays[f"{path}.{part}"] = getattr(csr, part)
        return {"__csr__": path, "shape": list(csr.shape), "array": isinstance(value, sp.sparray)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", arrays) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {"__dict__": {k: _encode(v, f"{path}.{k}", arrays) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store index attribute {path} of type {type(value).__name__}")


def _decode(value, arrays):
    import scipy.sparse as sp

    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        return np.asarray(arrays[value["__array__"]])
    if "__scalar__" in value:
        return np.dtype(value["__scalar__"]).type(value["value"])
    if "__csr__" in value:
        p = value["__csr__"]
        cls = sp.csr_array if value["array"] else sp.csr_matrix
        return cls((arrays[f"{p}.data"], arrays[f"{p}.indices"], arrays[f"{p}.indptr"]),
                   shape=tuple(value["shape"]))
    if "__tuple__" in value:
        return tuple(_decode(v, arrays) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, arrays) for k, v in value["__dict__"].items()}
    raise ValueError(f"unreadable index state entry {value!r}")


def index_to_state(index) -> tuple[dict, dict]:
    """(params, arrays) of a prepared NNDescent."""
    state = index.__getstate__()
    params, arrays = {}, {}
    for key, value in state.items():
        if callable(value) or key == "_rp_forest":
            continue
        params[key] = _encode(value, key, arrays)
    return params, arrays


def decode_state(params: dict, arrays: dict) -> dict:
    """The index's ``__getstate__`` dict from (params, arrays), without pynndescent."""
    return {key: _decode(value, arrays) for key, value in params.items()}


def index_from_state(params: dict, arrays: dict):
    """The NNDescent back, ready to query (compiles only the search kernels)."""
    enable_numba_cache()
    from pynndescent import NNDescent

    state = decode_state(params, arrays)
    index = NNDescent.__new__(NNDescent)
    index.__setstate__(state)
    index._input_dtype = np.float32
    release_gil(index)  # (in place already: nndescent.install routes the search to the copy)
    return index


def prepare_index(index):
    """``index.prepare()`` with a one-tree random projection search forest, then
    ``release_gil``. Returns the index.

    pynndescent 0.7.0's ``prepare`` builds a graph-informed "hub" search tree when the index
    still holds its build's forest (``_rp_forest``: every index just built), and a one-tree
    random projection forest (``make_forest``) when that is None. The hub tree's kernels were
    the largest part of the install's numba compilation (both of its split rules, and its
    breadth-first kernels for trees past a million bytes of rows); the one-tree forest's
    compile in a fraction of that, and its answers against exact neighbours are the hub
    tree's on the real sets (benchmarks/RESULTS.md, 2026-12-03, for both). The attribute is
    pynndescent's own: only for the versions in ``nndescent.SUPPORTED``
    (tests/test_dependencies.py fails on another)."""
    if (pynndescent_version() is not None and getattr(index, "_rp_forest", None) is not None
            and not hasattr(index, "_search_forest")):
        index._rp_forest = None
    index.prepare()
    release_gil(index)
    return index


def release_gil(index) -> bool:
    """Let ``index.query`` run without holding the GIL, so that threads query side by side.

    pynndescent 0.7.0 serves a dense euclidean query with one disk-cached numba function
    (``search.search_dense_sqeuclidean``), compiled without ``nogil``: two threads querying
    took as long as one. ``nndescent.search_dense_sqeuclidean_nogil`` is the same function,
    calling the same search loop with the same arguments, compiled with ``nogil=True`` (and
    cached); ``nndescent.install`` puts it in pynndescent's name, so an index prepared or
    restored after ``enable_numba_cache`` already searches with it. An index whose search is
    pynndescent's own (prepared before the swap) gets the copy bound in its place here; the
    neighbours are the same, bit for bit (tests/test_outliers.py). Returns whether the copy is
    in place (False for anything else: another version, metric, or a parallel or proxy
    search)."""
    import functools

    from .nndescent import ORIGINAL_SEARCH, search_dense_sqeuclidean_nogil

    plan = getattr(index, "_fast_plan", None)
    if plan is None or plan[0] or pynndescent_version() is None:
        return False
    search = plan[1]
    try:
        signature = _signature(search.args[0])
    except (AttributeError, TypeError, IndexError):
        return False
    func = getattr(search, "func", None)
    ours = search_dense_sqeuclidean_nogil.overloads.get(signature)
    if ours is not None and func is ours.entry_point:
        return True
    original = ORIGINAL_SEARCH.overloads.get(signature)
    if original is None or func is not original.entry_point:
        return False
    swapped = functools.partial(_nogil_entry(signature), *search.args)
    index._fast_plan = (plan[0], swapped, *plan[2:])
    index._search_function = swapped
    return True


def pynndescent_version():
    """pynndescent's version when ``release_gil`` knows it, else None."""
    import pynndescent

    from .nndescent import SUPPORTED

    return pynndescent.__version__ if pynndescent.__version__ in SUPPORTED else None


def _signature(search_index):
    import numba
    from numba import types
    from pynndescent import search as S

    return (numba.typeof(search_index), S._array(types.float32, 2), S._array(types.float32, 2),
            S._array(types.float32, 1), S._HEAP_TYPE, types.int64, types.float32,
            S._array(types.uint8, 1), types.boolean, S._array(types.int64, 1))


_NOGIL = {}


def _nogil_entry(signature):
    fn = _NOGIL.get(signature)
    if fn is None:
        from .nndescent import search_dense_sqeuclidean_nogil

        search_dense_sqeuclidean_nogil.compile(signature)
        fn = _NOGIL[signature] = search_dense_sqeuclidean_nogil.overloads[signature].entry_point
    return fn
