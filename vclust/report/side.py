"""Map layouts in side processes of this machine, when no Dask cluster is connected.

umap-learn with a seed runs a layout on one thread: the report's 2D and 3D layouts of 50,000
rows took 36.4 s one after the other in one process and 19.1 s in two (the same coordinates;
benchmarks/RESULTS.md). ``side_submit(n)`` gives ``submit(fn, *args)`` -> a future, running
each call in a fresh ``python -m vclust.report.side`` process, at most ``n`` at a time; the
call and its result go through pickle files in a temporary folder.

Fresh interpreters rather than ``multiprocessing``: its spawned children import the caller's
main script again, which for a user's script without a ``__main__`` guard would run the script
(its fits, its writes) once more in each child; forked children would copy this process's
threads' locks (Dask's, OpenBLAS's, numba's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

log = logging.getLogger(__name__)


class SideError(RuntimeError):
    """A side process failed: its last line of stderr."""


def _run(folder: Path, n: int, running: set, fn, args, here_on_failure=True):
    task, result = folder / f"task-{n}.pkl", folder / f"result-{n}.pkl"
    with open(task, "wb") as f:
        pickle.dump((fn, args), f, protocol=pickle.HIGHEST_PROTOCOL)
    # the child imports what this process imports (a notebook may have put vclust on sys.path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-m", "vclust.report.side", str(task), str(result)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    running.add(proc)
    try:
        _, err = proc.communicate()
    finally:
        running.discard(proc)
    if proc.returncode != 0 or not result.exists():
        last = (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        if proc.returncode < 0 or here_on_failure is False:  # stopped, or asked to fail
            raise SideError(f"{getattr(fn, '__name__', fn)} in a side process: {last}")
        # a side process that could not start or import: the work is made here instead
        log.warning("%s in a side process failed (%s); made in this process instead",
                    getattr(fn, "__name__", fn), last)
        task.unlink(missing_ok=True)
        return fn(*args)
    with open(result, "rb") as f:
        out = pickle.load(f)
    task.unlink()
    result.unlink()
    return out


@contextlib.contextmanager
def side_submit(n: int = 2, here_on_failure: bool = True):
    """``submit(fn, *args)`` -> a ``concurrent.futures.Future``: ``fn(*args)`` in a fresh
    process, at most ``n`` at a time (``fn`` importable by name; args and result picklable).
    A side process that fails (it could not start, import or run ``fn``) is logged and the
    call made in this process instead, whose error, if any, is the future's; with
    ``here_on_failure=False`` the future raises ``SideError``. At the end of the ``with`` the
    calls still running are waited for, or stopped when it ends with an error."""
    numbered, running = count(), set()
    with tempfile.TemporaryDirectory(prefix="vclust-side-") as folder:
        pool = ThreadPoolExecutor(n, thread_name_prefix="vclust-side")
        try:
            yield lambda fn, *args: pool.submit(_run, Path(folder), next(numbered), running,
                                                fn, args, here_on_failure)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(running):
                proc.kill()
            raise
        finally:
            pool.shutdown(wait=True)


def main(argv=None) -> int:
    task, result = (argv or sys.argv[1:])[:2]
    with open(task, "rb") as f:
        fn, args = pickle.load(f)
    out = fn(*args)
    with open(result + ".part", "wb") as f:
        pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(result + ".part", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
