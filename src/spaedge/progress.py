"""Progress for long work: a live bar on a terminal, plain lines otherwise.

``Reporter`` shows training (steps, images/s, time left) and log lines;
``ByteProgress`` shows a download (bytes, rate, time left).

``rich`` (a dependency of the toolchain) is imported only when progress is
shown, so the device side never needs it.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Reporter", "ByteProgress"]


class Reporter:
    """Progress for long work: a rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.console = Console(stderr=True)
            if self.console.is_terminal:
                self._progress = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(),
                    TextColumn("left"),
                    TimeRemainingColumn(),
                    console=self.console,
                    transient=True,
                )

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

    def bar(self, description: str, total: int, unit: str = ""):
        """Returns advance(n=1, images=0) for a bar of ``total`` steps; with
        ``unit`` the bar also shows that many per second (images/s) and the time left."""
        if self._progress is None:
            return lambda n=1, images=0: None
        tid = self._progress.add_task(description, total=total, rate="")
        start = [time.perf_counter(), 0]

        def advance(n: int = 1, images: int = 0) -> None:
            start[1] += images
            rate = start[1] / max(time.perf_counter() - start[0], 1e-9)
            self._progress.update(
                tid, advance=n, rate=f"{rate:.0f} {unit}/s" if unit and start[1] else ""
            )
            if self._progress.tasks[[t.id for t in self._progress.tasks].index(tid)].finished:
                self._progress.remove_task(tid)

        return advance


class ByteProgress:
    """Bytes and rate on stderr: a rich bar when rich is installed, else one
    line rewritten in place."""

    def __init__(self, label: str):
        self.label = label
        self.start = time.monotonic()
        self.first: int | None = None
        self.last = 0.0
        self.bar = None
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
        except ImportError:
            return
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task(label, total=None)
        self.bar.start()

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
            return
        now = time.monotonic()
        if self.first is None:  # a resumed download starts past 0: rate counts this run only
            self.first, self.start = done, now
        if now - self.last < 0.2 and (total is None or done < total):
            return
        self.last = now
        rate = (done - self.first) / max(now - self.start, 1e-6)
        size = f"{done / 2**20:.1f}" + (f"/{total / 2**20:.1f}" if total else "")
        sys.stderr.write(f"\r{self.label}  {size} MiB  {rate / 2**20:.1f} MiB/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        else:
            sys.stderr.write("\n")
            sys.stderr.flush()
