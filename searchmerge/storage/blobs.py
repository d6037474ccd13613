"""Where checkpoint blobs and dashboard artifacts live: Optuna's artifact-store interface.

Optuna defines a three-method protocol for binary artifacts (``open_reader``,
``write``, ``remove``) with a file-system and an S3 (boto3) implementation, and
optuna-dashboard shows the artifacts of any store that follows it. The checkpoint
store keeps its safetensors blobs behind the same interface, so workers on several
hosts can share an S3-compatible bucket instead of a shared file system.

Two things the store promises are kept here, whatever the backend:

* **atomic writes**: a blob's name only ever holds complete bytes. The file-system
  store writes a synced temporary file and renames it (Optuna's own
  ``FileSystemArtifactStore`` writes in place); an S3 ``PutObject`` is atomic by itself;
* **listing**, which the protocol lacks, for ``searchmerge store gc``: the file-system
  store lists its folder; an S3 bucket is listed with the boto3 client.

A location is a folder path, or ``s3://BUCKET[/PREFIX]`` (boto3 reads credentials and
``AWS_ENDPOINT_URL`` from the environment, as for any S3-compatible server).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from optuna.artifacts.exceptions import ArtifactNotFound

from searchmerge.core.errors import SearchmergeError
from searchmerge.storage.atomic import write_atomic

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

__all__ = [
    "ARTIFACTS",
    "ArtifactNotFound",
    "AtomicFileSystemArtifactStore",
    "BlobInfo",
    "ListableArtifactStore",
    "PrefixedS3ArtifactStore",
    "open_blob_store",
    "read_all",
    "write_bytes",
]

#: Sub-location of a blob store that holds the dashboard's artifacts (per-trial tables, manifests).
ARTIFACTS = "artifacts"


@dataclass(frozen=True)
class BlobInfo:
    """One stored object: its id and how long ago it was last written."""

    id: str
    age_seconds: float


class ListableArtifactStore(Protocol):
    """Optuna's ``ArtifactStore`` protocol, plus listing and a sub-store (what gc and artifacts need)."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...

    def remove(self, artifact_id: str) -> None: ...

    def list(self) -> list[BlobInfo]: ...

    def child(self, name: str) -> ListableArtifactStore: ...

    @property
    def location(self) -> str: ...


class AtomicFileSystemArtifactStore:
    """Optuna's artifact-store protocol on a folder, with atomic, synced writes.

    Args:
        base_path: The folder; created if missing.

    Example:
        >>> import io, tempfile
        >>> store = AtomicFileSystemArtifactStore(tempfile.mkdtemp())
        >>> store.write("a.bin", io.BytesIO(b"weights"))
        >>> store.open_reader("a.bin").read()
        b'weights'
    """

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self.base_path = Path(base_path)
        self.base_path.mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return str(self.base_path)

    def _path(self, artifact_id: str) -> Path:
        if artifact_id in ("", ".", "..") or "/" in artifact_id or "\\" in artifact_id:
            raise ValueError(f"invalid artifact id {artifact_id!r}")
        return self.base_path / artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        try:
            return open(self._path(artifact_id), "rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"{self.base_path / artifact_id} not found") from exc

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        write_atomic(self._path(artifact_id), content_body.read())

    def remove(self, artifact_id: str) -> None:
        try:
            self._path(artifact_id).unlink()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"{self.base_path / artifact_id} not found") from exc

    def list(self) -> list[BlobInfo]:
        """Every file of the folder (temporary ``.NAME.*.part`` files of killed writes included)."""
        now = time.time()
        found = []
        for entry in os.scandir(self.base_path):
            if entry.is_file():
                found.append(BlobInfo(entry.name, now - entry.stat().st_mtime))
        return sorted(found, key=lambda info: info.id)

    def child(self, name: str) -> AtomicFileSystemArtifactStore:
        return AtomicFileSystemArtifactStore(self.base_path / name)


class PrefixedS3ArtifactStore:
    """Optuna's ``Boto3ArtifactStore`` under a key prefix of one bucket, with listing.

    Args:
        bucket: The bucket name.
        prefix: Key prefix (no leading or trailing slash); may be empty.
        client: A boto3 S3 client (default: ``boto3.client("s3")``, configured by the
            environment, e.g. ``AWS_ENDPOINT_URL`` for MinIO or another S3-compatible server).
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        try:
            import boto3
            from optuna.artifacts import Boto3ArtifactStore
        except ImportError:
            raise SearchmergeError(
                "an s3:// blob location needs boto3: pip install 'searchmerge[s3]'"
            ) from None
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client if client is not None else boto3.client("s3")
        self._inner: ArtifactStore = Boto3ArtifactStore(bucket, client=self.client)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._inner.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._inner.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self._inner.remove(self._key(artifact_id))

    def list(self) -> list[BlobInfo]:
        """The objects directly under the prefix (not those of child locations)."""
        now = time.time()
        start = f"{self.prefix}/" if self.prefix else ""
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for item in page.get("Contents", []):
                name = item["Key"][len(start):]
                if name and "/" not in name:
                    found.append(BlobInfo(name, now - item["LastModified"].timestamp()))
        return sorted(found, key=lambda info: info.id)

    def child(self, name: str) -> PrefixedS3ArtifactStore:
        return PrefixedS3ArtifactStore(self.bucket, self._key(name), client=self.client)


def open_blob_store(location: str | os.PathLike[str]) -> ListableArtifactStore:
    """The blob store at ``location``: a folder path or ``s3://BUCKET[/PREFIX]``."""
    text = str(location)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://"):].partition("/")
        if not bucket:
            raise SearchmergeError(f"blob location {text!r} names no bucket: use s3://BUCKET[/PREFIX]")
        return PrefixedS3ArtifactStore(bucket, prefix)
    if "://" in text:
        raise SearchmergeError(f"blob location {text!r}: give a folder path or s3://BUCKET[/PREFIX]")
    return AtomicFileSystemArtifactStore(text)


def read_all(store: ListableArtifactStore, artifact_id: str) -> bytes:
    """The whole content of one object (``ArtifactNotFound`` when it is missing)."""
    with store.open_reader(artifact_id) as reader:
        return reader.read()


def write_bytes(store: ListableArtifactStore, artifact_id: str, data: bytes) -> None:
    """Write ``data`` as one object, atomically."""
    store.write(artifact_id, io.BytesIO(data))
