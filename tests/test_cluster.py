"""Cluster configs and real `dask scheduler` / `dask worker` processes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vclust.jobs.cluster import WORKER_ENV, make_slurm_cluster, resolve, worker_environ
from vclust.jobs.config import KINDS, load_cluster_config, parse_cluster_config
from vclust.errors import InputError
from vclust.storage.store import Store

REPO = Path(__file__).resolve().parents[1]
VCLUST = [sys.executable, "-m", "vclust.cli"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_shipped_config_has_every_key_with_its_default(kind):
    path = REPO / "cluster_configs" / f"{kind}.yaml"
    raw = yaml.safe_load(path.read_text())
    model = KINDS[kind]
    assert set(raw) == set(model.model_fields), f"{path.name}: keys differ from {model.__name__}"
    cfg = load_cluster_config(path)
    assert cfg.kind == kind
    for key, field in model.model_fields.items():  # the shipped values are the defaults
        if not field.is_required():
            assert getattr(cfg, key) == field.get_default(call_default_factory=True), key
    text = path.read_text()
    for key in model.model_fields:
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{key}:"))
        assert "#" in line or key == "kind", f"{key} has no comment"


def test_bad_key_and_bad_type_are_named(tmp_path):
    with pytest.raises(InputError, match="unknown key 'n_wrokers'"):
        parse_cluster_config({"kind": "local", "n_wrokers": 2}, "x.yaml")
    with pytest.raises(InputError, match="key 'cores'"):
        parse_cluster_config({"kind": "slurm", "cores": "many"}, "x.yaml")
    with pytest.raises(InputError, match="key 'kind' must be one of"):
        parse_cluster_config({"kind": "yarn"}, "x.yaml")


def test_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("VCLUST_SCHEDULER", "tcp://10.0.0.1:8786")
    assert resolve().address == "tcp://10.0.0.1:8786"
    assert resolve(scheduler="tcp://127.0.0.1:9").address == "tcp://127.0.0.1:9"
    assert resolve(cluster_file=REPO / "cluster_configs" / "local.yaml").kind == "local"
    with pytest.raises(InputError, match="not both"):
        resolve("tcp://127.0.0.1:9", REPO / "cluster_configs" / "local.yaml")
    monkeypatch.delenv("VCLUST_SCHEDULER")
    assert resolve().kind == "local"


def test_slurm_job_script_renders_the_config():
    cfg = parse_cluster_config({"kind": "slurm", "queue": "gpu-free", "account": "city",
                                "cores": 6, "memory": "24GB", "walltime": "01:30:00",
                                "processes": 3, "job_extra_directives": ["--qos=low"]})
    cluster = make_slurm_cluster(cfg)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for needle in ("#SBATCH -p gpu-free", "#SBATCH -A city", "#SBATCH -n 1",
                   "#SBATCH --cpus-per-task=6", "#SBATCH -t 01:30:00", "#SBATCH --qos=low",
                   "--nworkers 3", "MALLOC_MMAP_THRESHOLD_"):
        assert needle in script, (needle, script)
    mem = re.search(r"#SBATCH --mem=(\d+)G", script)  # 24 GB = 22.4 GiB, rounded up
    assert mem and int(mem.group(1)) in (23, 24), script


def test_ingest_and_distributed_read_on_real_scheduler_and_workers(dask_processes, tmp_path):
    from distributed import Client

    x = np.random.default_rng(0).random((5000, 16)).astype(np.float32)
    np.save(tmp_path / "osnet.npy", x)
    out = subprocess.run(VCLUST + ["ingest", str(tmp_path / "store"), str(tmp_path / "osnet.npy"),
                                   "--chunk-rows", "500", "--scheduler", dask_processes],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert dask_processes in out.stderr  # the scheduler it used is announced
    # the bare `dask worker` is named, with the line that fixes it; the exported one is not
    assert "1 of 2 worker(s) run without vclust's malloc settings" in out.stderr, out.stderr
    with Client(dask_processes) as client:
        d = Store.open(tmp_path / "store").descriptors("osnet")
        total = d.sum(axis=0).compute()
        np.testing.assert_allclose(total, x.sum(axis=0, dtype=np.float64), rtol=1e-5)
        # both worker processes hold pieces of the persisted array
        p = client.persist(d)
        from distributed import wait

        wait(p)
        holders = {w for ws in client.who_has(p).values() for w in ws}
        assert len(holders) == 2, holders


def test_local_workers_start_with_vclusts_malloc_settings(local_client):
    """distributed's MALLOC_TRIM_THRESHOLD_=65536 is replaced in the worker processes (it made
    every temporary over 128 KB a fresh mmap); a value the user configured is kept."""
    import dask

    def env():
        import os

        return {k: os.environ.get(k) for k in WORKER_ENV}

    for got in local_client.run(env).values():
        assert got == {k: str(v) for k, v in WORKER_ENV.items()}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": 1234,
                                                                   "OMP_NUM_THREADS": 1}}):
        mine = worker_environ()
    assert mine["MALLOC_TRIM_THRESHOLD_"] == 1234 and mine["OMP_NUM_THREADS"] == 1
    assert mine["MALLOC_MMAP_THRESHOLD_"] == WORKER_ENV["MALLOC_MMAP_THRESHOLD_"]


def test_local_workers_import_as_a_commands_process_does(local_client):
    """A LocalCluster's worker imports pynndescent (and so scikit-learn) to score outliers:
    scipy.stats, which scikit-learn imports at its top for a helper vclust never calls, is
    made but not executed there, and dask's optional imports are refused, as in a command's
    own process (jobs.worker_setup, the workers' preload: about 1 CPU-s a worker). A preload
    the user configured is kept, before vclust's."""
    import dask

    from vclust.jobs.cluster import WORKER_PRELOAD, worker_preload

    def imported():
        import sys

        import dask.array  # noqa: F401

        from vclust.numerics.annindex import enable_numba_cache

        enable_numba_cache()  # pynndescent imported as vclust imports it (annindex)

        finders = [type(f).__name__ for f in sys.meta_path]
        return (finders, type(sys.modules["scipy.stats"]).__name__,
                sorted(m for m in sys.modules if m.startswith(("scipy.stats.", "xarray"))))

    for finders, stats, executed in local_client.run(imported).values():
        assert {"_RefusedToDask", "_Deferring"} <= set(finders), finders
        assert stats == "_Deferred" and executed == [], (stats, executed[:5])
    with dask.config.set({"distributed.worker.preload": ["mine"]}):
        assert worker_preload() == ["mine", WORKER_PRELOAD]
    with dask.config.set({"distributed.worker.preload": "mine"}):
        assert worker_preload() == ["mine", WORKER_PRELOAD]


_PARENT_ENV_CHECK = """
import json, os
from distributed import Client
from vclust.jobs.cluster import local_cluster

with local_cluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                   dashboard_address=None, memory_limit="1GB") as cluster, Client(cluster) as c:
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    worker = list(c.run(lambda: {k: os.environ.get(k) for k in keys}).values())[0]
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
    print(json.dumps({"worker": worker, "here": {k: os.environ.get(k) for k in keys},
                      "openmp_here": _openmp_effective_n_threads()}))
"""


def test_a_local_cluster_leaves_this_processs_thread_settings_as_they_were():
    """distributed's nanny writes the workers' single-thread settings into the starting
    process's os.environ; vclust puts them back once the workers started, so what a command
    computes in its own process beside a LocalCluster (compare's k-means) keeps its threads.
    The workers still get OMP_NUM_THREADS=1; a value the user set here stays."""
    import json

    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env["MKL_NUM_THREADS"] = "3"
    plain = subprocess.run([sys.executable, "-c", "from sklearn.utils._openmp_helpers import "
                            "_openmp_effective_n_threads as f; print(f())"], env=env,
                           capture_output=True, text=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", _PARENT_ENV_CHECK], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["worker"]["OMP_NUM_THREADS"] == "1" and got["worker"]["OPENBLAS_NUM_THREADS"] == "1"
    assert got["here"] == {"OMP_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None,
                           "MKL_NUM_THREADS": "3"}
    assert got["openmp_here"] == int(plain.stdout)


_FORKED_CHECK = """
import json, os

import dask
from distributed import Client

from vclust.jobs.cluster import local_cluster


def seen():
    import sys

    return {"parent": os.getppid(), "zarr": "zarr" in sys.modules,
            "later": os.environ.get("VCLUST_TEST_LATER"),
            "trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def one():
    with local_cluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None, memory_limit="1GB") as cluster, Client(cluster) as c:
        return list(c.run(seen).values())[0]


if __name__ == "__main__":
    out = {"me": os.getpid(), "first": one()}
    os.environ["VCLUST_TEST_LATER"] = "set after the first cluster"
    out["second"] = one()
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": 1234}}):
        out["other_malloc"] = one()
    del os.environ["VCLUST_TEST_GONE"]
    out["removed"] = one()
    print(json.dumps(out))
"""


def test_local_workers_fork_from_one_server_unless_their_start_settings_changed(tmp_path):
    """A LocalCluster's workers are forked from one server process that imported what every
    worker imports (zarr here, which nothing else in a worker imports), and every later cluster
    of the process forks from it too, a variable set since reaching its workers. A cluster whose
    pre-spawn settings differ (read once at a process's start) or for which a variable the server
    saw is gone gets spawned workers, with its own settings."""
    import json

    from vclust.jobs.config import WORKER_ENV

    script = tmp_path / "forked.py"
    script.write_text(_FORKED_CHECK)
    env = {**os.environ, "VCLUST_TEST_GONE": "removed before the last cluster"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    first, second = got["first"], got["second"]
    assert first["parent"] != got["me"] and first["zarr"], got
    assert first["trim"] == str(WORKER_ENV["MALLOC_TRIM_THRESHOLD_"]) and first["later"] is None
    assert second["parent"] == first["parent"] and second["later"] == "set after the first cluster"
    assert got["other_malloc"]["parent"] == got["me"] and got["other_malloc"]["trim"] == "1234"
    assert got["removed"]["parent"] == got["me"], got


def test_a_commands_server_preloads_umap_only_when_its_map_may_be_umap():
    """What a command's LocalCluster server imports before it forks the workers: the scoring
    modules for label; the same and umap-learn for report, compare and the nightly run, unless
    the map is asked for as PCA or t-SNE; nothing more for ingest, pixels and fit. (The report
    of test_faults_jobs checks, on real workers, that the command passes its map method.)"""
    from vclust.jobs.workerstart import MAPS_PRELOAD, SCORING_PRELOAD, preload_for

    assert "vclust.jobs.worker_maps" in MAPS_PRELOAD
    assert "vclust.jobs.worker_maps" not in SCORING_PRELOAD
    assert "vclust.jobs.worker_index" in SCORING_PRELOAD
    for command in ("report", "compare"):
        for method in (None, "auto", "umap"):
            assert preload_for(command, method) == MAPS_PRELOAD, (command, method)
        for method in ("pca", "tsne"):
            assert preload_for(command, method) == SCORING_PRELOAD, (command, method)
    assert preload_for("run") == MAPS_PRELOAD
    assert preload_for("label") == preload_for("label", "pca") == SCORING_PRELOAD
    for command in ("ingest", "pixels", "fit", None):
        assert preload_for(command) == ()
    # what the maps' preload module imports, in a fresh interpreter as the server is (the
    # LocalCluster test of test_faults_jobs runs a PCA map, so its workers no longer show it)
    out = subprocess.run([sys.executable, "-c", "import sys, vclust.jobs.worker_maps; "
                          "print('umap' in sys.modules, 'pynndescent' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["True", "True"], out.stderr[-2000:]


def test_readme_gives_the_worker_export_line_the_code_uses():
    from vclust.jobs.config import WORKER_EXPORT

    assert WORKER_EXPORT in (REPO / "README.md").read_text()
