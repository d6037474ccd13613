"""Published versions: immutable deployments in the checkpoint store, numbered per deployment.

Publishing exports a trial's merged models (:meth:`~searchmerge.search.merge_search.MergeSearch.export`),
writes the manifest and the weights as content-addressed blobs beside the checkpoints
(the ``deployments`` sub-location of the blob store, a folder or an S3 bucket), and
inserts a row with their SHA-256. The blobs are written before the row, so a crash in
between leaves at worst unused blobs, and a version that exists is complete. A trial is
published once: the database's unique constraint decides, so a job that is restarted
after it published finds its version instead of making a second one.

The current version is the pinned one if there is one, else the newest that was not
withdrawn. A rollback withdraws the versions after the one to return to (they stay stored)
and pins it: a re-search that publishes afterwards does not undo the rollback, and its
version becomes current only when the operator unpins (:func:`unpin`, ``searchmerge unpin``).

With the operator's signing key (:class:`~searchmerge.service.signing.Signer`), each row
also holds the signature of its number and manifest SHA-256, made as it is inserted; edges
given the public key refuse a version without a valid one. :func:`sign_versions` signs the
versions published before the key was set up (``searchmerge keys sign``).

Blobs are verified whenever the service reads them: :func:`read_artifact` checks the bytes
against the SHA-256 and size of the version's row as they stream (and raises
:class:`CorruptBlob` at the end when they differ), and :class:`ArtifactVerifier` checks a
whole blob before the API serves it, so the service never hands an edge bytes it knows are
not the version's. :func:`collect_deployment_garbage` removes the blobs no version names (a
publish killed between its blobs and its row), for ``searchmerge store gc``.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import IntegrityError

from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.search.merge_search import MergeSearch, TrialSummary
from searchmerge.service.cloud.db import now, reading, utc, versions
from searchmerge.service.protocol import VersionInfo
from searchmerge.service.signing import Signer
from searchmerge.storage.blobs import (
    ArtifactNotFound,
    ListableArtifactStore,
    write_bytes,
)
from searchmerge.training.deployment import MANIFEST_FILE, WEIGHTS_FILE

__all__ = [
    "ArtifactVerifier",
    "CorruptBlob",
    "artifact_store",
    "collect_deployment_garbage",
    "current_version",
    "get_version",
    "list_versions",
    "pinned_version",
    "publish",
    "publish_files",
    "read_artifact",
    "rollback",
    "sign_versions",
    "unpin",
    "write_version",
]

#: The files of a version, by the name the API serves them under.
FILES = (MANIFEST_FILE, WEIGHTS_FILE)
_CHUNK = 1 << 20


class CorruptBlob(SearchmergeError):
    """A stored file of a version is not the bytes its row names (SHA-256 or size differ)."""


def artifact_store(study: StudyFile) -> ListableArtifactStore:
    """Where the versions' files live: a sub-location of the study's checkpoint blobs."""
    return study.store.blobs.child("deployments")


def _info(row: Row) -> VersionInfo:
    return VersionInfo(
        version=row.number, created_at=utc(row.created_at), source_study=row.source_study, trial=row.trial,
        scenario=row.scenario, manifest_sha256=row.manifest_sha256, manifest_size=row.manifest_size,
        weights_sha256=row.weights_sha256, weights_size=row.weights_size, signature=row.signature,
        signed_by=row.signed_by,
    )


def list_versions(engine: Engine, deployment: str) -> list[VersionInfo]:
    """Every version of ``deployment``, oldest first (withdrawn ones included)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(versions).where(versions.c.deployment == deployment)
                            .order_by(versions.c.number)).all()
    return [_info(row) for row in rows]


def current_version(engine: Engine, deployment: str) -> VersionInfo | None:
    """The version edges should run: the pinned one, else the newest one not withdrawn (``None`` before the first)."""
    with reading(engine) as conn:  # every poll asks: no transaction round trips
        row = conn.execute(
            sa.select(versions).where(versions.c.deployment == deployment, versions.c.pinned_at.is_not(None))
            .order_by(versions.c.pinned_at.desc()).limit(1)
        ).first() or conn.execute(
            sa.select(versions).where(versions.c.deployment == deployment, versions.c.withdrawn_at.is_(None))
            .order_by(versions.c.number.desc()).limit(1)
        ).first()
    return None if row is None else _info(row)


def pinned_version(engine: Engine, deployment: str) -> int | None:
    """The version a rollback pinned, if any."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(versions.c.number).where(versions.c.deployment == deployment, versions.c.pinned_at.is_not(None))
        ).scalar()


def get_version(engine: Engine, deployment: str, number: int) -> VersionInfo | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(versions).where(versions.c.deployment == deployment, versions.c.number == number)
        ).first()
    return None if row is None else _info(row)


def _published(engine: Engine, deployment: str, source_study: str, trial: int) -> VersionInfo | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(versions).where(
            versions.c.deployment == deployment, versions.c.source_study == source_study, versions.c.trial == trial
        )).first()
    return None if row is None else _info(row)


def publish(
    engine: Engine, study: StudyFile, search: MergeSearch, trial: TrialSummary, *, scenario: str | None = None,
    signer: Signer | None = None,
) -> VersionInfo:
    """Publish ``trial`` of ``search`` as the next version, or return its version if it has one.

    With ``signer``, the version is signed as it is inserted (its number is known only then).

    Raises:
        SearchmergeError: If the trial is not feasible or has no stored weights.
    """
    deployment = study.workload.name
    existing = _published(engine, deployment, search.study_name, trial.number)
    if existing is not None:
        return existing
    if not trial.feasible or trial.checkpoint is None:
        raise SearchmergeError(f"trial {trial.number} of {search.study_name!r} is not a feasible plan with weights")
    with tempfile.TemporaryDirectory(prefix="searchmerge-publish-") as folder:
        search.export(folder, trial)
        files = {name: (Path(folder) / name).read_bytes() for name in FILES}
    return publish_files(engine, study, files, source_study=search.study_name, trial=trial.number,
                         checkpoint=trial.checkpoint, scenario=scenario, signer=signer)


def publish_files(
    engine: Engine, study: StudyFile, files: dict[str, bytes], *, source_study: str, trial: int, checkpoint: str,
    scenario: str | None = None, signer: Signer | None = None,
) -> VersionInfo:
    """Publish a deployment's files (``manifest.json`` and ``weights.safetensors``, as bytes) as the
    next version of trial ``trial`` of ``source_study``, or return that trial's version if it has one."""
    deployment = study.workload.name
    existing = _published(engine, deployment, source_study, trial)
    if existing is not None:
        return existing
    if set(files) != set(FILES):
        raise SearchmergeError(f"a version has the files {', '.join(FILES)}, not {', '.join(sorted(files))}")
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    store = artifact_store(study)
    for name, data in files.items():
        write_bytes(store, _blob_id(name, digests[name]), data)
    values = dict(
        deployment=deployment, source_study=source_study, trial=trial, checkpoint=checkpoint,
        scenario=scenario, created_at=now(),
        manifest_blob=_blob_id(MANIFEST_FILE, digests[MANIFEST_FILE]), manifest_sha256=digests[MANIFEST_FILE],
        manifest_size=len(files[MANIFEST_FILE]),
        weights_blob=_blob_id(WEIGHTS_FILE, digests[WEIGHTS_FILE]), weights_sha256=digests[WEIGHTS_FILE],
        weights_size=len(files[WEIGHTS_FILE]),
    )
    while True:  # numbers are handed out by the database: a concurrent publisher makes this one retry
        with engine.connect() as conn:
            number = (conn.execute(sa.select(sa.func.max(versions.c.number))
                                   .where(versions.c.deployment == deployment)).scalar() or 0) + 1
        signature = signer.sign(number, digests[MANIFEST_FILE]) if signer is not None else None
        try:
            with engine.begin() as conn:
                conn.execute(sa.insert(versions).values(number=number, signature=signature,
                                                        signed_by=signer.key_id if signer else None, **values))
        except IntegrityError:
            existing = _published(engine, deployment, source_study, trial)
            if existing is not None:
                return existing  # someone published this very trial first
            continue
        return _info_of(engine, deployment, number)


def _info_of(engine: Engine, deployment: str, number: int) -> VersionInfo:
    info = get_version(engine, deployment, number)
    assert info is not None  # just inserted; versions are never deleted
    return info


def _blob_id(name: str, digest: str) -> str:
    return f"{digest}{Path(name).suffix}"


def _stored(engine: Engine, deployment: str, number: int, name: str) -> tuple[str, str, int]:
    """The blob id, SHA-256 and size of one file of a version."""
    manifest = name == MANIFEST_FILE
    columns = ((versions.c.manifest_blob, versions.c.manifest_sha256, versions.c.manifest_size) if manifest
               else (versions.c.weights_blob, versions.c.weights_sha256, versions.c.weights_size))
    with engine.connect() as conn:
        row = conn.execute(sa.select(*columns).where(versions.c.deployment == deployment,
                                                     versions.c.number == number)).first()
    if row is None:
        raise SearchmergeError(f"deployment {deployment!r} has no version {number}")
    return str(row[0]), str(row[1]), int(row[2])


def read_artifact(engine: Engine, study: StudyFile, number: int, name: str) -> Iterator[bytes]:
    """The bytes of one file of a version, in chunks, verified as they are read.

    The chunks are what is stored; once the last was read (or the blob turned out longer than
    the version's file), they are checked against the version's SHA-256 and size.

    Raises:
        CorruptBlob: At the end of the iteration, if the bytes were not the version's.
        SearchmergeError: If the version or the file is unknown (at once).
    """
    if name not in FILES:
        raise SearchmergeError(f"a version has the files {', '.join(FILES)}, not {name!r}")
    blob, expected, expected_size = _stored(engine, study.workload.name, number, name)
    store = artifact_store(study)
    reader = store.open_reader(blob)

    def chunks() -> Iterator[bytes]:
        digest, size = hashlib.sha256(), 0
        with reader:
            while chunk := reader.read(_CHUNK):
                size += len(chunk)
                if size > expected_size:
                    break
                digest.update(chunk)
                yield chunk
        if size != expected_size or digest.hexdigest() != expected:
            raise CorruptBlob(f"version {number}: the stored {name} ({store.location}/{blob}) is not the version's"
                              f" ({'size' if size != expected_size else 'SHA-256'} differs); put the blob back from a"
                              " backup, or publish again")

    return chunks()


def verify_artifact(engine: Engine, study: StudyFile, number: int, name: str) -> None:
    """Read one file of a version whole and check it.

    Raises:
        CorruptBlob: If its bytes are not the version's.
    """
    for _chunk in read_artifact(engine, study, number, name):
        pass


class ArtifactVerifier:
    """Checks a version's file before the API serves it, at most once per ``recheck`` seconds.

    Blobs are content-addressed and never rewritten, so a file that verified a moment ago is
    still right unless someone altered the store; it is checked again after ``recheck``
    seconds, and :func:`read_artifact` checks the bytes it streams in any case.
    """

    def __init__(self, engine: Engine, study: StudyFile, *, recheck: float = 300.0) -> None:
        self.engine = engine
        self.study = study
        self.recheck = recheck
        self._checked: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()

    def check(self, number: int, name: str) -> None:
        """Raise :class:`CorruptBlob` if the stored file is not the version's."""
        key = (number, name)
        with self._lock:
            checked = self._checked.get(key)
        if checked is not None and time.monotonic() - checked < self.recheck:
            return
        verify_artifact(self.engine, self.study, number, name)
        with self._lock:
            self._checked[key] = time.monotonic()


def collect_deployment_garbage(study: StudyFile, *, min_age: timedelta = timedelta(hours=1),
                               dry_run: bool = False) -> list[str]:
    """Remove the deployment blobs that no version names (and partial writes), older than ``min_age``.

    A publish writes its blobs before its row, so a publish killed in between leaves blobs that
    no version names; nothing a live publish is writing is older than ``min_age``. Versions are
    never deleted, so every blob a version names stays. Returns the ids removed (or that would be).
    """
    engine = sa.create_engine(study.storage)
    try:
        used: set[str] = set()
        if sa.inspect(engine).has_table(versions.name):  # no table: no version was ever published here
            with engine.connect() as conn:
                for manifest, weights in conn.execute(sa.select(versions.c.manifest_blob, versions.c.weights_blob)):
                    used.update((str(manifest), str(weights)))
    finally:
        engine.dispose()
    store = artifact_store(study)
    stale = [info.id for info in store.list() if info.id not in used and info.age_seconds > min_age.total_seconds()]
    if not dry_run:
        for blob in stale:
            try:
                store.remove(blob)
            except ArtifactNotFound:
                continue  # another collector got there first
    return stale


def write_version(engine: Engine, study: StudyFile, number: int, directory: Path) -> Path:
    """Write a version's files into ``directory`` (for loading it with :func:`~searchmerge.training.deployment.load_deployment`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (directory / name).write_bytes(b"".join(read_artifact(engine, study, number, name)))
    return directory


def sign_versions(engine: Engine, study: StudyFile, signer: Signer, *,
                  numbers: list[int] | None = None) -> list[VersionInfo]:
    """Sign the versions (all, or ``numbers``) that this key has not signed; the versions signed.

    Each version's manifest is read from the blob store and checked against the SHA-256 its
    row holds first, so only what was published is signed.

    Raises:
        CorruptBlob: If a version's stored manifest was altered (the versions before it are signed).
        SearchmergeError: If a version is unknown.
    """
    deployment = study.workload.name
    chosen = [v for v in list_versions(engine, deployment) if numbers is None or v.version in numbers]
    missing = sorted(set(numbers or ()) - {v.version for v in chosen})
    if missing:
        raise SearchmergeError(f"deployment {deployment!r} has no version {', '.join(map(str, missing))}")
    signed = []
    for info in chosen:
        if info.signed_by == signer.key_id and info.signature:
            continue
        verify_artifact(engine, study, info.version, MANIFEST_FILE)  # CorruptBlob: nothing altered is signed
        with engine.begin() as conn:
            conn.execute(sa.update(versions).where(versions.c.deployment == deployment,
                                                   versions.c.number == info.version)
                         .values(signature=signer.sign(info.version, info.manifest_sha256), signed_by=signer.key_id))
        signed.append(_info_of(engine, deployment, info.version))
    return signed


def rollback(engine: Engine, deployment: str, to: int) -> VersionInfo:
    """Make version ``to`` current again and pin it: the versions after it are withdrawn (they stay
    stored), and versions published later are not current until :func:`unpin`.

    Raises:
        SearchmergeError: If the deployment has no version ``to``.
    """
    target = get_version(engine, deployment, to)
    if target is None:
        known = [v.version for v in list_versions(engine, deployment)]
        raise SearchmergeError(f"deployment {deployment!r} has no version {to} (versions: {known or 'none'})")
    with engine.begin() as conn:
        conn.execute(sa.update(versions).where(versions.c.deployment == deployment, versions.c.number > to,
                                               versions.c.withdrawn_at.is_(None)).values(withdrawn_at=now()))
        conn.execute(sa.update(versions).where(versions.c.deployment == deployment, versions.c.number != to)
                     .values(pinned_at=None))
        conn.execute(sa.update(versions).where(versions.c.deployment == deployment, versions.c.number == to)
                     .values(withdrawn_at=None, pinned_at=now()))
    return target


def unpin(engine: Engine, deployment: str) -> VersionInfo | None:
    """Release a rollback's pin; the current version is then the newest one not withdrawn (returned)."""
    with engine.begin() as conn:
        conn.execute(sa.update(versions).where(versions.c.deployment == deployment).values(pinned_at=None))
    return current_version(engine, deployment)
