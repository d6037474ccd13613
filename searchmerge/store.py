"""The checkpoint store: original and merged weights of evaluated sharing plans.

Retraining a merged model is the expensive step of a search, so its result is
kept: when a strategy proposes a plan that was already evaluated, or a drift
re-search starts from the deployed plan, the weights come from here instead of
from another retraining run.

The store has two halves that are written in a fixed order:

* **Blobs**: one safetensors file per checkpoint in ``blob_dir``, named by the
  SHA-256 of its bytes. safetensors holds raw tensor data and a JSON header,
  so loading a checkpoint never unpickles anything from disk.
* **Records**: one row per checkpoint in the table ``searchmerge_checkpoints``
  of an SQL database, normally the one the Optuna study uses, so that a study
  and its checkpoints travel together and distributed workers on PostgreSQL
  share both.

A blob is first written to a temporary file, flushed, fsynced and renamed into
place; only then is the row inserted, in one transaction that also removes the
row it replaces. A crash at any point therefore leaves either the old record
or the new one, each pointing at a complete file. Every load checks the size
and checksum of the file before parsing it, so a truncated or altered file is
reported as :class:`CheckpointCorruptError` instead of yielding wrong weights.

Example:
    >>> import torch
    >>> from searchmerge.store import CheckpointKey, CheckpointStore
    >>> store = CheckpointStore.for_storage("sqlite:///study.db")  # doctest: +SKIP
    >>> key = CheckpointKey("wl-3f2a", "plan-9c1e", "data-77b0", "merged")
    >>> store.put(key, {"conv.weight": torch.zeros(8, 3, 3, 3)})  # doctest: +SKIP
    '5d0c...'
    >>> store.load(key)["conv.weight"].shape  # doctest: +SKIP
    torch.Size([8, 3, 3, 3])
"""

from __future__ import annotations

import builtins
import hashlib
import json
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from searchmerge.atomic import write_atomic
from searchmerge.errors import SearchmergeError

__all__ = [
    "CheckpointCorruptError",
    "CheckpointKey",
    "CheckpointRecord",
    "CheckpointStore",
]

TABLE_NAME = "searchmerge_checkpoints"
_KEY_MAX_LEN = 255
_KEY_COLUMNS = ("workload_fingerprint", "plan_hash", "data_fingerprint", "kind")
# The backends with an atomic upsert that ``put`` relies on (Optuna's MySQL is not one).
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
# Header metadata entry that lists tensors saved once under another name.
_ALIASES = "searchmerge.aliases"

_metadata = sa.MetaData()
_table = sa.Table(
    TABLE_NAME,
    _metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("workload_fingerprint", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("plan_hash", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("data_fingerprint", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("kind", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("blob", sa.String(80), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("metadata_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # One record per key: the database, not a read-then-write in Python, decides
    # who wins when two workers store the same key at once.
    sa.UniqueConstraint(*_KEY_COLUMNS, name="uq_searchmerge_checkpoints_key"),
)


class CheckpointCorruptError(SearchmergeError):
    """A checkpoint's file is missing, truncated or altered.

    Raised before anything is parsed, so no wrong weights reach the caller. The
    usual remedy is to evaluate the plan again and ``put`` the result.
    """


@dataclass(frozen=True)
class CheckpointKey:
    """What a checkpoint is the weights of.

    The key names the result of one evaluation, so that the same evaluation
    asked again is answered from the store.

    Attributes:
        workload_fingerprint: Hash of the workload (models, tasks, targets).
        plan_hash: Hash of the sharing plan; for ``kind="original"`` the model
            name is fine.
        data_fingerprint: Hash of the data the weights were trained on, so that
            a drift re-check on new data does not reuse stale weights.
        kind: What the weights are, e.g. ``"original"`` or ``"merged"``.
    """

    workload_fingerprint: str
    plan_hash: str
    data_fingerprint: str
    kind: str

    def __post_init__(self) -> None:
        for key_field in fields(self):
            value = getattr(self, key_field.name)
            if not isinstance(value, str) or not value:
                raise SearchmergeError(
                    f"checkpoint key field {key_field.name!r} must be a non-empty string, "
                    f"got {value!r}"
                )
            if len(value) > _KEY_MAX_LEN:
                raise SearchmergeError(
                    f"checkpoint key field {key_field.name!r} is longer than "
                    f"{_KEY_MAX_LEN} characters"
                )


@dataclass(frozen=True)
class CheckpointRecord:
    """The stored description of one checkpoint.

    A record's id always denotes the same bytes: putting a key again creates a
    new record with a new id and removes the old one.

    Attributes:
        id: Checkpoint id (a uuid4 hex string).
        key: The key it is stored under.
        blob: File name of its safetensors blob inside the store's ``blob_dir``.
        sha256: Hex SHA-256 of the blob's bytes.
        size: Size of the blob in bytes.
        metadata: JSON metadata given to ``put`` (accuracy, cost, ...).
        created_at: When it was stored (UTC).
    """

    id: str
    key: CheckpointKey
    blob: str
    sha256: str
    size: int
    metadata: dict[str, Any] = field(hash=False)  # records stay hashable by the rest
    created_at: datetime


class CheckpointStore:
    """Checkpoints in safetensors files, described by rows in an SQL database.

    Several processes, on one host with SQLite or on several hosts with
    PostgreSQL and a shared ``blob_dir``, may use one store at the same time.

    Args:
        url: SQLAlchemy database URL, normally the Optuna storage URL, e.g.
            ``sqlite:///study.db`` or ``postgresql+psycopg://user@host/db``. The
            table ``searchmerge_checkpoints`` is created if missing and lives
            beside Optuna's tables.
        blob_dir: Directory for the safetensors files; created if missing.

    Raises:
        SearchmergeError: If the database cannot be opened or is neither SQLite
            nor PostgreSQL.
    """

    def __init__(self, url: str, blob_dir: str | Path) -> None:
        self.url = url
        self.blob_dir = Path(blob_dir)
        shown = _shown_url(url)
        try:
            backend = make_url(url).get_backend_name()
        except ArgumentError as exc:
            raise SearchmergeError(f"invalid checkpoint database URL {shown}: {exc}") from exc
        if backend not in _INSERTS:
            raise SearchmergeError(
                f"checkpoint database {shown}: only SQLite and PostgreSQL are supported"
            )
        try:
            self._engine: Engine = sa.create_engine(url)
        except (NoSuchModuleError, ImportError) as exc:
            raise SearchmergeError(f"cannot use checkpoint database {shown}: {exc}") from exc
        try:
            _create_table(self._engine)
        except SQLAlchemyError as exc:
            raise SearchmergeError(f"cannot open checkpoint database {shown}: {exc}") from exc
        self.blob_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_storage(cls, storage_url: str, blob_dir: str | Path | None = None) -> CheckpointStore:
        """Open the store that belongs to an Optuna storage URL.

        For an SQLite file the blobs default to a directory next to it, so that
        copying ``x.db`` and ``x.db.checkpoints/`` moves a whole study.

        Args:
            storage_url: The study's storage URL.
            blob_dir: Where the blobs go; required unless ``storage_url`` names an
                SQLite file.

        Returns:
            The store.

        Raises:
            SearchmergeError: If ``blob_dir`` is needed but not given.
        """
        if blob_dir is None:
            try:
                parsed = make_url(storage_url)
            except ArgumentError as exc:
                raise SearchmergeError(f"invalid storage URL {storage_url!r}: {exc}") from exc
            database = parsed.database
            if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
                raise SearchmergeError(
                    f"storage {_shown_url(storage_url)} is not an SQLite file: give the "
                    "checkpoint blob directory (blob_dir) explicitly, on a file system "
                    "that every worker can reach"
                )
            blob_dir = Path(database + ".checkpoints")
        return cls(storage_url, blob_dir)

    def close(self) -> None:
        """Release the database connections (the store must not be used after)."""
        self._engine.dispose()

    def put(
        self,
        key: CheckpointKey,
        tensors: dict[str, torch.Tensor],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Store tensors under a key, replacing what the key held before.

        Tensors that are the same view of one storage (tied weights, the point of
        a merged model) are saved once and come back from :meth:`load` tied
        again; tensors that only overlap are saved as separate copies.

        Args:
            key: The key to store under.
            tensors: Name -> tensor, on any device.
            metadata: JSON-serialisable facts to keep with the weights.

        Returns:
            The new checkpoint id.

        Raises:
            SearchmergeError: If the input is not a dict of tensors, the metadata
                is not JSON, or the database write fails.
        """
        if not isinstance(key, CheckpointKey):
            raise SearchmergeError(f"expected a CheckpointKey, got {type(key).__name__}")
        try:
            metadata_json = json.dumps(metadata or {}, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SearchmergeError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc
        data = _serialize(tensors)
        sha256 = hashlib.sha256(data).hexdigest()
        blob = f"{sha256}.safetensors"
        self._write_blob(blob, data)

        row = {
            "id": uuid.uuid4().hex,
            "workload_fingerprint": key.workload_fingerprint,
            "plan_hash": key.plan_hash,
            "data_fingerprint": key.data_fingerprint,
            "kind": key.kind,
            "blob": blob,
            "sha256": sha256,
            "size_bytes": len(data),
            "metadata_json": metadata_json,
            "created_at": datetime.now(timezone.utc),
        }
        # One INSERT ... ON CONFLICT DO UPDATE: the database serialises two
        # workers storing the same key (the last one wins), so there is no
        # window between a read and a write for them to clash in, and nothing
        # to retry.
        upsert = _INSERTS[self._engine.dialect.name](_table).values(**row)
        upsert = upsert.on_conflict_do_update(
            index_elements=_KEY_COLUMNS,
            set_={name: upsert.excluded[name] for name in row if name not in _KEY_COLUMNS},
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(upsert)
        except SQLAlchemyError as exc:
            raise SearchmergeError(f"could not store checkpoint {key}: {exc}") from exc
        return str(row["id"])

    def find(self, key: CheckpointKey) -> CheckpointRecord | None:
        """The record stored under a key, or None if there is none."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(_table).where(*_key_clauses(key))).mappings().first()
        return None if row is None else _to_record(row)

    def record(self, checkpoint_id: str) -> CheckpointRecord:
        """The record with an id.

        Raises:
            SearchmergeError: If no checkpoint has this id (it may have been
                replaced by a later ``put`` of the same key).
        """
        query = sa.select(_table).where(_table.c.id == checkpoint_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise SearchmergeError(f"no checkpoint with id {checkpoint_id!r}")
        return _to_record(row)

    def list(
        self, workload_fingerprint: str | None = None, kind: str | None = None
    ) -> builtins.list[CheckpointRecord]:
        """Records, oldest first, optionally only one workload's or one kind's."""
        query = sa.select(_table).order_by(_table.c.created_at, _table.c.id)
        if workload_fingerprint is not None:
            query = query.where(_table.c.workload_fingerprint == workload_fingerprint)
        if kind is not None:
            query = query.where(_table.c.kind == kind)
        with self._engine.connect() as conn:
            return [_to_record(row) for row in conn.execute(query).mappings()]

    def load(
        self, key_or_id: CheckpointKey | str, *, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """The tensors of a checkpoint, after checking the file's size and checksum.

        Args:
            key_or_id: A key or a checkpoint id.
            device: Where to put the tensors.

        Returns:
            Name -> tensor, with tied tensors tied again.

        Raises:
            SearchmergeError: If there is no such checkpoint.
            CheckpointCorruptError: If its file is missing, truncated or altered.
        """
        record = self._resolve(key_or_id)
        data = self._read_verified(record)
        try:
            unique = safetensors.torch.load(data)
            aliases = _read_aliases(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
            raise CheckpointCorruptError(
                f"checkpoint {record.id} ({self.blob_dir / record.blob}) is not a valid "
                f"safetensors file: {exc}"
            ) from exc
        tensors = {name: tensor.to(device) for name, tensor in unique.items()}
        for name, target in aliases.items():
            tensors[name] = tensors[target]
        return dict(sorted(tensors.items()))

    def verify(self, checkpoint_id: str) -> CheckpointRecord:
        """Check that a checkpoint's file is intact, without parsing it.

        Returns:
            The record, if the file is intact.

        Raises:
            SearchmergeError: If there is no such checkpoint.
            CheckpointCorruptError: If its file is missing, truncated or altered.
        """
        record = self.record(checkpoint_id)
        self._read_verified(record)
        return record

    def _resolve(self, key_or_id: CheckpointKey | str) -> CheckpointRecord:
        if isinstance(key_or_id, CheckpointKey):
            record = self.find(key_or_id)
            if record is None:
                raise SearchmergeError(f"no checkpoint stored under {key_or_id}")
            return record
        return self.record(key_or_id)

    def _write_blob(self, blob: str, data: bytes) -> None:
        """Write a blob so that its final name only ever holds complete bytes."""
        write_atomic(self.blob_dir / blob, data)

    def _read_verified(self, record: CheckpointRecord) -> bytes:
        """The blob's bytes, or CheckpointCorruptError if they are not the stored ones."""
        path = self.blob_dir / record.blob
        where = f"checkpoint {record.id} ({path})"
        try:
            size = path.stat().st_size
            if size != record.size:
                raise CheckpointCorruptError(
                    f"{where} is corrupt: the file has {size} bytes, {record.size} expected"
                )
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(f"{where} is missing its file") from exc
        if len(data) != record.size:
            raise CheckpointCorruptError(
                f"{where} is corrupt: the file has {len(data)} bytes, {record.size} expected"
            )
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise CheckpointCorruptError(f"{where} is corrupt: its SHA-256 does not match")
        return data


def _serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of ``tensors``, each shared view saved once.

    safetensors refuses tensors that share memory; rather than losing the
    tying, exact duplicates (same storage, offset, shape, strides, dtype) are
    written once and listed as aliases in the header metadata. Everything
    written is a contiguous CPU copy, so partial overlaps are harmless.
    """
    if not isinstance(tensors, dict):
        raise SearchmergeError(f"expected a dict of tensors, got {type(tensors).__name__}")
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[object, ...], str] = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise SearchmergeError(
                f"checkpoint entries must be str -> torch.Tensor, got {name!r} -> "
                f"{type(tensor).__name__}"
            )
        if tensor.numel() > 0:
            identity = (
                tensor.device,
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tensor.stride(),
                tensor.dtype,
            )
            if identity in seen:
                aliases[name] = seen[identity]
                continue
            seen[identity] = name
        unique[name] = tensor.detach().to(
            device="cpu", memory_format=torch.contiguous_format, copy=True
        )
    header = {"format": "pt"}
    if aliases:
        header[_ALIASES] = json.dumps(aliases, sort_keys=True)
    try:
        return safetensors.torch.save(unique, metadata=header)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SearchmergeError(f"cannot save these tensors as safetensors: {exc}") from exc


def _read_aliases(data: bytes) -> dict[str, str]:
    """The alias map from a safetensors header (8-byte length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    aliases = header.get("__metadata__", {}).get(_ALIASES)
    return {} if aliases is None else dict(json.loads(aliases))


def _key_clauses(key: CheckpointKey) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        _table.c.workload_fingerprint == key.workload_fingerprint,
        _table.c.plan_hash == key.plan_hash,
        _table.c.data_fingerprint == key.data_fingerprint,
        _table.c.kind == key.kind,
    )


def _to_record(row: sa.RowMapping) -> CheckpointRecord:
    created_at: datetime = row["created_at"]
    if created_at.tzinfo is None:  # SQLite drops the zone; we always store UTC
        created_at = created_at.replace(tzinfo=timezone.utc)
    return CheckpointRecord(
        id=row["id"],
        key=CheckpointKey(
            row["workload_fingerprint"], row["plan_hash"], row["data_fingerprint"], row["kind"]
        ),
        blob=row["blob"],
        sha256=row["sha256"],
        size=int(row["size_bytes"]),
        metadata=json.loads(row["metadata_json"]),
        created_at=created_at,
    )


def _create_table(engine: Engine) -> None:
    """Create the table if missing, tolerating a worker that creates it at the same time."""
    try:
        _metadata.create_all(engine)
    except SQLAlchemyError:
        if not sa.inspect(engine).has_table(TABLE_NAME):
            raise


def _shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)
