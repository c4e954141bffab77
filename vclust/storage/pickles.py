"""Safe pickle reading for descriptor files.

Two readers, tried in order:

1. ``scan_array``: for a pickle holding one plain numpy array (the common case, and the only one
   that can be multi-GB), the opcodes are interpreted by a pure-Python unpickler that builds no
   object at all: it records the array's dtype, shape and order and the *file offset* of its raw
   bytes, skipping them with a seek. Rows are then read with ``pread``-style seeks, so a 4 GB
   pickle ingests with bounded memory and no code from the file is ever run.
2. ``restricted_load``: anything else (a DataFrame, a list of vectors, a dict id -> vector) is
   loaded in full by an unpickler that admits only an allow-list of numpy / pandas / pyarrow
   data constructors. A pickle whose reduce would call ``os.system`` or similar is refused,
   and so is a call of an allowed constructor that would allocate more than the file could
   hold data for (``bytearray(10**11)``, an ``ndarray`` of a huge shape, a frame over a
   billion-row index with no data).

Pickles of protocol 0-2 (Python 2 era, or ``protocol=2`` for compatibility) cannot hold bytes
directly: they store each byte string as ``_codecs.encode(text, 'latin1')``. That one call is
admitted with exactly those arguments (a str and the latin1 codec: the bytes come back, nothing
is looked up or run); ``_codecs.encode`` with anything else is refused like any other global.

``trust=True`` (the CLI's ``--trust-pickle``) falls back to the plain unpickler.
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np

from ..errors import InputError
from .layout import ArrayLayout

_NUMPY_RECONSTRUCT = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
}
_NUMPY_FROMBUFFER = {
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
}

# (module, name) pairs that only rebuild data. Nothing here evaluates strings or touches files.
SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    *_NUMPY_RECONSTRUCT,
    *_NUMPY_FROMBUFFER,
    ("builtins", "slice"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pandas", "DataFrame"),
    ("pandas", "Series"),
    ("pandas", "Index"),
    ("pandas", "RangeIndex"),
    ("pandas", "StringDtype"),
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.series", "Series"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals.managers", "SingleBlockManager"),
    ("pandas.core.internals.blocks", "new_block"),
    ("pandas.arrays", "ArrowStringArray"),
    ("pandas.arrays", "StringArray"),
    ("pandas.core.arrays.string_arrow", "ArrowStringArray"),
    ("pandas.core.arrays.string_", "StringArray"),
    ("pandas.core.arrays.string_", "StringDtype"),
    ("pyarrow.lib", "_restore_array"),
    ("pyarrow.lib", "type_for_alias"),
    ("pyarrow.lib", "py_buffer"),
}


def _is_safe(module: str, name: str) -> bool:
    if (module, name) in SAFE_GLOBALS:
        return True
    # numpy's dtype classes (numpy.dtypes.Float32DType, ...) only describe element types.
    return module == "numpy.dtypes" and name.endswith("DType")


def _refusal(what: str) -> InputError:
    return InputError(
        f"refused to unpickle {what}: it could run code, and vclust reads pickles holding "
        "numpy/pandas data only; save the descriptors as .npy or Parquet, or, only if you made "
        "this file yourself, pass --trust-pickle (which turns this check off)"
    )


def _latin1_bytes(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocols 0-2 use it for a bytes literal, and for nothing else."""
    if type(obj) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _refusal(f"'_codecs.encode' with ({type(obj).__name__}, {encoding!r}) (old "
                       "pickles use it with (str, 'latin1') only)")
    return obj.encode("latin1")


MIN_ALLOCATION = 64 << 20  # what a pickle may ask a constructor to allocate, at the least
ALLOCATION_PER_BYTE = 16  # and per byte of the pickle (its data is in the file)


def _index_len(obj) -> int:
    try:
        import pandas as pd

        return len(obj) if isinstance(obj, (pd.Index, range)) else 0
    except TypeError:
        return 0


def _claimed_bytes(fn, args, kwargs) -> int:
    """Bytes a call of an allowed constructor would allocate from nothing, by its arguments
    alone (the data a pickle carries is bounded by its file): ``bytearray(n)``,
    ``numpy.ndarray(shape, dtype)``, a DataFrame or Series over a long index with no data."""
    values = list(args) + list(kwargs.values())
    if fn is bytearray and values and isinstance(values[0], int):
        return int(values[0])
    if fn is np.ndarray and values:
        shape = values[0] if isinstance(values[0], (tuple, list)) else (values[0],)
        try:
            dtype = np.dtype(values[1]) if len(values) > 1 and values[1] is not None else \
                np.dtype(float)
            return int(np.prod([int(d) for d in shape], dtype=object)) * dtype.itemsize
        except (TypeError, ValueError):
            return 0
    longest = max((_index_len(v) for v in values), default=0)
    width = max((len(v) for v in values if isinstance(v, (list, tuple)) and v), default=1)
    return longest * max(1, width) * 8


class _RestrictedUnpickler(pickle._Unpickler):  # pure Python: its REDUCE can be checked
    """Admits only ``SAFE_GLOBALS``; every call the pickle makes (REDUCE, NEWOBJ) is checked
    first for what it would allocate from nothing (``_claimed_bytes``)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f, limit: int):
        super().__init__(f)
        self._limit = limit

    def find_class(self, module, name):
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as the C unpickler maps them
            import _compat_pickle

            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if _is_safe(module, name):
            return super().find_class(module, name)
        raise _refusal(f"'{module}.{name}'")

    def _check(self, fn, args, kwargs):
        claimed = _claimed_bytes(fn, args, kwargs)
        if claimed > self._limit:
            what = getattr(fn, "__qualname__", None) or type(fn).__name__
            raise InputError(
                f"refused to unpickle a call of '{what}' that would allocate {claimed:,} bytes "
                f"from a pickle of this size (at most {self._limit:,}); save the descriptors as "
                ".npy or Parquet")

    def _load_reduce(self):
        args = self.stack.pop()
        fn = self.stack[-1]
        self._check(fn, args, {})
        self.stack[-1] = fn(*args)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check(cls, args, {})
        self.append(cls.__new__(cls, *args))

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check(cls, args, kwargs)
        self.append(cls.__new__(cls, *args, **kwargs))

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex


def restricted_load(f) -> object:
    """Load a pickle admitting only numpy / pandas / pyarrow data constructors, each refusing
    a call that would allocate more than ``ALLOCATION_PER_BYTE`` times the pickle's size
    (``MIN_ALLOCATION`` at the least) from nothing: ``bytearray(10**11)`` is one line, not a
    MemoryError."""
    start = f.tell()
    f.seek(0, io.SEEK_END)
    size = f.tell() - start
    f.seek(start)
    return _RestrictedUnpickler(f, max(MIN_ALLOCATION, ALLOCATION_PER_BYTE * size)).load()


# --------------------------------------------------------------------------- fast path


class _NotPlainArray(Exception):
    pass


class _Lazy:
    __slots__ = ("offset", "length")

    def __init__(self, offset, length):
        self.offset, self.length = offset, length


class _Spec:
    """Stands in for the ndarray while scanning; collects what numpy's reduce passes."""

    shape = None
    dtype = None
    fortran = False
    data = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _NotPlainArray
        _, self.shape, self.dtype, self.fortran, self.data = state


class _NdarrayStandIn:
    """``numpy.ndarray`` while scanning: numpy's reduce passes it to ``_reconstruct``; a pickle
    that calls it (``ndarray(shape, dtype)`` allocates) is not a plain array, and the
    restricted load then checks the call."""

    def __new__(cls, *args, **kwargs):
        raise _NotPlainArray


def _fake_reconstruct(cls, shape, typecode):
    return _Spec()


def _fake_frombuffer(buf, dtype, shape, order):
    spec = _Spec()
    spec.shape, spec.dtype, spec.fortran, spec.data = shape, dtype, order == "F", buf
    return spec


class _ScanUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be replaced
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f):
        super().__init__(f)
        self._raw = f

    def _bytes(self, n):
        # Large payloads are written outside pickle frames, so the file position is exact.
        if self._unframer.current_frame is not None or n < (1 << 16):
            data = self.read(n)
            if len(data) != n:
                raise EOFError("truncated pickle")
            return data
        offset = self._raw.tell()
        self._raw.seek(n, io.SEEK_CUR)
        return _Lazy(offset, n)

    def _load_binbytes(self):
        (n,) = struct.unpack("<I", self.read(4))
        self.append(self._bytes(n))

    def _load_binbytes8(self):
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(self._bytes(n))

    dispatch[pickle.BINBYTES[0]] = _load_binbytes
    dispatch[pickle.BINBYTES8[0]] = _load_binbytes8
    dispatch[pickle.BYTEARRAY8[0]] = _load_binbytes8

    def find_class(self, module, name):
        if (module, name) in _NUMPY_RECONSTRUCT:
            return _fake_reconstruct
        if (module, name) in _NUMPY_FROMBUFFER:
            return _fake_frombuffer
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayStandIn  # only passed to _reconstruct; called, it is no plain array
        if (module, name) == ("numpy", "dtype") or (
            module == "numpy.dtypes" and name.endswith("DType")
        ):
            return super().find_class(module, name)
        raise _NotPlainArray


def scan_array(f, file_size: int) -> ArrayLayout | None:
    """Locate a single pickled numpy array's raw bytes without loading them.

    Returns None when the pickle holds anything but one plain numeric array (the caller then
    uses ``restricted_load``). Raises EOFError/UnpicklingError on a truncated or corrupt file.
    """
    f.seek(0)
    try:
        obj = _ScanUnpickler(f).load()
    except _NotPlainArray:
        return None
    if not isinstance(obj, _Spec) or not isinstance(obj.dtype, np.dtype):
        return None
    data = obj.data
    dtype = obj.dtype
    shape = tuple(int(s) for s in obj.shape)
    if dtype.hasobject or not isinstance(data, (_Lazy, bytes, bytearray)):
        return None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if isinstance(data, _Lazy):
        if data.length != nbytes or data.offset + nbytes > file_size:
            raise EOFError("array data is shorter than its header says")
        return ArrayLayout(dtype, shape, bool(obj.fortran), data.offset, nbytes)
    return None  # small array held in-frame: the full restricted load is just as cheap
