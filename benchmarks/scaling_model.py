"""The cost model of docs/scaling.md, from the records of benchmarks/bench_scaling.py.

Each stage's work (CPU seconds of the command and every process it waited for) is modelled as

    cpu(N) = a + b * N + c * min(N, R)

a: start-up (imports, cluster start, the model's files); b: per row (read, preprocess, cluster,
score, write); c: per reference row, R = 50,067 (the outlier scorer's reference sample: every row
up to 50,000, then a seeded sample; its index is built in the client by the fit and loaded by
every labelling worker). Ingest has no reference term (c = 0).

The check: a, b, c through the three smaller sizes, the largest predicted and compared with its
measurement. The extrapolation: a, b, c through all sizes (least squares), then on W workers, one
core each,

    wall(N, W) = a + c * min(N, R) + b * N * (s + (1 - s) * 2 / W)

with b measured on this machine's 2 workers and s the share of the per-row work that runs in
the client process (``SERIAL``: docs/scaling.md says where each comes from).

    .venv/bin/python benchmarks/scaling_model.py RECORDS.json [MORE.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

BRIEF = 416_314
R = 50_067
WORKERS_HERE = 2
SERIAL = {"ingest": 0.0, "fit": 0.3, "label": 0.0, "compare": 0.3}
STAGES = ("ingest", "fit", "label", "compare")


def design(n, stage):
    n = np.asarray(n, dtype=float)
    cols = [np.ones_like(n), n] + ([] if stage == "ingest" else [np.minimum(n, R)])
    return np.stack(cols, axis=1)


def solve(ns, ys, stage):
    coef, *_ = np.linalg.lstsq(design(ns, stage), np.asarray(ys, float), rcond=None)
    return np.append(coef, 0.0) if stage == "ingest" else coef


def load(paths):
    recs = {}
    for p in paths:
        for r in json.loads(Path(p).read_text())["records"]:
            recs[r["rows"], r["stage"]] = r
    return recs


def main(paths):
    recs = load(paths)
    print("| stage | rows measured | a (s) | b (s per 1M rows) | c (s per 1k ref. rows) | "
          "predicted at the largest | measured | error |")
    print("|---|---|---|---|---|---|---|---|")
    fitted = {}
    for s in STAGES:
        ns = sorted(n for n, st in recs if st == s)
        if len(ns) < 3:
            continue
        ys = [recs[n, s]["cpu_s"] for n in ns]
        fitted[s] = solve(ns, ys, s)
        if len(ns) - 1 < (2 if s == "ingest" else 3):  # as many sizes as terms: no check
            print(f"| {s} | {', '.join(f'{n:,}' for n in ns)} | - | - | - | too few sizes | "
                  f"{ys[-1]:.1f} s | - |")
            continue
        a, b, c = solve(ns[:-1], ys[:-1], s)  # least squares through the smaller sizes
        pred = a + b * ns[-1] + c * min(ns[-1], R)
        print(f"| {s} | {', '.join(f'{n:,}' for n in ns)} | {a:.1f} | {b * 1e6:.1f} | "
              f"{c * 1e3:.2f} | {pred:.1f} s | {ys[-1]:.1f} s | "
              f"{100 * (pred - ys[-1]) / ys[-1]:+.0f}% |")
    print("\nExtrapolated wall time on W workers of one core each (s), all sizes fitted:\n")
    print("| stage | rows | a | b | c | 16 workers | 64 workers | 256 workers |")
    print("|---|---|---|---|---|---|---|---|")
    for s, (a, b, c) in fitted.items():
        for mult in (10, 100, 1000):
            n = BRIEF * mult
            work = b * n * WORKERS_HERE  # worker-seconds of the per-row part on one core each
            cells = [a + c * min(n, R) + work * (SERIAL[s] / WORKERS_HERE
                                                 + (1 - SERIAL[s]) / w) for w in (16, 64, 256)]
            print(f"| {s} | {n:,} | {a:.1f} | {b * 1e6:.1f} | {c * 1e3:.2f} | "
                  + " | ".join(f"{t:,.0f}" for t in cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
