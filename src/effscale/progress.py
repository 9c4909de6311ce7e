"""The one progress bar every long command uses (training, profiling, the coefficient search):
rich on stderr, so that stdout stays clean for --json, or nothing at all when disabled."""
from __future__ import annotations

import sys


class ProgressBar:
    """`with ProgressBar(enabled) as bar: task = bar.task("peaks", total=2); task.advance()`.

    `info=True` adds a free-text column (`task.advance(info="loss 0.3")`), `eta=True` the time
    remaining. `bar.print(text)` prints above the bar, or to stderr when the bar is disabled."""

    def __init__(self, enabled: bool, *, label: str = "{task.description:<28}", info: bool = False,
                 eta: bool = False):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
            columns += [TextColumn("{task.fields[info]}")] if info else []
            columns += [TimeElapsedColumn()] + ([TextColumn("ETA"), TimeRemainingColumn()] if eta else [])
            self.bar = Progress(*columns, console=Console(stderr=True), transient=False)

    def __enter__(self) -> "ProgressBar":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def task(self, description: str, total: int, completed: int = 0) -> "Task":
        if self.bar is None:
            return Task(None, None)
        return Task(self.bar, self.bar.add_task(description, total=total, completed=completed, info=""))

    def print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)


class Task:
    """One line of a ProgressBar (a no-op when the bar is disabled)."""

    def __init__(self, bar, task_id):
        self.bar, self.task_id = bar, task_id

    def advance(self, steps: int = 1, **fields) -> None:
        if self.bar is not None:
            self.bar.update(self.task_id, advance=steps, **fields)

    def update(self, completed: int, **fields) -> None:
        if self.bar is not None:
            self.bar.update(self.task_id, completed=completed, **fields)


__all__ = ["ProgressBar", "Task"]
