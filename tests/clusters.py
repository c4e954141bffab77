"""Real clusters on this machine for the suite: a one-node SLURM and an SSH server, on 127.0.0.1.

Session-scoped fixtures (registered in conftest.py) that write their configs under a temporary
folder, start the daemons of Debian's packages (``make services`` installs them: slurm-wlm's
slurmctld and slurmd, munge, openssh-server), wait until they answer, and stop them at the end.
Nothing is written outside the temporary folder but sshd's privilege separation directory
(/run/sshd, which sshd insists on). Where a package is missing the fixture fails and says which,
and that ``make services`` installs it.

SLURM: one node ``localhost`` at 127.0.0.1 (CPUs=2, RealMemory below the machine's), run as root,
no cgroups (proctrack/linuxproc, task/none), its own munge daemon and key on a socket of its own,
free ports for slurmctld and slurmd. Accounting has no database: ``AccountingStorageType=
accounting_storage/none`` with ``JobCompType=jobcomp/filetxt``, so jobs are seen through
``squeue`` while they run and through the job completion file once they end
(``SlurmNode.completed()``). Two partitions: ``debug`` (up, the default) and ``down``
(State=DOWN: a job queued there never starts).

SSH: ``sshd`` on a free loopback port with a generated host key, accepting one generated user
key for the current user; ``SSHServer.connect_options`` are what a cluster config's
``connect_options`` key needs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str, package: str) -> str:
    found = shutil.which(name) or next((f"{d}/{name}" for d in SBIN
                                        if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        pytest.fail(f"{name} not found: install Debian's {package} (make services)", pytrace=False)
    return found


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Terminate ``procs`` one at a time, last started first, each waited for before the next
    (kill what does not stop in 15 s). One at a time: `dask worker` processes terminated with
    their scheduler each waited 8 s for the scheduler they could no longer reach (measured by
    hand: 8.2 s against 0.6-1.0 s for a scheduler and two workers). Once the first process (the
    scheduler) is gone, the rest have nothing to wait for and are terminated together."""
    for i in range(len(procs) - 1, -1, -1):
        batch = procs[: i + 1] if procs[0].poll() is not None else [procs[i]]
        for p in batch:
            if p.poll() is None:
                p.terminate()
        for p in batch:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if len(batch) > 1:
            break


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------------- SLURM

SLURM_CONF = """\
ClusterName=vclusttest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
DefMemPerCPU=1000
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=down Nodes=localhost MaxTime=INFINITE State=DOWN
"""


@dataclass
class SlurmNode:
    """A running one-node SLURM: ``env`` (SLURM_CONF and PATH) for sbatch, squeue and vclust."""

    root: Path
    conf: Path
    cpus: int
    memory_mb: int
    env: dict = field(default_factory=dict)
    partition: str = "debug"
    down_partition: str = "down"

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        out = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    def squeue(self) -> list[dict]:
        """Jobs SLURM holds now: id, name, state, reason or node."""
        out = self.run("squeue", "--noheader", "--format=%i|%j|%T|%R|%P")
        keys = ("job_id", "name", "state", "where", "partition")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]

    def completed(self) -> list[dict]:
        """Ended jobs from the job completion file (jobcomp/filetxt): one dict of its
        KEY=VALUE fields per job (JobId, Name, JobState, NodeList, Partition, ...)."""
        path = self.root / "jobcomp.txt"
        if not path.exists():
            return []
        jobs = []
        for line in path.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if fields:
                jobs.append(fields)
        return jobs

    def logs(self) -> str:
        return (f"slurmctld.log:\n{_tail(self.root / 'slurmctld.log')}\n"
                f"slurmd.log:\n{_tail(self.root / 'slurmd.log')}")


def _wait(what: str, check, timeout: float, logs) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:g} s\n{logs()}", pytrace=False)
        time.sleep(0.3)


def _munge(root: Path) -> tuple[list[subprocess.Popen], Path]:
    munged = _which("munged", "munge")
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = root / "munge" / "munge.socket"
    socket_path.parent.mkdir(mode=0o755)
    proc = subprocess.Popen(
        [munged, "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
         f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
         f"--seed-file={root / 'munged.seed'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _wait("munged did not open its socket", lambda: socket_path.exists() or proc.poll() is not None,
          20, lambda: _tail(root / "munged.log"))
    if proc.poll() is not None:
        pytest.fail(f"munged exited {proc.returncode}\n{_tail(root / 'munged.log')}", pytrace=False)
    return [proc], socket_path


def start_slurm(root: Path) -> tuple[SlurmNode, list[subprocess.Popen]]:
    import psutil

    for name, package in (("slurmctld", "slurmctld"), ("slurmd", "slurmd"),
                          ("sinfo", "slurm-client"), ("sbatch", "slurm-client")):
        _which(name, package)
    if os.geteuid() != 0:
        pytest.fail("the one-node SLURM of the suite runs as root (SlurmUser=root), as in CI",
                    pytrace=False)
    procs, munge_socket = _munge(root)
    (root / "state").mkdir()
    (root / "spool").mkdir()
    cpus = 2
    memory_mb = min(8000, int(psutil.virtual_memory().total / 2**20 * 0.5))
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(d=root, ctld_port=_free_port(), slurmd_port=_free_port(),
                                      munge_socket=munge_socket, cpus=cpus, memory_mb=memory_mb))
    env = {**os.environ, "SLURM_CONF": str(conf),
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), *SBIN,
                                    os.environ.get("PATH", "")])}
    node = SlurmNode(root=root, conf=conf, cpus=cpus, memory_mb=memory_mb, env=env)
    try:
        procs.append(subprocess.Popen([_which("slurmctld", "slurmctld"), "-D", "-i", "-f",
                                       str(conf)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([_which("slurmd", "slurmd"), "-D", "-N", "localhost",
                                       "-f", str(conf)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))

        def idle():
            if any(p.poll() is not None for p in procs):
                pytest.fail(f"a SLURM daemon exited\n{node.logs()}", pytrace=False)
            out = subprocess.run(["sinfo", "--noheader", "--partition=debug", "--format=%t"],
                                 env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        _wait("the SLURM node did not become idle", idle, 60, node.logs)
    except BaseException:
        stop_processes(procs)
        raise
    return node, procs


@pytest.fixture(scope="session")
def slurm_node(tmp_path_factory):
    """A running one-node SLURM (``SlurmNode``); stopped, its jobs cancelled, at the end."""
    root = tmp_path_factory.mktemp("slurm")
    node, procs = start_slurm(root)
    try:
        yield node
    finally:
        node.run("scancel", "--full", "--user", str(os.getuid()), check=False)
        time.sleep(1)
        stop_processes(procs)


# ----------------------------------------------------------------------------------- SSH

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
UseDNS no
AllowTcpForwarding yes
PermitUserEnvironment no
LogLevel INFO
"""


@dataclass
class SSHServer:
    """A running sshd on 127.0.0.1: ``connect_options`` for asyncssh (and so for SSHCluster)."""

    root: Path
    port: int
    user: str
    key: Path
    known_hosts: Path

    @property
    def connect_options(self) -> dict:
        return {"port": self.port, "username": self.user, "client_keys": [str(self.key)],
                "known_hosts": str(self.known_hosts)}

    def logs(self) -> str:
        return f"sshd.log:\n{_tail(self.root / 'sshd.log')}"


def start_sshd(root: Path) -> tuple[SSHServer, subprocess.Popen]:
    import getpass

    sshd = _which("sshd", "openssh-server")
    keygen = _which("ssh-keygen", "openssh-client")
    for name in ("host_ed25519", "user_ed25519"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"vclust-test-{name}",
                        "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "user_ed25519.pub").read_text())
    port = _free_port()
    host_pub = (root / "host_ed25519.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (root / "sshd_config").write_text(SSHD_CONFIG.format(d=root, port=port))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([sshd, "-D", "-f", str(root / "sshd_config"), "-E",
                             str(root / "sshd.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = SSHServer(root=root, port=port, user=getpass.getuser(),
                       key=root / "user_ed25519", known_hosts=root / "known_hosts")

    def listening():
        if proc.poll() is not None:
            pytest.fail(f"sshd exited {proc.returncode}\n{server.logs()}", pytrace=False)
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        _wait("sshd did not listen", listening, 20, server.logs)
    except BaseException:
        stop_processes([proc])
        raise
    return server, proc


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    """A running sshd on a loopback port (``SSHServer``); stopped at the end."""
    server, proc = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_processes([proc])


# ------------------------------------------------------------------- the LocalCluster reference

VCLUST = [sys.executable, "-m", "vclust.cli"]
FIT_ARGS = ["--descriptor", "osnet", "--k", "6", "--seed", "0"]
LOCAL_YAML = ("kind: local\nn_workers: 2\nthreads_per_worker: 1\nmemory_limit: 2GB\n"
              "dashboard_address: null\n")


def vclust(*args, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(VCLUST + [str(a) for a in args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def read_labels_frame(labels_dir, batch: str = "b1"):
    """One batch's labels (every model's partition under ``labels_dir`` must be that one), in
    row order, as pandas reads the Parquet parts."""
    import pandas as pd

    parts = sorted(Path(labels_dir).glob(f"model=*/batch={batch}"))
    assert len(parts) == 1, f"{labels_dir}: expected one partition of batch {batch}, got {parts}"
    return pd.read_parquet(parts[0]).sort_values("row").reset_index(drop=True)


@dataclass
class Reference:
    """A small store and what a LocalCluster made of it: the model and batch b1's labels."""

    root: Path
    store: Path
    model: Path
    labels: Path
    batch2: list  # the .npy files and ids CSV of a second batch (not in the store)


@pytest.fixture(scope="session")
def local_reference(tmp_path_factory, worker_id) -> Reference:
    """2,000 synthetic rows (vclust synth's generator, seed 0): rows 0-1499 ingested as batch
    b1 of a store in 250-row chunks, rows 1500-1999 kept aside as batch b2; ``vclust fit`` and
    ``vclust label`` of b1 on a LocalCluster of two workers.

    Made once per run, not once per pytest-xdist worker: the first worker to ask makes it under
    the run's base folder (a file lock), a later one finds it made. The tests only read it
    (fit and label take no store lock; a test that changes the store copies it first).
    It takes 7.8 s alone: the setup saved by whichever of test_slurm and test_ssh comes second."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # the run's, above the workers'
    root = shared / "local-reference"
    with open(shared / "local-reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on an error
        if not (root / "made").exists():
            shutil.rmtree(root, ignore_errors=True)  # a worker's attempt that failed half-way
            root.mkdir()
            _make_reference(root)
            (root / "made").touch()
    b2 = root / "b2"
    return Reference(root=root, store=root / "store", model=root / "model",
                     labels=root / "labels", batch2=[str(b2 / "osnet.npy"), str(b2 / "ids.csv")])


def _make_reference(root: Path) -> None:
    import numpy as np
    import pandas as pd

    from vclust.storage.ingest import ingest
    from vclust.synth import generate_case

    generate_case(root / "case", n_rows=2000, seed=0)
    ids = pd.read_csv(root / "case" / "images_paths.csv").iloc[:, 0].to_numpy()
    osnet = pd.read_pickle(root / "case" / "descriptors" / "osnet.pickle")
    osnet = np.asarray(osnet, dtype=np.float32)
    batches = {}
    for name, rows in (("b1", slice(0, 1500)), ("b2", slice(1500, 2000))):
        (root / name).mkdir()
        np.save(root / name / "osnet.npy", osnet[rows])
        pd.DataFrame({"paths": ids[rows]}).to_csv(root / name / "ids.csv", index=False)
        batches[name] = [str(root / name / "osnet.npy"), str(root / name / "ids.csv")]
    store = root / "store"
    ingest(store, batches["b1"][:1], ids_csv=batches["b1"][1], batch="b1", chunk_rows=250)
    (root / "local.yaml").write_text(LOCAL_YAML)
    fit = vclust("fit", store, *FIT_ARGS, "--model", root / "model", "--cluster",
                 root / "local.yaml")
    assert fit.returncode == 0, fit.stderr
    label = vclust("label", store, "--model", root / "model", "--out", root / "labels",
                   "--batch", "b1", "--cluster", root / "local.yaml")
    assert label.returncode == 0, label.stderr
