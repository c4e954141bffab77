"""Near-duplicates from the outlier index's neighbours: groups of rows within a tight distance.

Labelling already queries, for every row, its nearest rows of the outlier scorer's reference
(a pynndescent index over a seeded sample of the fit rows, in the scorer's own projection of
the descriptors; vclust.numerics.outliers). The labels keep the nearest one other than the row
itself (``nearest_row``, ``nearest_distance``). Two rows are near-duplicates when that distance
is at most ``ratio`` times the model's typical neighbour distance (the median over the reference
rows of their mean distance to their k nearest reference rows, ``exp(knn_norm_[0])``): the same
vehicle from the same camera a frame apart sits far closer to its twin than any two ordinary
images do. Groups are the connected components of those pairs (a chain of twins is one group).

The report groups the rows not flagged as outliers: glare, empty and broken frames look alike
by nature, and the outlier and pixel galleries already show them.

Coverage: every pair is found when the reference holds every labelled row (stores up to the
scorer's ``reference_size``, 50,000 rows by default). On larger data a pair is found when one of
its rows is in the reference, so about ``m / n`` of the pairs (``m`` reference rows of ``n``);
``summary`` gives that coverage and the share scaled by it.
"""

from __future__ import annotations

import numpy as np

DEFAULT_RATIO = 0.1


def tight_distance(model, ratio: float = DEFAULT_RATIO) -> float:
    """The distance under which two rows are near-duplicates for ``model``."""
    return float(ratio * np.exp(model.outliers.knn_norm_[0]))


def near_duplicates(frame, distance: float):
    """The near-duplicate groups of the labelled rows ``frame`` (columns row, image_id,
    nearest_row, nearest_distance): a DataFrame ``group, row, image_id``, groups numbered from 0
    by their first row, rows in order; rows of no group are left out."""
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    empty = pd.DataFrame({"group": pd.Series([], dtype="int64"),
                          "row": pd.Series([], dtype="int64"),
                          "image_id": pd.Series([], dtype="string")})
    if "nearest_row" not in frame or not len(frame):
        return empty
    rows = frame["row"].to_numpy(np.int64)
    order = np.argsort(rows, kind="stable")
    rows_sorted = rows[order]
    nn = frame["nearest_row"].to_numpy(dtype=np.float64, na_value=np.nan)
    d = frame["nearest_distance"].to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.isfinite(nn) & np.isfinite(d) & (d <= distance)
    a = np.flatnonzero(ok)
    pos = np.searchsorted(rows_sorted, nn[a].astype(np.int64))
    pos = np.minimum(pos, len(rows_sorted) - 1)
    found = rows_sorted[pos] == nn[a].astype(np.int64)  # the twin is among the labelled rows
    a, b = a[found], order[pos[found]]
    keep = a != b
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return empty
    n = len(frame)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    members = np.zeros(n, bool)
    members[a] = members[b] = True
    idx = np.flatnonzero(members)
    idx = idx[np.argsort(rows[idx], kind="stable")]
    comp = comp[idx]
    _, first = np.unique(comp, return_index=True)  # each group's first row, in row order
    number = np.empty(comp.max() + 1, np.int64)
    number[comp[np.sort(first)]] = np.arange(len(first))
    out = pd.DataFrame({"group": number[comp], "row": rows[idx],
                        "image_id": frame["image_id"].to_numpy()[idx].astype(str)})
    return out.sort_values(["group", "row"], ignore_index=True).astype({"image_id": "string"})


def summary(groups, n_rows: int, reference_rows: int, distance: float, ratio: float) -> dict:
    """Counts and shares of the near-duplicate table (see the module docstring on coverage)."""
    in_groups = int(len(groups))
    coverage = min(1.0, reference_rows / n_rows) if n_rows else 1.0
    share = in_groups / n_rows if n_rows else 0.0
    return {"groups": int(groups["group"].nunique()) if in_groups else 0, "rows": in_groups,
            "share": round(share, 6), "coverage": round(coverage, 6),
            "share_estimated": round(min(1.0, share / coverage), 6) if coverage else None,
            "distance": round(float(distance), 6), "ratio": ratio}
