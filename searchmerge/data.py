"""The digits demo's data under its earlier module name, for code written before data sources.

The digits generator is now one data source among others: :mod:`searchmerge.sources.digits`
(its data record is :class:`~searchmerge.sources.digits.DigitsData`, here also
``TaskData``). New code imports it from there.
"""

from __future__ import annotations

from searchmerge.sources.digits import *  # noqa: F403 - this module is that one under another name
from searchmerge.sources.digits import DigitsData as TaskData
from searchmerge.sources.digits import __all__ as _digits_all

__all__ = [*_digits_all, "TaskData"]
