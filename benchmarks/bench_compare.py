"""The analysts' brief as one `vclust compare` run on the 416,314-row synthetic case: the four
descriptor sets and two mixtures x kmeans, gmm, agglomerative x k 6..16 (198 partitions), the
best k of each (spec, algorithm) registered and labelled over every row, agreement tables,
cross-space metrics and the page. Wall time and peak memory of the whole process tree (the CLI,
the LocalCluster and its workers), and how many times each set's rows were read from the store
(the read log: every chunk read is noted by the worker that reads it)."""

import argparse
import json
import shutil
import subprocess
import time

import pandas as pd
from common import (DATA, ROWS, PeakMemory, ensure_case, machine, run_measured, vclust_cmd,
                    write_section)

SPECS = ["efficientnet-b7", "osnet", "vdc_color", "vdc_type", "osnet+vdc_type+vdc_color",
         "vdc_type+vdc_color*2"]
ALGORITHMS = "kmeans,gmm,agglomerative"
K_RANGE = "6:16"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--fit-sample", type=int, default=20_000)
    args = ap.parse_args()
    case = ensure_case(args.rows)
    store = DATA / f"compare-store-{args.rows}"
    if not (store / "zarr.json").exists():
        shutil.rmtree(store, ignore_errors=True)
        wall, peak, _ = run_measured(vclust_cmd() + ["-q", "ingest", str(store), str(case),
                                                     "--batch", "initial"])
        print(f"ingest: {wall:.0f} s, peak {peak / 2**30:.2f} GiB")
    reg, labels, out = (DATA / f"compare-{x}" for x in ("registry", "labels", "out"))
    for d in (reg, labels, out):
        shutil.rmtree(d, ignore_errors=True)
    cmd = vclust_cmd() + ["compare", str(store), "--registry", str(reg), "--labels", str(labels),
                          "--out", str(out), "--descriptor", *SPECS, "--algorithm", ALGORITHMS,
                          "--k-range", K_RANGE, "--fit-sample", str(args.fit_sample)]
    log = DATA / "compare-stderr.txt"  # progress, readable while it runs
    import os

    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        with PeakMemory(proc.pid) as mem:
            stdout, _ = proc.communicate()
    wall, peak = time.perf_counter() - t0, mem.peak
    load.append(os.getloadavg()[0])
    if proc.returncode != 0:
        raise RuntimeError(f"vclust compare failed ({proc.returncode}): see {log}")
    print(stdout)
    summary = json.loads((out / "summary.json").read_text())
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)
    per_alg = runs.groupby("algorithm")["seconds"].sum()
    per_spec = runs.groupby("descriptor")["seconds"].sum()
    labelled = sum(1 for _ in labels.glob("model=*"))
    reads = summary["store_reads"]
    text = [
        "## vclust compare: the analysts' brief in one run (bench_compare.py, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"{machine()}; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end. "
        f"{args.rows:,} rows; specs {', '.join(SPECS)}; algorithms {ALGORITHMS}; k {K_RANGE} "
        f"({len(runs)} partitions fitted and scored over all rows; gmm and agglomerative fitted "
        f"on a seeded sample of {args.fit_sample:,} rows and extended to every row).",
        "",
        "| what | figure |",
        "|---|---|",
        f"| wall time, end to end (`vclust compare`, start-up included) | {wall:.0f} s "
        f"({wall / 60:.1f} min) |",
        f"| peak memory of the process tree | {peak / 2**30:.2f} GiB |",
        f"| models kept, registered (not current) and labelled over all rows | "
        f"{len(summary['kept'])} ({labelled} label folders) |",
        f"| pairs in agreement.csv | {len(pd.read_csv(out / 'agreement.csv'))} |",
        "| reads of each set's rows from the store (read log: passes over its rows) | "
        + ", ".join(f"{k} {v:g}" for k, v in reads.items()) + " |",
        "",
        "Seconds by algorithm (fit + metrics of every k; the kept k also outlier fit and "
        "labelling): " + ", ".join(f"{a} {s:.0f}" for a, s in per_alg.items()) + ".",
        "Seconds by spec: " + ", ".join(f"{a} {s:.0f}" for a, s in per_spec.items()) + ".",
        "",
        "Phases, from the progress log (" + str(log) + "): " + phases(log) + ".",
        "",
        f"Proposed: {summary['proposal'].get('why', '')}",
        "",
        f"Command: `vclust compare STORE --descriptor {' '.join(SPECS)} --algorithm "
        f"{ALGORITHMS} --k-range {K_RANGE} --registry R --labels L --out O`",
    ]
    write_section("compare", "\n".join(text))


def phases(log) -> str:
    """Seconds from the progress log: start-up, reading and reducing the sets, then each spec's
    fits (every k) and kept models, then the tables and the page."""
    import re

    stamps = []
    for line in open(log):
        m = re.match(r"\[\s*([0-9.]+)s\] (.*)", line)
        if m:
            stamps.append((float(m.group(1)), m.group(2)))
    if not stamps:
        return "no progress lines"
    first = lambda pred: next((t for t, msg in stamps if pred(msg)), None)  # noqa: E731
    read = first(lambda m: m.startswith("compare: "))
    reduced = max(t for t, m in stamps if "components keep" in m)
    fitted = max(t for t, m in stamps if ": kept k=" in m)
    end = stamps[-1][0]
    return (f"start-up {read or 0:.0f} s; reading and reducing the four sets "
            f"{reduced - (read or 0):.0f} s; fits, metrics and kept models of every spec "
            f"{fitted - reduced:.0f} s; agreement, cross metrics and the page {end - fitted:.0f} s")


if __name__ == "__main__":
    main()
