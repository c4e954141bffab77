"""The pixel reasons on real photographs degraded in graded steps (tests/pixel_cases.py): per
degradation and strength, the reasons the crops get and how many got the one required of them
(tests/pixel_cases.required states the strengths); how many intact crops get any reason; on the
tuning half of the photographs, on the checking half, and on the two micrographs, apart.

Every picture is read as `vclust pixels` reads it (vclust.jobs.pixels.row_stats: Pillow's
decode, the statistics of vclust.numerics.pixels), and the bounds are fitted over all of a set's
readable pictures together (vclust.numerics.pixels.fit_thresholds), as `vclust label` fits them
over a store.

Usage: python benchmarks/bench_pixel_reasons.py [N_INTACT N_DEGRADED]   (default 30 12: crops
per photograph, and how many of them are degraded)
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests import pixel_cases as C  # noqa: E402
from vclust.numerics.pixels import PIXEL_REASONS  # noqa: E402


def main(n_intact: int = 30, n_degraded: int = 12) -> None:
    for label, names in (("tune", C.TUNE), ("check", C.CHECK), ("micrographs", C.MICROGRAPHS)):
        cases = C.photo_cases(names, n_intact, n_degraded) + C.flat_frames(seed=len(label))
        reasons, bounds, stats = C.measure(cases)
        print(f"== {label}: {', '.join(names)}")
        print("bounds:", {k: round(bounds[k], 4) for k in PIXEL_REASONS[1:]},
              "moved by the guard:", bounds["guarded"] or "none")
        result = C.evaluate(cases, reasons, stats)
        for line in C.table(result):
            print("  " + line)
        flagged = collections.Counter((c[0], c[2], r) for c, r in zip(cases, reasons)
                                      if c[0] in ("intact", "smooth") and r)
        print("  intact crops and smoothest windows with a reason:", dict(flagged) or "none")
        failed = {k: v["failed"] for k, v in result.items() if v["failed"]}
        print("  required and not found:", failed or "none")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
