"""The numerics: preprocessing, KMeans, the other algorithms, outlier scoring, the ANN index,
partition metrics, drift statistics and the block helpers they share.

They work on numpy or dask arrays and know nothing of the store, the jobs or the command line
(tests/test_layout.py holds that boundary). This module holds the library defaults that the
parameter table (vclust.jobs.params) shows on the command line, so that reading them imports no
heavy library.
"""

#: rows of the seeded sample the sample-fitted algorithms (all but kmeans) are fitted on
FIT_SAMPLE = 20_000
ALGORITHMS = ("kmeans", "minibatch", "gmm", "bisecting", "agglomerative", "hdbscan")
#: the reduced rows (and the outlier scorer's projection) keep at most this many components
DEFAULT_MAX_COMPONENTS = 256
DEFAULT_PCA_VARIANCE = 0.95  # chosen on real CNN descriptors: docs/preprocessing.md
DEFAULT_MAD_Z = 4.0  # is_outlier: combined z above median + DEFAULT_MAD_Z MADs of the fit rows'
