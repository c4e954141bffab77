"""Ingest descriptor sources into a store as one batch.

Two passes over the sources, both as dask tasks (on the cluster when a client is active):

1. validate: per block of source rows, the numeric check, the width, the non-finite rows and a
   digest. Nothing is written until every check has passed, so a refused ingest leaves the store
   byte-for-byte as it was.
2. write: per destination range aligned to the store's chunks, read the source rows, drop the
   invalid ones if asked, cast to float32 and write. Tasks write disjoint chunks, so they run in
   parallel safely. The ledger entry is written last.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import fs as F
from . import sources as S
from .store import (
    DEFAULT_CHUNK_ROWS,
    Store,
    check_compression,
    open_descriptors,
    store_lock,
)

log = logging.getLogger(__name__)

BLOCK_BYTES = 32 << 20  # bytes per validation block (and digest unit) and per write task, about


def validate_rows(width: int, itemsize: int) -> int:
    """Rows per validation block: a function of the source alone, so digests do not depend on
    the store. ~32 MiB keeps a 2560-dim block (and its temporaries) small on every worker."""
    return max(256, BLOCK_BYTES // max(1, width * itemsize))


@dataclass
class BlockCheck:
    n_rows: int
    width: int | None
    bad_rows: np.ndarray  # absolute source rows with NaN/Inf
    digest: bytes
    problem: str | None = None


def _check_block(block: np.ndarray, first_row: int) -> BlockCheck:
    if block.ndim != 2:
        return BlockCheck(0, None, np.empty(0, np.int64), b"",
                          f"expected a 2-D array (rows x dims), got {block.ndim}-D shape {block.shape}")
    if block.dtype == bool or not np.issubdtype(block.dtype, np.number) or np.iscomplexobj(block):
        return BlockCheck(0, None, np.empty(0, np.int64), b"",
                          f"non-numeric data (dtype {block.dtype}); expected numbers")
    block = np.ascontiguousarray(block)
    finite = np.isfinite(block).all(axis=1) if block.dtype.kind == "f" else np.ones(len(block), bool)
    bad = np.flatnonzero(~finite).astype(np.int64) + first_row
    digest = hashlib.sha256(block.view(np.uint8).reshape(-1)).digest() if block.size else b""
    return BlockCheck(block.shape[0], block.shape[1], bad, digest)


def _read_rows(source: S.Source, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a range-readable source: the one piece ``read_range`` gives (a
    pickle's or an .npy's rows read into one buffer), not copied into another first: the copy
    was half of the efficientnet-b7 pickle's validation (4.7-9.2 s against 3.4-4.4 s,
    benchmarks/RESULTS.md)."""
    pieces = list(source.read_range(start, stop))
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _validate_range(source: S.Source, start: int, stop: int) -> list[BlockCheck]:
    """Validation task for rows [start, stop) of a range-readable source."""
    return [_check_block(_read_rows(source, start, stop), start)]


def validate_source(source: S.Source) -> dict:
    """Validate every row of a source (in parallel tasks). Returns a summary or raises InputError."""
    import dask

    n = source.n_rows or 0
    if n == 0:
        raise InputError(f"{source.path}: empty source (0 rows); expected descriptor rows")
    shape, dtype = source.shape, source.dtype
    step = validate_rows(shape[1] if len(shape) == 2 else 1, dtype.itemsize)
    tasks = [dask.delayed(_validate_range, pure=False)(source, a, min(n, a + step))
             for a in range(0, n, step)]
    checks = [c for group in dask.compute(*tasks) for c in group]
    for c in checks:
        if c.problem:
            raise InputError(f"{source.path}: {c.problem}")
    widths = {c.width for c in checks}
    if len(widths) != 1:
        raise InputError(f"{source.path}: ragged rows: widths {sorted(widths)} in one file")
    width = widths.pop()
    if width == 0:
        raise InputError(f"{source.path}: rows have 0 values; expected descriptor vectors")
    bad = np.concatenate([c.bad_rows for c in checks])
    sha = hashlib.sha256(b"".join(c.digest for c in checks)).hexdigest()
    return {"name": source.name, "file": str(source.path), "rows": n, "dims": int(width),
            "dtype": str(source.dtype), "sha256": sha, "bad_rows": bad}


def _write_range(store_path: str, name: str, source: S.Source, kept: np.ndarray | None,
                 dst_start: int, dst_stop: int, offset: int) -> int:
    """Write destination rows [dst_start, dst_stop) from the source. ``offset`` is the store row of
    the batch's first kept row; ``kept`` maps kept positions to source rows (None: all rows)."""
    a, b = dst_start - offset, dst_stop - offset  # positions among the kept rows
    if kept is None:
        block = _read_rows(source, a, b)
    else:
        src = kept[a:b]
        block = _read_rows(source, int(src[0]), int(src[-1]) + 1)[src - src[0]]
    arr = open_descriptors(store_path, name, mode="r+")
    arr[dst_start:dst_stop] = block.astype(np.float32, copy=False)
    return dst_stop - dst_start


def _aligned_ranges(start: int, stop: int, chunk_rows: int, row_bytes: int):
    """Destination ranges on chunk boundaries, each about BLOCK_BYTES * 2 (at least one chunk)."""
    step = chunk_rows * max(1, (2 * BLOCK_BYTES) // max(1, chunk_rows * row_bytes))
    edges = [start]
    nxt = (start // step + 1) * step
    while nxt < stop:
        edges.append(nxt)
        nxt += step
    edges.append(stop)
    return list(zip(edges[:-1], edges[1:]))


def ingest(store_path, source_paths, *, name: str | None = None, ids_csv=None,
           batch: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
           on_invalid: str = "error", trust_pickle: bool = False, compression: str | None = None,
           progress=None) -> dict:
    """Ingest SOURCE files (or one case folder) into the store as one batch.

    Returns a summary dict; ``summary["status"]`` is "written" or "unchanged" (the same batch
    from the same sources was already stored). Raises InputError, leaving the store unchanged.
    """
    import dask

    store_path = F.as_path(store_path)
    if on_invalid not in ("error", "drop"):
        raise InputError(f"--on-invalid must be 'error' or 'drop'; got '{on_invalid}'")
    if chunk_rows < 1:
        raise InputError(f"--chunk-rows must be a positive integer; got {chunk_rows}")
    if compression is not None:
        check_compression(compression)  # before any source is read
    batch = batch or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not batch or "/" in batch or batch.startswith(".") or "\\" in batch:
        raise InputError(f"--batch must be a plain name (no '/', not starting with '.'); got '{batch}'")
    say = progress or (lambda msg: None)

    sources, ids = _open_all(source_paths, name, ids_csv, trust_pickle)
    sources = [s.materialised() for s in sources]

    with store_lock(store_path):
        store = Store.open(store_path, mode="a") if Store.exists(store_path) else None
        say(f"validating {len(sources)} source(s)")
        checks = [validate_source(s) for s in sources]
        n_rows = _common_rows(checks)
        delivered = _resolve_ids(ids, sources, n_rows, batch)
        ids = S.normalise_ids(delivered)  # the store's ids; the spelling delivered kept beside
        if store is not None:
            if compression is not None and compression != store.compression:
                raise InputError(f"{store_path}: stored with compression '{store.compression}'; "
                                 "--compression applies only when a store is created")
            _check_against_store(store, checks)
            entry = next((b for b in store.ledger if b["id"] == batch), None)
            if entry is not None:
                return _same_batch_or_refuse(store, entry, checks)
        keep = _keep_mask(checks, n_rows, on_invalid)
        kept_ids = ids[keep] if keep is not None else ids
        kept_delivered = delivered[keep] if keep is not None else delivered
        _check_ids_unique(kept_ids, store)

        if store is None:
            store = Store.create(store_path, {c["name"]: c["dims"] for c in checks}, chunk_rows,
                                 compression or "none")
        n_keep = len(kept_ids)
        start = store.begin_append(batch, n_keep)
        kept = np.flatnonzero(keep) if keep is not None else None
        say(f"writing {n_keep} rows x {len(sources)} set(s) from row {start}")
        tasks = [
            dask.delayed(_write_range, pure=False)(str(store.path), s.name, s, kept, a, b, start)
            for s in sources
            for a, b in _aligned_ranges(start, start + n_keep, store.chunk_rows, 4 * store.dims[s.name])
        ]
        dask.compute(*tasks)
        store.write_index_columns(start, kept_ids, batch, delivered=kept_delivered)
        entry = {
            "id": batch, "start": start, "stop": start + n_keep,
            "sources": [{k: v for k, v in c.items() if k != "bad_rows"} for c in checks],
            "dropped_ids": [str(i) for i in ids[~keep]] if keep is not None else [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        store.commit_batch(entry)
    return {"status": "written", "batch": batch, "rows": n_keep, "start": start,
            "dropped": len(entry["dropped_ids"]), "descriptors": [c["name"] for c in checks]}


def _open_all(source_paths, name, ids_csv, trust_pickle):
    paths = [Path(p) for p in source_paths]
    if not paths:
        raise InputError("expected at least one SOURCE (a descriptor file or a case folder)")
    ids = None
    if len(paths) == 1 and S.is_case_folder(paths[0]):
        if name:
            raise InputError("--name applies to one descriptor file, not to a case folder")
        sources, ids = S.open_case(paths[0], trust_pickle=trust_pickle)
    else:
        for p in paths:
            if p.is_dir():
                raise InputError(f"{p}: a folder without descriptors/; expected a case folder or files")
        if name and len(paths) > 1:
            raise InputError("--name applies to one descriptor file; got several SOURCEs")
        sources = [S.open_source(p, name, trust_pickle=trust_pickle) for p in paths]
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"two sources give descriptor set '{dupes[0]}'; rename one file or use --name")
    if ids_csv is not None:
        ids = S.read_ids_csv(ids_csv)
    return sources, ids


def _common_rows(checks) -> int:
    rows = {c["rows"] for c in checks}
    if len(rows) != 1:
        detail = ", ".join(f"{c['name']}={c['rows']}" for c in checks)
        raise InputError(f"sources of one batch must have the same rows; got {detail}")
    return rows.pop()


def _resolve_ids(ids, sources, n_rows, batch):
    if ids is None:
        ids = next((s.ids for s in sources if s.ids is not None), None)
    if ids is None:
        return np.array([f"{batch}/{i:09d}" for i in range(n_rows)], dtype=object)
    if len(ids) != n_rows:
        raise InputError(f"ids count ({len(ids)}) differs from descriptor rows ({n_rows}); "
                         "the ids csv must have one row per descriptor row")
    if any(i == "" for i in ids):
        raise InputError(f"empty id at row {[i for i, v in enumerate(ids) if v == ''][0]}")
    return ids


def _check_against_store(store: Store, checks):
    dims = store.dims
    given = {c["name"] for c in checks}
    if dims and given != set(dims):
        raise InputError(
            f"this batch has descriptor sets {sorted(given)} but the store holds {sorted(dims)}; "
            "every batch must bring the same sets"
        )
    for c in checks:
        if c["name"] in dims and dims[c["name"]] != c["dims"]:
            raise InputError(
                f"{c['file']}: width {c['dims']} differs from the stored set '{c['name']}' "
                f"({dims[c['name']]} dims)"
            )


def _same_batch_or_refuse(store, entry, checks):
    stored = sorted((s["name"], s["sha256"]) for s in entry["sources"])
    given = sorted((c["name"], c["sha256"]) for c in checks)
    if stored == given:
        log.info("batch %s already stored from the same sources: nothing to do", entry["id"])
        return {"status": "unchanged", "batch": entry["id"], "rows": entry["stop"] - entry["start"],
                "start": entry["start"], "dropped": len(entry.get("dropped_ids", [])),
                "descriptors": [c["name"] for c in checks]}
    raise InputError(
        f"batch '{entry['id']}' is already stored from other sources; ingest these under a new "
        "--batch id"
    )


def _keep_mask(checks, n_rows, on_invalid):
    bad = np.unique(np.concatenate([c["bad_rows"] for c in checks]))
    if len(bad) == 0:
        return None
    if on_invalid == "error":
        shown = ", ".join(str(int(r)) for r in bad[:10]) + (" ..." if len(bad) > 10 else "")
        sets = ", ".join(c["name"] for c in checks if len(c["bad_rows"]))
        raise InputError(
            f"{len(bad)} row(s) hold NaN or Inf in {sets}: rows {shown} (0-based); fix them or "
            "pass --on-invalid drop"
        )
    if len(bad) == n_rows:
        raise InputError("every row holds NaN or Inf; nothing to ingest")
    keep = np.ones(n_rows, bool)
    keep[bad] = False
    return keep


def _check_ids_unique(ids, store):
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise InputError(f"duplicate ids in the batch: {', '.join(map(str, dup[:5]))}"
                         f"{' ...' if len(dup) > 5 else ''} ({len(dup)} in all)")
    if store is not None and store.n_rows:
        existing = store.ids().astype(str)
        clash = np.intersect1d(existing, uniq)
        if len(clash):
            raise InputError(f"ids already in the store: {', '.join(map(str, clash[:5]))}"
                             f"{' ...' if len(clash) > 5 else ''} ({len(clash)} in all)")
