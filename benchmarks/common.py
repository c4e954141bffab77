"""Shared benchmark helpers: data locations, wall time and peak memory of a process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

DATA = Path(os.environ.get("VCLUST_BENCH_DATA", "/tmp/vclust-bench"))
RESULTS = Path(__file__).resolve().parent / "results"
ROWS = 416_314


class PeakMemory:
    """Polls the summed RSS of a process and all its descendants every 0.1 s; keeps the max.
    ``cpu``: the CPU seconds (user + system) of every process of the tree seen, as last seen:
    a LocalCluster's workers are forked from a forkserver that no one waits for, so the
    ``RUSAGE_CHILDREN`` of the command's parent misses them (up to 0.1 s of each process's last
    moments is missed here instead)."""

    def __init__(self, pid: int | None = None):
        self.pid = pid or os.getpid()
        self.peak = 0
        self._cpu = {}  # (pid, create time) -> CPU seconds when last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root] + root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                        t = p.cpu_times()
                        self._cpu[(p.pid, p.create_time())] = t.user + t.system
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.1)

    @property
    def cpu(self) -> float:
        return float(sum(self._cpu.values()))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@contextmanager
def timed(results: dict, key: str):
    t0 = time.perf_counter()
    yield
    results[key] = time.perf_counter() - t0


def run_measured(cmd: list[str], stats: dict | None = None,
                 **kw) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run a command; return (wall seconds, peak RSS of its process tree in bytes, result).
    ``stats``, if given, receives ``cpu``: the CPU seconds of its process tree
    (``PeakMemory.cpu``)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    with PeakMemory(proc.pid) as mem:
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if stats is not None:
        stats["cpu"] = mem.cpu
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, mem.peak, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def vclust_cmd() -> list[str]:
    return [sys.executable, "-m", "vclust.cli"]


def ensure_case(rows: int = ROWS, seed: int = 0) -> Path:
    """The synthetic case (all four descriptor sets), generated once."""
    case = DATA / f"case-{rows}"
    if not (case / "truth.csv").exists():
        from vclust.synth import generate_case

        generate_case(case, n_rows=rows, seed=seed)
    return case


def machine() -> str:
    return (f"{os.cpu_count()} cores ({cpu()}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {sys.version.split()[0]}")


def cpu() -> str:
    """The processor's model name and its widest vector unit: the machines these benchmarks
    ran on changed between sessions (a Xeon until 2026-12-04's eleventh session, float32 syrk at
    305 GFLOP/s on two threads; then an AMD EPYC with AVX2, float64 GEMM at 80 GFLOP/s, every
    command about twice as long), and a figure means little without it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "processor unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "processor unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    return f"{name}, {'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'}"


def write_section(name: str, text: str):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text.rstrip() + "\n")
    print(text)
