"""``vclust fit``: the store's rows read (into this process or worker memory; rows over
RELEASE_BYTES in a local uncompressed store are streamed from it on each pass instead), the
outlier reference prepared on a thread meanwhile (its rows gathered and projected first, for
rows read into memory over RELEASE_BYTES), the rows reduced, then the fit core
(vclust.model.core) makes the partition and the model. ``vclust compare`` reduces and fits
through the same core (vclust.jobs.compare)."""

from __future__ import annotations

import numpy as np

from ..numerics import DEFAULT_MAX_COMPONENTS, FIT_SAMPLE, LEADING_EIGH_DIMS


def _quiet(_msg):
    pass


#: the reduced rows keep at most this many principal components per set
MAX_COMPONENTS = DEFAULT_MAX_COMPONENTS


def hold_sets(sets: dict, say=_quiet) -> dict:
    """The descriptor sets to fit on, read into worker memory when they fit (see
    ``blocks.hold``): the preprocessing then reads the store once, not once per pass."""
    from ..numerics.blocks import distributed_client, hold

    held, ok = hold(list(sets.values()))
    mb = sum(x.nbytes for x in sets.values()) / 1e6
    if ok:
        where = "worker memory" if distributed_client() is not None else "memory"
        say(f"read {mb:.0f} MB of descriptors into {where}")
        return dict(zip(sets, held))
    say(f"descriptors ({mb:.0f} MB) exceed a quarter of worker memory: each pass streams them")
    return sets


def read_here(store, descriptors, rows, say=_quiet, first=None) -> dict | None:
    """The descriptor sets read straight from Zarr into this process's memory, as numpy arrays
    (``as_blocks`` makes them the dask arrays the preprocessing takes), when the command runs
    in its own process (dask's scheduler set to this process's threads, as ``cluster.connect``
    does with ``here``) and they fit its memory budget; else None. ``first``: a progress line
    said before the read starts (when it does).

    Read without dask (``rawrows.RawRows`` from the chunk files where the store allows it, on
    as many threads as cores; else zarr on its own I/O threads): the read does not wait for
    dask.array's import, which the command's other threads do meanwhile, and it is faster than
    the same read as a dask graph (benchmarks/RESULTS.md, figures behind the code)."""
    import dask
    from dask.system import CPU_COUNT

    from ..numerics.blocks import LOCAL_SCHEDULERS, memory_budget
    from ..storage.rawrows import RawRows, read_rows

    # only where this process was chosen to run the graphs (cluster.connect(here=...)): a fit
    # sent to a scheduler that has since gone must fail as such, not go on here
    if dask.config.get("scheduler", None) not in LOCAL_SCHEDULERS:
        return None
    width = {d: int(store.array(d).shape[1]) for d in descriptors}
    n = store.n_rows if rows is None else len(rows)
    nbytes = n * sum(width.values()) * 4
    if nbytes > memory_budget():
        return None
    if first:
        say(first)
    out = {}
    for d in descriptors:
        arr = store.array(d)
        if rows is not None:  # (sorted, unique: _sample_rows)
            x = read_rows(arr, rows)
        else:
            raw = RawRows.of(arr)
            x = raw.read(0, n, threads=CPU_COUNT) if raw is not None else arr[0:n]
        out[d] = np.asarray(x, dtype=np.float32)
    say(f"read {nbytes / 1e6:.0f} MB of descriptors into memory")
    return out


def as_blocks(arrays: dict) -> dict:
    """``read_here``'s numpy arrays as dask arrays in the blocks ``hold_sets`` gives them
    (``blocks.compact``), each block a view of its array's rows."""
    from . import imports
    from ..numerics.blocks import compact_rows

    imports.wait_for("dask.array")  # imported on the import thread, not beside it
    return {d: _blocks_of(x, compact_rows(x.shape[1]), f"rows-{d}-{id(x)}")
            for d, x in arrays.items()}


def _blocks_of(x: np.ndarray, step: int, name: str):
    """A dask array whose blocks are views of ``x``'s rows (``step`` rows each). dask's
    ``from_array`` copies every block of a numpy array (benchmarks/RESULTS.md, figures behind the code)."""
    import dask.array as da

    bounds = list(range(0, x.shape[0], step)) + [x.shape[0]]
    graph = {(name, i, 0): x[a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}
    chunks = (tuple(b - a for a, b in zip(bounds[:-1], bounds[1:])), (x.shape[1],))
    return da.Array(graph, name, chunks, dtype=x.dtype)


def hold_reduced(z, say=_quiet):
    """The reduced rows, kept in worker memory in balanced blocks when they fit: every later
    pass (k-means iterations, metrics, outlier scores) reads memory in a few tasks."""
    from ..numerics.blocks import balanced, hold

    (held,), ok = hold([z], layout=balanced)
    if ok:
        say(f"keeping the reduced rows in memory ({z.nbytes / 1e6:.0f} MB in {held.numblocks[0]} blocks)")
        return held
    say(f"reduced rows ({z.nbytes / 1e6:.0f} MB) exceed a quarter of worker memory: streaming them")
    return z


# Reduced rows up to this size are clustered in the client process: KMeans, the metrics and
# the k-range run on a numpy array with the process's BLAS threads, as a scikit-learn script
# would, instead of as a few hundred small task graphs. Larger ones are clustered on the
# workers, block by block. 1 GiB holds the efficientnet-b7 space of the 416k case
# (benchmarks/RESULTS.md, figures behind the code).
IN_PROCESS_BYTES = 2**30


def in_process(z):
    """The reduced rows as one numpy array when they are small enough to cluster here
    (``IN_PROCESS_BYTES``), else None."""
    if z.nbytes > IN_PROCESS_BYTES:
        return None
    return np.ascontiguousarray(z.compute(), dtype=np.float32)


#: descriptor rows above this size are streamed from a local uncompressed store on each pass
#: (``_streams``); read into memory (another store), they are freed once reduced and prepared
#: for the outlier fit, before the clustering (below it they stay: freeing waits for the
#: outlier reference, which is otherwise built while the rows are clustered)
RELEASE_BYTES = 2**30


def _blocks_like(local: np.ndarray, z):
    """``local`` as a dask array in the blocks ``hold_reduced`` would give ``z``."""
    import dask.array as da

    from ..numerics.blocks import balanced

    chunks = balanced(z).chunks
    name = f"reduced-{id(local)}"
    bounds = np.cumsum((0,) + chunks[0])
    graph = {(name, i, 0): local[a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}
    return da.Array(graph, name, (chunks[0], (local.shape[1],)), dtype=local.dtype)


def _materialised(z) -> bool:
    """True when ``z``'s blocks are computed (numpy blocks here, or futures on the workers),
    not a graph still reading the descriptor rows."""
    from ..numerics.blocks import distributed_imported

    kinds = (np.ndarray,)
    if distributed_imported():
        from distributed import Future

        kinds += (Future,)
    return all(isinstance(v, kinds) for v in dict(z.__dask_graph__()).values())


def _sample_rows(n_rows: int, sample: int | None, seed: int) -> np.ndarray | None:
    if sample is None or sample >= n_rows:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=sample, replace=False))


SCALINGS = {"l2": (True, False), "standardize": (False, True),  # (l2, standardize)
            "l2+standardize": (True, True), "none": (False, False)}


def _quietly(fn):
    """``fn()`` on a helper thread whose work the command repeats where it needs it: a failure
    here is reported there, as one line, not as a thread's traceback."""
    try:
        fn()
    except Exception:  # noqa: BLE001
        pass


def _prepare_outliers(scorer, raw, n, rows, projected, wide):
    """``scorer.prepare`` on the fit's outlier thread. BLAS is at one thread throughout: ``fit``
    holds ``blocks.one_blas_thread`` for this thread's whole life (it waits for its result
    inside), so this projection and the clustering's products do not oversubscribe the cores
    (benchmarks/RESULTS.md, figures behind the code).

    The reference rows are gathered and projected at once (vclust's numpy code, and scipy.linalg
    for a ``wide`` set, imported on the import thread first: nothing of scikit-learn, numba or
    pynndescent, which the import thread enters), while pynndescent imports on vclust's import
    thread; the index waits for that import (``imports.wait``) and never imports it here."""
    from . import imports
    from ..storage import indexcache

    def before_index():
        projected()
        imports.wait()  # pynndescent (and scikit-learn) imported on the import thread, not here

    if wide:  # its projection's eigendecomposition is scipy's (queued by ``fit``)
        imports.wait_for("scipy.linalg")
    return scorer.prepare(raw, n, rows, cache=indexcache, projected=before_index)


def _projected_first(projected, prepared, say):
    """Rows over RELEASE_BYTES (freed before the clustering): wait until the outlier reference
    rows are gathered and projected (``projected``, an Event; ``prepared``, the prepare's
    future) before the preprocessing, whose temporaries and theirs would stack on the rows
    (efficientnet-b7, 416k rows: peak 6.64 -> 5.98 GiB; RESULTS.md); the index over the
    projected rows is built beside it."""
    say("outliers: projecting the reference rows before the preprocessing (rows over "
        f"{RELEASE_BYTES / 2**30:g} GiB: the two would stack their memory on the rows)")
    while not projected.wait(0.2) and not prepared.done():
        pass
    if not projected.is_set():
        prepared.result()  # its error, if any, is the fit's
    say("outliers: reference rows projected")


def _streams(store, descriptors, rows) -> dict | None:
    """``{set: rawrows.RawRows}`` of ``descriptors`` when the fit reads every row from the
    store on each pass instead of into memory, else None: all rows (no sample), run in this
    process, over ``RELEASE_BYTES``, and in uncompressed chunk files on this machine (a
    compressed or remote store is read once). A read into fresh memory costs more than the
    passes' reads from the page cache: efficientnet-b7's 4,263 MB took 3.3-12.4 s to read into
    memory and 0.4-0.6 s into memory used before (first touches), and its fit with a k-range
    63.8-76.4 s at a peak of 5.6 GiB read, 58.1-58.7 s at 2.6 GiB streamed
    (benchmarks/RESULTS.md)."""
    import dask

    from ..numerics.blocks import LOCAL_SCHEDULERS
    from ..storage.rawrows import RawRows

    if rows is not None or dask.config.get("scheduler", None) not in LOCAL_SCHEDULERS:
        return None
    if store.n_rows * row_bytes(store, descriptors) <= RELEASE_BYTES:
        return None
    raws = {d: RawRows.of(store.array(d)) for d in descriptors}
    return raws if all(r is not None for r in raws.values()) else None


def _read_and_prepare(store, descriptors, rows, scorer, say, wide):
    """(the descriptor sets as dask arrays; where they are: "memory" (read into this process),
    "streamed" (read from the store's chunk files on each pass, ``_streams``) or "workers";
    the future of ``_prepare_outliers``, its ``projected`` Event). The outlier scorer's reference
    (rows, projection, index, their neighbours) depends on the descriptor rows only: one
    thread prepares it while the fit preprocesses and clusters (``OutlierScorer.prepare``; it
    imports pynndescent only when the index is not in the cache)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from . import imports

    n = len(rows) if rows is not None else store.n_rows
    fitting = (f"fitting on {n} rows of {'+'.join(descriptors)}"
               + (f" (seeded sample of {store.n_rows})" if rows is not None else ""))
    projected = threading.Event()
    outlier_thread = ThreadPoolExecutor(1, thread_name_prefix="vclust-outlier-reference")

    def submit(sets):
        raw = sets[descriptors[0]] if len(descriptors) == 1 else sets
        out = outlier_thread.submit(_prepare_outliers, scorer, raw, n, rows, projected.set, wide)
        outlier_thread.shutdown(wait=False)
        return out

    raws = _streams(store, descriptors, rows)
    if raws is not None:
        imports.wait_for("dask.array")
        from ..numerics.blocks import compact
        from ..numerics.outlier_rows import with_row_reader

        # in the blocks the rows read into memory take (``as_blocks``), whatever the store's
        # chunking: the same sums in the same order, so the same model to the bit; the outlier
        # reference's rows read as exactly those rows
        sets = {d: with_row_reader(compact(store.descriptors(d)),
                                   raws[d].window(0, store.n_rows).take)
                for d in descriptors}
        say(fitting)
        say(f"streaming {sum(x.nbytes for x in sets.values()) / 1e6:.0f} MB of descriptors from "
            f"the store on each pass (rows over {RELEASE_BYTES / 2**30:g} GiB are not read into "
            "memory)")
        return sets, "streamed", submit(sets), projected
    read = read_here(store, descriptors, rows, say, first=fitting)
    if read is not None:
        # the reference is gathered and projected from the numpy rows while dask.array (which
        # the dask arrays below need) and pynndescent still import; the fit's raw rows are dask
        # views of the same arrays, which the scorer takes for those it was prepared on
        prepared = submit(read)
        return as_blocks(read), "memory", prepared, projected
    imports.wait_for("dask.array")
    sets = {}
    for d in descriptors:
        x = store.descriptors(d)
        sets[d] = x[rows] if rows is not None else x
    say(fitting)
    sets = hold_sets(sets, say)
    return sets, "workers", submit(sets), projected


def fit(store_path, params, *, max_components: int = MAX_COMPONENTS,
        sample_size: int = FIT_SAMPLE, say=_quiet):
    """Fit preprocessing, clusters and outlier scoring on the store's rows.

    ``params`` is a ``vclust.jobs.params.FitParams`` (validated there: ranges, k or k-range,
    one threshold). Each k's labels and distances are computed once, kept in worker memory,
    and used by the metrics; the chosen k's by the outlier fit, the readings and the profile
    too (vclust.model.core). Returns the unsaved ``Model``; ``model.info["metrics"]`` holds one
    row per k tried.
    """
    from ..numerics.blocks import one_blas_thread

    # BLAS at one thread for the whole fit, not only while the outlier thread prepares: OpenBLAS's
    # thread count is one setting for the process, and a product or eigendecomposition on this
    # thread sums in another order at two threads, so the model's last bits depended on whether
    # the outlier thread was inside its prepare at that moment (the same rows fitted after an
    # ingest in one process gave other components than in a fresh one; RESULTS.md)
    with one_blas_thread():
        return _fit(store_path, params, max_components, sample_size, say)


def _fit(store_path, params, max_components, sample_size, say):
    from . import imports
    from ..model.core import build_model, fit_partition
    from ..storage import indexcache
    from ..numerics.annindex import enable_numba_cache
    from ..numerics.outliers import OutlierScorer

    descriptors, ks, seed = params.descriptors, params.ks, params.seed
    store = check_fit(store_path, params)  # also for library callers that skip fit_here
    rows = _sample_rows(store.n_rows, params.sample, seed)
    # dask.array on the import thread before pynndescent (a no-op where the command queued it
    # already): a library call would otherwise import it here, beside pynndescent's import,
    # and both enter scipy and numba
    imports.background("dask.array")
    wide = any(store.array(d).shape[1] >= LEADING_EIGH_DIMS for d in descriptors)
    if wide:  # its eigendecompositions take scipy's (preprocess._leading_eigh), imported there
        imports.background("scipy.linalg")
    if indexcache.empty():
        # it will build the index: pynndescent imports on vclust's import thread (after what
        # the command queued there) while this thread reads the rows (benchmarks/RESULTS.md)
        imports.background(enable_numba_cache)
    scorer = OutlierScorer(random_state=seed, threshold_rows="reference", **params.outlier_options)
    sets, where, prepared, projected = _read_and_prepare(store, descriptors, rows, scorer, say,
                                                         wide)
    here = where != "workers"
    raw = sets[descriptors[0]] if len(descriptors) == 1 else sets
    raw_bytes = sum(x.nbytes for x in sets.values())
    # rows held in memory: large ones are freed before the clustering (streamed ones are not held)
    release = raw_bytes > RELEASE_BYTES and where != "streamed"
    if release:
        _projected_first(projected, prepared, say)
    if here:
        # the reduction imports nothing the import thread may still be importing (it needs
        # vclust's numpy code and dask.array, queued before pynndescent): it starts while
        # pynndescent imports
        imports.wait_for("vclust.numerics.preprocess")
    else:
        imports.wait()
    if wide:
        imports.wait_for("scipy.linalg")
    pre, z = reduce_sets(sets, descriptors, params, max_components, say)
    if here:  # the rows are in this process: the reduced rows computed once, as one array
        local = in_process(z)
        if local is not None:
            z = _blocks_like(local, z)
            say(f"keeping the reduced rows in memory ({local.nbytes / 1e6:.0f} MB)")
        else:
            z = hold_reduced(z, say)
    else:
        z = hold_reduced(z, say)
        local = in_process(z)
    if _materialised(z) and release:
        # the reduced rows no longer need the descriptor rows, nor does the outlier fit once
        # prepared: free them before the clustering (peak memory of a wide set's fit)
        prepared.result()
        raw = scorer.release_rows()
        sets = None
        say(f"descriptor rows freed ({raw_bytes / 1e6:.0f} MB): the reduced rows and the "
            "outlier reference are all the fit needs from here")
    if local is not None:
        say(f"clustering in this process: {local.nbytes / 1e6:.0f} MB of reduced rows "
            f"(up to {IN_PROCESS_BYTES / 1e6:.0f} MB are clustered here, not as task graphs)")
    # nothing imports in the background from here on: the clustering may import
    # scikit-learn, which pynndescent's import enters from another module
    imports.wait()
    # a k-range keeps the silhouette sample's distances for its every k; one k sums them as
    # they are made (metrics.silhouette_sampled)
    partition = fit_partition(z, params.algorithm, ks, local=local,
                              sample_size=sample_size, seed=seed, say=say,
                              cache={} if len(ks) > 1 else None)
    del local
    if not prepared.done():
        say("outliers: waiting for the reference index")
    ids = store.ids()  # the model's examples name rows by id: read while the index builds
    prepared.result()  # its error, if any, is the fit's
    fit_info = {"store": str(store.path), "descriptors": descriptors, "spec": params.descriptor,
                "k_tried": ks, "pca_variance": params.pca_variance, "scaling": params.scaling,
                "sample": params.sample, "seed": seed}
    model, _, _ = build_model(descriptors, pre, partition, scorer, z, raw, store=store,
                              fit_info=fit_info, rows=rows, say=say, ids=ids)
    return model


def reduce_sets(sets: dict, descriptors, params, max_components=MAX_COMPONENTS, say=_quiet):
    """(fitted preprocessing, reduced rows) of the descriptor sets ``sets`` (dask arrays): one
    set's ``Preprocessor``, or a ``MixturePreprocessor`` of several (``params.weights``)."""
    from ..numerics.preprocess import MixturePreprocessor, Preprocessor

    l2, standardize = SCALINGS[params.scaling]
    kw = dict(l2=l2, standardize=standardize, pca_variance=params.pca_variance,
              max_components=max_components, random_state=params.seed)
    if len(descriptors) == 1:
        pre = Preprocessor(**kw).fit(sets[descriptors[0]])
        say(f"preprocessed: {pre.n_components_} components keep "
            f"{float(np.sum(pre.explained_variance_ratio_)):.3f} of the variance"
            + pre.sampled_note(sets[descriptors[0]].shape[0]))
        return pre, pre.transform(sets[descriptors[0]])
    pre = MixturePreprocessor({d: Preprocessor(**kw) for d in descriptors},
                              params.weights).fit(sets)
    z = pre.transform(sets)
    say(f"preprocessed mixture: {z.shape[1]} columns from {len(descriptors)} sets")
    return pre, z


#: ``vclust fit`` with no cluster named runs in its own process up to this many bytes of
#: descriptor rows (the rows read, summed over the sets), and at most ``memory_budget()``
FIT_HERE_BYTES = 8 * 2**30


def row_bytes(store, descriptors) -> int:
    """Bytes of one row of the store's sets ``descriptors`` (names), as float32."""
    return 4 * sum(int(store.array(d).shape[1]) for d in descriptors)


def check_fit(store_path, params):
    """The cheap checks of ``vclust fit`` before any cluster starts (one InputError line each,
    as the fit itself would raise them): the store, every descriptor set named, the rows for
    the largest k. Returns the opened store."""
    from ..model.core import check_rows
    from ..storage.store import Store

    store = Store.open(store_path)
    for d in params.descriptors:
        store.array(d)
    check_rows(store, params.ks)
    return store


def fit_here(store_path, params) -> str | None:
    """Why ``vclust fit`` may run in this process (``cluster.connect(here=...)``), or None when
    its rows are too large for that (``FIT_HERE_BYTES``). Its checks come first
    (``check_fit``): bad input is one InputError line before any cluster starts."""
    from ..numerics.blocks import memory_budget

    store = check_fit(store_path, params)
    rows = store.n_rows if params.sample is None else min(params.sample, store.n_rows)
    size = rows * row_bytes(store, params.descriptors)
    limit = min(FIT_HERE_BYTES, memory_budget())
    if size > limit:
        return None
    return (f"{rows:,} rows ({size / 1e6:.0f} MB of descriptors) are fitted here; "
            f"a LocalCluster starts above {limit / 1e6:.0f} MB (a quarter of the memory available)")


