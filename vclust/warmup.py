"""Fill numba's disk cache with the kernels vclust runs, once per install (``make install``).

pynndescent and umap-learn compile their numba kernels on first use in a process; vclust turns
numba's disk cache on for them (``vclust.numerics.annindex.enable_numba_cache``), so only the
first process on a machine pays the compilation. This module is that first process, run by the
install step instead of the user's first ``vclust fit`` or ``vclust report``. The kernels are
compiled for types, not sizes, so small data compiles what the real data runs.

Compilation is single-threaded, so the work is two processes side by side (two cores), each
compiling what the other does not:

  build   pynndescent's import (its kernels declared with signatures; the ones vclust never
          runs are left out: ``annindex.DEFERRED_KERNELS``), the NN-descent driver (by its
          signature: no build needed), builds on one, two and all threads as vclust and
          umap-learn run them, then the outlier scorer as `vclust fit` and `vclust label` run
          it (a sampled reference, past the size where pynndescent's forest takes other kernels)
  search  `vclust pixels`' luma and statistics kernels (vclust.numerics.pixel_kernels) and the
          Ward tree's merge loop (vclust.numerics.ward) while the build part imports
          pynndescent, then the forest an index is built from, and an index prepared,
          queried, saved and restored (search graph, search forest, search kernel), then
          umap-learn's 2D and 3D maps on their shared-graph path, of rows whose graph is one
          component and of rows whose graph is many (``map_rows``)

The search part needs built indexes but not the NN-descent kernels: its graphs are exact
neighbours from numpy, of the types NN-descent returns (the maps' graph too). The build part's
scorer waits until the search part's index is ready, and then loads those kernels from the
disk cache instead of compiling them a second time beside it; the search part waits for the
build part's import of pynndescent the same way.

    python -m vclust.warmup      # prints how long each part took
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PARTS = ("build", "search")


def warm(say=print) -> float:
    """Both parts, the search part in a child process. Returns the seconds taken."""
    from .numerics.annindex import enable_numba_cache

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vclust-warmup-") as tmp:
        ready = os.path.join(tmp, "search-index-ready")
        imported = os.path.join(tmp, "pynndescent-imported")
        child = subprocess.Popen([sys.executable, "-m", "vclust.warmup", "--part", "search",
                                  "--ready-file", ready, "--imported-file", imported])

        def search_index_ready():
            while not os.path.exists(ready) and child.poll() is None:
                time.sleep(0.05)

        try:
            # importing pynndescent compiles the kernels it declares with signatures: here,
            # into the disk cache, while the child compiles the pixel kernels (it then loads
            # them instead of compiling them on the other core at the same time)
            enable_numba_cache("pynndescent", "umap")
            open(imported, "w").close()
            warm_part("build", say, search_index_ready)
        except BaseException:
            child.kill()  # it may be waiting for the import that failed here
            raise
        finally:
            code = child.wait()
    if code:
        raise RuntimeError(f"the warm-up's search part failed (exit {code})")
    seconds = time.perf_counter() - t0
    say(f"warm-up: numba kernels ready ({seconds:.1f} s)")
    return seconds


def precompile_own() -> None:
    """vclust's own kernels (``pixels.precompile``, ``ward.precompile``) into numba's disk
    cache: the search part compiles them first."""
    from .numerics import pixels, ward

    pixels.precompile()
    ward.precompile()


def warm_part(part: str, say=print, signal=None, imported=None) -> float:
    """One part of the warm-up in this process (``PARTS``). ``signal``: for the build part, a
    callable that returns once the search part's index is ready; for the search part, a file
    to create then. ``imported``: for the search part, a file whose existence says that the
    build part has imported pynndescent. Returns the seconds taken."""
    from .numerics.annindex import enable_numba_cache

    t0 = time.perf_counter()
    if part == "search":
        precompile_own()  # no pynndescent needed
        while imported and not os.path.exists(imported):
            time.sleep(0.05)
    enable_numba_cache("pynndescent", "umap")
    {"build": _build, "search": _search}[part](signal)
    seconds = time.perf_counter() - t0
    say(f"warm-up: {part} kernels ready ({seconds:.1f} s)")
    return seconds


def _build(search_index_ready=None):
    from pynndescent import NNDescent

    from .numerics import nndescent
    from .numerics.kmeans import KMeans
    from .numerics.outliers import OutlierScorer

    nndescent.precompile()
    rng = np.random.default_rng(0)
    # vclust builds on two threads (refindex.build_threads), umap-learn seeded on one and
    # unseeded on all (numerics/maps.py)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    for n_jobs, seed in ((2, 0), (1, 0), (-1, None)):
        NNDescent(x, n_neighbors=15, random_state=seed, n_jobs=n_jobs, compressed=False)
    if search_index_ready is not None:
        search_index_ready()
    # the outlier scorer as `vclust fit` and `vclust label` run it: the index's build and
    # search kernels are compiled for the argument types those calls pass. A sampled
    # reference, as a fit's; pynndescent builds its forest breadth-first with other kernels
    # for parts of more than a million bytes of rows, which 2,500 reference rows of 127 dims are
    raw = rng.normal(size=(4000, 128)).astype(np.float32)
    z = raw[:, :6].copy()
    km = KMeans(3, random_state=0).fit(z)
    labels, dist = km.predict_block(z)
    scorer = OutlierScorer(reference_size=2500, threshold_rows="reference").fit(
        z, labels, dist, km.cluster_centers_, raw=raw)
    OutlierScorer.from_state(*scorer.to_state()).score(z, labels, dist, raw=raw)


def _exact_graph(data, n_neighbors, *args, **kwargs):
    """Stands in for pynndescent's ``nn_descent`` in the search part: each row's exact
    ``n_neighbors`` nearest rows and their squared distances (what pynndescent's euclidean
    build holds), int32 and float32 C arrays as NN-descent returns them."""
    sq = (data * data).sum(axis=1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * data @ data.T, 0)
    idx = np.argsort(d, axis=1, kind="stable")[:, :n_neighbors]
    return (np.ascontiguousarray(idx, dtype=np.int32),
            np.ascontiguousarray(np.take_along_axis(d, idx, 1), dtype=np.float32))


def _search(ready_file=None):
    from pynndescent import NNDescent
    from pynndescent import pynndescent_ as P

    from .numerics.annindex import index_from_state, index_to_state, prepare_index

    P.nn_descent = _exact_graph  # this process only: the build part compiles NN-descent
    # 2,100 rows of 128 dims: past a million bytes, so the forest's breadth-first kernels too
    x = np.random.default_rng(1).normal(size=(2100, 128)).astype(np.float32)
    index = prepare_index(NNDescent(x, n_neighbors=15, random_state=0, n_jobs=2,
                                    compressed=False))
    index.query(x[:100], k=11)
    if ready_file:
        open(ready_file, "w").close()
    index_from_state(*index_to_state(index)).query(x[:100], k=11)
    map_rows()


def map_rows(graphs=("one", "many")) -> None:
    """The report's maps (their graph from pynndescent at any row count; exact in the search
    part), on 600 rows: umap-learn's layouts run 500 epochs, seconds on thousands of rows.
    ``graphs``: rows whose graph is one component (``"one"``), and rows in eight groups far
    apart (``"many"``), whose graph falls into more components than twice the map's
    dimensions. umap-learn then places the components by the distances between their centres
    (``spectral.component_layout``), with a kernel of its own that nothing else compiles: the
    demo's first report compiled it."""
    import warnings

    from .numerics import maps

    rng = np.random.default_rng(0)
    rows = {"one": rng.normal(size=(600, 8)),
            "many": rng.normal(size=(600, 8))
            + np.repeat(np.eye(8, dtype=np.float32) * 1000, 75, axis=0)}
    for name in graphs:
        with warnings.catch_warnings():  # of the "many" rows, as meant
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            maps.embed_2d_3d(rows[name].astype(np.float32), "umap", random_state=0)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vclust.warmup", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--part", choices=PARTS, help="one part, in this process")
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)  # the search part's signal
    parser.add_argument("--imported-file", help=argparse.SUPPRESS)  # the build part's
    args = parser.parse_args(argv)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.part:
        warm_part(args.part, say, args.ready_file if args.part == "search" else None,
                  args.imported_file)
    else:
        warm(say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
