"""The drift report of a labelled batch (vclust.numerics.drift.drift_report) as files:
drift.json for programs and drift.txt, the verdict first, then a table."""

from __future__ import annotations

import json

from ..storage import fs as F
from ..storage.atomic import write_text


def write_report(report: dict, out_dir) -> tuple:
    """drift.json and drift.txt in ``out_dir`` (a path or an s3:// URL), each replaced whole."""
    out = F.as_path(str(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    verdict = ("DRIFT: " + ", ".join(f"{a} {report[a]:.3f} > {report['thresholds'][a]}"
                                     for a in report["alerts"])) if report["alerts"] else "no drift"
    lines = [verdict, "",
             f"rows {report['rows']}   psi {report['psi']:.4f}   outlier rate "
             f"{report['outlier_rate']:.2%} (fit {report['reference_outlier_rate']:.2%})   "
             f"mean distance {report['mean_distance']:.4g} (fit {report['reference_mean_distance']:.4g})",
             "", "cluster  fit share  batch share"]
    lines += [f"{c['cluster']:7d}  {c['reference_share']:9.3f}  {c['batch_share']:11.3f}"
              for c in report["clusters"]]
    paths = out / "drift.json", out / "drift.txt"
    for path, text in zip(paths, (json.dumps(report, indent=2), "\n".join(lines) + "\n")):
        write_text(path, text)
    return paths
