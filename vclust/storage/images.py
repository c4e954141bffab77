"""Images read in place from a zip file or a folder: bytes, thumbnails, montages.

The analysts' report shows the vehicle images themselves, read straight from the delivery's
``veriwild.zip`` (or a folder of images) without unpacking it:

    source = ImageSource("IntelliVision_case/veriwild.zip")   # InputError if not a zip/folder
    source.read("veriwild/1/00001/000001.jpg")                 # bytes, or None when missing
    source.thumbnail("veriwild\\1\\00001\\000001.jpg")         # PIL image, or None
    write_thumbnails(source, ids, "report/thumbs")             # one small JPEG per id, once
    montage([img_or_none, ...], cols=8)                        # a grid picture, grey for None

Ids are matched as path suffixes. An id ``veriwild/1/00001/000001.jpg`` (Windows separators
accepted) names the entry whose path *ends* with it on a ``/`` boundary: the entry
``veriwild/1/00001/000001.jpg`` itself, or ``VeRi-Wild/veriwild/1/00001/000001.jpg`` below an extra
leading folder, but never ``xveriwild/1/00001/000001.jpg``. When several entries match, the
shortest name wins (then the first in sort order), so the answer does not depend on the order of
the lookups. Ids with ``..`` components never match.

Zip: opened once per process (a forked or unpickled copy of an ``ImageSource`` reopens the file),
never unpacked. The central directory is parsed (vclust.storage.zipdir) rather than by
``zipfile.ZipFile``, which builds an object per entry: several times the time and memory of
the directory's bytes plus a dict (benchmarks/RESULTS.md, figures behind the code). Entries are indexed by their last two path
components, so a lookup is one dict access and a suffix check. Stored and deflated
entries (all that image zips hold) are read directly and CRC checked; other methods go through
``zipfile``, opened on first need. Zip64 archives (more than 65,535 entries) are supported.

Folder: ids are paths relative to the folder, or to one of its immediate sub-folders (one extra
leading folder); the folder may also be the id's own first folder (``--images .../veriwild`` for
ids ``veriwild/...``). Files are looked up on disk, never listed.

No images: ``source=None`` means "no images given" and yields no pictures:
``write_thumbnails(None, ids, ...)`` maps every id to None and writes nothing, and ``montage``
draws a grey placeholder for every None. Callers need no special case.

Unreadable images (a corrupt or truncated JPEG, garbage bytes, a bad zip entry) never raise:
they read as None and are counted as ``unreadable`` by ``write_thumbnails``, which logs one
warning line with the count and where each is listed (a CSV the caller names, or the INFO log
lines, ``-v``, giving each one's reason).

Bounds (hostile input): an entry is read only when both sizes in its header are at most
``MAX_ENTRY_BYTES``, and it is inflated at most one byte past the size its header states (a
header that understates it reads as unreadable, never inflated whole); a picture whose header
claims more than ``MAX_PIXELS`` pixels is refused before it is decoded; a JPEG or PNG whose
header claims more pixels than its bytes can hold (a few hundred bytes "of" 12000 x 12000) is
refused (vclust.storage.decode.open_image).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import InputError
# what callers import from here
from .decode import (MAX_PIXELS, PLACEHOLDER_GREY, THUMB_SIZE, TILE_SIZE,  # noqa: F401
                     ImageRefused, decode_with_reason, decode_thumbnail, montage, open_image,
                     placeholder)
from .zipdir import CDIR, CDIR_LENS, central_directory, inflate, zip64_extra

log = logging.getLogger(__name__)

JPEG_QUALITY = 80
MAX_ENTRY_BYTES = 256 << 20  # larger zip entries (either size in the header) are not read

# outcome of one lookup
_OK, _MISSING, _UNREADABLE = "ok", "missing", "unreadable"


# --------------------------------------------------------------------------- ids and entry names


def normalise_id(image_id) -> str | None:
    """An id as a relative path with forward slashes, or None if it cannot name an image.

    Parameters
    ----------
    image_id : str or path-like
        ``veriwild\\1\\00001\\000001.jpg``, ``./veriwild/1/00001/000001.jpg``, ...

    Returns
    -------
    str or None
        ``veriwild/1/00001/000001.jpg``; None for an empty id or one with a ``..`` component.
    """
    parts = [p for p in str(image_id).strip().replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _norm_entry(name: str) -> str:
    """A zip entry name with forward slashes and no leading ``/`` or ``./``."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _tail2(name: str) -> str:
    """The last two path components of a normalised name (the whole name if it has fewer)."""
    i = name.rfind("/")
    if i <= 0:
        return name
    j = name.rfind("/", 0, i)
    return name[j + 1:]


def _suffix_match(name: str, nid: str) -> bool:
    return name == nid or (name.endswith(nid) and name[-len(nid) - 1] == "/")


def thumb_name(image_id, size: Sequence[int] = THUMB_SIZE) -> str:
    """The stable file name of an id's thumbnail: a hash of the normalised id and the size.

    ``veriwild\\1\\x.jpg`` and ``veriwild/1/x.jpg`` share a name; another size gets another.
    """
    nid = normalise_id(image_id) or str(image_id)
    digest = hashlib.sha1(f"{nid}|{int(size[0])}x{int(size[1])}".encode()).hexdigest()
    return f"{digest[:20]}.jpg"


# --------------------------------------------------------------------------- the source


class ImageSource:
    """Images read in place from a zip file or a folder, looked up by id as a path suffix.

    Parameters
    ----------
    path : str or path-like
        A ``.zip`` file (any name: it is recognised by its content) or a folder of images.

    Raises
    ------
    InputError
        ``path`` does not exist, is a file that is not a zip (a text file named ``x.zip``, a
        truncated zip), or cannot be read; one line naming the path and what was expected.

    Attributes
    ----------
    path : pathlib.Path
    kind : str
        ``"zip"`` or ``"folder"``.

    Notes
    -----
    Safe to share between threads (zip reads are serialised, decoding is not). A copy made by
    pickling or by ``fork`` reopens the zip in its own process on first use.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fp = None
        self._pid = os.getpid()
        self._fallback = None
        if self.path.is_dir():
            self.kind = "folder"
            try:
                self._subdirs = sorted(e.name for e in os.scandir(self.path)
                                       if e.is_dir() and not e.name.startswith("."))
            except OSError as exc:
                raise InputError(f"images {self.path}: cannot be read ({exc.strerror or exc}); "
                                 "expected a zip file or a folder of images") from None
            return
        if not self.path.exists():
            raise InputError(f"images {self.path}: no such file or folder; expected a zip file or "
                             "a folder of images")
        if not self.path.is_file():
            raise InputError(f"images {self.path}: is not a zip file or a folder of images")
        self.kind = "zip"
        self._open_zip()
        try:
            self._build_index()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ zip plumbing

    def _open_zip(self):
        try:
            self._fp = open(self.path, "rb")
        except OSError as exc:
            raise InputError(f"images {self.path}: cannot be read ({exc.strerror or exc}); "
                             "expected a zip file or a folder of images") from None
        self._pid = os.getpid()

    def _file(self):
        if self._fp is None or self._pid != os.getpid():  # unpickled, or a forked child
            self._open_zip()
        return self._fp

    def _build_index(self):
        """Read the central directory; index the entries by their last two path components.

        The directory's bytes are kept (about 85 bytes an entry) and the index maps a name's
        last two components, as UTF-8 bytes, to the record's position in them: no per-entry
        objects besides the index itself.
        """
        try:
            cd, base = central_directory(self._fp)
        except (ValueError, struct.error, OSError) as exc:
            raise InputError(f"images {self.path}: is not a zip file or a folder of images "
                             f"({exc})") from None
        index: dict = {}
        lens = CDIR_LENS.unpack_from
        pos, end, n = 0, len(cd), 0
        try:
            while pos < end:
                if cd[pos:pos + 4] != b"PK\x01\x02":
                    raise ValueError(f"bad central directory record at byte {pos}")
                nlen, elen, clen = lens(cd, pos + 28)
                p = pos + 46
                name = cd[p:p + nlen]
                at, pos = pos, p + nlen + elen + clen
                if name[-1:] in (b"/", b"\\"):
                    continue  # a folder
                if b"\\" in name or name[:1] in (b"/", b".") or not name.isascii():
                    name = self._norm_name(cd, at).encode("utf-8")  # the rare slow path
                i = name.rfind(b"/")
                if i > 0:
                    name = name[name.rfind(b"/", 0, i) + 1:]
                prev = index.get(name)
                if prev is None:
                    index[name] = at
                elif type(prev) is list:
                    prev.append(at)
                else:
                    index[name] = [prev, at]
                n += 1
        except (ValueError, struct.error) as exc:
            raise InputError(f"images {self.path}: is not a zip file or a folder of images "
                             f"({exc})") from None
        self._cd, self._base, self._index, self._n = cd, base, index, n
        self._by_base = None
        log.info("images: %d entries indexed in %s", n, self.path)

    @staticmethod
    def _raw_name(cd: bytes, at: int) -> str:
        flags = struct.unpack_from("<H", cd, at + 8)[0]
        nlen = struct.unpack_from("<H", cd, at + 28)[0]
        return cd[at + 46:at + 46 + nlen].decode("utf-8" if flags & 0x800 else "cp437",
                                                 errors="replace")

    @classmethod
    def _norm_name(cls, cd: bytes, at: int) -> str:
        return _norm_entry(cls._raw_name(cd, at))

    def _candidates(self, nid: str) -> list:
        if "/" in nid:
            found = self._index.get(_tail2(nid).encode("utf-8"))
        else:  # a bare file name: matches an entry of that name in any folder
            if self._by_base is None:
                by_base: dict = {}
                for key, ats in self._index.items():
                    by_base.setdefault(key[key.rfind(b"/") + 1:], []).extend(
                        ats if type(ats) is list else [ats])
                self._by_base = by_base
            found = self._by_base.get(nid.encode("utf-8"))
        if found is None:
            return []
        return found if type(found) is list else [found]

    def _zip_entry(self, nid: str) -> int | None:
        """The central directory position of the entry ``nid`` names, or None."""
        best = None
        for at in self._candidates(nid):
            name = self._norm_name(self._cd, at)
            if _suffix_match(name, nid) and (best is None or (len(name), name) < best[0]):
                best = ((len(name), name), at)
        return None if best is None else best[1]

    def _zip_read(self, at: int) -> bytes:
        """An entry's bytes, CRC checked. Stored and deflated entries are read directly; other
        methods through ``zipfile`` (opened on first need)."""
        (_, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, _, _, _, _,
         offset) = CDIR.unpack_from(self._cd, at)
        if 0xFFFFFFFF in (csize, usize, offset):
            extra = self._cd[at + 46 + nlen:at + 46 + nlen + elen]
            csize, usize, offset = zip64_extra(extra, csize, usize, offset)
        offset += self._base
        if flags & 0x1:
            raise ValueError("encrypted entry")
        if csize > MAX_ENTRY_BYTES or usize > MAX_ENTRY_BYTES:
            raise ValueError(f"its header gives {max(csize, usize):,} bytes, more than the "
                             f"{MAX_ENTRY_BYTES:,} an image may have")
        if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            with self._lock:
                if self._fallback is None or self._fallback[0] != os.getpid():
                    self._fallback = (os.getpid(), zipfile.ZipFile(self.path))
                # zipfile stops at the header's size and checks the CRC there
                with self._fallback[1].open(self._raw_name(self._cd, at)) as f:
                    return f.read(usize + 1)
        with self._lock:
            fp = self._file()
            fp.seek(offset)
            head = fp.read(30)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise ValueError("bad local header")
            nlen, elen = struct.unpack_from("<HH", head, 26)
            fp.seek(offset + 30 + nlen + elen)
            data = fp.read(csize)
        if len(data) < csize:
            raise ValueError("entry cut short")
        if method == zipfile.ZIP_DEFLATED:
            data = inflate(data, usize)
        if len(data) != usize or zlib.crc32(data) != crc:
            raise ValueError("bad CRC or size")
        return data

    # ------------------------------------------------------------------ folder plumbing

    def _folder_file(self, nid: str) -> Path | None:
        root = self.path
        first, _, rest = nid.partition("/")
        tries = [root / nid]
        if rest and first == root.name:  # --images .../veriwild with ids veriwild/...
            tries.append(root / rest)
        tries += [root / d / nid for d in self._subdirs]
        for p in tries:
            if p.is_file():
                return p
        return None

    # ------------------------------------------------------------------ public

    def __len__(self) -> int:
        """Number of files in a zip source (folders are not listed: 0)."""
        return self._n if self.kind == "zip" else 0

    def __repr__(self) -> str:
        return f"ImageSource({str(self.path)!r}, kind={self.kind!r})"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fp"] = None
        state["_fallback"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def close(self) -> None:
        """Close the zip file (it is reopened if the source is used again)."""
        if getattr(self, "_fp", None) is not None:
            self._fp.close()
            self._fp = None
        if getattr(self, "_fallback", None) is not None:
            self._fallback[1].close()
            self._fallback = None

    def locate(self, image_id) -> str | None:
        """The zip entry name or file path that ``image_id`` names, or None if there is none.

        Parameters
        ----------
        image_id : str
            An image id (forward or backward slashes).

        Returns
        -------
        str or None
        """
        nid = normalise_id(image_id)
        if nid is None:
            return None
        if self.kind == "zip":
            at = self._zip_entry(nid)
            return None if at is None else self._raw_name(self._cd, at)
        p = self._folder_file(nid)
        return None if p is None else str(p)

    def fetch(self, image_id) -> tuple[str, bytes | None]:
        """(status, bytes or None) of one image: the status says why there are no bytes."""
        return self.fetch_why(image_id)[:2]

    def fetch_why(self, image_id) -> tuple[str, bytes | None, str]:
        """(status, bytes or None, why an unreadable entry is unreadable, else "")."""
        nid = normalise_id(image_id)
        if nid is None:
            return _MISSING, None, ""
        try:
            if self.kind == "zip":
                at = self._zip_entry(nid)
                if at is None:
                    return _MISSING, None, ""
                return _OK, self._zip_read(at), ""
            p = self._folder_file(nid)
            if p is None:
                return _MISSING, None, ""
            if p.stat().st_size > MAX_ENTRY_BYTES:
                raise ValueError(f"{p.stat().st_size:,} bytes, more than the "
                                 f"{MAX_ENTRY_BYTES:,} an image may have")
            return _OK, p.read_bytes(), ""
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                NotImplementedError, RuntimeError) as exc:  # bad CRC, cut short, encrypted
            why = " ".join(str(exc).split())[:200] or type(exc).__name__
            log.info("images: cannot read %s from %s: %s", image_id, self.path, why)
            return _UNREADABLE, None, why

    def read(self, image_id) -> bytes | None:
        """The raw bytes of an image.

        Parameters
        ----------
        image_id : str
            An image id, matched as a path suffix (see the module docstring).

        Returns
        -------
        bytes or None
            None when no entry matches, or the entry itself cannot be read (logged).
        """
        return self.fetch(image_id)[1]

    def thumbnail(self, image_id, size: Sequence[int] = THUMB_SIZE):
        """An image decoded at most ``size`` (aspect kept), or None if missing or undecodable.

        Parameters
        ----------
        image_id : str
        size : (int, int)
            Largest width and height.

        Returns
        -------
        PIL.Image.Image or None
            An RGB image; None for a missing image and for a corrupt or truncated one.
        """
        return _thumbnail_status(self, image_id, size)[1]


def _thumbnail_status(source: ImageSource, image_id, size):
    """(status, picture or None, why it is None)."""
    status, data, why = source.fetch_why(image_id)
    if data is None:
        return status, None, why
    img, why = decode_with_reason(data, size)
    if img is None:
        log.info("images: cannot decode %s from %s: %s", image_id, source.path, why)
        return _UNREADABLE, None, why
    return _OK, img, ""


def summarise_unreadable(what: str, bad: list, total: int, listed=None) -> None:
    """One warning line for the unreadable images ``bad`` ([(id, why)]) of ``total``: the
    count, the first one and why, and where the full list is (``listed``: a CSV written by the
    caller; else the -v log lines)."""
    if not bad:
        return
    first_id, first_why = bad[0]
    where = f"each listed in {listed}" if listed else "each logged with -v"
    log.warning("%s: %d of %d images unreadable (the first, %s: %s); %s", what, len(bad), total,
                first_id, first_why, where)


def write_unreadable(path, bad: list) -> None:
    """The CSV (image_id,why) of unreadable images, written whole (temporary file, renamed)."""
    import csv

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "why"])
        w.writerows(bad)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- thumbnails on disk


def write_thumbnails(source: ImageSource | None, ids: Iterable, out_dir,
                     size: Sequence[int] = THUMB_SIZE, *, quality: int = JPEG_QUALITY,
                     threads: int = 4, unreadable_csv=None) -> dict:
    """Write one small JPEG per id into ``out_dir``, once: files already there are kept.

    Parameters
    ----------
    source : ImageSource or None
        None means no images were given: every id maps to None and nothing is written.
    ids : iterable of str
        Image ids; repeats are written once.
    out_dir : str or path-like
        Created when something is written.
    size : (int, int)
        Largest width and height of a thumbnail (aspect kept).
    quality : int
        JPEG quality.
    threads : int
        Images decoded and encoded in parallel (Pillow releases the GIL).
    unreadable_csv : str or path-like, optional
        Where to list the unreadable images (image_id,why); the warning line names it.

    Returns
    -------
    dict
        ``thumbs``: {id: file name relative to ``out_dir``, or None when missing or unreadable};
        ``missing``: ids with no image in the source; ``unreadable``: ids whose image could not
        be read or decoded; ``written``: files written now; ``existing``: files already there.
        A missing or unreadable image writes no file (the report draws a grey box for None).
    """
    ids = list(dict.fromkeys(str(i) for i in ids))
    result = {"thumbs": dict.fromkeys(ids), "missing": 0, "unreadable": 0, "written": 0,
              "existing": 0}
    if source is None or not ids:
        return result
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = (int(size[0]), int(size[1]))

    def one(image_id):
        name = thumb_name(image_id, size)
        path = out / name
        if path.is_file() and path.stat().st_size > 0:
            return "existing", name
        status, img, why = _thumbnail_status(source, image_id, size)
        if img is None:
            return status, (why if status == _UNREADABLE else None)
        tmp = out / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        img.save(tmp, "JPEG", quality=quality)
        os.replace(tmp, path)  # a crash never leaves a half-written thumbnail behind
        return "written", name

    bad: list = []
    workers = max(1, min(int(threads), len(ids)))
    if workers == 1:
        outcomes = map(one, ids)
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="vclust-thumbs")
        outcomes = pool.map(one, ids)
    try:
        for image_id, (status, name) in zip(ids, outcomes):
            if status == _UNREADABLE:
                bad.append((image_id, name))
                name = None
            result["thumbs"][image_id] = name
            result[status] += 1
    finally:
        if workers > 1:
            pool.shutdown()
    result["unreadable_ids"] = bad
    if bad and unreadable_csv is not None:
        write_unreadable(unreadable_csv, bad)
    summarise_unreadable(f"images of {source.path}", bad, len(ids),
                         unreadable_csv if bad else None)
    log.info("images: %d thumbnails written, %d already there, %d missing, %d unreadable (%s)",
             result["written"], result["existing"], result["missing"], result["unreadable"], out)
    return result
