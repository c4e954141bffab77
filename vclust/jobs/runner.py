"""Job specs (jobs/*.yaml): load, validate, resolve, dry-run and run; the nightly job.

A spec names its steps and gives each step its section::

    name: nightly-relabel
    steps: [ingest, label, drift]
    store: data/store
    registry: data/registry
    labels: data/labels
    ingest: {sources: [incoming/{today}], batch: "{today}"}
    drift: {report_dir: data/drift, psi: 0.2}
    refit: false

Strings may hold ``{today}`` (UTC date, YYYYMMDD) and ``$VARS``. ``--set key.sub=value``
overrides a value before validation (the value is read as YAML: numbers, true/false, lists).
Unknown keys and wrong types fail at load time, naming the key.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from .config import YAMLLimit, format_validation_error, load_yaml, safe_yaml
from ..errors import EXIT_DRIFT, InputError
from .params import (
    CompareParams,
    DemoParams,
    DriftParams,
    ExportParams,
    FitParams,
    IngestParams,
    LabelParams,
    Params,
    PixelsParams,
    ReportParams,
    SynthParams,
)

STEPS = ("synth", "ingest", "pixels", "fit", "label", "drift", "export", "report", "compare")


class JobSpec(Params):
    """A job spec: the paths every step shares, where to compute, and one section per step
    (the step's options, from the parameter table)."""

    name: str
    steps: list[Literal[STEPS]] = Field(min_length=1)
    store: str
    registry: str
    labels: str
    cluster: Optional[str] = None  # cluster config file (cluster_configs/*.yaml)
    scheduler: Optional[str] = None  # or the address of a running scheduler
    refit: bool = False  # nightly: on a drift alert, fit a new model, make it current, relabel all
    synth: Optional[SynthParams] = None
    ingest: Optional[IngestParams] = None
    pixels: Optional[PixelsParams] = None  # after ingest: the batch just ingested, else all
    fit: Optional[FitParams] = None
    label: LabelParams = LabelParams()
    drift: Optional[DriftParams] = None
    export: Optional[ExportParams] = None
    report: Optional[ReportParams] = None
    compare: Optional[CompareParams] = None  # vclust compare: models registered, not current

    @model_validator(mode="after")
    def _sections_present(self):
        for step in self.steps:
            if step != "label" and getattr(self, step) is None:
                raise ValueError(f"step '{step}' is listed in steps but has no '{step}:' section")
        if self.refit and self.fit is None:
            raise ValueError("refit: true needs a 'fit:' section")
        return self


def _set_path(data: dict, dotted: str, value):
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise InputError(f"--set {dotted}: '{k}' is not a section")
    node[keys[-1]] = value


def _expand(obj):
    today = time.strftime("%Y%m%d", time.gmtime())
    if isinstance(obj, str):
        return os.path.expandvars(obj.replace("{today}", today))
    if isinstance(obj, dict):
        return {k: _expand(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand(v) for v in obj]
    return obj


def parse_spec(data: dict, where: str, overrides=()) -> JobSpec:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of keys")
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE; got '{item}'")
        key, value = item.split("=", 1)
        try:
            parsed = safe_yaml(value)
        except (yaml.YAMLError, YAMLLimit) as exc:
            raise InputError(f"--set {key.strip()}: the value is not valid YAML "
                             f"({str(exc).splitlines()[0]})") from None
        _set_path(data, key.strip(), parsed)
    try:
        return JobSpec.model_validate(_expand(data))
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, where)) from None


def load_spec(path, overrides=()) -> JobSpec:
    return parse_spec(load_yaml(path), str(path), overrides)


def plan(spec: JobSpec, scheduler=None, cluster_file=None, timeout=None) -> dict:
    """The resolved plan that a dry run prints."""
    from .cluster import resolve

    cfg = resolve(scheduler or spec.scheduler, cluster_file or spec.cluster, timeout)
    steps = []
    for step in spec.steps:
        section = getattr(spec, step)
        steps.append({"step": step, **(section.model_dump() if section is not None else {})})
    return {"job": spec.name, "store": spec.store, "registry": spec.registry,
            "labels": spec.labels, "model": "new model (registered, made current)"
            if "fit" in spec.steps else "one model per spec and algorithm (registered, not made "
            "current)" if "compare" in spec.steps else f"current model of {spec.registry}",
            "refit_on_drift": spec.refit, "cluster": cfg.model_dump(), "steps": steps}


# --------------------------------------------------------------------------- running


def run_job(path, overrides=(), dry_run=False, scheduler=None, cluster_file=None, say=print,
            timeout=None) -> int:
    """`vclust run`: a small job (``steps.run_here``) with no cluster named runs on this
    process's threads."""
    from .steps import run_here

    spec = load_spec(path, overrides)
    return run_spec(spec, dry_run=dry_run, scheduler=scheduler, cluster_file=cluster_file, say=say,
                    timeout=timeout, here=None if dry_run else run_here(spec))


def run_spec(spec: JobSpec, dry_run=False, scheduler=None, cluster_file=None, say=print,
             timeout=None, here=None) -> int:
    if dry_run:
        print(json.dumps(plan(spec, scheduler, cluster_file, timeout), indent=2))
        return 0
    from .cluster import connect
    from .workerstart import preload_for

    with connect(scheduler or spec.scheduler, cluster_file or spec.cluster, announce=say,
                 timeout=timeout, here=here, preload=preload_for("run")):
        return _run_steps(spec, say)


def _nightly_record(spec: JobSpec, batch: str) -> Path:
    from ..storage.fs import as_path

    return as_path(spec.registry) / "nightly" / f"{batch}.json"


def _read_record(record) -> dict | None:
    """The night's record, or None. A record of an older vclust (no ``steps_done``) was
    written when its night was over: every step counts as done."""
    try:
        done = json.loads(record.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # cut short by a kill (never: it is written whole): the night runs again
    done.setdefault("steps_done", None)
    return done


def _write_record(record, data: dict) -> None:
    """The night's record, written whole (renamed into place; one PUT on an object store)."""
    from ..storage.fs import RemotePath

    text = json.dumps({**data, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    record.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(record, RemotePath):
        record.write_text(text)
        return
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, record)


def _run_steps(spec: JobSpec, say) -> int:
    """Run the spec's steps. Once a batch is ingested, each step that completes is recorded in
    the night's record (``REGISTRY/nightly/<batch>.json``); a run of a batch already ingested
    skips the steps its record lists and resumes at the first one not done (a night killed in
    its report step makes its report when run again), and says "nothing to do" when all are."""
    ingested, code, record, night = None, 0, None, None
    for step in spec.steps:
        if night is not None and night["steps_done"] is not None and step in night["steps_done"]:
            say(f"step {step}: done by an earlier run of batch {ingested['batch']}")
            continue
        say(f"step {step}")
        if step == "ingest":
            ingested = _step(spec, step, None, say)
            record = _nightly_record(spec, ingested["batch"])
            done = _read_record(record) if ingested["status"] == "unchanged" else None
            if done is not None and (done["steps_done"] is None
                                     or set(spec.steps) <= set(done["steps_done"])):
                say(f"batch {ingested['batch']} was already processed on {done['when']} "
                    f"(model {done.get('model')}): nothing to do")
                return int(done.get("exit_code", 0))
            night = done or {"batch": ingested["batch"], "steps_done": [], "exit_code": 0}
            code = int(night.get("exit_code", 0))
        else:
            got = _step(spec, step, ingested, say)
            if step == "drift":
                code, detail = got  # the steps after it still run
                if night is not None:
                    night.update(detail)
        if night is not None:
            night["steps_done"] = sorted(set(night["steps_done"]) | {step},
                                         key=spec.steps.index)
            night["exit_code"] = code
            _write_record(record, night)
    return code


def _step(spec: JobSpec, step: str, ingested, say):
    """One step of a spec; the ingest summary for ``ingest``, (exit code, what to record) for
    ``drift``."""
    from . import steps as jobs

    if step == "synth":
        from ..synth import generate_case

        generate_case(spec.synth.out, n_rows=spec.synth.rows, seed=spec.synth.seed)
    elif step == "ingest":
        return jobs.ingest(spec.store, spec.ingest, say=say)
    elif step == "pixels":
        jobs.pixels(spec.store, spec.pixels, say=say,
                    batches=[ingested["batch"]] if ingested else None)
    elif step == "fit":
        _fit_and_register(spec, say)
    elif step == "label":
        _label(spec, ingested, say)
    elif step == "drift":
        return _drift(spec, ingested, say)
    elif step == "export":
        from ..storage.export import export_csv
        from ..model.registry import Registry

        n = export_csv(spec.labels, spec.export.csv, model=Registry(spec.registry).current(),
                       names=spec.export.names)
        say(f"export: {n} rows to {spec.export.csv}")
    elif step == "report":
        from .staged import write_report_whole

        model = jobs.resolve_model(registry=spec.registry)
        write_report_whole(spec.store, model, spec.labels, spec.report, say=say)
    elif step == "compare":
        from .compare import compare

        summary = compare(spec.store, spec.compare, spec.registry, spec.labels, say=say)
        say(f"compare: proposed {summary['proposal'].get('why', '')}")
    return None


def _fit_and_register(spec: JobSpec, say):
    from . import steps as jobs
    from ..model.registry import REGISTER_WAIT, Registry, check_registry

    check_registry(spec.registry)  # before the work
    model = jobs.fit(spec.store, spec.fit, say=say)
    reg = Registry(spec.registry)
    if not reg.remote:
        reg.models_dir.mkdir(parents=True, exist_ok=True)  # a new registry: one to lock
    # numbered against the current model and made current under the registry's lock: a promote
    # meanwhile would otherwise switch ``current`` between the two and strand this model's ids
    with reg.lock(REGISTER_WAIT):
        model = _continue_current(spec, model, say)
        path, model_id = jobs.save_model(model, registry=spec.registry, make_current=False)
        reg.switch_current(model_id, say=say)
    say(f"fit: model {model_id} registered and made current ({path})")
    return model


def _continue_current(spec: JobSpec, model, say):
    """The fitted model renumbered to continue the current model's clusters (vclust.model.succession),
    matched on the rows the current model labelled, before it is saved or labels anything."""
    from . import steps as jobs
    from ..model import succession
    from ..model.bundle import assign
    from ..model.registry import Registry
    from ..storage.store import Store

    current = Registry(spec.registry).current()
    prev = succession.previous_labels(spec.labels, current) if current else None
    if prev is None:
        return succession.identity_succession(model, current)
    previous = jobs.resolve_model(registry=spec.registry)
    store = Store.open(spec.store)
    z = model.reduce({d: store.descriptors(d) for d in model.descriptors})
    new = assign(model.clusterer, z)[0].compute()
    rows = prev[0][prev[0] < len(new)]
    model, mapping = succession.renumber_against(model, previous, prev, rows, new[rows])
    say(f"fit: clusters renumbered to continue model {current}: {mapping}")
    return model


def _label(spec: JobSpec, ingested, say):
    from . import steps as jobs

    model = jobs.resolve_model(registry=spec.registry)
    s = spec.label
    if s.all or (s.batches is None and ingested is None):
        jobs.label(spec.store, model, spec.labels, all_batches=True, say=say, params=s)
    else:
        batches = s.batches or [ingested["batch"]]
        jobs.label(spec.store, model, spec.labels, batches=batches, say=say, params=s)


def _drift(spec: JobSpec, ingested, say) -> tuple[int, dict]:
    from . import steps as jobs
    from ..storage.labels import read_labels
    from ..numerics.drift import drift_report
    from ..report.drift import write_report

    if ingested is None:
        raise InputError("the drift step compares the batch just ingested: list 'ingest' before it")
    batch = ingested["batch"]
    model = jobs.resolve_model(registry=spec.registry)
    frame = read_labels(spec.labels, model=model.model_id, batches=[batch])
    d = spec.drift
    report = drift_report(model.info["profile"], frame, d.thresholds)
    report.update({"batch": batch, "model": model.model_id})
    from ..storage.fs import as_path

    out = as_path(d.report_dir) / f"model={model.model_id}" / f"batch={batch}"
    json_path, text_path = write_report(report, out)
    alerts = report["alerts"]
    say(f"drift: {'ALERT ' + ', '.join(alerts) if alerts else 'no threshold crossed'} "
        f"(report {text_path})")
    refit_id = None
    if alerts and spec.refit:
        new = _fit_and_register(spec, say)
        jobs.label(spec.store, new, spec.labels, all_batches=True, say=say, params=spec.label)
        refit_id = new.model_id
    code = EXIT_DRIFT if alerts else 0
    return code, {"model": model.model_id, "alerts": alerts, "refit_model": refit_id,
                  "report": str(json_path)}


# --------------------------------------------------------------------------- demo


def demo_spec(params: DemoParams) -> dict:
    """The demo job (jobs/demo.yaml is the same job as a file)."""
    out, rows, seed = str(params.out), params.rows, params.seed
    return {
        "name": "demo",
        "steps": ["synth", "ingest", "pixels", "fit", "label", "export", "report"],
        "store": f"{out}/store", "registry": f"{out}/registry", "labels": f"{out}/labels",
        "synth": {"out": f"{out}/case", "rows": rows, "seed": seed},
        "ingest": {"sources": [f"{out}/case"], "batch": "demo-0"},
        "pixels": {"images": f"{out}/case/veriwild.zip"},
        "fit": {"descriptor": "vdc_type+vdc_color", "k_range": "6:16", "seed": seed},
        "label": {"all": True},
        "export": {"csv": f"{out}/labels.csv"},
        "report": {"out": f"{out}/report", "images": f"{out}/case/veriwild.zip",
                   "truth": f"{out}/case/truth.csv", "seed": seed},
    }


def run_demo(params: DemoParams, scheduler=None, cluster_file=None, say=print,
             timeout=None) -> int:
    out = Path(params.out)
    if (out / "store").exists():
        raise InputError(f"{out}: holds an earlier demo; remove it or pass --out NEW_DIR")
    spec = parse_spec(demo_spec(params), "demo")
    return run_spec(spec, scheduler=scheduler, cluster_file=cluster_file, say=say, timeout=timeout)
