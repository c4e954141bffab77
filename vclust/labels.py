"""Labels as a Parquet dataset partitioned ``model=<id>/batch=<id>/``, and the CSV export.

One row per image: image_id string, row int64, cluster int32, distance float32, outlier_score
float32, is_outlier bool, outlier_reason string (the term of the outlier score that flagged the
row, or the pixel reason that did (vclust.numerics.pixels), "" when not flagged; labels written
before it read as null), nearest_row int64 and nearest_distance float32 (the row's nearest
reference row of the outlier index other than itself, and its distance: the near-duplicate
evidence, vclust.duplicates; null in labels written before them). The partition values live in the directory names only (hive style), so
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
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from .errors import InputError

COLUMNS = ["image_id", "row", "cluster", "distance", "outlier_score", "is_outlier",
           "outlier_reason", "nearest_row", "nearest_distance"]
DTYPES = {"image_id": "string", "row": "int64", "cluster": "int32", "distance": "float32",
          "outlier_score": "float32", "is_outlier": "bool", "outlier_reason": "string",
          "nearest_row": "int64", "nearest_distance": "float32"}
OPTIONAL = ("outlier_reason", "nearest_row", "nearest_distance")  # null in older labels
CSV_COLUMNS = ["path", "cluster", "is_outlier", "outlier_score", "outlier_reason"]


def label_schema():
    import pyarrow as pa

    return pa.schema([("image_id", pa.string()), ("row", pa.int64()), ("cluster", pa.int32()),
                      ("distance", pa.float32()), ("outlier_score", pa.float32()),
                      ("is_outlier", pa.bool_()), ("outlier_reason", pa.string()),
                      ("nearest_row", pa.int64()), ("nearest_distance", pa.float32())])


def read_names(path, n_clusters: int | None = None) -> dict[int, tuple[str, str]]:
    """Analysts' cluster names: a CSV ``cluster,name[,note]`` -> {cluster: (name, note)}.

    A cluster id that is not a whole number, is repeated, or (given ``n_clusters``) is not a
    cluster of the model is refused with one line naming it.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--names {path}: no such file")
    try:
        f = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--names {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    f.columns = [c.strip().lower() for c in f.columns]
    if not {"cluster", "name"} <= set(f.columns):
        raise InputError(f"--names {path}: expected columns cluster,name[,note]; got "
                         f"{','.join(f.columns)}")
    out = {}
    for raw, name, note in zip(f["cluster"], f["name"], f.get("note", [""] * len(f))):
        try:
            k = int(raw.strip())
        except ValueError:
            raise InputError(f"--names {path}: cluster '{raw}' is not a cluster number") from None
        if k in out:
            raise InputError(f"--names {path}: cluster {k} is named twice")
        if n_clusters is not None and not 0 <= k < n_clusters:
            raise InputError(f"--names {path}: the model has no cluster {k} (its clusters are "
                             f"0..{n_clusters - 1})")
        out[k] = (name.strip(), note.strip())
    return out


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
    for c in ("nearest_row", "nearest_distance"):
        if c not in frame:
            frame = frame.assign(**{c: None})
    table = pa.Table.from_pandas(frame[COLUMNS], schema=label_schema(), preserve_index=False)
    pq.write_table(table, path)
    return len(frame)


def partition_path(labels_dir, model_id: str, batch_id: str) -> Path:
    return Path(labels_dir) / f"model={model_id}" / f"batch={batch_id}"


def recover(labels_dir):
    """Restore partitions whose swap was interrupted; drop stale staging and trash folders."""
    labels_dir = Path(labels_dir)
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
    shutil.rmtree(labels_dir / ".staging", ignore_errors=True)


def write_batch(labels_dir, model_id: str, batch_id: str, parts) -> int:
    """Write one batch's labels atomically (see the module docstring). Returns the row count.

    ``parts``: pandas DataFrames, or dask delayed objects each producing one DataFrame.
    """
    import dask
    from dask.delayed import Delayed

    _check_name(model_id, "model id")
    _check_name(batch_id, "batch id")
    labels_dir = Path(labels_dir)
    recover(labels_dir)
    staging = labels_dir / ".staging" / uuid.uuid4().hex
    staging.mkdir(parents=True)
    parts = list(parts)
    writes = []
    for i, part in enumerate(parts):
        path = str(staging / f"part-{i:05d}.parquet")
        if isinstance(part, Delayed):
            writes.append(dask.delayed(_write_part)(part, path))
        else:
            writes.append(_write_part(part, path))
    rows = sum(dask.compute(*writes))
    target = partition_path(labels_dir, model_id, batch_id)
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
    return rows


def list_partitions(labels_dir) -> list[dict]:
    labels_dir = Path(labels_dir)
    out = []
    if not labels_dir.is_dir():
        return out
    for m in sorted(labels_dir.glob("model=*")):
        for b in sorted(m.glob("batch=*")):
            out.append({"model": m.name[6:], "batch": b.name[6:], "path": str(b)})
    return out


def models(labels_dir) -> list[str]:
    return sorted({p["model"] for p in list_partitions(labels_dir)})


def read_labels(labels_dir, model=None, batches=None, columns=None):
    """The labels as a pandas DataFrame with string columns ``model`` and ``batch``."""
    import pandas as pd
    import pyarrow.dataset as ds

    recover(labels_dir)
    parts = [p for p in list_partitions(labels_dir)
             if (model is None or p["model"] == model) and (batches is None or p["batch"] in batches)]
    if not parts:
        raise InputError(f"{labels_dir}: no labels for model {model or '(any)'}"
                         + (f" and batches {list(batches)}" if batches else ""))
    frames = []
    for p in parts:
        table = ds.dataset(p["path"], format="parquet", schema=label_schema()).to_table(columns=columns)
        f = table.to_pandas()
        f["model"], f["batch"] = p["model"], p["batch"]
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def _pick_model(labels_dir, model):
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


def export_csv(labels_dir, csv_path, model=None, names=None) -> int:
    """``path,cluster,is_outlier,outlier_score,outlier_reason`` (and ``cluster_name`` when
    ``names``, a CSV ``cluster,name[,note]``, is given), one row per image ordered by row,
    written partition by partition to a temporary file renamed into place. Returns the row
    count."""
    import pyarrow.dataset as ds

    model = _pick_model(labels_dir, model)
    named = read_names(names) if names else None
    parts = [p for p in list_partitions(labels_dir) if p["model"] == model]
    frames = []
    for p in parts:
        t = ds.dataset(p["path"], format="parquet", schema=label_schema()).to_table(
            columns=["row", "image_id", "cluster", "is_outlier", "outlier_score"])
        first = t.column("row")[0].as_py() if t.num_rows else 0
        frames.append((first, p["path"]))
    if named is not None:  # every named cluster must be one of the labels' clusters
        present = set()
        for _, path in frames:
            t = ds.dataset(path, format="parquet", schema=label_schema()).to_table(columns=["cluster"])
            present |= set(np.unique(t.column("cluster").to_numpy()).tolist())
        unknown = sorted(set(named) - present)
        if unknown:
            raise InputError(f"--names {names}: model {model} has no cluster "
                             f"{', '.join(map(str, unknown))} in its labels")
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    n = 0
    with open(tmp, "w", newline="") as fh:
        cols = CSV_COLUMNS + (["cluster_name"] if named is not None else [])
        fh.write(",".join(cols) + "\n")
        for _, path in sorted(frames):
            f = ds.dataset(path, format="parquet", schema=label_schema()).to_table().to_pandas()
            f = f.sort_values("row").rename(columns={"image_id": "path"})
            f["outlier_reason"] = f["outlier_reason"].fillna("")
            if named is not None:
                f["cluster_name"] = f["cluster"].map(lambda c: named.get(int(c), ("", ""))[0])
            f[cols].to_csv(fh, header=False, index=False)
            n += len(f)
    os.replace(tmp, csv_path)
    return n
