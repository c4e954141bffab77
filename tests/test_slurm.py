"""vclust on a real one-node SLURM (tests/clusters.py starts munge, slurmctld and slurmd as root on
127.0.0.1): fit and label through dask-jobqueue and ``--cluster`` with workers that run as SLURM
jobs, the same labels as a LocalCluster's, the nightly job submitted with ``sbatch``, a worker job
cancelled mid-label, and a partition that never starts a job."""

import os
import re
import subprocess
import time

import pandas as pd
import pytest
import yaml

from tests.clusters import FIT_ARGS, VCLUST, read_labels_frame, vclust

# a module fixture runs whole commands on the cluster (and the first one the LocalCluster
# reference): minutes on a loaded 2-core machine, more than the suite's 300 s per test
pytestmark = pytest.mark.timeout(900)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(node, tmp_path, name="slurm.yaml", **overrides):
    """The test's own copy of cluster_configs/slurm.yaml pointed at the one node: its partition,
    one core and 2 GB per job (the node has two cores), workers on the loopback interface,
    worker logs in tmp_path."""
    cfg = yaml.safe_load(open(os.path.join(REPO, "cluster_configs", "slurm.yaml")))
    cfg.update(queue=node.partition, cores=1, memory="2GB", processes=1, walltime="00:15:00",
               n_jobs=2, interface="lo", local_directory=str(tmp_path / "scratch"),
               job_extra_directives=[f"--output={tmp_path}/worker-%j.log"], start_timeout=120)
    cfg.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dask_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if "dask: slurm" in line)


def _job_ids(dask_line: str) -> list[str]:
    return re.search(r"slurm jobs ([\d, ]+),", dask_line).group(1).replace(" ", "").split(",")


def _ended(node, ids, timeout=60) -> dict:
    """The job completion records of ``ids`` once every one has ended."""
    deadline = time.monotonic() + timeout
    while True:
        done = {j["JobId"]: j for j in node.completed() if j["JobId"] in ids}
        if len(done) == len(ids) or time.monotonic() > deadline:
            return done
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm_run(slurm_node, local_reference, tmp_path_factory):
    """``vclust fit`` and ``vclust label`` of batch b1 on SLURM workers, with what SLURM showed
    of their jobs while they ran (squeue) and after (the job completion file)."""
    tmp = tmp_path_factory.mktemp("slurm-run")
    cfg = _config(slurm_node, tmp)
    seen = []
    fit = subprocess.Popen(VCLUST + ["fit", str(local_reference.store), *FIT_ARGS, "--model",
                                     str(tmp / "model"), "--cluster", str(cfg)],
                           env=slurm_node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    while fit.poll() is None:  # the worker jobs as squeue shows them while the fit runs
        seen += [j for j in slurm_node.squeue() if j not in seen]
        time.sleep(0.5)
    fit_out, fit_err = fit.communicate()
    assert fit.returncode == 0, fit_err
    label = vclust("label", local_reference.store, "--model", tmp / "model", "--out",
                   tmp / "labels", "--batch", "b1", "--cluster", cfg, env=slurm_node.env)
    assert label.returncode == 0, label.stderr
    fit_line, label_line = _dask_line(fit_err), _dask_line(label.stderr)
    return {"tmp": tmp, "config": cfg, "squeue": seen, "fit_jobs": _job_ids(fit_line),
            "label_jobs": _job_ids(label_line), "labels": tmp / "labels", "model": tmp / "model",
            "fit_line": fit_line, "label_line": label_line}


def test_fit_and_label_workers_run_as_slurm_jobs(slurm_node, slurm_run, figure):
    for what in ("fit", "label"):  # what ran where, in the run's summary
        figure(f"SLURM {what}: {slurm_run[what + '_line'].split('] ', 1)[1]}")
    ids = slurm_run["fit_jobs"] + slurm_run["label_jobs"]
    assert len(ids) == 4 and len(set(ids)) == 4
    running = {j["job_id"]: j for j in slurm_run["squeue"] if j["state"] == "RUNNING"}
    assert set(slurm_run["fit_jobs"]) <= set(running), slurm_run["squeue"]
    assert all(running[i]["where"] == "localhost" and running[i]["partition"] == "debug"
               for i in slurm_run["fit_jobs"])
    # the worker addresses vclust printed are on the loopback interface the config names
    workers = re.findall(r"tcp://[\d.]+:\d+", slurm_run["fit_line"])
    assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    # ended: every job ran on the node as a dask worker, and vclust cancelled it at the end
    done = _ended(slurm_node, ids)
    assert set(done) == set(ids)
    assert {j["Name"] for j in done.values()} == {"dask-worker"}
    assert {j["NodeList"] for j in done.values()} == {"localhost"}
    assert not [j for j in slurm_node.squeue() if j["job_id"] in ids
                and j["state"] in ("PENDING", "RUNNING")]
    # each job's log, where the config's --output directive put it
    assert all((slurm_run["tmp"] / f"worker-{i}.log").exists() for i in ids)


def test_slurm_labels_equal_the_local_cluster_labels(slurm_run, local_reference):
    pd.testing.assert_frame_equal(read_labels_frame(slurm_run["labels"]),
                                  read_labels_frame(local_reference.labels))


def test_a_worker_job_cancelled_mid_label(slurm_node, slurm_run, local_reference, figure):
    """scancel one of the two worker jobs once the label has started: the label finishes with
    the same labels (its tasks rerun on the other worker), or exits 4 with one line."""
    out = slurm_run["tmp"] / "labels-scancel"
    proc = subprocess.Popen(VCLUST + ["label", str(local_reference.store), "--model",
                                      str(slurm_run["model"]), "--out", str(out), "--batch", "b1",
                                      "--cluster", str(slurm_run["config"])],
                            env=slurm_node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "labelling batch b1" in line:
            break
    jobs = _job_ids(next(x for x in lines if "dask: slurm" in x))
    slurm_node.run("scancel", jobs[0])
    rest_out, rest_err = proc.communicate(timeout=300)
    err = "".join(lines) + rest_err
    assert proc.poll() is not None
    assert _ended(slurm_node, [jobs[0]])[jobs[0]]["JobState"] == "CANCELLED"
    figure(f"SLURM label with job {jobs[0]} of {', '.join(jobs)} cancelled mid-label: "
           f"exit {proc.returncode}")
    if proc.returncode == 0:
        pd.testing.assert_frame_equal(read_labels_frame(out),
                                      read_labels_frame(local_reference.labels))
    else:
        assert proc.returncode == 4, err
        assert len([x for x in err.splitlines() if x.startswith("vclust: error")]) == 1, err


def test_a_partition_that_never_starts_a_worker_exits_4(slurm_node, local_reference, tmp_path):
    cfg = _config(slurm_node, tmp_path, queue=slurm_node.down_partition, start_timeout=5)
    out = vclust("fit", local_reference.store, *FIT_ARGS, "--model", tmp_path / "model",
                 "--cluster", cfg, env=slurm_node.env, timeout=120)
    assert out.returncode == 4, out.stderr
    errors = [x for x in out.stderr.splitlines() if x.startswith("vclust: error")]
    assert len(errors) == 1, out.stderr
    assert "within 5 s" in errors[0] and "PartitionDown" in errors[0]
    assert not (tmp_path / "model").exists()
    # its queued jobs were cancelled, not left in the queue
    assert not [j for j in slurm_node.squeue() if j["partition"] == slurm_node.down_partition]


def test_the_nightly_job_submitted_with_sbatch(slurm_node, local_reference, tmp_path):
    """As a user's cron would: ``sbatch`` a job that runs ``vclust run`` on a night's batch; it
    ingests and labels the batch with the registry's current model."""
    import shutil

    from vclust.model.bundle import Model
    from vclust.model.registry import save_model

    store = tmp_path / "store"
    shutil.copytree(local_reference.store, store)
    _, model_id = save_model(Model.load(local_reference.model), registry=tmp_path / "registry")
    # inside its one-core job the night runs on threads (a spec's cluster key, as a user may)
    (tmp_path / "threads.yaml").write_text("kind: local\nprocesses: false\nn_workers: 1\n"
                                           "threads_per_worker: 1\ndashboard_address: null\n")
    spec = {"name": "nightly", "steps": ["ingest", "label"], "store": str(store),
            "cluster": str(tmp_path / "threads.yaml"),
            "registry": str(tmp_path / "registry"), "labels": str(tmp_path / "labels"),
            "ingest": {"sources": local_reference.batch2[:1], "ids": local_reference.batch2[1],
                       "batch": "b2"}}
    (tmp_path / "nightly.yaml").write_text(yaml.safe_dump(spec))
    cmd = " ".join(VCLUST + ["run", str(tmp_path / "nightly.yaml")])
    out = slurm_node.run("sbatch", "--parsable", "--wait", "--job-name=vclust-nightly",
                         f"--output={tmp_path}/nightly-%j.log", "--cpus-per-task=1",
                         "--mem=3G", f"--chdir={tmp_path}", f"--wrap={cmd}", timeout=300)
    job_id = out.strip().split(";")[0]
    record = _ended(slurm_node, [job_id])[job_id]
    log = (tmp_path / f"nightly-{job_id}.log").read_text()
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
    assert record["Name"] == "vclust-nightly" and record["NodeList"] == "localhost"
    labels = read_labels_frame(tmp_path / "labels", batch="b2")
    assert len(labels) == 500 and labels["row"].tolist() == list(range(1500, 2000))
    assert (tmp_path / "labels" / f"model={model_id}" / "batch=b2").is_dir()
