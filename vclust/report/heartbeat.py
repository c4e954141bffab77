"""The time so far of a phase that is one call with no parts to count (the report's map
layout: umap-learn runs it in one worker and tells nothing until it returns), said every few
seconds while it runs; the time left too when an estimate is given. Rows done and time left of
phases made of parts: vclust.jobs.progress."""

from __future__ import annotations

import threading
import time


class Heartbeat:
    """``with Heartbeat(say, "report: umap map of 50,000 rows", expected=40):`` says the time so
    far every ``every`` seconds while the block runs (with ``expected`` seconds, the time left
    at that estimate). ``since``: the ``time.perf_counter()`` the phase began, when it began
    before the block (the report's layouts run elsewhere while it does other work)."""

    def __init__(self, say, what: str, expected: float | None = None, every: float = 10.0,
                 since: float | None = None):
        self.say, self.what, self.expected, self.every = say, what, expected, every
        self.since = since
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        t0 = time.perf_counter() if self.since is None else self.since
        while not self._stop.wait(self.every):
            el = time.perf_counter() - t0
            if self.expected:
                share = min(0.99, el / self.expected)
                left = max(0.0, self.expected - el)
                self.say(f"{self.what}: {el:.0f} s so far, about {share:.0%} by the estimate, "
                         f"about {left:.0f} s left")
            else:
                self.say(f"{self.what}: {el:.0f} s so far")

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True, name="vclust-heartbeat")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
