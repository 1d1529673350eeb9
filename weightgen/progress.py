"""One place that makes progress bars, so every long job looks the same."""
from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Quiet:
    """A progress bar that shows nothing (tests, non-zero ranks)."""

    def add_task(self, *_, **__):
        return 0

    def advance(self, *_, **__):
        pass

    def update(self, *_, **__):
        pass


class _Lines:
    """Plain lines for output that is not a terminal (a log file, CI, ``nohup``): rich draws its
    bar there only once the job has ended, so a long fit would show nothing until done.
    A line comes each time another tenth of a task is done, or once ``every`` seconds have
    passed since the last line, whichever is first: a slow fit still shows it is alive."""

    def __init__(self, every: float = 60.0):
        self.every = every
        self.tasks: list[dict] = []

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        now = time.monotonic()
        self.tasks.append({"description": description, "total": total, "done": 0, "tenths": 0,
                           "started": now, "last_line": now})
        return len(self.tasks) - 1

    def update(self, task: int, description: str | None = None, **_) -> None:
        if description is not None:
            self.tasks[task]["description"] = description

    def advance(self, task: int, advance: float = 1) -> None:
        t = self.tasks[task]
        t["done"] += advance
        if not t["total"]:
            return
        now = time.monotonic()
        tenths = int(10 * t["done"] / t["total"])
        if tenths <= t["tenths"] and now - t["last_line"] < self.every:
            return
        t["tenths"], t["last_line"] = max(tenths, t["tenths"]), now
        spent = now - t["started"]
        left = spent * (t["total"] - t["done"]) / t["done"] if t["done"] else float("nan")
        percent = min(100.0, 100 * t["done"] / t["total"])
        print(f"{t['description']}: {t['done']:g}/{t['total']:g} ({percent:.0f}%), "
              f"{spent:.0f} s spent, ~{left:.0f} s left", flush=True)


@contextlib.contextmanager
def progress_bar(enabled: bool = True):
    """A rich bar on a terminal, plain lines elsewhere (``_Lines``), nothing when not ``enabled``."""
    if not enabled:
        yield _Quiet()
        return
    if not Console().is_terminal:
        yield _Lines()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=False) as bar:
        yield bar
