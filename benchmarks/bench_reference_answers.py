"""How a sampled outlier reference's own neighbours are found, judged on every real set.

The reference rows' own nearest reference rows set each outlier term's median and MAD. Until
2026-12-05 the fit asked the index for them (a query of every reference row: about 1.2 CPU-s of
a 416k fit of new rows); since then a sampled reference takes them from the index's build graph
(``ReferenceIndex.reference_answers``). This script scores every case with the code it is
run on and writes the ROC-AUCs and inlier flag rates as JSON, so two checkouts can be compared
(the graph is only used where the reference is a sample, so every real set is given a
reference of half its rows):

  real        the 12 anomaly-dev sets and the 15 stacked MVTec ResNet-18 categories
              (../shared/data), reference = half the rows
  synthetic   the three families of outlier_families.py at 200,000 rows, seed 13, reference
              50,000 (as bench_reference_size.py)
  held        ALOI's normal rows with the four kinds planted at 0.2% and 1%, reference = half

    PYTHONPATH=<checkout A> python benchmarks/bench_reference_answers.py a.json
    PYTHONPATH=<checkout B> python benchmarks/bench_reference_answers.py b.json
    python benchmarks/bench_reference_answers.py --compare a.json b.json
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_outlier_matrix import kind_auc, real_sets  # noqa: E402
from bench_reference_size import cases  # noqa: E402


def one(x, kind, k, size):
    from vclust.numerics.kmeans import KMeans
    from vclust.numerics.outliers import OutlierScorer
    from vclust.numerics.preprocess import Preprocessor

    z = Preprocessor().fit(x).transform(x)
    km = KMeans(k, random_state=0).fit(z)
    labels, dist = km.predict_block(z)
    sc = OutlierScorer(random_state=0, threshold_rows="reference", reference_size=size).fit(
        z, labels, dist, km.cluster_centers_, raw=x)
    s, f = sc.score(z, labels, dist, raw=x)
    kinds = [str(g) for g in np.unique(kind) if g]
    return {"auc": {g: kind_auc(s, kind, g) for g in kinds},
            "flagged": float(f[kind == ""].mean()), "ref": len(sc.ref_rows_)}


def run(out_path):
    out = {}
    for name, x, y, k, _ in real_sets():
        out[f"real {name}"] = one(x, np.where(y == 1, "anomaly", ""), k, len(x) // 2)
        print(name, out[f"real {name}"], flush=True)
    for name, x, kind, k in cases(200_000):
        if not name.startswith("real"):
            out[name] = one(x, kind, k, 50_000 if len(x) > 60_000 else len(x) // 2)
            print(name, out[name], flush=True)
    Path(out_path).write_text(json.dumps(out, indent=1))


def compare(a_path, b_path):
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    print("| case | reference | ROC-AUC A / B | inliers flagged A / B |\n|---|---|---|---|")
    worst_auc, worst_flag = 0.0, 0.0
    for name in a:
        cells = "; ".join(f"{g} {a[name]['auc'][g]:.4f} / {b[name]['auc'][g]:.4f}"
                          for g in a[name]["auc"])
        print(f"| {name} | {a[name]['ref']:,} | {cells} | {a[name]['flagged']:.3%} / "
              f"{b[name]['flagged']:.3%} |")
        worst_auc = min([worst_auc] + [b[name]["auc"][g] - a[name]["auc"][g] for g in a[name]["auc"]])
        worst_flag = max(worst_flag, b[name]["flagged"] - a[name]["flagged"])
    print(f"\nworst ROC-AUC change {worst_auc:+.5f}, inliers flagged at most "
          f"{worst_flag * 100:+.3f} points")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2], sys.argv[3])
    else:
        run(sys.argv[1])
