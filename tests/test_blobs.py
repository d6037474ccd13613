"""Checkpoint blobs behind Optuna's artifact-store interface: a folder, and a real S3-compatible server."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from searchmerge.core.errors import SearchmergeError
from searchmerge.storage.blobs import (
    ArtifactNotFound,
    AtomicFileSystemArtifactStore,
    open_blob_store,
)
from searchmerge.storage.store import (
    CheckpointCorruptError,
    CheckpointKey,
    CheckpointStore,
)


def test_folder_store_is_atomic_and_lists_what_it_holds(tmp_path: Path) -> None:
    store = AtomicFileSystemArtifactStore(tmp_path / "blobs")
    store.write("a.safetensors", io.BytesIO(b"abc"))
    assert store.open_reader("a.safetensors").read() == b"abc"
    assert [info.id for info in store.list()] == ["a.safetensors"]
    assert not [p for p in (tmp_path / "blobs").iterdir() if p.name.endswith(".part")]
    store.remove("a.safetensors")
    with pytest.raises(ArtifactNotFound):
        store.open_reader("a.safetensors")
    for bad in ("../escape", "/etc/passwd", ".."):
        with pytest.raises(ValueError):
            store.write(bad, io.BytesIO(b"x"))


def test_a_blob_location_is_a_folder_or_s3(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(tmp_path / "b"), AtomicFileSystemArtifactStore)
    for bad in ("s3://", "gs://bucket/x"):
        with pytest.raises(SearchmergeError, match="blob location"):
            open_blob_store(bad)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A local S3-compatible server (moto's), as workers on several hosts would share."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while server.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            time.sleep(0.2)
    assert server.poll() is None, "the S3 server did not start"
    yield url
    server.kill()
    server.wait()


def test_checkpoints_on_s3_roundtrip_verify_and_gc(s3_server: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"searchmerge-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)

    store = CheckpointStore.for_storage(f"sqlite:///{tmp_path / 'study.db'}", f"s3://{bucket}/team/checkpoints")
    shared = torch.randn(4, 3)
    tensors = {"a/conv.weight": shared, "b/conv.weight": shared, "a/fc.bias": torch.zeros(2)}
    checkpoint = store.put(CheckpointKey("wl", "plan", "data", "merged"), tensors)
    loaded = store.load(checkpoint)
    assert loaded["a/conv.weight"] is loaded["b/conv.weight"] and torch.equal(loaded["a/conv.weight"], shared)
    assert store.blob_location == f"s3://{bucket}/team/checkpoints"
    objects = boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in objects] == [f"team/checkpoints/{store.record(checkpoint).blob}"]

    # An altered object is refused, never parsed.
    boto3.client("s3").put_object(Bucket=bucket, Key=objects[0]["Key"], Body=b"garbage")
    with pytest.raises(CheckpointCorruptError, match="corrupt"):
        store.load(checkpoint)
    store.put(CheckpointKey("wl", "plan", "data", "merged"), tensors)  # the same bytes again repair it
    store.verify(checkpoint)

    # Dashboard artifacts live under their own prefix; gc lists the blobs' prefix only.
    store.artifacts.write("table.csv", io.BytesIO(b"model,ratio\n"))
    orphan = store.blobs
    orphan.write("f" * 64 + ".safetensors", io.BytesIO(b"left behind"))
    from datetime import timedelta

    done = store.collect_garbage(min_age=timedelta(0))
    assert done.blobs == ("f" * 64 + ".safetensors",)
    store.verify(checkpoint)
    assert store.artifacts.open_reader("table.csv").read() == b"model,ratio\n"
    store.close()
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server
