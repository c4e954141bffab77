"""Nightly labelling cost: batches of 10,000, 20,000 and 40,000 rows appended to the
416,314-row store and labelled with the current model (`vclust label`, wall time including
start-up: Python, the LocalCluster, loading the model, restoring the outlier index)."""

import argparse
import re
import shutil

import numpy as np
import pandas as pd
from common import DATA, ROWS, machine, run_measured, vclust_cmd, write_section

SETS = ("efficientnet-b7", "osnet", "vdc_color", "vdc_type")


def _step_seconds(stderr: str, first: str, last: str) -> float:
    """Seconds between the CLI's progress lines starting with ``first`` and ``last``."""
    stamps = {}
    for line in stderr.splitlines():
        m = re.match(r"\[\s*([\d.]+)s\] (.*)", line)
        if m:
            for key in (first, last):
                if m.group(2).startswith(key):
                    stamps.setdefault(key, float(m.group(1)))
    return stamps[last] - stamps[first]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=ROWS)
    args = ap.parse_args()
    from vclust.storage.store import Store
    from vclust.synth import generate_case

    store = DATA / f"store-{args.rows}"
    reg, labels = DATA / "label-registry", DATA / "label-out"
    shutil.rmtree(reg, ignore_errors=True)
    shutil.rmtree(labels, ignore_errors=True)
    sizes = (10_000, 20_000, 40_000)
    new = DATA / "new-batches"
    if not (new / "truth.csv").exists():
        generate_case(new, n_rows=sum(sizes), seed=1)
    arrays = {s: np.load(new / "descriptors" / f"{s}.pickle", allow_pickle=True) for s in SETS}
    have = set(Store.open(store).batch_ids())
    start = 0
    batches = []
    for n in sizes:
        bid = f"night-{n}"
        if bid not in have:
            d = DATA / bid
            d.mkdir(exist_ok=True)
            for s in SETS:
                np.save(d / f"{s}.npy", arrays[s][start:start + n])
            pd.DataFrame({"paths": [f"night/{bid}/{i:06d}.jpg" for i in range(n)]}).to_csv(d / "ids.csv", index=False)
            run_measured(vclust_cmd() + ["ingest", str(store)] + [str(d / f"{s}.npy") for s in SETS]
                         + ["--ids", str(d / "ids.csv"), "--batch", bid])
        batches.append((bid, n))
        start += n
    fit_wall, fit_peak, _ = run_measured(vclust_cmd() + ["fit", str(store), "--descriptor", "osnet",
                                                         "--k", "10", "--sample", "50000",
                                                         "--registry", str(reg)])
    lines = [f"## Labelling new batches ({args.rows:,}-row store + nightly batches)", "",
             f"On {machine()}. The model: `vclust fit STORE --descriptor osnet --k 10 --sample 50000` "
             f"(fitted on a seeded sample, as on a laptop; labelling cost does not depend on it) ({fit_wall:.0f} s, peak {fit_peak / 2**30:.2f} GiB). Each batch is appended with "
             "`vclust ingest` and labelled with `vclust label STORE --registry R --out L --batch ID`; "
             "wall time of the whole command, start-up included.", "",
             "| batch rows | vclust label wall time | of which start-up | labelling | peak memory (process tree) | rows/s labelling |",
             "|---|---|---|---|---|---|"]
    for bid, n in batches + [("initial", args.rows)]:
        wall, peak, res = run_measured(vclust_cmd() + ["label", str(store), "--registry", str(reg),
                                                       "--out", str(labels), "--batch", bid])
        work = _step_seconds(res.stderr, "labelling batch", "labelled batch")
        lines.append(f"| {n:,}{' (the whole initial batch)' if bid == 'initial' else ''} | "
                     f"{wall:.1f} s | {wall - work:.1f} s | {work:.1f} s | {peak / 2**30:.2f} GiB | "
                     f"{n / work:,.0f} |")
    lines += ["", "Start-up is everything before the labelling starts (Python and library imports, "
              "the LocalCluster, loading the model); labelling includes each worker restoring the "
              "outlier index once. Only the batch's rows are read (the store is sliced by the "
              "batch's ledger row range), so the labelling time follows the batch size, not the "
              "store's: the last row labels the store's whole first batch for comparison."]
    write_section("label", "\n".join(lines))


if __name__ == "__main__":
    main()
