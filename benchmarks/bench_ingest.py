"""Ingest a 416,314-row synthetic case (all four sets) with `vclust ingest`: wall time and peak
memory of the whole process tree (the CLI and its LocalCluster workers)."""

import argparse
import shutil
import time

from common import (
    DATA,
    ROWS,
    ensure_case,
    machine,
    run_measured,
    vclust_cmd,
    write_section,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=ROWS)
    args = ap.parse_args()
    t0 = time.perf_counter()
    case = ensure_case(args.rows)
    synth_s = time.perf_counter() - t0
    store = DATA / f"store-{args.rows}"
    shutil.rmtree(store, ignore_errors=True)
    wall, peak, res = run_measured(vclust_cmd() + ["ingest", str(store), str(case), "--batch", "initial"])
    size = sum(p.stat().st_size for p in (case / "descriptors").iterdir())
    text = f"""## Ingest ({args.rows:,} rows, four descriptor sets)

`vclust ingest STORE CASE_DIR` on a synthetic case of {size / 1e9:.2f} GB of pickles
(efficientnet-b7 2560 + osnet 512 + vdc_color 128 + vdc_type 512 dims, float32), LocalCluster
sized to the machine ({machine()}). Peak memory is the summed RSS of the CLI process and its
workers, polled every 0.1 s.

| step | wall time | peak memory (process tree) |
|---|---|---|
| vclust ingest (validate + write, incl. cluster start) | {wall:.1f} s | {peak / 2**30:.2f} GiB |

Target: peak under 1.5 GB. (Generating the case took {synth_s:.0f} s; 0 s means it was reused.)
"""
    write_section("ingest", text)


if __name__ == "__main__":
    main()
