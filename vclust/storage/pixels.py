"""Per-row pixel statistics in the store, one Zarr group per batch, under the batch ledger.

Layout::

    STORE/pixels/<batch>/<column>     (batch rows,) one array per column, row i of the batch
                                      is store row ledger[batch].start + i
    STORE.staging/pixels-<uuid>/      beside the store: a batch being written (never read)

Writing a batch (``begin``, tasks writing disjoint chunk-aligned row ranges with ``open_column``,
then ``commit``): the columns are written into a staging group beside the store, the staging
group is renamed to ``pixels/<batch>``, and only then is ``"pixels"`` written into the batch's
ledger entry. The ledger entry is what readers trust: a batch whose entry has no ``"pixels"``
has no statistics, whatever lies under ``pixels/``. A writer killed while computing leaves the
store's files exactly as they were (its staging group lies outside the store); killed between
the rename and the ledger write, it leaves an uncommitted ``pixels/<batch>`` that no reader
sees. The next writer removes both.

On an object store (no rename) the columns are written straight into ``pixels/<batch>``; the
ledger entry, written last, is the commit record as before, and ``clean`` removes a group the
ledger does not name, so a killed run leaves nothing a reader trusts.

This module knows nothing of images or of what the columns mean (the caller gives the column
dtypes).
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import fs as F
from .store import Store

DIR = "pixels"
BLOCK_ROWS = 2048  # rows per `vclust pixels` task and per stored chunk


def pixel_entry(store: Store, batch_id: str) -> dict | None:
    """The committed pixel record of a batch, or None."""
    return store.batch_entry(batch_id).get("pixels")


def batches_with_pixels(store: Store) -> list[str]:
    return [b["id"] for b in store.ledger if b.get("pixels")]


def clean(store: Store) -> None:
    """Remove staging groups and batch groups the ledger does not name (a writer's leftovers).
    Call under the store lock."""
    staging = _staging_root(store)
    if staging.is_dir():
        for entry in staging.glob("pixels-*"):
            F.rmtree(entry)
        if not isinstance(staging, F.RemotePath) and not any(staging.iterdir()):
            staging.rmdir()
    root = store.path / DIR
    if not root.is_dir():
        return
    committed = set(batches_with_pixels(store))
    for entry in root.iterdir():
        if entry.name not in committed and (isinstance(entry, F.RemotePath) or entry.is_dir()):
            F.rmtree(entry)


def _staging_root(store: Store) -> Path:
    return store.path.with_name(store.path.name + ".staging")


def begin(store: Store, batch_id: str, columns: dict[str, str], chunk: int | None = None) -> Path:
    """Create a staging group for a batch's columns (``{name: dtype}``), chunked by ``chunk``
    rows (default the store's); returns its path."""
    start, stop = store.batch_rows(batch_id)
    n = stop - start
    if isinstance(store.path, F.RemotePath):  # no rename: written in place, committed by the ledger
        _parent_group(store.path / DIR)
        staging = store.path / DIR / batch_id
        if pixel_entry(store, batch_id):
            raise InputError(f"{store.path}: batch '{batch_id}' already has pixel statistics")
        staging.rmtree()
    else:
        staging = _staging_root(store) / f"pixels-{uuid.uuid4().hex}"
        staging.parent.mkdir(exist_ok=True)
    group = F.open_group(staging, mode="w")
    chunk = max(1, min(chunk or store.chunk_rows, n))
    for name, dtype in columns.items():
        group.create_array(name, shape=(n,), chunks=(chunk,), dtype=dtype, fill_value=0,
                           compressors=None, dimension_names=("row",))
    group.attrs.update({"batch": batch_id, "start": start, "stop": stop})
    return staging


def open_column(group_path, name: str, mode: str = "r"):
    """One column of a (staging or committed) batch group, opened by path from a task."""
    return F.open_array(F.as_path(group_path) / name, mode=mode)


def _parent_group(path) -> None:
    """``STORE/pixels`` as a Zarr group (its own zarr.json), so Zarr lists it and its batches
    without warnings; made once."""
    if not (path / "zarr.json").exists():
        F.open_group(path, mode="a")


def commit(store: Store, batch_id: str, staging: Path, record: dict) -> None:
    """Move the staging group into place and write ``record`` into the batch's ledger entry."""
    target = store.path / DIR / batch_id
    if isinstance(store.path, F.RemotePath):  # written in place by begin: the ledger commits it
        assert staging == target, (staging, target)
        store.annotate_batch(batch_id, "pixels", {
            **record, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return
    _parent_group(target.parent)
    if target.exists():  # uncommitted leftovers (a committed batch is never rewritten)
        if pixel_entry(store, batch_id):
            raise InputError(f"{store.path}: batch '{batch_id}' already has pixel statistics")
        shutil.rmtree(target)
    staging.rename(target)
    if not any(staging.parent.iterdir()):
        staging.parent.rmdir()
    store.annotate_batch(batch_id, "pixels", {
        **record, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def read(store_path, start: int, stop: int, columns: dict[str, str]) -> dict:
    """Committed pixel statistics of store rows [start, stop): {column: array} plus ``have``
    (bool: the row's batch has statistics). Rows without them, and the rows of a batch measured
    before a column existed, read 0 (NaN for float columns) in it.
    Reads only the batches the range touches; callable from a worker task by the path alone."""
    store = Store.open(store_path)
    n = stop - start
    out = {}
    have = np.zeros(n, bool)
    pieces = []
    for b in store.ledger:
        a, z = int(b["start"]), int(b["stop"])
        if z <= start or a >= stop or not b.get("pixels"):
            continue
        lo, hi = max(a, start), min(z, stop)
        pieces.append((b["id"], lo - a, hi - a, lo - start, hi - start))
    for name, dtype in columns.items():
        dtype = np.dtype(dtype)
        col = np.full(n, np.nan if dtype.kind == "f" else 0, dtype=dtype)
        for batch_id, sa, sb, da_, db in pieces:
            try:
                arr = F.open_array(store.path / DIR / batch_id / name, mode="r")
            except FileNotFoundError:  # a column added after the batch was measured: NaN / 0
                continue
            col[da_:db] = arr[sa:sb]
        out[name] = col
    for _, _, _, da_, db in pieces:
        have[da_:db] = True
    out["have"] = have
    return out
