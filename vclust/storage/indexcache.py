"""The outlier reference index and the fit's neighbour answers, kept on disk between processes.

The reference index depends only on the reference rows (the scorer's projection of a seeded
sample of the descriptor rows) and a few build settings, never on the clusters. A user fits
the same descriptor set many times (another k, a k-range, another algorithm, a mixture's
weights): each `vclust fit` is a fresh process, and each built the same index again and asked
it the same questions (the reference rows' own neighbours and the threshold sample's)
(benchmarks/RESULTS.md, figures behind the code). Here they are kept, keyed by the content digest
of the reference rows and everything else the answer depends on, so a hit is the answer a
fresh build would give (tests/test_outliers.py checks it, bit for bit).

Where: ``$VCLUST_CACHE_DIR/outlier-index`` (default ``$XDG_CACHE_HOME/vclust``, else
``~/.cache/vclust``); ``VCLUST_CACHE_DIR=off`` turns it off. One entry is a folder of
uncompressed ``.npy`` files and a JSON file (no pickle), written to a temporary folder and
renamed into place, so readers never see half an entry; entries beyond ``MAX_BYTES`` in total
are removed, least recently used first. An entry that cannot be read is ignored (and removed):
the index is built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: the whole cache's size limit; least recently used entries go first
MAX_BYTES = 2 * 2**30
FORMAT = 1
_OFF = ("off", "0", "none", "false")


def cache_root() -> Path | None:
    """The cache folder, or None when ``VCLUST_CACHE_DIR`` says off."""
    value = os.environ.get("VCLUST_CACHE_DIR")
    if value is not None and value.strip().lower() in _OFF:
        return None
    if value:
        base = Path(value).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "vclust"
    return base / "outlier-index"


def empty() -> bool:
    """True when nothing can come from the cache (off, or no entry yet): the first fit after
    an install builds its index, and may start importing pynndescent before it knows."""
    root = cache_root()
    try:
        return root is None or not any(root.iterdir())
    except OSError:
        return True


def entry_name(key: tuple) -> str:
    """The folder name of an entry: a digest of its key (strings and numbers only)."""
    return hashlib.sha256(repr((FORMAT,) + tuple(key)).encode()).hexdigest()[:32]


def load(key: tuple) -> dict | None:
    """The entry's ``{"params": dict, "arrays": {name: array}}``, or None (no cache, no entry,
    or an entry that cannot be read)."""
    root = cache_root()
    if root is None:
        return None
    where = root / entry_name(key)
    if not where.is_dir():
        return None
    try:
        meta = json.loads((where / "entry.json").read_text())
        if meta.get("key") != repr(tuple(key)):
            raise ValueError("key mismatch")
        arrays = {name: np.load(where / f"{name}.npy", allow_pickle=False)
                  for name in meta["arrays"]}
        try:
            os.utime(where)  # used: last to go
        except OSError:  # a cache shared read-only: still usable
            pass
        return {"params": meta["params"], "arrays": arrays}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("outlier index cache: ignoring unreadable entry %s (%s)", where, exc)
        shutil.rmtree(where, ignore_errors=True)
        return None


def save(key: tuple, params: dict, arrays: dict) -> bool:
    """Write an entry (JSON-able ``params``, numpy ``arrays``); False when the cache is off or
    the disk refuses (a cache never fails the command)."""
    root = cache_root()
    if root is None:
        return False
    where = root / entry_name(key)
    if where.is_dir():
        return True
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.asarray(a), allow_pickle=False)
        (tmp / "entry.json").write_text(json.dumps({"key": repr(tuple(key)), "params": params,
                                                    "arrays": sorted(arrays),
                                                    "written": time.time()}))
        os.replace(tmp, where)
        tmp = None
    except OSError as exc:
        if where.is_dir():  # another process wrote the same entry first
            return True
        log.warning("outlier index cache: not written (%s)", exc)
        return False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _trim(root)
    return True


def _trim(root: Path, max_bytes: int | None = None) -> None:
    """Remove the least recently used entries while the cache holds more than ``max_bytes``."""
    limit = MAX_BYTES if max_bytes is None else max_bytes
    entries = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith(".tmp-"):
            continue
        try:
            size = sum(f.stat().st_size for f in d.iterdir())
            entries.append((d.stat().st_mtime, size, d))
        except OSError:
            continue
    total = sum(e[1] for e in entries)
    for _, size, d in sorted(entries):
        if total <= limit:
            break
        shutil.rmtree(d, ignore_errors=True)
        total -= size
