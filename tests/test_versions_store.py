"""The service's side of published versions: blobs verified whenever they are read, signatures
made at publishing and by ``keys sign``, older databases given the new columns, and ``store gc``
removing the deployment blobs no version names. Versions of untrained tiny models, published
from their files (no search needed)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from searchmerge.cli.commands import main
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.service.cloud.app import create_app
from searchmerge.service.cloud.db import open_engine
from searchmerge.service.cloud.service import ServiceSettings
from searchmerge.service.cloud.tokens import create_edge_token
from searchmerge.service.cloud.versions import (
    ArtifactVerifier,
    CorruptBlob,
    artifact_store,
    get_version,
    publish_files,
    read_artifact,
    sign_versions,
    write_version,
)
from searchmerge.service.signing import Signer, Verifier, init_keys
from searchmerge.training.deployment import MANIFEST_FILE, WEIGHTS_FILE
from tests.conftest import TINY_STUDY
from tests.fake_edge_service import files_of, make_version


@pytest.fixture()
def study(tmp_path: Path) -> StudyFile:
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    return open_study_file(tmp_path / "tiny.yaml", storage=f"sqlite:///{tmp_path / 'tiny.db'}")


def publish(study: StudyFile, tmp_path: Path, seed: int, signer: Signer | None = None) -> int:
    engine = open_engine(study.storage)
    info = publish_files(engine, study, files_of(make_version(tmp_path / f"v{seed}", seed=seed)), source_study="s",
                         trial=seed, checkpoint="c" * 16, signer=signer)
    return info.version


def blob_path(study: StudyFile, number: int, name: str) -> Path:
    info = get_version(open_engine(study.storage), study.workload.name, number)
    assert info is not None
    digest = info.manifest_sha256 if name == MANIFEST_FILE else info.weights_sha256
    return Path(artifact_store(study).location) / f"{digest}{Path(name).suffix}"


def test_blobs_are_verified_whenever_the_service_reads_them(study: StudyFile, tmp_path: Path) -> None:
    engine = open_engine(study.storage)
    number = publish(study, tmp_path, seed=1)
    assert b"".join(read_artifact(engine, study, number, WEIGHTS_FILE)) == (tmp_path / "v1" / WEIGHTS_FILE).read_bytes()
    blob = blob_path(study, number, WEIGHTS_FILE)
    good = blob.read_bytes()
    for damaged, differs in [(good[:-16] + bytes(16), "SHA-256"), (good[:-1], "size"), (good + b"x", "size")]:
        blob.write_bytes(damaged)
        with pytest.raises(CorruptBlob, match=f"the stored weights.safetensors .* is not the version's \\({differs}"):
            b"".join(read_artifact(engine, study, number, WEIGHTS_FILE))
        with pytest.raises(CorruptBlob):
            write_version(engine, study, number, tmp_path / "copy")  # what the drift check loads
        with pytest.raises(CorruptBlob):
            ArtifactVerifier(engine, study).check(number, WEIGHTS_FILE)
    blob.write_bytes(good)
    ArtifactVerifier(engine, study).check(number, WEIGHTS_FILE)


def test_the_api_does_not_serve_a_damaged_blob(study: StudyFile, tmp_path: Path) -> None:
    number = publish(study, tmp_path, seed=1)
    engine = open_engine(study.storage)
    told: list[str] = []

    class Service:  # what the API reads of a MergingService
        deployment = study.workload.name
        settings = ServiceSettings()
        artifacts = ArtifactVerifier(engine, study)

        def __init__(self) -> None:
            self.engine, self.study = engine, study

        def say(self, line: str, level: int = 0) -> None:
            told.append(line)

    token = create_edge_token(study.storage, study.workload.name, "gate")
    api = TestClient(create_app(Service()))  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {token}"}
    url = f"/v1/edges/gate/versions/{number}/weights.safetensors"
    blob = blob_path(study, number, WEIGHTS_FILE)
    good = blob.read_bytes()
    blob.write_bytes(good[:-16] + bytes(16))
    answer = api.get(url, headers=headers)
    assert answer.status_code == 503 and "damaged" in answer.text
    assert told and "is not the version's" in told[0]
    blob.write_bytes(good)
    answer = api.get(url, headers=headers)
    assert answer.status_code == 200 and answer.content == good


def test_versions_are_signed_when_published_and_by_keys_sign(study: StudyFile, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    private, public = init_keys(tmp_path / "keys")
    signer, verifier = Signer.load(private), Verifier.load(public)
    engine = open_engine(study.storage)
    first = publish(study, tmp_path, seed=1)  # before the key was set up
    second = publish(study, tmp_path, seed=2, signer=signer)
    info = get_version(engine, study.workload.name, second)
    assert info is not None and info.signed_by == signer.key_id
    verifier.verify(info.version, info.manifest_sha256, info.signature, info.signed_by)
    assert get_version(engine, study.workload.name, first).signature is None  # type: ignore[union-attr]

    assert main(["keys", "sign", str(study.path), "--storage", study.storage, "--signing-key", str(private)]) == 0
    assert f"signed version {first} " in capsys.readouterr().out
    old = get_version(engine, study.workload.name, first)
    assert old is not None
    verifier.verify(old.version, old.manifest_sha256, old.signature, old.signed_by)
    # A manifest altered in the store is not signed.
    other, _ = init_keys(tmp_path / "other")
    blob = blob_path(study, first, MANIFEST_FILE)
    blob.write_bytes(blob.read_bytes().replace(b"small_resnet", b"small_resnex"))
    with pytest.raises(CorruptBlob):
        sign_versions(engine, study, Signer.load(other), numbers=[first])
    assert main(["keys", "sign", str(study.path), "--storage", study.storage, "--signing-key", str(other),
                 "--version", str(first)]) == 2


def test_an_older_database_gets_the_signature_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the versions table as searchmerge made it before signatures
        conn.execute(sa.text(
            "CREATE TABLE searchmerge_versions (deployment VARCHAR(255) NOT NULL, number INTEGER NOT NULL,"
            " source_study VARCHAR(255) NOT NULL, trial INTEGER NOT NULL, checkpoint VARCHAR(64) NOT NULL,"
            " scenario VARCHAR(255), manifest_blob VARCHAR(80) NOT NULL, manifest_sha256 VARCHAR(64) NOT NULL,"
            " manifest_size BIGINT NOT NULL, weights_blob VARCHAR(80) NOT NULL, weights_sha256 VARCHAR(64) NOT NULL,"
            " weights_size BIGINT NOT NULL, created_at DATETIME NOT NULL, withdrawn_at DATETIME,"
            " PRIMARY KEY (deployment, number))"))
        conn.execute(sa.text(
            "INSERT INTO searchmerge_versions VALUES ('d', 1, 's', 0, 'c', NULL, 'm', 'aa', 1, 'w', 'bb', 2,"
            " '2026-01-01 00:00:00', NULL)"))
    engine.dispose()
    upgraded = open_engine(url)
    open_engine(url)  # a second service at start: nothing to add
    info = get_version(upgraded, "d", 1)
    assert info is not None and info.signature is None and info.weights_sha256 == "bb"


@pytest.fixture()
def aged(study: StudyFile, tmp_path: Path) -> Iterator[Path]:
    publish(study, tmp_path, seed=1)
    folder = Path(artifact_store(study).location)
    (folder / ("0" * 64 + ".safetensors")).write_bytes(b"left by a publish killed before its row")
    (folder / ".partial.1234.part").write_bytes(b"a killed write")
    past = time.time() - 3 * 3600
    for path in folder.iterdir():
        os.utime(path, (past, past))
    yield folder


def test_store_gc_removes_the_deployment_blobs_no_version_names(study: StudyFile, aged: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in aged.iterdir())
    assert main(["store", "gc", str(study.path), "--storage", study.storage, "--dry-run"]) == 0
    assert "would remove 2 deployment blob(s)" in capsys.readouterr().out
    assert sorted(p.name for p in aged.iterdir()) == before
    assert main(["store", "gc", str(study.path), "--storage", study.storage]) == 0
    assert "removed 2 deployment blob(s)" in capsys.readouterr().out
    left = sorted(p.name for p in aged.iterdir())
    assert len(left) == 2 and all(not name.startswith(("0000", ".")) for name in left)
    engine = open_engine(study.storage)
    write_version(engine, study, 1, aged.parent / "check")  # the version's blobs are whole
