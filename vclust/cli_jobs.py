"""Commands that run the clustering jobs: fit, label, export, run, demo."""

from __future__ import annotations

import json
import sys

from .errors import InputError


def _connect(args, say):
    from .cli import _connect as connect  # one definition; cli is loaded before these run

    return connect(args, say)


def print_metrics(model, file=sys.stdout):
    from .cli import _print_table

    print("k-range table (CH higher is better, DB lower is better):", file=file)
    _print_table(model.info["metrics"], ["k", "algorithm", "calinski_harabasz", "davies_bouldin",
                                         "silhouette", "inertia"], file=file)
    print(f"chosen k = {model.info['chosen_k']}", file=file)
    rows = [{**c, "examples": ", ".join(c["examples"][:2])} for c in model.info["clusters"]]
    print("clusters (examples: the images nearest each centre):", file=file)
    _print_table(rows, ["cluster", "size", "share", "outlier_share", "mean_distance", "examples"],
                 file=file)


def cmd_fit(args, say):
    from . import jobs

    descriptors = jobs.parse_descriptors(args.descriptor)
    k_range = jobs.parse_k_range(args.k_range) if args.k_range else None
    outliers = jobs.outlier_options(args.outlier_z, args.contamination)
    with _connect(args, say):
        model = jobs.fit(args.store, descriptors, k=args.k, k_range=k_range,
                         algorithm=args.algorithm, pca_variance=args.pca_variance,
                         scaling=args.scaling, sample=args.sample, seed=args.seed,
                         outlier_options=outliers, say=say)
    path, model_id = jobs.save_model(model, args.model, args.registry)
    print_metrics(model)
    say(f"model {model_id} saved to {path}")


def cmd_label(args, say):
    from . import jobs

    if args.all and args.batch:
        raise InputError("pass either --batch or --all, not both")
    model = jobs.resolve_model(args.model, args.registry)
    with _connect(args, say):
        summary = jobs.label(args.store, model, args.out, batches=args.batch,
                             all_batches=args.all, say=say)
    print(json.dumps(summary))


def cmd_export(args, say):
    from .labels import export_csv

    model = args.model
    if model is None and args.registry:
        from .registry import Registry

        model = Registry(args.registry).current()
    n = export_csv(args.labels_dir, args.csv, model=model)
    say(f"wrote {n} rows to {args.csv}")


def cmd_run(args, say):
    from .runner import run_job

    return run_job(args.job, overrides=args.set, dry_run=args.dry_run,
                   scheduler=args.scheduler, cluster_file=args.cluster, say=say)


def cmd_demo(args, say):
    from .runner import run_demo

    return run_demo(args.out, rows=args.rows, seed=args.seed, scheduler=args.scheduler,
                    cluster_file=args.cluster, say=say)


def register(sub, add_cluster_args):
    """Add the job commands to the ``vclust`` parser."""
    s = sub.add_parser("fit", help="fit preprocessing, clusters and outlier scoring on a store")
    s.add_argument("store", metavar="STORE")
    s.add_argument("--descriptor", required=True, metavar="NAME[+NAME...]",
                   help="descriptor set, or a mixture: each set reduced, weighted to equal "
                        "variance, concatenated")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", metavar="MODEL_DIR", help="write the model to this new folder")
    where.add_argument("--registry", metavar="DIR",
                       help="register the model in DIR/models/<id> and make it current")
    ks = s.add_mutually_exclusive_group()
    ks.add_argument("--k", type=int, help="number of clusters (default 12)")
    ks.add_argument("--k-range", metavar="A:B",
                    help="fit every k in A..B, score each by Calinski-Harabasz, Davies-Bouldin "
                         "and silhouette, keep the best (see README: choosing k)")
    s.add_argument("--pca-variance", type=float, default=0.95,
                   help="share of variance the PCA keeps (default 0.95, see docs/preprocessing.md)")
    s.add_argument("--scaling", default="l2", choices=("l2", "standardize", "l2+standardize", "none"),
                   help="row/column scaling before PCA (default l2)")
    s.add_argument("--algorithm", default="kmeans",
                   help="kmeans (default), minibatch, gmm, bisecting, agglomerative, hdbscan")
    s.add_argument("--sample", type=int, help="fit on a seeded sample of N rows (labels still "
                   "cover every row)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    th = s.add_mutually_exclusive_group()
    th.add_argument("--outlier-z", type=float, default=3.5, metavar="Z",
                    help="is_outlier: combined outlier z above median + Z MAD over the fit rows "
                         "(default 3.5)")
    th.add_argument("--contamination", type=float, metavar="SHARE",
                    help="is_outlier: the SHARE most anomalous fit rows instead (e.g. 0.02)")
    add_cluster_args(s)
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("label", help="apply a model to batches, writing partitioned Parquet labels")
    s.add_argument("store", metavar="STORE")
    s.add_argument("--model", metavar="MODEL_DIR|ID",
                   help="model folder, or a model id in --registry (default: its current model)")
    s.add_argument("--registry", metavar="DIR", help="model registry")
    s.add_argument("--out", required=True, metavar="LABELS_DIR",
                   help="labels dataset (model=<id>/batch=<id>/ partitions)")
    s.add_argument("--batch", nargs="+", metavar="ID", help="batches to label")
    s.add_argument("--all", action="store_true", help="label every batch")
    add_cluster_args(s)
    s.set_defaults(func=cmd_label)

    s = sub.add_parser("export", help="CSV of one model's labels: path,cluster,is_outlier,outlier_score")
    s.add_argument("labels_dir", metavar="LABELS_DIR")
    s.add_argument("--csv", required=True, metavar="OUT.csv")
    s.add_argument("--model", metavar="ID", help="model id (default: the only one, or the "
                   "registry's current)")
    s.add_argument("--registry", metavar="DIR", help="model registry, for its current model")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("run", help="run a job spec (jobs/*.yaml)")
    s.add_argument("job", metavar="JOB.yaml")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set fit.k=8 (repeatable)")
    s.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (steps, store, model, cluster) and stop")
    add_cluster_args(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("demo", help="synth, ingest, fit, label and export a sample case end to end")
    s.add_argument("--rows", type=int, default=20_000, help="images in the sample case (default 20000)")
    s.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default demo-out)")
    s.add_argument("--seed", type=int, default=0)
    add_cluster_args(s)
    s.set_defaults(func=cmd_demo)
