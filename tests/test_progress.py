"""Progress in a log file: plain lines at each tenth, or once a minute when a tenth takes longer."""
import pytest

from weightgen import progress
from weightgen.progress import _Lines


class _Clock:
    """A fake ``time.monotonic`` that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    """The progress module's clock, replaced by one the test moves."""
    fake = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()


def test_a_fast_task_gets_one_line_per_tenth(clock, capsys):
    """Steps faster than a minute a tenth give ten lines, one per tenth, the last at 100% with nothing left."""
    bar = _Lines()
    task = bar.add_task("fit", total=25)
    for _ in range(25):
        clock.now += 2.0
        bar.advance(task)
    lines = _lines(capsys)
    assert len(lines) == 10
    assert lines[0] == "fit: 3/25 (12%), 6 s spent, ~44 s left"
    assert lines[-1] == "fit: 25/25 (100%), 50 s spent, ~0 s left"


def test_a_slow_task_gets_a_line_each_minute(clock, capsys):
    """A tenth of 6,000 steps at 2 s a step takes 20 minutes: a line comes once 60 s have passed
    since the last one, with done/total, the time spent and the time left."""
    bar = _Lines()
    task = bar.add_task("fit", total=6000)
    for _ in range(29):
        clock.now += 2.0
        bar.advance(task)
    assert _lines(capsys) == []  # 58 s: nothing yet
    clock.now += 2.0
    bar.advance(task)
    assert _lines(capsys) == ["fit: 30/6000 (0%), 60 s spent, ~11940 s left"]
    for _ in range(30):
        clock.now += 2.0
        bar.advance(task)
    assert _lines(capsys) == ["fit: 60/6000 (1%), 120 s spent, ~11880 s left"]


def test_a_tenth_resets_the_minute(clock, capsys):
    """A tenth's line counts as the last line: the next time-line waits a full minute after it."""
    bar = _Lines(every=60)
    task = bar.add_task("fit", total=10)
    clock.now += 50
    bar.advance(task)  # a tenth: a line
    clock.now += 20
    bar.advance(task, 0.5)  # 70 s after the start, 20 s after the last line: none
    clock.now += 45
    bar.advance(task, 0.25)  # 65 s after the last line: a line
    assert [line.split(",")[0] for line in _lines(capsys)] == ["fit: 1/10 (10%)", "fit: 1.75/10 (18%)"]


def test_no_total_prints_nothing(clock, capsys):
    """A task without a total has no tenths and nothing to time against."""
    bar = _Lines()
    task = bar.add_task("scan")
    clock.now += 600
    bar.advance(task)
    assert _lines(capsys) == []
