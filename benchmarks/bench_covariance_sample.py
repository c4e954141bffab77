"""The PCA's covariance measured on a seeded sample of rows, judged against every row.

Since 2026-12-05 a set's covariance is measured on about max(COVARIANCE_MIN_ROWS,
COVARIANCE_ROWS_PER_DIM x columns) of its rows (``Preprocessor(covariance_rows="auto")``);
the projection is still applied to every row. This script fits every case twice, once with the
covariance of every row and once from a sample, and reports what the sample changes:

  captured    the variance of every row kept by the sample's components, over that kept by the
              components of every row's covariance (1 = as good)
  columns     the components kept (PCA 0.95, at most 256), every row / sample
  ARI         k-means (vclust's, same seed) on the two reductions: the two partitions against
              each other (in brackets, k-means' own drift: the partitions of two k-means seeds
              on every row's reduction) and, where a truth exists (the MVTec categories), each
              against it
  outliers    ROC-AUC of the labelled anomalies (the scorer on the fit's clusters, as
              bench_reference_answers.py) and the inliers flagged, every row / sample

Real sets are too small for the rule to sample them (under 50,000 rows), so they are given
samples of a few rows per column, well under the rule's 40: the stacked MVTec ResNet-18 set
(5,354 x 512) at 2 and 5 rows a column, ALOI (49,534 x 27) at 10, 40 and 200. The three
synthetic families (outlier_families.py, 200,000 rows, seed 13) take the rule as it is; so does
the bench case's efficientnet-b7 set (416,314 x 2,560) with --case.

    python benchmarks/bench_covariance_sample.py [--case]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_outlier_matrix import SHARED, kind_auc, real_sets  # noqa: E402
from bench_reference_size import cases  # noqa: E402


def captured(x, pre, ref):
    """Variance of every row kept by ``pre``'s components over that kept by ``ref``'s."""
    def kept(p):
        z = p.transform(x).astype(np.float64)
        return float(((z - z.mean(axis=0)) ** 2).sum())
    return kept(pre) / kept(ref)


def side(x, rows, k, kind, seed, km_seed=0):
    from vclust.numerics.kmeans import KMeans
    from vclust.numerics.outliers import OutlierScorer
    from vclust.numerics.preprocess import Preprocessor

    t0 = time.perf_counter()
    pre = Preprocessor(covariance_rows=rows, random_state=seed).fit(x)
    t1 = time.perf_counter()
    z = pre.transform(x)
    km = KMeans(k, random_state=km_seed).fit(z)
    labels, dist = km.predict_block(z)
    out = {"pre": pre, "labels": labels, "columns": pre.n_components_, "pca_s": t1 - t0}
    if kind is not None:
        sc = OutlierScorer(random_state=0, threshold_rows="reference").fit(
            z, labels, dist, km.cluster_centers_, raw=x)
        s, f = sc.score(z, labels, dist, raw=x)
        out["auc"] = {g: kind_auc(s, kind, g) for g in np.unique(kind) if g}
        out["flagged"] = float(f[kind == ""].mean())
    return out


def compare(name, x, k, rows_list, kind=None, truth=None, seeds=(0,)):
    full = side(x, None, k, kind, 0)
    # k-means' own drift: every row's covariance, the k-means seeded 1 instead of 0
    drift = adjusted_rand_score(full["labels"], side(x, None, k, None, 0, km_seed=1)["labels"])
    for rows in rows_list:
        for seed in seeds:
            s = side(x, rows, k, kind, seed)
            asked = f"{s['pre'].covariance_rows_:,} (the rule)" if rows == "auto" else f"{rows:,}"
            cells = [name, asked, str(seed),
                     f"{captured(x, s['pre'], full['pre']):.5f}",
                     f"{full['columns']} / {s['columns']}",
                     f"{adjusted_rand_score(full['labels'], s['labels']):.3f} ({drift:.3f})"]
            if truth is not None:
                cells.append(f"{adjusted_rand_score(truth, full['labels']):.3f} / "
                             f"{adjusted_rand_score(truth, s['labels']):.3f}")
            else:
                cells.append("-")
            if kind is not None:
                cells.append("; ".join(f"{g} {full['auc'][g]:.4f} / {s['auc'][g]:.4f}"
                                       for g in full["auc"]))
                cells.append(f"{full['flagged']:.3%} / {s['flagged']:.3%}")
            else:
                cells += ["-", "-"]
            cells.append(f"{full['pca_s']:.2f} / {s['pca_s']:.2f}")
            print("| " + " | ".join(cells) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="store_true", help="also the bench case's efficientnet-b7")
    args = ap.parse_args()
    print("| case | covariance rows | sample seed | captured | columns all / sample | ARI all vs "
          "sample (k-means seed 0 vs 1) | ARI vs truth all / sample | ROC-AUC all / sample | inliers flagged all / "
          "sample | PCA fit s all / sample |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, x, y, k, _ in real_sets():
        kind = np.where(y == 1, "anomaly", "")
        if name.startswith("mvtec"):
            per = np.concatenate([np.full(len(np.load(f)["y"]), i) for i, f in enumerate(
                sorted((SHARED / "real-descriptors").glob("*.npz")))])  # as real_sets stacks
            compare(name, x, 15, [2 * x.shape[1], 5 * x.shape[1]], kind, per, seeds=(0, 1, 2))
        elif name == "aloi":
            compare(name, x, k, [10 * x.shape[1], 40 * x.shape[1], 200 * x.shape[1]], kind,
                    seeds=(0, 1, 2))
    for name, x, kind, k in cases(200_000):
        if not name.startswith(("real", "held")):
            compare(name, x, k, ["auto"], kind)
    if args.case:
        from common import DATA, ROWS
        from vclust.storage.store import Store

        store = Store.open(DATA / f"case-run-{ROWS}" / "store")
        x = np.asarray(store.array("efficientnet-b7")[:], dtype=np.float32)
        for k in (7, 12):
            compare(f"bench case efficientnet-b7 k={k}", x, k, ["auto"])


if __name__ == "__main__":
    main()
