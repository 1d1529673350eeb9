"""One place that makes rich progress bars, so every long job looks the same."""
from __future__ import annotations

import contextlib

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Quiet:
    """A progress bar that shows nothing (tests, non-zero ranks)."""

    def add_task(self, *_, **__):
        return 0

    def advance(self, *_, **__):
        pass

    def update(self, *_, **__):
        pass


@contextlib.contextmanager
def progress_bar(enabled: bool = True):
    if not enabled:
        yield _Quiet()
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=False) as bar:
        yield bar
