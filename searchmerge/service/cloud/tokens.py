"""Per-edge bearer tokens: made once, stored hashed, compared in constant time.

A token is ``NAME.SECRET`` with 32 random bytes of secret (``secrets.token_urlsafe``),
so the service finds the edge's row by name and compares the SHA-256 of the whole
token with the stored one using :func:`hmac.compare_digest`. A random token of that
entropy cannot be guessed, so a fast hash is enough (a slow password hash protects
low-entropy secrets); the database never holds the token itself, and a stolen
database does not let anyone impersonate an edge.

Example:
    >>> token = create_edge_token("sqlite:///study.db", "digits-edge", "gate-1")  # doctest: +SKIP
    >>> authenticate(engine, "digits-edge", token)  # doctest: +SKIP
    'gate-1'
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from searchmerge.core.errors import SearchmergeError
from searchmerge.service.cloud.db import edges, now, open_engine, reading

__all__ = ["EDGE_NAME", "authenticate", "create_edge_token", "edge_names"]

#: What an edge may be called: it is part of URLs and of the token.
EDGE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Compared against when the named edge does not exist, so that the answer takes as long either way.
_NO_EDGE = hashlib.sha256(b"no such edge").hexdigest()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_edge_token(url: str, deployment: str, name: str) -> str:
    """Make (or replace) the token of edge ``name`` and return it; only its hash is stored.

    Replacing revokes the previous token of that edge at once.

    Raises:
        SearchmergeError: If the name is not 1-64 letters, digits, ``-`` or ``_``.
    """
    if not EDGE_NAME.fullmatch(name):
        raise SearchmergeError(f"edge name {name!r} must be 1-64 letters, digits, '-' or '_'")
    token = f"{name}.{secrets.token_urlsafe(32)}"
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(edges).where(edges.c.deployment == deployment, edges.c.name == name))
            conn.execute(sa.insert(edges).values(deployment=deployment, name=name, token_sha256=_digest(token),
                                                 created_at=now()))
    finally:
        engine.dispose()
    return token


def authenticate(engine: Engine, deployment: str, token: str) -> str | None:
    """The edge whose token ``token`` is, or ``None`` when it is nobody's."""
    name, dot, _ = token.rpartition(".")
    with reading(engine) as conn:  # every request asks: no transaction round trips
        stored = conn.execute(
            sa.select(edges.c.token_sha256).where(edges.c.deployment == deployment, edges.c.name == name)
        ).scalar() if dot and EDGE_NAME.fullmatch(name) else None
    matches = hmac.compare_digest(_digest(token), stored or _NO_EDGE)
    return name if matches and stored is not None else None


def edge_names(engine: Engine, deployment: str) -> list[str]:
    """The edges that have a token for ``deployment``."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(edges.c.name).where(edges.c.deployment == deployment)
                                 .order_by(edges.c.name)).scalars())
