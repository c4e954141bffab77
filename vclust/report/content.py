"""What the report shows, as one JSON-able dict (report.json), computed from the labels, the
model and a seeded sample of the store's rows.

Only clusters that label rows get a card (a model kept by `vclust compare` is numbered
against another model, so its ids can have gaps); each card: size, share, outlier share, mean
distance to its centre, identity consistency, an analyst's name, and three groups of images:

    nearest   the rows not flagged as outliers nearest its centre: what the cluster *is*
    random    a seeded draw of its rows: what it *holds* (flagged rows badged)
    border    rows of the map sample not flagged, almost as near to another centre as to
              their own (smallest relative margin (d2 - d1) / (d1 + d2)): what it is confused
              with, and with which cluster

Outliers: a gallery per reason (``outlier_reason``), worst first by the combined z of the
outlier score (``z``, which keeps ranking where the stored score rounds to 1.000), the shown
rows shared out evenly between the reasons. The map: a seeded sample of rows with every outlier in it (up to the
sample size), embedded in 2D and 3D (vclust.numerics.maps).
"""

from __future__ import annotations

import numpy as np

IMAGES_PER_GROUP = 8  # x 3 groups = 24 images per cluster card


def identity_of(ids, level: str = "parent"):
    """The identity key of each image id: its parent folder (``veriwild/1/00001/x.jpg`` ->
    ``veriwild/1/00001``), or None when ``level`` is "none"."""
    if level == "none":
        return None
    ids = np.asarray(ids, dtype=object)
    return np.array([i.rsplit("/", 1)[0] if "/" in i else "" for i in ids], dtype=object)


def _seeded_pick(idx: np.ndarray, n: int, seed: int, stream: int) -> np.ndarray:
    if len(idx) <= n:
        return idx
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(idx, size=n, replace=False))


def map_sample(frame, size: int, seed: int) -> np.ndarray:
    """Store rows for the map: every outlier (up to ``size``), then a seeded draw of the rest."""
    rows = frame["row"].to_numpy()
    out = rows[frame["is_outlier"].to_numpy()]
    rng = np.random.default_rng([seed, 1])
    if len(out) >= size:
        return np.sort(rng.choice(out, size=size, replace=False))
    rest = rows[~frame["is_outlier"].to_numpy()]
    take = min(len(rest), size - len(out))
    return np.sort(np.concatenate([out, rng.choice(rest, size=take, replace=False)]))


def border_rows(z, labels, centers, n_per_cluster: int, present=None,
                skip=None) -> dict[int, list[tuple[int, int, float]]]:
    """Per cluster, the sample positions nearest another centre: (position, other cluster,
    relative margin), smallest margin first. ``present``: the clusters that label rows (the
    other centre is one of them; default every centre); ``skip``: positions never shown (the
    flagged rows: the map sample holds every outlier, and glare and empty frames would fill
    the border strips)."""
    z = np.asarray(z, dtype=np.float32)
    c = np.asarray(centers, dtype=np.float32)
    d = np.sqrt(np.maximum((z * z).sum(1)[:, None] - 2 * z @ c.T + (c * c).sum(1)[None, :], 0))
    if present is not None:
        gone = np.setdiff1d(np.arange(len(c)), np.asarray(list(present), dtype=np.int64))
        d[:, gone] = np.inf
    d = np.nan_to_num(d, nan=np.inf)
    own = d[np.arange(len(z)), labels]
    d_other = d.copy()
    d_other[np.arange(len(z)), labels] = np.inf
    other = d_other.argmin(axis=1)
    d2 = d_other[np.arange(len(z)), other]
    margin = (d2 - own) / np.maximum(d2 + own, 1e-12)
    out = {}
    keep = np.ones(len(z), bool) if skip is None else ~np.asarray(skip, bool)
    for k in range(len(c)):
        idx = np.flatnonzero((labels == k) & keep)
        idx = idx[np.argsort(margin[idx], kind="stable")[:n_per_cluster]]
        out[k] = [(int(i), int(other[i]), float(margin[i])) for i in idx]
    return out


def z_of_score(score) -> np.ndarray:
    """The combined z behind a stored outlier score (``score = 1 / (1 + exp(-(z - 3)))``,
    vclust.numerics.outliers); inf where the float32 score rounded to 1 (z above about 20)."""
    s = np.asarray(score, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 3.0 + np.log(s) - np.log1p(-np.minimum(s, 1.0))


def _reason_of(frame) -> np.ndarray:
    if "outlier_reason" not in frame:
        return np.where(frame["is_outlier"].to_numpy(bool), "outlier", "").astype(object)
    r = frame["outlier_reason"].fillna("").to_numpy().astype(object)
    flagged = frame["is_outlier"].to_numpy(bool)
    return np.where(flagged & (r == ""), "outlier", np.where(flagged, r, "")).astype(object)


def outlier_galleries(frame, total: int, exclude=()) -> list[dict]:
    """Per reason, the flagged rows worst first (by ``z`` when the frame has it, else by the
    score); ``total`` rows shown, shared out evenly (round robin) between the reasons; reasons
    in ``exclude`` (the pixel reasons, shown in their own galleries) left out."""
    flagged = frame[frame["is_outlier"]]
    if exclude and "outlier_reason" in flagged:
        flagged = flagged[~flagged["outlier_reason"].isin(list(exclude))]
    flagged = flagged.assign(reason=_reason_of(flagged))
    if "z" not in flagged:
        flagged = flagged.assign(z=z_of_score(flagged["outlier_score"].to_numpy()))
    groups = {r: g.sort_values(["z", "outlier_score", "row"], ascending=[False, False, True],
                               na_position="last")  # NaN: z not asked (above its digits)
              for r, g in flagged.groupby("reason")}
    take = {r: 0 for r in groups}
    left = total
    while left > 0 and any(take[r] < len(g) for r, g in groups.items()):
        for r, g in sorted(groups.items()):
            if left and take[r] < len(g):
                take[r] += 1
                left -= 1
    out = []
    for r, g in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = g.head(take[r])
        out.append({"reason": r, "count": int(len(g)),
                    "shown": [{"id": str(i), "row": int(row), "cluster": int(c),
                               "score": round(float(s), 4),
                               "z": round(float(zz), 2) if zz == zz else None,
                               "outlier": r}
                              for i, row, c, s, zz in zip(shown["image_id"], shown["row"],
                                                          shown["cluster"],
                                                          shown["outlier_score"], shown["z"])]})
    return out


def present_clusters(frame) -> list[int]:
    """The clusters that label at least one row, in order (a kept model's ids have gaps)."""
    return sorted(int(c) for c in np.unique(frame["cluster"].to_numpy()) if c >= 0)


def cluster_cards(frame, clusters, seed: int, borders: dict, sample_rows: np.ndarray,
                  names: dict, consistency: dict | None) -> list[dict]:
    """One card per cluster of ``clusters`` (see the module docstring); every image carries
    ``outlier``: its reason when flagged, else ""."""
    n = len(frame)
    ids = frame["image_id"].to_numpy()
    rows = frame["row"].to_numpy()
    labels = frame["cluster"].to_numpy()
    dist = frame["distance"].to_numpy()
    flags = frame["is_outlier"].to_numpy(bool)
    why = _reason_of(frame)
    row_pos = {int(r): i for i, r in enumerate(rows)}
    cards = []

    def item(i, **extra):
        return {"id": str(ids[i]), "row": int(rows[i]), **extra, "outlier": str(why[i])}

    for k in clusters:
        idx = np.flatnonzero(labels == k)
        if not len(idx):
            continue
        clean = idx[~flags[idx]]
        near = clean[np.argsort(dist[clean], kind="stable")[:IMAGES_PER_GROUP]]
        rand = _seeded_pick(idx, IMAGES_PER_GROUP, seed, 100 + k)
        border = [item(row_pos[int(sample_rows[pos])], other_cluster=other,
                       margin=round(margin, 4))
                  for pos, other, margin in borders.get(k, [])]
        name, note = names.get(k, ("", ""))
        per = (consistency or {}).get("per_cluster", {})
        cards.append({
            "id": int(k), "name": name, "note": note, "size": int(len(idx)),
            "share": round(len(idx) / n, 6) if n else 0.0,
            "outlier_share": round(float(flags[idx].mean()), 6),
            "outliers": int(flags[idx].sum()),
            "mean_distance": round(float(dist[idx].mean()), 6),
            "identity_consistency": (round(per[k], 4) if per.get(k) is not None else None)
            if consistency else None,
            "groups": {
                "nearest": [item(i, distance=round(float(dist[i]), 4)) for i in near],
                "random": [item(i) for i in rand],
                "border": border,
            },
        })
    return cards


def truth_readings(frame, truth, attrs=("body_type", "view", "colour")) -> dict[int, str]:
    """Per cluster: the majority value of each known attribute (a synthetic case's truth.csv)
    and its share among the cluster's inliers."""
    merged = frame.merge(truth, left_on="image_id", right_on="path", how="inner")
    merged = merged[~merged["is_outlier"]]
    out = {}
    for c, g in merged.groupby("cluster"):
        parts = []
        for a in attrs:
            if a in g:
                top = g[a].astype(str).value_counts(normalize=True)
                parts.append(f"{a} {top.index[0]} ({top.iloc[0]:.0%})")
        out[int(c)] = ", ".join(parts)
    return out


#: the pixel galleries: (reason, title, the statistic that orders it, worst first descending?)
#: (the statistic is the one the reason's bound applies to, vclust.numerics.pixels.reason_values)
PIXEL_GALLERIES = (("unreadable", "broken", None, False),
                   ("overexposed", "bright", "clipped", True),
                   ("underexposed", "dark", "highlight", False),
                   ("blurry", "blurry", "detail", False),
                   ("uniform", "uniform", "relative structure", False))


def pixel_galleries(frame, stats: dict | None, per_gallery: int) -> list[dict]:
    """The rows flagged by a pixel reason, a gallery per reason (broken, bright, dark, blurry,
    uniform), worst first by the statistic behind the reason; ``stats`` the store's pixel
    statistics by row (None: ordered by row)."""
    from ..numerics.pixels import PROBLEMS, reason_values

    out = []
    if "outlier_reason" not in frame:
        return out
    reasons = frame["outlier_reason"].fillna("").to_numpy()
    rows = frame["row"].to_numpy()
    ids = frame["image_id"].to_numpy()
    for reason, title, stat, descending in PIXEL_GALLERIES:
        idx = np.flatnonzero(reasons == reason)
        caption = None
        if stats is not None and len(idx):
            r = rows[idx]
            if stat is not None:
                value = reason_values({k: np.asarray(v)[r] for k, v in stats.items()})[reason]
            else:
                value = np.zeros(len(idx))
            order = np.lexsort((r, -value if descending else value))
            idx = idx[order]
            if stat is None:
                caption = [PROBLEMS[int(p)] for p in stats["problem"][rows[idx]]]
            else:
                caption = [f"{stat.replace('_', ' ')} {v:.3g}" for v in
                           np.asarray(value)[order]]
        shown = idx[:per_gallery]
        out.append({"reason": reason, "title": title, "count": int(len(idx)),
                    "share": round(len(idx) / len(frame), 6) if len(frame) else 0.0,
                    "shown": [{"id": str(ids[i]), "row": int(rows[i]),
                               "caption": caption[j] if caption else "", "outlier": reason}
                              for j, i in enumerate(shown)]})
    return out


def duplicate_gallery(groups, ids_by_row: dict, n_groups: int) -> list[dict]:
    """The largest near-duplicate groups (then by first row), each with its rows."""
    if not len(groups):
        return []
    sizes = groups.groupby("group").size()
    top = sorted(sizes.index, key=lambda g: (-int(sizes[g]), int(g)))[:n_groups]
    out = []
    for g in top:
        members = groups[groups["group"] == g]
        out.append({"group": int(g), "size": int(len(members)),
                    "rows": [{"id": str(i), "row": int(r)} for r, i in
                             zip(members["row"], members["image_id"])]})
    return out
