"""The compiled Ward tree (vclust.numerics.ward) against scikit-learn's own: the same merges,
parents and component count as ``ward_tree``, and cuts with ``AgglomerativeClustering``'s
labels, on graphs of one component, of several (completed by their nearest rows), on rows with
exact ties between candidate merges, and on one column."""

import warnings

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering, ward_tree
from sklearn.neighbors import kneighbors_graph

from vclust.numerics.ward import cut, ward_children


def _cases():
    rng = np.random.default_rng(1)
    blobs = rng.normal(size=(3000, 8)) + rng.integers(0, 5, 3000)[:, None] \
        * rng.normal(size=(1, 8)) * 3
    truth = np.repeat(np.arange(6), 300)
    apart = (rng.normal(size=(6, 8)) * 50)[truth] + rng.normal(size=(len(truth), 8))
    grid = rng.integers(0, 4, size=(600, 3)).astype(np.float64)  # many equal inertias
    return {"one component": blobs, "six components": apart, "exact ties": grid,
            "one column": rng.normal(size=(800, 1)), "float32 rows": blobs.astype(np.float32)}


@pytest.mark.parametrize("name", list(_cases()))
def test_the_tree_and_its_cuts_are_scikit_learns(name):
    x = _cases()[name]
    conn = kneighbors_graph(x, 10, include_self=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's note on several components
        want = ward_tree(x, connectivity=conn)
        got = ward_children(x, conn)
    if name == "six components":
        assert want[1] == 6
    if name == "exact ties":
        assert want[1] > 1
    np.testing.assert_array_equal(got[0], want[0])  # children, merge by merge
    assert got[1:3] == want[1:3]  # components, leaves
    np.testing.assert_array_equal(got[3], want[3])  # parents
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = AgglomerativeClustering(9, linkage="ward", connectivity=conn,
                                         compute_full_tree=True).fit_predict(x)
    np.testing.assert_array_equal(cut(got[0], got[2], 9), labels)


def test_the_agglomerative_tree_cuts_as_scikit_learn_does():
    """``AgglomerativeTree.cut`` (the compare grid's and `vclust fit`'s) gives the sample rows
    ``AgglomerativeClustering``'s labels at every k of a range, from one tree."""
    from vclust.numerics.algorithms import AgglomerativeTree

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3000, 12)) + rng.integers(0, 8, 3000)[:, None]
         * rng.normal(size=(1, 12)) * 2).astype(np.float32)
    tree = AgglomerativeTree(x, sample_size=1000, random_state=0)
    for k in range(6, 17):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = AgglomerativeClustering(k, linkage="ward", connectivity=tree.conn,
                                           compute_full_tree=True).fit_predict(tree.sample)
        np.testing.assert_array_equal(tree.cut(k).arrays["anchor_labels"], want)
