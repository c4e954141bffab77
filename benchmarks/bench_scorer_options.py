"""One option of the outlier scorer against its default, judged on every case (issue 31 item 1).

The scorer's index costs the fit of new rows most of what it pays beyond the clustering. Two
options set that cost, and each changes every score, so a candidate value is judged here
against the first value given, with the rule of bench_reference_size.py, fixed before the run:
on every case and kind its ROC-AUC is at least the first value's - 0.005 and it flags at most
0.25 points more of the inliers; and no real set falls below the exact 10-NN peer's ROC-AUC
(anomaly-dev/README.md's bar) that the first value kept above it.

  pca_variance     the rows as given are projected to the components holding this share of
                   their variance (at most 256) and indexed there; the build and every query
                   cost about in proportion to those columns (osnet: 119 at 0.99)
  index_neighbors  neighbours a row keeps in the NN-descent graph (30): the build's cost, and
                   the graph the queries walk and the reference's own answers are read from.
                   It also sets the group term's reach (groups of up to index_neighbors - 1
                   reference rows), which no case here plants: 20 passed this rule and lost
                   a far group of 22 rows (tests/test_outliers.py); judge that too
  query_epsilon    how far past its best candidate a query walks the graph
                   (``refindex.QUERY_EPSILON``, pynndescent's 0.1): every query's cost
                   (the fit's threshold sample, each label's every row)

Cases:
  real        the 12 anomaly-dev sets and the 15 stacked MVTec ResNet-18 categories
  synthetic   the three families of outlier_families.py at 200,000 rows, seed 13
  held        ALOI's normal rows with the four kinds planted at 0.2% and 1%

Each case is preprocessed and clustered once (as `vclust fit` does); only the scorer differs.

    python benchmarks/bench_scorer_options.py --option pca_variance --values 0.99 0.97 0.95
    python benchmarks/bench_scorer_options.py --option index_neighbors --values 30 20
    python benchmarks/bench_scorer_options.py --option query_epsilon --values 0.1 0.05
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_outlier_matrix import real_sets  # noqa: E402
from bench_reference_size import TOLERANCE_AUC, TOLERANCE_FLAGGED, cases, run  # noqa: E402


def knn_auc(x, y):
    nn = NearestNeighbors(n_neighbors=11).fit(x)
    d, _ = nn.kneighbors(x)
    return roc_auc_score(y, d[:, 1:].mean(axis=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--option", choices=["pca_variance", "index_neighbors", "query_epsilon"],
                    default="pca_variance")
    ap.add_argument("--values", nargs="+", default=["0.99", "0.97", "0.95"],
                    help="the first is the one the others are judged against")
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    kind_of = int if args.option == "index_neighbors" else float
    values = [kind_of(v) for v in args.values]
    base = values[0]
    print("| case | kind | " + " | ".join(f"ROC-AUC {v}" for v in values)
          + " | " + " | ".join(f"flagged {v}" for v in values)
          + " | columns | scorer fit + score s |")
    print("|---" * (4 + 2 * len(values)) + "|")
    worst = {v: (0.0, 0.0, "") for v in values[1:]}
    below_peer = {v: [] for v in values}
    todo = [(f"real {name}", x, np.where(y == 1, "anomaly", ""), k, y)
            for name, x, y, k, _ in real_sets()]
    todo += [(name, x, kind, k, None) for name, x, kind, k in cases(args.n)
             if not name.startswith("real")]
    for name, x, kind, k, y in todo:
        out = run(x, kind, k, values, option=args.option)
        peer = knn_auc(x, y) if y is not None else None
        for g in out[base]["auc"]:
            print(f"| {name} | {g}" + (f" (10-NN {peer:.4f})" if peer is not None else "") + " | "
                  + " | ".join(f"{out[v]['auc'][g]:.4f}" for v in values) + " | "
                  + " | ".join(f"{out[v]['flagged']:.3%}" for v in values) + " | "
                  + " / ".join(str(out[v]["columns"]) for v in values) + " | "
                  + " / ".join(f"{out[v]['fit_s'] + out[v]['score_s']:.1f}" for v in values)
                  + " |", flush=True)
            for v in values[1:]:
                d_auc = out[v]["auc"][g] - out[base]["auc"][g]
                d_flag = out[v]["flagged"] - out[base]["flagged"]
                w = worst[v]
                worst[v] = (min(w[0], d_auc), max(w[1], d_flag),
                            w[2] if d_auc >= w[0] else f"{name} {g}")
            if peer is not None:
                below_peer.update({v: below_peer[v] + [name] for v in values
                                   if out[v]["auc"][g] < peer})
    for v in values[1:]:
        newly_below = [n for n in below_peer[v] if n not in below_peer[base]]
        ok = worst[v][0] >= -TOLERANCE_AUC and worst[v][1] <= TOLERANCE_FLAGGED and not newly_below
        print(f"\n{v}: worst ROC-AUC change {worst[v][0]:+.4f} ({worst[v][2]}), inliers flagged "
              f"at most {worst[v][1] * 100:+.3f} points; below the 10-NN peer on "
              f"{below_peer[v] or 'no real set'} (against {below_peer[base] or 'none'} at "
              f"{base}): {'passes' if ok else 'fails'} the rule")


if __name__ == "__main__":
    main()
