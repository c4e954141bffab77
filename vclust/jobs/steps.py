"""The job steps (ingest, pixels, label; fit in vclust.jobs.fit) as sequences of library calls.

Each step takes its options as one object of the parameter table (vclust.jobs.params), reports
progress through ``say(text)`` and returns its result; the CLI and ``vclust run``
(vclust.jobs.runner) both call these with the same object.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError
# the steps in one namespace for the CLI and the runner (``jobs.fit``, ``jobs.save_model``, ...)
from ..model.registry import resolve_model, save_model  # noqa: F401
from .fit import fit, fit_here, row_bytes  # noqa: F401

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
    from ..storage.fs import as_path

    p = as_path(str(labels_dir))
    if p.exists() and not p.is_dir():
        raise InputError(f"--out {p}: is a file; labels are a folder (model=<id>/batch=<id>/), "
                         "pick a folder path")


def ingest(store_path, params, say=_quiet) -> dict:
    """Ingest ``params.sources`` (an ``IngestParams``) into the store as one batch."""
    from ..storage.ingest import ingest as ingest_sources

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
    from ..storage.images import ImageSource
    from ..storage.store import Store

    # the batches named exist (or --all), checked as the command will choose them
    Store.open(store_path).choose_batches(params.batches, params.all)
    ImageSource(params.images).close()


#: images `vclust pixels` measures on the command's own threads (libjpeg-turbo and the pixel
#: kernels release the GIL) when no cluster is named; a LocalCluster starts above that
PIXELS_HERE_IMAGES = 10_000


def pixels_here(store_path, params) -> str | None:
    """Why `vclust pixels` may run in this process: the chosen batches hold at most
    ``PIXELS_HERE_IMAGES`` rows (one image each); None for more, or where the store or the
    batches cannot be read (the command reports that)."""
    from ..storage.store import Store

    try:
        store = Store.open(store_path)
        chosen = store.choose_batches(params.batches, params.all)
        rows = sum(b - a for a, b in (store.batch_rows(c) for c in chosen))
    except Exception:  # noqa: BLE001 - the command itself says what is wrong, as one line
        return None
    if rows > PIXELS_HERE_IMAGES:
        return None
    return (f"{rows:,} images are measured here; a LocalCluster starts above "
            f"{PIXELS_HERE_IMAGES:,}")


def pixels(store_path, params, say=_quiet, batches=None) -> dict:
    """Pixel statistics of the batches ``params`` (a ``PixelsParams``) names, or ``batches``
    when it names none (vclust.jobs.pixels)."""
    from .pixels import compute_pixels

    chosen = params.batches or batches
    return compute_pixels(store_path, params.images, batches=chosen,
                          all_batches=params.all or chosen is None,
                          size=params.analysis_size, block_rows=params.block_rows, say=say)


def reason_lists(mask, strongest) -> list:
    """``numerics.outliers.reason_names`` of every row (arrays ``mask``, ``strongest``): the
    labels' ``outlier_reasons`` column, each row its own list. Named once per distinct pair, a
    handful: 0.16 s against 0.61 s for 416,314 rows named one by one (benchmarks/RESULTS.md,
    the sixteenth session)."""
    from ..numerics.outliers import reason_names

    span = 64  # above every REASONS index
    pairs, at = np.unique(np.asarray(mask, np.int64) * span + np.asarray(strongest, np.int64),
                          return_inverse=True)
    named = [reason_names(int(p // span), int(p % span)) for p in pairs]
    return [list(named[i]) for i in at.ravel().tolist()]


#: while ``ids_read_once`` holds: {(store path, first row, rows): (ids, delivered ids)} of the
#: blocks ``_label_frame`` read in this process
_IDS_READ = None


@contextmanager
def ids_read_once():
    """Within it, ``_label_frame`` reads a block's ids and delivered ids from the store once in
    this process, for every model that labels the block: `vclust compare` labels the same rows
    with each model it keeps (18 in the brief's grid; 0.5-0.9 s a labelling of 416,314 rows,
    on one thread). Rows once committed keep their ids, so a block's ids do not change."""
    global _IDS_READ
    _IDS_READ = {}
    try:
        yield
    finally:
        _IDS_READ = None


def _frame_ids(store_path: str, row0: int, n: int):
    """(ids, delivered ids) of rows [row0, row0 + n), as str arrays; from ``ids_read_once``'s
    memo when it holds them."""
    from ..storage.store import read_delivered_ids, read_ids

    memo, key = _IDS_READ, (store_path, row0, n)
    got = None if memo is None else memo.get(key)
    if got is None:
        got = (read_ids(store_path, row0, row0 + n).astype(str),
               # spelled as delivered: what the CSV export writes
               read_delivered_ids(store_path, row0, row0 + n).astype(str))
        if memo is not None:
            memo[key] = got
    return got


def _label_frame(store_path: str, row0: int, labels, dist, score, flag, reason, nn_row, nn_dist,
                 mask, pixel_bounds=None):
    import pandas as pd

    from ..numerics.outliers import REASONS

    n = len(labels)
    ids, delivered = _frame_ids(store_path, row0, n)
    why = np.asarray(REASONS, dtype=object)[reason.astype(np.int64)]
    # every reason that fired, strongest first; a pixel reason leads (the plain evidence)
    reasons = reason_lists(mask, reason)
    flag = flag.astype(bool)
    if pixel_bounds is not None:  # the pixels' plain evidence flags a row whatever the descriptors say
        from ..numerics.pixels import PIXEL_REASONS, pixel_reasons
        from .pixels import read_stats

        code = pixel_reasons(read_stats(store_path, row0, row0 + n), pixel_bounds)
        hit = code > 0
        flag = flag | hit
        why = np.where(hit, np.asarray(("",) + PIXEL_REASONS, dtype=object)[code], why)
        for i in np.flatnonzero(hit):
            reasons[i] = [PIXEL_REASONS[code[i] - 1]] + reasons[i]
    return pd.DataFrame({
        "image_id": ids, "row": np.arange(row0, row0 + n, dtype=np.int64),
        "cluster": labels.astype(np.int32), "distance": dist.astype(np.float32),
        "outlier_score": score.astype(np.float32), "is_outlier": flag,
        "outlier_reason": why,
        "nearest_row": nn_row.astype(np.int64), "nearest_distance": nn_dist.astype(np.float32),
        "path": delivered, "outlier_reasons": reasons,
    })


def pixel_bounds(store, params=None, say=_quiet) -> dict | None:
    """The pixel reasons' bounds fitted on every row of the store with pixel statistics
    (vclust.numerics.pixels.fit_thresholds), or None when no batch has them or ``params`` (a
    ``LabelParams``) turns them off."""
    from ..numerics.pixels import DEFAULT_PIXEL_Z, fit_thresholds
    from .pixels import read_stats
    from ..storage.pixels import batches_with_pixels

    if (params is not None and params.no_pixels) or not batches_with_pixels(store):
        return None
    stats = read_stats(store.path, 0, store.n_rows)
    have = stats.pop("have")
    stats = {k: v[have] for k, v in stats.items()}
    z = params.pixel_z if params is not None else DEFAULT_PIXEL_Z
    bounds = fit_thresholds(stats, z, params.pixel_overrides if params is not None else None)
    say(f"pixel reasons over {int(have.sum())} rows with pixel statistics: overexposed at "
        f"clipped share >= {bounds['overexposed']:.3g}, uniform at relative structure <= "
        f"{bounds['uniform']:.3g}, underexposed at highlight <= {bounds['underexposed']:.3g}, "
        f"blurry at detail <= {bounds['blurry']:.3g}"
        + (f" (fitted to these rows: {', '.join(bounds['guarded'])})" if bounds["guarded"] else ""))
    return bounds


# A label run whose batches hold at most this many bytes of the model's descriptor rows runs in
# the CLI's own process when no cluster is named: a LocalCluster's start, its workers' imports
# and the outlier index sent to each cost more than the work (a 20,000-row osnet batch: 9.4 s
# as a whole command with a LocalCluster; benchmarks/results/commands.md).
LABEL_HERE_BYTES = 256 * 2**20

#: ``vclust label`` streams the rows (a block at a time, never all held), so it runs in its own
#: process up to this many bytes of them: a LocalCluster only adds its start and the copies
#: between processes (416k x 2560 rows: 56-63 s at 1.3 GiB here, 78 s at 3.1 GiB on a
#: LocalCluster; benchmarks/RESULTS.md, "A wide set's fit")
LABEL_STREAM_BYTES = 8 * 2**30


def label_here(store_path, model, batches=None, all_batches=False) -> str | None:
    """Why ``vclust label`` may run in this process (``cluster.connect(here=...)``), or None
    when its batches are too large for that (``LABEL_STREAM_BYTES``)."""
    from ..storage.store import Store

    store = Store.open(store_path)
    chosen = store.choose_batches(batches, all_batches)
    rows = sum(b - a for a, b in (store.batch_rows(c) for c in chosen))
    return _here(rows, rows * row_bytes(store, model.descriptors), "labelled",
                 LABEL_STREAM_BYTES)


def _here(rows: int, size: int, done: str, limit: int = LABEL_HERE_BYTES) -> str | None:
    if size > limit:
        return None
    return (f"{rows:,} rows ({size / 1e6:.0f} MB of descriptors) are {done} here; "
            f"a LocalCluster starts above {limit / 1e6:.0f} MB")


def store_here(store_path, descriptors, done: str) -> str | None:
    """Why a command reading the store's rows of ``descriptors`` (names) may run in this
    process: `vclust report` (the model's sets) and `vclust compare` (every set its specs name),
    as `vclust label` of as many rows (``LABEL_HERE_BYTES``); None when the rows are larger.
    A store that cannot be opened, or lacks a set, is one InputError line here, before any
    cluster starts."""
    from ..storage.store import Store

    store = Store.open(store_path)
    return _here(store.n_rows, store.n_rows * row_bytes(store, descriptors), done)


def _store_bytes(store_path, descriptors=None) -> tuple[int | None, int]:
    """(rows, bytes) of the store's rows of ``descriptors`` (default: every set); (None, 0)
    when it cannot be opened."""
    from ..storage.store import Store

    try:
        store = Store.open(store_path)
        size = store.n_rows * row_bytes(store, store.names if descriptors is None
                                        else descriptors)
    except Exception:  # noqa: BLE001 - the command itself says what is wrong, as one line
        return None, 0
    return store.n_rows, size


def _source_bytes(sources) -> int | None:
    """Bytes on disk of local source files and folders; None when one cannot be read."""
    import os

    try:
        return sum(os.path.getsize(s) if os.path.isfile(s) else
                   sum(f.stat().st_size for f in Path(s).rglob("*") if f.is_file())
                   for s in sources)
    except OSError:
        return None


def ingest_here(params) -> str | None:
    """Why `vclust ingest` may run in this process: its local source files hold at most
    ``LABEL_HERE_BYTES`` (their size on disk); None for larger or unreadable sources."""
    size = _source_bytes(params.sources)
    if size is None or size > LABEL_HERE_BYTES:
        return None
    return (f"{size / 1e6:.0f} MB of sources are ingested here; a LocalCluster starts above "
            f"{LABEL_HERE_BYTES / 1e6:.0f} MB")


def run_here(spec) -> str | None:
    """Why `vclust run` of a job spec (vclust.jobs.runner) may run in this process: the store's
    rows of every set (if it exists yet) and the sources of its ingest step hold at most
    ``LABEL_HERE_BYTES`` together; None for more, or for a spec that makes its own data."""
    if "synth" in spec.steps:
        return None
    size = 0
    if "ingest" in spec.steps:
        size = _source_bytes(spec.ingest.sources)
        if size is None:
            return None
    from ..storage.fs import as_path

    if as_path(str(spec.store)).exists():
        rows, stored = _store_bytes(spec.store)
        if rows is None:
            return None
        size += stored
    if size > LABEL_HERE_BYTES:
        return None
    return (f"{size / 1e6:.0f} MB of stored rows and sources are processed here; a LocalCluster "
            f"starts above {LABEL_HERE_BYTES / 1e6:.0f} MB")


def label(store_path, model, labels_dir, *, batches=None, all_batches: bool = False,
          skip_existing: bool = False, say=_quiet, params=None) -> dict:
    """Label batches of the store with ``model`` into ``labels_dir`` (model=<id>/batch=<id>/).

    Only the rows of the chosen batches are read: cost follows the batch, not the store. Rows
    of batches with pixel statistics (``vclust pixels``) that give a pixel reason are flagged
    with it (``params``, a ``LabelParams``, sets or turns off the bounds).
    """
    import dask

    from ..storage.labels import list_partitions, write_batch
    from . import progress
    from ..storage.store import Store

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
        outs = model.apply(sets, row_offset=start, reasons=True, nearest=True, all_reasons=True)
        offsets = np.cumsum((start,) + outs[0].chunks[0][:-1])
        # the blocks as they are: optimised one array at a time (to_delayed's default, and
        # dask.optimize alike) each of the five outlier arrays got its own copy of the shared
        # scoring task, and a block was scored five times (tests/test_jobs_e2e.py counts)
        parts = [dask.delayed(_label_frame)(str(store.path), int(o), *blocks, pixel_bounds=bounds)
                 for o, *blocks in zip(offsets, *(a.to_delayed(optimize_graph=False).ravel()
                                                  for a in outs))]
        write_batch(labels_dir, model.model_id, b, parts,  # progress lines within the batch
                    compute=lambda writes, b=b, n=stop - start: progress.compute(
                        writes, say, f"labelling batch {b}", n, rows_of=int))
        written.append({"batch": b, "rows": stop - start})
        say(f"labelled batch {b}: {stop - start} rows")
    return {"model": model.model_id, "labelled": written}
