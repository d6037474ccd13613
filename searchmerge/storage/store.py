"""The checkpoint store: original and merged weights of evaluated sharing plans.

Retraining a merged model is the expensive step of a search, so its result is
kept: when a strategy proposes a plan that was already evaluated, or a drift
re-search starts from the deployed plan, the weights come from here instead of
from another retraining run.

The store has two halves that are written in a fixed order:

* **Blobs**: one safetensors object per distinct content, named by the SHA-256 of
  its bytes, behind Optuna's artifact-store interface (a local folder by default,
  an S3-compatible bucket for workers on several hosts; see :mod:`searchmerge.storage.blobs`).
  safetensors holds raw tensor data and a JSON header, so loading a checkpoint never
  unpickles anything.
* **Records**: one row per checkpoint in the table ``searchmerge_checkpoints_v2``
  of an SQL database, normally the one the Optuna study uses, so that a study
  and its checkpoints travel together and distributed workers on PostgreSQL
  share both.

Records are **immutable**: a key names everything that determines the weights
(workload, plan, data, kind and a *variant* digest of the seed, target and
evaluator settings), storing a key that exists returns the existing record, and a
record's id therefore resolves for as long as the store exists. (Only
``put(..., replace=True)``, used by ``prepare --force`` for originals, replaces.)
A blob is written atomically before its row is inserted, so a crash leaves at
worst a blob no record uses; ``searchmerge store gc`` removes those. Every load
checks the size and checksum of the blob before parsing it, so a truncated or
altered file is reported as :class:`CheckpointCorruptError` instead of yielding
wrong weights.

Example:
    >>> import torch
    >>> from searchmerge.storage.store import CheckpointKey, CheckpointStore
    >>> store = CheckpointStore.for_storage("sqlite:///study.db")  # doctest: +SKIP
    >>> key = CheckpointKey("wl-3f2a", "plan-9c1e", "data-77b0", "merged", "seed0-3b1f")
    >>> store.put(key, {"conv.weight": torch.zeros(8, 3, 3, 3)})  # doctest: +SKIP
    '5d0c...'
    >>> store.load(key)["conv.weight"].shape  # doctest: +SKIP
    torch.Size([8, 3, 3, 3])
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import sqlalchemy as sa
import torch
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.redact import redact, redact_url
from searchmerge.storage.blobs import (
    ARTIFACTS,
    ArtifactNotFound,
    ListableArtifactStore,
    open_blob_store,
    read_all,
    write_bytes,
)
from searchmerge.storage.identity import tensor_identity

__all__ = [
    "CheckpointCorruptError",
    "CheckpointKey",
    "CheckpointRecord",
    "CheckpointStore",
    "GarbageCollection",
    "variant_of",
]

TABLE_NAME = "searchmerge_checkpoints_v2"
#: The table of versions before records became immutable; migrated on first open.
_LEGACY_TABLE = "searchmerge_checkpoints"
_KEY_MAX_LEN = 255
_KEY_COLUMNS = ("workload_fingerprint", "plan_hash", "data_fingerprint", "kind", "variant")
# The backends with an atomic insert-or-ignore that ``put`` relies on (Optuna's MySQL is not one).
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
# Header metadata entry that lists tensors saved once under another name.
_ALIASES = "searchmerge.aliases"
_BLOB_SUFFIX = ".safetensors"

_metadata = sa.MetaData()
_table = sa.Table(
    TABLE_NAME,
    _metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("workload_fingerprint", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("plan_hash", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("data_fingerprint", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("kind", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("variant", sa.String(_KEY_MAX_LEN), nullable=False),
    sa.Column("blob", sa.String(80), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("metadata_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # One record per key: the database, not a read-then-write in Python, decides
    # who wins when two workers store the same key at once.
    sa.UniqueConstraint(*_KEY_COLUMNS, name="uq_searchmerge_checkpoints_v2_key"),
)


class CheckpointCorruptError(SearchmergeError):
    """A checkpoint's blob is missing, truncated or altered.

    Raised before anything is parsed, so no wrong weights reach the caller. The
    usual remedy is to evaluate the plan again (or ``prepare --force`` for originals).
    """


@dataclass(frozen=True)
class CheckpointKey:
    """What a checkpoint is the weights of.

    The key names the result of one evaluation, so that the same evaluation
    asked again is answered from the store, and a different one (another seed,
    target or evaluator setting) gets a record of its own.

    Attributes:
        workload_fingerprint: Hash of the workload (models, tasks, training settings).
        plan_hash: Hash of the sharing plan; for ``kind="original"`` the model
            name is fine.
        data_fingerprint: Hash of the data the weights were trained on, so that
            a drift re-check on new data does not reuse stale weights.
        kind: What the weights are, e.g. ``"original"`` or ``"merged"``.
        variant: Digest of whatever else determines the weights (seed, target,
            evaluator settings, the checkpoint retraining started from); may be empty.
    """

    workload_fingerprint: str
    plan_hash: str
    data_fingerprint: str
    kind: str
    variant: str = ""

    def __post_init__(self) -> None:
        for key_field in fields(self):
            value = getattr(self, key_field.name)
            if not isinstance(value, str) or (not value and key_field.name != "variant"):
                raise SearchmergeError(
                    f"checkpoint key field {key_field.name!r} must be a non-empty string, "
                    f"got {value!r}"
                )
            if len(value) > _KEY_MAX_LEN:
                raise SearchmergeError(
                    f"checkpoint key field {key_field.name!r} is longer than "
                    f"{_KEY_MAX_LEN} characters"
                )


def variant_of(settings: Any) -> str:
    """A short digest of JSON-able ``settings``, for :attr:`CheckpointKey.variant`."""
    payload = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:32]


@dataclass(frozen=True)
class CheckpointRecord:
    """The stored description of one checkpoint; it never changes once stored.

    Attributes:
        id: Checkpoint id (a uuid4 hex string).
        key: The key it is stored under.
        blob: Id of its safetensors blob in the store's blob location.
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


@dataclass(frozen=True)
class GarbageCollection:
    """What :meth:`CheckpointStore.collect_garbage` removed (or would remove, in a dry run)."""

    records: tuple[str, ...]
    blobs: tuple[str, ...]
    bytes_freed: int
    dry_run: bool


class CheckpointStore:
    """Checkpoints in safetensors blobs, described by rows in an SQL database.

    Several processes, on one host with SQLite or on several hosts with
    PostgreSQL and a shared blob location (a shared folder or an S3 bucket), may
    use one store at the same time.

    Args:
        url: SQLAlchemy database URL, normally the Optuna storage URL, e.g.
            ``sqlite:///study.db`` or ``postgresql+psycopg://user@host/db``. The
            table ``searchmerge_checkpoints_v2`` is created if missing and lives
            beside Optuna's tables.
        blobs: Where the blobs go: a folder (created if missing), an
            ``s3://BUCKET[/PREFIX]`` location, or an artifact store object.

    Raises:
        SearchmergeError: If the database cannot be opened or is neither SQLite
            nor PostgreSQL.
    """

    def __init__(self, url: str, blobs: str | os.PathLike[str] | ListableArtifactStore) -> None:
        self.url = url
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
        self.blobs: ListableArtifactStore = (
            open_blob_store(blobs) if isinstance(blobs, (str, os.PathLike)) else blobs
        )

    @property
    def artifacts(self) -> ListableArtifactStore:
        """The artifact store for optuna-dashboard's per-trial files, beside the blobs."""
        return self.blobs.child(ARTIFACTS)

    @property
    def blob_location(self) -> str:
        """The folder or ``s3://`` location of the blobs (what ``--blob-dir`` takes)."""
        return self.blobs.location

    @classmethod
    def for_storage(cls, storage_url: str, blob_dir: str | os.PathLike[str] | None = None) -> CheckpointStore:
        """Open the store that belongs to an Optuna storage URL.

        For an SQLite file the blobs default to a folder next to it, so that
        copying ``x.db`` and ``x.db.checkpoints/`` moves a whole study.

        Args:
            storage_url: The study's storage URL.
            blob_dir: Where the blobs go (a folder or ``s3://BUCKET[/PREFIX]``);
                required unless ``storage_url`` names an SQLite file.

        Raises:
            SearchmergeError: If ``blob_dir`` is needed but not given.
        """
        return cls(storage_url, cls.check_blob_location(storage_url, blob_dir))

    @staticmethod
    def check_blob_location(storage_url: str, blob_dir: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
        """The blob location for a storage: ``blob_dir``, or the folder next to an SQLite file.

        Raises:
            SearchmergeError: If ``blob_dir`` is needed (the storage is no SQLite file) but not given.
        """
        if blob_dir is not None:
            return blob_dir
        try:
            parsed = make_url(storage_url)
        except ArgumentError as exc:
            raise SearchmergeError(f"invalid storage URL {_shown_url(storage_url)}: {redact(str(exc))}") from exc
        database = parsed.database
        if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
            raise SearchmergeError(
                f"storage {_shown_url(storage_url)} is not an SQLite file: give the checkpoint blob"
                " location with --blob-dir (blob_dir= in Python): a folder every worker can reach,"
                " or s3://BUCKET/PREFIX"
            )
        return Path(database + ".checkpoints")

    def close(self) -> None:
        """Release the database connections (the store must not be used after)."""
        self._engine.dispose()

    def put(
        self,
        key: CheckpointKey,
        tensors: dict[str, torch.Tensor],
        metadata: dict[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> str:
        """Store tensors under a key; returns the id of the key's record.

        Records are immutable: when the key is stored already, its record is kept
        and its id returned (the blob of equal bytes is rewritten, which repairs a
        damaged one). ``replace=True`` instead replaces the record, giving a new id;
        only ``prepare --force`` does that, for originals.

        Tensors that are the same view of one storage (tied weights, the point of
        a merged model) are saved once and come back from :meth:`load` tied
        again; tensors that only overlap are saved as separate copies.

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
        blob = f"{sha256}{_BLOB_SUFFIX}"
        write_bytes(self.blobs, blob, data)

        row = {
            "id": uuid.uuid4().hex,
            **_key_row(key),
            "blob": blob,
            "sha256": sha256,
            "size_bytes": len(data),
            "metadata_json": metadata_json,
            "created_at": datetime.now(timezone.utc),
        }
        # One INSERT ... ON CONFLICT: the database serialises two workers storing the
        # same key, so there is no window between a read and a write for them to clash in.
        insert = _INSERTS[self._engine.dialect.name](_table).values(**row)
        if replace:
            insert = insert.on_conflict_do_update(
                index_elements=_KEY_COLUMNS,
                set_={name: insert.excluded[name] for name in row if name not in _KEY_COLUMNS},
            )
        else:
            insert = insert.on_conflict_do_nothing(index_elements=_KEY_COLUMNS)
        try:
            with self._engine.begin() as conn:
                conn.execute(insert)
        except SQLAlchemyError as exc:
            raise SearchmergeError(f"could not store checkpoint {key}: {exc}") from exc
        stored = self.find(key)
        if stored is None:  # removed between our insert and this read: only gc of an old record could
            raise SearchmergeError(f"checkpoint {key} vanished right after it was stored; store it again")
        return stored.id

    def find(self, key: CheckpointKey) -> CheckpointRecord | None:
        """The record stored under a key, or None if there is none."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(_table).where(*_key_clauses(key))).mappings().first()
        return None if row is None else _to_record(row)

    def record(self, checkpoint_id: str) -> CheckpointRecord:
        """The record with an id.

        Raises:
            SearchmergeError: If no checkpoint has this id.
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
        """The tensors of a checkpoint, after checking the blob's size and checksum.

        Returns:
            Name -> tensor, with tied tensors tied again.

        Raises:
            SearchmergeError: If there is no such checkpoint.
            CheckpointCorruptError: If its blob is missing, truncated or altered.
        """
        record = self._resolve(key_or_id)
        data = self._read_verified(record)
        try:
            unique = safetensors.torch.load(data)
            aliases = _read_aliases(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
            raise CheckpointCorruptError(
                f"checkpoint {record.id} ({self._where(record)}) is not a valid safetensors file: {exc}"
            ) from exc
        tensors = {name: tensor.to(device) for name, tensor in unique.items()}
        for name, target in aliases.items():
            tensors[name] = tensors[target]
        return dict(sorted(tensors.items()))

    def verify(self, checkpoint_id: str) -> CheckpointRecord:
        """Check that a checkpoint's blob is intact, without parsing it.

        Raises:
            SearchmergeError: If there is no such checkpoint.
            CheckpointCorruptError: If its blob is missing, truncated or altered.
        """
        record = self.record(checkpoint_id)
        self._read_verified(record)
        return record

    def collect_garbage(
        self,
        *,
        keep: Collection[str] | None = None,
        min_age: timedelta = timedelta(hours=1),
        dry_run: bool = False,
    ) -> GarbageCollection:
        """Remove blobs that no record uses (and, given ``keep``, records nobody uses).

        Safe while workers run: a worker writes a blob before its record, and a record
        before the trial that names it, so only objects older than ``min_age`` are
        candidates; nothing a live worker is in the middle of storing is that old.

        Args:
            keep: When given, the ids of the records still in use (e.g. named by some
                trial of some study): every other record older than ``min_age`` is
                removed, except originals (kind ``original``), which are always kept.
            min_age: Objects younger than this are never removed.
            dry_run: Report what would be removed, remove nothing.
        """
        cutoff = datetime.now(timezone.utc) - min_age
        records = self.list()
        dropped = [] if keep is None else [
            r for r in records if r.id not in keep and r.key.kind != "original" and r.created_at < cutoff
        ]
        if dropped and not dry_run:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(_table).where(_table.c.id.in_([r.id for r in dropped])))
        used = {r.blob for r in records if r not in dropped}
        sizes = {r.blob: r.size for r in records}
        stale = [
            info for info in self.blobs.list()
            if info.id not in used and info.age_seconds > min_age.total_seconds()
            and (info.id.endswith(_BLOB_SUFFIX) or info.id.endswith(".part"))
        ]
        freed = 0
        for info in stale:
            freed += sizes.get(info.id, 0)
            if not dry_run:
                try:
                    self.blobs.remove(info.id)
                except ArtifactNotFound:
                    continue  # another collector got there first
        return GarbageCollection(tuple(r.id for r in dropped), tuple(i.id for i in stale), freed, dry_run)

    def _resolve(self, key_or_id: CheckpointKey | str) -> CheckpointRecord:
        if isinstance(key_or_id, CheckpointKey):
            record = self.find(key_or_id)
            if record is None:
                raise SearchmergeError(f"no checkpoint stored under {key_or_id}")
            return record
        return self.record(key_or_id)

    def _where(self, record: CheckpointRecord) -> str:
        return f"{self.blob_location.rstrip('/')}/{record.blob}"

    def _read_verified(self, record: CheckpointRecord) -> bytes:
        """The blob's bytes, or CheckpointCorruptError if they are not the stored ones."""
        where = f"checkpoint {record.id} ({self._where(record)})"
        try:
            data = read_all(self.blobs, record.blob)
        except (ArtifactNotFound, FileNotFoundError) as exc:
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
    tying, exact duplicates (one :func:`~searchmerge.storage.identity.tensor_identity`)
    are written once and listed as aliases in the header metadata. Everything
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
        identity = tensor_identity(tensor)
        if identity is not None:
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
        return _canonical(safetensors.torch.save(unique, metadata=header))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SearchmergeError(f"cannot save these tensors as safetensors: {exc}") from exc


def _canonical(data: bytes) -> bytes:
    """The same safetensors bytes with the header's keys in sorted order.

    safetensors writes its metadata map in no fixed order (measured: two orders for the
    same tensors in one process), and blobs are named by the hash of their bytes: equal
    tensors must give equal bytes. The header is JSON padded with spaces to a multiple of
    8 bytes; the tensor data after it, and its offsets, do not change.
    """
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + length :]


def _read_aliases(data: bytes) -> dict[str, str]:
    """The alias map from a safetensors header (8-byte length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    aliases = header.get("__metadata__", {}).get(_ALIASES)
    return {} if aliases is None else dict(json.loads(aliases))


def _key_row(key: CheckpointKey) -> dict[str, str]:
    return {name: getattr(key, name) for name in _KEY_COLUMNS}


def _key_clauses(key: CheckpointKey) -> tuple[sa.ColumnElement[bool], ...]:
    return tuple(_table.c[name] == value for name, value in _key_row(key).items())


def _to_record(row: sa.RowMapping) -> CheckpointRecord:
    created_at: datetime = row["created_at"]
    if created_at.tzinfo is None:  # SQLite drops the zone; we always store UTC
        created_at = created_at.replace(tzinfo=timezone.utc)
    return CheckpointRecord(
        id=row["id"],
        key=CheckpointKey(*(row[name] for name in _KEY_COLUMNS)),
        blob=row["blob"],
        sha256=row["sha256"],
        size=int(row["size_bytes"]),
        metadata=json.loads(row["metadata_json"]),
        created_at=created_at,
    )


def _create_table(engine: Engine) -> None:
    """Create the table if missing (tolerating a worker that creates it at the same time), then migrate.

    Stores written before records became immutable have the table ``searchmerge_checkpoints``
    (one record per key, replaced on every put). Its rows move to the new table with an empty
    variant, keeping their ids, so the checkpoints that trials name still resolve.
    """
    try:
        _metadata.create_all(engine)
    except SQLAlchemyError:
        if not sa.inspect(engine).has_table(TABLE_NAME):
            raise
    if not sa.inspect(engine).has_table(_LEGACY_TABLE):
        return
    legacy = sa.Table(_LEGACY_TABLE, sa.MetaData(), autoload_with=engine)
    columns = [c.name for c in _table.columns if c.name != "variant"]
    copy = _INSERTS[engine.dialect.name](_table).from_select(
        # "WHERE true" keeps SQLite from reading ON CONFLICT as part of the SELECT.
        [*columns, "variant"], sa.select(*(legacy.c[c] for c in columns), sa.literal("")).where(sa.true())
    ).on_conflict_do_nothing()
    try:
        with engine.begin() as conn:
            conn.execute(copy)
            legacy.drop(conn)
    except SQLAlchemyError:
        if sa.inspect(engine).has_table(_LEGACY_TABLE):  # not another worker migrating at the same time
            raise


def _shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    return repr(redact_url(url))
