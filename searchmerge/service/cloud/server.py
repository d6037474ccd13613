"""``searchmerge serve``: the merging service of a study file, on uvicorn.

The caretaker thread starts first (it publishes version 1 if there is none and resumes
pending re-search jobs), then uvicorn serves the API until it is stopped (Ctrl-C or
SIGTERM). A service killed outright loses nothing: the next start finds its versions,
jobs and samples in the database.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

import uvicorn

from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.service.cloud.app import create_app
from searchmerge.service.cloud.service import MergingService, ServiceSettings
from searchmerge.service.cloud.tokens import create_edge_token, edge_names

__all__ = ["check_tls", "create_edge_token", "edge_names", "run_app", "serve"]


#: How long an idle connection stays open. Longer than an edge's poll interval (5 s by default):
#: with uvicorn's default of 5 s the service closed connections just as edges reused them, and
#: about 1 request in 250 failed under load (benchmarks/bench_service_load.py).
KEEP_ALIVE_SECONDS = 65


def serve(study: StudyFile, settings: ServiceSettings, *, host: str = "127.0.0.1", port: int = 8000,
          tls_cert: Path | None = None, tls_key: Path | None = None, progress: Progress | None = None) -> None:
    """Run the merging service of ``study`` on ``host:port`` until it is stopped.

    Args:
        tls_cert, tls_key: The service's TLS certificate (chain) and private key, PEM files: the
            API is then served over HTTPS only. Without them it is plain HTTP, which edges accept
            only on this machine (loopback) or with ``--allow-insecure``.
    """
    check_tls(tls_cert, tls_key)
    service = MergingService(study, settings, progress=progress)
    current = service.start()
    edges = edge_names(service.engine, service.deployment)
    scheme = "https" if tls_cert is not None else "http"
    service.say(f"serving deployment {service.deployment!r} version {current.version} on {scheme}://{host}:{port}/"
                f" (API schema at /openapi.json) for {len(edges)} edge(s){': ' + ', '.join(edges) if edges else ''}")
    if not edges:
        service.say(f"no edge has a token yet: searchmerge edge-token {study.path} NAME", logging.WARNING)
    if tls_cert is None and host not in ("127.0.0.1", "localhost", "::1"):
        service.say(f"serving plain HTTP on {host}: tokens and versions cross the network unencrypted; give"
                    " --tls-cert and --tls-key", logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # What is loaded by now (torch, the web and database libraries, the study) lives as long as the
    # process: kept out of the garbage collector's full passes, which otherwise scanned it all every
    # half minute under load and held every request up for a tenth of a second or more.
    gc.freeze()
    try:
        run_app(create_app(service), host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)
    finally:
        service.stop()


def check_tls(tls_cert: Path | None, tls_key: Path | None) -> None:
    """Both TLS files or neither, and readable.

    Raises:
        SearchmergeError: Naming the file that is missing.
    """
    if (tls_cert is None) != (tls_key is None):
        raise SearchmergeError("give both --tls-cert and --tls-key (PEM files), or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not Path(path).is_file():
            raise SearchmergeError(f"TLS file {str(path)!r} does not exist")


def run_app(app: Any, *, host: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
    """Serve an ASGI app with uvicorn until stopped, over TLS when given a certificate and key."""
    check_tls(tls_cert, tls_key)
    options: dict[str, Any] = {}
    if tls_cert is not None and tls_key is not None:
        options.update(ssl_certfile=str(tls_cert), ssl_keyfile=str(tls_key))
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_SECONDS, **options)
