"""Faults tried as a hostile user would (docs/faults.md lists them): concurrent writers, stray
files in the labels, damaged models, bad specs and addresses, a read-only store, a full disk,
old pickles, and dask processes killed mid-run. Real processes, real files; no mocks."""

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = str(Path(__file__).resolve().parents[1])
VCLUST = [sys.executable, "-m", "vclust.cli"]
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_cli(args, timeout=120, **kw):
    return subprocess.run(VCLUST + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=REPO, **kw)


def assert_one_line(out, code, match=None):
    """Exit ``code``, no traceback, and the last stderr line is the one error line."""
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vclust: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], out.stderr[-3000:]
    if match is not None:
        import re

        assert re.search(match, errors[0]), errors[0]
    return errors[0]


# --------------------------------------------------------------------------- store lock race

LOCKER = r"""
import os, sys, time
from vclust.errors import StoreLockedError
from vclust.storage.store import store_lock
store, flag = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    try:
        with store_lock(store):
            try:
                fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                print("overlap", flush=True)
                time.sleep(0.05)
                continue
            time.sleep(0.05)
            os.close(fd)
            os.unlink(flag)
        print("held", flush=True)
    except StoreLockedError:
        print("refused", flush=True)
"""


def test_store_lock_takeover_never_gives_two_holders(tmp_path):
    """Six processes race to take over a dead writer's lock, 20 times: never two holders."""
    store = tmp_path / "store"
    lock = tmp_path / "store.lock"
    flag = tmp_path / "holder"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", LOCKER, str(store), str(flag)], env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    results = []
    try:
        for _ in range(20):
            lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "since": 0}))
            for p in procs:
                p.stdin.write("go\n")
            for p in procs:
                p.stdin.flush()
            results.append([p.stdout.readline().strip() for p in procs])
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    assert not any("overlap" in r for r in results), results
    assert all(r.count("held") >= 1 for r in results), results
    assert not lock.exists()
