"""Bad input that ended in a traceback (exit 1), did not end, or was refused only after the
work (issue 28): model manifests of the wrong shape, a YAML nested 3,000 deep and a YAML alias
bomb, a pickle asking for a 100 GB allocation, `fit --registry FILE`, S3 bucket names and
credentials, and `vclust compare` on an s3:// store. Each is a real `vclust` process; S3 is the
moto server on 127.0.0.1 (conftest.s3_server), never AWS."""

import json
import pickle
import shutil

import pytest

from .test_faults import assert_one_line, fitted, run_cli, small_case  # noqa: F401
from .test_s3 import THREADS, bucket_keys, cli as s3_cli, env as s3_env


@pytest.mark.parametrize("how", ["version_string", "json_list", "no_descriptors",
                                 "descriptors_not_a_list", "parts_not_a_mapping"])
def test_a_manifest_of_the_wrong_shape_is_refused_with_one_line(fitted, tmp_path, how):  # noqa: F811
    """Issue 28: `"version": "1"` (a string), a JSON list, or no `descriptors` gave exit 1."""
    model = tmp_path / "model"
    shutil.copytree(fitted / "model", model)
    mf = model / "manifest.json"
    manifest = json.loads(mf.read_text())
    if how == "version_string":
        manifest["version"] = "1"
    elif how == "json_list":
        manifest = [manifest]
    elif how == "no_descriptors":
        del manifest["descriptors"]
    elif how == "descriptors_not_a_list":
        manifest["descriptors"] = 7
    else:
        manifest["parts"] = ["preprocess"]
    mf.write_text(json.dumps(manifest))
    out = run_cli(["label", fitted / "store", "--model", model, "--out", tmp_path / "labels",
                   "--all"])
    assert_one_line(out, 2, "manifest|not a vclust model")
    assert not (tmp_path / "labels").exists()


def test_a_yaml_nested_3000_deep_is_refused_with_one_line(tmp_path):
    """Issue 28: exit 1 and a 3,000-line RecursionError."""
    job = tmp_path / "deep.yaml"
    job.write_text("name: x\nsteps: " + "[" * 3000 + "]" * 3000 + "\n")
    out = run_cli(["run", job, "--dry-run"])
    assert_one_line(out, 2, "nested deeper than")
    assert len(out.stderr.splitlines()) == 1


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Issue 28: a 1.2 KB alias bomb kept `vclust run --dry-run` running past 60 s, its memory
    growing. Refused in one line (the process is ended after 60 s otherwise: a failure)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    job = tmp_path / "bomb.yaml"
    job.write_text("\n".join(lines) + "\nname: x\nsteps: [label]\n")
    out = run_cli(["run", job, "--dry-run"], timeout=60)
    assert_one_line(out, 2, "aliases expand to")
    out = run_cli(["run", tmp_path / "ok.yaml", "--dry-run"])  # (a missing spec: one line too)
    assert_one_line(out, 2, "no such file")


class _Alloc:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("call", ["bytearray", "ndarray", "frame"])
def test_a_pickle_asking_for_a_huge_allocation_is_refused(tmp_path, protocol, call):
    """Issue 28: a pickle calling `bytearray(10**11)` (an allowed name) gave a MemoryError,
    exit 1."""
    import numpy as np
    import pandas as pd

    reduce = {"bytearray": (bytearray, (10**11,)),
              "ndarray": (np.ndarray, ((10**6, 10**6), np.dtype("float32"))),
              "frame": (pd.DataFrame, (None, pd.RangeIndex(10**10), ["a"]))}[call]
    evil = tmp_path / "osnet.pickle"
    evil.write_bytes(pickle.dumps({"x": _Alloc(reduce)}, protocol=protocol))
    out = run_cli(["ingest", tmp_path / "store", evil, "--batch", "b0"])
    assert_one_line(out, 2, "would allocate")
    assert not (tmp_path / "store").exists()


def test_fit_into_a_registry_that_is_a_file_is_refused_before_the_fit(fitted, tmp_path):  # noqa: F811
    """Issue 28: `fit --registry FILE` was refused only after the whole fit."""
    reg = tmp_path / "registry"
    reg.write_text("not a folder")
    out = run_cli(["fit", fitted / "store", "--registry", reg, "--descriptor", "osnet",
                   "--k", "4"])
    assert_one_line(out, 2, "--registry .*is a file")
    assert out.stdout == ""  # no k-range table: nothing was fitted
    assert not any("fit" in line for line in out.stderr.splitlines()[:-1]), out.stderr
    (tmp_path / "reg2").mkdir()
    (tmp_path / "reg2" / "models").write_text("")
    out = run_cli(["fit", fitted / "store", "--registry", tmp_path / "reg2", "--descriptor",
                   "osnet", "--k", "4"])
    assert_one_line(out, 2, "not a vclust registry")


@pytest.mark.parametrize("bucket", ["Bad_Bucket", "ab", "bucket..x", "-dash", "192.168.0.1"])
def test_a_bucket_name_s3_refuses_is_bad_input(s3_server, bucket):
    """Issue 28: a bucket name that is not valid gave exit 4 "cannot reach"."""
    out = s3_cli(["info", f"s3://{bucket}/store"])
    assert_one_line(out, 2, "not a valid bucket name")


def test_missing_credentials_are_named(s3_server, tmp_path):
    """Issue 28: no credentials at all said "cannot reach ... check AWS_ENDPOINT_URL"."""
    bare = {k: v for k, v in s3_env().items()
            if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                         "AWS_SESSION_TOKEN")}
    bare.update({"HOME": str(tmp_path), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                 "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_MAX_ATTEMPTS": "1"})
    import subprocess

    from .test_faults import REPO, VCLUST

    out = subprocess.run(VCLUST + ["info", "s3://vclust-creds/store"], capture_output=True,
                         text=True, timeout=120, env=bare, cwd=REPO)
    line = assert_one_line(out, 4, "no credentials")
    assert "AWS_ACCESS_KEY_ID" in line and "cannot reach" not in line


def test_compare_on_an_s3_store(s3_bucket, tmp_path):
    """Issue 28: `vclust compare s3://bucket/store ...` said "no such store" (a local existence
    check). The store, registry and labels on S3, the page local."""
    from vclust.model.registry import Registry

    files, ids = small_case(tmp_path / "case", rows=600)
    store, reg, labels = f"{s3_bucket}/store", f"{s3_bucket}/reg", f"{s3_bucket}/labels"
    threads = tmp_path / "threads.yaml"
    threads.write_text(THREADS)
    out = s3_cli(["ingest", store, *files, "--ids", ids, "--batch", "b0", "--cluster", threads])
    assert out.returncode == 0, out.stderr
    out = s3_cli(["compare", store, "--registry", reg, "--labels", labels, "--descriptor",
                  "osnet", "--k-range", "3:4", "--out", tmp_path / "cmp", "--map-method", "pca",
                  "--cluster", threads], timeout=600)
    assert out.returncode == 0, out.stderr
    kept = Registry(reg).list()
    assert kept and Registry(reg).current() is None  # registered, none made current
    keys = bucket_keys(s3_bucket)
    for m in kept:
        assert f"reg/models/{m}/manifest.json" in keys
        assert any(k.startswith(f"labels/model={m}/") for k in keys)
    assert (tmp_path / "cmp" / "index.html").is_file()
    out = s3_cli(["compare", f"{s3_bucket}/nothing", "--registry", reg, "--labels", labels,
                  "--descriptor", "osnet", "--out", tmp_path / "cmp2"])
    assert_one_line(out, 2, "no such store")


def test_an_option_of_another_command_is_refused_not_taken_for_a_longer_one(fitted, tmp_path):  # noqa: F811
    """`label --out DIR` names the labels; `fit --out DIR` was taken as an abbreviation of
    --outlier-z and refused as "invalid float value: DIR". No option is abbreviated now."""
    out = run_cli(["fit", fitted / "store", "--descriptor", "osnet", "--registry",
                   tmp_path / "reg", "--out", tmp_path / "model"])
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "unrecognized arguments: --out" in out.stderr.strip().splitlines()[-1], out.stderr
    assert not (tmp_path / "reg").exists() and not (tmp_path / "model").exists()
    out = run_cli(["label", fitted / "store", "--model", fitted / "model", "--al", "--out",
                   tmp_path / "labels"])
    assert out.returncode == 2 and "unrecognized arguments: --al" in out.stderr, out.stderr


@pytest.mark.parametrize("bad", ["descriptor", "k", "store"])
def test_a_fit_refuses_a_wrong_set_k_or_store_before_any_cluster_starts(fitted, tmp_path, bad):  # noqa: F811
    """A misspelt set name started a LocalCluster (2-3 s, two worker processes) before the fit
    said "no descriptor set"; the store, the sets and the rows for k are checked first now."""
    store = tmp_path / "none" if bad == "store" else fitted / "store"
    name = "osnett" if bad == "descriptor" else "osnet"
    k = "100000" if bad == "k" else "4"
    out = run_cli(["fit", store, "--descriptor", name, "--k", k, "--registry", tmp_path / "reg"])
    match = {"descriptor": "no descriptor set 'osnett'", "k": "too few for k=100000",
             "store": "not a vclust store"}[bad]
    assert_one_line(out, 2, match)
    assert "dask:" not in out.stderr, out.stderr  # neither a cluster nor this process's threads
    assert not (tmp_path / "reg" / "models").exists()


def test_a_report_of_a_store_that_is_not_there_is_refused_before_any_cluster_starts(fitted, tmp_path):  # noqa: F811
    """The report's store was opened only on the cluster it had started (2 s, two workers)."""
    from vclust.jobs import steps as jobs
    from vclust.model.bundle import Model

    jobs.label(fitted / "store", Model.load(fitted / "model"), tmp_path / "labels",
               all_batches=True)
    out = run_cli(["report", tmp_path / "none", "--model", fitted / "model", "--labels",
                   tmp_path / "labels", "--out", tmp_path / "report"])
    assert_one_line(out, 2, "not a vclust store")
    assert "dask:" not in out.stderr and not (tmp_path / "report").exists(), out.stderr
