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
#: covariance matrices at least this wide are decomposed for the components a fit can keep only
#: (``preprocess._leading_eigh``, scipy's syevr): numpy's full eigendecomposition of
#: efficientnet-b7's 2,560 columns took 3.4 s at one BLAS thread, its leading 256 pairs
#: 1.7-1.9 s (benchmarks/RESULTS.md); narrower sets take a fraction of a second either way and
#: keep numpy's
LEADING_EIGH_DIMS = 1024
#: a set's covariance (its PCA) is measured on a seeded sample of at most
#: max(COVARIANCE_MIN_ROWS, COVARIANCE_ROWS_PER_DIM x its columns) rows, every row when it has
#: fewer: efficientnet-b7's 416k x 2560 scatter took 26 of its fit's 48 s, and 102k rows keep
#: its partition and its outlier scores (docs/preprocessing.md, the evidence)
COVARIANCE_ROWS_PER_DIM = 40
COVARIANCE_MIN_ROWS = 50_000
DEFAULT_PCA_VARIANCE = 0.95  # chosen on real CNN descriptors: docs/preprocessing.md
DEFAULT_MAD_Z = 4.0  # is_outlier: combined z above median + DEFAULT_MAD_Z MADs of the fit rows'
