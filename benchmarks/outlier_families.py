"""Synthetic families and planted groups for the outlier benchmark matrix (bench_outlier_matrix.py).

Three families, written apart from each other and from vclust.synth (which the tests use), so
that a score tuned to one generator shows it on the others:

  cnn_relu    latent mixture of 12 clusters in 24 dims, sizes imbalanced (share of cluster i
              proportional to 0.75**i), projected up to 512 dims by a random matrix, a bias, a
              little per-dimension noise, then ReLU (as CNN pooling features are)
  l2_aniso    20 clusters in 128 dims, mildly imbalanced (share ~ 1/sqrt(i+1)), each with its
              own low-rank anisotropic covariance (8 directions, scales 3 .. 0.3, plus 0.2
              isotropic), then every row L2-normalised (as re-ID / face embeddings are)
  curved_t    6 clusters in 64 dims, balanced, each a curved 2-d sheet (an arc of a circle times
              a segment) embedded by a random rotation, Student-t (3 d.o.f.) noise, all rows
              offset from the origin; no ReLU, no L2

Planted kinds (each ``share`` of the rows, all four in one set; R is the median inlier norm):

  near_zero   a random inlier row times U(0.01, 0.05): a frame with little in it for the
              network to respond to (in l2_aniso they are planted after the L2, as an
              extractor's normalisation with an epsilon floor leaves them)
  shared_dir  a(i) * R * v + 0.05 * (a random inlier row), v one unit direction (non-negative in
              cnn_relu), a ~ U(1.5, 3): glare along one bright direction (L2'd in l2_aniso)
  duplicated  one inlier row copied, each copy jittered by 1e-3 * R / sqrt(d) per dimension:
              a stuck camera's near-identical frames
  isolated    a random inlier row plus Gaussian noise of norm about R (the family's ReLU or L2
              after it): heavy-noise rows, each on its own
"""

from __future__ import annotations

import numpy as np

KINDS = ("near_zero", "shared_dir", "duplicated", "isolated")


def _cnn_relu(n, rng):
    k, lat, d = 12, 24, 512
    share = 0.75 ** np.arange(k)
    share /= share.sum()
    lab = rng.choice(k, n, p=share)
    centres = rng.normal(0, 2.0, (k, lat))
    h = centres[lab] + rng.normal(0, 1.0, (n, lat))
    W = rng.normal(0, 1 / np.sqrt(lat), (lat, d))
    b = rng.normal(0, 0.5, d)
    x = h @ W + b + rng.normal(0, 0.3, (n, d))
    post = (lambda a: np.maximum(a, 0.0))
    return post(x), lab, k, post, True


def _l2_aniso(n, rng):
    k, d, r = 20, 128, 8
    share = 1 / np.sqrt(np.arange(k) + 1)
    share /= share.sum()
    lab = rng.choice(k, n, p=share)
    centres = rng.normal(0, 1.0, (k, d))
    x = np.empty((n, d))
    scales = np.geomspace(3, 0.3, r) * 0.25
    for c in range(k):
        m = lab == c
        basis = np.linalg.qr(rng.normal(size=(d, r)))[0].T  # (r, d)
        x[m] = (centres[c] + (rng.normal(size=(m.sum(), r)) * scales) @ basis
                + rng.normal(0, 0.2 * 0.25, (m.sum(), d)))

    def post(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    return post(x), lab, k, post, False


def _curved_t(n, rng):
    k, d = 6, 64
    lab = rng.integers(0, k, n)
    x = np.empty((n, d))
    for c in range(k):
        m = int((lab == c).sum())
        rot = np.linalg.qr(rng.normal(size=(d, 3)))[0].T  # (3, d)
        theta = rng.uniform(0, 1.5 * np.pi, m)
        t = rng.uniform(-1, 1, m)
        sheet = np.stack([3 * np.cos(theta), 3 * np.sin(theta), 1.5 * t], axis=1)
        offset = rng.normal(0, 4.0, d)
        x[lab == c] = sheet @ rot + offset + 0.15 * rng.standard_t(3, size=(m, d))
    x += 5.0
    return x, lab, k, (lambda a: a), False


FAMILIES = {"cnn_relu": _cnn_relu, "l2_aniso": _l2_aniso, "curved_t": _curved_t}


def make_set(family: str, n: int, share: float, seed: int):
    """(x float32 (n, d), kind (n,) object: "" for inliers or a KINDS name, k true clusters)."""
    rng = np.random.default_rng(seed)
    m = max(1, int(round(share * n)))
    n_in = n - m * len(KINDS)
    x, _, k, post, nonneg = FAMILIES[family](n_in, rng)
    d = x.shape[1]
    R = float(np.median(np.linalg.norm(x, axis=1)))
    pick = (lambda c: x[rng.integers(0, n_in, c)])
    groups = {}
    groups["near_zero"] = pick(m) * rng.uniform(0.01, 0.05, (m, 1))
    v = rng.normal(size=d)
    v = np.abs(v) if nonneg else v
    v /= np.linalg.norm(v)
    a = rng.uniform(1.5, 3.0, (m, 1))
    groups["shared_dir"] = post(a * R * v + 0.05 * pick(m))
    one = pick(1)
    groups["duplicated"] = one + rng.normal(0, 1e-3 * R / np.sqrt(d), (m, d))
    noise = rng.normal(0, R / np.sqrt(d), (m, d))
    groups["isolated"] = post(pick(m) + noise)
    parts = [x] + [groups[g] for g in KINDS]
    kind = np.array([""] * n_in + [g for g in KINDS for _ in range(m)], dtype=object)
    order = rng.permutation(n)
    return np.concatenate(parts).astype(np.float32)[order], kind[order], k


def plant_into(x, share: float, seed: int):
    """The four kinds planted into real descriptor rows ``x`` (the normal rows of a labelled set),
    as ``make_set`` plants them, without a family's ReLU or L2 (non-negative kinds where ``x`` is
    non-negative): the held-out family of bench_outlier_quick.py, whose inliers no generator of
    this project made. Returns (rows float32, kind)."""
    rng = np.random.default_rng(seed)
    n_in, d = x.shape
    m = max(1, int(round(share * n_in)))
    nonneg = bool((x >= 0).all())
    R = float(np.median(np.linalg.norm(x, axis=1)))
    pick = (lambda c: x[rng.integers(0, n_in, c)])
    v = rng.normal(size=d)
    v = np.abs(v) if nonneg else v
    v /= np.linalg.norm(v)
    iso = pick(m) + rng.normal(0, R / np.sqrt(d), (m, d))
    groups = {"near_zero": pick(m) * rng.uniform(0.01, 0.05, (m, 1)),
              "shared_dir": rng.uniform(1.5, 3.0, (m, 1)) * R * v + 0.05 * pick(m),
              "duplicated": pick(1) + rng.normal(0, 1e-3 * R / np.sqrt(d), (m, d)),
              "isolated": np.maximum(iso, 0) if nonneg else iso}
    kind = np.array([""] * n_in + [g for g in KINDS for _ in range(m)], dtype=object)
    rows = np.concatenate([x] + [groups[g] for g in KINDS]).astype(np.float32)
    order = rng.permutation(len(rows))
    return rows[order], kind[order]
