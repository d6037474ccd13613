"""Passwords out of messages: the one helper every message that shows a URL goes through.

A storage URL such as ``postgresql+psycopg://worker:s3cret@db:5432/studies`` carries its
password. Errors, log lines and printed summaries show the URL (which database, which
host) with the password replaced by ``***``; the CLI also passes every error and log line
through :func:`redact`, so a message made elsewhere cannot leak one either.

Example:
    >>> redact_url("postgresql+psycopg://worker:s3cret@db:5432/studies")
    'postgresql+psycopg://worker:***@db:5432/studies'
    >>> redact("cannot open 'postgresql://u:p%40ss@h/db': timeout")
    "cannot open 'postgresql://u:***@h/db': timeout"
"""

from __future__ import annotations

import re

__all__ = ["redact", "redact_url"]

# scheme://user:password@ : the password runs to the '@' (it may not hold '/', '@' or spaces unescaped).
_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s'\"]*:)(?P<password>[^@\s/'\"]+)@")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    return redact(str(url))


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _PASSWORD.sub(lambda match: f"{match['head']}***@", str(text))
