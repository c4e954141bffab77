"""vclust command line: parses, calls the library, turns known errors into exit code 2.

Each command's step options come from the parameter table (vclust.jobs.params); what is declared
here is only what is not a step option: the store, the model or registry a command reads or
writes, and where to compute. Heavy modules are imported inside the commands.

Exit codes (vclust.errors): 0 done; 2 bad input or usage (one line on stderr, nothing changed);
3 drift alert (nightly job); 4 an environment fault (disk full, read-only, scheduler unreachable
or lost: one line saying what was kept and what to do); 1 an internal fault (with its
traceback). ``--debug`` prints the traceback of exits 2 and 4 too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback

from . import __version__
from .errors import (DISK_FULL, EXIT_ENVIRONMENT, EXIT_FAULT, EXIT_INPUT, NOT_WRITABLE,
                     EnvironmentFault, InputError)
from .jobs.params import (CompareParams, DemoParams, ExportParams, FitParams, IngestParams,
                     LabelParams, PixelsParams, PromoteParams, ReportParams, SynthParams,
                     add_options, params_from_args)

log = logging.getLogger("vclust")


class Reporter:
    """What the user sees: steps with elapsed time on stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str):
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def print_table(rows: list[dict], cols: list[str] | None = None, file=sys.stdout):
    """A plain right-aligned table (floats to 4 significant digits)."""
    if not rows:
        return
    cols = cols or list(rows[0])

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)), file=file)
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)), file=file)


def print_metrics(model, file=sys.stdout):
    """The k-range table and the reading of each cluster of a fitted model."""
    print("k-range table (CH higher is better, DB lower is better):", file=file)
    print_table(model.info["metrics"], ["k", "algorithm", "calinski_harabasz", "davies_bouldin",
                                        "silhouette", "within_ss"], file=file)
    print(f"chosen k = {model.info['chosen_k']}", file=file)
    rows = [{**c, "examples": ", ".join(c["examples"][:2])} for c in model.info["clusters"]]
    print("clusters (examples: the unflagged images nearest each centre):", file=file)
    print_table(rows, ["cluster", "size", "share", "outlier_share", "mean_distance", "examples"],
                file=file)


def _connect(args, say, here=None, paths=None):
    from .jobs import imports, workerstart
    from .jobs.cluster import connect

    if here is None or args.scheduler or args.cluster or os.environ.get("VCLUST_SCHEDULER"):
        imports.wait()  # distributed enters dask from elsewhere than dask.array: not at once
    return connect(args.scheduler, args.cluster, announce=say, here=here, paths=paths,
                   timeout=getattr(args, "scheduler_timeout", None),
                   preload=workerstart.preload_for(args.command, vars(args).get("map_method")))


# --------------------------------------------------------------------------- commands


def cmd_synth(args, say):
    from .synth import generate_case

    p = params_from_args(SynthParams, args)

    def progress(done, total):
        say(f"synth: {done}/{total} rows")

    summary = generate_case(p.out, n_rows=p.rows, seed=p.seed, progress=progress)
    say(f"synthetic case written to {p.out}")
    print(json.dumps(summary, indent=2, default=str))


def cmd_ingest(args, say):
    from .jobs import steps as jobs

    p = params_from_args(IngestParams, args)
    jobs.check_sources(p)  # the cheap checks before starting a cluster
    with _connect(args, say, here=jobs.ingest_here(p)):
        summary = jobs.ingest(args.store, p, say=say)
    print(json.dumps(summary))


def cmd_info(args, say):
    from .storage.store import Store

    info = Store.open(args.store).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"store      {info['path']} ({info['format']})")
    print(f"rows       {info['rows']}   chunk rows {info['chunk_rows']}   "
          f"compression {info['compression']}   "
          f"on disk {info['bytes_on_disk'] / 1e6:.1f} MB")
    print("descriptors " + ", ".join(f"{k} ({v} dims)" for k, v in info["descriptors"].items()))
    print("batches:")
    rows = [{**b, "pixels": "-" if b.get("pixels") is None else f"{b['pixels']} readable"}
            for b in info["batches"]]
    print_table(rows, ["id", "rows", "start", "stop", "dropped", "created", "pixels"])


def _prefetch(*modules):
    """Import ``modules`` on vclust's one import thread (jobs.imports) while the command opens
    its inputs: dask.array is slow to import, and the store's first reads wait on the disk."""
    from .jobs import imports

    imports.background(*modules)


def cmd_fit(args, say):
    from .jobs import steps as jobs
    from .model.registry import check_registry

    # zarr first (the read needs it), then dask.array (the rows go on as a dask array)
    _prefetch("zarr", "dask.array", "vclust.numerics.preprocess", "vclust.numerics.algorithms",
              "vclust.numerics.metrics", "vclust.numerics.drift")
    p = params_from_args(FitParams, args)
    if args.model is not None:  # a model is never overwritten: say so before the work
        from .storage.fs import as_path

        if as_path(str(args.model)).exists():
            raise InputError(f"{args.model}: exists; models are never overwritten, pick a new "
                             "--model path")
    else:  # the registry usable, before the work too
        check_registry(args.registry)
    with _connect(args, say, here=jobs.fit_here(args.store, p), paths={"store": args.store}):
        model = jobs.fit(args.store, p, say=say)
    path, model_id = jobs.save_model(model, args.model, args.registry)
    print_metrics(model)
    say(f"model {model_id} saved to {path}")


def cmd_label(args, say):
    from .jobs import steps as jobs

    p = params_from_args(LabelParams, args)
    jobs.check_labels_out(args.out)  # the cheap checks first, all before a cluster starts
    model = jobs.resolve_model(args.model, args.registry)
    with _connect(args, say, here=jobs.label_here(args.store, model, p.batches, p.all),
                  paths={"store": args.store, "--out": args.out}):
        summary = jobs.label(args.store, model, args.out, batches=p.batches,
                             all_batches=p.all, say=say, params=p)
    print(json.dumps(summary))


def cmd_pixels(args, say):
    from .jobs import steps as jobs

    p = params_from_args(PixelsParams, args)
    jobs.check_pixels(args.store, p)  # the cheap checks before starting a cluster
    with _connect(args, say, here=jobs.pixels_here(args.store, p)):
        summary = jobs.pixels(args.store, p, say=say)
    print(json.dumps(summary))


def cmd_export(args, say):
    from .storage.export import export_csv

    p = params_from_args(ExportParams, args)
    model = args.model
    if model is None and args.registry:
        from .model.registry import Registry

        model = Registry(args.registry).current()
    n = export_csv(args.labels_dir, p.csv, model=model, names=p.names)
    say(f"wrote {n} rows to {p.csv}")


def cmd_report(args, say):
    from .jobs import steps as jobs
    from .jobs.staged import check_out, write_report_whole
    from .report import open_inputs

    p = params_from_args(ReportParams, args)
    model = jobs.resolve_model(args.model, args.registry)
    inputs = open_inputs(model, p)  # the cheap checks before starting a cluster
    check_out(p.out)  # the report is written beside --out, then swapped in whole
    with _connect(args, say, here=jobs.store_here(args.store, model.descriptors, "reported")):
        write_report_whole(args.store, model, args.labels, p, say=say, inputs=inputs)
    print(f"{p.out}/index.html")


def cmd_compare(args, say):
    from .jobs.compare import check, compare, compare_here

    p = params_from_args(CompareParams, args)
    check(args.store, p, args.registry, args.labels)  # the cheap checks before a cluster starts
    with _connect(args, say, here=compare_here(args.store, p)):
        summary = compare(args.store, p, args.registry, args.labels, say=say)
    print_table(summary["kept"], ["model_id", "descriptor", "algorithm", "k"])
    prop = summary["proposal"]
    print(f"proposed: {prop['why']}")
    print(f"rule: {prop['rule']}")
    print(f"promote it with: vclust promote --registry {args.registry} {prop['model_id']}")
    print(f"{p.out}/index.html")


def cmd_promote(args, say):
    from .model.succession import promote

    p = params_from_args(PromoteParams, args)
    result = promote(args.registry, p.model_id, labels_dir=args.labels, names=p.names, say=say)
    print(json.dumps(result))


def cmd_run(args, say):
    from .jobs.runner import run_job

    return run_job(args.job, overrides=args.set, dry_run=args.dry_run,
                   scheduler=args.scheduler, cluster_file=args.cluster, say=say,
                   timeout=args.scheduler_timeout)


def cmd_demo(args, say):
    from .jobs.runner import run_demo

    p = params_from_args(DemoParams, args)
    return run_demo(p, scheduler=args.scheduler, cluster_file=args.cluster, say=say,
                    timeout=args.scheduler_timeout)


# --------------------------------------------------------------------------- parser


def _add_cluster_args(p):
    g = p.add_argument_group("where to compute")
    g.add_argument("--cluster", metavar="FILE", help="cluster config (cluster_configs/*.yaml)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running Dask scheduler (also $VCLUST_SCHEDULER); with "
                        "neither this nor --cluster, a LocalCluster sized to the machine, or "
                        "this process's threads for small inputs (it says which)")
    g.add_argument("--scheduler-timeout", type=float, metavar="SECONDS",
                   help="how long to wait for the scheduler at --scheduler before giving up with "
                        "exit 4 (also $VCLUST_SCHEDULER_TIMEOUT or the config key 'timeout'; "
                        "default 5)")


def _add_model_source(p):
    """The model a command reads: a folder, or an id (default: current) in a registry."""
    _path_option(p, "--model", "model folder, or a model id in --registry (default: its "
                 "current model)", metavar="MODEL_DIR|ID")
    _path_option(p, "--registry", "model registry (a path or an s3:// URL)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vclust", allow_abbrev=False,
        description="Cluster and screen image descriptors at scale, out of core, on Dask.",
        epilog="STORE, LABELS_DIR and registry DIRs may be s3://bucket/prefix URLs (credentials "
               "and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, "
               "AWS_DEFAULT_REGION). Exit codes: 0 done; 2 bad input or usage (one line, nothing changed); "
               "3 drift alert (nightly job); 4 environment fault: disk full, read-only, "
               "scheduler unreachable or lost (one line: what was kept, what to do); "
               "1 internal fault (traceback). docs/faults.md lists the faults tried.",
    )
    p.add_argument("--version", action="version", version=f"vclust {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("-v", "--verbose", action="store_true", help="library log messages too")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of every error, not only of internal faults")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(sub)
    _model_commands(sub)
    _job_commands(sub)
    for command in sub.choices.values():  # `fit --out DIR` is refused, not taken for --outlier-z
        command.allow_abbrev = False
    return p


def _path_option(p, flag, help, required=False, metavar=None):
    """The options naming a place, each spelled once: --model, --registry, --labels."""
    metavar = metavar or {"--model": "MODEL_DIR", "--registry": "DIR",
                          "--labels": "LABELS_DIR"}[flag]
    p.add_argument(flag, required=required, metavar=metavar, help=help)


def _data_commands(sub):
    """synth, ingest, info, pixels: the store and what is beside it."""
    s = sub.add_parser("synth", help="write a synthetic case laid out like the real delivery")
    add_options(s, SynthParams)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("ingest", help="append descriptor files or a case folder to a store as one batch")
    s.add_argument("store", metavar="STORE", help="Zarr store: a path or an s3://bucket/prefix "
                   "URL (created if missing; README: Object store)")
    add_options(s, IngestParams)
    _add_cluster_args(s)
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("info", help="describe a store: rows, descriptor sets, batches")
    s.add_argument("store", metavar="STORE")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("pixels", help="per-image pixel statistics (readable, size, brightness, "
                       "exposure, sharpness, colourfulness) of batches, from the zip or folder, "
                       "stored beside the descriptors")
    s.add_argument("store", metavar="STORE")
    add_options(s, PixelsParams)
    _add_cluster_args(s)
    s.set_defaults(func=cmd_pixels)


def _model_commands(sub):
    """fit, label, export, report, compare, promote: models and what they make."""
    s = sub.add_parser("fit", help="fit preprocessing, clusters and outlier scoring on a store",
                       description="Fit preprocessing, clusters and outlier scoring on the "
                       "store's rows. With no --scheduler, --cluster or VCLUST_SCHEDULER, rows up "
                       "to a quarter of the free memory are fitted in this process (no "
                       "LocalCluster starts). The outlier threshold is fitted on a seeded sample of up to "
                       "20,000 rows; every row is scored when it is labelled. The outlier "
                       "reference index is kept in $VCLUST_CACHE_DIR/outlier-index (default "
                       "~/.cache/vclust; 'off' turns it off): a later fit of the same rows "
                       "restores it instead of building it again, with the same result.")
    s.add_argument("store", metavar="STORE")
    where = s.add_mutually_exclusive_group(required=True)
    _path_option(where, "--model", "write the model to this new folder")
    _path_option(where, "--registry", "register the model in DIR/models/<id> and make it "
                 "current (DIR: a path or an s3:// URL)")
    add_options(s, FitParams)
    _add_cluster_args(s)
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("label", help="apply a model to batches, writing partitioned Parquet labels",
                       description="Apply a model to batches of the store. With no --scheduler, "
                       "--cluster or VCLUST_SCHEDULER, batches of up to 8 GiB of descriptor "
                       "rows are labelled in this process (no LocalCluster starts).")
    s.add_argument("store", metavar="STORE")
    _add_model_source(s)
    s.add_argument("--out", required=True, metavar="LABELS_DIR",
                   help="labels dataset (model=<id>/batch=<id>/ partitions): a path or an "
                        "s3:// URL")
    add_options(s, LabelParams)
    _add_cluster_args(s)
    s.set_defaults(func=cmd_label)

    s = sub.add_parser("export", help="CSV of one model's labels: path (as delivered),image_id,"
                       "model,cluster,is_outlier,outlier_score,outlier_reason,outlier_reasons"
                       "[,cluster_name]")
    s.add_argument("labels_dir", metavar="LABELS_DIR")
    _path_option(s, "--model", "model id (default: the only one, or the registry's current)",
                 metavar="ID")
    _path_option(s, "--registry", "model registry, for its current model")
    add_options(s, ExportParams)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("report", help="the analysts' report: cards per cluster with their images,"
                       " outlier galleries, a 2D/3D map; opens from disk")
    s.add_argument("store", metavar="STORE")
    _add_model_source(s)
    _path_option(s, "--labels", "the labels written by vclust label", required=True)
    add_options(s, ReportParams)
    _add_cluster_args(s)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("compare", help="descriptor sets, mixtures and algorithms side by side:"
                       " every k fitted on shared reduced rows, the best per spec and algorithm "
                       "registered (not current) and labelled, agreement tables and a page")
    s.add_argument("store", metavar="STORE")
    _path_option(s, "--registry", "model registry: the kept models are registered, not made "
                 "current", required=True)
    _path_option(s, "--labels", "labels dataset: every kept model labels every row "
                 "(model=<id>/)", required=True)
    add_options(s, CompareParams)
    _add_cluster_args(s)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("promote", help="make a registered model current, its clusters numbered "
                       "to continue the current model's (names carried with --names)")
    _path_option(s, "--registry", "model registry", required=True)
    _path_option(s, "--labels", "labels of both models, needed when the model was not numbered "
                 "against the current model (vclust compare numbers its models so)")
    add_options(s, PromoteParams)
    s.set_defaults(func=cmd_promote)



def _job_commands(sub):
    """run, demo: several steps from a job spec."""
    s = sub.add_parser("run", help="run a job spec (jobs/*.yaml)")
    s.add_argument("job", metavar="JOB.yaml")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set fit.k=8 (repeatable)")
    s.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (steps, store, model, cluster) and stop")
    _add_cluster_args(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("demo", help="synth, ingest, pixels, fit, label, export and report a sample "
                       "case")
    add_options(s, DemoParams)
    _add_cluster_args(s)
    s.set_defaults(func=cmd_demo)


def _setup_logging(verbose: bool, debug: bool = False):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vclust: %(message)s"))
    root = logging.getLogger("vclust")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    # a failed task reaches the user as vclust's one line (exit 2 or 4); distributed's own log of
    # it (with the task's traceback) only with -v or --debug
    quiet = logging.WARNING if verbose or debug else logging.CRITICAL
    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(quiet)
    if not (verbose or debug):  # distributed sets its levels from dask's config when imported,
        # here and in LocalCluster worker processes (which inherit the environment)
        import os

        os.environ.setdefault("DASK_LOGGING",
                              "{'distributed': 'critical', 'distributed.client': 'critical'}")


# What each command leaves when the environment fails it (every write is staged and renamed
# into place, or rolled back by the next writer: docs/faults.md).
KEPT = {
    "ingest": "the store keeps every committed batch (the unfinished append is rolled back by "
              "the next write)",
    "fit": "no model was written", "export": "the CSV was not written",
    "label": "batches labelled before the fault are kept whole; the batch in progress was not "
             "written",
    "report": "the store, model and labels are unchanged, and so is the report already in --out "
              "(a report is swapped in whole)",
    "compare": "models registered before the fault are kept (none made current); labels are "
               "kept whole",
    "promote": "the registry's current model is unchanged (it switches last), or the new one; "
               "the next promote undoes or completes this one (REGISTRY/promote.json)",
    "run": "steps finished before the fault are kept and recorded; the next run of the same "
           "batch resumes at the step in progress",
    "demo": "steps finished before the fault are kept; the step in progress wrote nothing",
    "synth": "the files of the case it was writing were removed"}


def _scheduler_lost(exc) -> bool:
    """The Dask scheduler (or the connection to it) went away mid-run."""
    import asyncio
    import concurrent.futures

    if isinstance(exc, (concurrent.futures.CancelledError, asyncio.CancelledError)):
        return True  # distributed's FutureCancelledError: the scheduler forgot our futures
    mod = type(exc).__module__ or ""
    if mod.startswith("distributed") and type(exc).__name__ in (
            "CommClosedError", "FutureCancelledError", "StreamClosedError", "ClosedClientError"):
        return True
    return mod.startswith("tornado") and type(exc).__name__ == "StreamClosedError"


def _object_store_error(exc) -> bool:
    """An error of the S3 client stack (endpoint unreachable mid-run, throttling, a 5xx)."""
    mod = type(exc).__module__ or ""
    return mod.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs"))


def environment_line(exc, command: str) -> str | None:
    """The one line for an environment fault, or None when ``exc`` is not one."""
    kept = KEPT.get(command, "what was stored before the fault is kept")
    if isinstance(exc, EnvironmentFault):
        return f"{exc}; {exc.kept or kept}"
    if _object_store_error(exc):
        from .storage.fs import endpoint

        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        return (f"the object store {'at ' + endpoint() if endpoint() else '(AWS S3)'} failed "
                f"during {command} ({type(exc).__name__}: {detail}); {kept}; check it and "
                "AWS_ENDPOINT_URL, then run the command again")
    if _scheduler_lost(exc):
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        return (f"lost the Dask scheduler during {command} ({type(exc).__name__}: {detail}); "
                f"{kept}; restart the scheduler and its workers, then run the command again")
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"{DISK_FULL[exc.errno]}{where} ({exc.strerror}); {kept}; free space (or raise "
                "the limit), then run the command again")
    if isinstance(exc, OSError) and exc.errno in NOT_WRITABLE:
        where = f" {exc.filename}" if exc.filename else ""
        return (f"cannot write{where}: {NOT_WRITABLE[exc.errno]}; {kept}; run it where vclust "
                "may write (or fix the permission), then run the command again")
    return None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.debug)
    say = Reporter(args.quiet)
    try:
        if getattr(args, "cluster", None):  # its s3: key applies to the checks before connecting
            from .jobs.cluster import apply_s3
            from .jobs.config import load_cluster_config

            apply_s3(load_cluster_config(args.cluster))
        code = args.func(args, say)
        return int(code or 0)
    except InputError as exc:
        if args.debug:
            traceback.print_exc()
        line = " ".join(str(exc).split())
        print(f"vclust: error: {line}", file=sys.stderr)
        return EXIT_INPUT
    except (NotADirectoryError, IsADirectoryError) as exc:  # a path naming the wrong kind
        if args.debug:
            traceback.print_exc()
        kind = "a file" if isinstance(exc, NotADirectoryError) else "a folder"
        print(f"vclust: error: {exc.filename}: a path on the way is {kind}; expected "
              f"{'a folder' if kind == 'a file' else 'a file'} there: pick another path; nothing "
              "was changed", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("vclust: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`vclust info STORE | head`)
        _quiet_stdout()
        return 141  # as a command killed by SIGPIPE: 128 + 13
    except Exception as exc:
        line = environment_line(exc, args.command)
        if line is None:  # an internal fault: show everything
            traceback.print_exc()
            return EXIT_FAULT
        if args.debug:
            traceback.print_exc()
        print(f"vclust: error: {' '.join(line.split())}", file=sys.stderr)
        return EXIT_ENVIRONMENT


def _quiet_stdout():
    """Point stdout at /dev/null: what is still buffered for a closed pipe is dropped instead of
    failing again at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run() -> None:
    """The ``vclust`` script and ``python -m vclust``: ``main()`` (dask's imports of
    ``imports.NOT_IMPORTED`` refused), then out of the process.

    What the interpreter would run at exit runs here (flushing the output, the atexit handlers:
    logging's, distributed's), then the process ends with ``os._exit``, skipping the teardown of
    every module and object, a noticeable part of a short command's wall time
    (benchmarks/RESULTS.md, figures behind the code). Every command has finished its work,
    written and closed its files before ``main`` returns; the only threads left are idle pools
    and daemon threads."""
    import atexit
    import os

    from .jobs import imports
    imports.mark_not_imported()
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        code = code or 141
    except (OSError, ValueError):
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    finish = getattr(atexit, "_run_exitfuncs", None)
    if finish is None:  # pragma: no cover - an interpreter without it exits the usual way
        sys.exit(code)
    finish()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
