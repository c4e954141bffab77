"""How the worker processes of a LocalCluster that vclust starts come to be: forked from one
server process that has imported what every vclust worker imports, instead of each spawned as
a new interpreter that imports it all again (multiprocessing's "forkserver" start method,
which distributed supports through ``distributed.worker.multiprocessing-method``).

The server is started with the first such cluster of a process and serves every later one.
A forked worker holds what the server was started with in the places that are read once at
a process's start (the malloc settings and the thread counts of ``worker_environ()``,
PYTHONHASHSEED), so a later cluster forks from it only when its pre-spawn environment is the
same and no variable the server saw has been removed since; variables set or changed since
are handed to its workers (the nanny's ``env``). Otherwise, or when the user configured
another start method, workers start as configured. A worker restarted after its cluster
started (one killed, say) is spawned.

The test suite's eleven files with a LocalCluster fixture: 193 -> 157 s and 182 -> 146 s
wall, 367 -> 295 and 344 -> 273 CPU-s (two alternating pairs); `vclust ingest` of the 416k
case, three pairs, median 17.9 -> 15.8 s (benchmarks/RESULTS.md, 2026-12-05)."""

from __future__ import annotations

import multiprocessing
import os

#: what the server imports, in this order: vclust's worker set-up first, so that dask.array's
#: optional imports are refused in the server as in a spawned worker (worker_setup)
BASE_PRELOAD = ("vclust.jobs.worker_setup", "numpy", "dask.array", "distributed", "zarr")
#: what a worker imports at its first task where it scores outliers and writes labels: imported
#: once in the server instead of once in each worker. `vclust label` of 1,500 rows on a
#: LocalCluster of two workers, six alternating pairs: 8.2-10.4 -> 5.6-6.6 CPU-s
#: (benchmarks/RESULTS.md, 2026-12-05). A command whose workers never import them (ingest,
#: pixels, a fit: its index is built in the command's own process) does not wait for the
#: server to import them.
SCORING_PRELOAD = ("pandas", "pyarrow.parquet", "vclust.jobs.worker_index",
                   "vclust.numerics.outliers", "vclust.numerics.kmeans")
#: the same and umap-learn, for commands whose workers also draw maps: a report of 3,000 rows,
#: three rounds, 17.6-20.2 CPU-s with no preload, 16.8-17.0 with SCORING_PRELOAD, 15.4-16.3
#: with this (benchmarks/RESULTS.md, 2026-12-06)
MAPS_PRELOAD = SCORING_PRELOAD + ("vclust.jobs.worker_maps",)
#: the server's preload besides BASE_PRELOAD, by command (``preload_for``); `vclust run`'s
#: nightly job labels and reports
COMMAND_PRELOAD = {"label": SCORING_PRELOAD, "report": MAPS_PRELOAD, "compare": MAPS_PRELOAD,
                   "run": MAPS_PRELOAD}


#: map methods whose workers never import umap-learn (``preload_for``)
NO_UMAP_MAPS = ("pca", "tsne")


def preload_for(command: str | None, map_method: str | None = None) -> tuple:
    """What the server of ``command``'s LocalCluster imports besides BASE_PRELOAD. A report or
    compare whose map is asked for as PCA or t-SNE (``map_method``) leaves umap-learn out (a
    3,000-row report: 0.2-1.9 CPU-s less in three pairs, benchmarks/RESULTS.md); "auto" may
    choose UMAP."""
    preload = COMMAND_PRELOAD.get(command, ())
    if map_method in NO_UMAP_MAPS and preload == MAPS_PRELOAD:
        return SCORING_PRELOAD
    return preload


_server: dict = {}  # the pre-spawn environment and os.environ the server was started with


def start_method(pre_spawn: dict, preload=()) -> tuple[str, dict]:
    """The start method for a new LocalCluster's workers, and the variables to hand them:
    ``("forkserver", {...})`` or ``(configured method, {})``. ``preload``: modules the server
    imports besides ``BASE_PRELOAD`` (only when this call starts it)."""
    import dask

    configured = dask.config.get("distributed.worker.multiprocessing-method")
    if configured != "spawn":  # the user chose one: theirs
        return configured, {}
    pre = {k: str(v) for k, v in pre_spawn.items()}
    if not _server:
        from distributed.utils import get_mp_context

        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
            get_mp_context()  # distributed sets its own server preload once; ours replaces it
        modules = list(dict.fromkeys(BASE_PRELOAD + tuple(preload)))
        multiprocessing.get_context("forkserver").set_forkserver_preload(modules)
        _server.update(pre=pre, environ={**os.environ, **pre})
        return "forkserver", {}
    if _server["pre"] != pre or any(k not in os.environ for k in _server["environ"] if k not in pre):
        return configured, {}
    return "forkserver", {k: v for k, v in os.environ.items()
                          if k not in pre and _server["environ"].get(k) != v}
