"""The job steps (ingest, fit, label) as sequences of library calls.

Each step takes its options as one object of the parameter table (vclust.params), reports
progress through ``say(text)`` and returns its result; the CLI and ``vclust run``
(vclust.runner) both call these with the same object.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)


def _quiet(_msg):
    pass


def check_sources(params) -> None:
    """The cheap check, before a cluster starts: every source (and the ids file) exists."""
    for src in params.sources + ([params.ids] if params.ids else []):
        if not Path(src).exists():
            raise InputError(f"{src}: no such file or folder")


def check_labels_out(labels_dir) -> None:
    """The cheap check, before a cluster starts: the labels path is a folder (or new)."""
    from .storage.fs import as_path

    p = as_path(str(labels_dir))
    if p.exists() and not p.is_dir():
        raise InputError(f"--out {p}: is a file; labels are a folder (model=<id>/batch=<id>/), "
                         "pick a folder path")


def ingest(store_path, params, say=_quiet) -> dict:
    """Ingest ``params.sources`` (an ``IngestParams``) into the store as one batch."""
    from .storage.ingest import ingest as ingest_sources

    check_sources(params)
    summary = ingest_sources(
        store_path, params.sources, name=params.name, ids_csv=params.ids, batch=params.batch,
        chunk_rows=params.chunk_rows, on_invalid=params.on_invalid,
        trust_pickle=params.trust_pickle, compression=params.compression, progress=say)
    if summary["status"] == "unchanged":
        say(f"batch {summary['batch']} is already stored from the same sources: nothing changed")
    else:
        say(f"batch {summary['batch']}: {summary['rows']} rows stored "
            f"({summary['dropped']} dropped) in {', '.join(summary['descriptors'])}")
    return summary


def check_pixels(store_path, params) -> None:
    """The cheap checks of ``vclust pixels``: the store, its batches and the image source."""
    from .images import ImageSource
    from .storage.store import Store

    # the batches named exist (or --all), checked as the command will choose them
    Store.open(store_path).choose_batches(params.batches, params.all)
    ImageSource(params.images).close()


def pixels(store_path, params, say=_quiet, batches=None) -> dict:
    """Pixel statistics of the batches ``params`` (a ``PixelsParams``) names, or ``batches``
    when it names none (vclust.pixels)."""
    from .pixels import compute_pixels

    chosen = params.batches or batches
    return compute_pixels(store_path, params.images, batches=chosen,
                          all_batches=params.all or chosen is None,
                          size=params.analysis_size, block_rows=params.block_rows, say=say)


def store_fingerprint(store) -> dict:
    """What a model was fitted on: the store's batches and their source checksums."""
    h = hashlib.sha256()
    for b in store.ledger:
        h.update(json.dumps([b["id"], b["start"], b["stop"],
                             sorted(s["sha256"] for s in b["sources"])]).encode())
    return {"store": str(store.path), "rows": store.n_rows, "batches": store.batch_ids(),
            "sha256": h.hexdigest()}


def _client():
    """The distributed client in use, or None (the command runs on this process's threads)."""
    from .numerics.blocks import distributed_imported

    if not distributed_imported():
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def hold_sets(sets: dict, say=_quiet) -> dict:
    """The descriptor sets to fit on, read into worker memory when they fit (see
    ``blocks.hold``): the preprocessing then reads the store once, not once per pass."""
    from .numerics.blocks import hold

    held, ok = hold(list(sets.values()))
    mb = sum(x.nbytes for x in sets.values()) / 1e6
    if ok:
        where = "worker memory" if _client() is not None else "memory"
        say(f"read {mb:.0f} MB of descriptors into {where}")
        return dict(zip(sets, held))
    say(f"descriptors ({mb:.0f} MB) exceed a quarter of worker memory: each pass streams them")
    return sets


def read_here(store, descriptors, rows, say=_quiet, first=None) -> dict | None:
    """The descriptor sets read straight from Zarr into this process's memory, as dask arrays
    in the blocks ``hold_sets`` gives them (``blocks.compact``), when the command runs in its
    own process (dask's scheduler set to this process's threads, as ``cluster.connect`` does
    with ``here``) and they fit its memory budget; else None. ``first``: a progress line said
    before the read starts (when it does).

    Zarr reads its chunks on its own I/O threads without dask: the read does not wait for
    dask.array's import (with numba's, 0.5-0.9 s of a fit's start on this machine), which the
    command's other threads do meanwhile; 416,314 x 512 rows read in 0.33 s against 0.49 s as a
    dask graph (page cache warm)."""
    import dask

    from .numerics.blocks import LOCAL_SCHEDULERS, compact_rows, memory_budget

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
        x = arr[0:n] if rows is None else arr.get_orthogonal_selection((rows, slice(None)))
        out[d] = np.asarray(x, dtype=np.float32)
    say(f"read {nbytes / 1e6:.0f} MB of descriptors into memory")
    return {d: _blocks_of(x, compact_rows(x.shape[1]), f"rows-{d}-{id(x)}")
            for d, x in out.items()}


def _blocks_of(x: np.ndarray, step: int, name: str):
    """A dask array whose blocks are views of ``x``'s rows (``step`` rows each). dask's
    ``from_array`` copies every block of a numpy array (2.0 s for 416,314 x 512 rows here)."""
    import dask.array as da

    bounds = list(range(0, x.shape[0], step)) + [x.shape[0]]
    graph = {(name, i, 0): x[a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}
    chunks = (tuple(b - a for a, b in zip(bounds[:-1], bounds[1:])), (x.shape[1],))
    return da.Array(graph, name, chunks, dtype=x.dtype)


def hold_reduced(z, say=_quiet):
    """The reduced rows, kept in worker memory in balanced blocks when they fit: every later
    pass (k-means iterations, metrics, outlier scores) reads memory in a few tasks."""
    from .numerics.blocks import balanced, hold

    (held,), ok = hold([z], layout=balanced)
    if ok:
        say(f"keeping the reduced rows in memory ({z.nbytes / 1e6:.0f} MB in {held.numblocks[0]} blocks)")
        return held
    say(f"reduced rows ({z.nbytes / 1e6:.0f} MB) exceed a quarter of worker memory: streaming them")
    return z


# Reduced rows up to this size are clustered in the client process: KMeans, the metrics and
# the k-range run on a numpy array with the process's BLAS threads, as a scikit-learn script
# would, instead of as a few hundred small task graphs (20,000 rows: 1.2-4.5 s a k as graphs).
# Larger ones are clustered on the workers, block by block. 1 GiB: the efficientnet-b7 space of
# the 416k case (256 components, 426 MB) took 15-27 s a k as graphs, 4-15 s here.
IN_PROCESS_BYTES = 2**30


def in_process(z):
    """The reduced rows as one numpy array when they are small enough to cluster here
    (``IN_PROCESS_BYTES``), else None."""
    if z.nbytes > IN_PROCESS_BYTES:
        return None
    return np.ascontiguousarray(z.compute(), dtype=np.float32)


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


def _prepare_outliers(scorer, raw, n, rows):
    """``scorer.prepare`` with BLAS at one thread while it runs (``blocks.one_blas_thread``,
    a process-wide setting): OpenBLAS called from two threads at two threads each (this one's
    projection, the clustering's products) oversubscribes the cores, and its waiting threads
    then cost far more than the work. A k-range on 20,000 x 57 rows took 39 s beside a thread
    running BLAS products, 0.85 s with that thread's BLAS at one thread, 0.6 s alone (the
    demo's fit: 6 s for its k-range, 3 s before vclust's KMeans ran its own passes)."""
    from .numerics.blocks import one_blas_thread

    with one_blas_thread():
        return scorer.prepare(raw, n, rows)


def fit(store_path, params, *, max_components: int = 256, sample_size: int = 20_000,
        say=_quiet):
    """Fit preprocessing, clusters and outlier scoring on the store's rows.

    ``params`` is a ``vclust.params.FitParams`` (validated there: ranges, k or k-range, one
    threshold). Each k's labels and distances are computed once, kept in worker memory, and
    used by the metrics; the chosen k's by the outlier fit, the readings and the profile too.
    Returns the unsaved ``Model``; ``model.info["metrics"]`` holds one row per k tried.
    """
    import dask

    from .storage.store import Store

    descriptors, ks, seed = params.descriptors, params.ks, params.seed
    store = Store.open(store_path)
    for d in descriptors:
        store.array(d)  # clear error for an unknown set
    if store.n_rows < max(ks) * 2:
        raise InputError(f"{store.path}: {store.n_rows} rows are too few for k={max(ks)}")
    rows = _sample_rows(store.n_rows, params.sample, seed)
    # the outlier scorer's reference (rows, projection, index, their neighbours) depends on the
    # descriptor rows only: one thread prepares it while this one preprocesses and clusters
    # (OutlierScorer.prepare; it imports pynndescent only when the index is not in the cache)
    from concurrent.futures import ThreadPoolExecutor

    from .numerics import indexcache
    from .numerics.annindex import enable_numba_cache
    from .numerics.outliers import OutlierScorer

    outlier_thread = ThreadPoolExecutor(1, thread_name_prefix="vclust-outlier-reference")
    if indexcache.empty():
        # it will build the index: pynndescent (1.7 s of import with scikit-learn, 3.4 s beside
        # the read and the preprocessing) imports on a thread of its own, while the outlier
        # thread gathers and projects the reference rows (0.9 s) once they are read
        import threading

        threading.Thread(target=_quietly, args=(enable_numba_cache,),
                         name="vclust-import-pynndescent", daemon=True).start()
    scorer = OutlierScorer(random_state=seed, threshold_rows="reference", **params.outlier_options)
    n = len(rows) if rows is not None else store.n_rows
    fitting = (f"fitting on {n} rows of {'+'.join(descriptors)}"
               + (f" (seeded sample of {store.n_rows})" if rows is not None else ""))
    sets = read_here(store, descriptors, rows, say, first=fitting)
    if sets is None:
        sets = {}
        for d in descriptors:
            x = store.descriptors(d)
            sets[d] = x[rows] if rows is not None else x
        say(fitting)
        sets = hold_sets(sets, say)
    raw = sets[descriptors[0]] if len(descriptors) == 1 else sets
    prepared = outlier_thread.submit(_prepare_outliers, scorer, raw, n, rows)
    outlier_thread.shutdown(wait=False)
    # (imported by the CLI's prefetch thread meanwhile, as are the clustering modules below;
    # none of them imports scikit-learn: DESIGN.md)
    from .numerics.preprocess import MixturePreprocessor, Preprocessor

    l2, standardize = SCALINGS[params.scaling]
    pre_kwargs = dict(l2=l2, standardize=standardize, pca_variance=params.pca_variance,
                      max_components=max_components, random_state=seed)
    if len(descriptors) == 1:
        pre = Preprocessor(**pre_kwargs).fit(sets[descriptors[0]])
        z = pre.transform(sets[descriptors[0]])
        say(f"preprocessed: {pre.n_components_} components keep "
            f"{float(np.sum(pre.explained_variance_ratio_)):.3f} of the variance")
    else:
        pre = MixturePreprocessor({d: Preprocessor(**pre_kwargs) for d in descriptors},
                                  params.weights).fit(sets)
        z = pre.transform(sets)
        say(f"preprocessed mixture: {z.shape[1]} columns from {len(descriptors)} sets")
    z = hold_reduced(z, say)
    local = in_process(z)
    from .model import Model, assign
    from .numerics.algorithms import fit_algorithm
    from .numerics.drift import reference_profile
    from .numerics.metrics import choose_k, evaluate_partition

    if local is not None:
        say(f"clustering in this process: {local.nbytes / 1e6:.0f} MB of reduced rows "
            f"(up to {IN_PROCESS_BYTES / 1e6:.0f} MB are clustered here, not as task graphs)")

    # a k-range keeps the silhouette sample's distances for its every k; one k sums them as
    # they are made (metrics.silhouette_sampled)
    table, fitted, silhouette_cache = [], {}, {} if len(ks) > 1 else None
    for kk in ks:
        clusterer = fit_algorithm(params.algorithm, z if local is None else local, kk,
                                  sample_size=sample_size, random_state=seed)
        if local is None:
            # one pass for labels and distances, kept on the workers for every later use
            labels, dist = dask.persist(*assign(clusterer, z))
        else:
            labels, dist = clusterer.predict_block(local)
        row = evaluate_partition(z if local is None else local, labels,
                                 n_clusters=clusterer.n_clusters_, random_state=seed,
                                 cache=silhouette_cache)
        row = {"k": clusterer.n_clusters_, "algorithm": params.algorithm, **{key: row[key] for key
               in ("calinski_harabasz", "davies_bouldin", "silhouette", "within_ss")}}
        table.append(row)
        fitted.setdefault(row["k"], (clusterer, labels, dist))  # (hdbscan finds its own k)
        say(f"k={kk}: CH {row['calinski_harabasz']:.1f}  DB {row['davies_bouldin']:.3f}  "
            f"silhouette {row['silhouette']:.3f}")
    best_k = choose_k(table) if len(table) > 1 else table[0]["k"]
    clusterer, labels, dist = fitted[best_k]
    del fitted, silhouette_cache  # the other k's labels leave worker memory
    if local is not None:  # the outlier fit takes them as z is cut
        import dask.array as da

        labels = da.from_array(labels, chunks=(z.chunks[0],))
        dist = da.from_array(dist, chunks=(z.chunks[0],))
        del local
    if len(table) > 1:
        say(f"chose k={best_k} (rule: vclust.numerics.metrics.choose_k)")

    if not prepared.done():
        say("outliers: waiting for the reference index")
    prepared.result()  # its error, if any, is the fit's
    # the kNN terms run on the scorer's own projection of the rows as given (outliers.py); the
    # threshold is fitted on a seeded sample of up to 20,000 rows outside the reference (every
    # row when they number at most reference_size): each row is scored when it is labelled, so
    # the fit does not query every row too
    scorer.fit(z, labels, dist, clusterer.cluster_centers_, row_index=rows, raw=raw)
    del sets, raw  # the descriptor rows are no longer needed: release them from worker memory
    labels_np, dist_np = dask.compute(labels, dist)
    at, flag_np = scorer.fit_rows_, scorer.fit_flags_
    if clusterer.name == "hdbscan":  # its noise rows count as outliers (model.with_noise)
        flag_np = flag_np | np.asarray(clusterer.noise(z).compute())[at]
    if scorer.index_source_ == "cache":
        say(f"outliers: reference index of {len(scorer.ref_rows_)} rows and its answers taken "
            "from the cache of an earlier fit of the same rows (VCLUST_CACHE_DIR; off: "
            "VCLUST_CACHE_DIR=off)")
    if len(at) == n:
        say(f"outliers: {int(flag_np.sum())} of {n} rows ({flag_np.mean():.2%}) above the threshold")
    else:
        say(f"outliers: {flag_np.mean():.2%} of a seeded sample of {len(at)} rows above the "
            "threshold (every row is scored when labelled)")

    info = {
        "fit": {"store": str(store.path), "descriptors": descriptors, "spec": params.descriptor,
                "algorithm": params.algorithm, "k": best_k, "k_tried": ks,
                "pca_variance": params.pca_variance, "scaling": params.scaling,
                "sample": params.sample, "rows_fitted": n, "seed": seed},
        "fingerprint": store_fingerprint(store),
        "metrics": table,
        "chosen_k": best_k,
        "profile": reference_profile(labels_np, dist_np, flag_np, best_k),
        "clusters": cluster_readings(labels_np, dist_np, flag_np, best_k,
                                     store.ids() if rows is None else store.ids()[rows],
                                     flag_rows=at),
    }
    return Model(descriptors, pre, clusterer, scorer, info)


def cluster_readings(labels, dist, flags, n_clusters, ids, n_examples: int = 5,
                     flag_rows=None) -> list[dict]:
    """Per cluster: size, share, outlier share, mean distance, and the ids of the images nearest
    its centre (the ones an analyst looks at to read the cluster). ``flags`` are of the rows
    at positions ``flag_rows`` (default: every row); the outlier share is over those."""
    out = []
    n = len(labels)
    if flag_rows is not None and len(flag_rows) != n:
        full = np.zeros(n, bool)
        full[flag_rows] = flags
        counted = np.zeros(n, bool)
        counted[flag_rows] = True
    else:
        full, counted = np.asarray(flags, bool), np.ones(n, bool)
    for c in range(n_clusters):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            out.append({"cluster": c, "size": 0, "share": 0.0, "outlier_share": 0.0,
                        "mean_distance": None, "examples": []})
            continue
        near = idx[np.argsort(dist[idx], kind="stable")[:n_examples]]
        out.append({"cluster": c, "size": int(len(idx)), "share": len(idx) / n,
                    "outlier_share": float(full[idx][counted[idx]].mean())
                    if counted[idx].any() else 0.0,
                    "mean_distance": float(dist[idx].mean()),
                    "examples": [str(ids[i]) for i in near]})
    return out


def save_model(model, model_dir=None, registry=None, make_current: bool = True) -> tuple[Path, str]:
    """Save to ``model_dir``, or register in ``registry`` (and make it current)."""
    if (model_dir is None) == (registry is None):
        raise InputError("pass exactly one of --model MODEL_DIR or --registry DIR")
    if model_dir is not None:
        from .storage.fs import as_path

        path = model.save(as_path(str(model_dir)))
        return path, model.model_id
    from .registry import Registry

    reg = Registry(registry)
    model_id = reg.new_model_id()
    model.model_id = model_id
    if reg.remote:  # no rename on an object store: saved in place, manifest last
        target = reg.target(model_id)
        model.save(target)
        reg.register(target, model_id=model_id, make_current=make_current)
        return reg.path(model_id), model_id
    staged = reg.stage()
    target = staged / "model"
    model.save(target)
    reg.register(target, model_id=model_id, make_current=make_current)
    return reg.path(model_id), model_id


def resolve_model(model=None, registry=None):
    """Load a model from a dir, or from a registry (its ``current`` unless ``model`` names an id)."""
    from .model import Model

    if registry is not None:
        from .registry import Registry

        reg = Registry(registry)
        return Model.load(reg.resolve(model or "current"))
    if model is None:
        raise InputError("pass --model MODEL_DIR or --registry DIR")
    return Model.load(model)


def _label_frame(store_path: str, row0: int, labels, dist, score, flag, reason, nn_row, nn_dist,
                 pixel_bounds=None):
    import pandas as pd

    from .numerics.outliers import REASONS
    from .storage.store import read_ids

    n = len(labels)
    ids = read_ids(store_path, row0, row0 + n)
    why = np.asarray(REASONS, dtype=object)[reason.astype(np.int64)]
    flag = flag.astype(bool)
    if pixel_bounds is not None:  # the pixels' plain evidence flags a row whatever the descriptors say
        from .numerics.pixels import PIXEL_REASONS, pixel_reasons
        from .pixels import read_stats

        code = pixel_reasons(read_stats(store_path, row0, row0 + n), pixel_bounds)
        hit = code > 0
        flag = flag | hit
        why = np.where(hit, np.asarray(("",) + PIXEL_REASONS, dtype=object)[code], why)
    return pd.DataFrame({
        "image_id": ids.astype(str), "row": np.arange(row0, row0 + n, dtype=np.int64),
        "cluster": labels.astype(np.int32), "distance": dist.astype(np.float32),
        "outlier_score": score.astype(np.float32), "is_outlier": flag,
        "outlier_reason": why,
        "nearest_row": nn_row.astype(np.int64), "nearest_distance": nn_dist.astype(np.float32),
    })


def pixel_bounds(store, params=None, say=_quiet) -> dict | None:
    """The pixel reasons' bounds fitted on every row of the store with pixel statistics
    (vclust.numerics.pixels.fit_thresholds), or None when no batch has them or ``params`` (a
    ``LabelParams``) turns them off."""
    from .numerics.pixels import DEFAULT_PIXEL_Z, fit_thresholds
    from .pixels import read_stats
    from .storage.pixels import batches_with_pixels

    if (params is not None and params.no_pixels) or not batches_with_pixels(store):
        return None
    stats = read_stats(store.path, 0, store.n_rows)
    have = stats.pop("have")
    stats = {k: v[have] for k, v in stats.items()}
    z = params.pixel_z if params is not None else DEFAULT_PIXEL_Z
    bounds = fit_thresholds(stats, z, params.pixel_overrides if params is not None else None)
    say(f"pixel reasons over {int(have.sum())} rows with pixel statistics: uniform at contrast "
        f"<= {bounds['uniform']:.3g}, overexposed at share >= {bounds['overexposed']:.3g}, "
        f"underexposed at brightness <= {bounds['underexposed']:.3g}, blurry at relative "
        f"sharpness <= {bounds['blurry']:.3g}")
    return bounds


# A label run whose batches hold at most this many bytes of the model's descriptor rows runs in
# the CLI's own process when no cluster is named: a LocalCluster's start, its workers' imports
# and the outlier index sent to each cost more than the work (a 20,000-row osnet batch: 9.4 s
# as a whole command with a LocalCluster; benchmarks/results/commands.md).
LABEL_HERE_BYTES = 256 * 2**20


def label_here(store_path, model, batches=None, all_batches=False) -> str | None:
    """Why ``vclust label`` may run in this process (``cluster.connect(here=...)``), or None
    when its batches are too large for that (``LABEL_HERE_BYTES``)."""
    from .storage.store import Store

    store = Store.open(store_path)
    chosen = store.choose_batches(batches, all_batches)
    rows = sum(b - a for a, b in (store.batch_rows(c) for c in chosen))
    width = sum(int(store.array(d).shape[1]) for d in model.descriptors)
    size = rows * width * 4
    if size > LABEL_HERE_BYTES:
        return None
    return (f"{rows:,} rows ({size / 1e6:.0f} MB of descriptors) are labelled here; "
            f"a LocalCluster starts above {LABEL_HERE_BYTES / 1e6:.0f} MB")


#: ``vclust fit`` with no cluster named runs in its own process up to this many bytes of
#: descriptor rows (the rows read, summed over the sets)
FIT_HERE_BYTES = 2**30


def fit_here(store_path, params) -> str | None:
    """Why ``vclust fit`` may run in this process (``cluster.connect(here=...)``), or None when
    its rows are too large for that (``FIT_HERE_BYTES``) or the store is unknown."""
    from .storage.store import Store

    try:
        store = Store.open(store_path)
        width = sum(int(store.array(d).shape[1]) for d in params.descriptors)
    except Exception:  # noqa: BLE001 - the fit itself reports it, as one line
        return None
    rows = store.n_rows if params.sample is None else min(params.sample, store.n_rows)
    size = rows * width * 4
    if size > FIT_HERE_BYTES:
        return None
    return (f"{rows:,} rows ({size / 1e6:.0f} MB of descriptors) are fitted here; "
            f"a LocalCluster starts above {FIT_HERE_BYTES / 1e6:.0f} MB")


def label(store_path, model, labels_dir, *, batches=None, all_batches: bool = False,
          skip_existing: bool = False, say=_quiet, params=None) -> dict:
    """Label batches of the store with ``model`` into ``labels_dir`` (model=<id>/batch=<id>/).

    Only the rows of the chosen batches are read: cost follows the batch, not the store. Rows
    of batches with pixel statistics (``vclust pixels``) that give a pixel reason are flagged
    with it (``params``, a ``LabelParams``, sets or turns off the bounds).
    """
    import dask

    from .labels import list_partitions, write_batch
    from .storage.store import Store

    check_labels_out(labels_dir)
    store = Store.open(store_path)
    bounds = pixel_bounds(store, params, say)
    chosen = store.choose_batches(batches, all_batches)
    done = set()
    if skip_existing:
        done = {(p["model"], p["batch"]) for p in list_partitions(labels_dir)}
    written = []
    for b in chosen:
        if (model.model_id, b) in done:
            say(f"batch {b} already labelled by model {model.model_id}: kept")
            continue
        start, stop = store.batch_rows(b)
        say(f"labelling batch {b}: rows {start}..{stop - 1}")
        sets = {d: store.descriptors(d, start, stop) for d in model.descriptors}
        outs = model.apply(sets, row_offset=start, reasons=True, nearest=True)
        offsets = np.cumsum((start,) + outs[0].chunks[0][:-1])
        # the blocks as they are: optimised one array at a time (to_delayed's default, and
        # dask.optimize alike) each of the five outlier arrays got its own copy of the shared
        # scoring task, and a block was scored five times (tests/test_jobs_e2e.py counts)
        parts = [dask.delayed(_label_frame)(str(store.path), int(o), *blocks, pixel_bounds=bounds)
                 for o, *blocks in zip(offsets, *(a.to_delayed(optimize_graph=False).ravel()
                                                  for a in outs))]
        write_batch(labels_dir, model.model_id, b, parts)
        written.append({"batch": b, "rows": stop - start})
        say(f"labelled batch {b}: {stop - start} rows")
    return {"model": model.model_id, "labelled": written}
