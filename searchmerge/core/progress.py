"""How long work reports what it is doing: one line per step, to a callable, and counted steps.

A leaf module, so that every layer can take a ``progress`` argument without
importing the layers that call it.

A :data:`Progress` is any callable taking a line. Work whose steps can be counted in
advance (training steps, trials) also says how far it is with :func:`counted`; a progress
callable that can draw a bar (the CLI's, on a terminal) has a ``counted`` method of the same
form, and for any other the count is silent and the lines are all there is.

Example:
    >>> lines = []
    >>> with counted(lines.append, 3, "demo") as steps:
    ...     for _ in range(3):
    ...         steps.advance()
    >>> lines
    []
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = ["Counter", "Progress", "counted", "silent"]

#: Called with one line per step of long work (the CLI prints it to stderr).
Progress = Callable[[str], None]


def silent(_line: str) -> None:
    """A :data:`Progress` that says nothing."""


class Counter(Protocol):
    """How far counted work is: a progress bar's handle."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more are done."""

    def reach(self, done: int) -> None:
        """``done`` are done in all (work that others share, such as a study's trials)."""

    def grow(self, steps: int) -> None:
        """The work turned out ``steps`` longer (counted once its data was opened)."""


class _Uncounted:
    def advance(self, steps: int = 1) -> None:
        pass

    def reach(self, done: int) -> None:
        pass

    def grow(self, steps: int) -> None:
        pass


@contextlib.contextmanager
def counted(
    progress: Progress | None, total: int, what: str, *, done: int = 0, unit: str = "step"
) -> Iterator[Counter]:
    """Count ``total`` steps of ``what`` (``done`` of them already) on ``progress``'s bar, if it draws one.

    ``unit`` names a step (``step``: a training batch; ``trial``).
    """
    draw = getattr(progress, "counted", None)
    if draw is None:
        yield _Uncounted()
        return
    with draw(total, what, done=done, unit=unit) as counter:
        yield counter
