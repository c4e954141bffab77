"""Model registry: ``ROOT/models/<id>/`` (ids sort by creation time) and ``ROOT/current``.

``current`` holds one model id and is replaced atomically (written to a temporary file, fsynced,
then ``os.replace``d), so a reader sees the old id or the new one, never a partial file.

``lock`` holds ``ROOT/registry.lock`` (vclust.storage.store.store_lock: an flock locally, a
conditional PUT on an object store) for a change made of several steps (``vclust promote``);
``promote.json`` is the journal of a promote in progress (``recover``).

On an object store (``s3://``; vclust.storage.fs) nothing is renamed: a model is written
straight to ``models/<id>/`` (a fresh id, random suffix), its ``manifest.json`` last (the
commit record: ``list`` and ``path`` see only models with one, so a model whose save was
killed is invisible, and removed by the next ``register``); ``current`` is one object replaced
whole by one PUT, so a reader sees the old id or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
import uuid
from pathlib import Path

from ..errors import InputError
from ..storage import fs as F

#: seconds a fit waits for the registry's lock (a promote holding it) before it makes its model
#: current; the model is registered either way
REGISTER_WAIT = 600.0


class Registry:
    def __init__(self, root):
        self.root = F.as_path(root)
        self.models_dir = self.root / "models"

    @property
    def remote(self) -> bool:
        return isinstance(self.root, F.RemotePath)

    def new_model_id(self) -> str:
        """``20261122T153012Z-3f2a``: UTC time plus a random suffix; lexical order is time order."""
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)

    def stage(self) -> Path:
        path = self.root / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def target(self, model_id: str):
        """On an object store, where a model is saved in place (``Model.save`` writes its
        manifest last); models whose save was killed (no manifest) are removed first."""
        self.clean()
        target = self.models_dir / model_id
        if target.exists():
            raise InputError(f"{self.root}: model {model_id} is already registered")
        return target

    def clean(self) -> None:
        """Remove uncommitted model folders (no manifest.json) older than an hour: a save that
        was killed. Recent ones may be a save in progress and are left."""
        if not self.remote or not self.models_dir.is_dir():
            return
        import time as _time

        for p in self.models_dir.iterdir():
            if (p / "manifest.json").exists():
                continue
            try:
                newest = max(float(_mtime(f)) for f in p.iterdir())
            except ValueError:
                newest = 0.0
            if _time.time() - newest > 3600:
                p.rmtree()

    def register(self, staged_dir, model_id=None, make_current=True) -> str:
        model_id = model_id or self.new_model_id()
        target = self.models_dir / model_id
        if self.remote:  # saved in place: its manifest (written last) registered it
            if staged_dir != target or not (target / "manifest.json").exists():
                raise InputError(f"{self.root}: model {model_id} was not saved in place")
        else:
            if target.exists():
                raise InputError(f"{self.root}: model {model_id} is already registered")
            self.models_dir.mkdir(parents=True, exist_ok=True)
            os.replace(staged_dir, target)
        if make_current:
            with self.lock(REGISTER_WAIT):
                self.switch_current(model_id)
        return model_id

    def switch_current(self, model_id: str, say=None) -> None:
        """Make ``model_id`` current; call under the registry's lock (``lock``), as a promote
        switches it: a promote killed before is finished or undone first
        (``recover``), so the switch cannot strand its journal."""
        import logging

        recover(self, say=say or logging.getLogger(__name__).warning)
        self.set_current(model_id)

    @contextlib.contextmanager
    def lock(self, wait: float = 60.0):
        """Hold the registry's lock; wait up to ``wait`` seconds for another holder, then
        refuse with one line (exit 2)."""
        from ..errors import StoreLockedError
        from ..storage.store import store_lock

        if not self.remote and not self.root.is_dir():
            raise InputError(f"{self.root}: no such registry")
        deadline = time.monotonic() + wait
        while True:
            try:
                with store_lock(self.root / "registry"):
                    yield
                return
            except StoreLockedError as exc:
                if time.monotonic() >= deadline:
                    raise InputError(f"{self.root}: another promote or fit holds the "
                                     f"registry (waited {wait:g} s): {exc}") from None
                time.sleep(0.2)

    def manifest(self, model_id: str) -> dict:
        """A registered model's manifest (JSON), read without loading the model."""
        try:
            return json.loads((self.path(model_id) / "manifest.json").read_text())
        except ValueError:
            return {}

    def remove(self, model_id: str) -> None:
        """Remove a model that is not current (a promote's successor being undone)."""
        if model_id == self.current():
            raise InputError(f"{self.root}: model {model_id} is current; not removed")
        F.rmtree(self.models_dir / model_id)

    @property
    def _journal(self):
        return self.root / "promote.json"

    def write_journal(self, record: dict) -> None:
        """The journal of a change in progress, written whole (renamed into place; one PUT)."""
        self._write_whole(self._journal, json.dumps(record))

    def read_journal(self) -> dict | None:
        try:
            return json.loads(self._journal.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            raise InputError(f"{self._journal}: unreadable; it is the journal of a promote that "
                             "was stopped: remove it and check `current`") from None

    def clear_journal(self) -> None:
        self._journal.unlink(missing_ok=True)

    def _write_whole(self, path, text: str) -> None:
        if self.remote:
            path.write_text(text)  # one PUT: old object or new
            return
        tmp = self.root / f".{path.name}.{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

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
        self._write_whole(self.root / "current", model_id + "\n")

    def resolve(self, ref) -> Path:
        """A model dir from an id, "current", or a path to a model dir."""
        if ref in (None, "current"):
            cur = self.current()
            if cur is None:
                raise InputError(f"{self.root}: no current model; fit one with --registry {self.root}")
            return self.path(cur)
        p = F.as_path(str(ref))
        if (p / "manifest.json").exists():
            return p
        return self.path(str(ref))


def check_registry(root) -> None:
    """The cheap check before a fit that registers its model: ``root`` is a folder (or new),
    on an object store its bucket reachable (vclust.storage.fs.as_path checks it)."""
    path = F.as_path(str(root))
    if not isinstance(path, F.RemotePath) and path.exists() and not path.is_dir():
        raise InputError(f"--registry {root}: is a file; a registry is a folder "
                         "(models/<id>/, current): pick a folder path")
    for part in ("models", "current"):
        sub = path / part
        if not isinstance(path, F.RemotePath) and sub.exists() and \
                sub.is_dir() != (part == "models"):
            raise InputError(f"--registry {root}: its '{part}' is a "
                             f"{'folder' if sub.is_dir() else 'file'}; not a vclust registry")


def save_model(model, model_dir=None, registry=None, make_current: bool = True,
               model_id: str | None = None) -> tuple[Path, str]:
    """Save to ``model_dir``, or register in ``registry`` (and make it current) under
    ``model_id`` (default a new one)."""
    if (model_dir is None) == (registry is None):
        raise InputError("pass exactly one of --model MODEL_DIR or --registry DIR")
    if model_dir is not None:
        path = model.save(F.as_path(str(model_dir)))
        return path, model.model_id
    reg = Registry(registry)
    model_id = model_id or reg.new_model_id()
    model.model_id = model_id
    if reg.remote:  # no rename on an object store: saved in place, manifest last
        target = reg.target(model_id)
        model.save(target)
        reg.register(target, model_id=model_id, make_current=make_current)
        return reg.path(model_id), model_id
    staged = reg.stage()
    target = staged / "model"
    model.save(target)
    reg.register(target, model_id=model_id, make_current=make_current)
    return reg.path(model_id), model_id


def resolve_model(model=None, registry=None):
    """Load a model from a dir, or from a registry (its ``current`` unless ``model`` names an id)."""
    from .bundle import Model

    if registry is not None:
        reg = Registry(registry)
        return Model.load(reg.resolve(model or "current"))
    if model is None:
        raise InputError("pass --model MODEL_DIR or --registry DIR")
    return Model.load(model)


def _mtime(obj) -> float:
    info = obj.info()
    when = info.get("LastModified") or info.get("mtime") or 0
    return when.timestamp() if hasattr(when, "timestamp") else float(when)


def swap_names(path, staged) -> None:
    """The staged names into place, the old file kept as ``.bak`` (copied, so the names file is
    never absent)."""
    import shutil

    path = Path(path)
    if path.exists():
        shutil.copyfile(path, path.with_name(path.name + ".bak"))
    os.replace(staged, path)


def recover(reg, say=print) -> None:
    """Finish or undo a promote that was killed (its journal is still there); call under the
    registry's lock. ``current`` already the successor (or the model): the names swapped in;
    otherwise the successor, its labels and the staged names removed."""
    journal = reg.read_journal()
    if journal is None:
        return
    target = journal.get("successor") or journal["model"]
    staged = journal.get("names_staged")
    if reg.current() == target:
        if staged and os.path.exists(staged):
            swap_names(journal["names"], staged)
        say(f"promote: completed the promote of {journal['model']} that was stopped after "
            f"{target} became current")
    else:
        if staged and os.path.exists(staged):
            os.unlink(staged)
        succ = journal.get("successor")
        if succ:
            labels = F.as_path(journal["labels"])
            F.rmtree(labels / f"model={succ}")
            F.rmtree(labels / "_commits" / f"model={succ}")
            reg.remove(succ)
        say(f"promote: undid the promote of {journal['model']} that was stopped before "
            f"{target} became current ({journal.get('previous')} stays current)")
    reg.clear_journal()
