"""Per-stage costs at three sizes, for docs/scaling.md: ingest, fit, label and compare of one
512-dim descriptor set (synthetic osnet-like rows: a 12-centre Gaussian mixture, seed 0) at
4,163, 41,631 and 416,314 rows (0.01x, 0.1x and 1x the brief's 416,314), each command whole on
a LocalCluster of 2 single-threaded workers (``--cluster``): wall time, CPU time (user + system
of every process of the command's tree, polled: ``common.PeakMemory.cpu``, which counts the
work whatever else shares the cores; the workers are forked from a forkserver nobody waits
for, so getrusage of the children, used until 2026-12-06, missed them), peak RSS of the process
tree, and the CLI's phase lines.

    .venv/bin/python benchmarks/bench_scaling.py [--sizes 4163,41631,416314] [--out FILE]
        [--stages ingest,fit,label]

Writes benchmarks/results/scaling.json (one record per size and stage) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, run_measured, vclust_cmd  # noqa: E402

DIMS = 512
LOCAL = ("kind: local\nn_workers: 2\nthreads_per_worker: 1\nmemory_limit: 8GB\n"
         "dashboard_address: null\n")


def rows_file(path: Path, n: int, seed: int = 0) -> Path:
    """n rows of a 12-centre mixture in 512 dims (float32), written in 50k-row pieces."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, DIMS)).astype(np.float32) * 3
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIMS))
    for a in range(0, n, 50_000):
        b = min(n, a + 50_000)
        which = rng.integers(0, 12, size=b - a)
        out[a:b] = centres[which] + rng.normal(size=(b - a, DIMS)).astype(np.float32)
    out.flush()
    return path


def phases(stderr: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"\[\s*[\d.]+s\] [^\n]{0,90}", stderr)]


def measure(size: int, root: Path, only=None, keep=lambda done: None) -> list[dict]:
    """Each stage's record; ``keep(records so far)`` after each (the file is written as it goes)."""
    cfg = root / "local.yaml"
    cfg.write_text(LOCAL)
    src = rows_file(root / "osnet.npy", size)
    store, reg, labels = root / "store", root / "registry", root / "labels"
    v = vclust_cmd()
    stages = {
        "ingest": v + ["ingest", str(store), str(src), "--name", "osnet", "--batch", "b1",
                       "--cluster", str(cfg)],
        "fit": v + ["fit", str(store), "--descriptor", "osnet", "--k", "12", "--registry",
                    str(reg), "--cluster", str(cfg)],
        "label": v + ["label", str(store), "--registry", str(reg), "--out", str(labels),
                      "--batch", "b1", "--cluster", str(cfg)],
        "compare": v + ["compare", str(store), "--registry", str(reg), "--labels",
                        str(root / "labels-compare"), "--descriptor", "osnet", "--k-range",
                        "10:14", "--map-method", "pca", "--out", str(root / "compare"),
                        "--cluster", str(cfg)],
    }
    records = []
    for stage, cmd in stages.items():
        if only and stage not in only:
            continue
        load = os.getloadavg()[0]
        stats = {}
        wall, peak, out = run_measured(cmd, stats=stats)
        cpu = stats["cpu"]
        records.append({"rows": size, "stage": stage, "wall_s": round(wall, 2),
                        "cpu_s": round(cpu, 2), "peak_rss_gib": round(peak / 2**30, 3),
                        "load_before": round(load, 1), "phases": phases(out.stderr)})
        print(f"{size:>9,} {stage:<8} {wall:7.1f} s wall {cpu:7.1f} s cpu "
              f"{peak / 2**30:6.2f} GiB (load {load:.1f})", flush=True)
        keep(records)
    return records


def save(path, records):
    Path(path).parent.mkdir(exist_ok=True)
    Path(path).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                                      "records": records}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4163,41631,416314")
    ap.add_argument("--out", default=str(RESULTS / "scaling.json"))
    ap.add_argument("--stages", default=None, help="comma-separated subset, e.g. ingest,fit,label")
    args = ap.parse_args()
    records = []
    for size in (int(s) for s in args.sizes.split(",")):
        root = Path(tempfile.mkdtemp(prefix=f"vclust-scaling-{size}-"))
        try:
            records += measure(size, root, args.stages and args.stages.split(","),
                               lambda done: save(args.out, records + done))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    save(args.out, records)


if __name__ == "__main__":
    main()
