"""Labels as a Parquet dataset partitioned ``model=<id>/batch=<id>/``, and the CSV export.

One row per image: image_id string, row int64, cluster int32, distance float32, outlier_score
float32, is_outlier bool, outlier_reason string (the term of the outlier score that flagged the
row, or the pixel reason that did (vclust.numerics.pixels), "" when not flagged; labels written
before it read as null), nearest_row int64 and nearest_distance float32 (the row's nearest
reference row of the outlier index other than itself, and its distance: the near-duplicate
evidence, vclust.report.duplicates; null in labels written before them), path string (the id
as delivered, backslashes kept: what the CSV export writes; null in labels written before it).
The partition values live in the directory names only (hive style), so
pandas, dask.dataframe and pyarrow read the dataset without vclust.

Writing a batch (``write_batch``): every part is written as its own file into
``LABELS/.staging/<uuid>/`` (in parallel on the workers when parts are dask delayed objects),
then the staging folder is renamed into place. If the partition already exists it is first
renamed to ``LABELS/.trash/<uuid>-model=..-batch=..``, the new one renamed in, and the old one
deleted. Crash windows:

    during part writes      only .staging/ holds the new files; the old partition is untouched
    after the first rename  the partition is missing, the old copy sits in .trash/: the next
                            write (or read through this module) restores it
    after the second        the new partition is complete; .trash/ is deleted on the next write

So a reader sees the old complete partition or the new complete one, never half of one.

Concurrent runs (the nightly job and a manual relabel) share one labels dir and all complete:
each run's staging folder is its own, held by an OS lock (``fcntl.flock``) on the folder for as
long as the run lives, and a run clears only staging folders whose lock it can take (their run
is dead). The swaps, the recovery of .trash/ and the creation of staging folders take an
exclusive lock on ``LABELS/.lock``; readers take it shared, so a reader never lists a partition
that a swap then moves away. Two runs writing the same batch: the later swap wins, whole.

On an object store (``s3://``, vclust.storage.fs) there is no rename and no flock; a commit
record written last replaces both. A run writes its parts straight into the partition under
names of its own, ``model=M/batch=B/part-<run>-NNNNN.parquet``, then writes its record
``LABELS/_commits/model=M/batch=B/<run>.json`` = {run, files, rows} with one PUT. Run ids
start with their UTC start time, and a partition is what its newest run's record names.
vclust's readers list the records, not the folders, and read only the files the newest record
names, so a run killed before its record leaves files nobody reads; two runs writing one batch
both complete and the later-started one wins, whole. After its record a writer deletes the
files and then the records of every older run of the partition (superseded), and unrecorded
files older than an hour (a killed run's; younger ones may be a run in progress). A reader that finds a recorded file
gone (deleted by a later run between its listing and its read) reads the new record again.
Records and staging live under names starting with '_', which pyarrow and dask skip, so the
dataset still reads without vclust (best after a write finished: a run in progress or killed
has unrecorded files in the partition until the next write cleans them).

Reading (``read_labels``, ``export_csv`` and everything built on them) checks every file of a
partition first: a file that is not Parquet, whose columns are not the label schema, or whose
rows repeat rows of another file of the same model (a copied part file or partition) is refused
with one line naming it, instead of blank or doubled rows.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import fs as F

COLUMNS = ["image_id", "row", "cluster", "distance", "outlier_score", "is_outlier",
           "outlier_reason", "nearest_row", "nearest_distance", "path", "outlier_reasons"]
OPTIONAL = ("outlier_reason", "nearest_row", "nearest_distance", "path",  # null in older labels
            "outlier_reasons")

def label_schema():
    import pyarrow as pa

    return pa.schema([("image_id", pa.string()), ("row", pa.int64()), ("cluster", pa.int32()),
                      ("distance", pa.float32()), ("outlier_score", pa.float32()),
                      ("is_outlier", pa.bool_()), ("outlier_reason", pa.string()),
                      ("nearest_row", pa.int64()), ("nearest_distance", pa.float32()),
                      ("path", pa.string()), ("outlier_reasons", pa.list_(pa.string()))])


def _check_name(value: str, what: str):
    if not value or "/" in value or "\\" in value or value.startswith(".") or "=" in value:
        raise InputError(f"{what} '{value}' cannot name a partition folder: no '/', '\\', '=' "
                         "and no leading '.'")


def validate_frame(df):
    missing = [c for c in COLUMNS if c not in df.columns and c not in OPTIONAL]
    if missing:
        raise ValueError(f"label frame lacks columns {missing}; expected {COLUMNS}")
    for c in ("row", "cluster", "distance", "outlier_score"):
        if not np.issubdtype(df[c].dtype, np.number):
            raise ValueError(f"label column '{c}' must be numeric; got {df[c].dtype}")


def _write_part(frame, path: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    validate_frame(frame)
    if "outlier_reason" not in frame:
        frame = frame.assign(outlier_reason="")
    for c in ("nearest_row", "nearest_distance", "path", "outlier_reasons"):
        if c not in frame:
            frame = frame.assign(**{c: None})
    table = pa.Table.from_pandas(frame[COLUMNS], schema=label_schema(), preserve_index=False)
    if F.is_url(path):
        with F.as_path(path).open("wb") as fh:
            pq.write_table(table, fh)
    else:
        pq.write_table(table, path)
    return len(frame)


def partition_path(labels_dir, model_id: str, batch_id: str) -> Path:
    return F.as_path(str(labels_dir)) / f"model={model_id}" / f"batch={batch_id}"


COMMITS = "_commits"
STALE_SECONDS = 3600  # an unrecorded part file older than this is a killed run's


def _records_dir(labels_dir, model_id: str, batch_id: str):
    return labels_dir / COMMITS / f"model={model_id}" / f"batch={batch_id}"


def _records(records_dir) -> list:
    """The commit records of a partition, oldest run first: [(run, path)]."""
    return sorted(((p.name[:-5], p) for p in records_dir.glob("*.json")), key=lambda r: r[0])


def _read_record(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _run_of(name: str) -> str | None:
    """The run id of a part file ``part-<run>-NNNNN.parquet`` (None for other names)."""
    if not (name.startswith("part-") and name.endswith(".parquet")):
        return None
    run, _, _ = name[len("part-"):-len(".parquet")].rpartition("-")
    return run or None


def _write_batch_remote(labels_dir, model_id: str, batch_id: str, parts) -> int:
    """``write_batch`` on an object store: parts under this run's names, its record last."""
    import dask
    from dask.delayed import Delayed

    target = partition_path(labels_dir, model_id, batch_id)
    run = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    names = []
    writes = []
    for i, part in enumerate(parts):
        name = f"part-{run}-{i:05d}.parquet"
        names.append(name)
        path = str(target / name)
        writes.append(dask.delayed(_write_part)(part, path) if isinstance(part, Delayed)
                      else _write_part(part, path))
    try:
        rows = sum(dask.compute(*writes))
    except BaseException:
        for name in names:
            try:
                (target / name).unlink(missing_ok=True)
            except Exception:  # noqa: BLE001 - the next write removes them once stale
                pass
        raise
    records = _records_dir(labels_dir, model_id, batch_id)
    (records / f"{run}.json").write_text(json.dumps({
        "run": run, "files": names, "rows": int(rows),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    _clean_partition(target, records)
    return rows


def _clean_partition(target, records_dir) -> None:
    """Keep the newest run's record and files; delete the files of every older recorded run
    (superseded), then their records, and part files no record names that are older than
    ``STALE_SECONDS`` (a killed run's; younger ones may be a run in progress)."""
    found = _records(records_dir)
    if not found:
        return
    superseded = {run for run, _ in found[:-1]}
    newest = _read_record(found[-1][1]) or {}
    keep = set(newest.get("files", []))
    now = time.time()
    for f in target.iterdir():
        run = _run_of(f.name)
        if f.name in keep or run is None:
            continue
        try:
            if run in superseded or now - _mtime(f) > STALE_SECONDS:
                f.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
    for _, rec in found[:-1]:
        rec.unlink(missing_ok=True)


def _mtime(obj) -> float:
    info = obj.info()
    when = info.get("LastModified") or info.get("mtime") or 0
    return when.timestamp() if hasattr(when, "timestamp") else float(when)


def _list_remote(labels_dir) -> list[dict]:
    """The committed partitions of an object-store labels dataset: each one's newest record."""
    out = []
    for m in (labels_dir / COMMITS).glob("model=*"):
        for b in m.glob("batch=*"):
            for _, rec in reversed(_records(b)):
                record = _read_record(rec)
                if record is not None:
                    break
            else:
                continue
            model, batch = m.name[6:], b.name[6:]
            part = partition_path(labels_dir, model, batch)
            out.append({"model": model, "batch": batch, "path": str(part),
                        "files": [part / n for n in record.get("files", [])]})
    return sorted(out, key=lambda p: (p["model"], p["batch"]))


def retrying(read):
    """Run ``read()``; on an object store, once more (up to three times) when a recorded file
    vanished under it: a later run rewrote the partition and removed the files it superseded."""
    for attempt in range(3):
        try:
            return read()
        except FileNotFoundError:
            if attempt == 2:
                raise


LOCK_FILE = ".lock"


@contextmanager
def dir_lock(labels_dir, shared: bool = False):
    """Hold ``LABELS/.lock`` (exclusive for writers, shared for readers). A reader of a labels
    dir it cannot write (read-only mount) and that has no lock file reads without one."""
    if F.is_url(str(labels_dir)):  # no flock on an object store: commit records instead
        yield
        return
    labels_dir = Path(labels_dir)
    path = labels_dir / LOCK_FILE
    try:
        if shared:
            fd = os.open(path, os.O_RDONLY)
        else:
            labels_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except (FileNotFoundError, PermissionError):
        if not shared:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _staging_in_use(folder: Path) -> bool:
    """Whether a live run holds this staging folder (its flock)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _restore_trash(labels_dir: Path):
    trash = labels_dir / ".trash"
    if trash.is_dir():
        for old in trash.iterdir():
            _, _, rest = old.name.partition("-")
            model, _, batch = rest.partition("--")
            target = labels_dir / model / batch
            if model.startswith("model=") and batch.startswith("batch=") and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old, target)
            else:
                shutil.rmtree(old, ignore_errors=True)


def recover(labels_dir):
    """Restore partitions whose swap was interrupted; drop the staging folders of dead runs
    (never those of a live run: see the module docstring)."""
    labels_dir = F.as_path(str(labels_dir))
    if isinstance(labels_dir, F.RemotePath) or not labels_dir.is_dir():
        return  # an object store has nothing to recover: see the module docstring
    with dir_lock(labels_dir):
        _recover_locked(labels_dir)


def _recover_locked(labels_dir: Path):
    _restore_trash(labels_dir)
    staging = labels_dir / ".staging"
    if staging.is_dir():
        for folder in staging.iterdir():
            if not _staging_in_use(folder):
                shutil.rmtree(folder, ignore_errors=True)


def open_for_reading(labels_dir) -> Path:
    """The labels folder, checked to be one and recovered from an interrupted swap."""
    labels_dir = F.as_path(str(labels_dir))
    if isinstance(labels_dir, F.RemotePath):
        if not (labels_dir / COMMITS).is_dir():
            raise InputError(f"{labels_dir}: no labels there (no {COMMITS}/ records)")
        return labels_dir
    if not labels_dir.is_dir():
        raise InputError(f"{labels_dir}: no such labels folder"
                         + (" (it is a file)" if labels_dir.exists() else ""))
    _recover_for_reading(labels_dir)
    return labels_dir


def _recover_for_reading(labels_dir: Path):
    """A reader restores an interrupted swap only (it may not be allowed to write)."""
    if (labels_dir / ".trash").is_dir():
        recover(labels_dir)


def write_batch(labels_dir, model_id: str, batch_id: str, parts, compute=None) -> int:
    """Write one batch's labels atomically (see the module docstring). Returns the row count.

    ``parts``: pandas DataFrames, or dask delayed objects each producing one DataFrame;
    ``compute``: what computes the delayed part writes (each gives its row count), default
    ``dask.compute`` (the labelling step passes one that says its progress).
    """
    import dask
    from dask.delayed import Delayed

    _check_name(model_id, "model id")
    _check_name(batch_id, "batch id")
    labels_dir = F.as_path(str(labels_dir))
    if isinstance(labels_dir, F.RemotePath):
        return _write_batch_remote(labels_dir, model_id, batch_id, parts)
    if labels_dir.exists() and not labels_dir.is_dir():
        raise InputError(f"{labels_dir}: is a file; labels are a folder (model=<id>/batch=<id>/), "
                         "pick a folder path")
    with dir_lock(labels_dir):
        _recover_locked(labels_dir)
        staging = labels_dir / ".staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        held = os.open(staging, os.O_RDONLY)  # this run's claim on its staging folder
        fcntl.flock(held, fcntl.LOCK_EX)
    try:
        parts = list(parts)
        writes = []
        for i, part in enumerate(parts):
            path = str(staging / f"part-{i:05d}.parquet")
            if isinstance(part, Delayed):
                writes.append(dask.delayed(_write_part)(part, path))
            else:
                writes.append(_write_part(part, path))
        lazy = all(isinstance(w, Delayed) for w in writes)
        rows = sum(compute(writes) if compute is not None and lazy and writes
                   else dask.compute(*writes))
        target = partition_path(labels_dir, model_id, batch_id)
        with dir_lock(labels_dir):
            target.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if target.exists():
                trash = labels_dir / ".trash"
                trash.mkdir(exist_ok=True)
                old = trash / f"{uuid.uuid4().hex}-model={model_id}--batch={batch_id}"
                os.replace(target, old)
            os.replace(staging, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(held)
    return rows


def list_partitions(labels_dir) -> list[dict]:
    labels_dir = F.as_path(str(labels_dir))
    if isinstance(labels_dir, F.RemotePath):
        return _list_remote(labels_dir)
    out = []
    if not labels_dir.is_dir():
        return out
    for m in sorted(labels_dir.glob("model=*")):
        for b in sorted(m.glob("batch=*")):
            out.append({"model": m.name[6:], "batch": b.name[6:], "path": str(b)})
    return out


def models(labels_dir) -> list[str]:
    return sorted({p["model"] for p in list_partitions(labels_dir)})


def _first_line(exc) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _row_span(pf, path) -> tuple[int, int]:
    """(first, last) of a part file's ``row`` column, from the Parquet statistics when written."""
    idx = pf.schema_arrow.get_field_index("row")
    lo = hi = None
    for g in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(g).column(idx).statistics
        if stats is None or not stats.has_min_max:
            rows = pf.read(columns=["row"]).column("row").to_numpy()
            return (int(rows.min()), int(rows.max())) if len(rows) else (0, -1)
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return (int(lo), int(hi)) if lo is not None else (0, -1)


def check_files(parts: list[dict]) -> list[tuple[dict, list[Path]]]:
    """The part files of ``parts`` (from ``list_partitions``), each checked: Parquet, the label
    schema (``outlier_reason`` may be absent: labels written before it), and rows no other file
    of the same model holds. Anything else is refused with one line naming the file.
    Files whose names start with '.' or '_' are ignored, as pyarrow and dask ignore them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = label_schema()
    out, spans = [], {}
    for p in parts:
        files = []
        remote = "files" in p  # an object store's partition: the files its record names
        for f in (p["files"] if remote else sorted(Path(p["path"]).iterdir())):
            if f.name.startswith((".", "_")):
                continue
            if not remote and not f.is_file():
                raise InputError(f"{f}: a folder inside a labels partition; labels partitions "
                                 "hold Parquet part files only: remove it")
            try:
                pf = pq.ParquetFile(f.open("rb") if remote else f)
                schema = pf.schema_arrow
            except FileNotFoundError:
                raise  # on an object store: rewritten under the reader (``retrying``)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{f}: not a Parquet file ({_first_line(exc)}); it is not "
                                 "vclust's labels: remove it") from None
            got = {field.name: field.type for field in schema}
            expected = {field.name: field.type for field in want}
            for optional in ("outlier_reason", "path", "outlier_reasons"):  # labels before them
                if optional not in got:
                    expected.pop(optional)
            if got != expected:
                raise InputError(
                    f"{f}: columns {', '.join(f'{k}:{v}' for k, v in got.items())} are not the "
                    f"label schema ({', '.join(f'{k}:{v}' for k, v in expected.items())}); it is "
                    "not vclust's labels: remove it")
            if pf.metadata.num_rows:
                spans.setdefault(p["model"], []).append((*_row_span(pf, f), f))
            files.append(f)
        out.append((p, files))
    for model, found in spans.items():
        found.sort(key=lambda s: (s[0], s[1], str(s[2])))
        for (lo0, hi0, f0), (lo1, hi1, f1) in zip(found, found[1:]):
            if lo1 <= hi0:
                raise InputError(
                    f"{f1}: rows {lo1}..{hi1} repeat rows of {f0} (model {model}); a copied "
                    "part file or partition: remove it")
    return out


def read_files(files, columns=None):
    import pyarrow.dataset as ds

    if files and isinstance(files[0], F.RemotePath):
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return ds.dataset([f.path for f in files], format="parquet", schema=label_schema(),
                          filesystem=PyFileSystem(FSSpecHandler(F.filesystem()))
                          ).to_table(columns=columns)
    return ds.dataset([str(f) for f in files], format="parquet",
                      schema=label_schema()).to_table(columns=columns)


def read_labels(labels_dir, model=None, batches=None, columns=None):
    """The labels as a pandas DataFrame with string columns ``model`` and ``batch``."""
    labels_dir = open_for_reading(labels_dir)
    return retrying(lambda: _read_labels(labels_dir, model, batches, columns))


def _read_labels(labels_dir, model, batches, columns):
    import pandas as pd

    with dir_lock(labels_dir, shared=True):
        parts = [p for p in list_partitions(labels_dir) if (model is None or p["model"] == model)]
        checked = [(p, files) for p, files in check_files(parts)
                   if batches is None or p["batch"] in batches]
        if not checked:
            raise InputError(f"{labels_dir}: no labels for model {model or '(any)'}"
                             + (f" and batches {list(batches)}" if batches else ""))
        frames = []
        for p, files in checked:
            f = read_files(files, columns).to_pandas()
            f["model"], f["batch"] = p["model"], p["batch"]
            frames.append(f)
    return pd.concat(frames, ignore_index=True)


def pick_model(labels_dir, model):
    present = models(labels_dir)
    if not present:
        raise InputError(f"{labels_dir}: holds no labels (expected model=<id>/batch=<id>/ folders)")
    if model is None:
        if len(present) > 1:
            raise InputError(f"{labels_dir} holds labels of several models ({', '.join(present)}); "
                             "pass --model ID or --registry DIR")
        return present[0]
    if model not in present:
        raise InputError(f"{labels_dir}: no labels of model '{model}'; present: {', '.join(present)}")
    return model
