"""The start-up import race (issue 28): `vclust fit` once ended with exit 1 and "ImportError:
cannot import name '_MetadataRequester' from partially initialized module
'sklearn.utils._metadata_requests'": scikit-learn was imported on a helper thread (through
pynndescent) while another thread imported modules that import it. Imports that can meet half
made must not run on two threads at once (vclust.jobs.imports: one import thread, and the other
threads wait for it).

The stress: real in-process `vclust fit` runs (GMM, so the fit itself imports scikit-learn; the
outlier index cache off, so pynndescent is imported too), each a fresh interpreter whose thread
switch interval is shortened to 1 us (threads interleave thousands of times more often), every
import recorded by the thread that made it. No two threads may be inside one of the packages
that were raced for at the same time."""

import json
import subprocess
import sys
import threading

import pytest

from .test_faults import ENV, REPO, fitted, small_case  # noqa: F401

RACED = ("sklearn", "pynndescent", "numba", "scipy", "llvmlite")

RECORD = r"""
import importlib._bootstrap as bootstrap, json, sys, threading, time
sys.setswitchinterval(1e-6)
real = bootstrap._find_and_load
spans = []
RACED = %r
def find_and_load(name, import_):
    top = name.partition(".")[0]
    t0 = time.perf_counter()
    try:
        return real(name, import_)
    finally:
        if top in RACED:  # every module of a raced package, nested or not
            spans.append((threading.current_thread().name, top, name, t0, time.perf_counter()))
bootstrap._find_and_load = find_and_load
""" % (RACED,)
COMMAND = RECORD + r"""
from vclust.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "spans": spans}))
"""
# the fit called as a library (no command queued dask.array first), in its own process's threads
LIBRARY = RECORD + r"""
import dask
dask.config.set(scheduler="threads")
from vclust.jobs import steps
from vclust.jobs.params import FitParams
streamed = []
if sys.argv[3:] == ["stream"]:  # rows over RELEASE_BYTES: streamed from the store on each pass
    from vclust.jobs import fit as fitmod
    fitmod.RELEASE_BYTES, real_streams = 0, fitmod._streams
    def recorded(*a):
        raws = real_streams(*a)
        streamed.append(raws is not None)
        return raws
    fitmod._streams = recorded
model = steps.fit(sys.argv[1], FitParams(descriptor="osnet", k=4, seed=int(sys.argv[2]),
                                         algorithm="gmm"))
print(json.dumps({"code": 0, "spans": spans, "dims": model.preprocess.n_features_in_,
                  "streamed": streamed}))
"""


def overlaps(spans) -> list:
    """Pairs of imports into one raced package by two threads at once (a module of it imported
    on one thread while another thread is importing a module of it)."""
    out = []
    for i, (ta, pa, na, a0, a1) in enumerate(spans):
        for tb, pb, nb, b0, b1 in spans[i + 1:]:
            if ta != tb and pa == pb and a0 < b1 and b0 < a1:
                out.append(((ta, na), (tb, nb)))
    return out


@pytest.mark.parametrize("run", range(6))
def test_no_two_threads_import_one_package_at_once_during_a_fit(fitted, tmp_path, run):  # noqa: F811
    out = subprocess.run(
        [sys.executable, "-c", COMMAND, "-q", "fit", str(fitted / "store"), "--model",
         str(tmp_path / "model"), "--descriptor", "osnet", "--k", "4", "--algorithm", "gmm",
         "--seed", str(run)],
        capture_output=True, text=True, env={**ENV, "VCLUST_CACHE_DIR": "off"}, cwd=REPO,
        timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "partially initialized" not in out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["code"] == 0
    threads = {s[0] for s in got["spans"]}
    assert "vclust-imports" in threads  # the background imports ran, on their one thread
    assert {"sklearn", "pynndescent"} <= {s[1] for s in got["spans"]}
    assert overlaps(got["spans"]) == []


@pytest.mark.parametrize("run", range(2))
def test_no_two_threads_import_one_package_at_once_in_a_library_fit(fitted, run):  # noqa: F811
    """``jobs.fit`` called from Python in a fresh interpreter: dask.array is imported on the
    import thread before pynndescent, not on the calling thread beside it (it was: scipy's
    modules on two threads at once)."""
    out = subprocess.run([sys.executable, "-c", LIBRARY, str(fitted / "store"), str(run)],
                         capture_output=True, text=True,
                         env={**ENV, "VCLUST_CACHE_DIR": "off"}, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "vclust-imports" in {s[0] for s in got["spans"]}
    assert {"sklearn", "pynndescent", "scipy"} <= {s[1] for s in got["spans"]}
    assert overlaps(got["spans"]) == []


def test_background_imports_run_in_order_on_one_thread():
    from vclust.jobs import imports

    seen = []

    def mark(i):
        return lambda: seen.append((i, threading.current_thread().name))

    imports.background(*[mark(i) for i in range(20)])
    imports.wait()
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {imports.THREAD_NAME}
    imports.background("json", "vclust.no_such_module")  # a failure stays quiet
    imports.wait_for("vclust.no_such_module")
    imports.wait()


DEFERRED_CHECK = r"""
import inspect, sys, threading
sys.setswitchinterval(1e-6)
from vclust.jobs import imports
imports.mark_not_imported()
if sys.argv[1] == "elsewhere":  # imported by anyone but scikit-learn: executed as usual
    import scipy.stats
    assert type(sys.modules["scipy.stats"]) is type(sys), type(sys.modules["scipy.stats"])
import numpy as np
from vclust.numerics.annindex import enable_numba_cache
enable_numba_cache()  # pynndescent as vclust imports it: sklearn.utils.fixes, then scipy.stats
import sklearn.utils.fixes as fixes
stats = sys.modules["scipy.stats"]
assert stats is sys.modules["scipy"].stats
if sys.argv[1] == "sklearn":
    assert type(stats).__name__ == "_Deferred", type(stats)
    assert "scipy.stats._stats_py" not in sys.modules  # imported, not executed
    got, start = [], threading.Barrier(6)
    def use(i):  # six threads at its first use: each waits for the whole module
        start.wait()
        got.append(fixes._mode(np.array([i, i, 7]))[0][0] if i % 2 else stats.norm.cdf(0.0))
    threads = [threading.Thread(target=use, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(got) == [0.5, 0.5, 0.5, 1, 3, 5], got
assert type(stats) is type(sys) and "scipy.stats._stats_py" in sys.modules
import scipy.stats as again
assert again is stats and type(stats.__loader__).__name__ == "SourceFileLoader"
assert "def mode" in inspect.getsource(stats.mode)
print("ok")
"""


@pytest.mark.parametrize("importer", ["sklearn", "elsewhere"])
def test_scipy_stats_is_executed_on_first_use_and_whole_on_every_thread(importer):
    """scikit-learn imports scipy.stats at its top for one helper a command never calls (0.4 s
    of a small `vclust label`): in a command's process it is executed on first use instead
    (jobs.imports.DEFERRED). Six threads that use it first at once all get the whole module;
    an import of it by anyone else is an ordinary one."""
    out = subprocess.run([sys.executable, "-c", DEFERRED_CHECK, importer], capture_output=True,
                         text=True, timeout=120, env=ENV, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A store of 600 rows of 1,100 columns: at LEADING_EIGH_DIMS and more, the fit's two
    eigendecompositions (the reduction's, the outlier projection's) are scipy's, imported on the
    import thread and waited for by both threads."""
    from vclust.numerics import LEADING_EIGH_DIMS
    from vclust.storage.ingest import ingest

    root = tmp_path_factory.mktemp("wide")
    files, ids = small_case(root / "case", dims=1100)
    assert 1100 >= LEADING_EIGH_DIMS
    ingest(root / "store", files, ids_csv=ids, batch="b0")
    return root / "store"


@pytest.mark.parametrize("rows", ["read", "stream"])
def test_no_two_threads_import_one_package_at_once_in_a_wide_sets_fit(wide, rows):
    """The wide set's rows read into memory, or (as over RELEASE_BYTES) streamed from the store:
    then the outlier thread gathers its reference through dask while the reduction starts."""
    out = subprocess.run([sys.executable, "-c", LIBRARY, str(wide), "0", rows],
                         capture_output=True, text=True,
                         env={**ENV, "VCLUST_CACHE_DIR": "off"}, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["dims"] == 1100
    assert got["streamed"] == ([True] if rows == "stream" else [])
    # scipy.linalg on the import thread, which the projection's and the reduction's threads
    # wait for (the outlier thread imported it itself beside dask.array's import before)
    assert {s[0] for s in got["spans"] if s[2] == "scipy.linalg"} == {"vclust-imports"}
    assert overlaps(got["spans"]) == []
