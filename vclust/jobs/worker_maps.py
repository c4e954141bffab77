"""Imported by the server that forks a LocalCluster's workers (``workerstart.MAPS_PRELOAD``)
for a command whose workers also draw maps (`vclust report`, `vclust compare`, `vclust run`):
umap-learn with pynndescent, imported as vclust imports them (``annindex.enable_numba_cache``),
once, before the workers are forked. Where umap-learn is not installed nothing is imported
here (the maps then say so where they are asked for)."""

from importlib.util import find_spec

from ..numerics.annindex import enable_numba_cache

if find_spec("umap") is not None:
    enable_numba_cache("pynndescent", "umap")
