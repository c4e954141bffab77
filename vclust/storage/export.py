"""The delivery's CSV: one model's labels, one row per image, ``path`` spelled as delivered."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .labels import (check_files, dir_lock, list_partitions, open_for_reading, pick_model,
                     read_files, retrying)
from .names import read_names

#: the export: ``path`` as delivered (the delivery's own spelling, backslashes kept; the store's
#: id where labels predate it), the store's ``image_id`` (forward slashes), the ``model``
CSV_COLUMNS = ["path", "image_id", "model", "cluster", "is_outlier", "outlier_score",
               "outlier_reason", "outlier_reasons"]



def export_csv(labels_dir, csv_path, model=None, names=None) -> int:
    """``path,image_id,model,cluster,is_outlier,outlier_score,outlier_reason,outlier_reasons``
    (``outlier_reasons``: every reason that fired, strongest first, joined by ``|``; ``path`` as
    delivered, so a plain join on the delivery's own CSV matches; ``cluster_name`` when
    ``names``, a CSV ``cluster,name[,note]``, is given), one row per image ordered by row,
    written partition by partition to a temporary file renamed into place. Every part file is
    checked first (``check_files``). Returns the row count."""
    labels_dir = open_for_reading(labels_dir)
    return retrying(lambda: _export_csv(labels_dir, csv_path, model, names))


def _export_csv(labels_dir, csv_path, model, names) -> int:
    with dir_lock(labels_dir, shared=True):
        model = pick_model(labels_dir, model)
        named = read_names(names) if names else None
        parts = [p for p in list_partitions(labels_dir) if p["model"] == model]
        frames = []
        for p, files in check_files(parts):
            if not files:
                continue
            t = read_files(files, ["row"])
            first = min(t.column("row").to_numpy()) if t.num_rows else 0
            frames.append((int(first), p["path"], files))
        if named is not None:  # every named cluster must be one of the labels' clusters
            present = set()
            for _, _, files in frames:
                t = read_files(files, ["cluster"])
                present |= set(np.unique(t.column("cluster").to_numpy()).tolist())
            unknown = sorted(set(named) - present)
            if unknown:
                raise InputError(f"--names {names}: model {model} has no cluster "
                                 f"{', '.join(map(str, unknown))} in its labels")
        csv_path = Path(csv_path)
        if csv_path.is_dir():
            raise InputError(f"--csv {csv_path}: is a folder; name the CSV file to write")
        for parent in csv_path.parents:
            if parent.exists() and not parent.is_dir():
                raise InputError(f"--csv {csv_path}: {parent} is a file, not a folder; pick "
                                 "another path")
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = csv_path.with_name(f".{csv_path.name}.tmp")
        n = 0
        try:
            with open(tmp, "w", newline="") as fh:
                cols = CSV_COLUMNS + (["cluster_name"] if named is not None else [])
                fh.write(",".join(cols) + "\n")
                for _, _, files in sorted(frames, key=lambda x: (x[0], x[1])):
                    f = read_files(files).to_pandas().sort_values("row")
                    f["path"] = f["path"].fillna(f["image_id"])
                    f["model"] = model
                    f["outlier_reason"] = f["outlier_reason"].fillna("")
                    # every reason that fired, strongest first, joined by "|" (empty before them)
                    f["outlier_reasons"] = [("|".join(r) if r is not None else "")
                                            for r in f["outlier_reasons"]]
                    if named is not None:
                        f["cluster_name"] = f["cluster"].map(
                            lambda c: named.get(int(c), ("", ""))[0])
                    f[cols].to_csv(fh, header=False, index=False)
                    n += len(f)
            os.replace(tmp, csv_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return n
