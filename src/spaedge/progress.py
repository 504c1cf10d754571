"""Progress for long work: a live bar on a terminal, plain lines otherwise.

``rich`` (a dependency of the toolchain) is imported only when progress is
shown, so the device side never needs it.
"""

from __future__ import annotations

__all__ = ["Reporter"]


class Reporter:
    """Progress for long work: a rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = Console(stderr=True)
            if self.console.is_terminal:
                self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), console=self.console, transient=True)

    @property
    def live(self) -> bool:
        """True when a live progress bar shows progress (else log lines do)."""
        return self._progress is not None

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def log(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg, highlight=False)

    def bar(self, description: str, total: int):
        """Returns advance(n=1) for a bar of ``total`` steps."""
        if self._progress is None:
            return lambda n=1: None
        tid = self._progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            self._progress.advance(tid, n)
            if self._progress.tasks[[t.id for t in self._progress.tasks].index(tid)].finished:
                self._progress.remove_task(tid)
        return advance
