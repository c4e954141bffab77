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
    for line in lines:
        m = LINE.match(line)
        assert m, line
        done.append(int(m.group(1).replace(",", "")))
        assert (m.group(3) is None) == (done[-1] == 1000), line  # time left until the end
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
