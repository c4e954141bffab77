"""pynndescent's NN-descent driver, compiled once per machine instead of once per process.

pynndescent compiles its numba kernels in every new process. ``annindex.enable_numba_cache``
puts most of them in numba's disk cache; two stay out: ``nn_descent`` and
``nn_descent_internal``, the driver that builds the graph, because they ask numba for its thread
count from inside compiled code (``numba.get_num_threads()``, a call through a pointer that numba
will not cache). Their compilation would be paid in each process that builds an index (the
fit's outlier index, the report's map graph) (benchmarks/RESULTS.md, figures behind the code).

Here is the same driver with the thread count passed in as an argument, so numba caches it:
the loop of pynndescent 0.7.0's ``nn_descent`` / ``nn_descent_internal`` (dense data, random
projection tree initialisation), calling pynndescent's own kernels in the same order with the
same arguments, so the graph is the same, bit for bit (tests/test_outliers.py checks it against
pynndescent's own driver). ``install()`` swaps it in for the calls it covers, and only for the
pynndescent versions in ``SUPPORTED``; anything else (an initial graph, sparse data, verbose
progress, another version) goes to pynndescent's own driver.

Also here, for the same reason: the conversion of a dense search tree into the arrays the
queries walk (``convert_tree_format``), which every index's ``prepare`` runs. pynndescent 0.7.0
walks the tree in Python, reading each node through numba's typed-list methods, which numba
compiles again in every process: 1.8-2.2 s of a 50,000-row reference's ``prepare`` on this
project's 2-core machine, 0.5 s with the cached copy (benchmarks/RESULTS.md, 2026-12-04).
"""

from __future__ import annotations

import numba
import numpy as np
import pynndescent
from pynndescent import pynndescent_ as P
from pynndescent import search as _S

SUPPORTED = ("0.7.0",)
_installed = False
#: pynndescent's own dense euclidean search, before ``install`` routes its name to the copy below
ORIGINAL_SEARCH = _S.search_dense_sqeuclidean
#: pynndescent's own search tree conversion, before ``install`` routes its name to the one below
ORIGINAL_CONVERT = P.convert_tree_format
#: pynndescent's own search graph assembly (parallel numba kernels), before ``install``
ORIGINAL_SEARCH_GRAPH = (P.build_search_graph, P.permute_graph, P.permute_rows)


@numba.njit(cache=True)
def _nn_descent_internal(current_graph, data, n_neighbors, rng_state, max_candidates, dist,
                         n_iters, delta, kernel, n_threads):
    n_vertices = data.shape[0]
    block_size = 16384
    n_blocks = n_vertices // block_size
    max_updates_per_thread = (
        int((max_candidates**2 + max_candidates * (max_candidates - 1) / 2) * block_size
            / n_threads) + 1024)
    update_array = np.empty((n_threads, max_updates_per_thread, 3), dtype=np.float32)
    n_updates_per_thread = np.zeros(n_threads, dtype=np.int32)
    if n_threads > 1:
        sorted_updates = np.empty((n_threads, 2 * max_updates_per_thread, 3), dtype=np.float32)
    else:
        sorted_updates = np.empty((1, 1, 3), dtype=np.float32)
    block_offsets = np.zeros((n_threads, n_threads + 1), dtype=np.int64)
    new_candidate_indices = np.full((n_vertices, max_candidates), -1, dtype=np.int32)
    new_candidate_priority = np.full((n_vertices, max_candidates), np.inf, dtype=np.float32)
    old_candidate_indices = np.full((n_vertices, max_candidates), -1, dtype=np.int32)
    old_candidate_priority = np.full((n_vertices, max_candidates), np.inf, dtype=np.float32)
    active = np.ones(n_vertices, dtype=np.uint8)
    reverse_dst = np.empty(n_vertices * n_neighbors, dtype=np.int32)
    reverse_src = np.empty(n_vertices * n_neighbors, dtype=np.int32)
    bucket_bounds = np.zeros((n_threads, n_threads + 1), dtype=np.int64)

    for _ in range(n_iters):
        new_candidate_neighbors, old_candidate_neighbors = P.build_candidates_owner(
            current_graph, max_candidates, rng_state, n_threads, new_candidate_indices,
            new_candidate_priority, old_candidate_indices, old_candidate_priority, active,
            reverse_dst, reverse_src, bucket_bounds)
        c = P.process_candidates(
            data, dist, current_graph, new_candidate_neighbors, old_candidate_neighbors,
            n_blocks, block_size, n_threads, update_array, n_updates_per_thread, sorted_updates,
            block_offsets, kernel)
        if c <= delta * n_neighbors * data.shape[0]:
            return


@numba.njit(cache=True)
def _nn_descent(data, n_neighbors, rng_state, max_candidates, dist, n_iters, delta, leaf_array,
                kernel, n_threads):
    current_graph = P.make_heap(data.shape[0], n_neighbors)
    P.init_rp_tree(data, dist, current_graph, leaf_array, n_threads=n_threads)
    P.init_random(n_neighbors, data, current_graph, dist, rng_state)
    _nn_descent_internal(current_graph, data, n_neighbors, rng_state, max_candidates, dist,
                         n_iters, delta, kernel, n_threads)
    return P.deheap_sort(current_graph[0], current_graph[1])


@numba.njit(fastmath=True, cache=True, nogil=True)
def search_dense_sqeuclidean_nogil(index, query_points, tree_query_points, query_inv_norms,
                                   result, k, epsilon, visited, query_is_normalized, rng_state):
    """pynndescent 0.7.0's ``search.search_dense_sqeuclidean``, compiled with ``nogil``
    (``annindex.release_gil`` says why). ``install`` puts it in that name's place, so that an
    index prepared or restored compiles this one search kernel, not pynndescent's as well."""
    return _S._search_dense_serial(index, query_points, tree_query_points, result, k, epsilon,
                                   visited, query_is_normalized, rng_state, _S.KERNEL_SQEUCLIDEAN)


@numba.njit(cache=True)
def _convert_dense_tree(tree_hyperplanes, tree_offsets, tree_children, tree_indices,
                        hyperplanes, offsets, children, indices):
    """pynndescent 0.7.0's ``rp_trees.recursive_convert`` (left in pure Python there, where
    each node's item reads go through numba's typed-list methods, compiled afresh in every
    process): the same pre-order numbering, written with an explicit stack and compiled once
    into numba's disk cache. Fills ``hyperplanes``, ``offsets``, ``children``, ``indices``."""
    n = len(tree_children)
    stack_node = np.empty(n + 1, dtype=np.int64)
    stack_parent = np.empty(n + 1, dtype=np.int64)
    stack_node[0] = n - 1
    stack_parent[0] = -1
    top = 1
    node_num = 0
    leaf_start = 0
    while top > 0:
        top -= 1
        tree_node = stack_node[top]
        parent = stack_parent[top]
        if parent >= 0:
            children[parent, 1] = node_num
        left, right = tree_children[tree_node]
        if left < 0:
            leaf = tree_indices[tree_node]
            leaf_end = leaf_start + len(leaf)
            children[node_num, 0] = -leaf_start
            children[node_num, 1] = -leaf_end
            for j in range(leaf_end - leaf_start):  # element loops, not slice assignments:
                indices[leaf_start + j] = leaf[j]  # those compile numba's shape-mismatch
            leaf_start = leaf_end                    # message, 3 s of the install's warm-up
        else:
            plane = tree_hyperplanes[tree_node]
            for j in range(plane.shape[0]):
                hyperplanes[node_num, j] = plane[j]
            offsets[node_num] = tree_offsets[tree_node]
            children[node_num, 0] = node_num + 1
            stack_node[top] = right
            stack_parent[top] = node_num
            stack_node[top + 1] = left
            stack_parent[top + 1] = -1
            top += 2
        node_num += 1


def convert_tree_format(tree, data_size, data_dim):
    """pynndescent 0.7.0's ``rp_trees.convert_tree_format`` for a dense float32 tree (the
    search tree ``prepare`` makes for every dense index built here: the outlier reference of
    `vclust fit` and of each `vclust compare` spec), through the cached ``_convert_dense_tree``:
    the same arrays, bit for bit (tests/test_outliers.py). Any other tree goes to
    pynndescent's own."""
    from pynndescent import rp_trees as R

    if numba.typeof(tree.hyperplanes) != R.dense_hyperplanes_list_type:
        return ORIGINAL_CONVERT(tree, data_size, data_dim)
    n_nodes, _ = R.num_nodes_and_leaves(tree)
    hyperplanes = np.zeros((n_nodes, data_dim), dtype=np.float32)
    offsets = np.zeros(n_nodes, dtype=np.float32)
    children = np.int32(-1) * np.ones((n_nodes, 2), dtype=np.int32)
    indices = np.int32(-1) * np.ones(data_size, dtype=np.int32)
    _convert_dense_tree(tree.hyperplanes, tree.offsets, tree.children, tree.indices,
                        hyperplanes, offsets, children, indices)
    return R.FlatTree(hyperplanes, offsets, children, indices, tree.leaf_size)


def _sortable(values):
    """float32 values as int64 keys in the same order (IEEE-754 bits, negatives flipped)."""
    bits = values.view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def build_search_graph(neighbor_indices, neighbor_distances, max_degree):
    """pynndescent 0.7.0's ``search_graph.build_search_graph`` (every index's ``prepare``)
    with scipy's sparse kernels and numpy, which need no compilation: pynndescent's four
    parallel numba kernels for it took about 20 s of the install's warm-up on 2 cores, in
    every fresh install. The same graph, bit for bit (tests/test_outliers.py): the -1 padded
    rows as a CSR sorted by column, united with its transpose by scipy's ``maximum`` (an edge
    one way only is compared with an implicit zero; zero results dropped), self loops dropped,
    and each row of more than ``max_degree`` entries keeping those no larger than its
    ``max_degree + 1``-th smallest. Returns ``(indptr, indices, min_distance)``."""
    import scipy.sparse as sp

    n = neighbor_indices.shape[0]
    valid = neighbor_indices >= 0
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(valid.sum(axis=1), out=indptr[1:])
    values = np.ascontiguousarray(neighbor_distances[valid], dtype=np.float32)
    forward = sp.csr_array((values, neighbor_indices[valid].astype(np.int32), indptr),
                           shape=(n, n))
    forward.sort_indices()
    min_distance = values.min() if values.shape[0] else np.float32(0.0)
    union = forward.maximum(forward.T.tocsr())
    union.sort_indices()
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(union.indptr))
    keep = union.indices != rows
    rows, cols, values = rows[keep], union.indices[keep], union.data[keep]
    counts = np.bincount(rows, minlength=n)
    over = counts > max_degree
    if over.any():
        # the (max_degree + 1)-th smallest value of each row over the limit, kept and below
        pick = over[rows]
        order = np.lexsort((_sortable(values[pick]), rows[pick]))
        sub_starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.where(over, counts, 0), out=sub_starts[1:])
        cut = np.full(n, np.inf, dtype=np.float32)
        heavy = np.flatnonzero(over)
        cut[heavy] = values[pick][order[sub_starts[heavy] + max_degree]]
        keep = values <= cut[rows]
        rows, cols = rows[keep], cols[keep]
    out_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=out_indptr[1:])
    return out_indptr, np.ascontiguousarray(cols, dtype=np.int32), min_distance


def permute_graph(indptr, indices, order):
    """pynndescent 0.7.0's ``search_graph.permute_graph`` in numpy: the CSR relabelled so that
    new vertex ``a`` is old vertex ``order[a]``, each row's columns ascending."""
    order = np.asarray(order, dtype=np.int64)
    n = indptr.shape[0] - 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n, dtype=np.int64)
    lengths = (indptr[order + 1] - indptr[order]).astype(np.int64)
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    src = np.repeat(indptr[order] - new_indptr[:-1], lengths) + np.arange(new_indptr[n])
    keys = np.repeat(np.arange(n, dtype=np.int64), lengths) * n + inverse[indices[src]]
    keys.sort()
    return new_indptr, (keys % n).astype(np.int32) if n else indices[:0].astype(np.int32)


def permute_rows(data, order):
    """pynndescent 0.7.0's ``search_graph.permute_rows`` (a parallel ``data[order]``) as
    numpy's gather: the same C array, no compilation."""
    return np.ascontiguousarray(data[order])


def precompile() -> bool:
    """Compile the driver (or load it from numba's disk cache) for the one signature vclust's
    dense euclidean builds call it with (float32 rows, pynndescent's squared euclidean, an
    int32 leaf array: the fit's index, `vclust compare`'s, umap-learn's graph), without
    building anything: the install's warm-up compiles it beside other kernels. Call after
    ``annindex.enable_numba_cache`` (which names the distance's type the same in every
    process). Returns whether it did (False where ``install`` does not route builds here)."""
    if not install():
        return False
    from pynndescent.distances import fast_distance_alternatives
    from pynndescent.kernels import select_kernel

    # numba's threading layer first, as every build does (the driver's thread count above): a
    # process that loaded this driver from the disk cache and then pynndescent's parallel
    # forest kernels from it, threads not started, aborted in LLVM ("Symbol not found:
    # allocate_sched"): a second warm-up over a warm cache did (numba 0.68.1)
    numba.get_num_threads()
    dist = fast_distance_alternatives["euclidean"]["dist"]
    data = np.zeros((2, 2), dtype=np.float32)
    args = (data, 1, np.zeros(3, dtype=np.int64), 1, dist, 1, 0.001,
            np.zeros((1, 1), dtype=np.int32), select_kernel(dist, data), 1)
    _nn_descent.compile(tuple(numba.typeof(a) for a in args))
    return True


def install() -> bool:
    """Route pynndescent's dense NN-descent builds through the cached driver, its dense
    euclidean search (``search.search_dense_sqeuclidean``, looked up by name when an index is
    prepared or restored) to the nogil copy above (the warm-up compiled both searches, and
    every query ran the copy), and its search tree conversion to the cached one (idempotent).
    Returns whether they are in place (False for a pynndescent version not in ``SUPPORTED``)."""
    global _installed
    if _installed:
        return True
    if getattr(pynndescent, "__version__", None) not in SUPPORTED:
        return False
    original = P.nn_descent

    def nn_descent(data, n_neighbors, rng_state, max_candidates=50, dist=None, n_iters=10,
                   delta=0.001, init_graph=P.EMPTY_GRAPH, rp_tree_init=True, leaf_array=None,
                   low_memory=True, verbose=False, kernel=0):
        if (init_graph[0].shape[0] == 1 and rp_tree_init and not verbose and dist is not None
                and leaf_array is not None and isinstance(data, np.ndarray)):
            return _nn_descent(data, n_neighbors, rng_state, max_candidates, dist, n_iters,
                               delta, leaf_array, kernel, numba.get_num_threads())
        kwargs = dict(init_graph=init_graph, rp_tree_init=rp_tree_init, leaf_array=leaf_array,
                      low_memory=low_memory, verbose=verbose, kernel=kernel)
        if dist is not None:
            kwargs["dist"] = dist
        return original(data, n_neighbors, rng_state, max_candidates, n_iters=n_iters,
                        delta=delta, **kwargs)

    nn_descent.original = original
    P.nn_descent = nn_descent
    P.convert_tree_format = convert_tree_format
    P.build_search_graph = build_search_graph
    P.permute_graph = permute_graph
    P.permute_rows = permute_rows
    _S.search_dense_sqeuclidean = search_dense_sqeuclidean_nogil
    _installed = True
    return True
