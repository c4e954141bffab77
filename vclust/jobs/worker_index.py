"""Imported by the server that forks a LocalCluster's workers (``workerstart.SCORING_PRELOAD``)
for a command whose tasks score outliers: pynndescent, with scikit-learn, imported as vclust
imports it (``annindex.enable_numba_cache``: the kernels vclust never runs left uncompiled,
the others' disk cache on), once, before the workers are forked. A plain ``import pynndescent``
compiles the kernels ``annindex.DEFERRED_KERNELS`` names, which the install's warm-up leaves
out: 15.9 s on this project's 2-core machine where they are not cached yet (benchmarks/RESULTS.md,
2026-12-05)."""

from ..numerics.annindex import enable_numba_cache

enable_numba_cache()
