"""Progress within a long phase, as lines on stderr (through the command's ``say``): rows done,
their share, the time so far and the time left, one line every few seconds and one at the end::

    pixels: batch initial: 96,000 of 416,314 rows (23%) in 11 s, about 37 s left

``compute(tasks, ...)`` is ``dask.compute(*tasks)`` with those lines. Where a Dask client is
connected (a LocalCluster, SLURM, SSH or a scheduler) the tasks run as its futures and a row
counts when its task's future completes (Dask's own progress on the cluster: the scheduler
tells the client as each finishes); in this process (the threads scheduler) the scheduler's
task callbacks count them. A phase that is one call with no parts (the report's UMAP layout)
says the time so far instead (vclust.report.heartbeat).

The time left is at the rate since the first part finished: the first part also carries the
phase's start-up (a model's index restored, kernels loaded, the first chunk read from disk), and
at the rate from the start the efficientnet-b7 label said "about 591 s left" after its first
8,192 rows and took 37 s in all. Until a later part finishes at least a second after the first,
no time left is said.
"""

from __future__ import annotations

import threading
import time

EVERY = 5.0  # seconds between progress lines


def _client():
    """The distributed client that runs this process's graphs, or None: none exists, or
    ``dask.config.set(scheduler="threads")`` (or "sync") is in force (blocks.distributed_client)."""
    from ..numerics.blocks import distributed_client

    return distributed_client()


class Progress:
    """Counts rows done and says a line every ``every`` seconds (and when all are done)."""

    def __init__(self, say, what: str, total: int, every: float = EVERY, clock=time.perf_counter):
        self.say, self.what, self.total, self.every = say, what, int(total), every
        self.clock = clock
        self.done = 0
        self.t0 = self.last = clock()
        self.first = None  # (time, rows done) when the first part finished
        self._lock = threading.Lock()

    def line(self) -> str:
        now = self.clock()
        el = now - self.t0
        share = self.done / self.total if self.total else 1.0
        left = float("nan")
        # parts finishing together (two workers) give no rate: at least a second of it
        if self.first is not None and self.done > self.first[1] and now - self.first[0] >= 1.0:
            rate = (self.done - self.first[1]) / (now - self.first[0])
            left = (self.total - self.done) / rate
        tail = "" if self.done >= self.total else (
            f", about {left:.0f} s left" if left == left else "")
        return (f"{self.what}: {self.done:,} of {self.total:,} rows ({share:.0%}) in {el:.0f} s"
                + tail)

    def add(self, rows: int) -> None:
        with self._lock:
            self.done += int(rows)
            now = self.clock()
            if self.first is None:
                self.first = (now, self.done)
            if now - self.last >= self.every or self.done >= self.total:
                self.last = now
                self.say(self.line())


def compute(tasks, say, what: str, total: int, rows=None, rows_of=None,
            every: float = EVERY) -> tuple:
    """``dask.compute(*tasks)``, saying progress lines over ``total`` rows: a task's rows are
    ``rows[i]``, or ``rows_of(its result)``; ``what`` begins each line."""
    import dask

    tasks = list(tasks)
    if (rows is None) == (rows_of is None):
        raise ValueError("compute needs one of rows and rows_of")
    prog = Progress(say, what, total, every)

    def count(i, result):
        prog.add(rows[i] if rows is not None else rows_of(result))

    client = _client()
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        pos = {f.key: i for i, f in enumerate(futures)}
        for f in as_completed(futures):
            if f.status != "finished":
                break  # gather raises its error
            count(pos[f.key], f.result() if rows_of is not None else None)
        return tuple(client.gather(futures))
    from dask.callbacks import Callback

    at = {t.key: i for i, t in enumerate(tasks)}

    class _Count(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if key in at:
                count(at[key], result)

    with _Count():
        return tuple(dask.compute(*tasks))
