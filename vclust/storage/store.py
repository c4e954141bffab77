"""Zarr v3 descriptor store: one row index shared by every descriptor set, appended batch by batch.

Layout::

    STORE/zarr.json              group attributes: format, version, chunk_rows, dims, ledger
    STORE/ids                    (n_rows,) string, forward slashes
    STORE/delivered_ids          (n_rows,) string, each id spelled as delivered (backslashes
                                 kept: what an export writes, so it joins the delivery's CSV);
                                 stores made before it have none (``delivered_ids`` reads ids)
    STORE/batch                  (n_rows,) string, the batch each row came in
    STORE/descriptors/<NAME>     (n_rows, dims) float32, chunked by rows
    STORE/pixels/<batch>/...     per-row pixel statistics of a measured batch (storage.pixels)

Every array names its dimensions (Zarr v3 ``dimension_names``: ``row``, and ``<NAME>_dim`` for
a descriptor set's columns) and every folder is a Zarr group, so the store opens without vclust:
``xarray.open_zarr(STORE)`` gives ids, delivered_ids and batch, ``group="descriptors"`` the
descriptor sets, ``group="pixels/<batch>"`` a batch's pixel statistics.
    STORE.lock                   beside the store while a writer holds it (on an object store:
                                 STORE.lock/<generation>, see ``store_lock``; the last one
                                 stays, marked released)

The ledger (a list in the group attributes) is the source of truth for what is stored: the rows
of batch *i* are ``ledger[i]["start"]:ledger[i]["stop"]``. An append resizes the arrays, writes
the rows and only then writes its ledger entry, so rows past the last entry are an unfinished
append: a writer rolls them back when it opens the store, and readers never see them.

On an object store (``s3://`` URLs, vclust.storage.fs) the same ledger is the commit record:
the group's ``zarr.json`` is one object, replaced whole by one PUT, written after every chunk of
the append, so nothing of the append is visible before it and all of it after. Nothing is
renamed; only the lock differs (``store_lock``).

This module knows nothing of file formats or clustering.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError, StoreLockedError
from . import fs as F

log = logging.getLogger(__name__)

FORMAT = "vclust-store"
VERSION = 1
DEFAULT_CHUNK_ROWS = 8192


COMPRESSIONS = ("none", "lz4", "zstd")
DELIVERED = "delivered_ids"


def check_compression(compression: str):
    if compression not in COMPRESSIONS:
        raise InputError(f"--compression must be one of {', '.join(COMPRESSIONS)}; "
                         f"got '{compression}'")


def _codec(compression: str):
    """Zarr compressors for descriptor arrays. Default "none": float32 CNN descriptors compress
    little while decoding takes most of every read (benchmarks/RESULTS.md, kernel figures).
    "lz4" or "zstd" trade
    that CPU for disk and network bytes, worth it where the store sits on slow shared storage."""
    import zarr

    if compression == "none":
        return None
    if compression == "lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")
    return zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def store_lock(path):
    """Hold ``<STORE>.lock`` for the duration: one writer at a time.

    The lock is an OS lock (``fcntl.flock``) on the lock file, so the kernel drops it when its
    holder dies, and deciding who holds it is one atomic call: of several processes racing for a
    lock left behind, exactly one gets it. The file also names its holder (pid, host, since) for
    the message the others get. A file naming a live process on this host (a writer of an older
    vclust that did not flock) or a process on another host (whose lock this host cannot see) is
    respected; one naming a dead process on this host is taken over with a warning.
    """
    import fcntl

    path = F.as_path(path)
    if isinstance(path, F.RemotePath):
        with _remote_lock(path):
            yield
        return
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            _refuse(path, lock, _read_holder(lock))
        # the file may have been released (unlinked) between our open and our flock: then we
        # hold a lock on a file nobody else will open; start again on the current one
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        break
    try:
        held = _read_holder(lock)
        if held.get("pid") and held.get("pid") != info["pid"]:
            if held.get("host") != info["host"] or pid_alive(held["pid"]):
                _refuse(path, lock, held)
            log.warning("taking over the lock of %s left by dead process %s", path, held["pid"])
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        try:
            os.unlink(lock)  # while still holding the flock: see the inode check above
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- object-store lock

LEASE_SECONDS = 60.0  # a remote lock not renewed for this long is taken over (holder gone)
_HELD: dict = {}  # store url -> (lock object, generation) held by this process


def _lease_seconds() -> float:
    return float(os.environ.get("VCLUST_S3_LEASE_SECONDS", LEASE_SECONDS))


def _generations(lock_dir) -> list:
    out = []
    for p in lock_dir.iterdir():
        if p.name.isdigit():
            out.append((int(p.name), p))
    return sorted(out, key=lambda g: g[0])


def _stale(held: dict) -> bool:
    """A remote lock generation no one holds: released, or its holder gone (a dead process on
    this host, at once, as the flock rule; or a lease not renewed in time, a holder on another
    host)."""
    if held.get("released"):
        return True
    if held.get("host") == socket.gethostname() and held.get("pid") and \
            not pid_alive(int(held["pid"])):
        return True
    return time.time() > float(held.get("expires", 0))


@contextmanager
def _remote_lock(path):
    """``store_lock`` on an object store, where there is no flock and no rename.

    The lock is a sequence of generation objects ``STORE.lock/<n>``. To take it, a writer lists
    them: if the highest names a live holder it is refused (one line, exit 2, as locally);
    otherwise (none, a released one, or a holder that is gone: ``_stale``) it creates generation
    n + 1 with a conditional PUT (``If-None-Match: *``, ``fs.put_if_absent``). The object store
    lets exactly one of several racing writers create it; the others list again and are
    refused. The winner holds the lock only if its generation is still the highest when it lists
    again; then it deletes the older ones. The highest generation is never deleted: releasing
    overwrites it with a released mark (and deletes the older ones), so the numbers only grow
    and a number is never created twice while it could be the highest. (When a release deleted
    it, a writer whose listing predated the release could create that number again beside a
    newer holder of generation 1: two held the lock; tests/test_s3.py plays that order.) A
    generation created below the highest (a number deleted since that listing) is given back
    and the writer lists again. The holder renews its lease (``expires``) from a thread every
    quarter lease. Before its commit (``Store.commit_batch``) a holder checks that its
    generation is still the highest (``check_held``): a holder whose lease expired while it was
    stalled and was taken over then stops with exit 4 instead of committing.
    Limits (docs/faults.md): a server that ignores ``If-None-Match`` gives no mutual exclusion;
    the check before the commit and the commit are two requests, so a holder stalled for a
    whole lease exactly between them could still commit beside its successor.
    """
    lock_dir = path.with_name(path.name + ".lock")
    lease = _lease_seconds()
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    while True:
        gens = _generations(lock_dir)
        gen = 1
        if gens:
            top, obj = gens[-1]
            try:
                held = json.loads(obj.read_text() or "{}")
            except FileNotFoundError:
                continue  # released between the listing and the read: list again
            except ValueError:
                held = {}
            if not _stale(held):
                _refuse(path, lock_dir, held)
            if not held.get("released"):
                log.warning("taking over the lock of %s left by process %s on %s", path,
                            held.get("pid", "?"), held.get("host", "?"))
            gen = top + 1
        mine = lock_dir / f"{gen:012d}"
        if F.put_if_absent(mine, json.dumps({**info, "expires": time.time() + lease}).encode()):
            try:
                newer = [g for g, _ in _generations(lock_dir) if g > gen]
            except BaseException:
                mine.unlink(missing_ok=True)  # not known to hold it: never leave it held
                raise
            if not newer:
                break
            # a number deleted since this writer listed, below the highest: give it back
            mine.unlink(missing_ok=True)
        # another writer created this generation first: list again (and be refused)
    stop = threading.Event()

    def renew():
        while not stop.wait(lease / 4):
            try:
                mine.write_text(json.dumps({**info, "expires": time.time() + lease}))
            except Exception:  # noqa: BLE001 - the next renewal tries again
                log.warning("could not renew the lock lease of %s", path)

    beat = threading.Thread(target=renew, name="vclust-lock-lease", daemon=True)
    beat.start()
    _HELD[str(path)] = (lock_dir, gen)
    try:
        try:  # the older generations, released or gone (left, they are only clutter)
            _drop_older(lock_dir, gen)
        except OSError as exc:
            log.warning("could not remove the older lock generations of %s (%s)", path, exc)
        yield
    finally:
        stop.set()
        beat.join()  # a renewal in flight must land before the released mark, never after it
        _HELD.pop(str(path), None)
        # the highest generation stays, marked released: the next writer takes gen + 1
        mine.write_text(json.dumps({"released": True, "pid": info["pid"], "host": info["host"],
                                    "since": info["since"], "until": time.time()}))
        _drop_older(lock_dir, gen)


def _drop_older(lock_dir, gen: int) -> None:
    """Delete the lock generations below ``gen``."""
    for g, obj in _generations(lock_dir):
        if g < gen:
            obj.unlink(missing_ok=True)


def check_held(path) -> None:
    """Before a commit on an object store: this process still holds the store's lock (its
    generation is the highest). Local stores hold an flock, which cannot be taken over."""
    from ..errors import EnvironmentFault

    held = _HELD.get(str(path))
    if held is None:
        return
    lock_dir, gen = held
    gens = _generations(lock_dir)
    if not gens or gens[-1][0] != gen:
        raise EnvironmentFault(
            f"{path}: this writer's lock lease expired and another writer took the store over; "
            "nothing of this run was committed",
            kept="the store keeps every committed batch; run the command again")


def _read_holder(lock: Path) -> dict:
    try:
        held = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


def _refuse(path: Path, lock: Path, held: dict):
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("since", 0)))
    raise StoreLockedError(
        f"store {path} is being written by pid {held.get('pid', '?')} on "
        f"{held.get('host', '?')} since {since}; wait for it to finish, or remove {lock} "
        "if that process is gone"
    ) from None


def open_descriptors(store_path, name: str, mode: str = "r"):
    """One descriptor set's Zarr array, opened from a worker task by the store's path alone."""
    return F.open_array(F.as_path(store_path) / "descriptors" / name, mode=mode)


def read_ids(store_path, start: int, stop: int) -> np.ndarray:
    """Ids of rows [start, stop), read from a worker task by the store's path alone."""
    arr = F.open_array(F.as_path(store_path) / "ids", mode="r")
    return np.asarray(arr[start:stop], dtype=object)


def read_delivered_ids(store_path, start: int, stop: int) -> np.ndarray:
    """Ids of rows [start, stop) spelled as delivered (the ids where the store predates that
    array), read from a worker task by the store's path alone."""
    path = F.as_path(store_path)
    name = DELIVERED if (path / DELIVERED / "zarr.json").exists() else "ids"
    return np.asarray(F.open_array(path / name, mode="r")[start:stop], dtype=object)


class Store:
    """A descriptor store. Open with ``Store.open(path)`` (read) or inside ``store_lock`` with
    ``Store.open(path, mode="a")`` (append; rolls back an unfinished append)."""

    def __init__(self, path, group):
        self.path = F.as_path(path)
        self._group = group

    # ------------------------------------------------------------------ opening

    @staticmethod
    def exists(path) -> bool:
        """Whether ``path`` holds a store (or at least a Zarr group to be checked on open)."""
        return (F.as_path(path) / "zarr.json").exists()

    @classmethod
    def open(cls, path, mode: str = "r") -> "Store":
        path = F.as_path(path)
        if not cls.exists(path):
            raise InputError(f"{path}: not a vclust store (no zarr.json); create one with vclust ingest")
        group = F.open_group(path, mode="r" if mode == "r" else "r+")
        attrs = group.attrs.asdict()
        if attrs.get("format") != FORMAT:
            raise InputError(f"{path}: a Zarr group but not a vclust store (format={attrs.get('format')!r})")
        if attrs.get("version", 0) > VERSION:
            raise InputError(
                f"{path}: store format version {attrs['version']} is newer than this vclust "
                f"understands ({VERSION}); upgrade vclust"
            )
        store = cls(path, group)
        if mode != "r":
            store._recover()
        return store

    @classmethod
    def create(cls, path, dims: dict[str, int], chunk_rows: int = DEFAULT_CHUNK_ROWS,
               compression: str = "none") -> "Store":
        check_compression(compression)
        path = F.as_path(path)
        if path.exists() and any(path.iterdir()):
            raise InputError(f"{path}: exists and is not an empty folder; pick a new store path")
        group = F.open_group(path, mode="w")
        for name in ("ids", DELIVERED, "batch"):
            group.create_array(name, shape=(0,), chunks=(chunk_rows,), dtype=str,
                               dimension_names=("row",))
        group.create_group("descriptors")
        for name, d in dims.items():
            group.create_array(
                f"descriptors/{name}", shape=(0, d), chunks=(chunk_rows, d), dtype="float32",
                compressors=_codec(compression), dimension_names=("row", f"{name}_dim"),
            )
        group.attrs.update(
            {"format": FORMAT, "version": VERSION, "chunk_rows": int(chunk_rows),
             "compression": compression,
             "dims": {k: int(v) for k, v in dims.items()}, "ledger": []}
        )
        return cls(path, group)

    def _recover(self):
        n = self.n_rows
        for arr in self._arrays():
            if arr.shape[0] != n:
                log.warning(
                    "%s: rolling back an unfinished append (%s has %d rows, ledger %d)",
                    self.path, arr.path, arr.shape[0], n,
                )
                arr.resize((n,) + arr.shape[1:])
                self._drop_chunks_past(arr, n)

    def _drop_chunks_past(self, arr, n_rows):
        """Delete chunk files wholly past ``n_rows`` so a later append never reads stale data."""
        first_dead = -(-n_rows // self.chunk_rows)
        chunk_dir = self.path / arr.path / "c"
        if not chunk_dir.is_dir():
            return
        for entry in chunk_dir.iterdir():
            if entry.name.isdigit() and int(entry.name) >= first_dead:
                if isinstance(entry, F.RemotePath):
                    entry.rmtree()  # a chunk object or a prefix of them
                else:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    # ------------------------------------------------------------------ reading

    @property
    def attrs(self) -> dict:
        return self._group.attrs.asdict()

    @property
    def ledger(self) -> list[dict]:
        return list(self.attrs.get("ledger", []))

    @property
    def n_rows(self) -> int:
        """Committed rows (rows of batches in the ledger)."""
        ledger = self.ledger
        return int(ledger[-1]["stop"]) if ledger else 0

    @property
    def compression(self) -> str:
        return str(self.attrs.get("compression", "lz4"))  # stores before the attribute: lz4

    @property
    def chunk_rows(self) -> int:
        return int(self.attrs["chunk_rows"])

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.attrs.get("dims", {}))

    @property
    def names(self) -> list[str]:
        return list(self.dims)

    def batch_ids(self) -> list[str]:
        return [b["id"] for b in self.ledger]

    def batch_entry(self, batch_id: str) -> dict:
        for b in self.ledger:
            if b["id"] == batch_id:
                return b
        raise InputError(
            f"{self.path}: no batch '{batch_id}'; batches are: {', '.join(self.batch_ids()) or 'none'}"
        )

    def choose_batches(self, batches=None, all_batches: bool = False) -> list[str]:
        """The batch ids a command works on: every batch with ``all_batches``, else ``batches``
        (each checked to exist); neither is a usage error."""
        if all_batches:
            return self.batch_ids()
        chosen = list(batches or [])
        if not chosen:
            raise InputError("pass --batch ID (one or more) or --all")
        for b in chosen:
            self.batch_entry(b)
        return chosen

    def batch_rows(self, batch_id: str) -> tuple[int, int]:
        entry = self.batch_entry(batch_id)
        return int(entry["start"]), int(entry["stop"])

    def _has_delivered(self) -> bool:
        return DELIVERED in set(self._group.array_keys())

    def _arrays(self):
        yield self._group["ids"]
        if self._has_delivered():
            yield self._group[DELIVERED]
        yield self._group["batch"]
        for name in self.names:
            yield self._group[f"descriptors/{name}"]

    def array(self, name: str):
        if name not in self.dims:
            raise InputError(
                f"{self.path}: no descriptor set '{name}'; the store holds: {', '.join(self.names)}"
            )
        return self._group[f"descriptors/{name}"]

    def descriptors(self, name: str, start: int = 0, stop: int | None = None):
        """Committed rows of one descriptor set as a dask array chunked as stored (read from
        the chunk files where ``rawrows.RawRows`` allows it, else by zarr)."""
        from .rawrows import dask_rows

        stop = self.n_rows if stop is None else stop
        return dask_rows(self.array(name), f"descriptors-{name}", start, stop)

    def ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.n_rows if stop is None else stop
        return np.asarray(self._group["ids"][start:stop], dtype=object)

    def delivered_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The ids as delivered (backslashes kept); the ids where the store predates them."""
        stop = self.n_rows if stop is None else stop
        name = DELIVERED if self._has_delivered() else "ids"
        return np.asarray(self._group[name][start:stop], dtype=object)

    def batches(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.n_rows if stop is None else stop
        return np.asarray(self._group["batch"][start:stop], dtype=object)

    def info(self) -> dict:
        """What ``vclust info`` prints."""
        return {
            "path": str(self.path),
            "format": f"{FORMAT} v{self.attrs.get('version')}",
            "rows": self.n_rows,
            "chunk_rows": self.chunk_rows,
            "compression": self.compression,
            "descriptors": self.dims,
            "batches": [
                {"id": b["id"], "rows": int(b["stop"]) - int(b["start"]), "start": b["start"],
                 "stop": b["stop"], "dropped": len(b.get("dropped_ids", [])),
                 "created": b.get("created"),
                 "pixels": (b.get("pixels") or {}).get("readable") if b.get("pixels") else None}
                for b in self.ledger
            ],
            "bytes_on_disk": F.du(self.path),
        }

    # ------------------------------------------------------------------ appending

    def begin_append(self, batch_id: str, n_rows: int):
        """Grow every array by ``n_rows``; return the first new row. Not committed until
        ``commit_batch``."""
        start = self.n_rows
        for arr in self._arrays():
            arr.resize((start + n_rows,) + arr.shape[1:])
        return start

    def write_index_columns(self, start: int, ids: np.ndarray, batch_id: str, delivered=None):
        """The ids (normalised), their spelling as delivered (default: the ids) and the batch
        of rows [start, start + len(ids))."""
        n = len(ids)
        step = self.chunk_rows * 8
        has_delivered = self._has_delivered()
        for a in range(0, n, step):
            b = min(n, a + step)
            self._group["ids"][start + a : start + b] = np.asarray(ids[a:b], dtype=str)
            if has_delivered:
                self._group[DELIVERED][start + a : start + b] = np.asarray(
                    (ids if delivered is None else delivered)[a:b], dtype=str)
            self._group["batch"][start + a : start + b] = np.asarray([batch_id] * (b - a), dtype=str)

    def annotate_batch(self, batch_id: str, key: str, value) -> None:
        """Write ``key: value`` into a committed batch's ledger entry (one attribute write: a
        reader sees the entry before or after, never half of it)."""
        check_held(self.path)
        ledger = self.ledger
        for b in ledger:
            if b["id"] == batch_id:
                b[key] = value
                break
        else:
            raise InputError(f"{self.path}: no batch '{batch_id}'")
        self._group.attrs["ledger"] = ledger

    def commit_batch(self, entry: dict):
        """Write the ledger entry: the append becomes visible."""
        check_held(self.path)
        ledger = self.ledger
        ledger.append(entry)
        self._group.attrs["ledger"] = ledger

