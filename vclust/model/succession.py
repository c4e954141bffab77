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
    for attr in getattr(type(scorer), "_ARRAYS", ()):
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


def carry_names(names_path, model, say=print) -> dict:
    """Rewrite the analysts' names CSV for ``model`` (renumbered): names of ids the model has
    stay, retired ids are dropped (listed in the return value and said); the new ids, to be
    named, are said. Written to a temporary file, renamed into place; the old file is kept as
    ``NAMES.csv.bak``."""
    import os
    import shutil
    from pathlib import Path

    import pandas as pd

    from ..storage.labels import read_names

    path = Path(names_path)
    named = read_names(path) if path.exists() else {}
    info = model.info.get("succession") or {}
    ids = sorted({int(v) for v in (info.get("mapping") or {}).values()}
                 or range(int(model.clusterer.n_clusters_)))
    dropped = {k: v[0] for k, v in named.items() if k not in ids}
    rows = [{"cluster": i, "name": named[i][0], "note": named[i][1]} for i in ids if i in named]
    if path.exists():
        shutil.copyfile(path, path.with_name(path.name + ".bak"))
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows, columns=["cluster", "name", "note"]).to_csv(tmp, index=False)
    os.replace(tmp, path)
    new = [i for i in ids if i not in named]
    if dropped:
        say(f"names: retired clusters dropped from {path}: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(dropped.items())))
    if new:
        say(f"names: new clusters to name in {path}: {', '.join(map(str, new))}")
    return {"kept": [i for i in ids if i in named], "dropped": sorted(dropped), "new": new}


# --------------------------------------------------------------------------- promote


def promote(registry, model_ref: str, labels_dir=None, names=None, say=print) -> dict:
    """Make a registered model current (``vclust promote``).

    If the model was renumbered against the model that is current now (``vclust compare`` does
    it), or there is no current model, the registry's pointer is switched and nothing else
    changes. Otherwise its clusters are matched to the current model's on the rows both label
    in ``labels_dir``, and a successor model (new id) is registered with the renumbered arrays
    and its labels rewritten under it (cluster ids mapped) before it becomes current; the model
    promoted and its labels are left as they were. ``names``: the names CSV, rewritten to follow
    the ids (``carry_names``).
    """
    from ..storage.labels import list_partitions, read_labels, write_batch
    from .bundle import Model
    from .registry import Registry, save_model

    reg = Registry(registry)
    path = reg.resolve(model_ref)
    model = Model.load(path)
    current = reg.current()
    succ = model.info.get("succession") or {}
    if current == model.model_id:
        raise InputError(f"model {model.model_id} is already current in {reg.root}")
    if current is None or succ.get("previous") == current:
        if "succession" not in model.info:
            say(f"promote: no current model; {model.model_id} keeps its numbering")
        else:
            say(f"promote: {model.model_id} was renumbered against {current} when it was "
                "fitted: its ids already continue the current model's")
        reg.set_current(model.model_id)
        result = {"model": model.model_id, "previous": current, "renumbered": False,
                  "mapping": succ.get("mapping")}
    else:
        if labels_dir is None:
            raise InputError(f"model {model.model_id} was not numbered against the current model "
                             f"{current}: pass --labels LABELS_DIR to match its clusters on the "
                             "rows both label")
        prev_model = Model.load(reg.resolve(current))
        prev = previous_labels(labels_dir, current)
        mine = previous_labels(labels_dir, model.model_id)
        if prev is None or mine is None:
            raise InputError(f"{labels_dir}: needs labels of both {current} and "
                             f"{model.model_id} to match their clusters")
        new, mapping = renumber_against(model, prev_model, prev, mine[0], mine[1])
        new.info["succession"]["from_model"] = model.model_id
        _, new_id = save_model(new, registry=registry, make_current=False)
        lut = np.array([mapping[c] for c in range(len(mapping))], dtype=np.int32)
        for p in list_partitions(labels_dir):
            if p["model"] != model.model_id:
                continue
            f = read_labels(labels_dir, model=model.model_id, batches=[p["batch"]])
            f = f.drop(columns=["model", "batch"])
            f["cluster"] = lut[f["cluster"].to_numpy()]
            write_batch(labels_dir, new_id, p["batch"], [f])
        reg.set_current(new_id)
        say(f"promote: {model.model_id} renumbered to continue {current} as {new_id} "
            f"(mapping {mapping}); labels rewritten under model={new_id}")
        model = Model.load(reg.path(new_id))
        result = {"model": new_id, "promoted": model_ref, "previous": current,
                  "renumbered": True, "mapping": {str(k): v for k, v in mapping.items()}}
    if names:
        result["names"] = carry_names(names, model, say=say)
    say(f"promote: current model of {reg.root} is {result['model']}")
    return result
