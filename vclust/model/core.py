"""The fit core: one partition of reduced rows per (algorithm, k-range), then one model.

``vclust fit``, ``vclust compare``, the nightly refit and promote's successor all fit through
these two functions, so a model is the same whichever command made it (tests/test_compare.py
fits one spec through `vclust fit` and `vclust compare` and compares every row's labels and
outlier scores):

    fit_partition(X, algorithm, ks, ...) -> Partition     every k fitted, assigned, evaluated;
                                                         the k of ``choose_k`` kept
    build_model(descriptors, preprocess, partition, scorer, z, raw, ...) -> Model
                                                         the outlier scorer fitted on the rows
                                                         as given (``raw``), the readings, the
                                                         drift profile

What runs where (this process or the workers) follows from the rows: numpy rows (``local``,
clustered in this process) or dask rows kept in worker memory.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..numerics import FIT_SAMPLE

#: metric columns every partition's table row holds
METRICS = ("calinski_harabasz", "davies_bouldin", "silhouette", "within_ss")


def _quiet(_msg):
    pass


@dataclass
class Partition:
    """The chosen k's clusterer, labels and distances (numpy when the rows were clustered in
    this process, else dask kept in worker memory), and every k's table row."""

    clusterer: object
    labels: object
    dist: object
    table: list = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(self.clusterer.n_clusters_)


def fit_partition(z, algorithm, ks, *, local=None, sample_size=FIT_SAMPLE, seed=0, say=_quiet,
                  cache=None, extra=None, ahead=None, tree=None) -> Partition:
    """Fit ``algorithm`` at every k of ``ks`` on the reduced rows and keep the best k.

    z : dask array of the reduced rows; local : the same rows as one numpy array when they are
    clustered in this process (``jobs.fit.in_process``), else None. cache : the silhouette
    sample's distances, shared by every partition of the same rows (metrics.silhouette_sampled);
    None keeps none (one k). extra : ``f(labels numpy) -> dict`` added to each k's table row
    (compare's identity consistency). ahead : ``{k: future of the clusterer}`` fitted
    elsewhere (compare's gmm fits submitted at once). tree : an ``AgglomerativeTree`` of these
    rows, cut at every k (one is built for a k-range when none is given).
    """
    import dask

    from ..numerics.algorithms import AgglomerativeTree, distance_to_centre, fit_algorithm
    from ..numerics.kmeans import SklearnRows, sklearn_rows
    from ..numerics.metrics import choose_k, evaluate_partition
    from .bundle import assign

    X = z if local is None else local
    # wide rows in this process: copied, centred and measured for scikit-learn's Lloyd once,
    # not at every k (kmeans.SklearnRows)
    fit_rows = (SklearnRows(X) if algorithm == "kmeans" and len(ks) > 1 and sklearn_rows(X)
                else X)
    ahead = ahead or {}
    if algorithm == "agglomerative" and tree is None:
        tree = AgglomerativeTree(X, sample_size, seed)
    table, fitted = [], {}
    for k in ks:
        t0 = time.perf_counter()
        if k in ahead:
            cl = ahead.pop(k).result()
        elif algorithm == "agglomerative":
            cl = tree.cut(k)
        else:
            cl = fit_algorithm(algorithm, fit_rows, k, sample_size=sample_size,
                               random_state=seed)
        if algorithm == "agglomerative":
            labels = tree.labels(X, cl)
            if local is None:
                labels = labels.persist()
                (dist,) = dask.persist(_distances(cl, z, labels))
            else:
                dist = distance_to_centre(local, labels, cl.cluster_centers_)
        elif local is None:  # one pass for labels and distances, kept on the workers
            labels, dist = dask.persist(*assign(cl, z))
        else:
            labels, dist = cl.predict_block(local)
        m = evaluate_partition(X, labels, n_clusters=cl.n_clusters_, random_state=seed,
                               cache=cache)
        row = {"k": int(cl.n_clusters_), "algorithm": algorithm, **{c: m[c] for c in METRICS}}
        if extra is not None:
            row.update(extra(np.asarray(labels.compute() if local is None else labels)))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        table.append(row)
        fitted.setdefault(row["k"], (cl, labels, dist))  # hdbscan finds its own k
        say(f"k={k}: CH {m['calinski_harabasz']:.1f}  DB {m['davies_bouldin']:.3f}  "
            f"silhouette {m['silhouette']:.3f}"
            + "".join(f"  {key} {v:.3f}" for key, v in row.items()
                      if key not in ("k", "algorithm", "seconds", *METRICS) and v is not None))
    del fit_rows
    best = choose_k(table) if len(table) > 1 else table[0]["k"]
    if len(table) > 1:
        say(f"chose k={best} (rule: vclust.numerics.metrics.choose_k)")
    return Partition(*fitted[best], table=table)


def _distances(clusterer, z, labels):
    """Distance of every row of the dask array ``z`` to its cluster's centre, for given labels."""
    labels = labels.rechunk((z.chunks[0],))[:, None]  # aligned with z's row blocks
    from ..numerics.algorithms import distance_to_centre

    return z.map_blocks(distance_to_centre, labels, clusterer.cluster_centers_, dtype=np.float32,
                        drop_axis=1, chunks=(z.chunks[0],))


def build_model(descriptors, preprocess, partition: Partition, scorer, z, raw, *, store,
                fit_info: dict, rows=None, say=_quiet, model_class=None, ids=None):
    """The model of a partition: ``scorer`` (an ``OutlierScorer``, maybe ``prepare``d on
    ``raw`` already) fitted on the reduced rows ``z`` (dask) and the rows as given ``raw`` (an
    array or a dict of arrays of the same rows), HDBSCAN's noise flagged as outliers, and the
    model's ``info``: ``fit_info``, the metrics table, the fingerprint of ``store``, the drift
    profile and the cluster readings. ``rows``: the store rows fitted (a sample), or None for
    every row; ``ids``: ``store.ids()`` when the caller read them already."""
    import dask
    import dask.array as da

    from ..numerics.drift import reference_profile
    from .bundle import Model, with_noise

    cl, labels, dist = partition.clusterer, partition.labels, partition.dist
    if not hasattr(labels, "dask"):  # clustered in this process: cut as z is
        labels = da.from_array(labels, chunks=(z.chunks[0],))
        dist = da.from_array(dist, chunks=(z.chunks[0],))
    from ..storage import indexcache

    scorer.fit(z, labels, dist, cl.cluster_centers_, row_index=rows, raw=raw, cache=indexcache)
    labels_np, dist_np = (np.asarray(a) for a in dask.compute(labels, dist))
    at, flags = scorer.fit_rows_, scorer.fit_flags_
    if cl.name == "hdbscan":  # its noise rows count as outliers, as when labelling
        _, flags = with_noise(np.asarray(cl.noise(z).compute())[at], None, flags)
    n = len(labels_np)
    if scorer.index_source_ == "cache":
        say(f"outliers: reference index of {len(scorer.ref_rows_)} rows and its answers taken "
            "from the cache of an earlier fit of the same rows (VCLUST_CACHE_DIR; off: "
            "VCLUST_CACHE_DIR=off)")
    if len(at) == n:
        say(f"outliers: {int(flags.sum())} of {n} rows ({flags.mean():.2%}) above the threshold")
    else:
        say(f"outliers: {flags.mean():.2%} of a seeded sample of {len(at)} rows above the "
            "threshold (every row is scored when labelled)")
    k = partition.k
    ids = store.ids() if ids is None else ids
    ids = ids if rows is None else ids[rows]
    info = {
        "fit": {**fit_info, "algorithm": cl.name, "k": k, "rows_fitted": n},
        "fingerprint": store_fingerprint(store),
        "metrics": [{c: r[c] for c in ("k", "algorithm", *METRICS)} for r in partition.table],
        "chosen_k": k,
        "profile": reference_profile(labels_np, dist_np, flags, k),
        "clusters": cluster_readings(labels_np, dist_np, flags, k, ids, flag_rows=at),
    }
    model = (model_class or Model)(list(descriptors), preprocess, cl, scorer, info)
    return model, labels_np, dist_np


def store_fingerprint(store) -> dict:
    """What a model was fitted on: the store's batches and their source checksums."""
    h = hashlib.sha256()
    for b in store.ledger:
        h.update(json.dumps([b["id"], b["start"], b["stop"],
                             sorted(s["sha256"] for s in b["sources"])]).encode())
    return {"store": str(store.path), "rows": store.n_rows, "batches": store.batch_ids(),
            "sha256": h.hexdigest()}


def cluster_readings(labels, dist, flags, n_clusters, ids, n_examples: int = 5,
                     flag_rows=None) -> list[dict]:
    """Per cluster: size, share, outlier share, mean distance, and the ids of the images nearest
    its centre that are not flagged (the ones an analyst looks at to read the cluster).
    ``flags`` are of the rows at positions ``flag_rows`` (default: every row); the outlier share
    is over those."""
    out = []
    n = len(labels)
    if flag_rows is not None and len(flag_rows) != n:
        full = np.zeros(n, bool)
        full[flag_rows] = flags
        counted = np.zeros(n, bool)
        counted[flag_rows] = True
    else:
        full, counted = np.asarray(flags, bool), np.ones(n, bool)
    for c in range(n_clusters):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            out.append({"cluster": c, "size": 0, "share": 0.0, "outlier_share": 0.0,
                        "mean_distance": None, "examples": []})
            continue
        order = idx[np.argsort(dist[idx], kind="stable")]
        near = order[~full[order]][:n_examples]
        out.append({"cluster": c, "size": int(len(idx)), "share": len(idx) / n,
                    "outlier_share": float(full[idx][counted[idx]].mean())
                    if counted[idx].any() else 0.0,
                    "mean_distance": float(dist[idx].mean()),
                    "examples": [str(ids[i]) for i in near]})
    return out


def check_rows(store, ks) -> None:
    """One InputError line when the store holds too few rows for the largest k."""
    if store.n_rows < max(ks) * 2:
        raise InputError(f"{store.path}: {store.n_rows} rows are too few for k={max(ks)} "
                         f"(at most {store.n_rows // 2})")
