"""Descriptor store and ingest: every source format, batches, the ledger, the lock, bad input
(the store unchanged after each refusal), a killed append, and malicious pickles."""

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vclust.errors import InputError, StoreLockedError
from vclust.storage.ingest import ingest
from vclust.storage.sources import open_source
from vclust.storage.store import Store, store_lock

VCLUST = [sys.executable, "-m", "vclust.cli"]
RNG = np.random.default_rng(0)
X = RNG.random((300, 8)).astype(np.float32)
IDS = [f"veriwild\\1\\{i:05d}\\{i:06d}.jpg" for i in range(300)]


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path):
    """A store holding one batch 'b0' of X under the name 'osnet'."""
    np.save(tmp_path / "osnet.npy", X)
    pd.DataFrame({"paths": IDS}).to_csv(tmp_path / "ids.csv", index=False)
    ingest(tmp_path / "store", [tmp_path / "osnet.npy"], ids_csv=tmp_path / "ids.csv", batch="b0",
           chunk_rows=64)
    return tmp_path / "store"


def _read(store_path, name="osnet"):
    return Store.open(store_path).descriptors(name).compute()


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("kind", ["pickle4", "pickle5", "frame", "frame_ids", "list", "dict",
                                  "npy", "npz", "parquet_list", "parquet_cols", "csv"])
def test_every_source_format(tmp_path, kind):
    ids = [f"img/{i}" for i in range(len(X))]
    data = X
    if kind in ("pickle4", "pickle5"):
        data = np.tile(X, (10, 1))  # past 64 KiB: pickled outside a frame, so streamed
        f = tmp_path / "osnet.pickle"
        f.write_bytes(pickle.dumps(data, protocol=int(kind[-1])))
        assert open_source(f)._kind == "layout"  # streamed, not unpickled
    elif kind.startswith("frame"):
        f = tmp_path / "osnet.pkl"
        frame = pd.DataFrame(X)
        if kind == "frame_ids":
            frame.insert(0, "paths", ids)
        frame.to_pickle(f)
    elif kind == "list":
        f = tmp_path / "osnet.pickle"
        f.write_bytes(pickle.dumps(list(X)))
    elif kind == "dict":
        f = tmp_path / "osnet.pickle"
        f.write_bytes(pickle.dumps(dict(zip(ids, X))))
    elif kind == "npy":
        f = tmp_path / "osnet.npy"
        np.save(f, X)
    elif kind == "npz":
        f = tmp_path / "osnet.npz"
        np.savez(f, X=X)
    elif kind == "parquet_list":
        f = tmp_path / "osnet.parquet"
        pq.write_table(pa.table({"id": ids, "v": list(X)}), f)
    elif kind == "parquet_cols":
        f = tmp_path / "osnet.parquet"
        pq.write_table(pa.table({f"d{j}": X[:, j] for j in range(X.shape[1])}), f)
    else:
        f = tmp_path / "osnet.csv"
        pd.DataFrame(X).to_csv(f, index=False, float_format="%.9g")
    out = ingest(tmp_path / "store", [f], batch="b0")
    assert out["status"] == "written" and out["rows"] == len(data)
    np.testing.assert_array_equal(_read(tmp_path / "store"), data)
    if kind in ("frame_ids", "dict", "parquet_list"):
        assert list(Store.open(tmp_path / "store").ids()) == ids


def test_npy_is_read_in_blocks(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", X)
    src = open_source(tmp_path / "x.npy")
    blocks = list(src.blocks(100))
    assert [len(b) for b in blocks] == [100, 100, 100]
    assert not any(isinstance(b, np.memmap) for b in blocks)


def test_rows_of_zeros_are_stored_as_chunks_and_read_back(tmp_path):
    """A block of all-zero rows (a black frame's descriptors, say) is written as a chunk like
    any other: vclust opens arrays to write without zarr's comparison of every chunk with the
    fill value (vclust.storage.fs.open_array), and the rows read back as written."""
    x = X.copy()
    x[:100] = 0.0
    np.save(tmp_path / "osnet.npy", x)
    ingest(tmp_path / "st", [tmp_path / "osnet.npy"], batch="b0", chunk_rows=100)
    np.testing.assert_array_equal(_read(tmp_path / "st"), x)
    chunks = tmp_path / "st" / "descriptors" / "osnet" / "c"
    assert sorted(p.name for p in chunks.iterdir()) == ["0", "1", "2"]
    # the setting was zarr's global one only while each array opened, on every writer thread
    import zarr

    assert zarr.config.get("array.write_empty_chunks") is False


def test_case_folder(tmp_path):
    case = tmp_path / "case"
    (case / "descriptors").mkdir(parents=True)
    for name, d in (("osnet", 8), ("mdc_color", 4)):
        (case / "descriptors" / f"{name}.pickle").write_bytes(pickle.dumps(RNG.random((300, d)).astype(np.float32)))
    pd.DataFrame({"paths": IDS}).to_csv(case / "images_paths.csv", index=False)
    ingest(tmp_path / "store", [case], batch="b0")
    s = Store.open(tmp_path / "store")
    assert s.dims == {"vdc_color": 4, "osnet": 8}
    assert s.ids()[1] == "veriwild/1/00001/000001.jpg"
    d = s.descriptors("osnet")
    assert d.chunks[0][0] == s.chunk_rows or d.shape[0] < s.chunk_rows


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("compression", [None, "lz4", "zstd"])
def test_compression_round_trips_and_is_fixed_at_creation(tmp_path, compression):
    import zarr

    path = tmp_path / "st"
    np.save(tmp_path / "osnet.npy", X)
    ingest(path, [tmp_path / "osnet.npy"], batch="b0", compression=compression)
    s = Store.open(path)
    assert s.compression == (compression or "none")
    codecs = str(zarr.open_array(path / "descriptors" / "osnet", mode="r").metadata.codecs)
    assert ("Blosc" in codecs) == (compression is not None)
    if compression:
        assert compression in codecs
    np.testing.assert_array_equal(_read(path), X)
    before = tree_digest(path)
    other = "lz4" if compression != "lz4" else "zstd"
    with pytest.raises(InputError, match="applies only when a store is created"):
        ingest(path, [tmp_path / "osnet.npy"], batch="b1", compression=other)
    with pytest.raises(InputError, match="--compression must be one of"):
        ingest(tmp_path / "st2", [tmp_path / "osnet.npy"], compression="gzip")
    assert tree_digest(path) == before and not (tmp_path / "st2").exists()


def test_batches_ledger_and_idempotence(store, tmp_path):
    s = Store.open(store)
    entry = s.ledger[0]
    assert entry["id"] == "b0" and (entry["start"], entry["stop"]) == (0, 300)
    assert len(entry["sources"][0]["sha256"]) == 64 and entry["created"]
    before = tree_digest(store)
    again = ingest(store, [tmp_path / "osnet.npy"], ids_csv=tmp_path / "ids.csv", batch="b0")
    assert again["status"] == "unchanged" and tree_digest(store) == before
    y = RNG.random((50, 8)).astype(np.float32)
    np.save(tmp_path / "new.npy", y)
    with pytest.raises(InputError, match="already stored from other sources"):
        ingest(store, [tmp_path / "new.npy"], name="osnet", batch="b0")
    assert tree_digest(store) == before
    ingest(store, [tmp_path / "new.npy"], name="osnet", batch="b1")
    s = Store.open(store)
    assert s.batch_rows("b1") == (300, 350) and list(s.batches()[-2:]) == ["b1", "b1"]
    np.testing.assert_array_equal(_read(store)[300:], y)
    np.testing.assert_array_equal(_read(store)[:300], X)


def test_lock_keeps_second_writer_out_and_stale_lock_is_taken(store, tmp_path):
    np.save(tmp_path / "new.npy", X[:10] + 1)
    with store_lock(store):
        with pytest.raises(StoreLockedError, match="being written by pid"):
            ingest(store, [tmp_path / "new.npy"], name="osnet", batch="b1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    lock = store.with_name(store.name + ".lock")
    import socket

    lock.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "since": 0}))
    assert ingest(store, [tmp_path / "new.npy"], name="osnet", batch="b1")["rows"] == 10
    assert not lock.exists()


# --------------------------------------------------------------------------- bad input


def _bad_sources(tmp_path):
    """(name, [source paths], extra kwargs, expected message) for each kind of bad input."""
    cases = []

    def put(name, data):
        p = tmp_path / name
        if isinstance(data, np.ndarray):
            np.save(p, data)
        else:
            p.write_bytes(data)
        return p

    nan = X.copy()
    nan[[3, 17]] = np.nan
    cases.append(("nan", [put("osnet.npy", nan)], {}, r"2 row\(s\) hold NaN or Inf.*rows 3, 17"))
    inf = X.copy()
    inf[5, 0] = np.inf
    cases.append(("inf", [put("inf.npy", inf)], {"name": "osnet"}, "rows 5"))
    cases.append(("width", [put("wide.npy", RNG.random((10, 9)).astype(np.float32))],
                  {"name": "osnet"}, "width 9 differs from the stored set 'osnet' \\(8 dims\\)"))
    cases.append(("ragged", [put("ragged.pickle", pickle.dumps([[1.0, 2.0], [1.0]]))],
                  {"name": "osnet"}, "ragged rows"))
    rag = tmp_path / "rag.parquet"
    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0]]}), rag)
    cases.append(("ragged_parquet", [rag], {"name": "osnet"}, "ragged rows"))
    cases.append(("empty", [put("empty.npy", np.empty((0, 8), np.float32))], {"name": "osnet"},
                  "empty source"))
    cases.append(("zero_bytes", [put("zero.npy", b"")], {"name": "osnet"}, "empty file"))
    ids = tmp_path / "short_ids.csv"
    pd.DataFrame({"paths": IDS[:5]}).to_csv(ids, index=False)
    cases.append(("ids_count", [put("ok.npy", X[:10] + 1)], {"name": "osnet", "ids_csv": ids},
                  r"ids count \(5\) differs from descriptor rows \(10\)"))
    dup = tmp_path / "dup_ids.csv"
    pd.DataFrame({"paths": ["a", "a"] + [f"z{i}" for i in range(8)]}).to_csv(dup, index=False)
    cases.append(("dup_ids", [put("ok2.npy", X[:10] + 2)], {"name": "osnet", "ids_csv": dup},
                  "duplicate ids in the batch: a"))
    old = tmp_path / "old_ids.csv"
    pd.DataFrame({"paths": IDS[:10]}).to_csv(old, index=False)
    cases.append(("ids_in_store", [put("ok3.npy", X[:10] + 3)], {"name": "osnet", "ids_csv": old},
                  "ids already in the store"))
    txt = tmp_path / "osnet.csv"
    txt.write_text("a,b\n1,x\n2,y\n")
    cases.append(("text_csv", [txt], {}, "non-numeric"))
    cases.append(("object_array", [put("obj.pickle", pickle.dumps(np.array(["a", "b"], dtype=object)))],
                  {"name": "osnet"}, "non-numeric|2-D"))
    good = put("good.npy", X)
    raw = good.read_bytes()
    cases.append(("truncated_npy", [put("trunc.npy", raw[: len(raw) // 2])], {"name": "osnet"},
                  "truncated"))
    pk = pickle.dumps(X, protocol=4)
    cases.append(("truncated_pickle", [put("trunc.pickle", pk[: len(pk) // 2])], {"name": "osnet"},
                  "corrupt or truncated"))
    cases.append(("corrupt", [put("junk.npz", b"PK\x03\x04 definitely not a zip file")],
                  {"name": "osnet"}, "corrupt or truncated"))
    cases.append(("unknown_format", [put("x.h5", b"\x89HDF\r\n")], {"name": "osnet"},
                  "unknown format '.h5'"))
    cases.append(("missing", [tmp_path / "nope.npy"], {"name": "osnet"}, "no such file"))
    return cases


def test_every_bad_input_is_refused_and_store_unchanged(store, tmp_path):
    before = tree_digest(store)
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, paths, kwargs, message in _bad_sources(bad):
        with pytest.raises(InputError, match=message):
            ingest(store, paths, batch=f"bad-{name}", **kwargs)
        assert tree_digest(store) == before, f"{name} changed the store"
        assert not store.with_name(store.name + ".lock").exists()


def test_drop_invalid_rows_records_their_ids(store, tmp_path):
    y = X[:20] + 5
    y[[2, 7]] = np.nan
    np.save(tmp_path / "nan.npy", y)
    pd.DataFrame({"paths": [f"n{i}" for i in range(20)]}).to_csv(tmp_path / "n.csv", index=False)
    out = ingest(store, [tmp_path / "nan.npy"], name="osnet", ids_csv=tmp_path / "n.csv",
                 batch="b1", on_invalid="drop")
    assert out["rows"] == 18 and out["dropped"] == 2
    s = Store.open(store)
    assert s.batch_entry("b1")["dropped_ids"] == ["n2", "n7"]
    assert "n2" not in set(s.ids())
    assert np.isfinite(_read(store)).all()


def test_cli_bad_input_exits_2_with_one_line(store, tmp_path):
    before = tree_digest(store)
    nan = X.copy()
    nan[4] = np.nan
    np.save(tmp_path / "osnet_nan.npy", nan)
    (tmp_path / "bad.yaml").write_text("kind: local\nn_wrokers: 2\n")
    for args in (["ingest", str(store), str(tmp_path / "osnet_nan.npy"), "--name", "osnet"],
                 ["ingest", str(store), str(tmp_path / "osnet_nan.npy"), "--cluster",
                  str(tmp_path / "bad.yaml")],
                 ["ingest", str(store), str(tmp_path / "missing.npy")],
                 ["info", str(tmp_path)],
                 ["fit", str(store), "--descriptor", "osnet", "--model", str(tmp_path / "m"),
                  "--contamination", "0.7"],
                 ["fit", str(store), "--descriptor", "osnet", "--model", str(tmp_path / "m"),
                  "--k-range", "9:4"]):
        out = subprocess.run(VCLUST + args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("vclust: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], out.stderr
        assert "Traceback" not in out.stderr
    assert tree_digest(store) == before
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- crash and safety


def test_killed_append_is_rolled_back(store, tmp_path):
    big = np.random.default_rng(1).random((600_000, 8)).astype(np.float32)
    np.save(tmp_path / "big.npy", big)
    code = (f"from vclust.storage.ingest import ingest; ingest({str(store)!r}, [{str(tmp_path / 'big.npy')!r}], "
            f"name='osnet', batch='big')")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    meta = store / "descriptors" / "osnet" / "zarr.json"
    deadline = time.time() + 120
    while json.loads(meta.read_text())["shape"][0] == 300:
        assert proc.poll() is None and time.time() < deadline, "writer ended before it grew the store"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert Store.open(store).batch_ids() == ["b0"], "the killed append reached its ledger entry"
    assert json.loads(meta.read_text())["shape"][0] > 300  # the unfinished rows are on disk
    s = Store.open(store, mode="a")  # a writer's open rolls back (the lock is stale: not needed here)
    assert s.n_rows == 300 and json.loads(meta.read_text())["shape"][0] == 300
    np.testing.assert_array_equal(_read(store), X)
    np.save(tmp_path / "small.npy", X[:7] + 9)
    ingest(store, [tmp_path / "small.npy"], name="osnet", batch="b1")  # takes over the stale lock
    np.testing.assert_array_equal(_read(store)[300:], X[:7] + 9)


class _Payload:
    def __init__(self, target, how):
        self.target, self.how = target, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.target}",))
        if self.how == "popen":
            return (subprocess.Popen, (["touch", str(self.target)],))
        return (eval, (f"open({str(self.target)!r}, 'w').close()",))


@pytest.mark.parametrize("how", ["system", "popen", "eval"])
def test_malicious_pickle_is_refused_without_running(tmp_path, how):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps(_Payload(target, how)))
    with pytest.raises(InputError, match="refused to unpickle .*--trust-pickle"):
        ingest(tmp_path / "store", [evil])
    assert not target.exists()
    assert not (tmp_path / "store").exists()
    # a DataFrame inside a list is data, not code: fine with --trust-pickle too
    ok = tmp_path / "ok.pickle"
    ok.write_bytes(pickle.dumps(pd.DataFrame(X)))
    assert ingest(tmp_path / "store2", [ok], trust_pickle=True)["rows"] == len(X)
