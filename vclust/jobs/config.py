"""Cluster configs (cluster_configs/*.yaml): load, validate, resolve defaults.

Every key of every kind is declared here with its default; the shipped YAML files carry each key
with the same default and a comment. Unknown keys and wrong types fail when the file is loaded,
naming the key. Settings resolve in one order: command-line flag, then config file / job spec,
then environment (VCLUST_SCHEDULER), then these defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3Config(_Strict):
    """Where ``s3://`` URLs point (vclust.storage.fs), for this run and its workers: exported as
    AWS_ENDPOINT_URL_S3 and AWS_DEFAULT_REGION before the cluster starts (and set on workers
    started elsewhere through a worker plugin). Credentials stay in the environment
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE), never in a config file."""

    endpoint_url: Optional[str] = None  # an S3-compatible server, e.g. http://minio:9000
    region: Optional[str] = None

    def environ(self) -> dict[str, str]:
        env = {}
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL_S3"] = self.endpoint_url
        if self.region:
            env["AWS_DEFAULT_REGION"] = self.region
        return env


class LocalConfig(_Strict):
    kind: Literal["local"] = "local"
    s3: Optional[S3Config] = None  # endpoint and region of s3:// URLs (null: the environment's)
    n_workers: Optional[int] = Field(None, ge=1)  # None: one per core
    threads_per_worker: Optional[int] = Field(None, ge=1)  # None: cores / workers
    memory_limit: Union[str, float, int] = "auto"  # per worker; "auto" shares the machine's memory
    processes: bool = True
    dashboard_address: Optional[str] = ":0"  # ":0" a free port; null for no dashboard
    local_directory: Optional[str] = None


class SchedulerConfig(_Strict):
    kind: Literal["scheduler"] = "scheduler"
    s3: Optional[S3Config] = None  # endpoint and region of s3:// URLs (null: the environment's)
    address: str  # tcp://host:8786, or a scheduler file path (scheduler.json)
    timeout: float = Field(5.0, gt=0)  # seconds to wait for the scheduler (then exit 4)


# glibc malloc settings for worker processes (vclust/cluster.py says why), and the line that
# gives them to `dask worker` processes started outside vclust: their nanny applies its
# pre-spawn-environ after the shell's variables (a plain MALLOC_TRIM_THRESHOLD_=... would be
# overwritten), so the whole setting, with distributed's single BLAS thread, goes through dask's
# config variable.
WORKER_ENV = {"MALLOC_TRIM_THRESHOLD_": 64 * 2**20, "MALLOC_MMAP_THRESHOLD_": 32 * 2**20}
WORKER_PRE_SPAWN = {**WORKER_ENV, "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                    "OPENBLAS_NUM_THREADS": 1}
WORKER_ENV_VAR = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
WORKER_EXPORT = f"export {WORKER_ENV_VAR}=\"{WORKER_PRE_SPAWN!r}\""


class SSHConfig(_Strict):
    kind: Literal["ssh"] = "ssh"
    s3: Optional[S3Config] = None  # endpoint and region of s3:// URLs (null: the environment's)
    hosts: list[str] = Field(min_length=2)  # first host runs the scheduler, the rest workers
    connect_options: dict = Field(default_factory=dict)  # asyncssh.connect options (username, ...)
    worker_options: dict = Field(default_factory=lambda: {"nthreads": 2, "memory_limit": "auto"})
    scheduler_options: dict = Field(default_factory=lambda: {"port": 8786, "dashboard_address": ":8787"})
    remote_python: Optional[str] = None  # python on the hosts; None: the same path as here
    # seconds to wait, once the processes are started, for the first worker (then exit 4)
    start_timeout: float = Field(120.0, gt=0)


class SlurmConfig(_Strict):
    kind: Literal["slurm"] = "slurm"
    s3: Optional[S3Config] = None  # endpoint and region of s3:// URLs (null: the environment's)
    queue: Optional[str] = None  # partition (-p)
    account: Optional[str] = None  # -A
    cores: int = Field(8, ge=1)  # cores per job
    memory: str = "32GB"  # memory per job
    processes: int = Field(2, ge=1)  # dask workers per job
    walltime: str = "02:00:00"
    n_jobs: int = Field(4, ge=1)  # jobs to submit (cluster.scale(jobs=...))
    interface: Optional[str] = None  # network interface for workers (ib0, eth0, ...)
    local_directory: Optional[str] = None  # worker scratch space on the compute node
    python: Optional[str] = None  # python on the compute nodes; None: the same path as here
    job_extra_directives: list[str] = Field(default_factory=list)  # extra #SBATCH lines
    # shell lines before the worker; the default gives it vclust's malloc settings
    job_script_prologue: list[str] = Field(default_factory=lambda: [WORKER_EXPORT])
    # seconds to wait for the first worker job to start and join (a queue that never starts
    # one, e.g. a partition that is down: its jobs are cancelled and the command exits 4)
    start_timeout: float = Field(1800.0, gt=0)


class KubernetesConfig(_Strict):
    kind: Literal["kubernetes"] = "kubernetes"
    s3: Optional[S3Config] = None  # endpoint and region of s3:// URLs (null: the environment's)
    name: str = "vclust"
    image: str = "ghcr.io/dask/dask:latest"  # must contain vclust's dependencies
    namespace: Optional[str] = None
    n_workers: int = Field(4, ge=1)
    resources: dict = Field(default_factory=lambda: {"requests": {"cpu": "2", "memory": "8Gi"},
                                                     "limits": {"cpu": "2", "memory": "8Gi"}})
    # environment for scheduler and workers; the default gives them vclust's malloc settings
    env: dict[str, str] = Field(default_factory=lambda: {WORKER_ENV_VAR: repr(WORKER_PRE_SPAWN)})


KINDS = {
    "local": LocalConfig,
    "scheduler": SchedulerConfig,
    "ssh": SSHConfig,
    "slurm": SlurmConfig,
    "kubernetes": KubernetesConfig,
}
ClusterConfig = Union[LocalConfig, SchedulerConfig, SSHConfig, SlurmConfig, KubernetesConfig]


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line naming the first bad key: 'cluster.yaml: key 'n_wrokers': extra inputs ...'."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key '{key}'"
    return f"{where}: key '{key}': {err['msg']} (got {err.get('input')!r})"


def parse_cluster_config(data: dict, where: str = "cluster config") -> ClusterConfig:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    kind = data.get("kind", "local")
    if kind not in KINDS:
        raise InputError(f"{where}: key 'kind' must be one of {', '.join(KINDS)}; got {kind!r}")
    try:
        return KINDS[kind].model_validate(data)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, where)) from None


MAX_YAML_DEPTH = 64  # nested collections in a job spec or cluster config
MAX_YAML_NODES = 100_000  # values once every alias is expanded (a spec has a few hundred)


class YAMLLimit(Exception):
    pass


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document nested deeper than ``MAX_YAML_DEPTH`` while
    composing it (before Python's recursion limit), and one whose aliases expand to more than
    ``MAX_YAML_NODES`` values (an alias bomb: 1.2 KB that expand to billions) before it is
    constructed: every later walk of the data (``--set``, ``$VARS``, validation) would expand
    them."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YAMLLimit(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node, memo: dict) -> int:
    """Values under ``node`` with every alias expanded (each node counted once per place it
    appears), memoised by node: linear in the document, however large the expansion."""
    got = memo.get(id(node))
    if got is not None:
        return got
    memo[id(node)] = 1  # a cycle (an alias inside its own anchor) counts once
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def safe_yaml(text: str):
    """``yaml.safe_load`` within the limits of ``_LimitedLoader``; raises yaml.YAMLError, or
    YAMLLimit with the limit crossed."""
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise YAMLLimit(f"its aliases expand to {size:,} values, more than "
                             f"{MAX_YAML_NODES:,}")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path) -> dict:
    """A YAML file (job spec or cluster config) within the limits of ``safe_yaml``: bad YAML,
    a binary file, or a document too deep or too large once its aliases are expanded is one
    line (InputError)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = safe_yaml(path.read_text()) or {}
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (binary content); expected YAML") from None
    except YAMLLimit as exc:
        raise InputError(f"{path}: refused: {exc}; a job spec or cluster config is a few "
                         "levels of keys") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return data


def load_cluster_config(path) -> ClusterConfig:
    return parse_cluster_config(load_yaml(path), str(path))
