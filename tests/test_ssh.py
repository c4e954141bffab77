"""vclust on a real SSH cluster (tests/clusters.py starts sshd on a loopback port with generated
keys): distributed's SSHCluster starts the scheduler and the worker over SSH as ``--cluster``
names it; fit and label give the LocalCluster's labels. The worker runs in the SSH user's home,
not in the client's directory: a relative path is refused before the work (exit 2), a path
every worker sees (absolute) works."""

import os
import re

import pandas as pd
import pytest
import yaml

from tests.clusters import FIT_ARGS, _free_port, read_labels_frame, vclust

# a module fixture runs whole commands on the cluster (and the first one the LocalCluster
# reference): minutes on a loaded 2-core machine, more than the suite's 300 s per test
pytestmark = pytest.mark.timeout(900)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(server, path, **overrides):
    """The test's own copy of cluster_configs/ssh.yaml: the scheduler and one worker on
    127.0.0.1 through the test's sshd, listening on the loopback interface only."""
    cfg = yaml.safe_load(open(os.path.join(REPO, "cluster_configs", "ssh.yaml")))
    cfg.update(hosts=["127.0.0.1", "127.0.0.1"], connect_options=server.connect_options,
               worker_options={"nthreads": 1, "memory_limit": "2GB", "host": "127.0.0.1"},
               scheduler_options={"port": 0, "host": "127.0.0.1", "dashboard_address": None},
               start_timeout=60)
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ssh_run(ssh_server, local_reference, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssh-run")
    cfg = _config(ssh_server, tmp / "ssh.yaml")
    fit = vclust("fit", local_reference.store, *FIT_ARGS, "--model", tmp / "model",
                 "--cluster", cfg, cwd=tmp)
    assert fit.returncode == 0, fit.stderr
    label = vclust("label", local_reference.store, "--model", tmp / "model", "--out",
                   tmp / "labels", "--batch", "b1", "--cluster", cfg, cwd=tmp)
    assert label.returncode == 0, label.stderr
    return {"tmp": tmp, "config": cfg, "labels": tmp / "labels",
            "lines": [next(x for x in out.stderr.splitlines() if "dask: ssh" in x)
                      for out in (fit, label)]}


def test_ssh_fit_and_label_give_the_local_cluster_labels(ssh_run, local_reference, figure):
    for line in ssh_run["lines"]:
        figure(f"SSH: {line.split('] ', 1)[1]}")
        workers = re.findall(r"tcp://[\d.]+:\d+", line.split("dashboard")[0])
        assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers), line
    pd.testing.assert_frame_equal(read_labels_frame(ssh_run["labels"]),
                                  read_labels_frame(local_reference.labels))


@pytest.mark.parametrize("what", ["store", "--out"])
def test_a_path_the_workers_cannot_see_is_refused_before_the_work(ssh_run, local_reference,
                                                                   what):
    """Run from the reference folder with a relative path: the SSH worker runs in the user's
    home, where that path is something else."""
    tmp, ref = ssh_run["tmp"], local_reference.root
    store = "store" if what == "store" else str(local_reference.store)
    out = vclust("label", store, "--model", tmp / "model", "--out", f"labels-{what.strip('-')}",
                 "--batch", "b1", "--cluster", ssh_run["config"], cwd=ref)
    assert out.returncode == 2, out.stderr
    errors = [x for x in out.stderr.splitlines() if x.startswith("vclust: error")]
    assert len(errors) == 1, out.stderr
    assert f"{what} '" in errors[0] and "relative path" in errors[0]
    assert os.path.expanduser("~") in errors[0]  # where the worker runs, named
    assert not (ref / f"labels-{what.strip('-')}").exists()


def test_ssh_hosts_that_refuse_the_connection_exit_4(ssh_server, local_reference, tmp_path):
    closed = dict(ssh_server.connect_options, port=_free_port())  # nothing listens there
    cfg = _config(ssh_server, tmp_path / "ssh.yaml", connect_options=closed)
    out = vclust("fit", local_reference.store, *FIT_ARGS, "--model", tmp_path / "model",
                 "--cluster", cfg, timeout=120)
    assert out.returncode == 4, out.stderr
    errors = [x for x in out.stderr.splitlines() if x.startswith("vclust: error")]
    assert len(errors) == 1 and "over SSH on 127.0.0.1" in errors[0], out.stderr
    assert not (tmp_path / "model").exists()
