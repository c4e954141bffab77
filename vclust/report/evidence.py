"""What the report asks the model's outlier index for the rows it shows: each row's combined z
(the score's own scale, which keeps ranking where the stored float32 score rounds to 1.000) and
its nearest rows (similar images, shown beside an enlarged thumbnail, with no server).

Both come from the outlier scorer (vclust.numerics.outliers): the row is read from the store,
reduced as the model reduces rows, projected into the scorer's scoring rows, and queried against
its reference index, the same question labelling asked. The neighbours are rows of that
reference (a seeded sample of the fit rows on large data, every row on small).
"""

from __future__ import annotations

import numpy as np

#: neighbours shown beside an enlarged image
NEIGHBOURS = 5


def _rows_in_model_space(model, store, rows: np.ndarray):
    """(reduced rows, scoring rows) of the store rows ``rows`` (sorted, unique)."""
    import dask.array as da

    raw = {d: np.asarray(store.descriptors(d)[rows].compute()) for d in model.descriptors}
    x = model.reduce({d: da.from_array(v, chunks=(max(1, len(v)), v.shape[1]))
                      for d, v in raw.items()})
    x = np.asarray(x.compute(), dtype=np.float32)
    one = raw[model.descriptors[0]] if len(model.descriptors) == 1 else raw
    own = model.outliers._own_block(one)
    return x, own


def row_evidence(model, store, frame, rows, exact_z_rows=None, k: int = NEIGHBOURS) -> dict:
    """For the store rows ``rows``: ``{"rows", "neighbours" (n, k) absolute rows,
    "distances" (n, k)}``; and for ``exact_z_rows`` (a subset of ``rows``) ``"z"``, their
    combined z. ``frame`` is the labels sorted by row (cluster and distance of each row)."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    out = {"rows": rows, "neighbours": np.empty((0, k), np.int64),
           "distances": np.empty((0, k), np.float32), "z": {}}
    if not len(rows):
        return out
    scorer = model.outliers
    x, own = _rows_in_model_space(model, store, rows)
    idx, dist = scorer.neighbours(own, rows)
    out["neighbours"] = np.asarray(scorer.ref_rows_)[idx[:, :k]].astype(np.int64)
    out["distances"] = np.asarray(dist[:, :k], dtype=np.float32)
    if exact_z_rows is not None and len(exact_z_rows):
        want = np.isin(rows, np.asarray(exact_z_rows, dtype=np.int64))
        pos = np.searchsorted(frame["row"].to_numpy(), rows[want])
        labels = frame["cluster"].to_numpy()[pos]
        center = frame["distance"].to_numpy()[pos].astype(np.float64)
        z = scorer.z_block(x[want], labels, center, rows[want], own[want])
        out["z"] = {int(r): float(v) for r, v in zip(rows[want], z)}
    return out
