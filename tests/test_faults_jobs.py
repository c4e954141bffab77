"""The nightly job and the report under kills (issue 28): a night killed in its report step
makes its report when run again; a report killed while it overwrites an older one leaves the
older one whole and no half-made file. Real `vclust` processes, SIGKILLed at a chosen step (the
step's function wrapped in the child process to kill it there)."""

import io
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from .test_faults import ENV, REPO, run_cli, small_case

KILL_AT = r"""
import os, signal, sys
where = sys.argv[1]
if where == "map":  # the report's map picture: the page and report.json are written by then
    from vclust.report import static
    real = static.map_png
    def map_png(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    static.map_png = map_png
elif where == "thumb":  # a thumbnail written to its temporary file, before its rename
    import vclust.storage.images as images
    real = os.replace
    seen = []
    def replace(src, dst, *a, **k):
        if str(src).endswith(".tmp") and "thumbs" in str(src):
            seen.append(src)
            if len(seen) == 20:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *a, **k)
    os.replace = replace
from vclust.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _killed(where, args):
    out = subprocess.run([sys.executable, "-c", KILL_AT, where, *map(str, args)],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    return out


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), ((i * 37) % 255, (i * 91) % 255, 90)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A store of one batch, a model current in a registry, the batch labelled, the images in
    a zip, and tonight's descriptor files."""
    root = tmp_path_factory.mktemp("night")
    files, ids = small_case(root / "case0", rows=600, seed=0)
    tonight = small_case(root / "case1", rows=300, seed=0)  # b0's blobs, ids of their own
    import pandas as pd

    pd.DataFrame({"paths": [f"img/0/{600 + i}.jpg" for i in range(300)]}).to_csv(
        tonight[1], index=False)
    with zipfile.ZipFile(root / "images.zip", "w", zipfile.ZIP_STORED) as zf:
        for i in range(900):
            zf.writestr(f"img/0/{i}.jpg", _jpeg(i))
    for args in (["ingest", root / "store", *files, "--ids", ids, "--batch", "b0"],
                 ["fit", root / "store", "--registry", root / "registry", "--descriptor",
                  "osnet", "--k", "4"],
                 ["label", root / "store", "--registry", root / "registry", "--out",
                  root / "labels", "--all"]):
        out = run_cli(args, timeout=300)
        assert out.returncode == 0, out.stderr
    return {"root": root, "tonight": tonight}


def _spec(night, tmp_path) -> Path:
    import shutil

    root = night["root"]
    for d in ("store", "registry", "labels"):
        shutil.copytree(root / d, tmp_path / d)
    files, ids = night["tonight"]
    spec = {"name": "nightly", "steps": ["ingest", "label", "drift", "report"],
            "store": str(tmp_path / "store"), "registry": str(tmp_path / "registry"),
            "labels": str(tmp_path / "labels"),
            "ingest": {"sources": [str(f) for f in files], "ids": str(ids), "batch": "night1"},
            "drift": {"report_dir": str(tmp_path / "drift")},
            "report": {"out": str(tmp_path / "report"), "map_method": "pca",
                       "images": str(root / "images.zip")}}
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_night_killed_in_its_report_step_makes_its_report_when_run_again(night, tmp_path):
    """Issue 28: a nightly job killed in its report step never made the report: the re-run
    said "nothing to do" (the night was recorded at the drift step)."""
    job = _spec(night, tmp_path)
    _killed("map", ["run", job])
    assert not (tmp_path / "report" / "index.html").exists()
    again = run_cli(["run", job], timeout=300)
    assert again.returncode in (0, 3), again.stderr
    assert "nothing to do" not in again.stderr
    assert "already stored from the same sources" in again.stderr  # ingest: nothing changed
    assert "dask: in this process" in again.stderr  # a night this small: no LocalCluster
    for step in ("label", "drift"):  # done by the killed run: not done again
        assert f"step {step}: done by an earlier run" in again.stderr, again.stderr
    assert (tmp_path / "report" / "index.html").is_file()
    third = run_cli(["run", job], timeout=300)
    assert third.returncode == again.returncode and "nothing to do" in third.stderr


@pytest.mark.parametrize("where", ["map", "thumb"])
def test_a_report_killed_while_overwriting_an_older_one_leaves_the_older_whole(
        night, tmp_path, where):
    """Issue 28: a report killed while overwriting an older report left a page of two runs
    and thumbs/.*.tmp files that nothing cleaned."""
    root = night["root"]
    report = tmp_path / "report"
    base = ["report", root / "store", "--registry", root / "registry", "--labels",
            root / "labels", "--out", report, "--map-method", "pca", "--images",
            root / "images.zip"]
    out = run_cli(base + ["--seed", "1", "--hover-images", "0"], timeout=300)
    assert out.returncode == 0, out.stderr
    older = _files(report)
    # other cards, and thumbnails of the map's points: another page, new thumbnails
    _killed(where, base + ["--seed", "2"])
    assert _files(report) == older  # the older report, whole
    assert not [p for p in report.rglob("*") if p.name.startswith(".")]
    out = run_cli(base + ["--seed", "2"], timeout=300)
    assert out.returncode == 0, out.stderr
    newer = _files(report)
    assert newer["report.json"] != older["report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging left
    assert not [p for p in report.rglob("*") if p.name.startswith(".")]


def test_a_report_refuses_to_replace_a_folder_that_is_not_a_report(night, tmp_path):
    root = night["root"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    out = run_cli(["report", root / "store", "--registry", root / "registry", "--labels",
                   root / "labels", "--out", tmp_path / "mine", "--map-method", "pca"])
    assert out.returncode == 2 and "not a vclust report" in out.stderr, out.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_a_small_report_runs_in_its_own_process_and_equals_the_cluster_one(night, tmp_path):
    """With no cluster named, `vclust report` of a store this small runs on the command's own
    threads (no LocalCluster to start); the report is the one a LocalCluster of two worker
    processes makes, but for when it was made and how long its map took. Those workers hold
    pynndescent (as vclust imports it) and the outlier module from their start: forked from a
    server that imported them. Its map is PCA, so not umap-learn (workerstart.preload_for)."""
    import json

    from .worker_start_probe import probe_env, probed

    root = night["root"]
    cfg = tmp_path / "local.yaml"
    cfg.write_text("kind: local\nn_workers: 2\nthreads_per_worker: 1\n")
    env = {**ENV, **probe_env(tmp_path / "probe")}
    reports = {}
    for extra, where in (([], "dask: in this process"), (["--cluster", cfg], "dask: local")):
        out = tmp_path / f"report{len(extra)}"
        res = run_cli(["report", root / "store", "--registry", root / "registry", "--labels",
                       root / "labels", "--out", out, "--map-method", "pca", "--images",
                       root / "images.zip", "--seed", "3", *extra], timeout=300, env=env)
        assert res.returncode == 0, res.stderr
        assert where in res.stderr, res.stderr
        page = json.loads((out / "report.json").read_text())
        page.pop("created")
        page["map"].pop("seconds")
        reports[where] = page
    here, there = reports.values()
    assert here == there
    assert probed(tmp_path / "probe") == [
        {"pynndescent": True, "umap": False, "outliers": True, "deferred_signatures": 0}] * 2
