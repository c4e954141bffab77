"""The outlier score's reference index: a pynndescent index over a seeded sample of the scoring
rows, and the one object that builds, caches, restores and queries it.

``ReferenceIndex(rows, ids, graph_neighbors, random_state, cache)`` holds the reference rows (the
scorer's projection of the sampled descriptor rows, float32) and their absolute row ids. Where
the index comes from, first found first:

  this process   one in-process entry (``INDEXES``: the latest reference; `vclust compare` fits a
                 scorer per spec and algorithm on the same rows, each asks for the same index)
  the disk cache an injected ``cache`` (an object with ``load(key)`` and ``save(key, params,
                 arrays)``: vclust.storage.indexcache in the commands; None in the library), so
                 a later process fitting the same rows builds nothing
  built          NNDescent on ``build_threads()`` threads (its kernels from numba's disk cache)

That same entry is what a restored model's index lands in (``from_state``): one cache of an
index per process, not two. What the index learned is kept as arrays (vclust.numerics.annindex:
the prepared index's own state, no pickle); a worker restores it once (the search kernels only)
and every thread queries its own view of it (pynndescent keeps its per-query scratch on the
index). Queries run without the GIL (``annindex.release_gil``) in parts of QUERY_PART rows side
by side on threads, cut by row count only, so the answer does not depend on the machine.

Answers (each row's k nearest reference rows, a row's own entry skipped by its id, never by
distance) are kept in ``NEIGHBOUR_MEMO``, keyed by content digests: a hit is the answer a fresh
process would compute. One caveat: pynndescent draws from one random state per query call, so
a row's neighbours can in rare cases depend on the rows queried in the same call.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

import numpy as np

from .annindex import decode_state, enable_numba_cache, index_from_state, index_to_state, prepare_index

log = logging.getLogger(__name__)

#: part of every disk cache key: raise it when what an entry holds changes meaning
#: (2: the search forest is a one-tree rp forest, annindex.prepare_index, not the hub tree)
FIT_CACHE_VERSION = 2
#: rows per query call: a block's rows are queried in parts of this size, side by side
QUERY_PART = 4096
#: pynndescent's query ``epsilon`` (its default 0.1): how far past the best candidate so far
#: a query keeps walking the graph. 0.05 costs a query a quarter to a third less and passes
#: the scorer's evidence rule (benchmarks/RESULTS.md, 2026-12-05). Its shorter walk turns on
#: the last bits of the query row, so the scoring rows are projected to the same bits
#: whatever rows come with them (outlier_rows.project_block)
QUERY_EPSILON = 0.05
#: leaves of the one-tree search forest (annindex.prepare_index) a query starts from: with one,
#: a query landing in a leaf of fewer rows than it asks for is topped up with random rows drawn
#: from the call's random state, so its answer can depend on the rows queried with it; three
#: make that rarer and find more true neighbours at the same query time (benchmarks/RESULTS.md)
SEARCH_TREE_LEAVES = 3
_LOCAL = threading.local()
_QUERY_POOL = []
_PYNNDESCENT_VERSION = []


class Memo:
    """A small per-process cache of pure results, least recently used out first, bounded in
    bytes (at least one entry is kept). Keys hold content digests."""

    def __init__(self, max_bytes):
        self.max_bytes, self.items, self.lock = max_bytes, OrderedDict(), threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self.lock:
            hit = self.items.get(key)
            if hit is None:
                self.misses += 1
                return None
            self.items.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key, value, nbytes):
        with self.lock:
            self.items[key] = (value, nbytes)
            self.items.move_to_end(key)
            while sum(v[1] for v in self.items.values()) > self.max_bytes and len(self.items) > 1:
                self.items.popitem(last=False)

    def clear(self):
        with self.lock:
            self.items.clear()
            self.hits = self.misses = 0


#: each row block's k nearest reference rows (a 416k-row space: about 40 MB)
NEIGHBOUR_MEMO = Memo(256 * 2**20)
#: the reference index of this process (one: the latest reference), built, cached or restored
INDEXES = Memo(0)


def clear_memos():
    """Forget every index and answer of this process (what a fresh process starts with)."""
    NEIGHBOUR_MEMO.clear()
    INDEXES.clear()


def digest(a) -> str:
    """128 bits of SHA-256 of the array's bytes, dtype and shape. Every labelled block is hashed
    for its memo key: an 8,192 x 221 float32 block took 4.1 ms, against blake2b's 10 ms, on this
    project's AMD EPYC, whose SHA instructions OpenSSL uses (a CPU without them may hash slower
    with SHA-256 than with blake2b)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(a.view(np.uint8).reshape(-1))
    h.update(repr((a.dtype.str, a.shape)).encode())
    return h.hexdigest()[:32]


class _Entry:
    """An index as this process holds it: its state (params, arrays), the build's graph (None
    for one restored from a model), and the NNDescent once built or restored."""

    def __init__(self, params, arrays, graph, nn=None):
        self.params, self.arrays, self.graph, self.nn = params, arrays, graph, nn
        self.lock = threading.Lock()

    def __getstate__(self):  # the state travels; the NNDescent is restored where it lands
        return {"params": self.params, "arrays": self.arrays, "graph": self.graph}

    def __setstate__(self, state):
        self.__init__(state["params"], state["arrays"], state["graph"])

    def restored(self):
        with self.lock:
            if self.nn is None:
                log.info("restoring the outlier reference index")
                self.nn = index_from_state(self.params, self.arrays)
            return self.nn


class ReferenceIndex:
    """The index over ``rows`` (float32, the reference's scoring rows) whose absolute row ids
    are ``ids``; see the module docstring."""

    def __init__(self, rows, ids, graph_neighbors=30, random_state=0, cache=None):
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.graph_neighbors, self.random_state, self.cache = graph_neighbors, random_state, cache
        self.source = None
        self._fp = self._entry = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["cache"] = None  # the caller's cache stays with the caller
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # ------------------------------------------------------------------ identity

    def fingerprint(self) -> str:
        """Digest of the reference (its rows and their ids): names the index it gets."""
        if self._fp is None:
            h = hashlib.sha1(self.rows.tobytes())
            h.update(self.ids.tobytes())
            self._fp = h.hexdigest()
        return self._fp

    def _key(self):
        return (self.fingerprint(), self.graph_neighbors, self.random_state)

    def _disk_key(self, key) -> tuple:
        """``key`` with what else the answer depends on: the build's thread count
        (pynndescent shares work out by thread) and the library version (read from its
        metadata: a fit served by the cache imports neither pynndescent nor numba)."""
        return ("outliers", FIT_CACHE_VERSION, _pynndescent_version(), build_threads()) + key

    # ------------------------------------------------------------------ building

    def build(self):
        """The index: from this process, the injected cache, or built (``source`` says which).
        Returns self."""
        key = self._key()
        entry, self.source = INDEXES.get(key), "this process"
        if entry is None:
            entry, self.source = self._from_cache(key), "cache"
        if entry is None:
            enable_numba_cache()
            from pynndescent import NNDescent

            m = len(self.rows)
            nn = NNDescent(self.rows, n_neighbors=min(self.graph_neighbors, m - 1),
                           random_state=self.random_state, n_jobs=build_threads(),
                           compressed=False, verbose=False,
                           search_tree_leaf_budget=SEARCH_TREE_LEAVES)
            graph = tuple(a.copy() for a in nn.neighbor_graph)
            prepare_index(nn)
            entry, self.source = _Entry(*index_to_state(nn), graph, nn), "built"
            if self.cache is not None:
                self.cache.save(self._disk_key(key), entry.params,
                                {**entry.arrays, "__graph_indices": graph[0],
                                 "__graph_distances": graph[1]})
        if self.source != "this process":
            INDEXES.put(key, entry, 0)
        self._entry = entry
        return self

    def _from_cache(self, key):
        """The entry an earlier process built for the same reference, or None. The NNDescent
        is restored from the arrays only when a query needs it; the state is decoded here, so
        an entry that does not decode is built again instead."""
        if self.cache is None:
            return None
        hit = self.cache.load(self._disk_key(key))
        if hit is None:
            return None
        arrays = dict(hit["arrays"])
        graph = (arrays.pop("__graph_indices", None), arrays.pop("__graph_distances", None))
        try:
            if graph[0] is None:
                raise KeyError("no graph")
            decode_state(hit["params"], arrays)
        except Exception as exc:  # noqa: BLE001 - an entry of another make: build it again
            log.warning("outlier index cache: entry not usable (%s); building the index", exc)
            return None
        return _Entry(hit["params"], arrays, graph)

    def own_neighbours(self, k):
        """(positions (m, k), distances (m, k)) of each reference row's k nearest other
        reference rows, from the build's graph (column 0 of the graph is the row itself)."""
        gi, gd = self._entry.graph
        own_entry = gi == np.arange(len(gi))[:, None]
        idx = np.argsort(np.where(own_entry | (gi < 0), np.inf, gd), axis=1, kind="stable")[:, :k]
        return np.take_along_axis(gi, idx, 1), np.take_along_axis(gd, idx, 1)

    def reference_answers(self, k, sampled):
        """Each reference row's k nearest other reference rows (they set every outlier term's
        median and MAD), into NEIGHBOUR_MEMO as ``neighbours(rows, ids, k)`` answers them.
        When the reference is a sample of the rows (``sampled``), from the build's graph, no
        query: the threshold is set on rows from outside it, queried as every row is. When it
        is all the rows, their terms also set the threshold and the fit's flags, so they are
        queried as a later label queries them (and so is a graph that leaves a row short)."""
        graph = None if self._entry is None else self._entry.graph
        if sampled and graph is not None and graph[0] is not None:
            key = self._memo_key(self.rows, self.ids, k)
            hit = NEIGHBOUR_MEMO.get(key)  # ``prepare`` took them, ``fit`` asks again
            if hit is not None:
                return hit
            idx, dist = self.own_neighbours(k)
            if idx.shape[1] == k and (idx >= 0).all():
                return _remember(key, idx, dist)
        return self.neighbours_cached(self.rows, self.ids, k)

    # ------------------------------------------------------------------ state

    def state(self):
        """(params, arrays) of the prepared index (annindex: no pickle)."""
        return self._entry.params, self._entry.arrays

    @classmethod
    def from_state(cls, rows, ids, params, arrays, graph_neighbors=30, random_state=0):
        """A saved index: this process's entry for the same reference if it has one, else
        restored from the arrays on its first query."""
        obj = cls(rows, ids, graph_neighbors, random_state)
        key = obj._key()
        entry = INDEXES.get(key)
        if entry is None:
            entry = _Entry(params, arrays, None)
            INDEXES.put(key, entry, 0)
        obj._entry, obj.source = entry, "model"
        return obj

    # ------------------------------------------------------------------ querying

    def nn(self):
        """The NNDescent for this thread: a view of this process's index with its own query
        scratch (threads sharing one index corrupt each other's neighbours)."""
        entry = self._entry
        if entry.nn is None:
            live = INDEXES.get(self._key())  # another scorer of this process restored it
            entry = live if live is not None and live.nn is not None else entry
            if entry.nn is None:
                entry.restored()
                INDEXES.put(self._key(), entry, 0)
            self._entry = entry
        return thread_view(entry.nn)

    def query(self, x, k):
        """The index's k nearest neighbours of the rows ``x``, in parts of QUERY_PART rows side
        by side on threads (the search releases the GIL)."""
        n = len(x)
        if n <= QUERY_PART:
            return self.nn().query(x, k=k, epsilon=QUERY_EPSILON)

        def part(a):
            i, d = self.nn().query(x[a:a + QUERY_PART], k=k, epsilon=QUERY_EPSILON)
            return i.copy(), d.copy()  # the thread's query workspace holds them till its next

        parts = list(_query_pool().map(part, range(0, n, QUERY_PART)))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _memo_key(self, x, ids, k):
        """NEIGHBOUR_MEMO's key of the question (and part of its disk key): these rows
        (float32) with these ids, k, walked with QUERY_EPSILON."""
        return (self.fingerprint(), k, QUERY_EPSILON, digest(x), digest(np.asarray(ids)))

    def neighbours(self, x, ids, k):
        """(positions (n, k) int32, distances (n, k)) of the k nearest reference rows to the
        scoring rows ``x`` (absolute ids ``ids``), skipping a row's own reference entry."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        key = self._memo_key(x, ids, k)
        hit = NEIGHBOUR_MEMO.get(key)
        if hit is not None:
            return hit
        idx, dist = self.query(x, k + 1)
        is_self = self.ids[idx] == np.asarray(ids)[:, None]
        order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # self entries move last
        return _remember(key, np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1))

    def neighbours_cached(self, x, ids, k):
        """``neighbours`` for a question the fit asks (the reference rows, the threshold
        sample), answered from the injected cache when an earlier process asked it."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        key = self._memo_key(x, ids, k)
        if self.cache is None:
            return self.neighbours(x, ids, k)
        disk_key = self._disk_key(("neighbours", self.graph_neighbors, self.random_state) + key)
        if NEIGHBOUR_MEMO.get(key) is None:
            hit = self.cache.load(disk_key)
            if hit is not None and hit["arrays"]["idx"].shape == (len(x), k):
                return _remember(key, hit["arrays"]["idx"], hit["arrays"]["dist"])
        out = self.neighbours(x, ids, k)
        self.cache.save(disk_key, {}, {"idx": out[0], "dist": out[1]})
        return out


def _remember(key, idx, dist):
    """(positions int32, distances float32) of a question's answer, kept in NEIGHBOUR_MEMO
    under ``key`` and read only: shared by every later caller with the same question."""
    out = (idx.astype(np.int32), np.ascontiguousarray(dist, dtype=np.float32))
    for a in out:
        a.flags.writeable = False
    NEIGHBOUR_MEMO.put(key, out, out[0].nbytes + out[1].nbytes)
    return out


def _query_pool():
    if not _QUERY_POOL:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _QUERY_POOL.append(ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                              thread_name_prefix="vclust-query"))
    return _QUERY_POOL[0]


def thread_view(index):
    """A shallow copy of ``index`` for the calling thread, with its own query scratch (the
    graph, trees, data and compiled search functions are shared, read only)."""
    views = getattr(_LOCAL, "views", None)
    if views is None or views[0] is not index:
        view = object.__new__(type(index))
        view.__dict__.update(index.__dict__)
        view._visited = np.zeros_like(index._visited)
        view._query_workspace = None
        _LOCAL.views = views = (index, view)
    return views[1]


def build_threads() -> int:
    """Threads that build the reference index: 2 where numba has them. The graph depends on
    the thread count (pynndescent shares the candidate updates out by thread), not on the
    scheduling: the same count on every machine gives the same index for the same rows.
    Numba's thread count, found as numba finds it (NUMBA_NUM_THREADS, else the CPUs this
    process may use) without importing it: a fit served by the cache never does."""
    import os

    if os.environ.get("NUMBA_NUM_THREADS"):
        count = int(os.environ["NUMBA_NUM_THREADS"])
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count() or 1
    return max(1, min(2, count))


def _pynndescent_version() -> str:
    if not _PYNNDESCENT_VERSION:
        from importlib import metadata

        _PYNNDESCENT_VERSION.append(metadata.version("pynndescent"))
    return _PYNNDESCENT_VERSION[0]


def warm_up(n_features: int = 8):
    """Compile pynndescent's index-building kernels in this process (a tiny index), once per
    process. `vclust compare` runs it on a thread while it reads and reduces the sets."""
    enable_numba_cache()
    from pynndescent import NNDescent

    x = np.random.default_rng(0).random((300, n_features)).astype(np.float32)
    prepare_index(NNDescent(x, n_neighbors=10, random_state=0, n_jobs=1, compressed=False))
