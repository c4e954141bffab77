"""Job specs: validation at load time, --set overrides, dry-run plans."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vclust.errors import InputError
from vclust.jobs.params import DemoParams
from vclust.jobs.runner import demo_spec, load_spec, parse_spec, plan

REPO = Path(__file__).resolve().parents[1]
VCLUST = [sys.executable, "-m", "vclust.cli"]


@pytest.mark.parametrize("name", ["demo.yaml", "fit.yaml", "nightly_relabel.yaml"])
def test_shipped_job_specs_load(name):
    spec = load_spec(REPO / "jobs" / name)
    assert spec.steps
    for step in spec.steps:
        if step != "label":
            assert getattr(spec, step) is not None


def test_demo_yaml_is_the_demo_command():
    """jobs/demo.yaml and `vclust demo` run the same job."""
    from_file = load_spec(REPO / "jobs" / "demo.yaml")
    from_code = parse_spec(demo_spec(DemoParams(out="demo-out", rows=20_000, seed=0)), "demo")
    assert from_file.model_dump() == from_code.model_dump()


def _write(tmp_path, data):
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"name": "t", "steps": ["fit"], "store": "s", "registry": "r", "labels": "l",
        "fit": {"descriptor": "osnet", "k": 5}}


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(InputError, match="unknown key 'fit.kk'"):
        load_spec(_write(tmp_path, {**BASE, "fit": {"descriptor": "osnet", "kk": 5}}))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(InputError, match="key 'fit.k'"):
        load_spec(_write(tmp_path, {**BASE, "fit": {"descriptor": "osnet", "k": "many"}}))


def test_unknown_step_and_missing_section(tmp_path):
    with pytest.raises(InputError, match="steps"):
        load_spec(_write(tmp_path, {**BASE, "steps": ["fit", "dance"]}))
    with pytest.raises(InputError, match="'drift'"):
        load_spec(_write(tmp_path, {**BASE, "steps": ["fit", "drift"]}))


def test_set_overrides_and_today(tmp_path):
    spec = load_spec(_write(tmp_path, BASE), ["fit.k=9", "store=/x/{today}", "fit.sample=100"])
    assert spec.fit.k == 9 and spec.fit.sample == 100
    assert spec.store.startswith("/x/2") and "{today}" not in spec.store
    with pytest.raises(InputError, match="KEY=VALUE"):
        load_spec(_write(tmp_path, BASE), ["fit.k"])


def test_plan_shows_steps_store_model_cluster(tmp_path):
    spec = load_spec(_write(tmp_path, BASE))
    p = plan(spec, scheduler="tcp://127.0.0.1:1")
    assert p["store"] == "s" and p["steps"][0]["step"] == "fit"
    assert p["cluster"] == {"kind": "scheduler", "address": "tcp://127.0.0.1:1", "timeout": 5.0,
                            "s3": None}
    assert "new model" in p["model"]


def test_cli_dry_run_prints_plan_and_starts_nothing(tmp_path):
    job = _write(tmp_path, BASE)
    out = subprocess.run(VCLUST + ["run", str(job), "--dry-run", "--set", "fit.k=7"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    assert resolved["steps"][0]["k"] == 7 and resolved["cluster"]["kind"] == "local"
    assert not (tmp_path / "s").exists()


def test_cli_bad_spec_exits_2_with_one_line(tmp_path):
    job = _write(tmp_path, {**BASE, "stor": "x"})
    out = subprocess.run(VCLUST + ["run", str(job), "--dry-run"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'stor'" in lines[0], out.stderr
