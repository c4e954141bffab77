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
        import sys

        frame = sys._getframe(1)
        while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in (
                "importlib", "_frozen_importlib", "_frozen_importlib_external"):
            frame = frame.f_back
        if frame is not None and frame.f_globals.get("__name__", "").startswith("dask."):
            raise ModuleNotFoundError(f"{name} is not imported for dask in a vclust command",
                                      name=name)
        return None


def mark_not_imported() -> None:
    """In a command's own process (``cli.run``): dask's imports of ``NOT_IMPORTED`` refused
    (``_RefusedToDask``, first on ``sys.meta_path``). The library, a notebook and dask's
    workers are left as they are."""
    import sys

    if not any(isinstance(f, _RefusedToDask) for f in sys.meta_path):
        sys.meta_path.insert(0, _RefusedToDask())
