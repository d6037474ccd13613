"""Refusing unknown keys of a study file, with the known key a typo was probably meant as.

A misspelt setting that is silently ignored runs a study with defaults the user did not
choose; naming the key and its closest known spelling (``evaluater`` -> ``evaluator``)
makes the fix obvious.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from searchmerge.core.errors import SearchmergeError

__all__ = ["check_keys", "did_you_mean"]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(where: str, given: Iterable[object], known: Iterable[str]) -> None:
    """Refuse the first key of ``given`` that is not ``known``, naming the closest known one."""
    known = sorted(known)
    for key in given:
        if key not in known:
            raise SearchmergeError(
                f"{where}: unknown key {str(key)!r}{did_you_mean(str(key), known)}; known keys: {', '.join(known)}"
            )
