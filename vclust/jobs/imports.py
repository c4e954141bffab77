"""Background imports on one thread, and waiting for them before importing elsewhere.

A command imports its heavy libraries (dask.array, pynndescent, scikit-learn) while it reads
its inputs. Two threads must never import at once: when they enter one package from two
entry points (scikit-learn's ``base`` on one thread, its ``utils`` through pynndescent on
another), Python's import locks see a possible deadlock and hand one thread the module half
made (``ImportError: cannot import name '_MetadataRequester' from partially initialized module
'sklearn.utils._metadata_requests'``: a `vclust fit` once ended so on a busy machine). So:

- every background import runs on one thread, in the order asked (``background``);
- a thread that is about to import something that thread may be importing first waits for
  it (``wait``: all queued work; ``wait_for(name)``: a module queued, and what was queued
  before it).

    from vclust.jobs import imports
    imports.background("zarr", "dask.array")     # returns at once
    imports.wait_for("zarr")                     # then `import zarr` here is a dict lookup
    imports.background(enable_numba_cache)       # a callable that imports runs there too
    imports.wait()                               # nothing is importing in the background now

Failures are kept quiet: the thread that needs the module imports it again and reports it.
"""

from __future__ import annotations

import importlib
import logging
import threading
import queue
from concurrent.futures import Future

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_WORK: "queue.SimpleQueue | None" = None
_QUEUED: list[Future] = []
_BY_NAME: dict[str, Future] = {}
THREAD_NAME = "vclust-imports"
#: optional packages that dask imports whenever they are installed, for what a vclust command
#: never hands it, refused to dask in a command's own process: dask.array imports xarray to
#: recognise xarray objects (about 0.6 s of `import dask.array` where xarray is installed, as
#: `make install` installs it for the tests, half of it pandas; 0.3 s of a fit whose index is
#: cached), pydata's sparse to register its arrays (installed for dask-ml's dask-glm; about
#: 0.2 s, most of it numba, which a command that builds or queries no index never needs) and
#: scipy.fftpack for dask.array.fft (with scipy.fft and scipy.special: about 0.08 s)
#: (benchmarks/RESULTS.md, 2026-12-05). Others may import them: numba loads sparse's numba
#: extension when it readies its CPU target (to compile, or to load a cached kernel).
NOT_IMPORTED = ("xarray", "sparse", "scipy.fftpack")


def _run(what):
    try:
        if callable(what):
            what()
        else:
            importlib.import_module(what)
    except Exception as exc:  # noqa: BLE001 - the thread that needs it imports it again
        log.debug("background import of %s failed: %s", what, exc)


def _worker(work) -> None:
    while True:
        fut, what = work.get()
        _run(what)
        fut.set_result(None)


def background(*what) -> None:
    """Queue imports (module names) or callables that import on the one import thread (a
    daemon: a command that ends meanwhile does not wait for it)."""
    global _WORK
    with _LOCK:
        if _WORK is None:
            _WORK = queue.SimpleQueue()
            threading.Thread(target=_worker, args=(_WORK,), name=THREAD_NAME,
                             daemon=True).start()
        for item in what:
            if isinstance(item, str) and item in _BY_NAME:
                continue
            fut = Future()
            _QUEUED.append(fut)
            if isinstance(item, str):
                _BY_NAME[item] = fut
            _WORK.put((fut, item))


def wait() -> None:
    """Return when nothing queued is still importing (at once on the import thread itself)."""
    if threading.current_thread().name == THREAD_NAME:
        return
    with _LOCK:
        pending = list(_QUEUED)
    for fut in pending:
        fut.result()
    with _LOCK:
        _QUEUED[:] = [f for f in _QUEUED if not f.done()]


def wait_for(name: str) -> None:
    """Return when ``name`` (and everything queued before it) has been imported, if it was
    queued; at once otherwise."""
    fut = _BY_NAME.get(name)
    if fut is not None and not threading.current_thread().name == THREAD_NAME:
        fut.result()


class _RefusedToDask:
    """A meta path finder: an import of one of ``NOT_IMPORTED`` raises ImportError (which dask
    takes as "not installed") when the code asking for it is dask's own; anyone else's import
    goes on to the other finders."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in NOT_IMPORTED:
            return None
        if _importer_name().startswith("dask."):
            raise ModuleNotFoundError(f"{name} is not imported for dask in a vclust command",
                                      name=name)
        return None


#: modules imported at a package's top for a helper a command never calls, loaded on first
#: use instead in a command's own process ({module: the package importing it}): scikit-learn's
#: ``utils.fixes`` imports scipy.stats for one function (``_mode``), and every command that
#: builds or queries an outlier index imports scikit-learn through pynndescent: about 0.4 s
#: of a `vclust label` of a small store (benchmarks/RESULTS.md, 2026-12-05)
DEFERRED = {"scipy.stats": "sklearn."}
_DEFER_LOCK = threading.RLock()


class _Deferred(type(importlib)):
    """A module imported, not yet executed: its first attribute read executes it, under a lock
    (another thread's read waits for the whole module; the executing thread's own reads during
    it, as its submodules' imports make, see the module as it is so far)."""

    def __getattribute__(self, attr):
        with _DEFER_LOCK:
            if type(self) is _Deferred:
                spec = object.__getattribute__(self, "__spec__")
                if not getattr(spec, "_vclust_running", False):
                    spec._vclust_running = True
                    loader = spec.loader.loader
                    try:
                        loader.exec_module(self)
                    except BaseException:  # as a failed import: not left half made
                        import sys

                        sys.modules.pop(spec.name, None)
                        raise
                    finally:
                        object.__setattr__(self, "__class__", type(importlib))
                        spec.loader = loader
                        object.__setattr__(self, "__loader__", loader)
        return object.__getattribute__(self, attr)


class _DeferringLoader:
    """The loader of a ``DEFERRED`` module: the module object is made now, executed on first
    use (``_Deferred``) by the loader found for it."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__class__ = _Deferred

    def __getattr__(self, name):  # get_source, is_package ... as the real loader's
        return getattr(self.loader, name)


def _importer_name() -> str:
    import sys

    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in (
            "importlib", "_frozen_importlib", "_frozen_importlib_external"):
        frame = frame.f_back
    return "" if frame is None else frame.f_globals.get("__name__", "")


class _Deferring:
    """A meta path finder: a ``DEFERRED`` module imported by its package gets a
    ``_DeferringLoader``; any other import goes on to the other finders."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in DEFERRED or not _importer_name().startswith(DEFERRED[name]):
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeferringLoader(spec.loader)
        return spec


def _refused_or_deferred(finder) -> bool:
    return isinstance(finder, (_RefusedToDask, _Deferring))


def mark_not_imported() -> None:
    """In a command's own process (``cli.run``): dask's imports of ``NOT_IMPORTED`` refused
    (``_RefusedToDask``) and ``DEFERRED`` modules executed on first use (``_Deferring``), both
    first on ``sys.meta_path``; and in the worker processes of a LocalCluster vclust starts
    (``worker_setup``). The library in a notebook's process, and workers started elsewhere,
    are left as they are."""
    import sys

    if not any(_refused_or_deferred(f) for f in sys.meta_path):
        sys.meta_path[:0] = [_RefusedToDask(), _Deferring()]
