"""The outlier reference's size, judged on cases larger than it (issue 31 item 1).

A fit indexes a seeded sample of ``reference_size`` rows (50,000 until 2026-12-04) and scores
every row against it; the index build and its queries are what a fit of new rows pays beyond
the clustering. A smaller reference is cheaper and changes every score, so it is judged here on
cases with more rows than either size, where the sizes differ:

  synthetic   the three families of outlier_families.py at --n rows (default 200,000), seed 13
              (a seed no parameter was chosen on), each kind at 0.05% and 1%
  held        ALOI's normal rows (all of them) with the four kinds planted at 0.2% and 1%
              (outlier_families.plant_into): inliers no generator of this project made
  real        ALOI (49,534 rows, 3% labelled anomalies): the one real set larger than a
              smaller reference; ROC-AUC against the labels

Each case is preprocessed and clustered once (as `vclust fit` does: L2 + PCA 0.95, k-means at
the true k); only the scorer differs between sizes. The rule, fixed before the run: a size is
taken if on every case and kind its ROC-AUC is at least the 50,000-row figure - 0.005 and it
flags at most 0.25 points more of the inliers (normal rows); the smallest such size wins.

    python benchmarks/bench_reference_size.py [--n 200000] [--sizes 50000 30000 20000]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_outlier_matrix import kind_auc, real_sets  # noqa: E402
from outlier_families import KINDS, make_set, plant_into  # noqa: E402

from vclust.numerics import refindex  # noqa: E402
from vclust.numerics.kmeans import KMeans  # noqa: E402
from vclust.numerics.outliers import OutlierScorer  # noqa: E402
from vclust.numerics.preprocess import Preprocessor  # noqa: E402

TOLERANCE_AUC = 0.005
TOLERANCE_FLAGGED = 0.0025


def cases(n):
    for fam in ("cnn_relu", "l2_aniso", "curved_t"):
        for share in (0.0005, 0.01):
            x, kind, k = make_set(fam, n, share, 13)
            yield f"{fam} {share:.2%} ({n:,} rows)", x, kind, k
    for name, x, y, k, _ in real_sets():
        if name != "aloi":
            continue
        xin = x[y == 0]
        for share in (0.002, 0.01):
            rows, kind = plant_into(xin, share, 5)
            yield f"held: aloi {share:.2%} ({len(rows):,} rows)", rows, kind, k
        yield f"real: aloi ({len(x):,} rows)", x, np.where(y == 1, "anomaly", ""), k


def run(x, kind, k, sizes, option="reference_size"):
    """Every case clustered once, scored with each value of the scorer's ``option`` (the
    reference size here; bench_scorer_options.py passes others)."""
    z = Preprocessor().fit(x).transform(x)
    km = KMeans(k, random_state=0).fit(z)
    labels, dist = km.predict_block(z)
    kinds = [g for g in np.unique(kind) if g]
    out = {}
    for size in sizes:
        options = {option: size}
        if option == "query_epsilon":  # a module constant of the index, not a scorer option
            refindex.QUERY_EPSILON = options.pop(option)
        t0 = time.perf_counter()
        sc = OutlierScorer(random_state=0, threshold_rows="reference", **options).fit(
            z, labels, dist, km.cluster_centers_, raw=x)
        t1 = time.perf_counter()
        s, f = sc.score(z, labels, dist, raw=x)
        t2 = time.perf_counter()
        out[size] = {"auc": {g: kind_auc(s, kind, g) for g in kinds},
                     "flagged": float(f[kind == ""].mean()),
                     "kind_flagged": {g: float(f[kind == g].mean()) for g in kinds},
                     "fit_s": t1 - t0, "score_s": t2 - t1, "ref": len(sc.ref_rows_),
                     "columns": _columns(sc.projection_)}
    return out


def _columns(projection):
    """Columns of the scorer's own rows: one set's, or a mixture's sets' together."""
    if hasattr(projection, "n_components_"):
        return int(projection.n_components_)
    return int(sum(p.n_components_ for p in projection.preprocessors.values()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--sizes", nargs="*", type=int, default=[50_000, 30_000, 20_000])
    args = ap.parse_args()
    base = args.sizes[0]
    worst = {s: (np.inf, -np.inf) for s in args.sizes[1:]}
    print("| case | reference | " + " | ".join(KINDS) + " | anomaly | inliers flagged | "
          "fit / score s |\n|" + "---|" * (len(KINDS) + 5))
    t_all = time.perf_counter()
    for name, x, kind, k in cases(args.n):
        res = run(x, kind, k, args.sizes)
        for size in args.sizes:
            r = res[size]
            cells = [f"{r['auc'][g]:.3f}" if g in r["auc"] else "" for g in KINDS + ("anomaly",)]
            print(f"| {name} | {r['ref']:,} | " + " | ".join(cells)
                  + f" | {r['flagged']:.2%} | {r['fit_s']:.1f} / {r['score_s']:.1f} |", flush=True)
            if size != base:
                d_auc = min(r["auc"][g] - res[base]["auc"][g] for g in r["auc"])
                d_flag = r["flagged"] - res[base]["flagged"]
                worst[size] = (min(worst[size][0], d_auc), max(worst[size][1], d_flag))
    print()
    for size, (d_auc, d_flag) in worst.items():
        ok = d_auc >= -TOLERANCE_AUC and d_flag <= TOLERANCE_FLAGGED
        print(f"reference {size:,} against {base:,}: worst ROC-AUC change {d_auc:+.4f}, "
              f"inliers flagged at most {d_flag * 100:+.2f} points: "
              + ("within the rule" if ok else "outside the rule"))
    print(f"\n{time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
