"""`vclust promote` as one transaction (issue 28): a bad names file refused before anything
changes, two promotes at once, the same promote twice, a promote SIGKILLed at the wrong moment,
and only ids that label rows listed to name. Real registry, real labels, real `vclust`
processes; a kill is a real SIGKILL of the process at a chosen step."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from vclust.model.registry import Registry
from vclust.storage.labels import models as label_models, read_labels

from .test_faults import ENV, REPO, VCLUST, assert_one_line, run_cli, small_case


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A store of two batches (four blobs each, elsewhere), three models registered (none
    current): A k=4, B k=8, C k=6; each labels batch b0 only."""
    from vclust.jobs import steps as jobs
    from vclust.jobs.params import FitParams
    from vclust.model.registry import save_model
    from vclust.storage.ingest import ingest

    root = tmp_path_factory.mktemp("promote")
    for b, seed in (("b0", 0), ("b1", 1)):
        files, ids = small_case(root / f"case{b}", rows=600, seed=seed)
        ingest(root / "store", files, ids_csv=ids, batch=b)
    ids = {}
    for i, (name, k, seed) in enumerate((("A", 4, 0), ("B", 8, 1), ("C", 6, 2))):
        if i:  # model ids carry the second they were made: the next one in a later second
            time.sleep(1.01 - time.time() % 1)
        model = jobs.fit(root / "store", FitParams(descriptor="osnet", k=k, seed=seed))
        _, ids[name] = save_model(model, registry=root / "registry", make_current=False)
        jobs.label(root / "store", model, root / "labels", batches=["b0"])
    return {"root": root, "ids": ids}


@pytest.fixture
def fresh(built, tmp_path):
    """A copy of the registry and labels, A promoted (current) and its names written."""
    shutil.copytree(built["root"] / "registry", tmp_path / "registry")
    shutil.copytree(built["root"] / "labels", tmp_path / "labels")
    names = tmp_path / "names.csv"
    names.write_text("cluster,name,note\n" + "".join(f"{c},name {c},\n" for c in range(4)))
    out = run_cli(["promote", "--registry", tmp_path / "registry", built["ids"]["A"]])
    assert out.returncode == 0, out.stderr
    return {"reg": tmp_path / "registry", "labels": tmp_path / "labels", "names": names,
            **built["ids"]}


def _promote(f, model, names=None, **kw):
    args = ["promote", "--registry", f["reg"], "--labels", f["labels"], model]
    return run_cli(args + (["--names", names or f["names"]] if names is not False else []), **kw)


def _state(f) -> dict:
    """What a promote may change: the registered models, current, the labels' models, the
    names file and its .bak."""
    reg = Registry(f["reg"])
    bak = f["names"].with_name("names.csv.bak")
    return {"models": reg.list(), "current": reg.current(),
            "labels": label_models(f["labels"]), "names": f["names"].read_bytes(),
            "bak": bak.read_bytes() if bak.exists() else None,
            "journal": (f["reg"] / "promote.json").exists()}


@pytest.mark.parametrize("bad", ["duplicate", "latin1"])
def test_a_bad_names_file_is_refused_before_anything_changes(fresh, bad):
    """Issue 28: `promote ID --names bad.csv` exited 2 after `current` had switched (and after
    the successor was registered and labelled); the re-run said "already current"."""
    f = fresh
    if bad == "duplicate":
        f["names"].write_text("cluster,name\n0,red\n1,blue\n0,green\n")
    else:
        f["names"].write_bytes("cluster,name\n0,caf\u00e9\n1,gr\u00fcn\n".encode("latin-1"))
    before = _state(f)
    out = _promote(f, f["B"])
    assert_one_line(out, 2, "--names")
    assert _state(f) == before
    # the file fixed, the same promote goes through and carries the names
    f["names"].write_text("cluster,name\n0,red\n1,blue\n")
    out = _promote(f, f["B"])
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["renumbered"] and Registry(f["reg"]).current() == res["model"]
    named = pd.read_csv(f["names"], keep_default_na=False)
    kept = {int(v) for v in res["mapping"].values()} & {0, 1}
    assert sorted(named["cluster"]) == sorted(kept)


def test_two_promotes_at_once_wait_for_each_other_and_lose_no_name(fresh, tmp_path):
    """Issue 28: two promotes of different models at once both printed "current is X", the
    last won numbered against the old current, and names were lost. Both start while the
    registry's lock is held; they go one after the other, the second numbered against the
    first's result; the names equal those of the same two promotes run one after the other."""
    f = fresh
    reg = Registry(f["reg"])
    # the same two promotes in each order, one after the other, on copies: what may result
    expected = []
    for order in ((f["B"], f["C"]), (f["C"], f["B"])):
        g = {**f, "reg": tmp_path / f"reg{len(expected)}",
             "labels": tmp_path / f"labels{len(expected)}",
             "names": tmp_path / f"o{len(expected)}" / "names.csv"}
        shutil.copytree(f["reg"], g["reg"])
        shutil.copytree(f["labels"], g["labels"])
        g["names"].parent.mkdir()
        shutil.copyfile(f["names"], g["names"])
        for m in order:
            out = _promote(g, m)
            assert out.returncode == 0, out.stderr
        expected.append(g["names"].read_text())

    with reg.lock():  # both promotes start, then wait on this
        procs = [subprocess.Popen(VCLUST + ["promote", "--registry", str(f["reg"]), "--labels",
                                            str(f["labels"]), m, "--names", str(f["names"])],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=ENV, cwd=REPO) for m in (f["B"], f["C"])]
        time.sleep(3)
        assert all(p.poll() is None for p in procs)  # waiting, not refused nor done
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(o[0]) for o in outs]
    # the second numbered against the first's result (ids made in the same second do not sort
    # by time: their random suffix decides, so the order is read from "previous")
    a, b = results
    first, second = (a, b) if b["previous"] == a["model"] else (b, a)
    assert second["previous"] == first["model"], results
    assert reg.current() == second["model"]
    assert f["names"].read_text() in expected
    assert not (f["reg"] / "promote.json").exists()


def test_a_promote_refused_after_its_wait_changes_nothing(fresh):
    from vclust.errors import InputError
    from vclust.model.succession import promote

    f = fresh
    before = _state(f)
    with Registry(f["reg"]).lock():
        with pytest.raises(InputError, match="another promote or fit holds the registry"):
            promote(f["reg"], f["B"], labels_dir=f["labels"], names=f["names"],
                    say=lambda m: None, wait=0.5)
    assert _state(f) == before


def test_the_same_promote_twice_changes_nothing_the_second_time(fresh):
    """Issue 28: the same renumbering promote run twice registered a second successor, gave
    the empty slots new ids and dropped a name."""
    f = fresh
    out = _promote(f, f["B"])
    assert out.returncode == 0, out.stderr
    after_first = _state(f)
    out = _promote(f, f["B"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["unchanged"] is True
    assert "already current" in out.stderr
    assert _state(f) == after_first
    # promoting the current model itself: the same
    out = _promote(f, after_first["current"])
    assert out.returncode == 0 and json.loads(out.stdout)["unchanged"], out.stderr
    assert _state(f) == after_first


def test_a_first_promote_imports_no_scipy(built, tmp_path):
    """The first promote of a registry (nothing current, no labels to renumber) switches
    `current` and nothing else: it loads no clustering library. scipy.sparse, which the k-means
    module imported at its top for one Lloyd pass, was 0.15 of such a promote's 0.41 s
    (benchmarks/RESULTS.md)."""
    reg = tmp_path / "registry"
    shutil.copytree(built["root"] / "registry", reg)
    code = ("import json, sys\nfrom vclust.cli import main\ncode = main(sys.argv[1:])\n"
            "print(json.dumps([code, sorted(m for m in ('scipy', 'sklearn', 'numba', "
            "'pynndescent') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code, "promote", "--registry", str(reg),
                          built["ids"]["C"]], capture_output=True, text=True, env=ENV,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 0, out.stderr
    assert Registry(reg).current() == built["ids"]["C"]
    assert loaded == []


KILL_AT = r"""
import os, signal, sys
from vclust.model import registry, succession
from vclust.storage import labels
where = sys.argv[1]
calls = []
def die(real):
    def f(*a, **k):
        calls.append(1)
        if where != "labels" or len(calls) == 2:  # the second batch's labels
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return f
if where == "labels":
    labels.write_batch = die(labels.write_batch)
elif where == "switch":
    registry.Registry.set_current = die(registry.Registry.set_current)
else:
    succession.swap_names = die(succession.swap_names)
from vclust.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("where", ["labels", "switch", "names"])
def test_a_promote_killed_leaves_the_old_or_the_new_state(fresh, built, where):
    """Issue 28: a promote killed at the wrong moment left a successor with no labels. Killed
    (SIGKILL) while the successor's labels are written, just before `current` switches, and
    just before the names are swapped in: the next promote undoes or completes it, and the
    result is the one an uninterrupted promote gives."""
    f = fresh
    # b1 labelled too, so the successor's labels are two batches
    from vclust.jobs import steps as jobs
    from vclust.model.bundle import Model

    for m in (f["A"], f["B"]):
        jobs.label(built["root"] / "store", Model.load(Registry(f["reg"]).path(m)), f["labels"],
                   batches=["b1"])
    before = _state(f)
    args = ["promote", "--registry", str(f["reg"]), "--labels", str(f["labels"]), f["B"],
            "--names", str(f["names"])]
    out = subprocess.run([sys.executable, "-c", KILL_AT, where, *args], capture_output=True,
                         text=True, env=ENV, cwd=REPO, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    mid = _state(f)
    assert mid["journal"]
    if where == "names":  # killed after the switch: the new state, names not yet carried
        assert mid["current"] != before["current"] and mid["names"] == before["names"]
    else:  # killed before it: the old state (plus a successor nobody uses)
        assert mid["current"] == before["current"] and mid["names"] == before["names"]
    out = _promote(f, f["B"])
    assert out.returncode == 0, out.stderr
    after = _state(f)
    successors = sorted(set(after["models"]) - set(before["models"]))
    assert len(successors) == 1 and after["current"] == successors[0]
    assert set(after["labels"]) - set(before["labels"]) == {successors[0]}
    assert not after["journal"]
    assert not list(f["names"].parent.glob(".names.csv.promote"))
    new = read_labels(f["labels"], model=successors[0])
    assert sorted(new["batch"].unique()) == ["b0", "b1"] and len(new) == 1200
    # the same as an uninterrupted promote: the names follow the same mapping
    res = json.loads(out.stdout)
    mapping = Registry(f["reg"]).manifest(successors[0])["succession"]["mapping"]
    kept = sorted({int(v) for v in mapping.values()} & set(range(4)))
    assert sorted(pd.read_csv(f["names"])["cluster"]) == kept
    assert res.get("unchanged") or res["model"] == successors[0]


def test_only_ids_that_label_rows_are_listed_to_name(fresh):
    """Issue 28: promote listed ids that label no row as "new clusters to name" (17 listed,
    8 real). B has 8 clusters, half of them around batch b1's blobs; only b0 is labelled."""
    f = fresh
    out = _promote(f, f["B"])
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    labelled = set(read_labels(f["labels"], model=res["model"])["cluster"].unique().tolist())
    assert set(res["names"]["new"]) == labelled - set(res["names"]["kept"])
    listed = [ln for ln in out.stderr.splitlines() if "new clusters to name" in ln]
    assert len(listed) == (1 if res["names"]["new"] else 0)
    mapping_ids = {int(v) for v in res["mapping"].values()}
    assert len(labelled) < len(mapping_ids)  # the case has ids that label no row


def test_a_fit_makes_its_model_current_under_the_registry_lock(fresh, built, tmp_path):
    """A fit into a registry switches ``current`` under the lock a promote holds while it
    renumbers and switches: while the lock is held the fit's model is registered but not
    current, and it becomes current once the lock is released (before, a fit set ``current``
    between a promote's read of it and its own switch)."""
    import threading

    f = fresh
    reg = Registry(f["reg"])
    before = reg.current()
    held, release = threading.Event(), threading.Event()

    def hold():
        with reg.lock():
            held.set()
            release.wait(120)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    try:
        fit = subprocess.Popen(VCLUST + ["fit", str(built["root"] / "store"), "--descriptor",
                                         "osnet", "--k", "3", "--registry", str(f["reg"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ENV, cwd=REPO)
        deadline = time.monotonic() + 120
        while len(reg.list()) < 4 and fit.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(reg.list()) == 4, (fit.poll(), reg.list())  # registered ...
        time.sleep(1.0)
        assert fit.poll() is None and reg.current() == before  # ... not current: it waits
    finally:
        release.set()
        holder.join()
    out, err = fit.communicate(timeout=120)
    assert fit.returncode == 0, err
    new = [m for m in reg.list() if m not in (f["A"], f["B"], f["C"])]
    assert len(new) == 1 and reg.current() == new[0]


def test_promote_on_an_s3_registry_and_labels(built, s3_bucket):
    """The same transaction on an object store: the lock a conditional PUT, the journal one
    object; a renumbering promote, then the same promote again changing nothing."""
    from vclust.jobs import steps as jobs
    from vclust.model.bundle import Model
    from vclust.model.registry import save_model

    from vclust.storage.fs import as_path

    from .test_s3 import bucket_keys, cli, held

    reg, labels = f"{s3_bucket}/reg", f"{s3_bucket}/labels"
    local = Registry(built["root"] / "registry")
    ids = {}
    for name in ("A", "B"):
        model = Model.load(local.path(built["ids"][name]))
        _, ids[name] = save_model(model, registry=reg, make_current=False,
                                  model_id=built["ids"][name])
        jobs.label(built["root"] / "store", model, labels, batches=["b0"])
    for name in ("A", "B"):
        out = cli(["promote", "--registry", reg, "--labels", labels, ids[name]])
        assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["renumbered"] and Registry(reg).current() == res["model"]
    again = cli(["promote", "--registry", reg, "--labels", labels, ids["B"]])
    assert again.returncode == 0 and json.loads(again.stdout)["unchanged"], again.stderr
    keys = bucket_keys(s3_bucket)
    assert "reg/promote.json" not in keys  # the journal done with
    # the registry lock released: its last generation left, marked released
    assert len([k for k in keys if k.startswith("reg/registry.lock/")]) == 1
    assert not held(as_path(f"{s3_bucket}/reg/registry.lock"))
    assert len([k for k in keys if k.endswith("/manifest.json")]) == 3  # A, B, B's successor
