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


class Rows:
    """Descriptor rows the report already read (the map sample: every outlier is in it up to its
    size), raw and reduced, so asking about them reads nothing again."""

    def __init__(self, rows, raw: dict, reduced):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.raw = {d: np.asarray(v) for d, v in raw.items()}
        self.reduced = np.asarray(reduced, dtype=np.float32)


def _read(model, store, rows):
    """The rows as given and reduced, read and reduced in this process: a few hundred rows, not
    worth a task queued behind the workers' map layouts (the case's report waited about 25 s for
    them: benchmarks/RESULTS.md)."""
    from ..storage.rawrows import read_rows

    raw = {d: read_rows(store.array(d), rows) for d in model.descriptors}
    return raw, np.asarray(model.reduce(raw), dtype=np.float32)  # numpy in, numpy out


def _rows_in_model_space(model, store, rows: np.ndarray, known: Rows | None = None):
    """(reduced rows, scoring rows) of the store rows ``rows`` (sorted, unique): from ``known``
    where it holds them, the rest read from the store."""
    names = list(model.descriptors)
    if known is not None and len(known.rows):
        at = np.minimum(np.searchsorted(known.rows, rows), len(known.rows) - 1)
        have = known.rows[at] == rows
    else:
        at, have = np.zeros(len(rows), np.int64), np.zeros(len(rows), bool)
    raw = {d: None for d in names}
    x = None
    if have.any():
        raw = {d: known.raw[d][at[have]] for d in names}
        x = known.reduced[at[have]]
    if (~have).any():
        r_raw, r_x = _read(model, store, rows[~have])
        if x is None:
            raw, x = r_raw, r_x
        else:  # both: put them back in row order
            order = np.argsort(np.concatenate([np.flatnonzero(have), np.flatnonzero(~have)]),
                               kind="stable")
            raw = {d: np.concatenate([raw[d], r_raw[d]])[order] for d in names}
            x = np.concatenate([x, r_x])[order]
    one = raw[names[0]] if len(names) == 1 else raw
    own = model.outliers.scoring_rows(one)
    return x, own


def row_evidence(model, store, frame, rows, exact_z_rows=None, k: int = NEIGHBOURS,
                 known: Rows | None = None) -> dict:
    """For the store rows ``rows``: ``{"rows", "neighbours" (n, k) absolute rows,
    "distances" (n, k)}``; and for ``exact_z_rows`` (a subset of ``rows``) ``"z"``, their
    combined z. ``frame`` is the labels sorted by row (cluster and distance of each row);
    ``known`` rows already read (not read again)."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    out = {"rows": rows, "neighbours": np.empty((0, k), np.int64),
           "distances": np.empty((0, k), np.float32), "z": {}}
    if not len(rows):
        return out
    scorer = model.outliers
    x, own = _rows_in_model_space(model, store, rows, known)
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
