"""The one exception type that users see.

Every problem caused by the user's input (an unknown architecture, an unreadable
study file, a plan naming a missing group, ...) is raised as a
:class:`SearchmergeError` with a message that names the problem. The CLI prints
that message on one line and exits non-zero instead of showing a traceback;
Python callers can catch it like any other exception.
"""

from __future__ import annotations


class SearchmergeError(Exception):
    """A problem with the user's input or environment, explained in the message."""
