"""The outlier score alone, quickly (about 45 s on 2 cores): vclust's score as `vclust fit` +
`vclust label` run it (bench_outlier_matrix.vclust), without the peers of the full matrix.

  synthetic   the three families of outlier_families.py at 30,000 rows, seed 11, each kind at
              0.05%, 0.2% and 1%: ROC-AUC of each kind against the inliers, inliers flagged
  real        the 12 anomaly-dev sets and MVTec ResNet-18 (../shared/data): ROC-AUC against
              exact 10-NN's
  held        real normal rows with the four kinds planted (outlier_families.plant_into): ALOI
              (30,000 of its normal rows) and MVTec ResNet-18 (its normal rows), at 0.2% and 1%;
              inliers no generator of this project made, so a score tuned to the synthetic
              families shows it here

    python benchmarks/bench_outlier_quick.py [synthetic] [real] [held]
"""

import sys
import time

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from bench_outlier_matrix import kind_auc, real_sets, vclust
from outlier_families import KINDS, make_set, plant_into


def synthetic():
    for fam in ("cnn_relu", "l2_aniso", "curved_t"):
        for share in (0.0005, 0.002, 0.01):
            x, kind, k = make_set(fam, 30_000, share, 11)
            s, f, _ = vclust(x, k)
            yield (f"{fam} {share:.2%}", [kind_auc(s, kind, g) for g in KINDS], f[kind == ""].mean())


def real():
    for name, x, y, k, _ in real_sets():
        s, f, _ = vclust(x, k)
        d10 = NearestNeighbors(n_neighbors=11).fit(x).kneighbors(x)[0][:, 1:].mean(axis=1)
        yield name, roc_auc_score(y, s), roc_auc_score(y, d10), f[y == 0].mean()


def held():
    for name, x, y, k, _ in real_sets():
        if len(x) < 3000:  # the ViT and text sets: too few normal rows to plant 0.2% in
            continue
        xin = x[y == 0]
        if len(xin) > 30_000:
            xin = xin[np.random.default_rng(0).choice(len(xin), 30_000, replace=False)]
        for share in (0.002, 0.01):
            rows, kind = plant_into(xin, share, 5)
            s, f, _ = vclust(rows, k)
            yield (f"{name} {share:.2%}", [kind_auc(s, kind, g) for g in KINDS], f[kind == ""].mean())


def main(parts):
    t0 = time.perf_counter()
    print(f"| case | {' | '.join(KINDS)} | inliers flagged |\n|---|---|---|---|---|---|")
    for part in ("synthetic", "held"):
        if part in parts:
            for case, aucs, flagged in (synthetic() if part == "synthetic" else held()):
                print(f"| {part}: {case} | " + " | ".join(f"{a:.3f}" for a in aucs)
                      + f" | {flagged:.2%} |", flush=True)
    if "real" in parts:
        print("\n| set | vclust | exact 10-NN | difference | normal rows flagged |\n|---|---|---|---|---|")
        got = []
        for name, a, b, flagged in real():
            got.append((a, b))
            print(f"| {name} | {a:.3f} | {b:.3f} | {a - b:+.3f} | {flagged:.1%} |", flush=True)
        g = np.array(got)
        print(f"| **mean** | {g[:, 0].mean():.3f} | {g[:, 1].mean():.3f} | worst "
              f"{(g[:, 0] - g[:, 1]).min():+.3f} | |")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:] or ["synthetic", "real", "held"])
