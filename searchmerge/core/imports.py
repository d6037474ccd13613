"""Importing a user's callable from a ``package.module:attribute`` path.

Study files name model factories and dataset factories this way; one place resolves them,
so every kind of factory is refused with the same clear messages.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from searchmerge.core.errors import SearchmergeError

__all__ = ["import_callable"]


def import_callable(path: str, where: str) -> Callable[..., Any]:
    """The callable ``package.module:attribute`` (the attribute may be dotted) names.

    Raises:
        SearchmergeError: Naming ``where`` when the path is malformed, the module does not
            import, the attribute is missing or it is not callable.
    """
    module_name, _, attribute = str(path).partition(":")
    if not module_name or not attribute:
        raise SearchmergeError(f"{where}: {path!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SearchmergeError(f"{where}: cannot import {module_name!r} from {path!r}: {exc}") from None
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise SearchmergeError(f"{where}: {module_name!r} has no attribute {attribute!r}")
    if not callable(found):
        raise SearchmergeError(f"{where}: {path!r} is not callable")
    return found
