"""Model succession: when a model replaces the current one, its clusters take the ids of the
previous model's clusters they continue, so cluster 7 still means what the analysts named it.

    mapping    ``match_clusters`` (Hungarian assignment, vclust.numerics.agreement) on the
               contingency of the previous model's labels against the new model's, over the
               rows both label; a new cluster keeps a previous id when at least half its rows
               carried it, else gets a new id (``next_id``: never an id used before, retired
               ones included)
    renumber   the model's arrays permuted to those ids *before it is saved and before any of
               its labels are written*, so labels on disk always carry the model's numbering.
               Ids can leave gaps (a previous cluster that no new cluster continues is retired):
               a gap's centre is set far from every row (never nearest), its GMM weight ~0, its
               per-cluster outlier statistics neutral; it labels no row.
    manifest   ``succession``: {previous, mapping (new cluster -> id), retired (previous ids no
               cluster continues), next_id (the first id never given)}
    names      the analysts' names CSV (cluster,name[,note]) follows the ids: ``carry_names``
               keeps the names of the ids the model still has and drops the retired ones (it
               says which, and which new ids have no name yet).

Where it runs: ``vclust compare`` renumbers every model it keeps against the registry's current
model (so promoting one of them changes no array and no label); ``vclust promote`` makes a
model current, first renumbering it into a successor model (a new id, labels rewritten under
it) if the current model changed since; the nightly refit (runner) renumbers the fitted model
against the current one before saving and labelling it.
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import InputError
from ..numerics import outlier_state
from .registry import recover, swap_names  # noqa: F401 (the journal is the registry's)

FAR = 1e4  # gap centres sit this far (times the largest centre coordinate + 1) from every row


def next_id_of(model) -> int:
    """The first id never given by ``model``'s line of succession."""
    succ = model.info.get("succession") or {}
    return max(int(model.clusterer.n_clusters_), int(succ.get("next_id", 0)))


def previous_labels(labels_dir, model_id: str):
    """(rows int64, clusters int32) of a model's labels in ``labels_dir`` (None if none)."""
    from ..storage.labels import read_labels

    try:
        f = read_labels(labels_dir, model=model_id, columns=["row", "cluster"])
    except InputError:
        return None
    f = f.sort_values("row")
    return f["row"].to_numpy(np.int64), f["cluster"].to_numpy(np.int32)


def match_to_previous(prev_rows, prev_clusters, new_rows, new_clusters, n_prev: int,
                      n_new: int, next_id: int) -> dict:
    """{new cluster: id} from the rows both labellings cover (``match_clusters``)."""
    from ..numerics.agreement import contingency, match_clusters

    common, ia, ib = np.intersect1d(prev_rows, new_rows, assume_unique=True, return_indices=True)
    if not len(common):
        raise InputError("the previous model and the new one label no row in common: "
                         "nothing to match the clusters on")
    table = contingency(prev_clusters[ia], new_clusters[ib], n_prev, n_new)[:-1, :-1]
    return match_clusters(table, next_id=next_id)


def renumber(model, mapping: dict, previous: str | None = None, next_id: int | None = None):
    """A copy of ``model`` whose cluster ``c`` is now ``mapping[c]`` (see the module docstring).
    The copy has no path and no id: save it as a new model."""
    from ..numerics.algorithms import FittedClusterer

    old_n = int(model.clusterer.n_clusters_)
    new_of = np.array([int(mapping[c]) for c in range(old_n)], dtype=np.int64)
    if len(set(new_of.tolist())) != old_n:
        raise ValueError(f"mapping gives two clusters one id: {mapping}")
    n = int(new_of.max()) + 1
    gaps = sorted(set(range(n)) - set(new_of.tolist()))

    def expand(arr, fill):
        arr = np.asarray(arr)
        out = np.empty((n,) + arr.shape[1:], dtype=arr.dtype)
        out[...] = fill
        out[new_of] = arr
        return out

    cl = model.clusterer
    centres = np.asarray(cl.cluster_centers_, np.float32)
    far = FAR * (float(np.abs(centres).max()) + 1.0)
    arrays = {}
    for key, arr in cl.arrays.items():
        if key == "anchor_labels":
            arrays[key] = new_of[np.asarray(arr)].astype(np.int32)
        elif key == "anchors":
            arrays[key] = arr
        elif key == "weights":
            arrays[key] = expand(arr, 1e-300)
        elif key == "precisions_cholesky":
            a = expand(arr, 0.0)
            for g in gaps:
                a[g] = np.eye(a.shape[1])
            arrays[key] = a
        elif key == "means":
            arrays[key] = expand(arr, far)
        elif np.ndim(arr) and len(arr) == old_n:
            arrays[key] = expand(arr, 0)
        else:
            arrays[key] = arr
    params = dict(cl.params)
    new_cl = FittedClusterer(cl.name, expand(centres, far), params, arrays)

    scorer = copy.deepcopy(model.outliers)
    neutral = {"cluster_median_": 1.0, "cluster_log_mad_": 1.0, "cluster_share_": 0.0,
               "cluster_tight_": -np.inf, "cluster_degenerate_": False}
    for attr in outlier_state.ARRAYS:
        val = getattr(scorer, attr, None)
        if attr.startswith("cluster_") and val is not None and np.ndim(val) and len(val) == old_n:
            setattr(scorer, attr, expand(val, neutral.get(attr, 0)))

    info = copy.deepcopy(model.info)
    prof = info.get("profile")
    if prof:
        for key, fill in (("cluster_shares", 0.0), ("cluster_mean_distance", None)):
            if key in prof:
                vals = [fill] * n
                for c, v in enumerate(prof[key]):
                    vals[int(new_of[c])] = v
                prof[key] = vals
    if info.get("clusters"):
        by_id = {int(new_of[r["cluster"]]): {**r, "cluster": int(new_of[r["cluster"]])}
                 for r in info["clusters"]}
        info["clusters"] = [by_id.get(i, {"cluster": i, "size": 0, "share": 0.0,
                                          "outlier_share": 0.0, "mean_distance": None,
                                          "examples": [], "retired": True}) for i in range(n)]
    nxt = max(n, int(next_id or 0), int((info.get("succession") or {}).get("next_id", 0)))
    info["succession"] = {"previous": previous, "from_model": model.model_id,
                          "mapping": {str(c): int(new_of[c]) for c in range(old_n)},
                          "retired": [int(g) for g in gaps], "next_id": nxt}
    out = copy.copy(model)
    out.clusterer, out.outliers, out.info = new_cl, scorer, info
    out.model_id, out.path = None, None
    return out


def identity_succession(model, previous: str | None):
    """The manifest entry of a model that keeps its own numbering (no previous model)."""
    n = int(model.clusterer.n_clusters_)
    model.info["succession"] = {"previous": previous, "from_model": None,
                                "mapping": {str(c): c for c in range(n)}, "retired": [],
                                "next_id": n}
    return model


def renumber_against(model, previous_model, prev, new_rows, new_clusters):
    """``model`` renumbered to continue ``previous_model`` (whose labels are ``prev`` = (rows,
    clusters)), from the new model's clusters ``new_clusters`` of rows ``new_rows``; returns
    (model, mapping)."""
    mapping = match_to_previous(prev[0], prev[1], np.asarray(new_rows), np.asarray(new_clusters),
                                int(previous_model.clusterer.n_clusters_),
                                int(model.clusterer.n_clusters_), next_id_of(previous_model))
    return renumber(model, mapping, previous=previous_model.model_id,
                    next_id=next_id_of(previous_model)), mapping


# --------------------------------------------------------------------------- names


def names_for(named: dict, model, labelled=None) -> tuple[list, dict, list]:
    """(rows of the names CSV for ``model``, {dropped id: name}, ids to name). ``named``:
    {id: (name, note)} in the previous numbering; ``labelled``: the ids that label rows (only
    those are listed to name; None: every id the model has)."""
    info = model.info.get("succession") or {}
    ids = sorted({int(v) for v in (info.get("mapping") or {}).values()}
                 or range(int(model.clusterer.n_clusters_)))
    dropped = {k: v[0] for k, v in named.items() if k not in ids}
    rows = [{"cluster": i, "name": named[i][0], "note": named[i][1]} for i in ids if i in named]
    new = [i for i in ids if i not in named and (labelled is None or i in labelled)]
    return rows, dropped, new


def _names_text(rows: list) -> str:
    import pandas as pd

    return pd.DataFrame(rows, columns=["cluster", "name", "note"]).to_csv(index=False)


def carry_names(names_path, model, say=print, labelled=None) -> dict:
    """Rewrite the analysts' names CSV for ``model`` (renumbered): names of ids the model has
    stay, retired ids are dropped (listed in the return value and said); the new ids that label
    rows (``labelled``; None: all), to be named, are said. Written to a temporary file, renamed
    into place; the old file is kept as ``NAMES.csv.bak``. A file already right is left alone
    (its ``.bak`` too)."""
    from pathlib import Path

    from ..storage.names import read_names

    path = Path(names_path)
    named = read_names(path) if path.exists() else {}
    rows, dropped, new = names_for(named, model, labelled)
    text = _names_text(rows)
    if not (path.exists() and path.read_text(encoding="utf-8") == text):
        staged = stage_names(path, text)
        swap_names(path, staged)
    _say_names(path, dropped, new, say)
    return {"kept": [r["cluster"] for r in rows], "dropped": sorted(dropped), "new": new}


def stage_names(path, text: str):
    """``text`` written beside the names file, fsynced; returns its path (``swap_names``)."""
    import os
    from pathlib import Path

    path = Path(path)
    staged = path.with_name(f".{path.name}.promote")
    with open(staged, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return staged


def _say_names(path, dropped: dict, new: list, say) -> None:
    if dropped:
        say(f"names: retired clusters dropped from {path}: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(dropped.items())))
    if new:
        say(f"names: new clusters to name in {path}: {', '.join(map(str, new))}")


# --------------------------------------------------------------------------- promote

PROMOTE_WAIT = 60.0  # seconds a promote waits for another one holding the registry's lock


def promote(registry, model_ref: str, labels_dir=None, names=None, say=print,
            wait: float | None = None) -> dict:
    """Make a registered model current (``vclust promote``), as one transaction.

    Every input is checked first (the model, the labels when they are needed, the names file),
    then, under the registry's lock (a second promote waits up to ``wait`` seconds, default
    ``PROMOTE_WAIT``, then is refused with exit 2), the state is read again and switched:

    - the model is current, or the current model is its successor: nothing changes (the names
      file is brought to the current model's ids if it is not);
    - the model was renumbered against the current model (``vclust compare`` does it), or there
      is no current model: ``current`` is switched;
    - otherwise a successor model (a new id, vclust.model.succession.renumber) is registered and
      labelled, then made current; the model promoted and its labels are left as they were.

    The names (``names``) follow the ids: staged beside the file before the switch, swapped in
    after it. A journal (``ROOT/promote.json``) is written before the first change and removed
    after the last: a promote killed in between is rolled back by the next one (successor and
    its labels removed) when ``current`` had not switched yet, and completed (the names swapped
    in) when it had. So a killed promote leaves the old state or the new one.
    """
    from ..storage.names import read_names
    from .bundle import Model
    from .registry import Registry

    reg = Registry(registry)
    model = Model.load(reg.resolve(model_ref))
    if names is not None:
        read_names(names)  # a bad file is refused before anything changes (and read again
        # under the lock: another promote may have rewritten it meanwhile)
    with reg.lock(PROMOTE_WAIT if wait is None else wait):
        recover(reg, say=say)
        result = _promote_locked(reg, model, reg.current(), labels_dir, names, say)
    say(f"promote: current model of {reg.root} is {result['model']}")
    return result


def _promote_locked(reg, model, current, labels_dir, names, say) -> dict:
    """The promote under the lock: every check, then the journal, then the changes."""
    from ..storage.names import read_names

    succ = model.info.get("succession") or {}
    if current is not None and (current == model.model_id
                                or _is_successor(reg, current, model.model_id)):
        say(f"promote: {model.model_id} is already current in {reg.root}"
            + ("" if current == model.model_id else f" (as its successor {current})")
            + ": nothing changed")
        result = {"model": current, "promoted": model.model_id, "previous": None,
                  "renumbered": False, "unchanged": True}
        if names:
            cur = _load(reg, current)
            result["names"] = carry_names(names, cur, say=say,
                                          labelled=_labelled(cur, labels_dir))
        return result
    if current is None or succ.get("previous") == current:
        if current is None:  # a compared model was numbered against none either
            say(f"promote: no current model; {model.model_id} keeps its numbering")
        else:
            say(f"promote: {model.model_id} was renumbered against {current} when it was "
                "fitted: its ids already continue the current model's")
        target, mapping, labelled = model, succ.get("mapping"), _labelled(model, labels_dir)
        journal = {"model": model.model_id, "previous": current, "successor": None}
    else:
        if labels_dir is None:
            raise InputError(f"model {model.model_id} was not numbered against the current model "
                             f"{current}: pass --labels LABELS_DIR to match its clusters on the "
                             "rows both label")
        prev = previous_labels(labels_dir, current)
        mine = previous_labels(labels_dir, model.model_id)
        if prev is None or mine is None:
            raise InputError(f"{labels_dir}: needs labels of both {current} and "
                             f"{model.model_id} to match their clusters")
        new, mapping = renumber_against(model, _load(reg, current), prev, mine[0], mine[1])
        new.info["succession"]["from_model"] = model.model_id
        new.model_id = reg.new_model_id()
        target, labelled = new, None
        journal = {"model": model.model_id, "previous": current, "successor": new.model_id,
                   "labels": _absolute(labels_dir)}
    staged = None
    if names:
        named = read_names(names)
        rows, dropped, new_ids = names_for(named, target, labelled)
        journal["names"] = _absolute(names)
        staged = str(stage_names(names, _names_text(rows)))
        journal["names_staged"] = _absolute(staged)
    reg.write_journal(journal)
    if journal["successor"]:
        labelled = _register_successor(reg, model, target, mapping, labels_dir)
        if names:  # the ids to name are the ones the successor's labels carry
            rows, dropped, new_ids = names_for(read_names(names), target, labelled)
    reg.set_current(target.model_id)
    if names:
        swap_names(names, staged)
        _say_names(names, dropped, new_ids, say)
    reg.clear_journal()
    result = {"model": target.model_id, "previous": current,
              "renumbered": bool(journal["successor"]),
              "mapping": {str(k): v for k, v in mapping.items()} if mapping else None}
    if journal["successor"]:
        result["promoted"] = model.model_id
        say(f"promote: {model.model_id} renumbered to continue {current} as "
            f"{target.model_id} (mapping {mapping}); labels rewritten under "
            f"model={target.model_id}")
    if names:
        result["names"] = {"kept": [r["cluster"] for r in rows], "dropped": sorted(dropped),
                           "new": new_ids}
    return result


def _register_successor(reg, model, new, mapping: dict, labels_dir) -> set:
    """Save the renumbered ``new`` (not current) and write its labels (the promoted model's,
    cluster ids mapped); returns the ids that label rows."""
    from ..storage.labels import list_partitions, read_labels, write_batch
    from .registry import save_model

    save_model(new, registry=reg.root, make_current=False, model_id=new.model_id)
    lut = np.array([mapping[c] for c in range(len(mapping))], dtype=np.int32)
    labelled: set = set()
    for p in list_partitions(labels_dir):
        if p["model"] != model.model_id:
            continue
        f = read_labels(labels_dir, model=model.model_id, batches=[p["batch"]])
        f = f.drop(columns=["model", "batch"])
        f["cluster"] = lut[f["cluster"].to_numpy()]
        labelled.update(np.unique(f["cluster"].to_numpy()).tolist())
        write_batch(labels_dir, new.model_id, p["batch"], [f])
    return labelled


def _absolute(path) -> str:
    """A path as the journal keeps it: absolute (the promote that reads it may run elsewhere),
    an s3:// URL as it is."""
    import os

    from ..storage import fs as F

    return str(path) if F.is_url(str(path)) else os.path.abspath(str(path))


def _load(reg, model_id: str):
    from .bundle import Model

    return Model.load(reg.path(model_id))


def _is_successor(reg, current: str, model_id: str) -> bool:
    """The current model is ``model_id``'s successor (a promote of it made it)."""
    return (reg.manifest(current).get("succession") or {}).get("from_model") == model_id


def _labelled(model, labels_dir) -> set | None:
    """The ids that label rows: from ``model``'s labels in ``labels_dir`` when there are any,
    else from the sizes its fit recorded; None when neither is known."""
    got = previous_labels(labels_dir, model.model_id) if labels_dir is not None else None
    if got is not None:
        return set(np.unique(got[1]).tolist())
    clusters = model.info.get("clusters")
    if clusters:
        return {int(c["cluster"]) for c in clusters if c.get("size")}
    return None
