"""Progress of the long loops (router epochs, arm steps, embedding many texts): a rich progress
bar when a person watches a terminal, a log line per step (or per `every` steps) otherwise, so a
scheduled retrain shows the same progress in its Prefect task log, line by line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any


class Progress:
    """`with Progress("router epoch", 60, log.info) as bar: bar.update(epoch, "loss 0.3")`.

    Off a terminal, `update(done, note)` logs `"<label> <done>/<total> <note>"` when `done` is a
    multiple of `every` or the last step; on a terminal it moves the bar instead."""

    def __init__(self, label: str, total: int, log: Callable[[str], Any], every: int = 1,
                 terminal: bool | None = None) -> None:
        self.label, self.total, self.log, self.every = label, max(int(total), 1), log, max(int(every), 1)
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        return self

    def _start(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=self.total, note="")

    def update(self, done: int, note: str = "") -> None:
        if self.terminal:
            if self._bar is None:
                self._start()
            self._bar.update(self._task, completed=done, note=note)
        elif done % self.every == 0 or done == self.total:
            self.log(f"{self.label} {done}/{self.total}" + (f" {note}" if note else ""))

    def close(self) -> None:
        """Stop the bar (a loop that ends early, e.g. by early stopping, leaves it short)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
