"""A stand-in for the merging service, on loopback, that the edge tests can make misbehave.

It serves versions made from untrained tiny models (no preparing, no search), and can be
told to answer a poll with an HTML page, with a body that does not decode, with 503, or
to serve other bytes than a version names. Optionally over TLS.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import torch

from searchmerge.config.settings import StudySettings
from searchmerge.config.workload import ModelSpec, Workload
from searchmerge.service.edge.agent import EdgeAgent, EdgeSettings
from searchmerge.service.protocol import VersionInfo
from searchmerge.service.signing import Signer
from searchmerge.training.deployment import MANIFEST_FILE, WEIGHTS_FILE, export_deployment
from tests.edge_cloud_support import wait_for

TOKEN = "gate.0123456789abcdef"

#: Two untrained digits models whose footage is the generator's (16 x 16, one channel).
SPECS = (
    ModelSpec(name="a", arch="searchmerge.zoo:small_resnet",
              kwargs={"num_classes": 10, "widths": [4, 8, 8], "in_channels": 1}, input_shape=(1, 16, 16),
              options={"task": "digit"}),
    ModelSpec(name="b", arch="searchmerge.zoo:small_vgg",
              kwargs={"num_classes": 2, "widths": [4, 8, 8], "in_channels": 1}, input_shape=(1, 16, 16),
              options={"task": "parity"}),
)
SETTINGS = StudySettings.from_document({"seed": 0, "data": {"image_size": 16, "channels": 1}})


def make_version(folder: Path, seed: int, *, specs: tuple[ModelSpec, ...] = SPECS) -> Path:
    """A deployment folder of untrained models (``seed`` makes their weights differ)."""
    torch.manual_seed(seed)
    workload = Workload(models=specs, name="fake")
    return export_deployment(folder, workload, workload.build(), settings=SETTINGS, metadata={"seed": seed})


def files_of(folder: Path) -> dict[str, bytes]:
    """A deployment folder's files, by name."""
    return {name: (folder / name).read_bytes() for name in (MANIFEST_FILE, WEIGHTS_FILE)}


@dataclass
class Published:
    info: VersionInfo
    files: dict[str, bytes]


@dataclass
class FakeService:
    """The versions served, what to answer instead, and what was asked for."""

    versions: dict[int, Published] = field(default_factory=dict)
    current: int | None = None
    #: When set, ``GET .../version`` answers (status, headers, body) instead.
    version_answer: tuple[int, dict[str, str], bytes] | None = None
    #: When set, ``POST .../samples`` answers (status, headers, body) instead (nothing is counted).
    samples_answer: tuple[int, dict[str, str], bytes] | None = None
    #: Bytes served instead of a file's, by (version, file name).
    tampered: dict[tuple[int, str], bytes] = field(default_factory=dict)
    polls: int = 0
    downloads: dict[tuple[int, str], int] = field(default_factory=dict)
    samples: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, number: int, folder: Path, *, signer: Signer | None = None, **fields: Any) -> VersionInfo:
        """Serve ``folder`` as version ``number`` and make it current (signed by ``signer``; ``fields``
        override the info's)."""
        files = {name: (folder / name).read_bytes() for name in (MANIFEST_FILE, WEIGHTS_FILE)}
        values: dict[str, Any] = dict(
            version=number, created_at="2026-01-01T00:00:00Z", source_study="fake", trial=number, scenario=None,
            manifest_sha256=hashlib.sha256(files[MANIFEST_FILE]).hexdigest(), manifest_size=len(files[MANIFEST_FILE]),
            weights_sha256=hashlib.sha256(files[WEIGHTS_FILE]).hexdigest(), weights_size=len(files[WEIGHTS_FILE]),
        )
        if signer is not None:
            values.update(signature=signer.sign(number, values["manifest_sha256"]), signed_by=signer.key_id)
        values.update(fields)
        info = VersionInfo(**values)
        with self.lock:
            self.versions[number] = Published(info, files)
            self.current = number
        return info


_PATH = re.compile(r"^/v1/edges/(?P<edge>[^/]+)/(?P<rest>.*)$")


def _handler(state: FakeService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            headers = {"Content-Type": "application/json", **(headers or {})}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            match = _PATH.match(self.path)
            if match is None or self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._answer(401, b'{"detail": "not authenticated"}')
                return
            rest = match["rest"]
            with state.lock:
                if rest == "version":
                    state.polls += 1
                    if state.version_answer is not None:
                        status, headers, body = state.version_answer
                        self._answer(status, body, headers)
                    elif state.current is None:
                        self._answer(404, b'{"detail": "no version published yet"}')
                    else:
                        self._answer(200, state.versions[state.current].info.model_dump_json().encode())
                    return
                parts = rest.split("/")
                known = len(parts) == 3 and parts[0] == "versions" and parts[1].isdigit()
                if known and int(parts[1]) in state.versions:
                    number, name = int(parts[1]), parts[2]
                    files = state.versions[number].files
                    if name in files:
                        state.downloads[(number, name)] = state.downloads.get((number, name), 0) + 1
                        body = state.tampered.get((number, name), files[name])
                        self._answer(200, body, {"Content-Type": "application/octet-stream"})
                        return
            self._answer(404, b'{"detail": "not found"}')

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path.endswith("/samples"):
                if state.samples_answer is not None:
                    status, headers, answer = state.samples_answer
                    self._answer(status, answer, headers)
                    return
                count = len(json.loads(body)["samples"])
                with state.lock:
                    state.samples += count
                self._answer(202, json.dumps({"accepted": count}).encode())
            else:
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

    return Handler


class FakeServer:
    """A :class:`FakeService` on ``127.0.0.1`` (an ephemeral port), over TLS when given a cert and key."""

    def __init__(self, state: FakeService, *, cert: Path | None = None, key: Path | None = None) -> None:
        self.state = state
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
        self.server.daemon_threads = True
        scheme = "http"
        if cert is not None and key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Agent:
    """An edge agent in a thread of the test process, against ``url``; its log lines in ``lines``
    (unsigned versions allowed unless ``settings`` say otherwise)."""

    def __init__(self, url: str, state: Path, **settings: object) -> None:
        options: dict[str, object] = dict(state_dir=state, fps=20, sample_every=2, poll_seconds=0.2, max_backoff=0.5,
                                          metrics_port=0, allow_unsigned=True)
        options.update(settings)
        self.lines: list[str] = []
        settings_ = EdgeSettings(**options)  # type: ignore[arg-type]
        self.agent = EdgeAgent(url, TOKEN, settings_, progress=self.lines.append)
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.agent.metrics_port, what="the agent to serve")

    def healthz(self) -> tuple[int, dict[str, object]]:
        response = httpx.get(f"http://127.0.0.1:{self.agent.metrics_port}/healthz", timeout=10)
        return response.status_code, response.json()

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def close(self) -> None:
        self.agent.stop()
        self.thread.join()
