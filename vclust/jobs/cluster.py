"""connect(): a Dask client for a LocalCluster, an existing scheduler, SSH, SLURM or Kubernetes.

Resolution order: ``scheduler`` argument (``--scheduler``), then ``config`` (``--cluster FILE``),
then the VCLUST_SCHEDULER environment variable, then a LocalCluster sized to the machine (or,
with ``here``, none: the caller's own process on dask's threads; ``vclust label`` of small
batches).

How long to wait for a scheduler at an address: ``--scheduler-timeout``, then the config key
``timeout`` (kind: scheduler), then $VCLUST_SCHEDULER_TIMEOUT, then 5 seconds. An address vclust
cannot parse (an unknown scheme such as ``nonsense://``) is bad input (exit 2); a scheduler that
does not answer in time is an environment fault (exit 4).
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


def local_cluster(**kwargs):
    """A ``distributed.LocalCluster`` whose worker processes start with ``worker_environ()``."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        return LocalCluster(**kwargs)


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


def _start(cfg: ClusterConfig):
    """(cluster or None, client)."""
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
        cluster = local_cluster(**local_cluster_kwargs(cfg))
    elif isinstance(cfg, SlurmConfig):
        cluster = make_slurm_cluster(cfg)
        cluster.scale(jobs=cfg.n_jobs)
    elif isinstance(cfg, SSHConfig):
        from distributed import SSHCluster

        cluster = SSHCluster(cfg.hosts, connect_options=cfg.connect_options,
                             worker_options=cfg.worker_options,
                             scheduler_options=cfg.scheduler_options,
                             remote_python=cfg.remote_python)
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
    which a command run in this process on threads never needs (0.6-0.8 s of its start-up)."""
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
            timeout: float | None = None, here: str | None = None):
    """Yield a ``distributed.Client``; close what was started on exit.

    ``announce(text)`` is called with the dashboard address (the CLI prints it). ``timeout``:
    seconds to wait for a scheduler at an address (see the module docstring). ``here``: when
    neither a scheduler nor a cluster file is named (nor $VCLUST_SCHEDULER), run in this
    process on dask's thread pool instead of starting a LocalCluster, and yield None; the text
    says why (announced).
    """
    cfg = resolve(scheduler, cluster_file, timeout)
    s3_env = apply_s3(cfg)
    if here and cluster_file is None and cfg.kind == "local":  # nothing named (resolve)
        import dask

        from ..numerics.blocks import threads_get

        if announce:
            announce(f"dask: in this process (threads): {here}")
        # tasks-based rechunking: dask would import distributed to look for a client to run
        # a p2p rechunk on (0.6-0.8 s of a command that never needs it)
        with dask.config.set({"scheduler": threads_get, "array.rechunk.method": "tasks"}):
            yield None
        return
    cluster, client = _start(cfg)
    try:
        if s3_env and cfg.kind != "local":  # workers started elsewhere: set it there too
            client.register_plugin(_s3_environ_class()(s3_env), name="vclust-s3-environ")
        n = len(client.scheduler_info().get("workers", {}))
        where = cfg.kind if cfg.kind != "scheduler" else cfg.address
        if announce:
            link = client.dashboard_link if client.dashboard_link else "no dashboard"
            announce(f"dask: {where}, {n} worker(s), dashboard {link}")
            hint = worker_env_hint(client) if n and cfg.kind != "local" else None
            if hint:
                announce(hint)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
