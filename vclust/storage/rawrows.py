"""Row ranges of a stored descriptor set read straight from its chunk files, where the store
allows it: a local, uncompressed Zarr v3 array of 2-D float rows, chunked by rows only.

Such a chunk file is, by the Zarr v3 format, the chunk's values in C order and the bytes
codec's byte order, with nothing around them, and a row range inside a chunk is one
contiguous byte range of it. zarr reads each chunk into a new buffer and copies it into the
result; here each row range is read with ``readinto`` into the result itself, one copy fewer
and no new buffer per chunk (84 MB for efficientnet-b7's 8,192-row chunks: on this VM new
memory is slow to touch). The efficientnet-b7 rows of the 416k case (4.26 GB) in a warm
process: zarr 2.1 s (3.1-3.3 CPU-s), here 1.0-1.5 s (benchmarks/RESULTS.md).

Anything else (a compressed or remote store, another chunking, a Zarr format 2 array) is read
by zarr, as is a row selection that is not a range. A chunk file that was never written reads
as the fill value, as in zarr; a chunk file shorter than its rows is an error, not zeros.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import InputError
from .layout import read_into


class RawRows:
    """Rows [start, stop) of one array, from its chunk files. ``RawRows.of(arr)`` gives one
    for a zarr array that allows it, else None. Picklable (paths and numbers): dask sends it
    to workers inside a graph; ``x[rows, cols]`` is what ``dask.array.from_array`` asks of it."""

    def __init__(self, folder: str, shape, dtype, chunk_rows: int, keys, fill):
        self.folder, self.shape, self.dtype = folder, tuple(shape), np.dtype(dtype)
        self.chunk_rows, self.keys, self.fill = int(chunk_rows), keys, fill
        # a window (``window``) of the array: its first row, and the whole array's rows
        self.ndim, self.start, self.rows = 2, 0, self.shape[0]

    @classmethod
    def of(cls, arr) -> RawRows | None:
        try:
            from zarr.codecs import BytesCodec
            from zarr.storage import LocalStore

            md = arr.metadata
            store = arr.store_path.store
            codecs = list(md.codecs)
            if (md.zarr_format != 3 or not isinstance(store, LocalStore) or arr.ndim != 2
                    or len(codecs) != 1 or not isinstance(codecs[0], BytesCodec)
                    or arr.chunks[1] != arr.shape[1]):
                return None
            dtype = np.dtype(arr.dtype)
            endian = codecs[0].endian
            order = getattr(endian, "value", endian)
            if dtype.kind != "f" or (dtype.itemsize > 1 and order != sys.byteorder):
                return None
            folder = os.path.join(str(store.root), arr.store_path.path)
            keys = [md.encode_chunk_key((c, 0))
                    for c in range(-(-arr.shape[0] // arr.chunks[0]))]
            return cls(folder, arr.shape, dtype, arr.chunks[0], keys, md.fill_value)
        except Exception:  # noqa: BLE001 - any doubt: zarr reads it
            return None

    def read(self, start: int, stop: int, out: np.ndarray | None = None,
             threads: int = 1) -> np.ndarray:
        """Rows [start, stop) of the whole array (a window's too) into ``out`` (C-contiguous,
        (stop - start, width)) or a new array. ``threads`` > 1 reads that many runs of whole
        chunks side by side (``readinto`` releases the GIL; the kernel's copy and the first
        touch of ``out``'s pages are most of a warm read's time, and one thread does them one
        page at a time)."""
        start, stop = max(0, int(start)), min(self.rows, int(stop))
        if out is None:
            out = np.empty((max(0, stop - start), self.shape[1]), self.dtype)
        cr = self.chunk_rows
        spans = [(c, max(start, c * cr), min(stop, (c + 1) * cr))
                 for c in (range(start // cr, (stop - 1) // cr + 1) if stop > start else ())]
        threads = max(1, min(int(threads), len(spans)))
        if threads == 1:
            self._read_spans(spans, start, out)
        else:
            from concurrent.futures import ThreadPoolExecutor

            runs = [spans[len(spans) * i // threads:len(spans) * (i + 1) // threads]
                    for i in range(threads)]
            with ThreadPoolExecutor(threads, thread_name_prefix="vclust-read") as pool:
                list(pool.map(lambda run: self._read_spans(run, start, out), runs))
        return out

    def _read_spans(self, spans, start, out):
        row_bytes = self.shape[1] * self.dtype.itemsize
        for c, lo, hi in spans:
            part = out[lo - start:hi - start]
            path = os.path.join(self.folder, self.keys[c])
            try:
                f = open(path, "rb", buffering=0)
            except FileNotFoundError:
                part[...] = self.fill
                continue
            with f:
                f.seek((lo - c * self.chunk_rows) * row_bytes)
                if not read_into(f, part):
                    raise InputError(f"{path}: chunk file ends before its rows "
                                     f"{lo:,}..{hi - 1:,}; the store is damaged")

    def window(self, start: int, stop: int) -> RawRows:
        """Rows [start, stop) as an array of their own: ``window[a:b]`` reads rows
        start + a .. start + b of this one."""
        win = object.__new__(RawRows)
        win.__dict__.update(self.__dict__)
        win.start = self.start + int(start)
        win.shape = (int(stop) - int(start), self.shape[1])
        return win

    def take(self, rows) -> np.ndarray:
        """The rows at the sorted positions ``rows`` of this array (a window's: from its first
        row), each run of consecutive rows read as exactly its rows."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)]):
            if b > a:
                self.read(self.start + int(rows[a]), self.start + int(rows[b - 1]) + 1,
                          out=out[a:b])
        return out

    def __getitem__(self, key):
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("RawRows reads row ranges")
        start, stop, _ = rows.indices(self.shape[0])
        block = self.read(self.start + start, self.start + stop)
        return block if cols == slice(None) else block[:, cols]


def dask_rows(arr, name: str, start: int = 0, stop: int | None = None):
    """Rows [start, stop) of the zarr array ``arr`` as a dask array in the store's chunks (the
    first and last cut at start and stop): read from its chunk files (``RawRows``) where it
    allows it, each block exactly its rows, else by ``dask.array.from_zarr`` (whole chunks,
    decoded, then sliced). The blocks are the reads themselves, not slices of chunk reads that
    only graph optimisation fuses: a graph left unoptimised, so that arrays computed together
    share their reads (``numerics.blocks.delayed_blocks``), still reads each row once."""
    import dask.array as da

    stop = arr.shape[0] if stop is None else stop
    raw = RawRows.of(arr)
    if raw is None:
        return da.from_zarr(arr)[start:stop]
    from dask.base import tokenize

    cr = raw.chunk_rows
    edges = [start] + list(range((start // cr + 1) * cr, stop, cr)) + [stop]
    rows = tuple(b - a for a, b in zip(edges[:-1], edges[1:]) if b > a) or (0,)
    return da.from_array(raw.window(start, stop), chunks=(rows, (raw.shape[1],)), lock=False,
                         asarray=True, meta=np.empty((0, 0), raw.dtype),
                         name=f"{name}-{tokenize(raw.folder, raw.shape, cr, start, stop)}")


def read_rows(arr, rows) -> np.ndarray:
    """The rows ``rows`` (sorted, unique, absolute) of the zarr array ``arr``, in this process:
    each run of consecutive rows read from the chunk files as exactly its rows where
    ``RawRows`` allows it (a few hundred rows of a report: a few hundred small reads, not every
    chunk they fall in), else by zarr (whole chunks, decoded)."""
    rows = np.asarray(rows, dtype=np.int64)
    raw = RawRows.of(arr)
    if raw is None:
        return np.asarray(arr.get_orthogonal_selection((rows, slice(None))))
    return raw.take(rows)

