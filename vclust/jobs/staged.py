"""A report written whole: into a staging folder beside ``OUT``, then swapped in.

``vclust report`` and the report step of ``vclust run`` write through ``write_report_whole``:
the report (vclust.report.write_report, unchanged) is written into ``.OUT.staging-<pid>``
beside ``OUT``, whose thumbnails are first hard-linked from the report already there (a
thumbnail is a pure function of its id and size, so none is decoded twice); then ``OUT`` is
renamed to ``.OUT.old-<pid>``, the staging folder to ``OUT``, and the old one removed. A reader
of ``OUT`` sees the old report or the new one, never a page of two runs, and a run killed
anywhere leaves its half-made files only in its staging folder. The next run removes the
staging folders of processes that are gone, and puts back an old report that a kill between
the two renames left aside (``recover``).

``OUT`` must be a folder vclust can replace whole: missing, empty, or a report (it holds
``report.json`` or ``index.html``); any other folder is refused (exit 2), so no file of the
user's is ever removed.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..errors import InputError
from ..storage.store import pid_alive

log = logging.getLogger(__name__)

_MARKS = ("report.json", "index.html")


def check_out(out) -> Path:
    """``OUT`` is missing, empty or a report (see the module docstring); one line if not."""
    out = Path(out)
    recover(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; a report is a folder, pick a folder path")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).is_file() for m in _MARKS):
        raise InputError(f"--out {out}: holds files that are not a vclust report; a report "
                         "replaces its folder whole: pick an empty or new folder")
    return out


def _leftovers(out: Path, kind: str):
    """(path, pid) of ``.OUT.<kind>-<pid>`` folders beside ``out``."""
    prefix = f".{out.name}.{kind}-"
    if not out.parent.is_dir():
        return
    for p in out.parent.iterdir():
        if p.name.startswith(prefix):
            try:
                yield p, int(p.name[len(prefix):])
            except ValueError:
                continue


def recover(out) -> None:
    """Put back an old report that a kill between the two renames left aside, and remove the
    staging and old folders of processes that are gone."""
    out = Path(out)
    for p, pid in list(_leftovers(out, "old")):
        if pid != os.getpid() and not pid_alive(pid):
            if not out.exists():
                os.replace(p, out)
                log.warning("report: %s put back (a run was stopped while swapping it)", out)
            else:
                shutil.rmtree(p, ignore_errors=True)
    for p, pid in list(_leftovers(out, "staging")):
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _seed_thumbs(out: Path, staging: Path) -> None:
    """Hard-link the finished thumbnails of the report in ``out`` into ``staging`` (copied
    where links are refused)."""
    src = out / "thumbs"
    if not src.is_dir():
        return
    dst = staging / "thumbs"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.startswith(".") or not f.is_file():
            continue  # a killed writer's .tmp: never carried over
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copyfile(f, dst / f.name)


def write_report_whole(store_path, model, labels_dir, params, say=lambda m: None, inputs=None):
    """``vclust.report.write_report`` into a staging folder, then swapped in as ``params.out``
    (the module docstring); returns its report dict."""
    from ..report import write_report

    out = check_out(params.out)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _seed_thumbs(out, staging)
        report = write_report(store_path, model, labels_dir,
                              params.model_copy(update={"out": str(staging)}), say=say,
                              inputs=inputs)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
        say(f"report: swapped into {out} whole")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report
