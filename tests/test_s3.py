"""Store, labels and registry on an S3-compatible object store (``s3://`` URLs), against a real
S3 server process on 127.0.0.1 (moto's standalone server, conftest.s3_server): the commands
end to end (ingest on a LocalCluster's worker processes, fit, label, export, report, info),
the nightly job, an ingest SIGKILLed mid-append recovered, and two writers at once. Nothing
is mocked: every read and write goes over HTTP to the server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.test_faults import ENV as _ENV, REPO, VCLUST, assert_one_line, small_case

PROCS = "kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: true\n" \
        "dashboard_address: null\nmemory_limit: 2GB\n"  # a worker process: it reads S3 itself
THREADS = "kind: local\nn_workers: 1\nthreads_per_worker: 2\nprocesses: false\n" \
          "dashboard_address: null\n"


def env():
    """The subprocesses' environment: the S3 server's AWS_* variables (set by the fixture)."""
    return {**_ENV, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}


def held(lock_dir) -> list:
    """The generations of an S3 store lock that are not marked released (the last one stays
    after a release, marked: vclust.storage.store._remote_lock)."""
    out = []
    for p in (lock_dir.iterdir() if lock_dir.is_dir() else []):
        try:
            if not json.loads(p.read_text()).get("released"):
                out.append(p.name)
        except FileNotFoundError:  # an older generation its writer deleted meanwhile
            pass
    return out


def cli(args, timeout=180, **kw):
    return subprocess.run(VCLUST + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=REPO, **kw)


def bucket_keys(url):
    """Every key under ``url`` (relative), listed from the server."""
    from vclust.storage.fs import as_path

    root = as_path(url)
    return sorted(p[len(root.path) + 1:] for p in root.fs.find(root.path))


def local_files(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3case")
    b0 = small_case(root / "b0", rows=600, seed=0)
    b1 = small_case(root / "b1", rows=600, seed=1)
    (root / "procs.yaml").write_text(PROCS)
    (root / "threads.yaml").write_text(THREADS)
    return {"root": root, "b0": b0, "b1": b1}


def _ingest_args(store, files_ids, batch):
    files, ids = files_ids
    return ["ingest", store, *files, "--ids", ids, "--batch", batch]


# --------------------------------------------------------------------------- the commands


def test_commands_end_to_end_on_s3(case, s3_bucket, tmp_path):
    """ingest (its writes on a LocalCluster worker process), fit and label into a registry and
    labels on S3, export and report from them: everything of the store, registry and labels is
    on the server, nothing of it on the local disk, and the labels are the model's."""
    import dask.array as da

    from vclust.storage.labels import read_labels
    from vclust.model.bundle import Model
    from vclust.model.registry import Registry

    store, reg, labels = f"{s3_bucket}/store", f"{s3_bucket}/reg", f"{s3_bucket}/labels"
    procs, threads = case["root"] / "procs.yaml", case["root"] / "threads.yaml"
    out = cli(_ingest_args(store, case["b0"], "b0") + ["--cluster", procs])
    assert out.returncode == 0, out.stderr
    out = cli(_ingest_args(store, case["b1"], "b1") + ["--cluster", threads])
    assert out.returncode == 0, out.stderr
    out = cli(["fit", store, "--registry", reg, "--descriptor", "osnet", "--k", "4",
               "--cluster", threads])
    assert out.returncode == 0, out.stderr
    out = cli(["label", store, "--registry", reg, "--out", labels, "--all",
               "--cluster", procs])
    assert out.returncode == 0, out.stderr
    csv = tmp_path / "labels.csv"
    out = cli(["export", labels, "--registry", reg, "--csv", csv])
    assert out.returncode == 0, out.stderr
    out = cli(["report", store, "--registry", reg, "--labels", labels, "--out",
               tmp_path / "report", "--map-method", "pca", "--cluster", threads])
    assert out.returncode == 0, out.stderr
    info = cli(["info", store, "--json"])
    assert info.returncode == 0, info.stderr
    info = json.loads(info.stdout)
    assert info["rows"] == 1200 and [b["id"] for b in info["batches"]] == ["b0", "b1"]
    assert info["bytes_on_disk"] > 1200 * 8 * 4  # measured on the server

    keys = bucket_keys(s3_bucket)
    model_id = Registry(reg).current()
    assert "store/zarr.json" in keys and "reg/current" in keys
    assert f"reg/models/{model_id}/manifest.json" in keys
    for b in ("b0", "b1"):  # one commit record per batch, the run's
        assert len([k for k in keys if k.startswith(f"labels/_commits/model={model_id}/"
                                                    f"batch={b}/")]) == 1, keys
    from vclust.storage.fs import as_path

    lock_keys = [k for k in keys if k.startswith("store.lock/")]
    assert len(lock_keys) == 1 and not held(as_path(f"{s3_bucket}/store.lock")), keys  # released
    assert local_files(tmp_path) == {"labels.csv"} | {
        f for f in local_files(tmp_path) if f.startswith("report/")}
    assert (tmp_path / "report" / "index.html").is_file()

    # the labels are the model's: applied here to the source arrays, row for row
    x = np.concatenate([np.load(case["b0"][0][0]), np.load(case["b1"][0][0])])
    model = Model.load(f"{reg}/models/{model_id}")
    expected = model.apply({"osnet": da.from_array(x, chunks=300)})[0].compute()
    exported = pd.read_csv(csv)
    ids = list(pd.read_csv(case["b0"][1])["paths"]) + list(pd.read_csv(case["b1"][1])["paths"])
    assert exported["path"].tolist() == ids
    np.testing.assert_array_equal(exported["cluster"].to_numpy(), expected)
    frame = read_labels(labels, model=model_id).sort_values("row")
    np.testing.assert_array_equal(frame["cluster"].to_numpy(), expected)


# --------------------------------------------------------------------------- the nightly job


def test_nightly_job_on_s3_and_idempotent(case, s3_bucket, tmp_path):
    """The nightly job (ingest, pixels, label, drift, export; the report command is run above)
    with store, registry, labels and drift reports on S3; the same night again changes nothing
    and exits as the first did."""
    from PIL import Image
    from vclust.jobs import steps as jobs
    from vclust.jobs.params import FitParams
    from vclust.storage.ingest import ingest

    store, reg, labels = f"{s3_bucket}/store", f"{s3_bucket}/reg", f"{s3_bucket}/labels"
    files, ids = case["b0"]
    ingest(store, files, ids_csv=ids, batch="b0")
    model = jobs.fit(store, FitParams(descriptor="osnet", k=4, seed=0))
    jobs.save_model(model, registry=reg)
    files, ids = case["b1"]
    images = tmp_path / "images"  # the night's pictures: flat grey ones, one in three white
    for i, path in enumerate(pd.read_csv(ids)["paths"]):
        (images / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), (255, 255, 255) if i % 3 == 0 else (90 + i % 40, 80, 70)
                  ).save(images / path)
    spec = {"name": "nightly", "steps": ["ingest", "pixels", "label", "drift", "export"],
            "store": store, "registry": reg, "labels": labels,
            "cluster": str(case["root"] / "threads.yaml"),
            "ingest": {"sources": [str(f) for f in files], "ids": str(ids), "batch": "night1"},
            "pixels": {"images": str(images)},
            "drift": {"report_dir": f"{s3_bucket}/drift"},
            "export": {"csv": str(tmp_path / "labels.csv")}}
    job = tmp_path / "nightly.yaml"
    job.write_text(yaml.safe_dump(spec))
    first = cli(["run", job])
    assert first.returncode in (0, 3), first.stderr
    keys = bucket_keys(s3_bucket)
    current = keys[keys.index("reg/current")]
    assert "reg/nightly/night1.json" in keys
    assert any(k.startswith("drift/") and k.endswith("drift.json") for k in keys)
    assert any(k.startswith("labels/_commits/") and "/batch=night1/" in k for k in keys)
    exported = pd.read_csv(tmp_path / "labels.csv", keep_default_na=False)
    assert len(exported) == 600  # the night's batch
    # the pixel statistics stored on S3 reached the labels: the white frames are overexposed
    white = exported["path"].isin(pd.read_csv(ids)["paths"][::3])
    assert (exported.loc[white, "outlier_reason"] == "overexposed").all()
    assert any(k.startswith("store/pixels/night1/") for k in keys)
    assert current

    again = cli(["run", job])
    assert again.returncode == first.returncode, again.stderr
    assert "already processed" in again.stderr
    # nothing written the second time, but for the lock it took and released: a lock's last
    # generation stays, marked released, and the next writer's is one higher
    def unlocked(ks):
        return [k for k in ks if ".lock/" not in k]

    again_keys = bucket_keys(s3_bucket)
    assert unlocked(again_keys) == unlocked(keys)
    from vclust.storage.fs import as_path

    for folder in {k.rsplit("/", 1)[0] for k in again_keys if ".lock/" in k}:
        assert not held(as_path(f"{s3_bucket}/{folder}")), folder


# --------------------------------------------------------------------------- a killed append


def _content(store):
    from vclust.storage.store import Store

    s = Store.open(store)
    return {"ledger": [{k: v for k, v in b.items() if k != "created"} for b in s.ledger],
            "ids": s.ids().tolist(), "osnet": s.descriptors("osnet").compute()}


def test_ingest_sigkilled_mid_append_on_s3_recovers(case, s3_bucket, tmp_path):
    """SIGKILL an ingest into an S3 store holding the lock, and halfway through its chunk
    writes: the store reads as before (the ledger, the commit record, was not written), and
    the same ingest run again takes the lock over at once (a dead process on this host) and
    gives the store an uninterrupted ingest gives."""
    from vclust.storage.fs import as_path
    from vclust.storage.ingest import ingest

    big, big_ids = small_case(tmp_path / "big", rows=40_000, seed=2)
    x_big = np.load(big[0])
    code = ("import sys; from vclust.storage.ingest import ingest; "
            "ingest(sys.argv[1], [sys.argv[2]], ids_csv=sys.argv[3], batch='big', "
            "chunk_rows=1024)")
    files, ids = case["b0"]
    reached = {}
    for point in ("locked", "half_written"):
        store = f"{s3_bucket}/{point}"
        ingest(store, files, ids_csv=ids, batch="b0", chunk_rows=1024)
        before = _content(store)
        root = as_path(store)
        lock_dir = root.with_name(root.name + ".lock")
        chunks = root / "descriptors" / "osnet" / "c"

        def seen():
            if point == "locked":
                return bool(held(lock_dir))
            return chunks.is_dir() and sum(1 for _ in chunks.iterdir()) >= 20

        proc = subprocess.Popen([sys.executable, "-c", code, store, str(big[0]), str(big_ids)],
                                env=env(), cwd=REPO, start_new_session=True)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not seen():
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        now = _content(store)
        reached[point] = len(now["ids"]) == 600
        if reached[point]:  # killed before its commit record: the store as it was
            assert now["ledger"] == before["ledger"] and now["ids"] == before["ids"]
            np.testing.assert_array_equal(now["osnet"], before["osnet"])
            assert held(lock_dir)  # its lock is left behind
        ingest(store, big, ids_csv=big_ids, batch="big", chunk_rows=1024)  # takes over
        after = _content(store)
        assert [b["id"] for b in after["ledger"]] == ["b0", "big"]
        assert after["ids"] == before["ids"] + pd.read_csv(big_ids)["paths"].tolist()
        np.testing.assert_array_equal(after["osnet"], np.concatenate([before["osnet"], x_big]))
        assert not held(lock_dir)
    assert reached["locked"], reached


# --------------------------------------------------------------------------- two writers

# the racing writer of test_faults (store_lock takes local paths and s3:// URLs alike)
from .test_faults import LOCKER, race_rounds  # noqa: E402


def test_s3_lock_race_never_gives_two_holders(s3_bucket, tmp_path):
    """Four processes race for an S3 store's lock, 8 times, half the rounds from a dead
    holder's lock: exactly the conditional PUT's winner holds it, never two at once."""
    from vclust.storage.fs import as_path

    store = f"{s3_bucket}/store"
    lock_dir = as_path(store + ".lock")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    flag = tmp_path / "holder"
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, store, str(flag)], env=env(),
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    def plant_dead_holder(i):
        if i % 2:  # above the last round's released generation: the next writer's to take over
            top = max([int(p.name) for p in lock_dir.iterdir()] if lock_dir.is_dir() else [0])
            (lock_dir / f"{top + 1:012d}").write_text(json.dumps(
                {"pid": dead, "host": socket.gethostname(), "since": 0,
                 "expires": time.time() + 600}))

    results = race_rounds(procs, 8, plant_dead_holder)
    flat = [r for round_ in results for r in round_]
    assert "overlap" not in flat, results
    assert all(r in ("held", "refused") for r in flat), results
    assert all("held" in round_ for round_ in results), results
    assert not held(lock_dir)  # every holder released its generation
    assert len(list(lock_dir.iterdir())) == 1  # the last, marked released; the older deleted


def test_s3_lock_is_not_taken_twice_by_a_writer_whose_listing_predates_a_release(
        s3_bucket, monkeypatch):
    """The order the race test once caught, played through on the S3 server: writer E lists
    the lock (a dead holder's generation 7) and decides to create generation 8, but is slower
    than writer A, who takes 8 over and releases it; writer C then takes the lock. E's
    conditional PUT of 8 comes after that: it must not give E the lock beside C. (When a
    release deleted the highest generation, C took 1 in the emptied folder and E's PUT of 8
    succeeded: two holders.)"""
    import threading

    from vclust.errors import StoreLockedError
    from vclust.storage import fs as F
    from vclust.storage.fs import as_path
    from vclust.storage.store import store_lock

    store = f"{s3_bucket}/store"
    lock_dir = as_path(store + ".lock")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    (lock_dir / "000000000007").write_text(json.dumps(
        {"pid": dead, "host": socket.gethostname(), "since": 0, "expires": time.time() + 600}))
    real_put, go, listed = F.put_if_absent, threading.Event(), threading.Event()

    def put_if_absent(path, data):
        if threading.current_thread().name == "writer-E" and not go.is_set():
            listed.set()  # E has listed and chosen its generation; it waits here
            assert go.wait(30)
        return real_put(path, data)

    monkeypatch.setattr(F, "put_if_absent", put_if_absent)
    outcome = []

    def writer_e():
        try:
            with store_lock(store):
                outcome.append("held")
        except StoreLockedError:
            outcome.append("refused")

    e = threading.Thread(target=writer_e, name="writer-E")
    e.start()
    assert listed.wait(30)
    with store_lock(store):  # A takes the dead holder's lock over, and releases it
        pass
    with store_lock(store):  # C holds the lock while E's PUT goes out
        go.set()
        e.join(30)
        assert outcome == ["refused"], outcome
        assert len(held(lock_dir)) == 1
    assert not held(lock_dir)


def test_two_ingests_at_once_on_s3_lose_nothing(case, s3_bucket, tmp_path):
    """Two ingests of different batches into one new S3 store at once: each is written or
    refused with one line (exit 2); the refused one run again is written; no row is lost."""
    store = f"{s3_bucket}/store"
    procs = [subprocess.Popen(VCLUST + _ingest_args(store, case[b], b) + ["--cluster",
                              str(case["root"] / "threads.yaml")], env=env(), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for b in ("b0", "b1")]
    outs = [(p, *p.communicate(timeout=180)) for p in procs]
    for (p, _, err), b in zip(outs, ("b0", "b1")):
        if p.returncode != 0:
            assert p.returncode == 2 and "is being written by pid" in err, err
            assert "Traceback" not in err
            again = cli(_ingest_args(store, case[b], b))
            assert again.returncode == 0, again.stderr
    content = _content(store)
    assert sorted(b["id"] for b in content["ledger"]) == ["b0", "b1"]
    assert len(content["ids"]) == 1200 == len(set(content["ids"]))


def test_live_lock_of_another_host_is_refused_and_an_expired_one_taken_over(case, s3_bucket):
    from vclust.storage.fs import as_path

    store = f"{s3_bucket}/store"
    lock = as_path(store + ".lock") / "000000000003"
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": time.time(),
                                "expires": time.time() + 600}))
    out = cli(_ingest_args(store, case["b0"], "b0"))
    assert_one_line(out, 2, r"is being written by pid 1 on elsewhere")
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": 0, "expires": 1}))
    out = cli(_ingest_args(store, case["b0"], "b0"))
    assert out.returncode == 0, out.stderr
    assert "taking over the lock" in out.stderr


def test_two_label_runs_of_one_batch_on_s3_leave_one_whole_partition(case, s3_bucket):
    """Two label runs of the same batch at once: both complete, the later commit record wins
    whole, and the superseded run's files are removed."""
    from concurrent.futures import ThreadPoolExecutor

    from vclust.storage.labels import read_labels, write_batch
    from tests.test_faults import label_frame

    labels = f"{s3_bucket}/labels"
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda c: write_batch(labels, "m1", "b1", [
            label_frame(0, 300, cluster=c), label_frame(300, 300, cluster=c)]), (1, 2)))
    assert rows == [600, 600]
    frame = read_labels(labels)
    assert len(frame) == 600 and frame["cluster"].nunique() == 1  # one run's, whole
    parts = [k for k in bucket_keys(labels) if k.startswith("model=m1/batch=b1/")]
    assert len(parts) == 2, parts


# --------------------------------------------------------------------------- faults


def test_missing_bucket_and_unreachable_endpoint_give_one_line(case, s3_server, tmp_path):
    out = cli(["info", "s3://no-such-bucket-vclust/store"])
    assert_one_line(out, 2, r"no such bucket")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(VCLUST + _ingest_args("s3://anything/store", case["b0"], "b0"),
                         capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                              "AWS_MAX_ATTEMPTS": "1"})
    assert_one_line(out, 4, r"cannot reach the object store")


def test_cluster_config_s3_key_reaches_the_command_and_its_workers(case, s3_bucket, tmp_path):
    """With no AWS_ENDPOINT_URL in the environment, a cluster config's ``s3: {endpoint_url}``
    points the command and its LocalCluster worker process at the server."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    config = tmp_path / "cluster.yaml"
    config.write_text(PROCS + f"s3: {{endpoint_url: '{endpoint}', region: us-east-1}}\n")
    bare = {k: v for k, v in env().items() if k not in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    out = subprocess.run(VCLUST + _ingest_args(f"{s3_bucket}/store", case["b0"], "b0")
                         + ["--cluster", str(config)], capture_output=True, text=True,
                         timeout=180, env=bare, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert len(_content(f"{s3_bucket}/store")["ids"]) == 600


def test_lease_is_renewed_and_a_writer_taken_over_does_not_commit(case, s3_bucket,
                                                                   monkeypatch):
    """The holder renews its lease while it works; a holder whose lock was taken over (a newer
    generation exists) is stopped with exit 4's error before its commit record."""
    from vclust.errors import EnvironmentFault
    from vclust.storage.fs import as_path
    from vclust.storage.ingest import ingest
    from vclust.storage.store import Store, store_lock

    store = f"{s3_bucket}/store"
    files, ids = case["b0"]
    ingest(store, files, ids_csv=ids, batch="b0")
    lock_dir = as_path(store + ".lock")
    monkeypatch.setenv("VCLUST_S3_LEASE_SECONDS", "0.4")
    with store_lock(store):
        (mine,) = list(lock_dir.iterdir())
        first = json.loads(mine.read_text())["expires"]
        time.sleep(0.6)
        assert json.loads(mine.read_text())["expires"] > first  # renewed
    with pytest.raises(EnvironmentFault, match="took the store over"):
        with store_lock(store):
            s = Store.open(store, mode="a")
            (lock_dir / "999999999999").write_text(json.dumps(
                {"pid": 1, "host": "elsewhere", "since": time.time(),
                 "expires": time.time() + 600}))
            s.commit_batch({"id": "late", "start": 600, "stop": 600, "sources": []})
    assert Store.open(store).batch_ids() == ["b0"]
