"""``searchmerge serve``: the merging service of a study file, on uvicorn.

The caretaker thread starts first (it publishes version 1 if there is none and resumes
pending re-search jobs), then uvicorn serves the API until it is stopped (Ctrl-C or
SIGTERM). A service killed outright loses nothing: the next start finds its versions,
jobs and samples in the database.
"""

from __future__ import annotations

import logging

import uvicorn

from searchmerge.config.study import StudyFile
from searchmerge.core.progress import Progress
from searchmerge.service.cloud.app import create_app
from searchmerge.service.cloud.service import MergingService, ServiceSettings
from searchmerge.service.cloud.tokens import create_edge_token, edge_names

__all__ = ["create_edge_token", "edge_names", "serve"]


def serve(study: StudyFile, settings: ServiceSettings, *, host: str = "127.0.0.1", port: int = 8000,
          progress: Progress | None = None) -> None:
    """Run the merging service of ``study`` on ``host:port`` until it is stopped."""
    service = MergingService(study, settings, progress=progress)
    current = service.start()
    edges = edge_names(service.engine, service.deployment)
    service.say(f"serving deployment {service.deployment!r} version {current.version} on http://{host}:{port}/"
                f" (API schema at /openapi.json) for {len(edges)} edge(s){': ' + ', '.join(edges) if edges else ''}")
    if not edges:
        service.say(f"no edge has a token yet: searchmerge edge-token {study.path} NAME", logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
    finally:
        service.stop()
