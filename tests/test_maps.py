"""vclust.numerics.maps: the report's 2D/3D maps (UMAP, t-SNE, PCA, "auto")."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vclust.numerics import maps

N_PER_BLOB = 200
METHODS = ("umap", "tsne", "pca")


@pytest.fixture(scope="module")
def blobs():
    """Three well separated Gaussian blobs, 600 x 10, seeded; and each row's blob."""
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 1, (3, 10)) * 10
    y = np.repeat(np.arange(3), N_PER_BLOB)
    X = centres[y] + rng.normal(0, 1, (len(y), 10))
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def maps_of(blobs):
    """embed(X, k, method) for every method and k in (2, 3), computed once for the module."""
    X, _ = blobs
    return {(m, k): maps.embed(X, k, m, random_state=0) for m in METHODS for k in (2, 3)}


def _separated(Y, y):
    """Every point is nearer its own blob's centroid on the map than any other blob's."""
    cents = np.stack([Y[y == c].mean(axis=0) for c in range(3)])
    d = np.linalg.norm(Y[:, None, :] - cents[None], axis=2)
    return bool((d.argmin(axis=1) == y).all())


def _knn_kept(X, Y, k=10):
    from sklearn.neighbors import NearestNeighbors

    a = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)
    b = NearestNeighbors(n_neighbors=k).fit(Y).kneighbors(return_distance=False)
    return float((a[:, :, None] == b[:, None, :]).any(axis=2).mean())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [2, 3])
def test_shape_dtype_and_blobs_stay_apart(maps_of, blobs, method, k):
    X, y = blobs
    Y = maps_of[method, k]
    assert Y.shape == (len(X), k) and Y.dtype == np.float32
    assert np.isfinite(Y).all()
    assert _separated(Y, y)
    if method != "pca":  # the nonlinear maps keep local neighbourhoods, not just the blobs
        assert _knn_kept(X, Y) > 0.3


@pytest.mark.parametrize("method", ["umap", "tsne"])
def test_same_seed_same_coordinates(maps_of, blobs, method):
    X, _ = blobs
    np.testing.assert_array_equal(maps.embed(X, 2, method, random_state=0), maps_of[method, 2])


def test_auto_is_the_default_method(maps_of, blobs):
    X, _ = blobs
    assert maps.choose_method("auto", len(X)) == maps.DEFAULT_METHOD
    np.testing.assert_array_equal(maps.embed(X), maps_of[maps.DEFAULT_METHOD, 2])


def test_embed_2d_3d_pca_and_small_umap_match_embed(maps_of, blobs):
    X, _ = blobs
    xy, xyz = maps.embed_2d_3d(X, "pca")
    np.testing.assert_array_equal(xy, xyz[:, :2])
    np.testing.assert_allclose(xy, maps_of["pca", 2], atol=1e-4)
    xy, xyz = maps.embed_2d_3d(X, "umap")  # one graph for both maps: the maps are embed's
    np.testing.assert_array_equal(xy, maps_of["umap", 2])
    np.testing.assert_array_equal(xyz, maps_of["umap", 3])


@pytest.mark.filterwarnings("ignore:precomputed_knn.2. .knn_search_index. is not an NNDescent")
def test_embed_2d_3d_umap_shared_graph(blobs, monkeypatch):
    """The graph is built once (one nearest_neighbors call) and both fits use it, here on 600
    rows, where umap-learn left to itself would compute exact distances pair by pair and call
    nearest_neighbors not at all."""
    import umap.umap_

    calls = []
    real = umap.umap_.nearest_neighbors

    def counted(X, *args, **kw):
        calls.append(len(X))
        return real(X, *args, **kw)

    X, y = blobs
    monkeypatch.setattr(umap.umap_, "nearest_neighbors", counted)
    xy, xyz = maps.embed_2d_3d(X, "umap", random_state=3)
    assert calls == [len(X)]  # one graph for both maps: neither fit built its own
    assert xy.shape == (len(X), 2) and xyz.shape == (len(X), 3)
    assert xy.dtype == xyz.dtype == np.float32
    assert _separated(xy, y) and _separated(xyz, y)
    xy2, _ = maps.embed_2d_3d(X, "umap", random_state=3)
    np.testing.assert_array_equal(xy, xy2)
    # the two layouts submitted elsewhere: with no cluster, the report's two spawned side
    # processes (real ones); same maps, still one graph (built here), each layout sent there
    from vclust.report import layout_submit

    submitted = []
    with layout_submit() as side:
        def submit(fn, *args):
            submitted.append(args[1])
            return side(fn, *args)

        elsewhere = {side(os.getpid).result() for _ in range(4)}
        xy3, xyz3 = maps.embed_2d_3d(X, "umap", random_state=3, submit=submit)
        # a call that fails there is made here, and its own error is the caller's
        with pytest.raises(ValueError, match="invalid literal for int"):
            side(int, "x").result()
    assert elsewhere and os.getpid() not in elsewhere
    assert sorted(submitted) == [2, 3] and calls == [len(X)] * 3
    np.testing.assert_array_equal(xy, xy3)
    np.testing.assert_array_equal(xyz, xyz3)


def test_embed_2d_3d_tsne_shares_affinities(maps_of, blobs):
    X, y = blobs
    xy, xyz = maps.embed_2d_3d(X, "tsne")
    np.testing.assert_array_equal(xy, maps_of["tsne", 2])  # the same affinities as embed's
    assert xyz.shape == (len(X), 3) and _separated(xyz, y)


@pytest.mark.parametrize("method", ["UMAP", "umap-learn", "", None, "mds"])
def test_bad_method_is_a_value_error(blobs, method):
    with pytest.raises(ValueError, match="unknown map method"):
        maps.embed(blobs[0], 2, method)
    with pytest.raises(ValueError, match="unknown map method"):
        maps.embed_2d_3d(blobs[0], method)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_bad_n_components_is_a_value_error(blobs, bad):
    with pytest.raises(ValueError, match="n_components"):
        maps.embed(blobs[0], bad, "pca")


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="2-D"):
        maps.embed(np.zeros(10), 2, "pca")
    with pytest.raises(ValueError, match="at least one row"):
        maps.embed(np.zeros((0, 4)), 2, "pca")
    x = np.ones((20, 3))
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        maps.embed(x, 2, "auto")


def test_too_few_rows_auto_falls_back_to_pca():
    X = np.random.default_rng(0).normal(size=(maps.MIN_ROWS - 1, 5))
    assert maps.choose_method("auto", len(X)) == "pca"
    Y = maps.embed(X, 3, "auto")
    assert Y.shape == (len(X), 3) and Y.dtype == np.float32
    np.testing.assert_array_equal(Y, maps.embed(X, 3, "pca"))
    _, xyz = maps.embed_2d_3d(X, "auto")
    np.testing.assert_array_equal(xyz, Y)
    for method in ("umap", "tsne"):  # asked for explicitly: a clear error, no silent swap
        with pytest.raises(ValueError, match="at least"):
            maps.embed(X, 2, method)


def test_missing_library_auto_falls_back_to_pca(blobs, monkeypatch):
    X, _ = blobs
    monkeypatch.setattr(maps, "available", lambda method: method == "pca")
    assert maps.choose_method("auto", len(X)) == "pca"
    np.testing.assert_array_equal(maps.embed(X, 2), maps.embed(X, 2, "pca"))
    with pytest.raises(ImportError, match=maps._LIBRARY[maps.DEFAULT_METHOD]):
        maps.embed(X, 2, maps.DEFAULT_METHOD)


def test_pca_pads_when_there_are_fewer_columns_or_rows_than_dimensions():
    Y = maps.embed(np.arange(20.0).reshape(10, 2) ** 1.5, 3, "pca")
    assert Y.shape == (10, 3) and (Y[:, 2] == 0).all() and (Y[:, :2] != 0).any()
    assert (maps.embed(np.ones((1, 4)), 2, "auto") == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_more_dimensions_than_columns(blobs, method):
    """A reduced sample can have 2 columns (one real set has, after PCA to 0.95): 3D still works."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 70)
    X = np.array([[0, 0], [20, 0], [0, 20]])[y] + rng.normal(0, 1, (len(y), 2))
    Y = maps.embed(X, 3, method)
    assert Y.shape == (len(X), 3) and np.isfinite(Y).all()
    assert _separated(Y, y)
    if method != "pca":  # PCA pads a zero column; the nonlinear maps use the third axis
        assert Y[:, 2].std() > 0


def test_importing_maps_loads_no_map_library():
    code = ("import sys, json, vclust.numerics.maps; print(json.dumps(sorted(m for m in "
            "('umap', 'openTSNE', 'numba', 'pynndescent') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_the_warm_up_maps_rows_whose_graph_falls_into_many_components():
    """A map of rows whose neighbour graph falls into more components than twice the map's
    dimensions (the demo's 20,000 rows) makes umap-learn place the components by the distances
    between their centres, with its own euclidean kernel on float64 rows, which nothing else
    compiles: the install's warm-up (vclust.warmup.map_rows) maps such rows too, so the user's
    first report loads that kernel from numba's disk cache instead of compiling it."""
    code = ("import json; from vclust.warmup import map_rows; map_rows(['many']); "
            "import umap.distances as d; "
            "print(json.dumps([[(str(t.dtype), t.ndim) for t in s] "
            "for s in d.euclidean.signatures]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr
    # compiled (or loaded from the cache) for two float64 rows
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[["float64", 1], ["float64", 1]]]
