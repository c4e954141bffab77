"""vclust command line: parses, calls the library, turns known errors into exit code 2.

Exit codes: 0 done; 2 bad input or usage (one line on stderr, nothing changed); 3 drift alert
(nightly job); 1 an internal fault (with its traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback

from . import __version__
from .errors import InputError

log = logging.getLogger("vclust")

EXIT_OK, EXIT_FAULT, EXIT_INPUT, EXIT_DRIFT = 0, 1, 2, 3


class Reporter:
    """What the user sees: steps with elapsed time on stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str):
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers


def _add_cluster_args(p):
    g = p.add_argument_group("where to compute")
    g.add_argument("--cluster", metavar="FILE", help="cluster config (cluster_configs/*.yaml)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running Dask scheduler (also $VCLUST_SCHEDULER); with "
                        "neither this nor --cluster, a LocalCluster sized to the machine")


def _connect(args, say):
    from .cluster import connect

    return connect(args.scheduler, args.cluster, announce=say)


def _print_table(rows: list[dict], cols: list[str] | None = None, file=sys.stdout):
    if not rows:
        return
    cols = cols or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)), file=file)
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)), file=file)


# --------------------------------------------------------------------------- commands


def cmd_synth(args, say):
    from .synth import generate_case

    if args.rows < 10:
        raise InputError(f"--rows must be at least 10; got {args.rows}")

    def progress(done, total):
        say(f"synth: {done}/{total} rows")

    summary = generate_case(args.out_dir, n_rows=args.rows, seed=args.seed, progress=progress)
    say(f"synthetic case written to {args.out_dir}")
    print(json.dumps(summary, indent=2, default=str))


def cmd_ingest(args, say):
    from pathlib import Path

    from .ingest import ingest

    for src in args.sources + ([args.ids] if args.ids else []):
        if not Path(src).exists():  # before starting a cluster: the cheap checks first
            raise InputError(f"{src}: no such file or folder")
    with _connect(args, say):
        summary = ingest(
            args.store, args.sources, name=args.name, ids_csv=args.ids, batch=args.batch,
            chunk_rows=args.chunk_rows, on_invalid=args.on_invalid,
            trust_pickle=args.trust_pickle, compression=args.compression, progress=say,
        )
    if summary["status"] == "unchanged":
        say(f"batch {summary['batch']} is already stored from the same sources: nothing changed")
    else:
        say(f"batch {summary['batch']}: {summary['rows']} rows stored "
            f"({summary['dropped']} dropped) in {', '.join(summary['descriptors'])}")
    print(json.dumps(summary))


def cmd_info(args, say):
    from .store import Store

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
    _print_table(info["batches"], ["id", "rows", "start", "stop", "dropped", "created"])


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vclust",
        description="Cluster and screen image descriptors at scale, out of core, on Dask.",
    )
    p.add_argument("--version", action="version", version=f"vclust {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.add_argument("-v", "--verbose", action="store_true", help="library log messages too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write a synthetic case laid out like the real delivery")
    s.add_argument("out_dir", metavar="OUT_DIR")
    s.add_argument("--rows", type=int, default=2000, help="images (default 2000)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("ingest", help="append descriptor files or a case folder to a store as one batch")
    s.add_argument("store", metavar="STORE", help="Zarr store path (created if missing)")
    s.add_argument("sources", metavar="SOURCE", nargs="+",
                   help="descriptor file (.pickle .npy .npz .parquet .csv) or a case folder")
    s.add_argument("--name", help="descriptor set name (one file only; default: the file's stem)")
    s.add_argument("--ids", metavar="CSV", help="image ids, one row per descriptor row "
                   "(column paths/path/id; default: the case's images_paths.csv or generated)")
    s.add_argument("--batch", metavar="ID", help="batch id (default: a UTC timestamp)")
    s.add_argument("--chunk-rows", type=int, default=None,
                   help="rows per Zarr chunk when the store is created (default 8192)")
    s.add_argument("--compression", choices=("none", "lz4", "zstd"), default=None,
                   help="descriptor chunk compression when the store is created (default none: "
                        "descriptors compress little and reads are twice as fast; lz4 or zstd "
                        "for slow shared storage)")
    s.add_argument("--on-invalid", choices=("error", "drop"), default="error",
                   help="rows with NaN/Inf: refuse the batch (default) or drop them, recording their ids")
    s.add_argument("--trust-pickle", action="store_true",
                   help="unpickle without restrictions (only for files you trust)")
    _add_cluster_args(s)
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("info", help="describe a store: rows, descriptor sets, batches")
    s.add_argument("store", metavar="STORE")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_info)

    _register_later_commands(sub)
    return p


def _register_later_commands(sub):
    """Commands whose modules are imported only when run (fit, label, export, run, demo)."""
    from . import cli_jobs

    cli_jobs.register(sub, _add_cluster_args)


def _setup_logging(verbose: bool):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vclust: %(message)s"))
    root = logging.getLogger("vclust")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.WARNING)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "chunk_rows", 0) is None:
        from .store import DEFAULT_CHUNK_ROWS

        args.chunk_rows = DEFAULT_CHUNK_ROWS
    _setup_logging(args.verbose)
    say = Reporter(args.quiet)
    try:
        code = args.func(args, say)
        return int(code or 0)
    except InputError as exc:
        line = " ".join(str(exc).split())
        print(f"vclust: error: {line}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("vclust: interrupted", file=sys.stderr)
        return 130
    except Exception:  # an internal fault: show everything
        traceback.print_exc()
        return EXIT_FAULT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
