"""vclust: cluster and screen image descriptors at scale, out of core, on Dask."""

__version__ = "0.1.0"
