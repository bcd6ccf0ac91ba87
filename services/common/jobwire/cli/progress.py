"""A one-line progress report for long CLI operations, with no dependency.

On a terminal the line is rewritten in place (`\\r`) a few times a second and erased when
the operation ends, so it never mixes with the output. Elsewhere nothing is written,
unless asked for (`--progress`): then a plain line now and then, which suits a log file.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self, TextIO

__all__ = ["Progress", "isatty"]


def isatty(stream: object) -> bool:
    """Whether `stream` is a terminal; False for closed, replaced or missing streams."""
    check = getattr(stream, "isatty", None)
    try:
        return bool(check()) if callable(check) else False
    except (OSError, ValueError):
        return False


class Progress:
    """`label: done/total (pct)  note  rate/s` on `stream` (stderr by default).

    `enabled` None means: only when the stream is a terminal. `total` may be unknown.
    Call `update` as work is done; it redraws at most every `interval` seconds (0.1 on a
    terminal, 2 otherwise) unless `force` is given. `write` prints a line of its own
    without garbling the progress line. `close` erases the line on a terminal, or writes
    the final state elsewhere.
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.note = ""
        self.stream = stream if stream is not None else sys.stderr
        self.inplace = isatty(self.stream)
        self.enabled = self.inplace if enabled is None else enabled
        self._clock = clock
        self._started = clock()
        self._interval = 0.1 if self.inplace else 2.0
        self._drawn_at: float | None = None
        self._shown = 0  # characters of the line now on screen
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def render(self) -> str:
        """The progress line as it would be shown now."""
        text = f"{self.label}: {self.done:,}"
        if self.total is not None:
            text += f"/{self.total:,}"
            if self.total:
                text += f" ({100 * self.done // self.total}%)"
        if self.note:
            text += f"  {self.note}"
        elapsed = self._clock() - self._started
        if elapsed >= 1 and self.done:
            text += f"  {self.done / elapsed:,.0f}/s"
        return text

    def update(
        self,
        done: int | None = None,
        *,
        advance: int = 0,
        note: str | None = None,
        force: bool = False,
    ) -> None:
        """Sets the count (`done`) or adds to it (`advance`), and redraws if it is time."""
        if done is not None:
            self.done = done
        self.done += advance
        if note is not None:
            self.note = note
        if not self.enabled or self._closed:
            return
        now = self._clock()
        if force or self._drawn_at is None or now - self._drawn_at >= self._interval:
            self._drawn_at = now
            self._draw()

    def write(self, line: str) -> None:
        """Prints `line` on the stream, keeping the progress line below it."""
        if self.inplace and self._shown:
            self._erase()
            print(line, file=self.stream, flush=True)
            self._draw()
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Ends the report: erased on a terminal, the final state as a line elsewhere."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self.inplace:
            self._erase()
        elif self._drawn_at is not None:
            self._draw()  # the last figures, so that a log shows how it ended

    def _draw(self) -> None:
        text = self.render()
        if not self.inplace:
            print(text, file=self.stream, flush=True)
            return
        # A line longer than the terminal would wrap, and `\r` only returns to the start
        # of the last row: keep it to one row.
        width = shutil.get_terminal_size((80, 24)).columns - 1
        text = text[:width] if width > 0 else text
        self.stream.write("\r" + text + " " * max(0, self._shown - len(text)))
        self.stream.flush()
        self._shown = len(text)

    def _erase(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
