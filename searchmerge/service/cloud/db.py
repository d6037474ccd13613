"""The service's state as tables in the study's own database (SQLite or PostgreSQL).

The merging service keeps nothing it needs in memory only: edges and their token
hashes, published versions, re-search jobs and the samples the edges sent are rows
beside Optuna's tables and the checkpoint records. A service killed at any moment
therefore restarts where it was, and two rows that must exist once (a version of a
given trial, a job for a given drift) are kept once by unique constraints, decided by
the database rather than by a read-then-write in Python.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.redact import redact, redact_url
from searchmerge.storage.dbclock import db_later, db_now

__all__ = ["db_later", "db_now", "edges", "jobs", "now", "open_engine", "reading", "samples", "utc", "versions"]

_metadata = sa.MetaData()

#: One row per edge of a deployment: the SHA-256 of its token (never the token) and what it last reported.
edges = sa.Table(
    "searchmerge_edges",
    _metadata,
    sa.Column("deployment", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("token_sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
    sa.Column("stats_json", sa.Text, nullable=True),
)

#: Published deployments, numbered 1, 2, ... per deployment; immutable once inserted.
versions = sa.Table(
    "searchmerge_versions",
    _metadata,
    sa.Column("deployment", sa.String(255), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source_study", sa.String(255), nullable=False),
    sa.Column("trial", sa.Integer, nullable=False),
    sa.Column("checkpoint", sa.String(64), nullable=False),
    sa.Column("scenario", sa.String(255), nullable=True),
    sa.Column("manifest_blob", sa.String(80), nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("manifest_size", sa.BigInteger, nullable=False),
    sa.Column("weights_blob", sa.String(80), nullable=False),
    sa.Column("weights_sha256", sa.String(64), nullable=False),
    sa.Column("weights_size", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # Set by a rollback: the version stays stored, but is no longer served as current.
    sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
    # The operator key's signature of (number, manifest SHA-256), and the key's id (searchmerge.service.signing).
    sa.Column("signature", sa.Text, nullable=True),
    sa.Column("signed_by", sa.String(64), nullable=True),
    # Set by a rollback: this version stays current, whatever is published after, until unpinned.
    sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=True),
    # A trial is published once, however often a restarted job tries.
    sa.UniqueConstraint("deployment", "source_study", "trial", name="uq_searchmerge_versions_trial"),
)

#: Re-search jobs: one per (deployment, parent study, drift scenario).
jobs = sa.Table(
    "searchmerge_jobs",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("deployment", sa.String(255), nullable=False),
    sa.Column("parent_study", sa.String(255), nullable=False),
    sa.Column("scenario", sa.String(255), nullable=False),
    sa.Column("study_name", sa.String(255), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("n_trials", sa.Integer, nullable=False),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("message", sa.Text, nullable=False, default=""),
    # Who runs it, until when (the database's clock), and how often it was started (a crash counts).
    sa.Column("holder", sa.String(255), nullable=True),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=True),
    sa.UniqueConstraint("deployment", "parent_study", "scenario", name="uq_searchmerge_jobs_drift"),
)

#: Frames the edges sampled, with the label the service gave them.
samples = sa.Table(
    "searchmerge_samples",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("deployment", sa.String(255), nullable=False),
    sa.Column("edge", sa.String(64), nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("edge_version", sa.Integer, nullable=True),
    sa.Column("scenario", sa.String(255), nullable=True),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("frame_index", sa.Integer, nullable=False),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("shape_json", sa.String(64), nullable=False),
    sa.Column("frame", sa.LargeBinary, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    # How ``frame`` is stored: "png" (8-bit pixels of the model's view, H x W x C in ``shape_json`` order
    # C, H, W), or none for raw little-endian float32 (rows of older versions).
    sa.Column("encoding", sa.String(8), nullable=True),
    # [mean, std]: the model takes a pixel p as (p / 255 - mean) / std (its data source's normalisation).
    sa.Column("normalisation_json", sa.String(64), nullable=True),
    # A detection target (boxes and labels in pixels of the model's input; ``label`` is then -1).
    sa.Column("target_json", sa.Text, nullable=True),
    sa.Index("ix_searchmerge_samples_model", "deployment", "model", "id"),
)


def now() -> datetime:
    """The current time in UTC, as every row stores it."""
    return datetime.now(timezone.utc)


def open_engine(url: str) -> Engine:
    """An engine on the study's database with the service's tables created if missing.

    Services started at once on a fresh PostgreSQL database may race to create the
    tables; the loser's error is harmless once the tables exist.
    """
    try:
        engine = sa.create_engine(url, **_pool(url))
    except Exception as exc:  # noqa: BLE001 - any failure to open means an unusable URL
        raise SearchmergeError(f"cannot open the service's database {redact_url(url)!r}: {redact(str(exc))}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _write_ahead)
    try:
        _metadata.create_all(engine)
    except SQLAlchemyError as exc:
        if not _has_tables(engine):
            raise SearchmergeError(f"cannot create the service's tables in {redact_url(url)!r}:"
                                   f" {redact(str(exc).splitlines()[0])}") from None
    _add_columns(engine, url)
    return engine


#: Connections a service keeps open to a server database (and opens beyond them at a peak): the API
#: answers requests in a pool of 40 threads (anyio's default), each needing a connection for a
#: moment; with SQLAlchemy's default of 5 kept, a service under 100 edges opened and closed
#: connections all the time (benchmarks/bench_service_load.py). At most 20 a process, so that
#: several services and workers stay within PostgreSQL's default of 100 connections.
POOL_SIZE, POOL_OVERFLOW = 10, 10


def _pool(url: str) -> dict[str, int]:
    """The pool's size for a server database (SQLite files keep SQLAlchemy's own pooling)."""
    return {} if url.startswith("sqlite") else {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}


def _write_ahead(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    """Put a SQLite file in write-ahead-log mode, with a commit that waits for no disk flush.

    In SQLite's default (rollback journal) mode every upload's commit flushed the disk twice
    while holding the one write lock: under 100 edges a sample waited 10 s (p50) for its
    turn; in WAL mode 15 ms (benchmarks/bench_service_load.py). A commit is then durable
    once the log is flushed, at the latest at the next checkpoint: a power cut may lose the
    last moments' samples, never a whole transaction's consistency. The mode belongs to the
    file (a ``-wal`` file beside it while it is open: copy both, or stop the service first).
    A file another process holds exclusively stays as it is.
    """
    try:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError:
        pass  # locked by another process: this connection works in the file's current mode


def reading(engine: Engine) -> Connection:
    """A connection for reads that need no transaction of their own (use it in a ``with``).

    It runs in autocommit: on PostgreSQL a plain ``engine.connect()`` costs a ``BEGIN`` and a
    ``ROLLBACK`` round trip around each read, which doubled the database's share of answering
    a poll under load (benchmarks/bench_service_load.py). Each statement still sees committed
    rows only, as under PostgreSQL's default isolation.
    """
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def _has_tables(engine: Engine) -> bool:
    try:
        return all(sa.inspect(engine).has_table(table.name) for table in _metadata.sorted_tables)
    except SQLAlchemyError:  # the database cannot be reached at all
        return False


def _add_columns(engine: Engine, url: str) -> None:
    """Add the columns a database made by an older searchmerge lacks (all nullable, so no row changes)."""
    for table in _metadata.sorted_tables:
        present = {column["name"] for column in sa.inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            except SQLAlchemyError as exc:  # another service added it at the same moment
                if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                    raise SearchmergeError(f"cannot add column {column.name} to {table.name} in"
                                           f" {redact_url(url)!r}: {redact(str(exc).splitlines()[0])}") from None


def utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC time (SQLite gives naive times back)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
