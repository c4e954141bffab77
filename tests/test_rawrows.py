"""vclust.storage.rawrows: row ranges read from an uncompressed local store's chunk files are
zarr's rows, bit for bit; stores it cannot read that way go to zarr; a damaged chunk file is an
error, not zeros."""

import pickle

import numpy as np
import pytest

from vclust.errors import InputError
from vclust.storage.ingest import ingest
from vclust.storage.rawrows import RawRows
from vclust.storage.store import Store

RNG = np.random.default_rng(3)
X = RNG.normal(size=(1000, 24)).astype(np.float32)


@pytest.fixture
def stored(tmp_path):
    np.save(tmp_path / "osnet.npy", X)
    ingest(tmp_path / "st", [tmp_path / "osnet.npy"], batch="b0", chunk_rows=128)
    return tmp_path / "st"


def test_ranges_are_zarrs_rows(stored):
    arr = Store.open(stored).array("osnet")
    raw = RawRows.of(arr)
    assert raw is not None
    for a, b in [(0, 1000), (0, 128), (127, 129), (130, 131), (5, 900), (896, 1000), (999, 1000),
                 (300, 300)]:
        got = raw.read(a, b)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, arr[a:b])
        np.testing.assert_array_equal(got, X[a:b])
        for threads in (2, 3, 16):  # runs of whole chunks side by side, more threads than chunks
            np.testing.assert_array_equal(raw.read(a, b, threads=threads), X[a:b])
    np.testing.assert_array_equal(raw[10:20, 3:7], X[10:20, 3:7])
    # the dask arrays the commands read through, pickled as a worker gets them
    x = Store.open(stored).descriptors("osnet", 100, 700)
    assert any(isinstance(v, RawRows) for v in dict(x.__dask_graph__()).values())
    np.testing.assert_array_equal(x.compute(), X[100:700])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(raw)).read(0, 1000), X)


@pytest.fixture
def reads(monkeypatch):
    """The (start, stop) of every ``RawRows.read``, as they happen."""
    seen = []
    read = RawRows.read

    def counted(self, start, stop, *args, **kwargs):
        seen.append((start, stop))
        return read(self, start, stop, *args, **kwargs)

    monkeypatch.setattr(RawRows, "read", counted)
    return seen


def test_a_row_range_reads_exactly_its_rows_unoptimised(stored, reads):
    """A row range's blocks are the store's chunks cut at its ends, each read as exactly its
    rows with no graph optimisation (the label computes its arrays unoptimised, so that they
    share their reads: tests/test_jobs_e2e.py); a window of a window reads the rows under it."""
    import dask

    x = Store.open(stored).descriptors("osnet", 100, 700)
    assert x.chunks[0] == (28, 128, 128, 128, 128, 60)
    blocks = x.to_delayed(optimize_graph=False).ravel()
    got = dask.compute(*blocks, scheduler="sync")
    np.testing.assert_array_equal(np.concatenate(got), X[100:700])
    assert sorted(reads) == [(100, 128), (128, 256), (256, 384), (384, 512), (512, 640),
                             (640, 700)]
    raw = RawRows.of(Store.open(stored).array("osnet"))
    inner = raw.window(100, 700).window(50, 60)
    assert inner.shape == (10, 24)
    np.testing.assert_array_equal(inner[2:8], X[152:158])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(inner))[0:10], X[150:160])
    empty = Store.open(stored).descriptors("osnet", 300, 300)
    assert empty.shape == (0, 24) and empty.compute().shape == (0, 24)


def test_read_rows_reads_each_run_of_rows_exactly(stored, tmp_path, reads):
    """``read_rows``: scattered rows (the report's shown rows) are zarr's rows, each run of
    consecutive rows one read of exactly those rows; a compressed store's go through zarr."""
    from vclust.storage.rawrows import read_rows

    rows = np.array([0, 1, 2, 127, 128, 500, 998, 999])
    got = read_rows(Store.open(stored).array("osnet"), rows)
    np.testing.assert_array_equal(got, X[rows])
    assert reads == [(0, 3), (127, 129), (500, 501), (998, 1000)]
    np.save(tmp_path / "osnet.npy", X)
    ingest(tmp_path / "z", [tmp_path / "osnet.npy"], batch="b0", chunk_rows=128,
           compression="zstd")
    reads.clear()
    arr = Store.open(tmp_path / "z").array("osnet")
    assert RawRows.of(arr) is None
    np.testing.assert_array_equal(read_rows(arr, rows), X[rows])
    assert reads == [] and read_rows(arr, np.array([], np.int64)).shape == (0, 24)


def test_a_missing_chunk_reads_as_fill_and_a_short_one_is_an_error(stored):
    arr = Store.open(stored).array("osnet")
    raw = RawRows.of(arr)
    chunk = stored / "descriptors" / "osnet" / "c" / "2" / "0"
    data = chunk.read_bytes()
    chunk.unlink()  # as zarr leaves a chunk that was never written
    np.testing.assert_array_equal(raw.read(200, 300), arr[200:300])
    assert not raw.read(256, 300).any()
    chunk.write_bytes(data[:1000])
    with pytest.raises(InputError, match="ends before its rows 256..299; the store is damaged"):
        raw.read(200, 300)
    with pytest.raises(InputError, match="ends before its rows 256..383; the store is damaged"):
        raw.read(0, 1000, threads=2)  # a reading thread's error is the read's
    chunk.unlink()
    both = raw.read(0, 1000, threads=4)
    assert not both[256:384].any()
    np.testing.assert_array_equal(np.delete(both, np.s_[256:384], 0), np.delete(X, np.s_[256:384], 0))


def test_other_stores_go_to_zarr(tmp_path):
    np.save(tmp_path / "osnet.npy", X)
    ingest(tmp_path / "lz4", [tmp_path / "osnet.npy"], batch="b0", compression="lz4")
    assert RawRows.of(Store.open(tmp_path / "lz4").array("osnet")) is None
    np.testing.assert_array_equal(Store.open(tmp_path / "lz4").descriptors("osnet").compute(), X)


def test_take_and_gather_read_the_rows_asked_where_the_graph_runs_here(stored):
    """``RawRows.take``: sorted positions of a window, runs and gaps across chunk edges, a
    repeated row. ``outlier_rows.gather`` of a dask array marked ``with_row_reader`` reads the
    rows it wants through it when this process runs dask's graphs, and the same rows as the
    blocks would give; with another scheduler (a cluster's) or unsorted positions it takes the
    blocks, as before."""
    import dask

    from vclust.numerics.outlier_rows import gather, with_row_reader

    st = Store.open(stored)
    win = RawRows.of(st.array("osnet")).window(0, st.n_rows)
    pos = np.array([0, 1, 2, 127, 128, 129, 300, 300, 511, 512, 999])
    np.testing.assert_array_equal(win.take(pos), X[pos])
    np.testing.assert_array_equal(RawRows.of(st.array("osnet")).window(100, 700).take([0, 5, 6]),
                                  X[[100, 105, 106]])
    asked = []

    def take(p):
        asked.append(len(p))
        return win.take(p)

    x = with_row_reader(st.descriptors("osnet"), take)
    parts = (np.sort(RNG.choice(1000, 90, replace=False)), np.arange(400, 420))
    with dask.config.set(scheduler="threads"):
        got = gather(x, parts)
    assert asked == [90, 20]
    for g, p in zip(got, parts):
        np.testing.assert_array_equal(g, X[p])
    elsewhere = lambda dsk, keys, **kw: dask.get(dsk, keys, **kw)  # noqa: E731 - a cluster's
    unsorted = (parts[0][::-1],)
    for scheduler, ps in ((elsewhere, parts), ("threads", unsorted)):
        asked.clear()
        with dask.config.set(scheduler=scheduler):
            again = gather(x, ps)
        assert asked == []
        for g, p in zip(again, ps):
            # the blocks' order: block by block, each block's rows in the order asked
            np.testing.assert_array_equal(g, X[p[np.argsort(p // 128, kind="stable")]])
