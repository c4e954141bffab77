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
   model (vclust.model.succession), is registered (*not* made current) and labels every row under
   ``model=<id>/`` in the labels dir through ``jobs.label``, from the reduced rows already in
   memory. The scorer's reference, index and scoring rows depend on the rows, not the
   clusters: they are made once per spec (``_spec_scorer``, on a thread beside the first
   algorithm's k-range) and every algorithm's scorer is fitted from them. A spec whose rows
   are clustered in this process (``jobs.in_process``)
   is labelled here too, on this process's threads: the outlier query of every row is the
   same for each algorithm, so the second and third find it in this process's memo
   (``refindex.NEIGHBOUR_MEMO``).
4. **Compare** (in ``--out``): ``runs.csv`` (one row per spec, algorithm, k), ``agreement.csv``
   (every pair of kept models: ARI and AMI over all rows, exact, from the contingency table;
   Jaccard of their outlier sets), ``contingency/<a>__<b>.csv``, ``cross_metrics.csv`` (every
   kept partition scored in every spec's reduced space: CH and DB are only comparable inside
   one space), ``proposal.json`` and the page ``index.html`` (vclust.report.compare_page).

The proposal rule (``propose``): each kept model is ranked (1) by its mean rank of CH across
the spaces in cross_metrics, (2) by its mean rank of DB across them, and (3) by its mean ARI
with the other kept models (a partition that other sets and algorithms also find is less an
artefact of one space); the best mean of the three ranks wins, ties to fewer clusters, then to
the order of the specs and algorithms given. CH, DB and mean ARI are compared to
``PROPOSAL_DIGITS`` significant digits: the same partition reached by two specs or algorithms
(ARI 1.0) scores the same but for its last bits, which follow the clusters' numbering and the
machine's kernels, and the tie rule decides between such models, not those bits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from .params import parse_spec

RUNS_COLUMNS = ["model_id", "descriptor", "algorithm", "k", "calinski_harabasz",
                "davies_bouldin", "silhouette", "identity_consistency", "outlier_share",
                "seconds"]
AGREEMENT_COLUMNS = ["model_a", "model_b", "ari", "ami", "outlier_jaccard"]


def _quiet(_msg):
    pass


def spec_names(params) -> list[str]:
    """Every descriptor set the specs of ``params`` name, once each, in order."""
    return list(dict.fromkeys(n for spec in params.descriptors for n in parse_spec(spec)))


def compare_here(store_path, params) -> str | None:
    """Why `vclust compare` may run in this process (vclust.jobs.steps.store_here: the rows of
    every set its specs name), or None."""
    from .steps import store_here

    return store_here(store_path, spec_names(params), "compared")


def check(store_path, params, registry=None, labels_dir=None):
    """The cheap checks before any cluster starts (one InputError line each): every set of
    every spec in the store, the k-range within the rows, the output folders usable."""
    from ..storage import fs as F
    from ..storage.store import Store

    if not F.as_path(str(store_path)).exists():  # a local path or an s3:// URL
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
        p = None if p is None else F.as_path(str(p))
        if p is not None and not isinstance(p, F.RemotePath) and p.exists() and not p.is_dir():
            raise InputError(f"{what} {p}: is a file; expected a folder")
    return store


# --------------------------------------------------------------------------- the model


def _held_model_class():
    from ..model.bundle import Model

    class HeldModel(Model):
        """A Model whose ``reduce`` returns rows already reduced and held in worker memory
        (the compare run's shared rows) instead of reducing the store's rows again, and whose
        ``assign`` returns the clusters and distances the run already computed
        (``held_labels``, in the model's numbering), and whose outlier score reads the scoring
        rows its spec projected once (``held_own``): labelling through ``jobs.label`` then reads
        no descriptor from the store and assigns no row twice. Saved like any Model."""

        held = None
        held_own = None  # the outlier scorer's own rows of every row (outlier_rows.Projected)
        held_labels = None  # (clusters, distances) of every row, numpy, as computed
        _offset = 0

        def apply(self, sets, row_offset=0, *args, **kwargs):
            self._offset = int(row_offset)
            return super().apply(sets, row_offset, *args, **kwargs)

        def scoring_input(self, sets):
            if self.held_own is None:
                return super().scoring_input(sets)
            from ..numerics.outlier_rows import Projected

            n = next(iter(sets.values())).shape[0]
            return Projected(self.held_own.rows[self._offset:self._offset + n])

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

    from ..storage.rawrows import RawRows

    arr = store.array(name)
    x = da.from_array(RawRows.of(arr) or arr, chunks=arr.chunks, name=f"vclust-read-{name}-"
                      + tokenize(str(store.path), name, arr.shape, store.ledger),
                      getitem=functools.partial(_counting_getter, str(log), name),
                      meta=np.empty((0, 0), arr.dtype))
    return x[:store.n_rows]


def store_reads(log, n_rows: int) -> dict:
    """{set: passes over its rows} from the read log (1.0: every row read once)."""
    counts: dict[str, int] = {}
    if Path(log).exists():
        for line in Path(log).read_text().splitlines():
            name, a, b = line.split()
            counts[name] = counts.get(name, 0) + int(b) - int(a)
    return {k: round(v / n_rows, 3) for k, v in counts.items()}


def raw_budget() -> int:
    """Bytes of the rows as given that a compare run keeps in memory (``blocks.memory_budget``)."""
    from ..numerics.blocks import memory_budget

    return memory_budget()


def _reduce_sets(store, names, params, log, say):
    """({name: (Preprocessor, reduced rows held)}, {name: rows as given}): each set read once
    (see module docstring). The rows as given, from which each spec's outlier scorer fits its
    own projection (as `vclust fit` scores), stay in worker memory for the sets that fit
    there together (the smaller first, within ``memory_budget``); the others are read again
    from the store when a spec's scorer is prepared and its scoring rows projected."""
    from .fit import SCALINGS, MAX_COMPONENTS, hold_reduced, hold_sets
    from ..numerics.preprocess import Preprocessor

    l2, standardize = SCALINGS[params.scaling]
    out, raw = {}, {}
    budget, keep = raw_budget(), set()
    for name in sorted(names, key=lambda n: store.dims[n]):  # the smaller sets held first
        if store.n_rows * store.dims[name] * 4 <= budget:
            keep.add(name)
            budget -= store.n_rows * store.dims[name] * 4
    for name in names:
        t0 = time.perf_counter()
        x = hold_sets({name: read_set(store, name, log)}, say)[name]
        pre = Preprocessor(l2=l2, standardize=standardize, pca_variance=params.pca_variance,
                           max_components=MAX_COMPONENTS,
                           random_state=params.seed).fit(x)
        z = hold_reduced(pre.transform(x), say)
        raw[name] = x if name in keep else read_set(store, name, log)
        del x
        say(f"{name}: {pre.n_components_} components keep "
            f"{float(np.sum(pre.explained_variance_ratio_)):.3f} of the variance"
            f"{pre.sampled_note(store.n_rows)} ({time.perf_counter() - t0:.1f} s)")
        out[name] = (pre, z)
    return out, raw


def _space(spec, reduced, say):
    """(preprocess, held rows) of a spec: one set's own, or a mixture of reduced sets."""
    import dask.array as da

    from .fit import hold_reduced
    from ..numerics.preprocess import MixturePreprocessor

    weights = parse_spec(spec)
    if len(weights) == 1:
        return reduced[next(iter(weights))]
    mix = MixturePreprocessor({n: reduced[n][0] for n in weights}, weights).fitted()
    z = da.concatenate([reduced[n][1] * np.float32(mix.weights_[n]) for n in weights], axis=1)
    return mix, hold_reduced(z.rechunk({1: -1}), say)


def _fits_ahead(alg, X, params) -> dict:
    """{k: future of the fitted clusterer} for every k of a sample-fitted algorithm whose fits
    are independent of each other (gmm), submitted to the workers at once: they run side by side
    while this process scores the k before. The same sample and the same fit as
    ``fit_algorithm`` (a test checks). Empty without a distributed client, or for others."""
    from ..numerics.blocks import distributed_client, sample_rows

    client = distributed_client() if alg == "gmm" and len(params.ks) > 1 else None
    if client is None:
        return {}
    from ..numerics.algorithms import fit_gmm

    sample, _ = sample_rows(X, params.fit_sample, params.seed, stream=21)
    handle = client.scatter(np.asarray(sample, np.float64), broadcast=True)
    return {k: client.submit(fit_gmm, handle, k, params.seed, pure=False) for k in params.ks}


# --------------------------------------------------------------------------- the run


def compare(store_path, params, registry, labels_dir, say=_quiet) -> dict:
    """Run the comparison (module docstring); returns the summary (also ``summary.json``)."""
    import threading

    import pandas as pd

    from ..model import succession
    from ..model.bundle import Model
    from ..model.registry import Registry
    from ..numerics.blocks import one_blas_thread
    from ..numerics.outliers import warm_up
    from ..report.content import identity_of
    from .steps import ids_read_once

    t_start = time.perf_counter()
    store = check(store_path, params, registry, labels_dir)
    out = Path(params.out)
    out.mkdir(parents=True, exist_ok=True)
    reg = Registry(registry)
    current = reg.current()
    prev = None
    if current is not None:
        prev = (Model.load(reg.path(current)), succession.previous_labels(labels_dir, current))
        if prev[1] is None:
            prev = None
            say(f"the current model {current} has no labels in {labels_dir}: the models kept "
                "keep their own numbering (vclust promote renumbers later)")
    # the image folders as integer codes, once: identity_consistency counts codes fast
    groups = pd.factorize(identity_of(store.ids().astype(str)))[0] \
        if params.identity == "parent" else None
    names = spec_names(params)
    say(f"compare: {store.n_rows:,} rows; sets {', '.join(names)}; specs "
        f"{', '.join(params.descriptors)}; algorithms {', '.join(params.algorithms)}; "
        f"k {params.k_range}")
    # pynndescent compiles its kernels on a client thread while the workers reduce and cluster;
    # it is imported here first: two threads importing at once can see a module half made
    # (vclust.jobs.imports; this thread imports scikit-learn meanwhile)
    from ..numerics.annindex import enable_numba_cache

    enable_numba_cache()
    warming = threading.Thread(target=warm_up, name="vclust-pynndescent-warm-up", daemon=True)
    warming.start()
    log = out / "reads.log"
    log.unlink(missing_ok=True)
    runs, kept = [], []
    # the models made here at the BLAS threads `vclust fit` makes them at (one, throughout):
    # a kept model is then the one `vclust fit` makes of its spec, algorithm and k, to the bit,
    # its outlier scores included (at two threads the reduction's and the scorer's products
    # and eigendecompositions summed in another order); the ids read once for all kept models
    with one_blas_thread(), ids_read_once():
        reduced, raw_sets = _reduce_sets(store, names, params, log, say)
        spaces = {spec: _space(spec, reduced, say) for spec in params.descriptors}
        for spec, (pre, z) in spaces.items():
            raw = {n: raw_sets[n] for n in parse_spec(spec)}
            for m, rows in _fit_spec(store, spec, pre, z, raw, params, registry, labels_dir,
                                     current, prev, groups, warming, say):
                kept.append(m)
                runs.extend(rows)
    _outliers_as_labelled(kept, runs, labels_dir)
    agree_f = _agreement(kept, out / "contingency")
    cross_f = _cross_metrics(spaces, kept, params, say)
    runs_f = pd.DataFrame(runs, columns=RUNS_COLUMNS)
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
        from ..report.compare_page import write_compare_page

        write_compare_page(out, store, spaces, kept, runs_f, agree_f, cross_f, proposal, params,
                           say=say)
    finally:
        for m in kept:
            m.pop("labels", None), m.pop("flags", None)
    return summary


def _fit_spec(store, spec, pre, z, raw, params, registry, labels_dir, current, prev, groups,
              warming, say):
    """Every algorithm of one spec through the fit core (vclust.model.core, as `vclust fit`),
    each kept model registered and labelling every row. Yields (kept entry, runs rows)."""
    import dask
    import dask.array as da

    from ..model import succession
    from ..model.core import build_model, fit_partition
    from ..model.registry import save_model
    from ..numerics.algorithms import AgglomerativeTree
    from ..numerics.blocks import is_dask, threads_get
    from ..numerics.metrics import identity_consistency
    from . import steps as jobs
    from .fit import in_process

    HeldModel = _held_model_class()
    names = list(parse_spec(spec))
    raw_in = raw[names[0]] if len(names) == 1 else raw
    # small spaces are clustered in this process, as `vclust fit` does (fit.in_process)
    local = in_process(z)
    if local is not None:
        say(f"{spec}: clustering in this process ({local.nbytes / 1e6:.0f} MB of rows)")
    cache, tree = {}, None  # the space's silhouette sample distances and Ward tree, once
    prepared = own = None  # the spec's outlier scorer, prepared, and its scoring rows
    # they depend on the spec's rows only: made on a thread of their own while the first
    # algorithm's k-range runs, which leaves part of the two cores idle (`vclust fit` prepares
    # its scorer beside its clustering the same way, to the same bits)
    scoring = _on_thread(lambda: (warming.join(), _spec_scorer(
        spec, raw_in, z, local, store.n_rows, params, say))[1])

    def identity(labels):
        return {"identity_consistency": None if groups is None
                else identity_consistency(labels, groups)["overall"]}

    for alg in params.algorithms:
        if alg == "agglomerative" and tree is None:
            tree = AgglomerativeTree(z if local is None else local, params.fit_sample,
                                     params.seed)
        part = fit_partition(z, alg, params.ks, local=local, sample_size=params.fit_sample,
                             seed=params.seed, say=lambda m: say(f"{spec} {alg} {m}"),
                             cache=cache,
                             extra=identity, ahead=_fits_ahead(alg, z if local is None else local,
                                                              params), tree=tree)
        rows = [{"model_id": "", "descriptor": spec, "outlier_share": None,
                 **{c: r[c] for c in RUNS_COLUMNS if c in r}} for r in part.table]
        t0 = time.perf_counter()
        if prepared is None:  # the spec's reference and scoring rows, once for every algorithm
            prepared, own = scoring.result()
        scorer = prepared.prepared_copy()  # fits its own clusters' terms
        fit_info = {"store": str(store.path), "descriptors": names, "spec": spec,
                    "k_tried": params.ks, "pca_variance": params.pca_variance,
                    "scaling": params.scaling, "sample": None, "seed": params.seed,
                    "by": "vclust compare"}
        model, lab_np, dist_np = build_model(names, pre, part, scorer, z, raw_in, store=store,
                                             fit_info=fit_info, model_class=HeldModel)
        if prev is not None:
            model, mapping = succession.renumber_against(
                model, prev[0], prev[1], np.arange(store.n_rows), lab_np)
            lab_np = np.array([mapping[c] for c in range(len(mapping))], np.int32)[lab_np]
        else:
            succession.identity_succession(model, current)
        model.held_labels = (lab_np.astype(np.int32), dist_np.astype(np.float32))
        _, model_id = save_model(model, registry=registry, make_current=False)
        model.held_own = own
        if not is_dask(own.rows):
            # rows held here are labelled here, on this process's threads, by the scorer and
            # index just fitted here: the outlier query of every row is the same for each
            # algorithm of the spec (it depends on the rows, not the clusters), and this
            # process keeps its answer (refindex.NEIGHBOUR_MEMO) for the next one
            model.held = da.from_array(local, chunks=(z.chunks[0], -1))
            with dask.config.set(scheduler=threads_get):
                jobs.label(store.path, model, labels_dir, all_batches=True)
        else:
            model.held = z
            jobs.label(store.path, model, labels_dir, all_batches=True)
        model.held = model.held_own = model.held_labels = None
        seconds = time.perf_counter() - t0
        say(f"{spec} {alg}: kept k={part.k} as model {model_id} (labelled in {seconds:.1f} s)")
        for r in rows:
            if r["k"] == part.k:
                r["model_id"] = model_id
                r["seconds"] = round(r["seconds"] + seconds, 3)
        yield ({"model_id": model_id, "descriptor": spec, "algorithm": alg, "k": part.k,
                "labels": lab_np, "n": int(model.clusterer.n_clusters_)}, rows)


def _on_thread(fn):
    """``fn()`` started on a daemon thread (a command that fails meanwhile exits without waiting
    for it); its future (``result()`` re-raises)."""
    import threading
    from concurrent.futures import Future

    done = Future()

    def run():
        try:
            done.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
            done.set_exception(exc)

    threading.Thread(target=run, name="vclust-spec-scorer", daemon=True).start()
    return done


def _spec_scorer(spec, raw, z, local, n, params, say):
    """(an outlier scorer of the spec's rows, ``prepare``d, as `vclust fit` fits one; its
    scoring rows of every row, ``outlier_rows.Projected``). Neither depends on the clusters, so
    every algorithm of the spec fits a copy of the one scorer and scores the one set of rows:
    the rows as given are read for them once per spec, not once per kept model. The scoring
    rows are numpy in this process when the spec is clustered here (``local``) and they fit
    ``IN_PROCESS_BYTES``; else held in worker memory."""
    from ..numerics.outlier_rows import Projected, project_all
    from ..numerics.outliers import OutlierScorer
    from ..storage import indexcache
    from .fit import hold_reduced, in_process

    t0 = time.perf_counter()
    scorer = OutlierScorer(random_state=params.seed, threshold_rows="reference",
                           **params.outlier_options).prepare(raw, n, cache=indexcache)
    rows = project_all(scorer.projection_, raw, z.chunks[0])
    here = in_process(rows) if local is not None else None
    own = Projected(here if here is not None else hold_reduced(rows))
    say(f"{spec}: outlier reference and scoring rows ({own.shape[1]} dimensions) prepared once "
        f"for every algorithm ({time.perf_counter() - t0:.1f} s)")
    return scorer, own


def _outliers_as_labelled(kept, runs, labels_dir):
    """Each kept model's outlier flags as labelled (the labels on disk), into ``kept`` and
    ``runs``' outlier_share."""
    from ..storage.labels import read_labels

    for m in kept:
        f = read_labels(labels_dir, model=m["model_id"],
                        columns=["row", "cluster", "is_outlier"]).sort_values("row")
        m["flags"] = f["is_outlier"].to_numpy(bool)
        if not np.array_equal(f["cluster"].to_numpy(), m["labels"]):
            raise RuntimeError(f"labels of model {m['model_id']} on disk differ from its fit")
        for r in runs:
            if r["model_id"] == m["model_id"]:
                r["outlier_share"] = float(m["flags"].mean())


def _agreement(kept, folder: Path):
    """Agreement of every pair of kept models (all rows), their contingency tables in
    ``folder``."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    from ..numerics.agreement import (adjusted_mutual_info, adjusted_rand, contingency,
                                      outlier_jaccard)

    folder.mkdir(exist_ok=True)
    pairs = [(a, b, contingency(a["labels"], b["labels"], a["n"], b["n"]))
             for i, a in enumerate(kept) for b in kept[i + 1:]]
    # the AMIs side by side: their log-gamma sums release the GIL (153 pairs of 416,314 rows:
    # 7.0 s one after another, 3.2 s on two threads); a pool of its own, as contingency and
    # outlier_jaccard run on run_local's
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        amis = list(pool.map(lambda p: adjusted_mutual_info(p[2]), pairs))
    agreement = []
    for (a, b, t), ami in zip(pairs, amis):
        agreement.append({"model_a": a["model_id"], "model_b": b["model_id"],
                          "ari": adjusted_rand(t), "ami": ami,
                          "outlier_jaccard": outlier_jaccard(a["flags"], b["flags"])})
        ct = pd.DataFrame(t[:-1, :-1], index=pd.Index(range(a["n"]), name=a["model_id"]),
                          columns=[str(c) for c in range(b["n"])])
        ct.to_csv(folder / f"{a['model_id']}__{b['model_id']}.csv")
    return pd.DataFrame(agreement, columns=AGREEMENT_COLUMNS)


def _cross_metrics(spaces, kept, params, say):
    """Every kept partition scored in every spec's reduced space."""
    import pandas as pd

    from ..numerics.metrics import evaluate_partitions

    cross = []
    for spec, (_, z) in spaces.items():
        cache = {}  # the space's silhouette sample distances, once for every kept partition
        # every kept partition in two passes over the space's rows (two round trips to the
        # workers, not two each), their labels as numpy (the silhouette's rows taken here)
        scores = evaluate_partitions(z, [m["labels"] for m in kept], [m["n"] for m in kept],
                                     silhouette_sample=2_000, random_state=params.seed,
                                     cache=cache)
        for m, s in zip(kept, scores):
            cross.append({"model_id": m["model_id"], "model_descriptor": m["descriptor"],
                          "algorithm": m["algorithm"], "k": m["k"], "space": spec,
                          "calinski_harabasz": s["calinski_harabasz"],
                          "davies_bouldin": s["davies_bouldin"], "silhouette": s["silhouette"]})
        say(f"cross metrics: every kept partition scored in {spec}'s space")
    return pd.DataFrame(cross)


def _write_csv(frame, path: Path):
    from ..storage.atomic import replace_with

    replace_with(path, lambda tmp: frame.to_csv(tmp, index=False))


#: significant digits to which ``propose`` compares CH, DB and mean ARI (module docstring)
PROPOSAL_DIGITS = 9


def _to_digits(values):
    """``values`` (a pandas frame or series of floats) rounded to PROPOSAL_DIGITS significant
    digits, so that scores equal but for their last bits rank as ties."""
    return values.map(lambda v: float(f"{v:.{PROPOSAL_DIGITS}g}"))


def propose(kept: list[dict], cross, agreement) -> dict:
    """The model to promote, by the rule of the module docstring, with the reasons."""
    if not kept:
        return {}
    ids = [m["model_id"] for m in kept]
    order = {m: i for i, m in enumerate(ids)}
    ch = cross.pivot(index="model_id", columns="space", values="calinski_harabasz").loc[ids]
    db = cross.pivot(index="model_id", columns="space", values="davies_bouldin").loc[ids]
    rank_ch = (-_to_digits(ch)).rank(axis=0, method="min").mean(axis=1)
    rank_db = _to_digits(db).rank(axis=0, method="min").mean(axis=1)
    mean_ari = {}
    for m in ids:
        pairs = agreement[(agreement["model_a"] == m) | (agreement["model_b"] == m)]
        mean_ari[m] = float(pairs["ari"].mean()) if len(pairs) else 1.0
    import pandas as pd

    ari = pd.Series(mean_ari).loc[ids]
    rank_ari = (-_to_digits(ari)).rank(method="min")
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
