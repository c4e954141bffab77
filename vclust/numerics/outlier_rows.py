"""The outlier scorer's rows: the seeded reference and threshold rows gathered from dask or numpy
arrays (or a dict of them, a mixture) in one pass, the rows as given cut into the clustering
rows' blocks, and the scorer's own projection of them fitted the same way for every caller."""

from __future__ import annotations

import numpy as np

from .blocks import delayed_blocks, is_dask, one_blas_thread


def raw_parts(raw, chunks, *aligned):
    """``raw`` cut into the row blocks ``chunks`` (numpy slices or delayed blocks; a dict per
    block for a mixture): the scoring rows are computed from them inside each task, so no
    dask collection of them is computed twice. With ``aligned`` (dask arrays chunked by
    ``chunks``: the clustering rows, their clusters and distances), returns (parts, [their
    delayed blocks]), all from graphs left unoptimised (``blocks.delayed_blocks``): what they
    share (each block's read of the rows as given, its reduction) runs once."""
    offsets = np.cumsum((0,) + tuple(chunks[:-1]))
    items = raw if isinstance(raw, dict) else {"_": raw}
    lazy = {k: a.rechunk({0: tuple(chunks), 1: -1}) for k, a in items.items() if is_dask(a)}
    together = delayed_blocks(*aligned, *lazy.values())
    cuts = dict(zip(lazy, together[len(aligned):]))
    for k, a in items.items():
        if a is not None and k not in cuts:
            cuts[k] = [a[o:o + c] for o, c in zip(offsets, chunks)]
    if raw is None:
        parts = [None] * len(chunks)
    elif isinstance(raw, dict):
        parts = [{k: cuts[k][i] for k in raw} for i in range(len(chunks))]
    else:
        parts = cuts["_"]
    return (parts, together[:len(aligned)]) if aligned else parts


def gather(a, parts):
    """The rows of ``a`` (a dask or numpy array, or a dict of them: a mixture) at each
    position array of ``parts``, in row order: one task per block of ``a`` as it is chunked
    (no rechunk: the rows as given sit in the store's chunks, the clustering rows in their
    own), each part's rows copied once."""
    import dask

    arrays = a if isinstance(a, dict) else {"_": a}

    def pick(x):
        whole = in_memory(x) if is_dask(x) else x
        if whole is not None:
            return [tuple(np.asarray(whole[p]) for p in parts)]
        take = row_reader(x)
        if take is not None and all(np.all(np.diff(p) >= 0) for p in parts):
            return [tuple(take(p) for p in parts)]
        bounds = np.cumsum((0,) + tuple(x.chunks[0]))
        return [dask.delayed(_pick_task)(block, [p[(p >= bounds[i]) & (p < bounds[i + 1])]
                                                 - bounds[i] for p in parts])
                for i, block in enumerate(x.rechunk({1: -1}).to_delayed().ravel())]

    picked = {k: pick(v) for k, v in arrays.items()}
    # rows in memory are taken as they are, with no scheduler and nothing imported (fit.py
    # gathers the reference while dask.array and pynndescent import on another thread)
    lazy = any(not isinstance(p, tuple) for v in picked.values() for p in v)
    done = dask.compute(picked)[0] if lazy else picked
    done = {k: _joined(v, len(parts)) for k, v in done.items()}
    if isinstance(a, dict):
        return [{k: v[j] for k, v in done.items()} for j in range(len(parts))]
    return done["_"]


def with_row_reader(x, take):
    """The dask array ``x`` marked as one whose rows at sorted positions ``take(positions)``
    reads in this process (``rawrows.RawRows.take`` of the chunk files ``x`` streams): ``gather``
    then reads the rows it wants, not every block they fall in (the outlier reference of
    efficientnet-b7's 416k rows, 70,195 of them: 0.8-1.1 s against 2.3-3.5 s and 3.0-4.8 CPU-s;
    benchmarks/RESULTS.md). Returns ``x``."""
    x.vclust_take_rows = take
    return x


def row_reader(x):
    """``with_row_reader``'s reader of ``x`` where this process runs dask's graphs (a local
    scheduler), else None (a distributed cluster's workers read the rows, where they are)."""
    import dask

    from .blocks import LOCAL_SCHEDULERS

    take = getattr(x, "vclust_take_rows", None)
    if take is None or dask.config.get("scheduler", None) not in LOCAL_SCHEDULERS:
        return None
    return take


def in_memory(x):
    """The numpy array whose consecutive row views are every block of the dask array ``x``
    (a graph of those views alone, as ``fit.read_here`` holds the rows it read), or None.
    Rows gathered from it are taken at once, each part copied once into new memory: a task
    per block and a concatenation touched that memory twice (the reference and threshold
    rows of 416k osnet rows, 143 MB: 0.71-0.98 s -> 0.50 s in a fresh process, where new
    memory is what costs; benchmarks/RESULTS.md, 2026-12-04)."""
    from dask.core import flatten

    keys = list(flatten(x.__dask_keys__()))
    graph = x.__dask_graph__()
    if len(graph) != len(keys):
        return None
    blocks = [graph.get(k) for k in keys]
    blocks = [getattr(b, "value", b) for b in blocks]  # dask's DataNode holds a literal there
    if not all(isinstance(b, np.ndarray) for b in blocks):
        return None
    base = blocks[0].base
    if (not isinstance(base, np.ndarray) or base.shape != tuple(x.shape)
            or base.dtype != x.dtype or not base.flags.c_contiguous):
        return None
    at, row = base.__array_interface__["data"][0], base.strides[0]
    for b in blocks:
        if (b.base is not base or b.__array_interface__["data"][0] != at
                or b.shape[1:] != base.shape[1:]):
            return None
        at += b.shape[0] * row
    return base if at == base.__array_interface__["data"][0] + base.shape[0] * row else None


def same_rows_held(prepared, given) -> bool:
    """True when ``given`` (what ``OutlierScorer.fit`` is handed as ``raw``) holds the very rows
    ``prepare`` was given: the same object, or dask arrays whose blocks are views of those numpy
    arrays (`vclust fit` prepares on the arrays it read and fits on their views, ``in_memory``)."""
    if prepared is given:
        return True
    if isinstance(prepared, dict) or isinstance(given, dict):
        return (isinstance(prepared, dict) and isinstance(given, dict)
                and prepared.keys() == given.keys()
                and all(same_rows_held(prepared[k], given[k]) for k in prepared))
    if not (isinstance(prepared, np.ndarray) and is_dask(given)):
        return False
    held = in_memory(given)  # the array owning the blocks' memory: ``prepared`` or its base
    return (held is not None and held.shape == prepared.shape and held.dtype == prepared.dtype
            and held.strides == prepared.strides
            and held.__array_interface__["data"][0] == prepared.__array_interface__["data"][0])


def _joined(blocks, n_parts):
    """Each part's pieces (a tuple of them per block, in block order) as one array: a numpy
    array's one block is its pieces themselves, not a concatenated copy of them (which held the
    gathered rows twice: 0.67 GiB more for the 416k efficientnet-b7 rows' reference)."""
    if len(blocks) == 1:
        return list(blocks[0])
    return [np.concatenate([b[j] for b in blocks]) for j in range(n_parts)]


def shape_only(raw):
    """``raw`` (an array or a dict of arrays) as zero-strided stand-ins of the same shapes and
    dtype, holding no memory: what ``OutlierScorer.fit`` reads of rows it was prepared on."""
    if isinstance(raw, dict):
        return {k: shape_only(v) for k, v in raw.items()}
    return np.broadcast_to(np.zeros((), raw.dtype), raw.shape)


class Projected:
    """The scorer's own rows of every row, already computed (``project_all``, held): given as
    ``raw=`` to ``OutlierScorer.score`` they are scored as they are, not projected again.
    vclust compare projects each spec's rows once for all the models it keeps of that spec."""

    def __init__(self, rows):
        self.rows = rows

    @property
    def shape(self):
        return self.rows.shape


def project_all(projection_, raw, chunks):
    """The scoring rows of ``raw`` (the descriptor rows as given, dask: an array or a dict of
    arrays) by the fitted ``projection_`` of a scorer, lazily, in blocks of ``chunks`` rows
    computed where the rows are: a dask array."""
    import dask
    import dask.array as da

    return da.concatenate([da.from_delayed(dask.delayed(project_block, pure=True)(projection_, p),
                                           shape=(c, projection_.n_components_), dtype=np.float32)
                           for p, c in zip(raw_parts(raw, chunks), chunks)], axis=0)


def project_block(projection_, block):
    """The scoring rows (float32) of one numpy block of the rows as given (a dict of blocks for
    a mixture) by a scorer's fitted ``projection_``: a row's bits are the same whatever rows
    are projected with it (``Preprocessor.transform_exact``), so its neighbours are too."""
    if isinstance(block, dict):
        block = {k: np.asarray(v) for k, v in block.items()}
    return projection_.transform_exact(block)


def same_rows(X, raw):
    for a in (raw.values() if isinstance(raw, dict) else [raw]):
        if a.shape[0] != X.shape[0]:
            raise ValueError(f"raw has {a.shape[0]} rows; X has {X.shape[0]}")


def _pick_task(block, locals_):
    """The rows of a block at each of the position arrays ``locals_`` (a tuple of arrays)."""
    block = np.asarray(block)
    return tuple(block[p] for p in locals_)


def projection(raw, pca_variance, max_components, random_state):
    """The scorer's own rows: the descriptor rows as given, centred and projected (no L2); a
    dict of sets is a mixture (each set reduced, weighted to equal total variance). ``raw``
    is the reference, a seeded sample already: its covariance takes every one of its rows."""
    from .preprocess import MixturePreprocessor, Preprocessor

    kw = dict(l2=False, standardize=False, pca_variance=pca_variance,
              max_components=max_components, covariance_rows=None, random_state=random_state)
    if isinstance(raw, dict):
        return MixturePreprocessor({name: Preprocessor(**kw) for name in raw}).fit(raw)
    return Preprocessor(**kw).fit(raw)


_PROJECTION_THREAD = []


def fixed_context(fn, *args):
    """``fn(*args)`` on this module's own thread with BLAS at one thread: a single-threaded BLAS
    sums in an order that depends on where it is called from (OpenBLAS's small buffers live on
    the calling thread's stack), so the projection, and with it the reference, the index and
    every score, would differ in their last bits between `vclust fit` (which prepares on a
    thread) and a fit on the main thread. Here it is computed the same way for every caller."""
    if not _PROJECTION_THREAD:
        from concurrent.futures import ThreadPoolExecutor

        _PROJECTION_THREAD.append(ThreadPoolExecutor(1, thread_name_prefix="vclust-projection"))

    def run():
        with one_blas_thread():
            return fn(*args)

    return _PROJECTION_THREAD[0].submit(run).result()


def robust(v):
    """(median, 1.4826 MAD) of ``v``, the MAD floored at 1e-12."""
    v = np.asarray(v, dtype=np.float64)
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    return med, mad if mad > 1e-12 else 1e-12


def log_floor(v):
    """log of ``v`` (float64), floored at log(1e-12)."""
    return np.log(np.maximum(np.asarray(v, dtype=np.float64), 1e-12))


def strongest(t):
    """(combined z, REASONS index of the term that gave it) of each row of the terms ``t``."""
    term = np.argmax(t, axis=1)
    return t[np.arange(len(t)), term], (term + 1).astype(np.int8)
