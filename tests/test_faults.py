"""Faults tried as a hostile user would (docs/faults.md lists them): concurrent writers, stray
files in the labels, damaged models, bad specs and addresses, a read-only store, a full disk,
old pickles, and dask processes killed mid-run. Real processes, real files; no mocks."""

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .clusters import stop_processes

REPO = str(Path(__file__).resolve().parents[1])
VCLUST = [sys.executable, "-m", "vclust.cli"]
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_cli(args, timeout=120, env=None, **kw):
    return subprocess.run(VCLUST + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=ENV if env is None else env, cwd=REPO, **kw)


def assert_one_line(out, code, match=None):
    """Exit ``code``, no traceback, and the last stderr line is the one error line."""
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vclust: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-3000:]
    if match is not None:
        import re

        assert re.search(match, errors[0]), errors[0]
    return errors[0]


# --------------------------------------------------------------------------- store lock race

LOCKER = r"""
import os, sys, time
from vclust.errors import StoreLockedError
from vclust.storage.store import store_lock
store, flag = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        with store_lock(store):
            try:
                fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                print("overlap", flush=True)
                time.sleep(0.05)
                continue
            time.sleep(0.05)
            os.close(fd)
            os.unlink(flag)
        print("held", flush=True)
    except StoreLockedError:
        print("refused", flush=True)
"""


def race_rounds(procs, rounds, before_round) -> list:
    """Run ``rounds`` rounds of LOCKER processes: ``before_round(i)``, then every process goes at
    once; each round's answers ("held", "refused", "overlap"). The processes are ended after."""
    results = []
    try:
        for i in range(rounds):
            before_round(i)
            for p in procs:
                p.stdin.write("go\n")
            for p in procs:
                p.stdin.flush()
            results.append([p.stdout.readline().strip() for p in procs])
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    return results


def test_store_lock_takeover_never_gives_two_holders(tmp_path):
    """Six processes race to take over a dead writer's lock, 20 times: never two holders."""
    store = tmp_path / "store"
    lock = tmp_path / "store.lock"
    flag = tmp_path / "holder"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, str(store), str(flag)], env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    results = race_rounds(procs, 20, lambda i: lock.write_text(json.dumps(
        {"pid": dead, "host": socket.gethostname(), "since": 0})))
    assert not any("overlap" in r for r in results), results
    assert all(r.count("held") >= 1 for r in results), results
    assert not lock.exists()


# --------------------------------------------------------------------------- labels dir

def label_frame(start, n, cluster=0):
    rows = np.arange(start, start + n)
    return pd.DataFrame({"image_id": [f"img/{r:06d}.jpg" for r in rows], "row": rows,
                         "cluster": np.full(n, cluster, np.int32),
                         "distance": np.ones(n, np.float32),
                         "outlier_score": np.linspace(0, 1, n).astype(np.float32),
                         "is_outlier": rows % 10 == 0})


SLOW_LABEL_RUN = r"""
import sys, time
from vclust.storage import labels
from tests.test_faults import label_frame
out, batch, cluster = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = 0 if batch == "b1" else 1000
orig = labels._write_part
def slow(frame, path):
    n = orig(frame, path)
    print("part", flush=True)
    time.sleep(0.05)
    return n
labels._write_part = slow
labels.write_batch(out, "m1", batch, [label_frame(first + i * 10, 10, cluster) for i in range(20)])
print("done", flush=True)
"""


@pytest.mark.parametrize("second_batch", ["b2", "b1"])
def test_concurrent_label_runs_both_complete(tmp_path, second_batch):
    """A nightly run and a manual relabel write into one labels dir at once: the second's start
    used to clear the first's staging (FileNotFoundError, batch never written)."""
    from vclust.storage.labels import read_labels

    def start(batch, cluster):
        return subprocess.Popen([sys.executable, "-c", SLOW_LABEL_RUN, str(tmp_path), batch,
                                 str(cluster)], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = start("b1", 1)
    assert first.stdout.readline().strip() == "part"  # the first run is writing its parts
    second = start(second_batch, 2)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-2000:] for o in outs]
    got = read_labels(tmp_path, model="m1")
    for batch, part in got.groupby("batch"):
        assert len(part) == 200 and part["row"].is_unique, batch
        assert part["cluster"].nunique() == 1  # one run's complete partition, not a mixture
    assert set(got["batch"]) == {"b1", second_batch}
    staging = tmp_path / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def _stray_cases(labels):
    """(what, how to damage the labels dir) -> the file that must be named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = labels / "model=m1" / "batch=b1"

    def foreign():
        f = part / "other.parquet"
        pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), f)
        return f

    def copied():
        f = part / "part-00000 (copy).parquet"
        f.write_bytes((part / "part-00000.parquet").read_bytes())
        return f

    def copied_batch():
        import shutil

        f = labels / "model=m1" / "batch=b1-copy"
        shutil.copytree(part, f)
        return f / "part-00000.parquet"

    def not_parquet():
        f = part / "part-00009.parquet"
        f.write_text("path,cluster\nimg/1.jpg,3\n")
        return f

    return {"foreign": foreign, "copied": copied, "copied_batch": copied_batch,
            "not_parquet": not_parquet}


@pytest.mark.parametrize("what", ["foreign", "copied", "copied_batch", "not_parquet"])
def test_export_and_readers_refuse_stray_label_files(tmp_path, what):
    from vclust.errors import InputError
    from vclust.storage.export import export_csv
    from vclust.storage.labels import read_labels, write_batch

    labels = tmp_path / "labels"
    write_batch(labels, "m1", "b1", [label_frame(0, 50), label_frame(50, 50)])
    write_batch(labels, "m1", "b2", [label_frame(100, 30)])
    assert export_csv(labels, tmp_path / "ok.csv") == 130
    bad = _stray_cases(labels)[what]()
    out = run_cli(["export", labels, "--csv", tmp_path / "out.csv"])
    assert_one_line(out, 2, match=str(bad).replace("(", r"\(").replace(")", r"\)"))
    assert not (tmp_path / "out.csv").exists()
    with pytest.raises(InputError, match="remove it"):
        read_labels(labels, model="m1")


# --------------------------------------------------------------------------- old pickles

@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_old_protocol_numpy_pickles_are_read_safely(tmp_path, protocol):
    """Protocols 0-2 store bytes as ``_codecs.encode(text, 'latin1')``: that call is allowed,
    with exactly those arguments, and nothing more."""
    from vclust.storage.ingest import ingest
    from vclust.storage.store import Store

    x = np.random.default_rng(protocol).random((40, 6)).astype(np.float32)
    x[0, 0] = 1e-45  # bytes above 0x7f and zeros survive the latin1 text
    (tmp_path / "osnet.pickle").write_bytes(pickle.dumps(x, protocol=protocol))
    assert ingest(tmp_path / "store", [tmp_path / "osnet.pickle"], batch="b0")["rows"] == 40
    got = Store.open(tmp_path / "store").descriptors("osnet").compute()
    np.testing.assert_array_equal(got, x)


class _Evil:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize("protocol", [0, 2])
@pytest.mark.parametrize("payload", ["system", "codecs_other_encoding", "codecs_bytes"])
def test_old_protocol_malicious_pickles_are_still_refused(tmp_path, protocol, payload):
    import codecs

    from vclust.errors import InputError
    from vclust.storage.ingest import ingest

    target = tmp_path / "pwned"
    reduce = {"system": (os.system, (f"touch {target}",)),
              # _codecs.encode with anything but (str, 'latin1') is not a bytes literal
              "codecs_other_encoding": (codecs.encode, ("abc", "rot13")),
              "codecs_bytes": (codecs.encode, (b"abc", "hex"))}[payload]
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps([np.zeros(3), _Evil(reduce)], protocol=protocol))
    with pytest.raises(InputError, match="refused to unpickle"):
        ingest(tmp_path / "store", [evil])
    assert not target.exists() and not (tmp_path / "store").exists()


# --------------------------------------------------------------------------- one line per fault

LOCAL_THREADS = "kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: false\n" \
                "dashboard_address: \":0\"\n"


def small_case(root: Path, rows=600, dims=8, seed=0):
    """Four blobs of ``rows`` descriptors and their ids, as files to ingest."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dims)) * 5
    x = (centres[rng.integers(0, 4, rows)] + rng.normal(size=(rows, dims))).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "osnet.npy", x)
    pd.DataFrame({"paths": [f"img/{seed}/{i}.jpg" for i in range(rows)]}).to_csv(
        root / "ids.csv", index=False)
    return [root / "osnet.npy"], root / "ids.csv"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A store of 600 rows and a model fitted on it (in this process: no cluster needed)."""
    from vclust.jobs import steps as jobs
    from vclust.jobs.params import FitParams
    from vclust.storage.ingest import ingest

    root = tmp_path_factory.mktemp("fitted")
    files, ids = small_case(root / "case")
    ingest(root / "store", files, ids_csv=ids, batch="b0")
    model = jobs.fit(root / "store", FitParams(descriptor="osnet", k=4, seed=0))
    jobs.save_model(model, root / "model")
    (root / "local.yaml").write_text(LOCAL_THREADS)
    return root


def _damage(model: Path, how: str) -> Path:
    if how == "deleted_npy":
        f = model / "outliers.kdist.npy"
        f.unlink()
    elif how == "truncated_npy":
        f = model / "preprocess.mean.npy"
        f.write_bytes(f.read_bytes()[:100])
    else:  # centres of the wrong shape
        f = model / "clusterer.cluster_centers.npy"
        np.save(f, np.load(f)[:, :-1])
    return f


@pytest.mark.parametrize("how", ["deleted_npy", "truncated_npy", "centres_shape"])
def test_damaged_model_is_refused_with_one_line(fitted, tmp_path, how):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(fitted / "model", model)
    bad = _damage(model, how)
    out = run_cli(["label", fitted / "store", "--model", model, "--out", tmp_path / "labels",
                   "--all", "--cluster", fitted / "local.yaml"])
    assert_one_line(out, 2, match=f"{bad}: .*damaged")
    assert not (tmp_path / "labels").exists()


def test_output_cut_short_by_the_reader_ends_quietly(fitted):
    """`vclust info STORE | head -1`: the reader closes the pipe before the command has written
    everything; the command ends with 141 (as one killed by SIGPIPE), without a traceback."""
    proc = subprocess.Popen(VCLUST + ["info", str(fitted / "store")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, cwd=REPO)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_paths_of_the_wrong_kind_are_refused_with_one_line(fitted, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (["label", fitted / "store", "--model", fitted / "model", "--out", afile, "--all",
                  "--cluster", fitted / "local.yaml"],
                 ["synth", afile, "--rows", "50"],
                 ["report", fitted / "store", "--model", fitted / "model", "--labels", afile,
                  "--out", tmp_path / "rep", "--cluster", fitted / "local.yaml"],
                 ["export", tmp_path, "--csv", afile / "x.csv"]):
        assert_one_line(run_cli(args), 2)
    assert afile.read_text() == "x"


def test_bad_scheduler_address_and_binary_job_spec(fitted, tmp_path):
    base = ["label", fitted / "store", "--model", fitted / "model", "--out", tmp_path / "l",
            "--all"]
    assert_one_line(run_cli(base + ["--scheduler", "nonsense://host:1"]), 2,
                    match="not a scheduler address")
    spec = tmp_path / "job.yaml"
    spec.write_bytes(bytes(range(256)) * 8)
    assert_one_line(run_cli(["run", spec]), 2, match="not a text file")
    # --debug shows the traceback as well
    out = run_cli(["--debug", "run", spec])
    assert out.returncode == 2 and "Traceback" in out.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_an_environment_fault_with_a_configurable_wait(tmp_path):
    """Nothing listens at the address: exit 4 after 5 s by default; the wait is set by
    --scheduler-timeout, then the config key, then $VCLUST_SCHEDULER_TIMEOUT."""
    addr = f"tcp://127.0.0.1:{_free_port()}"
    files, ids = small_case(tmp_path / "case", rows=50)
    stores = [tmp_path / f"store{i}" for i in range(4)]
    cfg = _write(tmp_path / "sched.yaml", f"kind: scheduler\naddress: {addr}\ntimeout: 1.5\n")
    env = {**ENV, "VCLUST_SCHEDULER_TIMEOUT": "1"}
    # the four commands at once, each in its own process and into a store of its own: their
    # waits overlap instead of adding up (idle seconds that held one of make test's workers)
    runs = [(["--scheduler", addr], ENV),  # the default
            (["--scheduler", addr], env),  # $VCLUST_SCHEDULER_TIMEOUT
            (["--scheduler", addr, "--scheduler-timeout", "2"], env),  # the flag first
            (["--cluster", cfg], env)]  # the config key before the variable
    runs = [(["ingest", store, *files, "--ids", ids] + args, e)
            for store, (args, e) in zip(stores, runs)]
    procs = [subprocess.Popen(VCLUST + [str(a) for a in args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO, env=e)
             for args, e in runs]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    line = assert_one_line(outs[0], 4)
    assert "within 5 s" in line and "nothing was changed" in line  # short by default
    assert "within 1 s" in assert_one_line(outs[1], 4)
    assert "within 2 s" in assert_one_line(outs[2], 4)
    assert "within 1.5 s" in assert_one_line(outs[3], 4)
    assert not any(store.exists() for store in stores)


# ------------------------------------------------ full disk and read-only store, for real

def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fsize_limit(limit):
    """For a non-root run: the file size limit gives EFBIG, which vclust treats as a full disk."""
    def set_limit():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_full_disk_gives_one_line_and_keeps_the_store(tmp_path):
    """ENOSPC on a 1 MB tmpfs (as root; else EFBIG from a file size limit)."""
    from vclust.storage.ingest import ingest
    from vclust.storage.store import Store

    mnt = tmp_path / "mnt"
    mounted = _mount_tmpfs(mnt, "1m")
    try:
        store = mnt / "store"
        files, ids = small_case(tmp_path / "small", rows=200)
        ingest(store, files, ids_csv=ids, batch="b0")
        _write(tmp_path / "local.yaml", LOCAL_THREADS)
        big, big_ids = small_case(tmp_path / "big", rows=80_000, seed=1)  # 2.6 MB
        out = run_cli(["ingest", store, *big, "--ids", big_ids, "--batch", "b1", "--cluster",
                       tmp_path / "local.yaml"],
                      preexec_fn=None if mounted else _fsize_limit(1 << 20))
        line = assert_one_line(out, 4)
        assert ("disk is full" if mounted else "file size limit") in line
        assert "keeps every committed batch" in line
        s = Store.open(store)
        assert s.batch_ids() == ["b0"]
        np.testing.assert_array_equal(s.descriptors("osnet").compute(), np.load(files[0]))
        # the next writer rolls the unfinished append back and has room again
        more, more_ids = small_case(tmp_path / "s2", rows=50, seed=2)
        ingest(store, more, ids_csv=more_ids, batch="b2")
        assert Store.open(store).batch_ids() == ["b0", "b2"]
    finally:
        if mounted:
            _umount(mnt)


def test_synth_on_a_full_disk_removes_what_it_was_writing(tmp_path):
    """`vclust synth` that fills the disk (a 2 MB tmpfs as root; else EFBIG from a file size
    limit) ends in one line, exit 4, and removes the case files it was writing and the folders
    it made, so the disk has its room back; a file of the user's in the folder stays."""
    mnt = tmp_path / "mnt"
    mounted = _mount_tmpfs(mnt, "2m")
    try:
        mnt.mkdir(exist_ok=True)
        limit = None if mounted else _fsize_limit(1 << 20)
        out = run_cli(["synth", mnt / "new" / "case", "--rows", "20000"], preexec_fn=limit)
        line = assert_one_line(out, 4)
        assert "were removed" in line
        assert not (mnt / "new").exists()
        mine = mnt / "mine"
        mine.mkdir()
        (mine / "notes.txt").write_text("kept")
        out = run_cli(["synth", mine, "--rows", "20000"], preexec_fn=limit)
        assert_one_line(out, 4)
        assert [p.name for p in mine.rglob("*")] == ["notes.txt"]
        assert (mine / "notes.txt").read_text() == "kept"
    finally:
        if mounted:
            _umount(mnt)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_only_store_gives_one_line(tmp_path):
    """A store on a file system remounted read-only (as root; else a folder without write
    permission): an ingest into the store and a synth there end in one line, exit 4."""
    from vclust.storage.ingest import ingest

    mnt = tmp_path / "mnt"
    mounted = _mount_tmpfs(mnt, "8m")
    try:
        store = mnt / "store"
        files, ids = small_case(tmp_path / "small", rows=200)
        local = _write(tmp_path / "local.yaml", LOCAL_THREADS)
        ingest(store, files, ids_csv=ids, batch="b0")
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        else:
            os.chmod(mnt, 0o555)
            for d, _, fs in os.walk(store):
                os.chmod(d, 0o555)
        more, more_ids = small_case(tmp_path / "more", rows=100, seed=1)
        line = assert_one_line(run_cli(["ingest", store, *more, "--ids", more_ids, "--batch",
                                        "b1", "--cluster", local]), 4)
        assert ("read-only" if mounted else "permission") in line
        assert "keeps every committed batch" in line
        line = assert_one_line(run_cli(["export", tmp_path / "nolabels", "--csv",
                                        mnt / "x.csv"]), 2)  # bad input is found first
        write_batch_out = run_cli(["synth", mnt / "case", "--rows", "50"])
        assert ("read-only" if mounted else "permission") in assert_one_line(write_batch_out, 4)
    finally:
        if mounted:
            _umount(mnt)
        else:
            for d, _, fs in os.walk(mnt):
                os.chmod(d, 0o755)


# --------------------------------------------------------------------------- killed dask processes

def _start_dask(tmp: Path, n_workers: int):
    """A real `dask scheduler` and ``n_workers`` `dask worker` processes (with nannies) on
    127.0.0.1. Returns (address, scheduler process, all processes)."""
    from distributed import Client

    from vclust.jobs.config import WORKER_ENV_VAR, WORKER_PRE_SPAWN

    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask_cmd = os.path.join(os.path.dirname(sys.executable), "dask")
    env = {**ENV, WORKER_ENV_VAR: repr(WORKER_PRE_SPAWN)}
    sched = subprocess.Popen([dask_cmd, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", ":0", "--no-show"], cwd=tmp, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [sched]
    for _ in range(n_workers):
        procs.append(subprocess.Popen(
            [dask_cmd, "worker", addr, "--nthreads", "1", "--memory-limit", "1GB",
             "--no-dashboard", "--local-directory", str(tmp)], cwd=tmp, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.time() + 90
    while True:
        try:
            with Client(addr, timeout=5) as c:
                c.wait_for_workers(n_workers, timeout=max(1, deadline - time.time()))
            return addr, sched, procs
        except (OSError, TimeoutError):
            if time.time() > deadline:
                stop_processes(procs)
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def dask_workers(tmp_path_factory):
    """A `dask scheduler` and two `dask worker`s for the worker-kill tests (a killed worker is
    restarted by its nanny, so the tests can share them)."""
    addr, _, procs = _start_dask(tmp_path_factory.mktemp("dask"), 2)
    try:
        yield addr
    finally:
        stop_processes(procs)


def _wait_for_workers(addr, n=2):
    from distributed import Client

    with Client(addr, timeout=10) as c:
        c.wait_for_workers(n, timeout=60)


@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory):
    """A store of 8,000 rows in 16 chunks, a model fitted on a sample of it, and the labels
    that model gives without any fault (computed in this process, no cluster)."""
    from vclust.jobs import steps as jobs
    from vclust.storage.labels import read_labels
    from vclust.jobs.params import FitParams
    from vclust.storage.ingest import ingest

    root = tmp_path_factory.mktemp("labelled")
    files, ids = small_case(root / "case", rows=8_000, seed=5)
    ingest(root / "store", files, ids_csv=ids, batch="b0", chunk_rows=500)
    model = jobs.fit(root / "store", FitParams(descriptor="osnet", k=4, seed=0, sample=3000))
    jobs.save_model(model, root / "model")
    model = jobs.resolve_model(root / "model")
    jobs.label(root / "store", model, root / "reference", all_batches=True)
    ref = read_labels(root / "reference").sort_values("row", ignore_index=True)
    return root, ref


def test_small_label_runs_in_this_process_and_equals_the_cluster_run(labelled_store, tmp_path):
    """With no cluster named, a batch this small is labelled in the command's own process
    (no LocalCluster to start); the labels equal the fault-free ones. Naming a cluster config
    still starts the cluster, whose worker holds pynndescent (imported as vclust imports it:
    the kernels vclust never runs not compiled) and the outlier module from its start: it was
    forked from a server that imported them (workerstart.SCORING_PRELOAD)."""
    from vclust.storage.labels import read_labels

    from .worker_start_probe import probe_env, probed

    root, ref = labelled_store
    cfg = tmp_path / "local.yaml"
    cfg.write_text("kind: local\nn_workers: 1\nthreads_per_worker: 1\n")
    env = {**ENV, **probe_env(tmp_path / "probe")}
    for extra, where in (([], "dask: in this process"), (["--cluster", str(cfg)], "dask: local")):
        out = tmp_path / f"labels{len(extra)}"
        res = subprocess.run(VCLUST + ["label", str(root / "store"), "--model",
                                       str(root / "model"), "--out", str(out), "--all", *extra],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert where in res.stderr, res.stderr
        got = read_labels(out).sort_values("row", ignore_index=True)
        pd.testing.assert_frame_equal(got, ref)
    assert probed(tmp_path / "probe") == [
        {"pynndescent": True, "umap": False, "outliers": True, "deferred_signatures": 0}]


def test_small_fit_runs_in_this_process_and_matches_the_cluster_fit(labelled_store, tmp_path):
    """With no cluster named, `vclust fit` of rows this small runs in the command's own
    process; its model matches the one a LocalCluster fits (the same reference rows and
    index, centres equal to float rounding, the same labels). An existing --model is refused
    before any work, with exit 2 and one line."""
    from vclust.model.bundle import Model

    from .worker_start_probe import probe_env, probed

    root, _ = labelled_store
    cfg = tmp_path / "local.yaml"
    cfg.write_text("kind: local\nn_workers: 2\nthreads_per_worker: 1\n")
    env = {**ENV, **probe_env(tmp_path / "probe")}
    models = {}
    for extra, where in (([], "dask: in this process"), (["--cluster", str(cfg)], "dask: local")):
        out = tmp_path / f"model{len(extra)}"
        res = subprocess.run(VCLUST + ["fit", str(root / "store"), "--descriptor", "osnet",
                                       "--k", "4", "--model", str(out), *extra],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert where in res.stderr, res.stderr
        models[where] = Model.load(out)
    # a fit builds its index in its own process: its workers' server imports none of it
    assert probed(tmp_path / "probe") == [
        {"pynndescent": False, "umap": False, "outliers": False, "deferred_signatures": None}] * 2
    here, there = models.values()
    np.testing.assert_array_equal(here.outliers.ref_rows_, there.outliers.ref_rows_)
    np.testing.assert_allclose(here.clusterer.cluster_centers_, there.clusterer.cluster_centers_,
                               rtol=1e-4, atol=1e-5)
    assert here.info["chosen_k"] == there.info["chosen_k"] == 4
    assert abs(here.outliers.threshold_z_ - there.outliers.threshold_z_) < 1e-3
    from vclust.storage.store import Store

    x = np.asarray(Store.open(root / "store").array("osnet")[:])
    lab_here = here.clusterer.predict_block(np.asarray(here.preprocess.transform(x)))[0]
    lab_there = there.clusterer.predict_block(np.asarray(there.preprocess.transform(x)))[0]
    np.testing.assert_array_equal(lab_here, lab_there)
    again = subprocess.run(VCLUST + ["fit", str(root / "store"), "--descriptor", "osnet", "--k",
                                     "4", "--model", str(tmp_path / "model0")],
                           env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "never overwritten" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "fitting on" not in again.stderr


def test_worker_killed_mid_label_gives_identical_labels(labelled_store, dask_workers, tmp_path):
    """SIGKILL a `dask worker` process while it runs label tasks: the run completes (the nanny
    restarts the worker, the scheduler reruns its tasks) and the labels equal the fault-free
    ones, row for row."""
    import signal

    from distributed import Client

    from vclust.storage.labels import read_labels

    root, ref = labelled_store
    addr = dask_workers
    _wait_for_workers(addr)
    run = subprocess.Popen(VCLUST + ["label", str(root / "store"), "--model",
                                     str(root / "model"), "--out", str(tmp_path / "labels"),
                                     "--all", "--scheduler", addr],
                           env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    killed = None
    with Client(addr, timeout=10) as c:
        pids = c.run(os.getpid)
        deadline = time.time() + 120
        while killed is None and run.poll() is None and time.time() < deadline:
            busy = [w for w, keys in c.processing().items()
                    if any("label_frame" in str(k) or "write_part" in str(k) for k in keys)]
            if busy:
                killed = pids[busy[0]]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
    _, err = run.communicate(timeout=300)
    assert killed is not None, "the label run ended before a worker could be killed"
    assert run.returncode == 0, err[-3000:]
    got = read_labels(tmp_path / "labels").sort_values("row", ignore_index=True)
    pd.testing.assert_frame_equal(got, ref)


def test_scheduler_killed_mid_fit_gives_one_line_and_writes_nothing(labelled_store, tmp_path):
    import signal

    root, _ = labelled_store
    addr, sched, procs = _start_dask(tmp_path, 1)
    try:
        run = subprocess.Popen(VCLUST + ["fit", str(root / "store"), "--descriptor", "osnet",
                                         "--k-range", "3:6", "--model", str(tmp_path / "model"),
                                         "--scheduler", addr],
                               env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for line in run.stderr:
            if "fitting on" in line:
                break
        time.sleep(0.5)
        sched.send_signal(signal.SIGKILL)
        sched.wait()
        out, err = run.communicate(timeout=240)
        result = subprocess.CompletedProcess(run.args, run.returncode, out, err)
        line = assert_one_line(result, 4, match="lost the Dask scheduler")
        assert "no model was written" in line
        assert not (tmp_path / "model").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]
    finally:
        stop_processes(procs)


# --------------------------------------------------------------------------- ingest killed anywhere

def _store_content(path: Path) -> dict:
    """What a store holds, as readers see it: rows, ids, batch column and the ledger (without
    its timestamps)."""
    from vclust.storage.store import Store

    s = Store.open(path)
    ledger = [{k: v for k, v in b.items() if k != "created"} for b in s.ledger]
    return {"ledger": ledger, "ids": s.ids().tolist(), "batch": s.batches().tolist(),
            "osnet": s.descriptors("osnet").compute()}


def _assert_same_store(a: dict, b: dict):
    assert a["ledger"] == b["ledger"] and a["ids"] == b["ids"] and a["batch"] == b["batch"]
    np.testing.assert_array_equal(a["osnet"], b["osnet"])


def _chunk_files(store: Path) -> int:
    c = store / "descriptors" / "osnet" / "c"
    return sum(len(files) for _, _, files in os.walk(c)) if c.is_dir() else 0


def test_ingest_killed_at_several_points_recovers_to_the_same_store(tmp_path):
    """SIGKILL an ingest when it holds the lock, when it has grown the arrays, and halfway
    through its chunk writes; each time the store reads as before, and running the same ingest
    again gives the same store as an ingest that was never interrupted."""
    import shutil
    import signal

    from vclust.storage.ingest import ingest

    files, ids = small_case(tmp_path / "b0", rows=500)
    big, big_ids = small_case(tmp_path / "b1", rows=120_000, seed=1)
    base = tmp_path / "base"
    ingest(base, files, ids_csv=ids, batch="b0", chunk_rows=2048)
    before = _store_content(base)
    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    ingest(reference, big, ids_csv=big_ids, batch="b1")
    expected = _store_content(reference)
    n_chunks = _chunk_files(reference) - _chunk_files(base)

    meta = "descriptors/osnet/zarr.json"
    points = {
        "locked": lambda s: s.with_name(s.name + ".lock").exists(),
        "grown": lambda s: json.loads((s / meta).read_text())["shape"][0] > 500,
        "half_written": lambda s: _chunk_files(s) - _chunk_files(base) >= n_chunks // 2,
    }
    code = ("import sys; from vclust.storage.ingest import ingest; "
            "ingest(sys.argv[1], [sys.argv[2]], ids_csv=sys.argv[3], batch='b1')")
    reached = {}
    for point, seen in points.items():
        store = tmp_path / point
        shutil.copytree(base, store)
        proc = subprocess.Popen([sys.executable, "-c", code, str(store), str(big[0]),
                                 str(big_ids)], env=ENV, cwd=REPO, start_new_session=True)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            try:
                if seen(store):
                    break
            except (OSError, ValueError):  # a file being replaced under us
                pass
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        now = _store_content(store)  # the store before the batch, or with all of it: no between
        reached[point] = len(now["ids"]) == 500
        _assert_same_store(now, before if reached[point] else expected)
        ingest(store, big, ids_csv=big_ids, batch="b1")  # takes the lock over, rolls back
        _assert_same_store(_store_content(store), expected)
    assert sum(reached.values()) >= 2, reached  # most kills landed before the commit


def _model_files(path: Path) -> dict:
    """Every file of a saved model, the manifest without its name and creation time."""
    out = {}
    for f in sorted(path.iterdir()):
        if f.name == "manifest.json":
            m = json.loads(f.read_text())
            for key in ("model_id", "created"):
                m.pop(key, None)
            m.get("fit", {}).pop("store", None)
            m.get("fingerprint", {}).pop("store", None)
            out[f.name] = m
        else:
            out[f.name] = f.read_bytes()
    return out


def test_worker_killed_mid_fit_gives_a_byte_identical_model(labelled_store, dask_workers,
                                                            tmp_path):
    """Fit twice on real `dask worker` processes, SIGKILLing one worker the second time while
    it runs fit tasks: the saved models are identical, array file for array file."""
    import signal
    import threading

    from distributed import Client

    from vclust.jobs import steps as jobs
    from vclust.jobs.params import FitParams

    root, _ = labelled_store
    addr = dask_workers
    _wait_for_workers(addr)
    params = FitParams(descriptor="osnet", k=4, seed=0, sample=4000)
    with Client(addr, timeout=10) as client:
        jobs.save_model(jobs.fit(root / "store", params), tmp_path / "clean")
        result, killed = {}, []

        def fit():
            try:
                result["model"] = jobs.fit(root / "store", params)
            except BaseException as exc:  # reported below
                result["error"] = exc

        pids = client.run(os.getpid)
        t = threading.Thread(target=fit)
        t.start()
        deadline = time.time() + 120
        while not killed and t.is_alive() and time.time() < deadline:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.02)
        t.join(300)
        assert killed, "the fit ended before a worker could be killed"
        assert "error" not in result, result.get("error")
        jobs.save_model(result["model"], tmp_path / "faulted")
    assert _model_files(tmp_path / "faulted") == _model_files(tmp_path / "clean")
