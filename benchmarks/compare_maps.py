"""The evidence behind the report map's default method (docs/maps.md).

UMAP (umap-learn, n_neighbors=15), openTSNE (perplexity 30, its default schedule) and PCA, in 2D
and 3D, run through vclust.numerics.maps.embed on every real descriptor set in ../shared/data,
preprocessed as vclust does by default (rows L2-normalised, PCA to 0.95 of the variance), and
on two 50,000-row sets shaped like the report's sample: a synthetic 50,000 x 40 Gaussian mixture
and the osnet descriptors of a 50,000-row synthetic vehicle case (vclust.synth.generate_case).

Per set, method and dimension: wall time; trustworthiness (sklearn, 10 neighbours, on a seeded
sample of at most 5,000 rows); kNN preservation (the share of each row's 10 exact nearest
neighbours in the input that are among its 10 nearest on the map, over all rows). Also: UMAP's
first call in a fresh process with a cold and with a warm numba cache, against its second call;
embed_2d_3d (one kNN graph / one affinity matrix for both maps) against two embed calls.

    python benchmarks/compare_maps.py [--groups small,stacked,aloi,synth,vehicle,firstcall]
                                      [--json /tmp/compare_maps.json]

Prints markdown tables; --json keeps every measurement (written after each one).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness
from sklearn.neighbors import NearestNeighbors

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
sys.path.insert(0, str(ROOT))

from vclust.numerics import maps

K = 10
TRUST_ROWS = 5000
METHODS = ("umap", "tsne", "pca")
GROUPS = ("firstcall", "small", "stacked", "aloi", "synth", "vehicle")
BIG = ("aloi", "synth", "vehicle")


# --------------------------------------------------------------------------- data


def preprocess(X):
    """vclust's default: rows L2-normalised, then PCA to 0.95 of the variance."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return PCA(n_components=0.95, svd_solver="full").fit_transform(X / norms).astype(np.float32)


def _npz(path):
    return np.load(path)["X"]


def small_sets():
    """(name, family, X): each real file of a few hundred rows on its own."""
    for f in sorted(glob.glob(str(DATA / "real-descriptors" / "*.npz"))):
        yield Path(f).stem.replace("mvtec_resnet18_", "resnet18 "), "resnet18", _npz(f)
    for f in sorted(glob.glob(str(DATA / "anomaly-dev" / "vit_mvtec_*.npz"))):
        yield Path(f).stem.replace("vit_mvtec_", "vit "), "vit", _npz(f)
    for stem in ("bert_20news_3", "roberta_20news_3"):
        yield stem, "20news", _npz(DATA / "anomaly-dev" / f"{stem}.npz")


def stacked():
    files = sorted(glob.glob(str(DATA / "real-descriptors" / "*.npz")))
    if len(files) != 15:
        raise SystemExit(f"expected 15 MVTec files in {DATA / 'real-descriptors'}; "
                         f"found {len(files)}")
    return np.concatenate([_npz(f) for f in files])


def synth_blobs(n=50_000, d=40, k=20, seed=0):
    """A 50,000 x 40 stand-in for a reduced sample: 20 Gaussian clusters of imbalanced sizes
    (unit spread, centres ~N(0, 3^2)), plus 3% of rows scattered uniformly over the box."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    p = rng.dirichlet(np.full(k, 2.0))
    n_out = int(0.03 * n)
    lab = rng.choice(k, n - n_out, p=p)
    X = centres[lab] + rng.normal(0, 1, (n - n_out, d))
    lo, hi = X.min(0), X.max(0)
    X = np.concatenate([X, rng.uniform(lo, hi, (n_out, d))])
    return X[rng.permutation(n)].astype(np.float32)


def vehicle(n=50_000, seed=0):
    """The osnet descriptors of a synthetic vehicle case of n rows (written to a temp dir)."""
    import pickle

    from vclust.synth import generate_case

    with tempfile.TemporaryDirectory(prefix="vclust-maps-") as tmp:
        t = time.perf_counter()
        generate_case(tmp, n_rows=n, seed=seed)
        print(f"  (vehicle case of {n:,} rows generated in {time.perf_counter() - t:.0f} s)",
              flush=True)
        with open(Path(tmp) / "descriptors" / "osnet.pickle", "rb") as fh:
            return pickle.load(fh)


# --------------------------------------------------------------------------- measures


def input_knn(X):
    """Each row's K exact nearest neighbours (itself excluded)."""
    return NearestNeighbors(n_neighbors=K).fit(X).kneighbors(return_distance=False)


def knn_preservation(idx_in, Y):
    idx_out = input_knn(Y)
    hits = 0
    for s in range(0, len(Y), 10_000):  # n x K x K booleans, by slices
        a, b = idx_in[s:s + 10_000], idx_out[s:s + 10_000]
        hits += int((a[:, :, None] == b[:, None, :]).any(axis=2).sum())
    return hits / (len(Y) * K)


def trust_rows(n, seed=0):
    if n <= TRUST_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, TRUST_ROWS, replace=False))


def measure(name, family, X, methods=METHODS, dims=(2, 3), out=None, tsne_3d_max_rows=None):
    """Time and score every method x dimension on one (preprocessed) set."""
    idx_in = input_knn(X)
    rows = trust_rows(len(X))
    recs = []
    for method in methods:
        for k in dims:
            if method == "tsne" and k == 3 and tsne_3d_max_rows and len(X) > tsne_3d_max_rows:
                print(f"  {name:24s} tsne 3D skipped (--tsne-3d-max-rows)", flush=True)
                continue
            load = os.getloadavg()[0]
            t = time.perf_counter()
            Y = maps.embed(X, k, method, random_state=0)
            sec = time.perf_counter() - t
            rec = {"set": name, "family": family, "n": len(X), "d": X.shape[1], "method": method, "dims": k,
                       "seconds": round(sec, 3), "load": round(load, 1),
                       "trust": round(float(trustworthiness(X[rows], Y[rows], n_neighbors=K)), 4),
                       "knn": round(knn_preservation(idx_in, Y), 4)}
            print(f"  {name:24s} {method:4s} {k}D {sec:8.2f} s  trust {rec['trust']:.3f}  "
                  f"knn {rec['knn']:.3f}  (load average {load:.1f} before)", flush=True)
            recs.append(rec)
            if out is not None:
                out(rec)
    return recs


def shared_vs_separate(name, X, methods=("umap",), out=None):
    """embed_2d_3d against two embed calls (their times come from `measure`)."""
    for method in methods:
        t = time.perf_counter()
        xy, xyz = maps.embed_2d_3d(X, method, random_state=0)
        sec = time.perf_counter() - t
        rec = {"set": name, "n": len(X), "method": method, "kind": "embed_2d_3d", "seconds": round(sec, 3),
                   "knn2": round(knn_preservation(input_knn(X), xy), 4),
                   "knn3": round(knn_preservation(input_knn(X), xyz), 4)}
        print(f"  {name:24s} {method:4s} embed_2d_3d {sec:8.2f} s  knn 2D {rec['knn2']:.3f} "
              f"3D {rec['knn3']:.3f}", flush=True)
        if out is not None:
            out(rec)


def tsne_affinity_seconds(name, X, out=None):
    """What embed_2d_3d saves for t-SNE: one build of openTSNE's affinities."""
    from openTSNE.affinity import MultiscaleMixture

    t = time.perf_counter()
    MultiscaleMixture(X, maps._tsne_perplexity(len(X)), method="auto", metric="euclidean",
                      n_jobs=1, random_state=0)
    sec = time.perf_counter() - t
    print(f"  {name:24s} tsne affinities alone {sec:8.2f} s", flush=True)
    if out is not None:
        out({"set": name, "n": len(X), "method": "tsne", "kind": "affinities", "seconds": round(sec, 3)})


def umap_knn_seconds(name, X, out=None):
    """What embed_2d_3d saves for UMAP: one pynndescent graph."""
    from sklearn.utils import check_random_state
    from umap.umap_ import nearest_neighbors

    t = time.perf_counter()
    nearest_neighbors(X, maps.UMAP_NEIGHBORS, "euclidean", {}, False, check_random_state(0),
                      low_memory=True, use_pynndescent=True, n_jobs=1)
    sec = time.perf_counter() - t
    print(f"  {name:24s} umap kNN graph alone {sec:8.2f} s", flush=True)
    if out is not None:
        out({"set": name, "n": len(X), "method": "umap", "kind": "knn", "seconds": round(sec, 3)})


_FIRST_CALL = r"""
import json, sys, time
import numpy as np
t = time.perf_counter()
import umap  # noqa: F401
imp = time.perf_counter() - t
sys.path.insert(0, sys.argv[2])
from vclust.numerics import maps
X = np.load(sys.argv[1])
times = []
for _ in range(2):
    t = time.perf_counter()
    maps.embed(X, 2, "umap", random_state=0)
    times.append(time.perf_counter() - t)
print(json.dumps(dict(import_s=imp, first_s=times[0], second_s=times[1])))
"""


def first_call(X, out=None):
    """UMAP in a fresh process: import, first and second embed, with numba's on-disk cache cold
    (an empty NUMBA_CACHE_DIR: what the first run after an install pays) and warm."""
    with tempfile.TemporaryDirectory(prefix="vclust-maps-") as tmp:
        np.save(Path(tmp) / "x.npy", X)
        cache = Path(tmp) / "numba-cache"
        cache.mkdir()
        for label, env in (("cold numba cache", {"NUMBA_CACHE_DIR": str(cache)}),
                           ("warm numba cache", {"NUMBA_CACHE_DIR": str(cache)})):
            r = subprocess.run([sys.executable, "-c", _FIRST_CALL, str(Path(tmp) / "x.npy"),
                                str(ROOT)], capture_output=True, text=True,
                               env={**os.environ, **env}, check=True)
            rec = dict(kind="firstcall", label=label, n=len(X),
                       **json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"  UMAP {label}: import {rec['import_s']:.1f} s, first embed "
                  f"{rec['first_s']:.1f} s, second {rec['second_s']:.1f} s", flush=True)
            if out is not None:
                out(rec)


# --------------------------------------------------------------------------- tables


def tables(recs):
    """Markdown: per-set rows for the big sets, per-family summaries for the small ones."""
    lines = []
    runs = [r for r in recs if "trust" in r]
    lines.append("| set | rows x cols | method | dims | seconds | trustworthiness | kNN kept |")
    lines.append("|---|---|---|---|---|---|---|")
    seen = []
    for r in runs:
        if r["family"] in ("resnet18", "vit"):
            continue
        seen.append(r)
        lines.append(f"| {r['set']} | {r['n']:,} x {r['d']} | {r['method']} | {r['dims']}D | "
                     f"{r['seconds']:.1f} | {r['trust']:.3f} | {r['knn']:.3f} |")
    lines.append("")
    fams = sorted({r["family"] for r in runs if r["family"] in ("resnet18", "vit")})
    if fams:
        lines.append("| files | method | dims | seconds (sum) | trust mean | trust min | "
                     "kNN kept mean | kNN kept min |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for fam in fams:
            sets = sorted({r["set"] for r in runs if r["family"] == fam})
            for m in METHODS:
                for k in (2, 3):
                    rs = [r for r in runs if r["family"] == fam and r["method"] == m
                          and r["dims"] == k]
                    if not rs:
                        continue
                    tr = [r["trust"] for r in rs]
                    kn = [r["knn"] for r in rs]
                    lines.append(f"| {fam} ({len(sets)} files) | {m} | {k}D | "
                                 f"{sum(r['seconds'] for r in rs):.1f} | {np.mean(tr):.3f} | "
                                 f"{min(tr):.3f} | {np.mean(kn):.3f} | {min(kn):.3f} |")
        lines.append("")
    # wins: per set and dimension, which method has the best score
    lines.append("| measure | dims | umap wins | tsne wins | pca wins | sets |")
    lines.append("|---|---|---|---|---|---|")
    for measure in ("trust", "knn"):
        for k in (2, 3):
            wins = dict.fromkeys(METHODS, 0)
            n = 0
            for s in sorted({r["set"] for r in runs}):
                rs = [r for r in runs if r["set"] == s and r["dims"] == k]
                if len(rs) < len(METHODS):
                    continue
                n += 1
                wins[max(rs, key=lambda r: r[measure])["method"]] += 1
            lines.append(f"| {measure} | {k}D | {wins['umap']} | {wins['tsne']} | "
                         f"{wins['pca']} | {n} |")
    lines.append("")
    extra = [r for r in recs if r.get("kind") in ("embed_2d_3d", "affinities", "knn")]
    if extra:
        lines.append("| set | method | what | seconds |")
        lines.append("|---|---|---|---|")
        for r in extra:
            what = {"embed_2d_3d": "embed_2d_3d (both maps)", "affinities": "affinities alone",
                    "knn": "kNN graph alone"}[r["kind"]]
            sep = [x["seconds"] for x in runs if x["set"] == r["set"]
                   and x["method"] == r["method"]]
            tail = f" (two embed calls: {sum(sep):.1f})" if r["kind"] == "embed_2d_3d" else ""
            lines.append(f"| {r['set']} | {r['method']} | {what} | {r['seconds']:.1f}{tail} |")
        lines.append("")
    fc = [r for r in recs if r.get("kind") == "firstcall"]
    if fc:
        lines.append("| UMAP in a fresh process | rows | import umap | first embed | "
                     "second embed |")
        lines.append("|---|---|---|---|---|")
        for r in fc:
            lines.append(f"| {r['label']} | {r['n']:,} | {r['import_s']:.1f} | "
                         f"{r['first_s']:.1f} | {r['second_s']:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", default=",".join(GROUPS),
                    help=f"comma-separated subset of {','.join(GROUPS)}")
    ap.add_argument("--json", default="/tmp/compare_maps.json",
                    help="every measurement, rewritten after each one")
    ap.add_argument("--tsne-3d-max-rows", type=int, default=None,
                    help="skip 3D t-SNE (Barnes-Hut, the slowest run) on sets above this size")
    args = ap.parse_args()
    groups = [g for g in args.groups.split(",") if g]
    bad = set(groups) - set(GROUPS)
    if bad:
        raise SystemExit(f"unknown group(s) {sorted(bad)}; choose from {GROUPS}")
    recs: list[dict] = []

    def out(rec):
        recs.append(rec)
        Path(args.json).write_text(json.dumps(recs, indent=1))

    t0 = time.perf_counter()
    X_stacked = preprocess(stacked())
    print(f"{os.cpu_count()} cores; K={K}; trustworthiness on <= {TRUST_ROWS} rows; "
          f"load average {os.getloadavg()[0]:.1f} (other processes slow every timing)", flush=True)
    if "firstcall" in groups:
        print("UMAP first call, in fresh processes, on the stacked MVTec set:", flush=True)
        first_call(X_stacked, out)
    # pay numba's compilation here, so that no timed UMAP call below includes it
    maps.embed(X_stacked[:500], 2, "umap")
    maps.embed(X_stacked, 2, "umap")
    if "small" in groups:
        print("small real sets (each file on its own):", flush=True)
        for name, family, X in small_sets():
            measure(name, family, preprocess(X), out=out)
    if "stacked" in groups:
        print("MVTec ResNet-18, 15 categories stacked:", flush=True)
        name = "resnet18 stacked"
        measure(name, "stacked", X_stacked, out=out)
        shared_vs_separate(name, X_stacked, ("umap", "tsne"), out=out)
    for g in BIG:
        if g not in groups:
            continue
        if g == "aloi":
            name, X = "aloi", preprocess(_npz(DATA / "anomaly-dev" / "aloi.npz"))
        elif g == "synth":
            name, X = "synthetic blobs", synth_blobs()  # already a reduced-like sample
        else:
            name, X = "vehicle osnet (synth)", preprocess(vehicle())
        print(f"{name} ({len(X):,} x {X.shape[1]}):", flush=True)
        measure(name, g, X, out=out, tsne_3d_max_rows=args.tsne_3d_max_rows)
        shared_vs_separate(name, X, ("umap",), out=out)
        umap_knn_seconds(name, X, out=out)
        tsne_affinity_seconds(name, X, out=out)
    print()
    print(tables(recs))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; peak RSS of this process {peak:.0f} MB")


if __name__ == "__main__":
    main()
