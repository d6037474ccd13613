"""How long work reports what it is doing: one line per step, to a callable.

A leaf module, so that every layer can take a ``progress`` argument without
importing the layers that call it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "silent"]

#: Called with one line per step of long work (the CLI prints it to stderr).
Progress = Callable[[str], None]


def silent(_line: str) -> None:
    """A :data:`Progress` that says nothing."""
