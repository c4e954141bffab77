"""Fill numba's disk cache with the kernels vclust runs, once per install (``make install``).

pynndescent and umap-learn compile their numba kernels on first use in a process; vclust turns
numba's disk cache on for them (``vclust.numerics.annindex.enable_numba_cache``), so only the
first process on a machine pays the compilation. This module is that first process, run by the
install step instead of the user's first ``vclust fit`` or ``vclust report``: it builds, queries
and restores a small index and draws small UMAP maps in 2D and 3D (the kernels are compiled for
types, not sizes, so small data compiles what the real data runs).

    python -m vclust.warmup      # prints what it compiled and how long it took
"""

from __future__ import annotations

import sys
import time

import numpy as np


def warm(say=print) -> float:
    from .numerics.annindex import enable_numba_cache, index_from_state, index_to_state

    t0 = time.perf_counter()
    enable_numba_cache("pynndescent", "umap")
    from pynndescent import NNDescent

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 8)).astype(np.float32)
    # vclust builds on two threads (refindex.build_threads); umap-learn unseeded on all
    for n_jobs in (2, -1):
        index = NNDescent(x, n_neighbors=15, random_state=0, n_jobs=n_jobs, compressed=False)
    index.prepare()
    index.query(x[:100], k=11)
    index_from_state(*index_to_state(index)).query(x[:100], k=11)
    # and the outlier scorer as `vclust fit` and `vclust label` run it: the index's build and
    # search kernels are compiled for the argument types those calls pass (a small index of
    # its own above left a fit to compile them again)
    from .numerics.kmeans import KMeans
    from .numerics.outliers import OutlierScorer

    # (pynndescent builds trees of 50,000 rows breadth-first with other kernels than small
    # ones: the reference is as large as the fit's, the rows narrow)
    raw = rng.normal(size=(60_000, 12)).astype(np.float32)
    z = raw[:, :6].copy()
    km = KMeans(3, random_state=0).fit(z)
    labels, dist = km.predict_block(z)
    scorer = OutlierScorer(threshold_rows="reference").fit(z, labels, dist, km.cluster_centers_,
                                                           raw=raw)
    OutlierScorer.from_state(*scorer.to_state()).score(z, labels, dist, raw=raw)
    say(f"warm-up: pynndescent kernels ready ({time.perf_counter() - t0:.1f} s)")
    t1 = time.perf_counter()
    from .numerics.maps import embed_2d_3d

    embed_2d_3d(x, "umap", random_state=0)
    say(f"warm-up: umap-learn kernels ready ({time.perf_counter() - t1:.1f} s)")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    warm(lambda msg: print(msg, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
