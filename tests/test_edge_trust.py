"""Trust between the edge and the service: TLS with a certificate made here, signed versions,
an allowlist of the code a version may name, manifests that carry only what an edge needs,
no plain http:// to another host, no password in a message, the token kept off the command line.

Each refusal is one line in the edge's log (a refused version: one ERROR line; a refused
start: one ``searchmerge: error:`` line)."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from searchmerge.cli.commands import _edge_token
from searchmerge.config.settings import StudySettings
from searchmerge.config.workload import Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.redact import redact, redact_url
from searchmerge.service.cloud.db import open_engine
from searchmerge.service.edge.agent import EdgeAgent, EdgeSettings
from searchmerge.service.edge.client import InsecureServer, ServiceClient, ServiceUnreachable, check_server
from searchmerge.service.edge.trust import TrustPolicy
from searchmerge.service.signing import BadSignature, Signer, Verifier, init_keys
from searchmerge.storage.lease import hold_lease
from searchmerge.training.deployment import EDGE_SETTINGS, export_deployment
from tests.edge_cloud_support import free_port, wait_for
from tests.fake_edge_service import SPECS, TOKEN, Agent, FakeServer, FakeService, make_version

REPOSITORY = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Path, Signer]:
    """The operator's signer and public key file, and a key nobody trusts."""
    folder = tmp_path_factory.mktemp("keys")
    private, public = init_keys(folder)
    other, _ = init_keys(folder / "other")
    return Signer.load(private), public, Signer.load(other)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "searchmerge test service")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, private = folder / "service.crt", folder / "service.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return cert, private


# ---------------------------------------------------------------------------- signatures and the allowlist
def test_keys_sign_and_verify_only_their_own_statement(keys: tuple[Signer, Path, Signer], tmp_path: Path) -> None:
    signer, public, other = keys
    assert oct(os.stat(Path(public).with_suffix(".key")).st_mode & 0o777) == "0o600"
    verifier = Verifier.load(public)
    assert verifier.key_id == signer.key_id != other.key_id
    signature = signer.sign(4, "ab" * 32)
    verifier.verify(4, "ab" * 32, signature, signer.key_id)
    for number, digest, signed, by in [(5, "ab" * 32, signature, signer.key_id),  # another version's number
                                       (4, "cd" * 32, signature, signer.key_id),  # another manifest
                                       (4, "ab" * 32, other.sign(4, "ab" * 32), other.key_id),  # another key
                                       (4, "ab" * 32, "not base64!", None)]:
        with pytest.raises(BadSignature, match="does not verify"):
            verifier.verify(number, digest, signed, by)
    with pytest.raises(BadSignature, match="not signed"):
        verifier.verify(4, "ab" * 32, None, None)
    with pytest.raises(SearchmergeError, match="exists already"):
        init_keys(Path(public).parent)


def test_the_allowlist_holds_torchvision_names_the_zoo_and_the_operators_factories_only() -> None:
    with pytest.raises(SearchmergeError, match="--trust"):
        TrustPolicy(None)
    policy = TrustPolicy(None, allow_unsigned=True, factories=["tests.conftest:tiny_net"])
    assert policy.allows("resnet18") and policy.allows("searchmerge.zoo:small_resnet")
    assert policy.allows("tests.conftest:tiny_net")
    assert not policy.allows("os:system") and not policy.allows("tests.evil_factory:evil")
    assert not policy.allows("no_such_torchvision_model")
    with pytest.raises(SearchmergeError, match="package.module:function"):
        TrustPolicy(None, allow_unsigned=True, factories=["just_a_name"])


def test_a_manifest_keeps_only_the_settings_an_edge_needs(tmp_path: Path) -> None:
    settings = StudySettings.from_document({
        "seed": 3, "target": 0.8, "data": {"image_size": 16, "channels": 1, "workers": 4},
        "pretrain": {"task": "digit", "epochs": 7}, "evaluator": {"max_epochs": 9}, "deploy": {"gpu_memory": "1GiB"},
        "storage": "postgresql+psycopg://worker:s3cret@db/studies",
    })
    workload = Workload(models=SPECS, name="fake")
    folder = export_deployment(tmp_path / "v", workload, workload.build(), settings=settings)
    text = (folder / "manifest.json").read_text()
    kept = json.loads(text)["workload"]["settings"]
    assert set(kept) <= set(EDGE_SETTINGS) and kept["data"] == {"image_size": 16, "channels": 1}
    assert kept["seed"] == 3 and "s3cret" not in text and "postgresql" not in text and "epochs" not in text


# ---------------------------------------------------------------------------- refusals at the edge
@pytest.fixture()
def signed(keys: tuple[Signer, Path, Signer], tmp_path: Path) -> Iterator[tuple[FakeServer, Signer, Signer]]:
    signer, _public, other = keys
    state = FakeService()
    state.publish(1, make_version(tmp_path / "v1", seed=1), signer=signer)
    server = FakeServer(state)
    yield server, signer, other
    server.close()


def test_the_edge_refuses_unsigned_badly_signed_tampered_and_unlisted_versions(
    signed: tuple[FakeServer, Signer, Signer], keys: tuple[Signer, Path, Signer], tmp_path: Path
) -> None:
    server, signer, other = signed
    state = server.state
    edge = Agent(server.url, tmp_path / "edge", allow_unsigned=False, trust=keys[1])
    try:
        assert edge.agent.active.info.version == 1 and edge.said(f"signed by key {signer.key_id}")

        def refused(number: int, reason: str) -> None:
            wait_for(lambda: edge.said(f"version {number} refused"), what=f"version {number} to be refused")
            lines = [line for line in edge.lines if f"version {number} refused" in line]
            assert len(lines) == 1 and reason in lines[0], lines  # one line, saying why
            assert edge.agent.active.info.version == 1

        state.publish(2, make_version(tmp_path / "v2", seed=2))  # unsigned
        refused(2, "is not signed")
        state.publish(3, make_version(tmp_path / "v3", seed=3), signer=other)  # signed, by a key nobody trusts
        refused(3, "does not verify")
        info = state.publish(4, make_version(tmp_path / "v4", seed=4), signer=signer)
        state.versions[4].info = info.model_copy(update={"signature": signer.sign(5, info.manifest_sha256)})
        refused(4, "does not verify")  # a signature of the same manifest as another version

        # Signed by the operator's key, but naming a factory this edge was not told to allow.
        folder = make_version(tmp_path / "v5", seed=5)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["workload"]["models"][0]["arch"] = "tests.evil_factory:evil"
        (folder / "manifest.json").write_text(json.dumps(manifest))
        state.publish(5, folder, signer=signer)
        refused(5, "names code outside this edge's allowlist (a: tests.evil_factory:evil)")
        assert "tests.evil_factory" not in sys.modules  # not even imported

        # A blob altered in the store or on the way: the signed manifest's checksums catch it.
        state.publish(6, make_version(tmp_path / "v6", seed=6), signer=signer)
        good = state.versions[6].files["weights.safetensors"]
        state.tampered[(6, "weights.safetensors")] = good[:-8] + bytes(8)
        wait_for(lambda: edge.said("version 6 refused"), what="the tampered version to be refused")
        assert all("does not match the version's SHA-256" in line for line in edge.lines if "version 6 refused" in line)
        assert not (tmp_path / "edge" / "versions" / "6").exists()
        del state.tampered[(6, "weights.safetensors")]
        wait_for(lambda: edge.agent.active.info.version == 6, what="the version, signed and whole")
        assert edge.agent.refused >= 5
    finally:
        edge.close()


def test_a_restarted_edge_checks_the_signature_of_its_local_version_again(
    signed: tuple[FakeServer, Signer, Signer], keys: tuple[Signer, Path, Signer], tmp_path: Path
) -> None:
    server, signer, other = signed
    edge = Agent(server.url, tmp_path / "edge")  # unsigned allowed: takes version 1 and keeps it
    edge.close()
    current = tmp_path / "edge" / "current.json"
    document = json.loads(current.read_text())
    current.write_text(json.dumps({**document, "signature": other.sign(1, document["manifest_sha256"])}))
    edge = Agent(server.url, tmp_path / "edge", allow_unsigned=False, trust=keys[1])
    try:
        assert edge.said("the local version 1 does not load") and edge.agent.active.info.signed_by == signer.key_id
    finally:
        edge.close()


def test_an_edge_refuses_plain_http_to_another_host_with_one_line(tmp_path: Path) -> None:
    settings = EdgeSettings(state_dir=tmp_path / "edge", allow_unsigned=True)
    for url in ("http://10.1.2.3:8000", "http://merging.example.com", "ftp://127.0.0.1"):
        with pytest.raises(InsecureServer):
            EdgeAgent(url, TOKEN, settings)
    for url in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "https://merging.example.com"):
        check_server(url)
    check_server("http://10.1.2.3:8000", allow_insecure=True)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "searchmerge.cli", "edge", "--server", "http://10.1.2.3:8000", "--token-file",
         str(token), "--allow-unsigned", "--state-dir", str(tmp_path / "edge")],
        capture_output=True, text=True, cwd=REPOSITORY, timeout=600,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("searchmerge: error: refusing plain http:// to 10.1.2.3"), lines


# ---------------------------------------------------------------------------- TLS
def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    state = FakeService()
    state.publish(1, make_version(tmp_path / "v1", seed=1))
    server = FakeServer(state, cert=cert, key=key)
    try:
        assert server.url.startswith("https://")
        with pytest.raises(ServiceUnreachable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            ServiceClient(server.url, TOKEN).current()  # the system's store does not know this certificate
        assert ServiceClient(server.url, TOKEN, ca_file=cert).current().version == 1
        edge = Agent(server.url, tmp_path / "edge", ca_file=cert)
        try:
            assert edge.agent.active.info.version == 1
            wait_for(lambda: state.samples > 0, what="samples over TLS")
        finally:
            edge.close()
    finally:
        server.close()


def test_serve_runs_uvicorn_over_tls(tmp_path: Path) -> None:
    """The plumbing of ``searchmerge serve --tls-cert/--tls-key`` (run_app), with a small app."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    code = (
        "from pathlib import Path\nfrom fastapi import FastAPI\nfrom searchmerge.service.cloud.server import run_app\n"
        "app = FastAPI()\napp.get('/healthz')(lambda: {'status': 'ok'})\n"
        f"run_app(app, host='127.0.0.1', port={port}, tls_cert=Path({str(cert)!r}), tls_key=Path({str(key)!r}))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPOSITORY, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        context = ssl.create_default_context(cafile=str(cert))

        def answers() -> bool:
            try:
                return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context, timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, alive=process, what="the service over TLS")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # plain HTTP is not served
    finally:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------- secrets
def test_passwords_are_redacted_from_messages(tmp_path: Path) -> None:
    assert redact_url("postgresql+psycopg://worker:s3cret@db:5432/x") == "postgresql+psycopg://worker:***@db:5432/x"
    assert redact("a http://127.0.0.1:8000/x@y and sqlite:///a.db") == "a http://127.0.0.1:8000/x@y and sqlite:///a.db"
    url = "postgresql+psycopg://worker:s3cret@127.0.0.1:1/test"  # nothing listens on port 1
    with pytest.raises(SearchmergeError) as service_error:
        open_engine(url)
    with pytest.raises(SearchmergeError) as lease_error:
        with hold_lease(url, "x"):
            pass
    for error in (service_error, lease_error):
        assert "s3cret" not in str(error.value) and "worker:***@127.0.0.1:1" in str(error.value)


def test_the_token_comes_from_a_file_or_the_environment_and_warns_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "token"
    file.write_text(" gate.abc \n")
    assert _edge_token(argparse.Namespace(token_file=str(file), token=None)) == "gate.abc"
    monkeypatch.setenv("SEARCHMERGE_EDGE_TOKEN", "gate.env")
    assert _edge_token(argparse.Namespace(token_file=None, token=None)) == "gate.env"
    assert _edge_token(argparse.Namespace(token_file=None, token="gate.cli")) == "gate.cli"
    assert "visible to every user" in capsys.readouterr().err
    monkeypatch.delenv("SEARCHMERGE_EDGE_TOKEN")
    with pytest.raises(SearchmergeError, match="--token-file"):
        _edge_token(argparse.Namespace(token_file=None, token=None))
    with pytest.raises(SearchmergeError, match="cannot read the token file"):
        _edge_token(argparse.Namespace(token_file=str(tmp_path / "missing"), token=None))
