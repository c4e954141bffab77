"""Ward's tree under a connectivity graph, compiled (numba): scikit-learn's ``ward_tree``, merge
for merge.

scikit-learn's ``ward_tree`` with a connectivity graph keeps its candidate merges in a Python
heap of ``(inertia, i, j)`` tuples and pops them one by one: on 20,000 sample rows 1.2 million
pops at about 4 us each; 10 s for a tree of 38 columns and 16 s of 256, on one thread (the
cut of each k after it is 0.03 s). `vclust compare`'s grid builds one such tree per spec, and
`vclust fit --algorithm agglomerative` one per k-range: 1.1 s and 4 s compiled
(benchmarks/RESULTS.md). ``ward_children`` runs the same merge loop on arrays:

- the candidates are the same: every edge of the graph as scikit-learn prepares it
  (``_fix_connectivity``: made symmetric, completed between its connected components), then,
  after each merge, the new node against the heads of its two parts' neighbours;
- each candidate's inertia is scikit-learn's ``compute_ward_dist``, operation for operation
  (the same divisions, the columns summed in order, no reassociation), so the same bits;
- the merge taken is the smallest candidate whose two nodes are both unmerged, in the order
  of Python's tuples: inertia, then i, then j. That order is total (no two candidates are the
  same triple), so any heap pops the same sequence; the heap here is arrays.

The children, the parents and the component count are then those ``ward_tree`` returns, and
cuts of them (``sklearn.cluster._agglomerative._hc_cut``, as ``AgglomerativeClustering`` cuts)
give the same labels, numbering included. tests/test_ward.py checks both against scikit-learn
on connected graphs, graphs of several components and rows with exact ties.

The kernel is compiled once per machine into numba's disk cache (``cache=True``; the install's
warm-up, vclust.warmup, compiles it) for float64 rows and int64 graph arrays.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit
def _less(w, a, b, p, q):
    """Whether heap entry p sorts before entry q as the tuples (w, a, b) do."""
    if w[p] != w[q]:
        return w[p] < w[q]
    if a[p] != a[q]:
        return a[p] < a[q]
    return b[p] < b[q]


@numba.njit
def _swap(w, a, b, p, q):
    t = w[p]
    w[p] = w[q]
    w[q] = t
    u = a[p]
    a[p] = a[q]
    a[q] = u
    u = b[p]
    b[p] = b[q]
    b[q] = u


@numba.njit
def _inertia(m1, mean, row, col):
    """scikit-learn's compute_ward_dist of one pair, operation for operation: ``mean`` holds
    each node's m_2 / m_1, column by column, the quotients compute_ward_dist takes at each
    call (the same division, so the same bits), taken once per node here."""
    n = (m1[row] * m1[col]) / (m1[row] + m1[col])
    pa = 0.0
    for f in range(mean.shape[1]):
        d = mean[row, f] - mean[col, f]
        pa += d * d
    return pa * n


@numba.njit
def _root(up, node):
    """The unmerged node that holds ``node`` (path halving on ``up``, a copy of the parents
    kept for this: the parents themselves stay as ward_tree returns them)."""
    while up[node] != node:
        up[node] = up[up[node]]
        node = up[node]
    return node


@numba.njit
def _sift_down(w, a, b, p, size):
    """Move heap entry p down to its place among the first ``size`` entries."""
    while True:
        lo, ch = p, 2 * p + 1
        if ch < size and _less(w, a, b, ch, lo):
            lo = ch
        if ch + 1 < size and _less(w, a, b, ch + 1, lo):
            lo = ch + 1
        if lo == p:
            return
        _swap(w, a, b, p, lo)
        p = lo


@numba.njit
def _heads(head, nxt, to, up, seen, heads, i, j, k):
    """Into ``heads``: the unmerged nodes holding the neighbours of i and of j, each once
    (scikit-learn's _get_parents of both); returns how many."""
    seen[k] = k
    nh = 0
    for part in (i, j):
        e = head[part]
        while e != -1:
            node = _root(up, to[e])
            if seen[node] != k:
                seen[node] = k
                heads[nh] = node
                nh += 1
            e = nxt[e]
    return nh


@numba.njit
def _grown(a, used, cap):
    """``a``'s first ``used`` entries in a new array of ``cap``."""
    b = np.empty(cap, a.dtype)
    for t in range(used):
        b[t] = a[t]
    return b


@numba.njit(cache=True, nogil=True)
def _merge(X, indptr, indices):
    """(children (n-1, 2) as ward_tree returns them, parents (2n-1,)) of the rows X under the
    symmetric graph given as CSR arrays (its rows in scikit-learn's list-of-lists order)."""
    n, d = X.shape
    n_nodes = 2 * n - 1
    m1 = np.zeros(n_nodes)
    m2 = np.zeros((n_nodes, d))
    mean = np.zeros((n_nodes, d))
    for r in range(n):
        m1[r] = 1.0
        for f in range(d):
            m2[r, f] = X[r, f]
            mean[r, f] = X[r, f] / 1.0  # m_2 / m_1 of a row: the row, to the bit
    # every node's neighbours ever (scikit-learn's A), as linked lists in one pool
    cap = 2 * len(indices) + 16
    head = np.full(n_nodes, -1, np.int64)
    nxt = np.empty(cap, np.int64)
    to = np.empty(cap, np.int64)
    used = 0
    for r in range(n):
        for e in range(indptr[r + 1] - 1, indptr[r] - 1, -1):
            to[used] = indices[e]
            nxt[used] = head[r]
            head[r] = used
            used += 1
    # the heap of candidates (inertia, i, j)
    hcap = len(indices) + 16
    hw = np.empty(hcap)
    ha = np.empty(hcap, np.int64)
    hb = np.empty(hcap, np.int64)
    size = 0
    for r in range(n):
        for e in range(indptr[r], indptr[r + 1]):
            c = indices[e]
            if c < r:
                hw[size], ha[size], hb[size] = _inertia(m1, mean, r, c), r, c
                size += 1
    for s in range(size // 2 - 1, -1, -1):  # heapify
        _sift_down(hw, ha, hb, s, size)
    parent = np.arange(n_nodes)
    up = np.arange(n_nodes)
    alive = np.ones(n_nodes, np.bool_)
    seen = np.full(n_nodes, -1, np.int64)
    children = np.empty((n - 1, 2), np.int64)
    heads = np.empty(n_nodes, np.int64)
    for k in range(n, n_nodes):
        while True:  # pop the smallest candidate of two unmerged nodes
            if size == 0:
                raise ValueError("the graph left nodes unmerged")
            i, j = ha[0], hb[0]
            size -= 1
            hw[0], ha[0], hb[0] = hw[size], ha[size], hb[size]
            _sift_down(hw, ha, hb, 0, size)
            if alive[i] and alive[j]:
                break
        parent[i] = k
        parent[j] = k
        up[i] = k
        up[j] = k
        children[k - n, 0], children[k - n, 1] = j, i  # ward_tree reverses each pair
        alive[i] = False
        alive[j] = False
        m1[k] = m1[i] + m1[j]
        for f in range(d):
            m2[k, f] = m2[i, f] + m2[j, f]
            mean[k, f] = m2[k, f] / m1[k]
        nh = _heads(head, nxt, to, up, seen, heads, i, j, k)
        if used + 2 * nh > cap:
            cap = 2 * (used + 2 * nh)
            nxt = _grown(nxt, used, cap)
            to = _grown(to, used, cap)
        if size + nh > hcap:
            hcap = 2 * (size + nh)
            hw = _grown(hw, size, hcap)
            ha = _grown(ha, size, hcap)
            hb = _grown(hb, size, hcap)
        for h in range(nh):
            col = heads[h]
            to[used], nxt[used], head[col] = k, head[col], used  # A[col].append(k)
            used += 1
            to[used], nxt[used], head[k] = col, head[k], used  # A[k] = heads
            used += 1
            # push (inertia, k, col)
            p = size
            hw[p], ha[p], hb[p] = _inertia(m1, mean, k, col), k, col
            size += 1
            while p > 0:
                q = (p - 1) // 2
                if not _less(hw, ha, hb, p, q):
                    break
                _swap(hw, ha, hb, p, q)
                p = q
    return children, parent


def ward_children(X, connectivity):
    """``sklearn.cluster.ward_tree(X, connectivity=connectivity)``'s (children,
    n_connected_components, n_leaves, parents), computed by ``_merge`` (module docstring)."""
    import warnings

    from sklearn.cluster._agglomerative import _fix_connectivity

    X = np.require(np.asarray(X, dtype=np.float64), requirements="C")
    with warnings.catch_warnings():
        # a graph of several components is completed by its nearest rows, as ward_tree does;
        # scikit-learn says so in a warning that asks nothing of the user
        warnings.filterwarnings("ignore", "the number of connected components", UserWarning)
        graph, n_components = _fix_connectivity(X, connectivity, affinity="euclidean")
    rows = graph.rows  # list of lists, as _fix_connectivity returns it and ward_tree reads it
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.fromiter((c for r in rows for c in r), np.int64, count=int(indptr[-1]))
    children, parent = _merge(X, indptr, indices)
    return children.astype(np.intp), n_components, len(X), parent.astype(np.intp)


def cut(children, n_leaves, n_clusters) -> np.ndarray:
    """The labels ``AgglomerativeClustering(n_clusters, compute_full_tree=True)`` gives for
    this tree (scikit-learn's own cut, numbering included)."""
    from sklearn.cluster._agglomerative import _hc_cut

    return _hc_cut(n_clusters, children, n_leaves)


def precompile() -> None:
    """Compile ``_merge`` into numba's disk cache (or load it from there) for the argument types
    ``ward_children`` passes; the install's warm-up (vclust.warmup) calls it."""
    from sklearn.neighbors import kneighbors_graph

    x = np.random.default_rng(0).normal(size=(40, 3))
    ward_children(x, kneighbors_graph(x, 5, include_self=False))
