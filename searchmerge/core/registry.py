"""Plug-ins by name: data sources and task kinds are registered as ``package.module:Class`` paths.

The pipeline asks for a plug-in by the name a study file writes; its module is imported
only then, so the pipeline never imports a particular plug-in (and a classification
study never imports what detection needs).
"""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.keys import did_you_mean

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named plug-ins of one base class, each made once, on first use.

    Args:
        what: What a name names, for messages ("data format").
        base: The class every plug-in must be an instance of.
        paths: The built-in plug-ins: name to ``package.module:Class``.
    """

    def __init__(self, what: str, base: type[T], paths: dict[str, str]) -> None:
        self.what, self.base, self._paths = what, base, dict(paths)
        self._made: dict[str, T] = {}

    def register(self, name: str, path: str) -> None:
        """Register ``path`` (``package.module:Class``) as ``name``."""
        if name in self._paths:
            raise SearchmergeError(f"{self.what} {name!r} is already registered")
        self._paths[name] = path

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._paths))

    def get(self, name: str) -> T:
        """The plug-in called ``name``; an unknown name is refused with the closest known one."""
        if name not in self._made:
            if name not in self._paths:
                raise SearchmergeError(f"unknown {self.what} {name!r}{did_you_mean(name, self._paths)};"
                                       f" known: {', '.join(self.names())}")
            module, _, attribute = self._paths[name].partition(":")
            made = getattr(importlib.import_module(module), attribute)()
            if not isinstance(made, self.base):
                raise SearchmergeError(f"{self.what} {name!r} ({self._paths[name]}) is not a {self.base.__name__}")
            self._made[name] = made
        return self._made[name]
