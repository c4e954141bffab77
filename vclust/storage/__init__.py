"""The descriptor store and what fills it: the Zarr store (store), the source readers
(sources, pickles) and ingest. Knows nothing of clustering, models or the command line."""
