"""Readers for descriptor sources: pickle, .npy, .npz, .parquet, .csv and case folders.

Every reader yields row blocks in order (``Source.blocks``) so that ingest never holds a whole
descriptor set in memory when the format allows streaming (.npy, plain-array pickles, parquet,
csv). Formats that cannot be streamed (a pickled DataFrame, list or dict; .npz members) are
loaded whole, which is how they were produced too.

All errors about the input are ``InputError`` with one line naming the file and the fix.
"""

from __future__ import annotations

import logging
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from . import pickles
from .layout import ArrayLayout, layout_blocks, layout_range

log = logging.getLogger(__name__)

ID_COLUMNS = ("paths", "path", "image_id", "id", "ids", "image", "filename")
# Some deliveries name the vdc files mdc_*; the store keeps one name per descriptor family.
NAME_ALIASES = {"mdc_color": "vdc_color", "mdc_type": "vdc_type"}
FORMATS = (".pickle", ".pkl", ".npy", ".npz", ".parquet", ".pq", ".csv")


def normalise_ids(values) -> np.ndarray:
    """Ids as python strings with forward slashes (``veriwild\\1\\x.jpg`` -> ``veriwild/1/x.jpg``)."""
    return np.array([str(v).replace("\\", "/") for v in values], dtype=object)


def delivered_ids(values) -> np.ndarray:
    """Ids as python strings spelled as delivered (backslashes kept): the store keeps them
    beside the normalised ids (``normalise_ids``), so exports join the delivery as it is."""
    return np.array([str(v) for v in values], dtype=object)


@dataclass
class Source:
    """One descriptor set read from one file."""

    path: Path
    name: str
    n_rows: int | None = None  # None when unknown until read (csv)
    ids: np.ndarray | None = None  # ids the source carries itself (DataFrame index, dict keys)
    _array: np.ndarray | None = field(default=None, repr=False)
    _layout: ArrayLayout | None = field(default=None, repr=False)
    _kind: str = "array"

    def blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        """Yield the rows in order, ``block_rows`` at a time, as 2-D arrays of the source dtype."""
        if self._kind == "array":
            for start in range(0, self._array.shape[0], block_rows):
                yield self._array[start : start + block_rows]
        elif self._kind == "layout":
            yield from layout_blocks(self.path, self._layout, block_rows)
        elif self._kind == "parquet":
            yield from _parquet_blocks(self.path, block_rows)
        elif self._kind == "csv":
            yield from _csv_blocks(self.path, block_rows)
        else:  # pragma: no cover - guarded by open_source
            raise AssertionError(self._kind)

    @property
    def range_readable(self) -> bool:
        """Whether any row range can be read alone (arrays in memory, raw layouts on disk)."""
        return self._kind in ("array", "layout")

    @property
    def shape(self) -> tuple:
        """The array's shape (range-readable sources)."""
        return self._array.shape if self._kind == "array" else self._layout.shape

    @property
    def dtype(self) -> np.dtype:
        """The array's dtype (range-readable sources)."""
        return self._array.dtype if self._kind == "array" else self._layout.dtype

    def read_range(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Yield rows [start, stop) of a range-readable source, reading only those rows."""
        if self._kind == "array":
            yield self._array[start:stop]
        else:
            yield from layout_range(self.path, self._layout, start, stop)

    def materialised(self) -> "Source":
        """A range-readable source with the same rows: csv and parquet, the small formats, are
        read whole."""
        if self.range_readable:
            return self
        blocks = list(self.blocks(1 << 16))
        widths = {b.shape[1] for b in blocks if b.ndim == 2}
        if len(widths) > 1:
            raise InputError(f"{self.path}: ragged rows: widths {sorted(widths)} in one file")
        array = np.concatenate(blocks) if blocks else np.empty((0, 0), np.float32)
        return Source(self.path, self.name, array.shape[0], self.ids, _array=array)


# --------------------------------------------------------------------------- opening


def open_source(path, name: str | None = None, *, trust_pickle: bool = False) -> Source:
    """Open one descriptor file. ``name`` defaults to the file's stem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass it alone to ingest it as a case folder")
    suffix = path.suffix.lower()
    name = name or path.stem
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, expected descriptor rows")
    try:
        if suffix in (".pickle", ".pkl"):
            return _open_pickle(path, name, trust_pickle)
        if suffix == ".npy":
            return _open_npy(path, name)
        if suffix == ".npz":
            return _open_npz(path, name)
        if suffix in (".parquet", ".pq"):
            return _open_parquet(path, name)
        if suffix == ".csv":
            return Source(path, name, None, _read_csv_ids_if_any(path), _kind="csv")
    except InputError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError,
            IndexError, KeyError, TypeError, struct.error) as exc:
        raise InputError(f"{path}: corrupt or truncated {suffix} file ({_short(exc)})") from None
    raise InputError(
        f"{path}: unknown format '{suffix or path.name}', expected one of {', '.join(FORMATS)}"
    )


def _short(exc) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _open_pickle(path: Path, name: str, trust: bool) -> Source:
    size = path.stat().st_size
    with open(path, "rb") as f:
        layout = pickles.scan_array(f, size)
        if layout is not None:
            n_rows = layout.shape[0] if layout.shape else 0
            return Source(path, name, n_rows, _layout=layout, _kind="layout")
        f.seek(0)
        obj = pickle.load(f) if trust else pickles.restricted_load(f)
    array, ids = _coerce_object(obj, path)
    return Source(path, name, array.shape[0], ids, _array=array)


def _coerce_object(obj, path: Path):
    """Array and optional ids from what a pickle held."""
    import pandas as pd

    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return _stack_rows(list(obj), path), None
        return obj, None
    if isinstance(obj, pd.DataFrame):
        ids = None
        frame = obj
        id_cols = [c for c in frame.columns if str(c).lower() in ID_COLUMNS]
        if id_cols:
            ids = delivered_ids(frame[id_cols[0]])
            frame = frame.drop(columns=id_cols[0])
        elif not isinstance(frame.index, pd.RangeIndex):
            ids = delivered_ids(frame.index)
        if frame.shape[1] == 1 and frame.dtypes.iloc[0] == object:
            return _stack_rows(list(frame.iloc[:, 0]), path), ids
        return _numeric_frame(frame, path), ids
    if isinstance(obj, pd.Series):
        ids = None if isinstance(obj.index, pd.RangeIndex) else delivered_ids(obj.index)
        return _stack_rows(list(obj), path), ids
    if isinstance(obj, dict):
        return _stack_rows(list(obj.values()), path), delivered_ids(obj.keys())
    if isinstance(obj, (list, tuple)):
        return _stack_rows(list(obj), path), None
    raise InputError(
        f"{path}: pickle holds a {type(obj).__name__}; expected a numpy array, a DataFrame, "
        "a list of vectors or a dict id -> vector"
    )


def _numeric_frame(frame, path: Path) -> np.ndarray:
    import pandas as pd

    bad = [str(c) for c, t in frame.dtypes.items()
           if not pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t)]
    if bad:
        raise InputError(
            f"{path}: non-numeric columns {', '.join(bad[:5])}; expected one numeric column per "
            "dimension (and optionally an id column named paths/path/id)"
        )
    return frame.to_numpy()


def _stack_rows(rows: list, path: Path) -> np.ndarray:
    if not rows:
        return np.empty((0, 0), dtype=np.float32)
    lengths = [np.size(r) for r in rows]
    first = lengths[0]
    for i, n in enumerate(lengths):
        if n != first:
            raise InputError(
                f"{path}: ragged rows: row {i} has {n} values, row 0 has {first}; every "
                "descriptor must have the same width"
            )
    try:
        return np.asarray([np.asarray(r).ravel() for r in rows], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: non-numeric values in the rows") from None


def _open_npy(path: Path, name: str) -> Source:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.hasobject:
        raise InputError(f"{path}: holds Python objects, expected a numeric array")
    if offset + nbytes > path.stat().st_size:
        raise InputError(
            f"{path}: truncated .npy: header says {shape} {dtype} ({nbytes} bytes) but the file "
            f"holds {path.stat().st_size - offset}"
        )
    layout = ArrayLayout(dtype, tuple(shape), fortran, offset, nbytes)
    return Source(path, name, shape[0] if shape else 0, _layout=layout, _kind="layout")


def _open_npz(path: Path, name: str) -> Source:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.files)
        if not keys:
            raise InputError(f"{path}: .npz holds no arrays")
        key = keys[0] if len(keys) == 1 else next((k for k in ("X", "x", "descriptors", name)
                                                   if k in keys), None)
        if key is None:
            raise InputError(
                f"{path}: .npz holds {keys}; expected one array or one named X/descriptors"
            )
        array = z[key]
        ids = None
        for k in ("ids", "paths", "image_id"):
            if k in keys and k != key:
                ids = delivered_ids(z[k])
    return Source(path, name, array.shape[0] if array.ndim else 0, ids, _array=array)


def _open_parquet(path: Path, name: str) -> Source:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    ids = None
    id_cols = [c for c in pf.schema_arrow.names if c.lower() in ID_COLUMNS]
    if id_cols:
        ids = delivered_ids(pf.read(columns=[id_cols[0]]).column(0).to_pylist())
    return Source(path, name, pf.metadata.num_rows, ids, _kind="parquet")


def _read_csv_ids_if_any(path: Path):
    import pandas as pd

    head = pd.read_csv(path, nrows=0)
    id_cols = [c for c in head.columns if str(c).lower() in ID_COLUMNS]
    if not id_cols:
        return None
    return delivered_ids(pd.read_csv(path, usecols=[id_cols[0]], dtype=str).iloc[:, 0])


# --------------------------------------------------------------------------- streaming


def _parquet_blocks(path: Path, block_rows: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = [c for c in pf.schema_arrow.names if c.lower() not in ID_COLUMNS]
    for batch in pf.iter_batches(batch_size=block_rows, columns=names):
        if batch.num_columns == 1 and pa.types.is_list(batch.schema.field(0).type) or (
            batch.num_columns == 1 and pa.types.is_fixed_size_list(batch.schema.field(0).type)
            or batch.num_columns == 1 and pa.types.is_large_list(batch.schema.field(0).type)
        ):
            yield _list_column_block(batch.column(0), path)
        else:
            for field_ in batch.schema:
                if not (pa.types.is_integer(field_.type) or pa.types.is_floating(field_.type)):
                    raise InputError(
                        f"{path}: column '{field_.name}' is {field_.type}, expected numbers "
                        "(one column per dimension, or one list column)"
                    )
            yield np.column_stack([c.to_numpy(zero_copy_only=False) for c in batch.columns])


def _list_column_block(col, path: Path) -> np.ndarray:
    import pyarrow.compute as pc

    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        i = int(np.flatnonzero(lengths != lengths[0])[0])
        raise InputError(
            f"{path}: ragged rows: a row has {lengths[i]} values, the first {lengths[0]}; every "
            "descriptor must have the same width"
        )
    values = col.flatten().to_numpy(zero_copy_only=False)
    width = int(lengths[0]) if len(lengths) else 0
    if values.dtype == object or not np.issubdtype(values.dtype, np.number):
        raise InputError(f"{path}: non-numeric values in the list column")
    return values.reshape(len(lengths), width)


def _csv_blocks(path: Path, block_rows: int):
    import pandas as pd

    try:
        reader = pd.read_csv(path, chunksize=block_rows)
        for chunk in reader:
            id_cols = [c for c in chunk.columns if str(c).lower() in ID_COLUMNS]
            chunk = chunk.drop(columns=id_cols)
            yield _numeric_frame(chunk, path)
    except pd.errors.ParserError as exc:
        raise InputError(f"{path}: ragged or malformed csv ({_short(exc)})") from None


# --------------------------------------------------------------------------- ids and cases


def read_ids_csv(path) -> np.ndarray:
    """Ids from a one-column csv (header ``paths`` as in images_paths.csv, or path/id/...)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ids file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable ids csv ({_short(exc)})") from None
    cols = [c for c in frame.columns if str(c).lower() in ID_COLUMNS]
    if not cols and frame.shape[1] != 1:
        raise InputError(
            f"{path}: expected a column named one of {', '.join(ID_COLUMNS)}; got {list(frame.columns)}"
        )
    return delivered_ids(frame[cols[0] if cols else frame.columns[0]])


def is_case_folder(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "descriptors").is_dir()


def open_case(path, *, trust_pickle: bool = False) -> tuple[list[Source], np.ndarray | None]:
    """Every descriptors/*.pickle (or .npy) of a case folder, under its stem, and the folder's ids."""
    path = Path(path)
    files = sorted(
        p for p in (path / "descriptors").iterdir()
        if p.suffix.lower() in (".pickle", ".pkl", ".npy")
    )
    if not files:
        raise InputError(f"{path}/descriptors: no .pickle or .npy descriptor files found")
    sources = []
    for p in files:
        name = NAME_ALIASES.get(p.stem, p.stem)
        if name != p.stem:
            log.info("%s: stored as descriptor set '%s'", p.name, name)
        sources.append(open_source(p, name, trust_pickle=trust_pickle))
    ids_path = path / "images_paths.csv"
    ids = read_ids_csv(ids_path) if ids_path.exists() else None
    return sources, ids
