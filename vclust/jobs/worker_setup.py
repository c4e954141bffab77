"""Imported by each worker process of a LocalCluster that vclust starts (its ``preload``,
``cluster.local_cluster``): the worker imports as a command's own process does
(``imports.mark_not_imported``): dask's imports of xarray, sparse and scipy.fftpack refused,
scipy.stats executed on first use. About 1 CPU-s less per worker that imports pynndescent
(benchmarks/RESULTS.md, 2026-12-05). Workers started otherwise (SLURM, SSH, a scheduler
address) are left as they are."""

from .imports import mark_not_imported

mark_not_imported()
