"""The library versions a model records when saved, and what a load makes of a difference.

A model's arrays (projection, centres, thresholds, the outlier reference and its index graph)
are plain numbers that any numpy applies alike, so a newer numpy, scikit-learn or dask changes a
score in its last bits at most: the load says which versions differ and goes on. The one part
that another library's layout defines is the outlier index's state (vclust.numerics.annindex
restores pynndescent's search from its own attribute names): a model whose pynndescent differs
from the installed one in its major or minor version is refused, with the fix.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata

from ..errors import InputError

log = logging.getLogger(__name__)

LIBRARIES = ("vclust", "numpy", "dask", "distributed", "zarr", "scikit-learn", "pynndescent",
             "numba", "pyarrow", "pandas")
#: libraries whose major.minor must match the model's: results would change otherwise
MUST_MATCH = ("pynndescent",)


def library_versions() -> dict:
    """{library: installed version or None}, with the Python version."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _minor(version) -> tuple:
    return tuple(str(version).split(".")[:2]) if version else ()


def check_versions(recorded, where) -> list[str]:
    """Compare the versions a model recorded (``recorded``, its manifest's ``libraries``) with
    the installed ones. Returns the differences as ``name recorded -> installed`` and logs them;
    raises InputError where the results would change (``MUST_MATCH``)."""
    if not isinstance(recorded, dict):
        return []
    now = library_versions()
    diffs = [f"{name} {recorded[name]} -> {now.get(name)}" for name in sorted(recorded)
             if name in now and recorded[name] != now[name]]
    for name in MUST_MATCH:
        if name in recorded and _minor(recorded[name]) != _minor(now.get(name)):
            raise InputError(f"{where}: fitted with {name} {recorded[name]}, installed is "
                             f"{now.get(name)}: its outlier index would not be read alike; "
                             f"install {name}=={recorded[name]} or fit the model again")
    if diffs:
        log.warning("%s: fitted with other library versions (%s); its arrays apply alike, "
                    "scores may differ in their last digits", where, "; ".join(diffs))
    return diffs
