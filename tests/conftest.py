"""Shared fixtures: a real LocalCluster, and real `dask scheduler` / `dask worker` processes."""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

# the one-node SLURM, the SSH server and the LocalCluster reference of tests/test_slurm.py and
# tests/test_ssh.py (tests/clusters.py): session fixtures, registered here so both share one each
from tests.clusters import local_reference, slurm_node, ssh_server, stop_processes  # noqa: E402,F401
from vclust.jobs.workerstart import SCORING_PRELOAD  # noqa: E402

# the outlier index's disk cache (vclust/storage/indexcache.py) stays off in the suite, so every
# test and every command it runs builds what it checks; the tests of the cache turn it on in a
# folder of their own
os.environ["VCLUST_CACHE_DIR"] = "off"


#: what the tests' tasks on the local_client workers import (the first cluster of a pytest
#: process starts the server that forks the workers of every later one): what a `vclust label`
#: cluster's server imports, pynndescent as vclust imports it (a plain import compiled the
#: kernels vclust never runs, 15.9 s where the install's warm-up left them out)
TASK_MODULES = SCORING_PRELOAD


@pytest.fixture(scope="module")
def local_client():
    """A real LocalCluster, started as vclust starts it: two single-threaded worker processes
    on 127.0.0.1, forked from this pytest process's one server (vclust.jobs.workerstart),
    which has imported what the files' tasks import."""
    from distributed import Client

    from vclust.jobs.cluster import local_cluster

    with local_cluster(preload_modules=TASK_MODULES, n_workers=2, threads_per_worker=1,
                       processes=True, host="127.0.0.1", dashboard_address=None,
                       memory_limit="3GB") as cluster:
        with Client(cluster) as client:
            yield client


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_processes(tmp_path_factory):
    """A `dask scheduler` and two `dask worker` processes on 127.0.0.1 (one started with
    vclust's worker environment, one without); yields the address."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    bindir = os.path.dirname(sys.executable)
    dask_cmd = os.path.join(bindir, "dask")
    tmp = tmp_path_factory.mktemp("dask")
    procs = [subprocess.Popen([dask_cmd, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0", "--no-show"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)]
    try:
        from distributed import Client

        from vclust.jobs.config import WORKER_EXPORT, WORKER_PRE_SPAWN

        worker = [dask_cmd, "worker", addr, "--nthreads", "1", "--memory-limit", "2GB",
                  "--no-dashboard", "--local-directory", str(tmp)]
        # the first worker starts as the README and the SLURM prologue say (vclust's malloc
        # settings exported in a shell), the second as a bare `dask worker`: without the
        # settings that an earlier LocalCluster of this process left in os.environ
        # (distributed's Nanny sets its pre-spawn environment in its own process)
        bare = {k: v for k, v in os.environ.items() if k not in WORKER_PRE_SPAWN}
        for cmd, env in ((["bash", "-c", f"{WORKER_EXPORT} && exec {shlex.join(worker)}"], bare),
                         (worker, bare)):
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, cwd=tmp, env=env))
        deadline = time.time() + 60
        while True:
            try:
                with Client(addr, timeout=5) as c:
                    c.wait_for_workers(2, timeout=max(1, deadline - time.time()))
                break
            except (OSError, TimeoutError):
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield addr
    finally:
        stop_processes(procs)


# ----------------------------------------------------------------------------- disk

# A whole run writes about 2.6 GB under pytest's base folder (cases, Zarr stores, zips of
# photos), and pytest keeps what a session wrote until the session ends: a CI run on a disk with
# 1.7 GB free failed half-way with "No space left on device" (2026-12-05). A function's folder
# goes when its test passes (tmp_path_retention_policy = "failed", pyproject.toml); these hooks do
# the same for a module fixture's folders when its module is done, unless a test of that module
# failed (then the folders stay for a look, as pytest keeps a failed test's).
_MODULE_DIRS: dict[int, list] = {}
_FAILED_FILES: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.scope != "module":
        return (yield)
    base = request.getfixturevalue("tmp_path_factory").getbasetemp()
    before = set(base.iterdir())
    try:
        return (yield)
    finally:  # the folders this fixture made itself (those of its dependencies were made before)
        _MODULE_DIRS.setdefault(id(fixturedef), []).extend(set(base.iterdir()) - before)


def _free_disk():
    import tempfile

    root = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    return root, shutil.disk_usage(root).free / 1e9


def pytest_report_header(config):
    root, free = _free_disk()
    return f"disk: {free:.1f} GB free under {root}"


def pytest_sessionstart(session):
    """Low free space said first, even with -q: a run out of disk fails in every test that
    writes, far from the cause."""
    root, free = _free_disk()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if free < 2 and reporter is not None and not hasattr(session.config, "workerinput"):
        reporter.write_line(f"WARNING: {free:.1f} GB free under {root}; the run writes up to "
                            "about 0.5 GB at a time there", yellow=True, bold=True)


def pytest_fixture_post_finalizer(fixturedef, request):
    folders = _MODULE_DIRS.pop(id(fixturedef), [])
    if folders and request.node.nodeid.split("::")[0] not in _FAILED_FILES:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- measured figures

_FIGURES: list[str] = []


@pytest.fixture
def figure(request):
    """``figure("text")`` records a measured figure (ARI, ROC-AUC, recall) for the run's summary:
    pytest hides a passing test's prints, and these numbers are what the tests show. Kept in the
    test's report (``user_properties``), so that pytest-xdist brings them from its workers."""
    return lambda text: request.node.user_properties.append(("figure", str(text)))


def pytest_runtest_logreport(report):
    if report.failed:  # its module's folders are kept (see "disk" above)
        _FAILED_FILES.add(report.nodeid.split("::")[0])
    if report.when == "teardown":  # the last report of a test carries all its properties
        _FIGURES.extend(v for k, v in report.user_properties if k == "figure")


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("measured figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


# ----------------------------------------------------------------------------- order

# the files in the order of their time in `make test`'s two workers, longest first (a run's
# timeline, 2026-12-06: the files over 3 s; the rest after them in collection order): with
# --no-loadscope-reorder pytest-xdist hands out whole files in collection order (by default it
# orders them by their number of tests, which put the SLURM file, few tests and the longest
# setup, last, where one worker ran it alone at the end of a 10 min 55 s run). Longest first,
# the files left at the end are the short ones: the two workers ended 10 s apart in the run
# before this order (test_pixels, 10 s, last), 2.5 s apart in this order (336.08 s in all).
LONG_FIRST = ("test_faults.py", "test_s3.py", "test_outliers.py", "test_slurm.py",
              "test_faults_jobs.py", "test_faults_promote.py", "test_faults_imports.py",
              "test_notebook.py", "test_report.py", "test_compare.py", "test_api.py",
              "test_jobs_e2e.py", "test_maps.py", "test_numerics.py", "test_ssh.py",
              "test_cluster.py", "test_faults_input.py", "test_fit_release.py",
              "test_faults_images.py", "test_pixel_decode.py", "test_pixels.py",
              "test_ingest.py", "test_compare_page.py", "test_pixel_reasons.py",
              "test_labels.py", "test_dependencies.py", "test_layout.py")


# whole commands in fresh processes, real clusters (SLURM, SSH, S3), faults injected, the
# notebook: marked ``system`` here. `make test` runs them; `make test-fast` leaves them out with
# the tests marked ``slow``: 373 tests in 2 min 11 s instead of 517 in 5 min 36-58 s (README)
SYSTEM_FILES = ("test_faults.py", "test_faults_images.py", "test_faults_imports.py",
                "test_faults_input.py", "test_faults_jobs.py", "test_faults_promote.py",
                "test_jobs_e2e.py", "test_notebook.py", "test_s3.py", "test_slurm.py",
                "test_ssh.py")


@pytest.hookimpl(tryfirst=True)  # marked before `-m` selects
def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: in-file order kept
    for item in items:
        if item.path.name in SYSTEM_FILES:
            item.add_marker(pytest.mark.system)


# ----------------------------------------------------------------------------- an S3 server

S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
          "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server process on 127.0.0.1 (moto's standalone server, ``moto[server]`` of the
    test extra: no S3 server of Debian or PyPI starts alone in a test; docs/faults.md says why),
    with this process's AWS_* variables pointing at it (subprocesses and LocalCluster workers
    inherit them). Yields the variables."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "vclust-test", "AWS_SECRET_ACCESS_KEY": "vclust-test-secret",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.pop(k, None) for k in S3_ENV}
    os.environ.update(env)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the S3 server (moto) did not start on port {port}")
                time.sleep(0.1)
        yield env
    finally:
        for k in S3_ENV:
            os.environ.pop(k, None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A new, empty bucket on the S3 server: its ``s3://`` URL."""
    import uuid

    import fsspec

    name = "vclust-" + uuid.uuid4().hex[:12]
    fs = fsspec.filesystem("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"],
                           skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"
