"""Files replaced whole: a reader sees the old content or the new, never a part.

On a local disk the new content is written to a temporary file beside the target (same folder,
so the same file system), flushed to disk, then ``os.replace``d over it. On an object store
(vclust.storage.fs.RemotePath) an object is one PUT, replaced whole by the store itself.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from . import fs as F


def replace_with(path, write) -> None:
    """Call ``write(tmp_path)`` to make the new file, then put it in place of ``path``."""
    if isinstance(path, F.RemotePath):
        write(path)
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    """``path`` replaced whole by ``text`` (UTF-8)."""
    if isinstance(path, F.RemotePath):
        path.write_text(text)
        return
    replace_with(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes(path, data: bytes) -> None:
    """``path`` replaced whole by ``data``."""
    if isinstance(path, F.RemotePath):
        path.write_bytes(data)
        return
    replace_with(path, lambda tmp: Path(tmp).write_bytes(data))
