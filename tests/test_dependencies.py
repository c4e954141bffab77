"""The installed libraries are the ones vclust was tested with: every requirement of
pyproject.toml holds (its upper bounds are the newest versions the suite passed with), and the
other libraries' private names that vclust relies on are there. These fail, never skip: an
upgrade outside the range must be seen, not go quiet."""

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


@pytest.mark.parametrize("req", _requirements(), ids=lambda r: r.name)
def test_installed_version_within_pyproject_range(req):
    version = metadata.version(req.name)
    assert req.specifier.contains(version, prereleases=True), \
        f"{req.name} {version} is outside {req.specifier} (pyproject.toml)"


def test_environment_yml_holds_the_same_upper_bounds():
    env = (ROOT / "environment.yml").read_text()
    for req in _requirements():
        uppers = [s for s in req.specifier if s.operator == "<"]
        for s in uppers:
            line = next((ln for ln in env.splitlines()
                         if ln.strip().startswith(f"- {req.name}")), None)
            assert line is not None and f"<{s.version}" in line, \
                f"environment.yml must bound {req.name} <{s.version} as pyproject.toml does"


def test_pynndescent_is_a_version_the_copied_driver_was_made_from():
    from vclust.numerics.annindex import DEFERRED_KERNELS, enable_numba_cache

    # pynndescent imported as vclust imports it (the kernels vclust never runs left
    # uncompiled), before vclust.numerics.nndescent, which imports it plainly: in a pytest
    # worker that had not imported it yet, the plain import compiled those kernels: 13.5 s
    # for this test in a fresh clone, 1.7 s without (benchmarks/RESULTS.md)
    enable_numba_cache()
    import pynndescent

    from vclust.numerics import nndescent

    assert pynndescent.__version__ in nndescent.SUPPORTED
    assert pynndescent.__version__ in DEFERRED_KERNELS, \
        "no list of the kernels vclust never runs for this pynndescent (annindex)"
    assert nndescent.install(), "the copied NN-descent driver did not install"


def test_a_process_that_loads_the_driver_from_the_cache_then_builds_an_index_runs():
    """The warm-up's build part loads the copied NN-descent driver (``nndescent.precompile``)
    and then pynndescent's parallel forest kernels from numba's disk cache. Without numba's
    threads started first, such a process aborted in LLVM ("Symbol not found:
    allocate_sched"): a second ``make install`` did, every time. Run twice in fresh
    processes, so that the second loads from a warm cache even where the first compiled."""
    import subprocess
    import sys

    # as the warm-up's build part: pynndescent imported as vclust imports it, then the driver
    # (vclust.numerics.nndescent imported first imports pynndescent plainly, and in a fresh
    # install that cost this test about 11 s more, compiling the kernels vclust never runs)
    code = """
import numpy as np
from vclust.numerics.annindex import enable_numba_cache
enable_numba_cache()
from vclust.numerics import nndescent
assert nndescent.precompile()
from pynndescent import NNDescent
x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
print(NNDescent(x, n_neighbors=15, random_state=0, n_jobs=2).neighbor_graph[0].shape)
"""
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "(2000, 15)"


def test_the_index_keeps_its_build_forest_and_prepares_a_one_tree_search_forest_without_it(
        monkeypatch):
    """annindex.prepare_index sets pynndescent's ``_rp_forest`` to None before ``prepare``, so
    that it builds a one-tree random projection search forest (``make_forest``) instead of
    its hub tree, whose kernels were most of the install's compilation: the attribute must be
    there after a build, and without it ``prepare`` must take the forest path. Fails (does not
    skip) on a pynndescent where either is not so, or outside nndescent.SUPPORTED."""
    import numpy as np
    import pynndescent.pynndescent_ as P

    from vclust.numerics.annindex import enable_numba_cache, prepare_index

    enable_numba_cache()
    calls = []
    for name in ("make_forest", "make_hub_search_tree"):
        real = getattr(P, name)
        monkeypatch.setattr(P, name, lambda *a, _real=real, _name=name, **kw:
                            calls.append(_name) or _real(*a, **kw))
    x = np.random.default_rng(0).normal(size=(600, 4)).astype(np.float32)
    index = P.NNDescent(x, n_neighbors=5, random_state=0, compressed=False)
    assert getattr(index, "_rp_forest", None) is not None, "the build kept no _rp_forest"
    prepare_index(index)
    assert calls == ["make_forest"], calls
    assert len(index._search_forest) == 1
    found = index.query(x[:50], k=1)[0][:, 0]
    np.testing.assert_array_equal(found, np.arange(50))  # each row finds itself


def test_the_private_names_vclust_uses_exist():
    """numba's Dispatcher cache hooks (annindex.enable_numba_cache), pynndescent's search
    plan and heap type (annindex.release_gil), dask's getter (compare's read log)."""
    import numba
    import pynndescent.pynndescent_ as P
    from dask.array.core import getter  # noqa: F401
    from numba.core.caching import NullCache  # noqa: F401

    from vclust.numerics.annindex import enable_numba_cache, prepare_index

    enable_numba_cache()

    @numba.njit(cache=False)
    def f(x):
        return x + 1

    f(1)
    assert hasattr(f, "_cache") and hasattr(f, "_set_uuid")
    import numpy as np

    idx = P.NNDescent(np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32),
                      n_neighbors=5, random_state=0, compressed=False)
    # prepared as vclust prepares an index: pynndescent's own ``prepare`` of a fresh build makes
    # its hub search tree, whose kernels nothing else compiles (22 s in a fresh install)
    prepare_index(idx)
    for name in ("_fast_plan", "_search_function", "_visited", "_input_dtype"):
        assert hasattr(idx, name), f"pynndescent's NNDescent has no {name}"
    from pynndescent import search as S

    assert hasattr(S, "_HEAP_TYPE") and hasattr(S, "_array") and hasattr(S, "_search_dense_serial")


def test_model_load_names_other_versions_and_refuses_another_pynndescent(tmp_path, caplog):
    import json

    import numpy as np

    from vclust.errors import InputError
    from vclust.model.versions import check_versions, library_versions

    now = library_versions()
    older = {**now, "numpy": "1.0.0"}
    with caplog.at_level("WARNING"):
        assert check_versions(older, tmp_path) == [f"numpy 1.0.0 -> {np.__version__}"]
    assert "numpy 1.0.0" in caplog.text
    with pytest.raises(InputError, match="fitted with pynndescent 0.5.13"):
        check_versions({**now, "pynndescent": "0.5.13"}, tmp_path)
    assert check_versions(now, tmp_path) == []
    json.dumps(now)  # recorded in the manifest as JSON


def test_the_pure_python_unpickler_vclust_scans_with_is_there(tmp_path):
    """storage/pickles.py subclasses the standard library's pure-Python ``pickle._Unpickler``
    and reads its ``_unframer``: a Python that changes them must fail here."""
    import io
    import pickle

    class Probe(pickle._Unpickler):
        pass

    u = Probe(io.BytesIO(pickle.dumps([1, 2], protocol=5)))
    assert u.load() == [1, 2]
    assert hasattr(u, "_unframer") and isinstance(pickle._Unpickler.dispatch, dict)


def test_scikit_learn_is_a_version_whose_private_names_vclust_calls():
    """kmeans.SklearnRows calls scikit-learn's private ``_kmeans_single_lloyd``,
    ``_kmeans_single_elkan`` and ``_openmp_effective_n_threads``, and numerics.ward its
    ``_fix_connectivity`` and ``_hc_cut``: the installed version must be in SKLEARN_SUPPORTED
    (pyproject.toml's range), the names there with the parameters passed."""
    import inspect

    import sklearn
    from packaging.specifiers import SpecifierSet
    from sklearn.cluster import _kmeans
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    from vclust.numerics.kmeans import SKLEARN_SUPPORTED

    assert SpecifierSet(SKLEARN_SUPPORTED).contains(sklearn.__version__), \
        f"scikit-learn {sklearn.__version__} is outside {SKLEARN_SUPPORTED}"
    req = next(r for r in _requirements() if r.name == "scikit-learn")
    assert req.specifier == SpecifierSet(SKLEARN_SUPPORTED)
    for name in ("_kmeans_single_lloyd", "_kmeans_single_elkan"):
        params = list(inspect.signature(getattr(_kmeans, name)).parameters)
        assert params == ["X", "sample_weight", "centers_init", "max_iter", "verbose", "tol",
                          "n_threads"], (name, params)
    assert _openmp_effective_n_threads() >= 1
    from sklearn.cluster import _agglomerative

    assert list(inspect.signature(_agglomerative._fix_connectivity).parameters) == [
        "X", "connectivity", "affinity"]
    assert list(inspect.signature(_agglomerative._hc_cut).parameters) == [
        "n_clusters", "children", "n_leaves"]


@pytest.mark.parametrize("dims", [70, 130], ids=["lloyd", "elkan"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sklearn_rows_give_scikit_learns_kmeans_bit_for_bit(dims, dtype):
    """Rows made ready once (kmeans.SklearnRows) and run at several k, iteration limits and
    tolerances give what scikit-learn's public KMeans gives from the same centres: the same
    centres, labels, inertia and iterations, to the bit."""
    import numpy as np
    from sklearn.cluster import KMeans as SKMeans

    from vclust.numerics.kmeans import ELKAN_DIMS, SklearnRows

    rng = np.random.default_rng(5)
    means = rng.normal(0, 3, (6, dims)) + 10  # off the origin: the centring matters
    X = (means[rng.integers(0, 6, 4000)] + rng.normal(size=(4000, dims))).astype(dtype)
    ready = SklearnRows(X)
    for k, max_iter, tol in ((4, 100, 1e-4), (7, 3, 1e-4), (9, 100, 0.0), (9, 100, 1e-2)):
        start = X[rng.choice(len(X), k, replace=False)].astype(np.float64)
        centres, n_iter, (labels, inertia) = ready.lloyd(start, max_iter, tol)
        km = SKMeans(k, init=start.astype(dtype), n_init=1, max_iter=max_iter, tol=tol,
                     algorithm="elkan" if dims >= ELKAN_DIMS else "lloyd").fit(X)
        np.testing.assert_array_equal(centres, km.cluster_centers_.astype(np.float64))
        np.testing.assert_array_equal(labels[0], km.labels_)
        assert (inertia, n_iter) == (float(km.inertia_), km.n_iter_), (k, max_iter, tol)
    assert ready.X is X


def test_a_module_still_being_imported_is_seen_as_not_imported(tmp_path, monkeypatch):
    """``blocks._imported`` reads importlib's private ``module.__spec__._initializing``: on a
    Python in INITIALIZING_PYTHONS, a module seen from inside its own import (as another thread
    sees one vclust imports in the background) is not imported yet, and is once its import
    ends. Fails, never skips, on another Python or where the name is gone."""
    import sys

    from vclust.numerics import blocks

    low, high = blocks.INITIALIZING_PYTHONS
    assert low <= sys.version_info[:2] < high, \
        f"Python {sys.version_info[:2]} is outside {blocks.INITIALIZING_PYTHONS}"
    (tmp_path / "vclust_half_imported.py").write_text(
        "import sys\n"
        "from vclust.numerics.blocks import _imported\n"
        "SEEN_DURING = _imported(sys.modules[__name__])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vclust_half_imported as mod

    try:
        assert mod.SEEN_DURING is False
        assert blocks._imported(mod) is True
        assert blocks._imported(None) is False
    finally:
        sys.modules.pop("vclust_half_imported", None)
