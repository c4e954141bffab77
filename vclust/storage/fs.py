"""Where vclust keeps its data: a local path, or an ``s3://bucket/prefix`` URL on an
S3-compatible object store (AWS S3, MinIO, Ceph RGW, ... through s3fs/fsspec).

``as_path(p)`` gives a ``pathlib.Path`` for a local path (everything local works exactly as
before) and a ``RemotePath`` for an ``s3://`` URL: the few pathlib operations vclust uses
(``/``, ``name``, ``parent``, ``exists``, ``is_dir``, ``iterdir``, ``glob``, ``read_text``,
``write_text``, ``open``), each one S3 request or a listing. A ``RemotePath`` has no
``__fspath__``: ``os.replace``, ``shutil`` and ``open()`` refuse it, so no POSIX step (rename,
flock) is ever tried on an object store by mistake; the callers take their object-store branch
(DESIGN.md "Object store").

Credentials and endpoint come from the usual variables, read in every process (so the workers
of a LocalCluster, which inherit the environment, and workers started elsewhere with the same
variables, open the same store):

    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws/credentials, the standard
    botocore chain), AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (an S3-compatible server),
    AWS_DEFAULT_REGION or AWS_REGION

A cluster config's ``s3:`` key (vclust.config.S3Config) sets the endpoint and region for the
run and for its workers (vclust.jobs.cluster exports them).

The first use of a bucket in a process checks it (one HEAD request): a bucket name S3 would
refuse or a missing bucket is bad input (exit 2); no credentials (named), refused credentials
or an unreachable endpoint are the environment (exit 4); each one line (docs/faults.md).
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from pathlib import Path

from ..errors import EnvironmentFault, InputError

SCHEME = "s3://"


def is_url(p) -> bool:
    return isinstance(p, RemotePath) or (isinstance(p, str) and p.startswith(SCHEME))


def as_path(p):
    """A ``Path`` for a local path, a ``RemotePath`` for an ``s3://`` URL."""
    if isinstance(p, RemotePath):
        return p
    if isinstance(p, str) and "://" in p:
        if not p.startswith(SCHEME):
            raise InputError(f"{p}: unsupported URL; vclust reads and writes local paths and "
                             "s3://bucket/prefix URLs")
        path = RemotePath(p)
        check_bucket(path.bucket)
        return path
    return Path(p)


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def storage_options() -> dict:
    """s3fs options from the environment (read anew in every process, workers included)."""
    opts: dict = {"use_listings_cache": False}
    if endpoint():
        opts["endpoint_url"] = endpoint()
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        opts["client_kwargs"] = {"region_name": region}
    return opts


def filesystem():
    """The (synchronous) s3fs file system of this process."""
    import fsspec

    return fsspec.filesystem("s3", **storage_options())


_CHECKED: set = set()


def _where() -> str:
    return f"the object store at {endpoint()}" if endpoint() else "AWS S3"


def check_bucket(bucket: str) -> None:
    """One HEAD of the bucket per process: a name S3 refuses or a missing bucket is exit 2; no
    credentials, refused credentials or an unreachable endpoint exit 4; each one line."""
    key = (bucket, endpoint())
    if key in _CHECKED:
        return
    check_bucket_name(bucket)
    fs = filesystem()
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise InputError(f"s3://{bucket}: no such bucket at {_where()}; create it or fix the "
                         "URL (and AWS_ENDPOINT_URL)") from None
    except Exception as exc:  # noqa: BLE001 - sorted by cause below
        _bucket_fault(bucket, exc)
    _CHECKED.add(key)


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def check_bucket_name(bucket: str) -> None:
    """S3's rules for a bucket name (3-63 lowercase letters, digits, dots and hyphens, a
    letter or digit at each end, not an IP address): one line (exit 2) before any request."""
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or re.fullmatch(r"[\d.]+", bucket):
        raise InputError(f"s3://{bucket}: not a valid bucket name (3-63 lowercase letters, "
                         "digits, dots and hyphens, beginning and ending with a letter or "
                         "digit); fix the URL")


def _bucket_fault(bucket: str, exc: Exception) -> None:
    """Raise the one line for a failed HEAD of ``bucket``, by its real cause: no credentials
    anywhere (named), a request refused (credentials), a name the client refuses (exit 2),
    else the endpoint cannot be reached."""
    name = type(exc).__name__
    text = _short(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError") or \
            "Unable to locate credentials" in text:
        raise EnvironmentFault(
            f"s3://{bucket}: no credentials for {_where()} ({text}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws/credentials)",
            kept="nothing was read or written") from None
    if name in ("ParamValidationError", "InvalidBucketName") or "InvalidBucketName" in text:
        raise InputError(f"s3://{bucket}: refused by the S3 client ({text}); fix the "
                         "URL") from None
    if isinstance(exc, PermissionError):
        raise EnvironmentFault(
            f"s3://{bucket}: access refused by {_where()} ({_short(exc)}); check "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
            kept="nothing was read or written") from None
    if isinstance(exc, (InputError, EnvironmentFault)):
        raise exc
    # connection refused, DNS, TLS: the environment
    raise EnvironmentFault(
        f"cannot reach {_where()} for s3://{bucket} ({name}: {text}); check AWS_ENDPOINT_URL "
        "and the network", kept="nothing was read or written") from None


def _short(exc) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


def put_if_absent(path: "RemotePath", data: bytes) -> bool:
    """Write ``data`` only if no object is at ``path`` (S3's conditional put, ``If-None-Match:
    *``): True if written, False if an object was there. Of several writers racing, exactly one
    gets True: the object store decides, as the kernel decides an flock."""
    fs = filesystem()
    try:
        fs.call_s3("put_object", Bucket=path.bucket, Key=path.key, Body=data, IfNoneMatch="*")
    except Exception as exc:  # noqa: BLE001 - s3fs maps 412 to an OSError or its ClientError
        text = str(exc)
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(
            exc, "response") else ""
        if "PreconditionFailed" in text or "412" in text or code in ("PreconditionFailed", "412") \
                or "ConditionalRequestConflict" in text or isinstance(exc, FileExistsError):
            return False
        raise
    return True


class RemotePath:
    """An object-store path ``s3://bucket/key``: the pathlib operations vclust uses, on s3fs.
    Folders are key prefixes: ``mkdir`` does nothing, ``is_dir`` means "some key starts here"."""

    __slots__ = ("url",)

    def __init__(self, url: str):
        if not url.startswith(SCHEME) or not url[len(SCHEME):].strip("/"):
            raise InputError(f"{url}: expected s3://bucket/prefix")
        self.url = SCHEME + url[len(SCHEME):].strip("/")

    # ------------------------------------------------------------------ names
    def __str__(self):
        return self.url

    def __repr__(self):
        return f"RemotePath({self.url!r})"

    def __eq__(self, other):
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self):
        return hash(self.url)

    def __lt__(self, other):
        return self.url < other.url

    def __truediv__(self, other) -> "RemotePath":
        return RemotePath(self.url + "/" + str(other).strip("/"))

    @property
    def path(self) -> str:
        """``bucket/key``: the path s3fs takes."""
        return self.url[len(SCHEME):]

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.path.split("/", 1)[1] if "/" in self.path else ""

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(SCHEME + self.path.rsplit("/", 1)[0]) if "/" in self.path else self

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def with_suffix(self, suffix: str) -> "RemotePath":
        return self.with_name(Path(self.name).with_suffix(suffix).name)

    # ------------------------------------------------------------------ queries
    @property
    def fs(self):
        return filesystem()

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def is_file(self) -> bool:
        return self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.path)

    def iterdir(self):
        try:
            found = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return
        for p in sorted(found):
            p = p.rstrip("/")
            if p != self.path:
                yield RemotePath(SCHEME + p)

    def glob(self, pattern: str):
        """Children matching ``pattern`` (one level, as vclust uses it)."""
        return (p for p in self.iterdir() if fnmatch.fnmatch(p.name, pattern))

    def info(self) -> dict:
        return self.fs.info(self.path)

    # ------------------------------------------------------------------ reading, writing
    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """One PUT: a reader sees the old object or the new one, never part of one."""
        self.fs.pipe_file(self.path, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def open(self, mode: str = "rb"):
        return self.fs.open(self.path, mode)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: an object store has no folders, only key prefixes."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        try:
            self.fs.rm(self.path, recursive=True)
        except FileNotFoundError:
            pass


def rmtree(path) -> None:
    """``shutil.rmtree(path, ignore_errors=True)`` for a local path, a recursive delete of the
    prefix for a remote one."""
    if isinstance(path, RemotePath):
        path.rmtree()
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def zarr_target(path) -> tuple[str, dict | None]:
    """(what zarr.open_* takes, its storage_options) for a local or remote path."""
    if isinstance(path, RemotePath) or is_url(path):
        return str(path), storage_options()
    return str(path), None


def open_group(path, mode: str):
    import zarr

    target, opts = zarr_target(path)
    return zarr.open_group(target, mode=mode, **({"storage_options": opts} if opts else {}))


def open_array(path, mode: str = "r"):
    """A Zarr array; opened to write, every chunk written is stored as given. zarr's default
    first compares each chunk with the fill value, to skip a chunk of zeros: for a float fill
    value of 0 it compares the bit patterns as numpy void elements, which was 47% of writing
    the efficientnet-b7 rows (16-18 s for 4.26 GB on one thread; benchmarks/RESULTS.md).
    Descriptor chunks are seldom all zeros, and a stored chunk of zeros reads the same. The
    setting is zarr's global configuration, read when the array opens: set and restored under
    a lock, so writers opening arrays on several threads never leave it changed."""
    import zarr

    target, opts = zarr_target(path)
    kw = {"storage_options": opts} if opts else {}
    if mode == "r":
        return zarr.open_array(target, mode=mode, **kw)
    with _WRITE_CONFIG_LOCK, zarr.config.set({"array.write_empty_chunks": True}):
        return zarr.open_array(target, mode=mode, **kw)


_WRITE_CONFIG_LOCK = threading.Lock()


def du(path) -> int:
    if isinstance(path, RemotePath):
        try:
            return int(path.fs.du(path.path))
        except FileNotFoundError:
            return 0
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
