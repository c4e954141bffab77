"""A Dask worker preload for the tests (``DASK_DISTRIBUTED__WORKER__PRELOAD``, which vclust
adds to its own worker preload): when a worker starts, before its first task, it writes what
the worker holds already to ``$VCLUST_TEST_PROBE_DIR/<pid>.json``: whether pynndescent,
umap-learn and vclust's outlier module are imported, and how many signatures one of the
kernels vclust never runs (``annindex.DEFERRED_KERNELS``) has compiled (0: imported as
vclust imports it)."""

import json
import os
import sys


def dask_setup(worker):
    seen = {"pynndescent": "pynndescent" in sys.modules, "umap": "umap" in sys.modules,
            "outliers": "vclust.numerics.outliers" in sys.modules, "deferred_signatures": None}
    if seen["pynndescent"]:
        from pynndescent import distances

        seen["deferred_signatures"] = len(distances.quantized_int8_alternative_cosine.signatures)
    with open(os.path.join(os.environ["VCLUST_TEST_PROBE_DIR"], f"{os.getpid()}.json"), "w") as f:
        json.dump(seen, f)


def probe_env(folder) -> dict:
    """The variables that make a command's LocalCluster workers run this probe into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    return {"DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([os.path.abspath(__file__)]),
            "VCLUST_TEST_PROBE_DIR": str(folder)}


def probed(folder) -> list[dict]:
    return [json.load(open(os.path.join(folder, name))) for name in sorted(os.listdir(folder))]
