"""``vclust compare``: descriptor sets, mixtures and algorithms side by side in one run.

One run over a store (``compare(store, CompareParams, registry, labels_dir)``):

1. **Read once, reduce once.** Every descriptor set that any spec names is read from the store
   once (held in worker memory, one set at a time), its preprocessing (L2, PCA) fitted and its
   reduced rows kept in worker memory; the raw rows are then released. A mixture's rows are the
   reduced rows of its sets, scaled (``MixturePreprocessor.fitted``: equal total variance per
   set, times the spec's weights) and concatenated: no set is read or reduced twice.
2. **Grid.** For each spec and each algorithm, every k of the k-range is fitted on those shared
   rows and scored over all rows (exact Calinski-Harabasz, Davies-Bouldin, sampled silhouette)
   plus the identity consistency of the partition (the image id's parent folder as the group).
   Agglomerative builds its Ward tree once per spec and cuts it at every k; every k shares one
   nearest-sample-row pass.
3. **Keep.** Per (spec, algorithm) the k of ``choose_k``; that partition gets its outlier
   scorer (its threshold from a sample of rows outside the reference, as `vclust fit` fits
   it: labelling scores every row next), is renumbered to continue the registry's current
   model (vclust.succession), is registered (*not* made current) and labels every row under
   ``model=<id>/`` in the labels dir through ``jobs.label``, from the reduced rows already in
   memory. A spec whose rows are clustered in this process (``jobs.in_process``) is labelled
   here too, on this process's threads, with the scorer and index just fitted here: the
   outlier query of every row depends on the rows, not the clusters, so the second and third
   algorithm of the spec find it in this process's memo (``outliers.NEIGHBOUR_MEMO``).
4. **Compare** (in ``--out``): ``runs.csv`` (one row per spec, algorithm, k), ``agreement.csv``
   (every pair of kept models: ARI and AMI over all rows, exact, from the contingency table;
   Jaccard of their outlier sets), ``contingency/<a>__<b>.csv``, ``cross_metrics.csv`` (every
   kept partition scored in every spec's reduced space: CH and DB are only comparable inside
   one space), ``proposal.json`` and the page ``index.html`` (vclust.report.compare_page).

The proposal rule (``propose``): each kept model is ranked (1) by its mean rank of CH across
the spaces in cross_metrics, (2) by its mean rank of DB across them, and (3) by its mean ARI
with the other kept models (a partition that other sets and algorithms also find is less an
artefact of one space); the best mean of the three ranks wins, ties to fewer clusters, then to
the order of the specs and algorithms given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .params import parse_spec

RUNS_COLUMNS = ["model_id", "descriptor", "algorithm", "k", "calinski_harabasz",
                "davies_bouldin", "silhouette", "identity_consistency", "outlier_share",
                "seconds"]
MAX_COMPONENTS = 256  # as jobs.fit
AGREEMENT_COLUMNS = ["model_a", "model_b", "ari", "ami", "outlier_jaccard"]


def _quiet(_msg):
    pass


def check(store_path, params, registry=None, labels_dir=None):
    """The cheap checks before any cluster starts (one InputError line each): every set of
    every spec in the store, the k-range within the rows, the output folders usable."""
    from .storage.store import Store

    if not Path(store_path).exists():
        raise InputError(f"{store_path}: no such store")
    store = Store.open(store_path)
    for spec in params.descriptors:
        for name in parse_spec(spec):
            if name not in store.dims:
                raise InputError(f"--descriptor {spec}: the store has no descriptor set "
                                 f"'{name}'; it holds: {', '.join(store.names)}")
    if store.n_rows < 2 * max(params.ks):
        raise InputError(f"--k-range {params.k_range}: {store.n_rows} rows are too few for "
                         f"k={max(params.ks)} (at most {store.n_rows // 2})")
    for what, p in (("--out", params.out), ("--registry", registry), ("--labels", labels_dir)):
        if p is not None and Path(p).exists() and not Path(p).is_dir():
            raise InputError(f"{what} {p}: is a file; expected a folder")
    return store


# --------------------------------------------------------------------------- the model


def _held_model_class():
    from .model import Model

    class HeldModel(Model):
        """A Model whose ``reduce`` returns rows already reduced and held in worker memory
        (the compare run's shared rows) instead of reducing the store's rows again, and whose
        ``assign`` returns the clusters and distances the run already computed
        (``held_labels``, in the model's numbering): labelling through ``jobs.label`` then reads
        no descriptor from the store and assigns no row twice. Saved like any Model."""

        held = None
        held_labels = None  # (clusters, distances) of every row, numpy, as computed
        _offset = 0

        def apply(self, sets, row_offset=0, *args, **kwargs):
            self._offset = int(row_offset)
            return super().apply(sets, row_offset, *args, **kwargs)

        def reduce(self, sets):
            if self.held is None:
                return super().reduce(sets)
            n = next(iter(sets.values())).shape[0]
            z = self.held[self._offset:self._offset + n]
            chunks = next(iter(sets.values())).chunks[0]
            return z.rechunk({0: chunks, 1: -1})

        def assign(self, z):
            if self.held_labels is None:
                return super().assign(z)
            import dask.array as da

            a, b = self._offset, self._offset + z.shape[0]
            return tuple(da.from_array(np.ascontiguousarray(v[a:b]), chunks=(z.chunks[0],))
                         for v in self.held_labels)

    return HeldModel


# --------------------------------------------------------------------------- steps


def _counting_getter(log, name, a, b, *args, **kwargs):
    """dask's getter, noting each read of the store's rows in ``log`` (one line per chunk
    read: set, first row, stop row), from whichever worker reads it."""
    from dask.array.core import getter

    out = getter(a, b, *args, **kwargs)
    with open(log, "a") as f:
        f.write(f"{name} {b[0].start} {b[0].stop}\n")
    return out


def read_set(store, name, log):
    """One descriptor set's committed rows as a dask array whose chunk reads are counted in
    ``log`` (``store_reads``)."""
    import functools

    import dask.array as da
    from dask.base import tokenize

    arr = store.array(name)
    x = da.from_array(arr, chunks=arr.chunks, name=f"vclust-read-{name}-"
                      + tokenize(str(store.path), name, arr.shape, store.ledger),
                      getitem=functools.partial(_counting_getter, str(log), name))
    return x[:store.n_rows]


def store_reads(log, n_rows: int) -> dict:
    """{set: passes over its rows} from the read log (1.0: every row read once)."""
    counts: dict[str, int] = {}
    if Path(log).exists():
        for line in Path(log).read_text().splitlines():
            name, a, b = line.split()
            counts[name] = counts.get(name, 0) + int(b) - int(a)
    return {k: round(v / n_rows, 3) for k, v in counts.items()}


def _reduce_sets(store, names, params, log, say):
    """{name: (Preprocessor, reduced rows held)}: each set read once (see module docstring)."""
    from .jobs import SCALINGS, hold_reduced, hold_sets
    from .numerics.preprocess import Preprocessor

    l2, standardize = SCALINGS[params.scaling]
    out = {}
    for name in names:
        t0 = time.perf_counter()
        x = hold_sets({name: read_set(store, name, log)}, say)[name]
        pre = Preprocessor(l2=l2, standardize=standardize, pca_variance=params.pca_variance,
                           max_components=MAX_COMPONENTS,
                           random_state=params.seed).fit(x)
        z = hold_reduced(pre.transform(x), say)
        del x  # the raw rows leave worker memory
        say(f"{name}: {pre.n_components_} components keep "
            f"{float(np.sum(pre.explained_variance_ratio_)):.3f} of the variance "
            f"({time.perf_counter() - t0:.1f} s)")
        out[name] = (pre, z)
    return out


def _space(spec, reduced, say):
    """(preprocess, held rows) of a spec: one set's own, or a mixture of reduced sets."""
    import dask.array as da

    from .jobs import hold_reduced
    from .numerics.preprocess import MixturePreprocessor

    weights = parse_spec(spec)
    if len(weights) == 1:
        return reduced[next(iter(weights))]
    mix = MixturePreprocessor({n: reduced[n][0] for n in weights}, weights).fitted()
    z = da.concatenate([reduced[n][1] * np.float32(mix.weights_[n]) for n in weights], axis=1)
    return mix, hold_reduced(z.rechunk({1: -1}), say)


def _aligned(labels_np, z):
    import dask.array as da

    return da.from_array(np.asarray(labels_np), chunks=(z.chunks[0],))


class _Agglomerative:
    """Ward + 10-NN connectivity on the sample, the tree built once and cut at every k; every
    row takes its nearest sample row's label (one pass for all k). Same model as
    ``fit_algorithm("agglomerative", ...)``."""

    def __init__(self, z, sample_size, seed, tmp):
        import dask
        from sklearn.neighbors import kneighbors_graph

        from .numerics.algorithms import _nearest_anchor
        from .numerics.blocks import sample_rows

        sample, _ = sample_rows(z, sample_size, seed, stream=21)
        self.sample = sample.astype(np.float64)
        self.conn = kneighbors_graph(self.sample, n_neighbors=min(10, len(sample) - 1),
                                     include_self=False)
        self.memory = str(tmp)
        idx = np.arange(len(sample), dtype=np.int32)
        near = z.map_blocks(_nearest_anchor, self.sample.astype(np.float32), idx,
                            dtype=np.int32, drop_axis=1, chunks=(z.chunks[0],))
        (self.nearest,) = dask.persist(near)
        self.params = {"sample_size": int(len(sample)), "random_state": int(seed)}

    def fit(self, k):
        from sklearn.cluster import AgglomerativeClustering

        from .numerics.algorithms import FittedClusterer, _centres_of

        labels = AgglomerativeClustering(k, linkage="ward", connectivity=self.conn,
                                         memory=self.memory, compute_full_tree=True
                                         ).fit_predict(self.sample).astype(np.int32)
        cl = FittedClusterer("agglomerative", _centres_of(self.sample, labels, k), self.params,
                             {"anchors": self.sample.astype(np.float32),
                              "anchor_labels": labels})
        return cl, self.nearest.map_blocks(_take, labels, dtype=np.int32)


def _fits_ahead(alg, X, params) -> dict:
    """{k: future of the fitted clusterer} for every k of a sample-fitted algorithm whose fits
    are independent of each other (gmm), submitted to the workers at once: they run side by side
    while this process scores the k before. The same sample and the same fit as
    ``fit_algorithm`` (a test checks). Empty without a distributed client, or for others."""
    from .numerics.blocks import distributed_imported

    if alg != "gmm" or len(params.ks) < 2 or not distributed_imported():
        return {}
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return {}
    from .numerics.algorithms import fit_gmm
    from .numerics.blocks import sample_rows

    sample, _ = sample_rows(X, params.fit_sample, params.seed, stream=21)
    handle = client.scatter(np.asarray(sample, np.float64), broadcast=True)
    return {k: client.submit(fit_gmm, handle, k, params.seed, pure=False) for k in params.ks}


def _assign(clusterer, z):
    import dask

    from .model import assign

    return dask.persist(*assign(clusterer, z))


def _take(idx, table):
    return table[idx]


def _dist_block(x, lab, centres):
    x = np.asarray(x, np.float32)
    d = x - centres[np.asarray(lab).ravel()]
    return np.sqrt(np.einsum("ij,ij->i", d, d)).astype(np.float32)


def _distances(clusterer, z, labels):
    """Distance of every row to its cluster's centre, for given labels."""
    labels = labels.rechunk((z.chunks[0],))[:, None]  # aligned with z's row blocks
    return z.map_blocks(_dist_block, labels, clusterer.cluster_centers_, dtype=np.float32,
                        drop_axis=1, chunks=(z.chunks[0],))


# --------------------------------------------------------------------------- the run


def compare(store_path, params, registry, labels_dir, say=_quiet) -> dict:
    """Run the comparison (module docstring); returns the summary (also ``summary.json``)."""
    import tempfile

    import dask
    import dask.array as da
    import pandas as pd

    from . import jobs
    from .model import Model
    from .numerics.agreement import adjusted_mutual_info, adjusted_rand, contingency
    from .numerics.algorithms import fit_algorithm
    from .numerics.blocks import threads_get
    from .numerics.metrics import choose_k, evaluate_partition, identity_consistency
    from .numerics.outliers import OutlierScorer
    from .registry import Registry
    from .report.content import identity_of
    from . import succession

    t_start = time.perf_counter()
    store = check(store_path, params, registry, labels_dir)
    out = Path(params.out)
    out.mkdir(parents=True, exist_ok=True)
    reg = Registry(registry)
    current = reg.current()
    prev_model = prev = None
    if current is not None:
        prev_model = Model.load(reg.path(current))
        prev = succession.previous_labels(labels_dir, current)
        if prev is None:
            say(f"the current model {current} has no labels in {labels_dir}: the models kept "
                "keep their own numbering (vclust promote renumbers later)")
    ids = store.ids()
    # the image folders as integer codes, once: identity_consistency counts codes fast
    groups = pd.factorize(identity_of(ids.astype(str)))[0] if params.identity == "parent" \
        else None
    names = list(dict.fromkeys(n for spec in params.descriptors for n in parse_spec(spec)))
    say(f"compare: {store.n_rows:,} rows; sets {', '.join(names)}; specs "
        f"{', '.join(params.descriptors)}; algorithms {', '.join(params.algorithms)}; "
        f"k {params.k_range}")
    import threading

    from .numerics.outliers import warm_up

    # pynndescent compiles its kernels on a client thread while the workers reduce and cluster
    warming = threading.Thread(target=warm_up, name="vclust-pynndescent-warm-up", daemon=True)
    warming.start()
    log = out / "reads.log"
    log.unlink(missing_ok=True)
    reduced = _reduce_sets(store, names, params, log, say)
    spaces = {spec: _space(spec, reduced, say) for spec in params.descriptors}
    HeldModel = _held_model_class()

    runs, kept = [], []
    for spec, (pre, z) in spaces.items():
        agg = None
        # the space's silhouette sample distances, computed once for all its partitions
        silhouette_cache = {}
        # small spaces are clustered in this process, as `vclust fit` does (jobs.in_process)
        local = jobs.in_process(z)
        if local is not None:
            say(f"{spec}: clustering in this process ({local.nbytes / 1e6:.0f} MB of rows)")
        for alg in params.algorithms:
            table, fitted, rows = [], {}, []
            ahead = _fits_ahead(alg, z if local is None else local, params)
            for k in params.ks:
                t0 = time.perf_counter()
                if alg == "agglomerative":
                    if agg is None:
                        agg = _Agglomerative(z, params.fit_sample, params.seed,
                                             tempfile.mkdtemp(prefix="vclust-ward-"))
                    cl, lab = agg.fit(k)
                    lab = lab.persist()
                    (dist,) = dask.persist(_distances(cl, z, lab))
                    lab_np = np.asarray(lab.compute())  # this partition's labels, here
                elif local is None:
                    cl = ahead.pop(k).result() if k in ahead else fit_algorithm(
                        alg, z, k, sample_size=params.fit_sample, random_state=params.seed)
                    lab, dist = _assign(cl, z)
                    lab_np = np.asarray(lab.compute())
                else:
                    cl = ahead.pop(k).result() if k in ahead else fit_algorithm(
                        alg, local, k, sample_size=params.fit_sample, random_state=params.seed)
                    lab_np, dist_np = cl.predict_block(local)
                    lab, dist = _aligned(lab_np, z), _aligned(dist_np, z)
                m = evaluate_partition(z if local is None else local,
                                       lab if local is None else lab_np,
                                       n_clusters=cl.n_clusters_, random_state=params.seed,
                                       cache=silhouette_cache)
                ident = identity_consistency(lab_np, groups)["overall"] if groups is not None \
                    else None
                row = {"model_id": "", "descriptor": spec, "algorithm": alg,
                       "k": int(cl.n_clusters_),
                       **{key: m[key] for key in ("calinski_harabasz", "davies_bouldin",
                                                  "silhouette")},
                       "identity_consistency": ident, "outlier_share": None,
                       "seconds": round(time.perf_counter() - t0, 3)}
                table.append({**row, "within_ss": m["within_ss"]})
                rows.append(row)
                fitted.setdefault(row["k"], (cl, lab, dist, lab_np))
                say(f"{spec} {alg} k={k}: CH {m['calinski_harabasz']:.1f}  DB "
                    f"{m['davies_bouldin']:.3f}  silhouette {m['silhouette']:.3f}  "
                    f"identity {ident if ident is None else round(ident, 3)}  "
                    f"({row['seconds']:.1f} s)")
            best = choose_k(table) if len(table) > 1 else table[0]["k"]
            cl, lab, dist, lab_np = fitted[best]
            del fitted
            t0 = time.perf_counter()
            warming.join()
            dist_np = np.asarray(dist.compute())
            del lab, dist
            # the threshold from a sample of rows outside the reference, as `vclust fit` sets
            # it: labelling scores every row next anyway
            scorer = OutlierScorer(random_state=params.seed, threshold_rows="reference",
                                   **params.outlier_options)
            scorer.fit(z if local is None else local, lab_np, dist_np, cl.cluster_centers_)
            at, flags = scorer.fit_rows_, scorer.fit_flags_  # the threshold's sample rows
            if cl.name == "hdbscan":  # its noise rows count as outliers (model.with_noise)
                flags = flags | np.asarray(cl.noise(z).compute())[at]
            from .numerics.drift import reference_profile

            info = {
                "fit": {"store": str(store.path), "descriptors": list(parse_spec(spec)),
                        "spec": spec, "algorithm": alg, "k": best, "k_tried": params.ks,
                        "pca_variance": params.pca_variance, "scaling": params.scaling,
                        "sample": None, "rows_fitted": store.n_rows, "seed": params.seed,
                        "by": "vclust compare"},
                "fingerprint": jobs.store_fingerprint(store),
                "metrics": [{key: r[key] for key in ("k", "algorithm", "calinski_harabasz",
                                                      "davies_bouldin", "silhouette",
                                                      "within_ss")} for r in table],
                "chosen_k": best,
                "profile": reference_profile(lab_np, dist_np, flags, best),
                "clusters": jobs.cluster_readings(lab_np, dist_np, flags, best, ids,
                                                  flag_rows=at),
            }
            model = HeldModel(list(parse_spec(spec)), pre, cl, scorer, info)
            if prev is not None:
                model, mapping = succession.renumber_against(
                    model, prev_model, prev, np.arange(store.n_rows), lab_np)
                lut = np.array([mapping[c] for c in range(len(mapping))], np.int32)
                lab_np = lut[lab_np]
            else:
                succession.identity_succession(model, current)
            model.held_labels = (lab_np.astype(np.int32), dist_np.astype(np.float32))
            _, model_id = jobs.save_model(model, registry=registry, make_current=False)
            if local is None:
                model.held = z
                jobs.label(store_path, model, labels_dir, all_batches=True)
            else:
                # rows held here are labelled here, on this process's threads, by the scorer
                # and index just fitted here: the outlier query of every row is the same for
                # each algorithm of the spec (it depends on the rows, not the clusters), and
                # this process keeps its answer (outliers.NEIGHBOUR_MEMO) for the next one
                model.held = da.from_array(local, chunks=(z.chunks[0], -1))
                with dask.config.set(scheduler=threads_get):
                    jobs.label(store_path, model, labels_dir, all_batches=True)
            model.held = model.held_labels = None
            seconds = time.perf_counter() - t0
            say(f"{spec} {alg}: kept k={best} as model {model_id} (labelled in {seconds:.1f} s)")
            for r in rows:
                if r["k"] == best:
                    r["model_id"] = model_id
                    r["seconds"] = round(r["seconds"] + seconds, 3)
            kept.append({"model_id": model_id, "descriptor": spec, "algorithm": alg, "k": best,
                         "labels": lab_np, "n": int(model.clusterer.n_clusters_)})
            runs.extend(rows)

    # outliers, as labelled (the labels on disk)
    from .labels import read_labels

    for m in kept:
        f = read_labels(labels_dir, model=m["model_id"],
                        columns=["row", "cluster", "is_outlier"]).sort_values("row")
        m["flags"] = f["is_outlier"].to_numpy(bool)
        assert np.array_equal(f["cluster"].to_numpy(), m["labels"]), "labels on disk differ"
        for r in runs:
            if r["model_id"] == m["model_id"]:
                r["outlier_share"] = float(m["flags"].mean())

    # agreement and contingency of every pair of kept models (all rows)
    (out / "contingency").mkdir(exist_ok=True)
    agreement = []
    for i, a in enumerate(kept):
        for b in kept[i + 1:]:
            from .numerics.agreement import outlier_jaccard

            t = contingency(a["labels"], b["labels"], a["n"], b["n"])
            agreement.append({"model_a": a["model_id"], "model_b": b["model_id"],
                              "ari": adjusted_rand(t), "ami": adjusted_mutual_info(t),
                              "outlier_jaccard": outlier_jaccard(a["flags"], b["flags"])})
            ct = pd.DataFrame(t[:-1, :-1], index=pd.Index(range(a["n"]), name=a["model_id"]),
                              columns=[str(c) for c in range(b["n"])])
            ct.to_csv(out / "contingency" / f"{a['model_id']}__{b['model_id']}.csv")

    # every kept partition in every spec's reduced space
    cross = []
    for spec, (_, z) in spaces.items():
        cache = {}  # the space's silhouette sample distances, once for every kept partition
        for m in kept:
            s = evaluate_partition(z, _aligned(m["labels"], z), n_clusters=m["n"],
                                   silhouette_sample=2_000, random_state=params.seed,
                                   cache=cache)
            cross.append({"model_id": m["model_id"], "model_descriptor": m["descriptor"],
                          "algorithm": m["algorithm"], "k": m["k"], "space": spec,
                          "calinski_harabasz": s["calinski_harabasz"],
                          "davies_bouldin": s["davies_bouldin"], "silhouette": s["silhouette"]})
        say(f"cross metrics: every kept partition scored in {spec}'s space")

    runs_f = pd.DataFrame(runs, columns=RUNS_COLUMNS)
    agree_f = pd.DataFrame(agreement, columns=AGREEMENT_COLUMNS)
    cross_f = pd.DataFrame(cross)
    _write_csv(runs_f, out / "runs.csv")
    _write_csv(agree_f, out / "agreement.csv")
    _write_csv(cross_f, out / "cross_metrics.csv")
    proposal = propose(kept, cross_f, agree_f)
    (out / "proposal.json").write_text(json.dumps(proposal, indent=1))
    summary = {"store": str(store.path), "rows": int(store.n_rows), "registry": str(registry),
               "labels": str(labels_dir), "out": str(out), "current": current,
               "kept": [{k: v for k, v in m.items() if k not in ("labels", "flags")}
                        for m in kept],
               "proposal": proposal, "store_reads": store_reads(log, store.n_rows),
               "seconds": round(time.perf_counter() - t_start, 1)}
    say("store reads (passes over each set's rows): " + ", ".join(
        f"{k} {v:g}" for k, v in summary["store_reads"].items()))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    try:
        from .report.compare_page import write_compare_page

        write_compare_page(out, store, spaces, kept, runs_f, agree_f, cross_f, proposal, params,
                           say=say)
    finally:
        for m in kept:
            m.pop("labels", None), m.pop("flags", None)
    return summary


def _write_csv(frame, path: Path):
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def propose(kept: list[dict], cross, agreement) -> dict:
    """The model to promote, by the rule of the module docstring, with the reasons."""
    if not kept:
        return {}
    ids = [m["model_id"] for m in kept]
    order = {m: i for i, m in enumerate(ids)}
    ch = cross.pivot(index="model_id", columns="space", values="calinski_harabasz").loc[ids]
    db = cross.pivot(index="model_id", columns="space", values="davies_bouldin").loc[ids]
    rank_ch = (-ch).rank(axis=0, method="min").mean(axis=1)
    rank_db = db.rank(axis=0, method="min").mean(axis=1)
    mean_ari = {}
    for m in ids:
        pairs = agreement[(agreement["model_a"] == m) | (agreement["model_b"] == m)]
        mean_ari[m] = float(pairs["ari"].mean()) if len(pairs) else 1.0
    import pandas as pd

    ari = pd.Series(mean_ari).loc[ids]
    rank_ari = (-ari).rank(method="min")
    score = (rank_ch.rank(method="min") + rank_db.rank(method="min") + rank_ari) / 3
    k_of = {m["model_id"]: m["k"] for m in kept}
    best = sorted(ids, key=lambda m: (score[m], k_of[m], order[m]))[0]
    info = next(m for m in kept if m["model_id"] == best)
    why = (f"model {best} ({info['descriptor']}, {info['algorithm']}, k={info['k']}): best mean "
           f"rank {score[best]:.2f} of {len(ids)} over CH across spaces (mean rank "
           f"{rank_ch[best]:.1f}), DB across spaces (mean rank {rank_db[best]:.1f}) and mean "
           f"ARI with the other kept models ({ari[best]:.3f})")
    return {"model_id": best, "descriptor": info["descriptor"], "algorithm": info["algorithm"],
            "k": info["k"], "why": why, "rule": "best mean of three ranks: CH across every "
            "spec's space, DB across them, mean ARI with the other kept models; ties: fewer "
            "clusters, then the order given",
            "scores": {m: {"mean_rank": float(score[m]), "ch_rank": float(rank_ch[m]),
                           "db_rank": float(rank_db[m]), "mean_ari": float(ari[m])}
                       for m in ids}}
