"""Where an array's raw bytes are in a file (a plain-array pickle's payload, a .npy's data),
and reading its rows by seeks: a 4 GB source is read in bounded memory, any row range alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass
class ArrayLayout:
    """An array stored raw in a file: dtype, shape, order and the byte range of its data."""

    dtype: np.dtype
    shape: tuple
    fortran: bool
    offset: int
    nbytes: int

    def rows(self, start: int, stop: int) -> "ArrayLayout":
        """The layout of rows [start, stop) of a C-ordered 2-D array."""
        row_bytes = self.shape[1] * self.dtype.itemsize
        return ArrayLayout(self.dtype, (stop - start, self.shape[1]), self.fortran,
                           self.offset + start * row_bytes, (stop - start) * row_bytes)


def read_into(f, buf: np.ndarray) -> bool:
    """Fill the C-contiguous ``buf`` from the file ``f`` at its position; False when the file
    ends first."""
    view, got = memoryview(buf).cast("B"), 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            return False
        got += n
    return True


def layout_blocks(path: Path, layout: ArrayLayout, block_rows: int):
    """Yield the rows of a raw array in ``path`` in order, ``block_rows`` at a time."""
    shape = layout.shape
    if len(shape) != 2:
        # 1-D or 3-D arrays are refused by validation with a clear message; hand them over whole.
        yield np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset, shape=shape,
                        order="F" if layout.fortran else "C")
        return
    n_rows, n_dims = shape
    if layout.fortran:
        mm = np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset, shape=shape,
                       order="F")
        for start in range(0, n_rows, block_rows):
            yield np.ascontiguousarray(mm[start : start + block_rows])
        return
    row_bytes = n_dims * layout.dtype.itemsize
    # Plain reads into a fresh buffer rather than a memory map: the pages of a map count towards
    # the process's resident memory, explicit reads keep it to one block.
    with open(path, "rb", buffering=0) as f:
        for start in range(0, n_rows, block_rows):
            stop = min(n_rows, start + block_rows)
            buf = np.empty((stop - start, n_dims), dtype=layout.dtype)
            f.seek(layout.offset + start * row_bytes)
            if not read_into(f, buf):
                raise InputError(f"{path}: truncated: data ends at row {start}")
            yield buf


def layout_range(path: Path, layout: ArrayLayout, start: int, stop: int):
    """Yield rows [start, stop) of a raw array, reading only those rows."""
    if len(layout.shape) != 2:
        yield from layout_blocks(path, layout, 1 << 16)
        return
    if layout.fortran:
        mm = np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset,
                       shape=layout.shape, order="F")
        yield np.ascontiguousarray(mm[start:stop])
        return
    yield from layout_blocks(path, layout.rows(start, stop), stop - start)
