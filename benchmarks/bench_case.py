"""The analysts' whole case at full size, end to end, each step a fresh `vclust` process as the
analysts would run it (no cluster named: each command picks its own, as on a laptop):

  ingest     the case folder (four pickles, 416,314 rows, 6.2 GB; images_paths.csv) into a new store
  fit x 4    each descriptor set with --k-range 6:16, registered (the last one, vdc_type, current)
  label x 4  every row with each set's model
  export     the current model's labels as one CSV
  report     the current model's report, with the case's images read from veriwild.zip

Wall time and peak memory (the whole process tree) of each step; each command's own phase lines
for the fits. The synthetic case comes from benchmarks/common.ensure_case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time

from common import DATA, ROWS, ensure_case, machine, run_measured, vclust_cmd, write_section

SETS = ["efficientnet-b7", "osnet", "vdc_color", "vdc_type"]


def phases(stderr: str, skip=("k=", "dask:")) -> str:
    out = []
    for line in stderr.splitlines():
        m = re.match(r"\[\s*([\d.]+)s\] (.*)", line)
        if m and not m.group(2).startswith(skip):
            out.append(f"{float(m.group(1)):.0f} s {m.group(2)[:60]}")
    return "; ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=ROWS)
    args = ap.parse_args()
    case = ensure_case(args.rows)
    root = DATA / f"case-run-{args.rows}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    store, reg, labels = root / "store", root / "registry", root / "labels"
    steps = [("ingest", ["ingest", str(store), str(case), "--batch", "initial"])]
    steps += [(f"fit {s}", ["fit", str(store), "--descriptor", s, "--k-range", "6:16",
                            "--registry", str(reg)]) for s in SETS]
    rows, total, t_all = [], 0.0, time.perf_counter()
    models = {}
    # a first run of the case: no outlier index cached from an earlier run of it
    env = dict(os.environ, VCLUST_CACHE_DIR=str(root / "index-cache"))
    for name, argv in steps:
        wall, peak, res = run_measured(vclust_cmd() + argv, env=env)
        total += wall
        if name.startswith("fit"):
            models[name[4:]] = re.search(r"model (\S+) saved to", res.stderr).group(1)
        rows.append((name, wall, peak, phases(res.stderr) if name.startswith("fit") else ""))
        print(f"{name}: {wall:.1f} s, peak {peak / 2**30:.2f} GiB", flush=True)
    for s in SETS:
        argv = ["label", str(store), "--registry", str(reg), "--model", models[s], "--all",
                "--out", str(labels)]
        wall, peak, res = run_measured(vclust_cmd() + argv, env=env)
        total += wall
        rows.append((f"label {s}", wall, peak, ""))
        print(f"label {s}: {wall:.1f} s, peak {peak / 2**30:.2f} GiB", flush=True)
    for name, argv in (("export", ["export", str(labels), "--registry", str(reg), "--csv",
                                   str(root / "labels.csv")]),
                       ("report", ["report", str(store), "--registry", str(reg), "--labels",
                                   str(labels), "--out", str(root / "report"), "--images",
                                   str(case / "veriwild.zip"), "--truth",
                                   str(case / "truth.csv")])):
        wall, peak, res = run_measured(vclust_cmd() + argv, env=env)
        total += wall
        rows.append((name, wall, peak, phases(res.stderr) if name == "report" else ""))
        print(f"{name}: {wall:.1f} s, peak {peak / 2**30:.2f} GiB", flush=True)
    elapsed = time.perf_counter() - t_all
    info = json.loads(run_measured(vclust_cmd() + ["info", str(store), "--json"])[2].stdout)
    lines = [f"## The analysts' whole case, end to end (bench_case.py, {time.strftime('%Y-%m-%d')})",
             "",
             f"{info['rows']:,} rows, four descriptor sets "
             f"({', '.join(f'{k} {v}' for k, v in info['descriptors'].items())} dims), "
             f"{info['bytes_on_disk'] / 1e9:.1f} GB in the store; each step a fresh `vclust` "
             f"process on {machine()}, no cluster named (each command chooses: a LocalCluster, "
             "or its own process for a fit of at most a quarter of the free memory and a label "
             "of at most 8 GiB of rows, so every fit and label here). Fits: `--k-range 6:16`, defaults otherwise; labels: every row with each "
             "set's model; export and report: the current model (vdc_type).",
             "",
             f"**Total: {total:.0f} s ({total / 60:.1f} min)** of commands "
             f"({elapsed:.0f} s wall with this script's own work).",
             "",
             "| step | wall | peak memory | phases (seconds since the command started) |",
             "|---|---|---|---|"]
    for name, wall, peak, ph in rows:
        lines.append(f"| {name} | {wall:.1f} s | {peak / 2**30:.2f} GiB | {ph} |")
    write_section("case", "\n".join(lines))


if __name__ == "__main__":
    main()
