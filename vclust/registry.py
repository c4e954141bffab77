"""Model registry: ``ROOT/models/<id>/`` (ids sort by creation time) and ``ROOT/current``.

``current`` holds one model id and is replaced atomically (written to a temporary file, fsynced,
then ``os.replace``d), so a reader sees the old id or the new one, never a partial file.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from pathlib import Path

from .errors import InputError


class Registry:
    def __init__(self, root):
        self.root = Path(root)
        self.models_dir = self.root / "models"

    def new_model_id(self) -> str:
        """``20261122T153012Z-3f2a``: UTC time plus a random suffix; lexical order is time order."""
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)

    def stage(self) -> Path:
        path = self.root / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def register(self, staged_dir, model_id=None, make_current=True) -> str:
        model_id = model_id or self.new_model_id()
        target = self.models_dir / model_id
        if target.exists():
            raise InputError(f"{self.root}: model {model_id} is already registered")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        os.replace(staged_dir, target)
        if make_current:
            self.set_current(model_id)
        return model_id

    def list(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if (p / "manifest.json").exists())

    def path(self, model_id: str) -> Path:
        p = self.models_dir / model_id
        if not (p / "manifest.json").exists():
            raise InputError(f"{self.root}: no model '{model_id}'; models: {', '.join(self.list()) or 'none'}")
        return p

    def current(self) -> str | None:
        try:
            return (self.root / "current").read_text().strip() or None
        except FileNotFoundError:
            return None

    def set_current(self, model_id: str):
        self.path(model_id)
        tmp = self.root / f".current.{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(model_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / "current")

    def resolve(self, ref) -> Path:
        """A model dir from an id, "current", or a path to a model dir."""
        if ref in (None, "current"):
            cur = self.current()
            if cur is None:
                raise InputError(f"{self.root}: no current model; fit one with --registry {self.root}")
            return self.path(cur)
        p = Path(ref)
        if (p / "manifest.json").exists():
            return p
        return self.path(str(ref))
