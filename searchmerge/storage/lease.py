"""Leases: one worker at a time does a piece of shared work, robust to that worker dying.

Workers started together on one study (several ``searchmerge worker`` processes on a
fresh PostgreSQL storage) would all prepare the same originals. A lease is a row in
the study's database that names the work, its holder and when the claim expires. The
first worker inserts it and does the work, renewing the claim while it works; the
others wait, and find the work done when the row is gone. A holder killed mid-work
stops renewing, its claim expires, and a waiting worker takes the work over: the
database decides who, in one conditional UPDATE, so two waiters never both win.

Expiry times are the database server's (:mod:`searchmerge.storage.dbclock`), written and
compared in the statements themselves, so workers whose clocks disagree still agree on
whether a claim has expired. A renewal that updates no row means another worker has taken
the lease over (this holder stalled past its expiry): the lease is then marked lost, the
holder is told, and :meth:`Lease.check` raises, so a holder that checks between steps stops.

Example:
    >>> with hold_lease("sqlite:///study.db", "prepare:3f2a", say=print) as lease:  # doctest: +SKIP
    ...     for model in models:
    ...         lease.check()
    ...         train(model)
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.core.redact import redact, redact_url
from searchmerge.storage.dbclock import db_later, db_now

__all__ = ["LEASE_TABLE", "Lease", "LeaseLost", "hold_lease"]

LEASE_TABLE = "searchmerge_leases"
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

_metadata = sa.MetaData()
_leases = sa.Table(
    LEASE_TABLE,
    _metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)


class LeaseLost(SearchmergeError):
    """Another worker took over a lease this process held (its renewal updated no row)."""


@dataclass
class Lease:
    """A lease this process holds, inside :func:`hold_lease`'s ``with`` block."""

    name: str
    holder: str
    lost: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another worker has taken the lease over."""
        if self.lost.is_set():
            raise LeaseLost(f"the lease {self.name!r} was taken over by another worker; stopping")


@contextmanager
def hold_lease(
    url: str,
    name: str,
    *,
    seconds: float = 60.0,
    poll: float = 1.0,
    say: Progress | None = None,
) -> Iterator[Lease]:
    """Wait until this process holds the lease ``name``, then hold it for the ``with`` block.

    Args:
        url: SQLAlchemy URL of the study's database (SQLite or PostgreSQL).
        name: What the lease is for (e.g. ``prepare:<workload fingerprint>``).
        seconds: How long a claim lasts without renewal; the holder renews it every
            third of that, so only a dead holder's claim expires.
        poll: Seconds between tries while another process holds it.
        say: Told once when the lease is held by another process, and when it is taken over
            (from this process: the lease is then lost, see :class:`Lease`).
    """
    engine = sa.create_engine(url)
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        _create(engine)
        told = False
        while not _try_acquire(engine, name, holder, seconds):
            if say is not None and not told:
                say(f"waiting for {_current_holder(engine, name)} to finish {name!r}")
                told = True
            time.sleep(poll)
        stop = threading.Event()
        lease = Lease(name, holder)
        renewer = threading.Thread(target=_renew, args=(engine, lease, seconds, stop, say), daemon=True)
        renewer.start()
        try:
            yield lease
        finally:
            stop.set()
            renewer.join()
            with engine.begin() as conn:
                conn.execute(sa.delete(_leases).where(_leases.c.name == name, _leases.c.holder == holder))
    except SQLAlchemyError as exc:
        raise SearchmergeError(f"cannot hold the lease {name!r} in {redact_url(url)!r}:"
                               f" {redact(str(exc).splitlines()[0])}") from None
    finally:
        engine.dispose()


def _create(engine: Engine) -> None:
    """Create the table if missing, tolerating a worker that creates it at the same time."""
    try:
        _metadata.create_all(engine)
    except SQLAlchemyError:
        if not sa.inspect(engine).has_table(LEASE_TABLE):
            raise


def _try_acquire(engine: Engine, name: str, holder: str, seconds: float) -> bool:
    """Claim a free lease, or take over an expired one (by the database's clock); True when this holder has it."""
    insert = _INSERTS[engine.dialect.name](_leases).values(name=name, holder=holder,
                                                          expires_at=db_later(engine, seconds))
    with engine.begin() as conn:
        conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
        # Taking over is one conditional UPDATE: of two waiters, only one matches the expired row.
        conn.execute(
            sa.update(_leases)
            .where(_leases.c.name == name, _leases.c.expires_at < db_now(engine))
            .values(holder=holder, expires_at=db_later(engine, seconds))
        )
        current = conn.execute(sa.select(_leases.c.holder).where(_leases.c.name == name)).scalar()
    return current == holder


def _current_holder(engine: Engine, name: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.select(_leases.c.holder).where(_leases.c.name == name)).scalar() or "another worker")


def _renew(engine: Engine, lease: Lease, seconds: float, stop: threading.Event, say: Progress | None) -> None:
    while not stop.wait(seconds / 3):
        try:
            with engine.begin() as conn:
                renewed = conn.execute(
                    sa.update(_leases).where(_leases.c.name == lease.name, _leases.c.holder == lease.holder)
                    .values(expires_at=db_later(engine, seconds))
                ).rowcount
        except SQLAlchemyError:
            continue  # a passing database error: the next renewal tries again before the claim expires
        if renewed != 1:  # the row is another holder's (or gone): this process no longer holds the lease
            lease.lost.set()
            if say is not None:
                say(f"lost the lease {lease.name!r}: another worker took it over; stopping")
            return
