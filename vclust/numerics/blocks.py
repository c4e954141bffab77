"""Small shared helpers for map-reduce over the row blocks of numpy or dask arrays.

Kernels see numpy blocks; these helpers decide whether the blocks come from a dask array (run
as tasks, on the cluster when a client is active) or from an in-memory array (run in threads).
Results are always combined in block order, so sums do not depend on which worker ran what.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np


def is_dask(x) -> bool:
    return hasattr(x, "dask") and hasattr(x, "chunks")


def check_2d(X, what="X"):
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n_samples, n_features); got shape {X.shape}")
    if is_dask(X) and len(X.chunks[1]) != 1:
        raise ValueError(f"{what} must be chunked by rows only; rechunk with X.rechunk({{1: -1}})")


def row_offsets(X) -> list[int]:
    if is_dask(X):
        sizes = X.chunks[0]
    else:  # 65,536 rows, fewer for rows over 2 KiB: a block's temporaries stay under 128 MiB
        row_bytes = max(1, int(np.prod(X.shape[1:])) * X.dtype.itemsize)
        step = max(8_192, min(65_536, 1 << int(np.log2(max(1, 2**27 // row_bytes)))))
        sizes = [min(step, X.shape[0] - a) for a in range(0, X.shape[0], step)] or [0]
    return list(np.cumsum((0,) + tuple(sizes[:-1])))


def delayed_blocks(*arrays) -> list:
    """Each dask array's row blocks as delayed objects, from the arrays' graphs as built (not
    optimised). Optimised, arrays that share work (rows read from the store, their reduction)
    each fuse a copy of it into their own tasks, one at a time (``to_delayed()``'s default) or
    together (``dask.optimize``'s blockwise fusion does the same), and a computation that needs
    them together runs it once per copy: a label of 416k efficientnet-b7 rows read every row 4
    times and reduced it 3 times (benchmarks/RESULTS.md). Unoptimised, shared tasks stay
    shared; the store's reads are exact row ranges of their own (``storage.rawrows.dask_rows``),
    with no slicing left for optimisation to fuse into them."""
    return [a.to_delayed(optimize_graph=False).ravel() for a in arrays]


def map_blocks_reduce(func, X, *arrays, args=()):
    """``[func(block, *aligned_blocks, row0, *args) for each row block]`` in block order.

    ``arrays`` are 1-D arrays aligned with X's rows (labels, distances), dask or numpy.
    """
    import dask

    offsets = row_offsets(X)
    if is_dask(X):
        xs = X.to_delayed().ravel()
        others = []
        for a in arrays:
            if is_dask(a):
                a = a.rechunk((X.chunks[0],))
                others.append(a.to_delayed().ravel())
            else:
                others.append([a[o:o + n] for o, n in zip(offsets, X.chunks[0])])
        tasks = [dask.delayed(func, pure=True)(x, *(o[i] for o in others), int(offsets[i]), *args)
                 for i, x in enumerate(xs)]
        return list(dask.compute(*tasks))
    sizes = np.diff(offsets + [X.shape[0]])
    jobs = [(X[o:o + n], *(a[o:o + n] for a in arrays), int(o)) for o, n in zip(offsets, sizes)]
    return run_local(lambda j: func(*j, *args), jobs)


def map_blocks_state(func, X, states=None, args=()):
    """One pass of ``func(block, state, row0, *args) -> (new_state, result)`` over the row blocks
    of X, where ``state`` is per-block data carried from the previous pass (None on the first).

    With a dask X the new states stay where they were computed (persisted in worker memory, as
    delayed objects for the next pass) and only the results travel back, in block order: a
    pass can update per-row values (nearest centre so far, labels) without recomputing them.

    Returns (new_states, results).
    """
    offsets = row_offsets(X)
    if is_dask(X):
        import dask

        xs = X.to_delayed().ravel()
        states = list(states) if states is not None else [None] * len(xs)
        tasks = [dask.delayed(func, pure=False, nout=2)(x, s, int(offsets[i]), *args)
                 for i, (x, s) in enumerate(zip(xs, states))]
        out = _persist([t[0] for t in tasks] + [t[1] for t in tasks])
        return out[:len(tasks)], list(dask.compute(*out[len(tasks):]))
    sizes = np.diff(offsets + [X.shape[0]])
    states = list(states) if states is not None else [None] * len(sizes)
    jobs = [(X[o:o + n], s, int(o)) for o, n, s in zip(offsets, sizes, states)]
    pairs = run_local(lambda j: func(*j, *args), jobs)
    return [p[0] for p in pairs], [p[1] for p in pairs]


_POOL = None
_BLAS_LOCK = threading.Lock()
# users: callers inside; libs: {library path: (threadpoolctl's controller of it, its setter)};
# before: {library path: its count when limited}, while a caller is inside; modules: those
# seen loaded when the libraries were last listed
_BLAS = {"users": 0, "libs": {}, "before": {}, "modules": None}
# modules whose import loads a BLAS of its own (numpy's and scipy's OpenBLAS are two libraries;
# scipy.special loads scipy's without scipy.linalg, faiss brings a third): the libraries are
# listed again when one of them has been imported since
_BLAS_MODULES = ("numpy", "scipy.special", "scipy.linalg", "sklearn", "faiss")
# OpenBLAS's own process-wide setter, under the names its builds export (numpy's and scipy's
# wheels prefix "scipy_", numpy's 64-bit-integer build suffixes "64_")
_OPENBLAS_SETTERS = tuple(f"{p}openblas_set_num_threads{s}" for p in ("", "scipy_")
                          for s in ("", "64_"))


#: CPython versions whose import system marks a module still being imported with the private
#: ``module.__spec__._initializing`` (``_imported``); tests/test_dependencies.py fails outside
INITIALIZING_PYTHONS = ((3, 10), (3, 14))  # from, up to but not including


def _imported(module) -> bool:
    """True for a module imported to its end: one another thread is still importing is in
    sys.modules before the BLAS it loads (vclust imports in the background). Reads importlib's
    private ``_initializing`` (INITIALIZING_PYTHONS)."""
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


def _setter(lib):
    """A function that sets ``lib``'s thread count for the whole process, from any thread.

    threadpoolctl (3.6 on) lets one Python thread control a pthreads OpenBLAS and silently
    ignores a limit set from any other while that one lives: the fit's outlier thread asked
    for one thread on scipy's OpenBLAS and it kept two, so the scorer's eigendecomposition,
    and the model's last bits, depended on which thread had set a limit first
    (benchmarks/RESULTS.md). vclust's callers are counted under one lock and do not fight, so
    OpenBLAS's own setter is called (ctypes, the library already loaded); other libraries go
    through threadpoolctl."""
    if lib.internal_api == "openblas" and getattr(lib, "threading_layer", None) != "openmp":
        import ctypes
        import os

        try:
            dll = ctypes.CDLL(lib.filepath, mode=getattr(os, "RTLD_NOLOAD", 0))
        except OSError:  # not reachable by its path: threadpoolctl's, as before
            return lib.set_num_threads
        for name in _OPENBLAS_SETTERS:
            fn = getattr(dll, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                return fn
    return lib.set_num_threads


def _blas_libraries():
    from threadpoolctl import ThreadpoolController

    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


@contextmanager
def one_blas_thread():
    """BLAS at one thread while row blocks run side by side on this process's threads.

    OpenBLAS's thread count is one setting for the whole process: blocks that each call a
    two-thread BLAS from two pool threads put four busy threads on two cores, and OpenBLAS's
    waiting threads spin (benchmarks/RESULTS.md, figures behind the code). Counted: the
    first caller limits, the last one out restores, so overlapping callers on other threads do
    not undo each other. A BLAS loaded while the limit holds (scipy's, imported during a fit
    that holds it throughout) is limited too, at the next entry, from whichever thread
    (``_setter``)."""
    import sys

    with _BLAS_LOCK:
        loaded = tuple(_imported(sys.modules.get(m)) for m in _BLAS_MODULES)
        if _BLAS["modules"] != loaded:  # a BLAS may have been loaded since: list them again
            _BLAS["modules"] = loaded
            for lib in _blas_libraries():
                if lib.filepath not in _BLAS["libs"]:
                    _BLAS["libs"][lib.filepath] = (lib, _setter(lib))
        for path, (lib, setter) in _BLAS["libs"].items():
            if path not in _BLAS["before"]:  # the first caller in, or a library new since
                _BLAS["before"][path] = lib.num_threads
                setter(1)
        _BLAS["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS["users"] -= 1
            if _BLAS["users"] == 0:
                for path, before in _BLAS["before"].items():
                    _BLAS["libs"][path][1](before)
                _BLAS["before"].clear()


def threads_get(dsk, keys, **kwargs):
    """dask's threaded scheduler (``dask.threaded.get``) with BLAS at one thread inside its
    tasks (``one_blas_thread``): the scheduler vclust sets for graphs run in this process
    (``dask.config.set(scheduler=threads_get)``).

    The thread count is given, as wide as the machine: dask takes the thread that first
    imported ``dask.threaded`` for the main one, and from any other thread it makes a pool of
    ``concurrent.futures``' default width (the cores + 4: 6 threads on 2 cores). vclust imports
    in the background, so without this every graph of a fit ran on 6 threads, 12 with the
    outlier reference's (benchmarks/RESULTS.md, "Threads")."""
    import dask
    import dask.threaded
    from dask.system import CPU_COUNT

    if kwargs.get("num_workers") is None and dask.config.get("pool", None) is None:
        kwargs["num_workers"] = dask.config.get("num_workers", None) or CPU_COUNT
    with one_blas_thread():
        return dask.threaded.get(dsk, keys, **kwargs)


def run_local(fn, jobs) -> list:
    """``[fn(j) for j in jobs]`` for numpy blocks: inline for one block, else on one thread pool
    per process, as wide as the machine (numpy's kernels release the GIL), BLAS at one thread a
    block (``one_blas_thread``). A k-range on 20,000 rows makes a few hundred passes: a pool
    started per pass cost more than the pass."""
    global _POOL
    if len(jobs) <= 1:
        return [fn(j) for j in jobs]
    if _POOL is None:
        import os

        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                   thread_name_prefix="vclust-blocks")
    with one_blas_thread():
        return list(_POOL.map(fn, jobs))


#: dask.config "scheduler" values that run graphs in this process, whatever client exists
LOCAL_SCHEDULERS = ("threads", "threading", "sync", "synchronous", "single-threaded", threads_get)


def distributed_imported() -> bool:
    """False when distributed was never imported in this process: no client can exist, and a
    command run on this process's threads does not pay distributed's import."""
    import sys

    return "distributed" in sys.modules



def distributed_client():
    """The distributed client that runs this process's graphs, or None: no client, or one
    exists but ``dask.config.set(scheduler="threads")`` (or "sync") is in force, as where
    `vclust compare` labels rows it already holds in this process."""
    import dask

    if dask.config.get("scheduler", None) in LOCAL_SCHEDULERS or not distributed_imported():
        return None
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def _persist(objs: list) -> list:
    """``objs`` (dask collections) computed and kept: on the cluster with a distributed client."""
    import dask

    client = distributed_client()
    return client.persist(objs) if client is not None else list(dask.persist(*objs))


def concat_states(X, states, dtype):
    """Per-block 1-D states (for example labels) as one array aligned with X's rows."""
    if not is_dask(X):
        return np.concatenate(states) if states else np.empty(0, dtype)
    import dask.array as da

    return da.concatenate([da.from_delayed(s, shape=(n,), dtype=dtype)
                           for s, n in zip(states, X.chunks[0])])


def shared(obj):
    """A handle to pass ``obj`` into many tasks: with a distributed client, scattered once to every
    worker (a large object, such as an outlier index, then travels once per worker instead of
    inside every graph); without one, a delayed wrapping it."""
    import dask

    client = distributed_client()
    if client is None:  # a random key, not a hash of the object's arrays
        return dask.delayed(obj, traverse=False)
    return client.scatter(obj, broadcast=True, hash=False)


_SCRATCH = threading.local()


def scratch(shape, dtype) -> np.ndarray:
    """A reusable uninitialised array of ``shape`` for the calling thread (grown as needed).

    On workers left with distributed's malloc settings (started outside vclust, see
    vclust/cluster.py) every large temporary is a new mmap paid in page faults; under vclust's
    settings the heap reuses it anyway.
    Only for values that do not outlive the kernel call."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.nbytes < size:
        buf = _SCRATCH.buf = np.empty(size, np.uint8)
    return buf[:size].view(dtype).reshape(shape)


BLOCK_BYTES = 16 * 2**20


def compact_rows(n_features: int, itemsize: int = 4) -> int:
    """Rows per block for data held in worker memory: the power of two nearest below
    ``BLOCK_BYTES`` per block (at least 8,192 rows). It depends on the width only, so the same
    rows always fall in the same blocks, whatever the store's chunking or the worker count."""
    rows = BLOCK_BYTES // max(1, n_features * itemsize)
    return max(8192, 1 << int(np.log2(max(rows, 1))))


def compact(X):
    """``X`` rechunked into ``compact_rows`` blocks (few tasks per pass over reduced rows)."""
    return X.rechunk({0: compact_rows(X.shape[1], X.dtype.itemsize), 1: -1})


PAIR_BYTES = 128 * 2**20


def balanced(X):
    """``X`` rechunked into an even number of equal row blocks of at most ``PAIR_BYTES / 2``
    (one block under 16,384 rows), for reduced rows that many passes read from memory.

    Every task of a pass costs scheduler and worker time beside its kernel, so fewer, larger
    blocks make faster passes (benchmarks/RESULTS.md: Lloyd passes by block count). An even
    count keeps two workers equally busy; the
    count depends on the data's size only, so labels do not depend on the cluster."""
    n = X.shape[0]
    if n < 16_384:
        return X.rechunk({0: -1, 1: -1})
    pairs = max(1, -(-int(X.nbytes) // PAIR_BYTES))
    return X.rechunk({0: -(-n // (2 * pairs)), 1: -1})


MEMORY_SHARE = 0.25


def memory_budget() -> int:
    """Bytes vclust may hold in memory: ``MEMORY_SHARE`` of the workers' memory limits with a
    distributed client, else of the machine's available memory."""
    client = distributed_client()
    if client is not None:
        # (a client whose scheduler is gone answers without "workers": the next compute
        # reports the loss as such)
        info = client.scheduler_info().get("workers", {}).values()
        total = int(sum(w.get("memory_limit", 0) or 0 for w in info))
        if total:
            return int(total * MEMORY_SHARE)
    import psutil

    return int(psutil.virtual_memory().available * MEMORY_SHARE)


def hold(arrays: list, budget: int | None = None, layout=None):
    """Persist dask ``arrays`` (rechunked by ``layout``, default ``compact``) when together they
    fit in ``budget`` (default ``memory_budget()``), so later passes read memory instead of their
    source; otherwise return them unchanged, to be streamed from their source on every pass.

    Returns (arrays, held: bool).
    """
    nbytes = sum(a.nbytes for a in arrays)
    if nbytes > (memory_budget() if budget is None else budget):
        return arrays, False
    out = _persist([(layout or compact)(a) for a in arrays])
    if not distributed_imported():  # no client, so no futures to wait for
        return out, True
    try:
        from distributed import futures_of, wait
    except ImportError:
        return out, True
    if futures_of(out):
        wait(out)
    return out, True


def map_blocks_tree(func, combine, X, args=()):
    """``func`` over the row blocks of X (as ``map_blocks_reduce``), then the results merged
    pairwise by ``combine(a, b)`` in block order, in a fixed binary tree: with a dask X the
    merging runs on the workers and only the root travels to the client (for results as large
    as a d x d scatter matrix per block). The tree's shape depends on the number of blocks only,
    so the result is the same on any cluster."""
    if not is_dask(X):
        parts = map_blocks_reduce(func, X, args=args)
        return _tree(parts, combine)
    import dask

    offsets = row_offsets(X)
    parts = [dask.delayed(func, pure=True)(x, int(offsets[i]), *args)
             for i, x in enumerate(X.to_delayed().ravel())]
    return dask.compute(_tree(parts, dask.delayed(combine, pure=True)))[0]


def _tree(parts, combine):
    parts = list(parts)
    while len(parts) > 1:
        parts = [combine(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def row_uniform(rows: np.ndarray, seed: int, stream: int = 0) -> np.ndarray:
    """A uniform [0, 1) number per absolute row index (splitmix64): the same row gets the same
    number whatever the chunking, so sampling does not depend on how the rows are split."""
    z = (rows.astype(np.uint64) + np.uint64((seed * 0x9E3779B1 + stream * 0x85EBCA77) & (2**63 - 1)))
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def sample_rows(X, size: int, seed: int, stream: int = 7):
    """A seeded sample of about ``size`` rows (numpy, with their absolute row indices), chosen by
    ``row_uniform`` so it is the same whatever the chunking."""
    n = X.shape[0]
    if size >= n:
        data = np.asarray(X.compute() if is_dask(X) else X)
        return data, np.arange(n)
    p = size / n

    def pick(block, row0):
        rows = np.arange(row0, row0 + block.shape[0])
        keep = row_uniform(rows, seed, stream) < p
        return np.asarray(block)[keep], rows[keep]

    parts = map_blocks_reduce(pick, X)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
