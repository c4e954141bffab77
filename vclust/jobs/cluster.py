"""connect(): a Dask client for a LocalCluster, an existing scheduler, SSH, SLURM or Kubernetes.

Resolution order: ``scheduler`` argument (``--scheduler``), then ``config`` (``--cluster FILE``),
then the VCLUST_SCHEDULER environment variable, then a LocalCluster sized to the machine (or,
with ``here``, none: the caller's own process on dask's threads; ``vclust label`` of small
batches).

How long to wait for a scheduler at an address: ``--scheduler-timeout``, then the config key
``timeout`` (kind: scheduler), then $VCLUST_SCHEDULER_TIMEOUT, then 5 seconds. An address vclust
cannot parse (an unknown scheme such as ``nonsense://``) is bad input (exit 2); a scheduler that
does not answer in time is an environment fault (exit 4). SLURM and SSH clusters that start no
worker within their config's ``start_timeout`` are one too, as are SSH hosts that refuse the
connection; a local path a worker of another machine or directory cannot see is bad input
(``check_worker_paths``). tests/test_slurm.py and tests/test_ssh.py run both kinds for real.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from .config import (
    WORKER_ENV,
    WORKER_EXPORT,
    ClusterConfig,
    KubernetesConfig,
    LocalConfig,
    SchedulerConfig,
    SlurmConfig,
    SSHConfig,
    load_cluster_config,
)
from ..errors import EnvironmentFault, InputError

log = logging.getLogger(__name__)


def _env_timeout() -> float | None:
    raw = os.environ.get("VCLUST_SCHEDULER_TIMEOUT")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"VCLUST_SCHEDULER_TIMEOUT must be a number of seconds above 0; got {raw!r}")
    return value


def resolve(scheduler: str | None = None, cluster_file=None, timeout: float | None = None
            ) -> ClusterConfig:
    """The cluster config that ``connect`` would use, without starting anything (for dry runs).
    ``timeout`` (``--scheduler-timeout``) overrides the config key and the environment."""
    if scheduler and cluster_file:
        raise InputError("pass either --scheduler or --cluster, not both")
    if timeout is not None and not timeout > 0:
        raise InputError(f"--scheduler-timeout must be above 0 seconds; got {timeout}")
    env = os.environ.get("VCLUST_SCHEDULER")
    if scheduler or (env and not cluster_file):
        wait = timeout or _env_timeout()
        return SchedulerConfig(address=scheduler or env, **({"timeout": wait} if wait else {}))
    if cluster_file:
        cfg = load_cluster_config(cluster_file)
        if isinstance(cfg, SchedulerConfig) and timeout:
            cfg = cfg.model_copy(update={"timeout": timeout})
        elif isinstance(cfg, SchedulerConfig) and "timeout" not in cfg.model_fields_set:
            wait = _env_timeout()
            cfg = cfg.model_copy(update={"timeout": wait}) if wait else cfg
        return cfg
    return LocalConfig()


#: imported by every worker process of a LocalCluster vclust starts, after any the user
#: configured (distributed.worker.preload)
WORKER_PRELOAD = "vclust.jobs.worker_setup"


def worker_preload() -> list:
    import dask

    preload = dask.config.get("distributed.worker.preload", default=None) or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    return preload + [WORKER_PRELOAD] if WORKER_PRELOAD not in preload else preload


def local_cluster_kwargs(cfg: LocalConfig) -> dict:
    """LocalCluster arguments sized to this machine: one single-threaded worker process per core
    (numpy kernels release the GIL, but separate processes keep the BLAS and the GIL-bound
    parts of pynndescent from fighting), and the machine's memory shared among them."""
    import psutil

    cores = os.cpu_count() or 1
    n_workers = cfg.n_workers or (cores if cfg.processes else 1)
    threads = cfg.threads_per_worker or max(1, cores // n_workers)
    memory = cfg.memory_limit
    if memory == "auto":
        memory = int(psutil.virtual_memory().total * 0.8 / n_workers)
    kwargs = dict(n_workers=n_workers, threads_per_worker=threads, memory_limit=memory,
                  processes=cfg.processes, dashboard_address=cfg.dashboard_address)
    if cfg.processes:
        kwargs["host"] = "127.0.0.1"  # threads-only clusters talk in-process, no address
    if cfg.local_directory:
        kwargs["local_directory"] = cfg.local_directory
    return kwargs


# glibc malloc settings for vclust's worker processes. distributed sets MALLOC_TRIM_THRESHOLD_ to
# 64 KiB, which also turns off glibc's adaptive mmap threshold: every temporary over 128 KB is
# then a fresh mmap, paid in page faults on each use, and every freed byte goes back to the
# system at once: zarr chunk reads and k-means passes run several times slower (figures in
# benchmarks/RESULTS.md, kernel figures).
# Here blocks up to 32 MiB come from the heap and up to 64 MiB of free heap is kept for reuse
# (config.WORKER_ENV). Workers started outside vclust get them from config.WORKER_EXPORT.
_DISTRIBUTED_DEFAULTS = {"MALLOC_TRIM_THRESHOLD_": 65536}


def worker_environ() -> dict:
    """distributed's pre-spawn worker environment with ``WORKER_ENV`` in place of its malloc
    default (a value the user configured otherwise wins)."""
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    for key, value in WORKER_ENV.items():
        if key not in env or str(env[key]) == str(_DISTRIBUTED_DEFAULTS.get(key)):
            env[key] = value
    return env


def _worker_malloc_env():
    return {k: os.environ.get(k) for k in WORKER_ENV}


def worker_env_hint(client) -> str | None:
    """One line for the user when some worker runs without vclust's malloc settings, else None."""
    try:
        seen = client.run(_worker_malloc_env)
    except Exception:  # a worker that cannot answer is reported elsewhere
        return None
    # an unset mmap threshold is the costly case; values the user chose are left alone
    off = [w for w, env in seen.items() if env.get("MALLOC_MMAP_THRESHOLD_") is None]
    if not off:
        return None
    return (f"{len(off)} of {len(seen)} worker(s) run without vclust's malloc settings (reads "
            f"and KMeans passes several times slower); start them after: {WORKER_EXPORT}")


def local_cluster(preload_modules=(), **kwargs):
    """A ``distributed.LocalCluster`` whose worker processes start with ``worker_environ()``
    and import ``WORKER_PRELOAD`` first, forked from a server process that has imported
    ``workerstart.BASE_PRELOAD`` and ``preload_modules`` (``workerstart.start_method``).

    distributed's nanny sets that environment in *this* process's ``os.environ`` before it
    spawns a worker, and leaves it there: OMP_NUM_THREADS=1 and OPENBLAS_NUM_THREADS=1 then
    held for everything the command computed here afterwards (`vclust compare` ran its
    in-process k-means on one OpenMP thread, scikit-learn reading OMP_NUM_THREADS; RESULTS.md,
    the tenth session). This process's own values are put back once the workers started."""
    import dask
    from distributed import LocalCluster

    env = worker_environ()
    method = dask.config.get("distributed.worker.multiprocessing-method")
    if kwargs.get("processes", True):  # not into this process
        if "preload" not in kwargs:
            kwargs["preload"] = worker_preload()
        from .workerstart import start_method

        method, changed = start_method(env, preload_modules)
        if changed:
            kwargs["env"] = {**changed, **(kwargs.get("env") or {})}
    before = {k: os.environ.get(k) for k in env}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env,
                              "distributed.worker.multiprocessing-method": method}):
            return LocalCluster(**kwargs)
    finally:
        _restore_environ(before)


def _restore_environ(values: dict):
    """``os.environ`` set back to ``values`` (None: the variable was not set)."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def slurm_cluster_kwargs(cfg: SlurmConfig) -> dict:
    kwargs = dict(cores=cfg.cores, memory=cfg.memory, processes=cfg.processes,
                  walltime=cfg.walltime, job_extra_directives=cfg.job_extra_directives,
                  job_script_prologue=cfg.job_script_prologue)
    for key in ("queue", "account", "interface", "local_directory", "python"):
        value = getattr(cfg, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def make_slurm_cluster(cfg: SlurmConfig):
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**slurm_cluster_kwargs(cfg))


def slurm_job_ids(cluster) -> list[str]:
    """The SLURM job ids of a dask-jobqueue cluster's submitted jobs (in submission order)."""
    ids = [getattr(job, "job_id", None) for job in getattr(cluster, "workers", {}).values()]
    return sorted((str(i) for i in ids if i), key=lambda i: (len(i), i))


def _slurm_states(ids: list[str]) -> str:
    """'job 12 PENDING (PartitionDown), ...' from squeue, or '' when squeue cannot say."""
    import subprocess

    if not ids:
        return ""
    try:
        out = subprocess.run(["squeue", "--noheader", "--format=%i %T %R", "--jobs", ",".join(ids)],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return ", ".join(f"job {' '.join(line.split())}" for line in out.splitlines() if line.strip())


def _ssh_cluster(cfg: SSHConfig):
    """distributed's SSHCluster. It learns the scheduler's and each worker's address from the
    lines they log at start-up, and they inherit this process's dask config, where the CLI has
    quietened distributed's logging (cli._setup_logging): those two loggers stay at INFO, or the
    start-up would wait for a line that never comes. The same inherited config gives the remote
    workers vclust's malloc settings (``worker_environ``)."""
    import dask
    from distributed import SSHCluster

    levels = dask.config.get("logging", default={}) or {}
    levels = dict(levels) if isinstance(levels, dict) else {}
    levels.update({"distributed.scheduler": "info", "distributed.worker": "info"})
    try:
        with dask.config.set({"logging": levels,
                              "distributed.nanny.pre-spawn-environ": worker_environ()}):
            return SSHCluster(cfg.hosts, connect_options=cfg.connect_options,
                              worker_options=cfg.worker_options,
                              scheduler_options=cfg.scheduler_options,
                              remote_python=cfg.remote_python)
    except (OSError, TimeoutError, ImportError) as exc:
        raise EnvironmentFault(_ssh_failure(cfg, exc), kept="nothing was changed") from None
    except Exception as exc:  # noqa: BLE001 - asyncssh's refusals and a process that died
        if type(exc).__module__.startswith("asyncssh") or "failed to start" in str(exc):
            raise EnvironmentFault(_ssh_failure(cfg, exc), kept="nothing was changed") from None
        raise


def _ssh_failure(cfg: SSHConfig, exc: BaseException) -> str:
    if isinstance(exc, ImportError):  # asyncssh is an extra
        return "ssh clusters need asyncssh: pip install 'vclust[ssh]'"
    return (f"cannot start the Dask processes over SSH on {', '.join(cfg.hosts)} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); check the hosts, "
            "connect_options (user, key, port) and that vclust's python is at remote_python there")


def _wait_for_first_worker(cfg, cluster, client) -> None:
    """Return when a worker has joined, or close the cluster (cancelling queued SLURM jobs) and
    raise EnvironmentFault after the config's ``start_timeout``."""
    try:
        client.wait_for_workers(1, timeout=cfg.start_timeout)
        return
    except (TimeoutError, OSError):
        pass
    states = _slurm_states(slurm_job_ids(cluster)) if cfg.kind == "slurm" else ""
    client.close()
    cluster.close()
    where = f"{cfg.kind} cluster" + (f" ({states})" if states else "")
    raise EnvironmentFault(
        f"no Dask worker joined the {where} within {cfg.start_timeout:g} s; check the queue "
        "or the hosts (the worker logs: README, Clusters), or wait longer with the config's "
        "start_timeout", kept="nothing was changed; the submitted jobs were cancelled"
        if cfg.kind == "slurm" else "nothing was changed") from None


def _announce_where(cfg, cluster, client) -> str:
    """'slurm jobs 12, 13, 2 worker(s) (tcp://...)' for the CLI's dask line."""
    workers = sorted(client.scheduler_info().get("workers", {}))
    where = cfg.kind if cfg.kind != "scheduler" else cfg.address
    if cfg.kind == "slurm":
        where += f" jobs {', '.join(slurm_job_ids(cluster)) or '-'}"
    text = f"{where}, {len(workers)} worker(s)"
    if cfg.kind != "local" and workers:
        text += f" ({', '.join(workers[:8])}{', ...' if len(workers) > 8 else ''})"
    return text


def _path_view(probes: list[str]) -> dict:
    """On a worker: its host, working directory, and whether (and as what) it sees each path."""
    import socket

    return {"host": socket.gethostname(), "cwd": os.getcwd(),
            "seen": {p: (os.path.exists(p), os.path.realpath(p)) for p in probes}}


def check_worker_paths(client, paths: dict) -> None:
    """Exit 2 (InputError) before the work when a worker cannot see a local path of this run:
    a relative path where the workers run in another directory, or a path missing on a
    worker's file system. ``paths``: {what: path or None}, e.g. {"store": ..., "--out": ...};
    a path that does not exist yet (a new labels folder) is checked through its nearest
    existing parent; s3:// URLs are not checked here (every process opens them alike)."""
    from pathlib import Path

    from ..storage.fs import is_url

    probes = {}
    for what, path in paths.items():
        if path is None or is_url(str(path)):
            continue
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        probes[what] = (str(path), str(probe), os.path.realpath(probe))
    if not probes:
        return
    seen = client.run(_path_view, sorted({p[1] for p in probes.values()}))
    for worker, view in sorted(seen.items()):
        for what, (path, probe, here) in probes.items():
            exists, there = view["seen"][probe]
            if not os.path.isabs(path) and there != here:
                raise InputError(
                    f"{what} {path!r}: a relative path, and worker {worker} runs in {view['cwd']} "
                    f"on {view['host']}, not in {os.getcwd()}; give an absolute path (or an "
                    "s3:// URL) that every worker sees")
            if not exists:
                raise InputError(
                    f"{what} {path!r}: not found by worker {worker} on {view['host']}; put it "
                    "where every worker sees it (a shared file system at the same path) or on "
                    "s3://")


def _start(cfg: ClusterConfig, preload=()):
    """(cluster or None, client). ``preload``: what a LocalCluster's server imports besides
    ``workerstart.BASE_PRELOAD`` (``connect``)."""
    from distributed import Client

    if isinstance(cfg, SchedulerConfig):
        try:
            if cfg.address.endswith(".json"):
                client = Client(scheduler_file=cfg.address, timeout=cfg.timeout)
            else:
                client = Client(cfg.address, timeout=cfg.timeout)
        except (ValueError, TypeError) as exc:  # an address distributed cannot parse
            raise InputError(f"--scheduler {cfg.address}: not a scheduler address "
                             f"({' '.join(str(exc).split())}); expected tcp://HOST:PORT or a "
                             "scheduler file (.json)") from None
        except (OSError, TimeoutError) as exc:
            raise EnvironmentFault(
                f"cannot reach the Dask scheduler at {cfg.address} within {cfg.timeout:g} s "
                f"({' '.join(str(exc).split())[:160]}); check the address and that the "
                "scheduler runs, or wait longer with --scheduler-timeout",
                kept="nothing was changed") from None
        return None, client
    if isinstance(cfg, LocalConfig):
        cluster = local_cluster(preload, **local_cluster_kwargs(cfg))
    elif isinstance(cfg, SlurmConfig):
        cluster = make_slurm_cluster(cfg)
        cluster.scale(jobs=cfg.n_jobs)
        client = Client(cluster)
        _wait_for_first_worker(cfg, cluster, client)
        return cluster, client
    elif isinstance(cfg, SSHConfig):
        cluster = _ssh_cluster(cfg)
        client = Client(cluster)
        _wait_for_first_worker(cfg, cluster, client)
        return cluster, client
    elif isinstance(cfg, KubernetesConfig):
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError:
            raise InputError("kubernetes clusters need dask-kubernetes: pip install 'vclust[kubernetes]'") from None
        cluster = KubeCluster(name=cfg.name, image=cfg.image, namespace=cfg.namespace,
                              n_workers=cfg.n_workers, resources=cfg.resources, env=cfg.env)
    else:  # pragma: no cover - config validation covers the kinds
        raise AssertionError(cfg)
    return cluster, Client(cluster)


def apply_s3(cfg) -> dict:
    """Export a config's ``s3:`` key (endpoint, region) into this process's environment, which
    a LocalCluster's workers inherit; returns what was set."""
    s3 = getattr(cfg, "s3", None)
    env = s3.environ() if s3 is not None else {}
    os.environ.update(env)
    return env


_S3_ENVIRON = None


def _s3_environ_class():
    """``S3Environ``, made on first use: a WorkerPlugin subclass needs distributed imported,
    which a command run in this process on threads never needs (benchmarks/RESULTS.md, figures behind the code)."""
    global _S3_ENVIRON
    if _S3_ENVIRON is None:
        from distributed.diagnostics.plugin import WorkerPlugin

        class S3Environ(WorkerPlugin):
            """Sets the s3 endpoint and region variables on every worker (present and
            future)."""

            def __init__(self, env: dict):
                self.env = dict(env)

            def setup(self, worker):
                os.environ.update(self.env)

        S3Environ.__qualname__ = "S3Environ"  # pickled by reference: vclust.jobs.cluster.S3Environ
        _S3_ENVIRON = S3Environ
    return _S3_ENVIRON


def __getattr__(name):  # PEP 562: ``cluster.S3Environ`` without importing distributed first
    if name == "S3Environ":
        return _s3_environ_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def connect(scheduler: str | None = None, cluster_file=None, *, announce=None,
            timeout: float | None = None, here: str | None = None, paths: dict | None = None,
            preload=()):
    """Yield a ``distributed.Client``; close what was started on exit.

    ``announce(text)`` is called with the dashboard address (the CLI prints it). ``timeout``:
    seconds to wait for a scheduler at an address (see the module docstring). ``here``: when
    neither a scheduler nor a cluster file is named (nor $VCLUST_SCHEDULER), run in this
    process on dask's thread pool instead of starting a LocalCluster, and yield None; the text
    says why (announced). ``paths``: the local paths the workers read or write ({what: path}),
    checked on the workers of any cluster but a LocalCluster (``check_worker_paths``, exit 2).
    SLURM and SSH clusters wait for their first worker up to the config's ``start_timeout``
    (then exit 4). ``preload``: modules a LocalCluster's workers import at their first tasks,
    imported once in the server they are forked from (``workerstart.preload_for``).
    """
    cfg = resolve(scheduler, cluster_file, timeout)
    s3_env = apply_s3(cfg)
    if here and cluster_file is None and cfg.kind == "local":  # nothing named (resolve)
        import dask

        from ..numerics.blocks import threads_get

        if announce:
            announce(f"dask: in this process (threads): {here}")
        # tasks-based rechunking: dask would import distributed to look for a client to run
        # a p2p rechunk on (distributed's import: a command that never needs it)
        with dask.config.set({"scheduler": threads_get, "array.rechunk.method": "tasks"}):
            yield None
        return
    cluster, client = _start(cfg, preload)
    try:
        if s3_env and cfg.kind != "local":  # workers started elsewhere: set it there too
            client.register_plugin(_s3_environ_class()(s3_env), name="vclust-s3-environ")
        n = len(client.scheduler_info().get("workers", {}))
        if announce:
            link = client.dashboard_link if client.dashboard_link else "no dashboard"
            announce(f"dask: {_announce_where(cfg, cluster, client)}, dashboard {link}")
            hint = worker_env_hint(client) if n and cfg.kind != "local" else None
            if hint:
                announce(hint)
        if paths and cfg.kind != "local" and n:
            check_worker_paths(client, paths)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
