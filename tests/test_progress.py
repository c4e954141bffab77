"""Progress lines within a long phase (vclust.jobs.progress): rows done, share and time left,
counted as real dask tasks finish, on the threads scheduler and on a real LocalCluster."""

import re
import time

import dask
import pytest

from vclust.jobs import progress
from vclust.report.heartbeat import Heartbeat

LINE = re.compile(r"^work: ([\d,]+) of 1,000 rows \((\d+)%\) in \d+ s(, about \d+ s left)?$")


def _slow(n):
    time.sleep(0.05)
    return n


def _check(lines):
    assert lines, "no progress line"
    done = []
    for i, line in enumerate(lines):
        m = LINE.match(line)
        assert m, line
        done.append(int(m.group(1).replace(",", "")))
        # no time left on the first part's line (its time includes the phase's start-up: no
        # rate to go by) nor at the end; between, once a second has passed since the first part
        # (these parts take 0.05 s: the clock tests below check the figure)
        if i == 0 or done[-1] == 1000:
            assert m.group(3) is None, line
    assert done == sorted(done) and done[-1] == 1000


@pytest.mark.parametrize("how", ["rows", "rows_of"])
def test_progress_on_the_threads_scheduler(how):
    lines = []
    tasks = [dask.delayed(_slow)(100) for _ in range(10)]
    kw = {"rows": [100] * 10} if how == "rows" else {"rows_of": int}
    got = progress.compute(tasks, lines.append, "work", 1000, every=0.0, **kw)
    assert got == (100,) * 10
    _check(lines)
    assert len(lines) == 10  # every=0: a line per task


def test_progress_on_a_local_cluster(local_client):
    lines = []
    tasks = [dask.delayed(_slow, pure=False)(250) for _ in range(4)]
    got = progress.compute(tasks, lines.append, "work", 1000, rows_of=int, every=0.0)
    assert got == (250,) * 4
    _check(lines)
    assert [int(LINE.match(x).group(1).replace(",", "")) for x in lines] == [250, 500, 750, 1000]


def test_time_left_goes_by_the_rate_after_the_first_part():
    """The first part carries the start-up (a model's index restored, the first chunk read):
    10 s for the first of 10 parts, then 1 s each. After the second part 8 remain, about 8 s;
    at the rate from the start (11 s for 2 parts) it would have said about 44 s."""
    now = [0.0]
    lines = []
    prog = progress.Progress(lines.append, "work", 1000, every=0.0, clock=lambda: now[0])
    for t in (10.0, 11.0, 12.0):
        now[0] = t
        prog.add(100)
    assert lines[0] == "work: 100 of 1,000 rows (10%) in 10 s"
    assert lines[1] == "work: 200 of 1,000 rows (20%) in 11 s, about 8 s left"
    assert lines[2] == "work: 300 of 1,000 rows (30%) in 12 s, about 7 s left"
    now[0] = 12.01  # a part finishing with the previous one: 300 rows in 2.01 s since the first
    prog.add(100)
    assert lines[3] == "work: 400 of 1,000 rows (40%) in 12 s, about 4 s left"


def test_no_time_left_from_parts_that_finish_together():
    now = [0.0]
    lines = []
    prog = progress.Progress(lines.append, "work", 1000, every=0.0, clock=lambda: now[0])
    for t in (5.0, 5.01):  # two workers' first parts, a hundredth of a second apart
        now[0] = t
        prog.add(100)
    assert lines == ["work: 100 of 1,000 rows (10%) in 5 s", "work: 200 of 1,000 rows (20%) in 5 s"]


def test_progress_error_is_raised_not_hidden(local_client):
    def bad(n):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        progress.compute([dask.delayed(bad, pure=False)(1)], lambda m: None, "work", 1,
                         rows=[1])


def test_heartbeat_says_the_time_so_far():
    lines = []
    with Heartbeat(lines.append, "layout", every=0.05):
        time.sleep(0.3)
    assert lines and all(re.match(r"^layout: \d+ s so far$", x) for x in lines)
