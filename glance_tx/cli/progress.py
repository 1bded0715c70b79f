"""
Progress bars for uploads and downloads, on stderr when it is a terminal.

Drawn with C{click.progressbar} (the command line's library already; no
second dependency), which keeps the bar to the terminal's width and
redraws it in place. The text beside the bar (bytes so far, rate, time
left) is computed here: click's own ETA waits a second before it shows,
and it knows no rate.

The client calls the callback on its reactor thread while the command's
thread waits, so the bar is only ever touched by one thread at a time.
Redraws are limited to one every L{TransferBar.interval} seconds: a
download reports every few kilobytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import click
from attrs import define, field

from glance_tx.cli.output import human_size

__all__ = ["TransferBar", "clock_text", "transfer_bar"]


def clock_text(seconds: float) -> str:
    """C{seconds} as C{HH:MM:SS}."""
    whole = max(0, int(seconds + 0.5))
    return f"{whole // 3600:02}:{whole // 60 % 60:02}:{whole % 60:02}"


@define
class TransferBar:
    """The progress callback of one transfer, drawing a bar on C{file}."""

    label: str
    file: TextIO
    clock: Callable[[], float] = time.monotonic
    interval: float = 0.1
    done: int = 0
    total: int | None = None
    finished: bool = False
    _started: float = field(init=False)
    _drawn: float | None = field(default=None, init=False)
    _bar: Any = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._started = self.clock()

    def info(self) -> str:
        """The text beside the bar: so far (of all), rate, time left."""
        elapsed = self.clock() - self._started
        sent = human_size(self.done)
        if self.total is not None and not self.finished:
            sent += f"/{human_size(self.total)}"
        parts = [sent]
        if elapsed > 0 and self.done:
            rate = self.done / elapsed
            parts.append(f"{human_size(rate)}/s")
            if self.finished:
                parts.append(f"in {clock_text(elapsed)}")
            elif self.total is not None:
                parts.append(f"ETA {clock_text((self.total - self.done) / rate)}")
        return "  ".join(parts)

    def __call__(self, done: int, total: int | None) -> None:
        """The client's progress callback: C{done} bytes of C{total}."""
        self.done, self.total = done, total
        if self._bar is None:
            self._bar = click.progressbar(
                length=total,
                label=self.label,
                file=self.file,
                show_eta=False,
                show_percent=total is not None,
                show_pos=False,
                item_show_func=lambda _: self.info(),
            )
            self._bar.__enter__()
        now = self.clock()
        if self._drawn is None or now - self._drawn >= self.interval or done == total:
            self._drawn = now
            self._bar.update(done - self._bar.pos)

    def close(self, finished: bool) -> None:
        """Draw the last line (the average rate and time, if C{finished})."""
        if self._bar is None:
            return
        self.finished = finished
        self._bar.update(self.done - self._bar.pos)
        self._bar.render_progress()
        self._bar.__exit__(None, None, None)


@contextmanager
def transfer_bar(label: str, enabled: bool, file: TextIO) -> Iterator[TransferBar | None]:
    """A L{TransferBar} for the transfer in the block, or None if not C{enabled}."""
    if not enabled:
        yield None
        return
    bar = TransferBar(label, file)
    finished = False
    try:
        yield bar
        finished = True
    finally:
        bar.close(finished)
