"""``vclust pixels``: per-row pixel statistics of a store's batches, from the images in place.

For each row of the chosen batches, its image (the row's id matched in the zip or folder as the
report matches it, vclust.storage.images) is read and decoded once, and the statistics of
vclust.numerics.pixels are stored beside the descriptors (vclust.storage.pixels: one group per
batch, committed in the batch's ledger entry last). The work is split in row blocks, one dask
task each, run on the workers; each worker process opens the zip itself, once (the path travels
in the task, not the zip's index).

Decoding: a sound JPEG is decoded by libjpeg-turbo straight into an array
(vclust.storage.decode.decode_jpeg: simplejpeg, the values Pillow gives); anything else, and any
JPEG libjpeg warns about, by Pillow, as before. The luma, its histogram and the statistics are
computed from the array by compiled kernels (vclust.numerics.pixels, pixel_kernels: numba,
compiled into its disk cache by the install's warm-up). JPEGs are decoded at a reduced scale
(1/2, 1/4, 1/8 in the decoder's DCT, as Pillow's draft mode chooses it) when the picture is at
least twice ``ANALYSIS_SIZE`` on its longer side, never below it; other formats larger than
that are box-reduced by a whole factor. VeRi-Wild's pictures (about 200-300 pixels) are decoded
at full size, so the sharpness sees their real edges.

A batch whose statistics are committed is skipped: re-running changes nothing. A run killed at
any point leaves the committed statistics and the ledger as they were; the next run removes its
leftovers and completes the work.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError
from ..numerics.pixels import (ANALYSIS_SIZE, COLUMNS, PROBLEMS, STAT_COLUMNS, image_stats,
                               luma_histogram)
from ..storage.decode import decode_jpeg, open_image, reduced_box
from ..storage.pixels import BLOCK_ROWS
from . import progress

log = logging.getLogger(__name__)

_SOURCES: dict = {}


def _source(path):
    """This process's ImageSource for ``path``: each worker opens the zip once."""
    from ..storage.images import ImageSource

    src = _SOURCES.get(str(path))
    if src is None:
        _SOURCES.clear()
        src = _SOURCES[str(path)] = ImageSource(path)
    return src


def decode(data: bytes, size: int = ANALYSIS_SIZE):
    """(width, height, pixels at most about ``size`` on the longer side, their luma and the
    luma's histogram), or raise on a picture that cannot be decoded (truncated, corrupt, not an
    image) or is refused before decoding (vclust.storage.decode.open_image: too many pixels, or
    more than its bytes can hold). The pixels are (h, w, 3) RGB, or (h, w, 4) RGBX whose fourth
    value is 255 where libjpeg-turbo decoded them (vclust.storage.decode.decode_jpeg: a sound
    JPEG); the luma and its 256 counts are Pillow's ``convert("L")`` and ``histogram()`` of
    them, value for value (vclust.numerics.pixels.luma_histogram)."""
    fast = decode_jpeg(data, size)
    if fast is not None:
        w, h, pixels = fast
    else:
        with open_image(data) as im:
            w, h = im.size
            box = reduced_box(w, h, size)
            if box is not None:
                if im.format == "JPEG":
                    im.draft("RGB", box)
                else:
                    im = im.reduce(max(w, h) // size)
            pixels = np.asarray(im.convert("RGB"))  # decodes: a truncated file raises here
    luma, hist = luma_histogram(pixels)
    return w, h, pixels, luma, hist


def row_stats(status: str, data: bytes | None, size: int = ANALYSIS_SIZE) -> tuple:
    """One row of ``COLUMNS`` from an image's fetch status and bytes."""
    return _row_stats(status, data, size)[0]


def _row_stats(status: str, data: bytes | None, size: int) -> tuple[tuple, str]:
    """(one row of ``COLUMNS``, why the image is unreadable or undecodable, else "")."""
    nan = (float("nan"),) * len(STAT_COLUMNS)
    if data is None:
        code = PROBLEMS.index("missing" if status == "missing" else "unreadable")
        return (0, code, 0, 0) + nan, ""
    try:
        w, h, rgb, luma, hist = decode(data, size)
        stats = image_stats(rgb, luma, hist)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on garbage
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        log.info("pixels: undecodable image (%s: %s)", type(exc).__name__, why)
        return (0, PROBLEMS.index("undecodable"), 0, 0) + nan, why
    return (1, 0, w, h) + stats, ""


_EXAMPLES = 5  # unreadable or undecodable images a task names (with why) for the summary


def stats_for_ids(source, ids, size: int = ANALYSIS_SIZE, bad: list | None = None) -> dict:
    """``COLUMNS`` for a sequence of image ids read from ``source`` (an ImageSource); the
    first unreadable or undecodable ones appended to ``bad`` as (id, why)."""
    rows = []
    for i in ids:
        status, data, why = source.fetch_why(i)
        row, why2 = _row_stats(status, data, size)
        if bad is not None and len(bad) < _EXAMPLES and row[1] >= PROBLEMS.index("unreadable"):
            bad.append((str(i), why or why2))
        rows.append(row)
    cols = list(zip(*rows)) if rows else [()] * len(COLUMNS)
    return {name: np.asarray(col, dtype=dtype) for (name, dtype), col in zip(COLUMNS.items(), cols)}


def _block_task(store_path: str, images: str, group: str, row0: int, a: int, b: int,
                size: int) -> dict:
    """Stats of batch rows [a, b) (store rows row0 + a ...), written into the staging group."""
    from ..storage.pixels import open_column
    from ..storage.store import read_ids

    ids = read_ids(store_path, row0 + a, row0 + b)
    bad: list = []
    cols = stats_for_ids(_source(images), ids, size, bad)
    for name, values in cols.items():
        open_column(group, name, mode="r+")[a:b] = values
    problem = cols["problem"]
    return {"rows": b - a, "readable": int(cols["readable"].sum()), "examples": bad,
            **{p: int((problem == i).sum()) for i, p in enumerate(PROBLEMS) if p}}


def compute_pixels(store_path, images, *, batches=None, all_batches: bool = False,
                   block_rows: int = BLOCK_ROWS, size: int = ANALYSIS_SIZE, say=lambda m: None):
    """Compute and store the pixel statistics of the chosen batches (see the module docstring).

    Returns {"batches": [{"batch", "status" ("written"/"unchanged"), "rows", "readable",
    "missing", "unreadable", "undecodable"}]}. Raises InputError (nothing committed) for an
    unknown batch, an image source that is not a zip or folder, or a batch none of whose ids is
    found in it (the wrong --images).
    """
    import dask

    from ..storage.images import ImageSource
    from ..storage import pixels as P
    from ..storage.store import Store, store_lock

    ImageSource(images).close()  # a clear error for a bad source, before any work
    with store_lock(store_path):
        store = Store.open(store_path, mode="a")
        chosen = store.choose_batches(batches, all_batches)
        P.clean(store)
        out = []
        for b in chosen:
            done = P.pixel_entry(store, b)
            start, stop = store.batch_rows(b)
            if done:
                say(f"pixels: batch {b} already has its statistics: nothing changed")
                out.append({"batch": b, "status": "unchanged", **{k: done.get(k) for k in (
                    "rows", "readable", "missing", "unreadable", "undecodable")}})
                continue
            n = stop - start
            say(f"pixels: batch {b}: {n} images from {images}")
            group = P.begin(store, b, COLUMNS, chunk=block_rows)
            tasks = [dask.delayed(_block_task, pure=False)(str(store.path), str(images),
                                                           str(group), start, a,
                                                           min(n, a + block_rows), size)
                     for a in range(0, n, block_rows)]
            try:  # progress lines: rows measured, time left (vclust.jobs.progress)
                parts = progress.compute(tasks, say, f"pixels: batch {b}", n,
                                         rows=[min(n, a + block_rows) - a
                                               for a in range(0, n, block_rows)])
            except BaseException:
                P.clean(store)  # the staging group; the store itself was never touched
                raise
            summary = {"rows": n}
            for key in ("readable",) + tuple(p for p in PROBLEMS if p):
                summary[key] = sum(p[key] for p in parts)
            if n and summary["missing"] == n:
                P.clean(store)
                raise InputError(f"{images}: none of the {n} images of batch '{b}' is there "
                                 "(ids matched as path suffixes); is it the right --images?")
            P.commit(store, b, group, {**summary, "images": str(images),
                                       "analysis_size": int(size)})
            say(f"pixels: batch {b}: {summary['readable']} readable, {summary['missing']} "
                f"missing, {summary['unreadable']} unreadable, {summary['undecodable']} "
                "undecodable")
            _summarise_bad(b, parts, summary, n)
            out.append({"batch": b, "status": "written", **summary})
    return {"batches": out}


def _summarise_bad(batch: str, parts, summary: dict, n: int) -> None:
    """One warning line for a batch's unreadable and undecodable images (not one per image):
    the count, the first and why, and where each is (its row's ``problem`` in the statistics;
    each logged with -v when the tasks ran in this process)."""
    count = summary["unreadable"] + summary["undecodable"]
    first = next((e for p in parts for e in p["examples"]), None)
    if not count or first is None:
        return
    log.warning("pixels: batch %s: %d of %d images unreadable or undecodable (the first, %s: "
                "%s); each row's problem is stored with its statistics (each logged with -v)",
                batch, count, n, first[0], first[1])


def read_stats(store_path, start: int, stop: int) -> dict:
    """The committed statistics of store rows [start, stop) (``have`` marks rows that have
    them)."""
    from ..storage.pixels import read

    return read(store_path, start, stop, COLUMNS)
