"""The CLI's progress: one line per step on standard error, and a bar with an ETA on a terminal.

Lines keep going to standard error as before (a log, a pipe or a test sees exactly those);
when standard error is a terminal, counted work (:func:`searchmerge.core.progress.counted`:
training steps in ``prepare``, trials in ``search``) also draws a tqdm bar with its rate and
the time left, and the lines are written above it. Commands with ``--json`` pass no progress
at all, so they stay quiet.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from searchmerge.core.progress import Counter
from searchmerge.core.redact import redact

__all__ = ["LOG_FORMAT", "TerminalProgress", "log_to_stderr"]

#: How the long-running commands (``serve``, ``edge``) log: time, level, logger, message.
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) without the password of any URL in them."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def log_to_stderr(level: int = logging.INFO) -> None:
    """Send the ``searchmerge`` loggers (the service's, the edge's) to stderr with time and level, once."""
    logger = logging.getLogger("searchmerge")
    if not any(getattr(h, "_searchmerge", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_RedactingFormatter(LOG_FORMAT))
        handler._searchmerge = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


class _Bar:
    """A :class:`~searchmerge.core.progress.Counter` on a tqdm bar."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def reach(self, done: int) -> None:
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def grow(self, steps: int) -> None:
        self.bar.total += steps
        self.bar.refresh()


class _Unseen:
    def advance(self, steps: int = 1) -> None:
        pass

    def reach(self, done: int) -> None:
        pass

    def grow(self, steps: int) -> None:
        pass


class TerminalProgress:
    """A :data:`~searchmerge.core.progress.Progress` that prints lines, and draws bars on a terminal.

    Args:
        stream: Where to write; ``None`` is ``sys.stderr`` as it is at each call (so that a
            redirected or captured stderr is followed).
        bars: Draw bars; ``None``: only when the stream is a terminal.
    """

    def __init__(self, stream: TextIO | None = None, *, bars: bool | None = None) -> None:
        self._stream = stream
        self._bars = bars
        self._open = 0

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def draws_bars(self) -> bool:
        if self._bars is not None:
            return self._bars
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def __call__(self, line: str) -> None:
        if self._open:
            from tqdm import tqdm

            tqdm.write(line, file=self.stream)  # above the bar, which is drawn again below
        else:
            print(line, file=self.stream, flush=True)

    @contextlib.contextmanager
    def counted(self, total: int, what: str, *, done: int = 0, unit: str = "step") -> Iterator[Counter]:
        """A bar over ``total`` steps of ``what`` with its rate and ETA, removed when the work ends."""
        if not self.draws_bars():
            yield _Unseen()
            return
        from tqdm import tqdm

        size = shutil.get_terminal_size()  # 80 x 24 where a terminal says 0 x 0 (tqdm would draw nothing)
        with tqdm(total=total, initial=done, desc=what, file=self.stream, leave=False, ncols=min(size.columns, 120),
                  nrows=size.lines, unit=unit, mininterval=0.5) as bar:
            self._open += 1
            try:
                yield _Bar(bar)
            finally:
                self._open -= 1
