"""Drift of a labelled batch against the fit data: cluster shares, outlier rate, distances."""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLDS = {"psi": 0.2, "outlier_rate_ratio": 2.0, "mean_distance_ratio": 1.5}


def reference_profile(labels, center_dist, is_outlier, n_clusters) -> dict:
    """What the nightly job compares batches with; stored in the model manifest. ``is_outlier``
    is of every row, or of a sample of them (then the outlier rate is the sample's)."""
    labels = np.asarray(labels)
    dist = np.asarray(center_dist, dtype=np.float64)
    counts = np.bincount(labels, minlength=n_clusters)
    return {
        "rows": int(len(labels)),
        "cluster_shares": (counts / max(1, len(labels))).tolist(),
        "outlier_rate": float(np.mean(is_outlier)),
        "mean_distance": float(dist.mean()),
        "cluster_mean_distance": [float(dist[labels == c].mean()) if counts[c] else None
                                  for c in range(n_clusters)],
    }


def population_stability_index(expected, actual, eps: float = 1e-4) -> float:
    """PSI = sum_i (a_i - e_i) ln(a_i / e_i), shares floored at ``eps`` (so an empty cluster on
    one side does not make it infinite). Under 0.1 little change, 0.1-0.2 some, above 0.2 a shift."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_report(profile: dict, batch, thresholds: dict | None = None) -> dict:
    """Compare a batch's labels (DataFrame with cluster, distance, is_outlier) with the profile."""
    unknown = set(thresholds or {}) - set(DEFAULT_THRESHOLDS)
    if unknown:
        raise ValueError(f"unknown drift threshold(s) {sorted(unknown)}; known: {sorted(DEFAULT_THRESHOLDS)}")
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    k = len(profile["cluster_shares"])
    counts = np.bincount(np.asarray(batch["cluster"]), minlength=k)[:k]
    shares = counts / max(1, counts.sum())
    psi = population_stability_index(profile["cluster_shares"], shares)
    rate = float(np.mean(batch["is_outlier"]))
    rate_ratio = rate / max(profile["outlier_rate"], 1e-6)
    dist = float(np.mean(batch["distance"]))
    dist_ratio = dist / max(profile["mean_distance"], 1e-12)
    alerts = []
    if psi > th["psi"]:
        alerts.append("psi")
    if rate_ratio > th["outlier_rate_ratio"]:
        alerts.append("outlier_rate_ratio")
    if dist_ratio > th["mean_distance_ratio"]:
        alerts.append("mean_distance_ratio")
    return {
        "rows": int(len(batch)), "psi": psi, "outlier_rate": rate,
        "reference_outlier_rate": profile["outlier_rate"], "outlier_rate_ratio": rate_ratio,
        "mean_distance": dist, "reference_mean_distance": profile["mean_distance"],
        "mean_distance_ratio": dist_ratio, "thresholds": th, "alerts": alerts,
        "clusters": [{"cluster": c, "reference_share": profile["cluster_shares"][c],
                      "batch_share": float(shares[c])} for c in range(k)],
    }
