"""The one validator of a study file's settings: a section becomes a frozen dataclass, or one line.

Each setting is a field of a frozen dataclass, with a type (``int``, ``float``, ``bool``,
``str``) and, where it has one, a range (``setting(8, at_least=1)``). Reading a section checks
that it is a mapping, that every key is known (naming the closest known one), and that every
value has its field's type and is in range; an error names the key's path
(``evaluator.max_epochs must be at least 1, got 0``). Python code that builds a settings
object directly gets the same checks from the class's ``__post_init__`` (:func:`validate`).

The types are strict, because YAML reads more as text than people expect:

* a boolean is YAML's ``true``/``false`` (or ``yes``/``no``, ``on``/``off`` unquoted); a quoted
  ``"no"`` is text and is refused, not read as true;
* an integer is a whole number, not ``abc``, ``2.5`` or ``true``;
* a number may be an integer, a decimal, or text that is one: YAML 1.1 reads ``1e-3`` (no dot)
  as text, and a study file means the number.

Example:
    >>> from searchmerge.config.settings import TrainSettings
    >>> parse(TrainSettings, {"epochs": 3, "lr": "1e-3"}, "pretrain")
    TrainSettings(epochs=3, lr=0.001, batch_size=64, weight_decay=0.0005)
    >>> parse(TrainSettings, {"epochs": 0}, "pretrain")
    Traceback (most recent call last):
    searchmerge.core.errors.SearchmergeError: pretrain.epochs must be at least 1, got 0
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.keys import check_keys

__all__ = ["Range", "mapping", "parse", "setting", "typed", "validate", "values"]


@dataclass(frozen=True)
class Range:
    """The values a setting may take: bounds (inclusive unless ``above``), or a list of choices."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    choices: tuple[str, ...] = ()
    #: Said after the range in an error (what the setting means).
    hint: str = ""

    def holds(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most))

    def describe(self) -> str:
        if self.choices:
            quoted = [repr(c) for c in self.choices]
            text = " or ".join(quoted) if len(quoted) <= 2 else "one of " + ", ".join(quoted)
        elif self.above is not None and self.at_most is not None:
            text = f"in ({_number(self.above)}, {_number(self.at_most)}]"
        elif self.at_least is not None and self.at_most is not None:
            text = f"in [{_number(self.at_least)}, {_number(self.at_most)}]"
        elif self.above is not None:
            text = f"above {_number(self.above)}"
        elif self.at_least is not None:
            text = f"at least {_number(self.at_least)}"
        else:
            text = f"at most {_number(self.at_most)}"
        return f"{text} ({self.hint})" if self.hint else text


def setting(
    default: Any = dataclasses.MISSING,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    choices: Collection[str] = (),
    hint: str = "",
) -> Any:
    """A dataclass field with its default and the range its values must lie in."""
    rule = Range(at_least, above, at_most, tuple(choices), hint)
    return dataclasses.field(default=default, metadata={"range": rule})


def mapping(value: Any, where: str, what: str = "") -> dict[str, Any]:
    """A section as a dict (an empty or absent section is ``{}``), or an error naming it."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SearchmergeError(f"{where} must be a mapping{f' of {what}' if what else ''}, got {value!r}")
    return dict(value)


def typed(where: str, value: Any, kind: type) -> Any:
    """``value`` as a ``kind`` (``int``, ``float``, ``bool`` or ``str``), or a one-line error naming ``where``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        quoted = " (quoted, so YAML reads it as text; write true or false without quotes)" if isinstance(value, str) \
            else ""
        raise SearchmergeError(f"{where} must be true or false, got {value!r}{quoted}")
    if kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value
        raise SearchmergeError(f"{where} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 as text
            except ValueError:
                pass
        raise SearchmergeError(f"{where} must be a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise SearchmergeError(f"{where} must be text, got {value!r}")
    raise TypeError(f"a setting of type {kind!r} has no validator")


def values(kind: type, given: Mapping[str, Any], where: str, *, fields: Collection[str] | None = None) -> dict[str, Any]:
    """The settings ``given`` for the fields of dataclass ``kind``, each typed and in range.

    Args:
        kind: A dataclass whose fields are settings (see :func:`setting`).
        given: The section, as written.
        where: The section's path (``evaluator``); ``""`` at the top of the file.
        fields: The fields this section may set (default: all of them).

    Raises:
        SearchmergeError: For an unknown key, a value of the wrong type, or one out of range.
    """
    known = _fields(kind)
    allowed = list(fields) if fields is not None else list(known)
    check_keys(where or "study file", given, allowed)
    return {key: _checked(f"{where}.{key}" if where else key, value, known[key]) for key, value in given.items()}


def parse(kind: type, section: Any, where: str) -> Any:
    """The dataclass ``kind`` made from a study file's section (absent keys keep their defaults)."""
    return kind(**values(kind, mapping(section, where), where))


def validate(instance: Any, where: str) -> None:
    """Check the typed, ranged fields of a settings object made in Python (its ``__post_init__``)."""
    for name, (kind, rule) in _fields(type(instance)).items():
        if kind in (int, float, bool, str):
            _checked(f"{where}.{name}" if where else name, getattr(instance, name), (kind, rule))


def _checked(where: str, value: Any, field: tuple[type, Range | None]) -> Any:
    kind, rule = field
    if kind not in (int, float, bool, str):
        return value  # a nested section or mapping: its owner checks it
    value = typed(where, value, kind)
    if rule is not None and not rule.holds(value):
        raise SearchmergeError(f"{where} must be {rule.describe()}, got {value!r}")
    return value


@functools.cache
def _fields(kind: type) -> dict[str, tuple[type, Range | None]]:
    """Each field of a dataclass: its type (``int``, ... or something else) and range."""
    hints = typing.get_type_hints(kind)
    return {f.name: (_plain(hints[f.name]), f.metadata.get("range")) for f in dataclasses.fields(kind) if f.init}


def _plain(hint: Any) -> Any:
    return hint if hint in (int, float, bool, str) else object


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
