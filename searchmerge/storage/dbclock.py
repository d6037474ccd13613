"""The database's clock, as SQL: leases are judged by one clock, not by each machine's own.

A lease written as "expires at my time + 60 s" and judged by another worker's time breaks as
soon as two machines' clocks disagree by more than the margin. Every lease here (the
preparation lease of :mod:`searchmerge.storage.lease`, the service's re-search jobs) writes
and compares times computed by the database server in the statement itself.

Example:
    >>> import sqlalchemy as sa
    >>> engine = sa.create_engine("sqlite://")
    >>> with engine.connect() as conn:
    ...     later = conn.execute(sa.select(db_later(engine, 60) > db_now(engine))).scalar()
    >>> bool(later)
    True
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

__all__ = ["db_later", "db_now"]


def db_now(engine: Engine) -> sa.ColumnElement[datetime]:
    """The database server's current time, as an SQL expression."""
    return db_later(engine, 0.0)


def db_later(engine: Engine, seconds: float) -> sa.ColumnElement[datetime]:
    """The database server's time ``seconds`` from now, as an SQL expression.

    PostgreSQL: ``clock_timestamp()`` (the time of the statement, not of its transaction's start).
    SQLite: its UTC ``now``, written as SQLAlchemy writes a ``DateTime`` (so the two compare as text).
    """
    if engine.dialect.name == "postgresql":
        return sa.func.clock_timestamp() + sa.func.make_interval(0, 0, 0, 0, 0, 0, float(seconds))
    return sa.func.strftime("%Y-%m-%d %H:%M:%f000", "now", f"{float(seconds):+.3f} seconds")
