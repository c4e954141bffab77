"""The evidence behind the default preprocessing and init (docs/preprocessing.md).

The 15 MVTec-AD categories of ../shared/data/real-descriptors stacked (5,354 x 512 ImageNet
ResNet-18 features of real photographs), the category as the true cluster, k = 15. For each
preprocessing option and init, vclust's own Preprocessor + KMeans over ``--seeds`` seeds; prints
the markdown table of ARI against the category (mean, min) and the inertia reached.

    python benchmarks/compare_preprocessing.py [--seeds 10]
"""

import argparse
import glob
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from vclust.numerics.kmeans import KMeans
from vclust.numerics.preprocess import Preprocessor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-descriptors"
OPTIONS = [  # label, Preprocessor kwargs
    ("l2, PCA 0.95", dict(l2=True, standardize=False, pca_variance=0.95)),
    ("l2, PCA 0.90", dict(l2=True, standardize=False, pca_variance=0.90)),
    ("l2, no PCA", dict(l2=True, standardize=False, pca_variance=None)),
    ("none, no PCA", dict(l2=False, standardize=False, pca_variance=None)),
    ("standardise, PCA 0.90", dict(l2=False, standardize=True, pca_variance=0.90)),
    ("l2 + standardise, PCA 0.90", dict(l2=True, standardize=True, pca_variance=0.90)),
]
INITS = [("k-means||", 1), ("k-means||", 3), ("k-means++", 1), ("k-means++", 3)]


def load():
    files = sorted(glob.glob(str(DATA / "*.npz")))
    if len(files) != 15:
        raise SystemExit(f"expected 15 MVTec files in {DATA}; found {len(files)}")
    xs = [np.load(f)["X"] for f in files]
    y = np.concatenate([np.full(len(x), i) for i, x in enumerate(xs)])
    return np.concatenate(xs).astype(np.float32), y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    x, y = load()
    print(f"{len(x):,} rows x {x.shape[1]}, 15 categories, KMeans(15), seeds 0..{args.seeds - 1}\n")
    print("| preprocessing | columns | init | n_init | ARI mean | ARI min |")
    print("|---|---|---|---|---|---|")
    for label, kw in OPTIONS:
        z = Preprocessor(**kw).fit(x).transform(x)
        for init, n_init in INITS:
            aris = [adjusted_rand_score(y, KMeans(15, init=init, n_init=n_init, random_state=s)
                                        .fit(z).labels_) for s in range(args.seeds)]
            print(f"| {label} | {z.shape[1]} | {init} | {n_init} | {np.mean(aris):.3f} | "
                  f"{np.min(aris):.3f} |", flush=True)


if __name__ == "__main__":
    main()
