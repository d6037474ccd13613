"""What the edge agent shows about itself: Prometheus metrics and a health document, over HTTP.

``/metrics`` is the Prometheus text format of the agent's own registry
(prometheus-client); ``/healthz`` is a JSON document (the version served and whether
it was verified, the server's reachability, frames per stream). Both are served by a
small threaded WSGI server on a port of its own, so a scrape never waits on a frame.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

__all__ = ["EdgeMetrics", "serve_metrics"]


class EdgeMetrics:
    """The agent's counters and gauges, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.processed = Counter("searchmerge_edge_frames_processed", "Frames run through a model", ["stream"], registry=r)
        self.dropped = Counter("searchmerge_edge_frames_dropped",
                               "Frames not started within one frame interval of their arrival", ["stream"], registry=r)
        self.version = Gauge("searchmerge_edge_version", "The version being served", registry=r)
        self.switches = Counter("searchmerge_edge_version_switches", "Switches to another version", registry=r)
        self.refused = Counter("searchmerge_edge_versions_refused",
                               "Downloads refused (checksum mismatch) or versions that failed to load", registry=r)
        self.runtime_swaps = Counter("searchmerge_edge_runtime_swaps",
                                     "Model runs that had to copy tensors to the device", registry=r)
        self.bytes_loaded = Counter("searchmerge_edge_bytes_loaded",
                                    "Bytes copied to the device (runs and version switches)", registry=r)
        self.switch_bytes = Gauge("searchmerge_edge_last_switch_bytes",
                                  "Bytes the last switch copied to the device (changed tensors only)", registry=r)
        self.deployment_bytes = Gauge("searchmerge_edge_deployment_bytes",
                                      "Bytes of the whole deployment being served", registry=r)
        self.samples_sent = Counter("searchmerge_edge_samples_sent", "Samples the service accepted", registry=r)
        self.samples_discarded = Counter("searchmerge_edge_samples_discarded",
                                         "Samples discarded while the service was unreachable", registry=r)
        self.server_errors = Counter("searchmerge_edge_server_unreachable",
                                     "Calls to the service that got no answer", registry=r)
        self.samples_deferred = Counter("searchmerge_edge_samples_deferred",
                                        "Samples the service asked to send later (over this edge's quota)", registry=r)
        self.sync_errors = Counter("searchmerge_edge_sync_errors",
                                   "Rounds of the sync thread that failed with an answer it could not use, a local"
                                   " error (a full disk) or a bug; each is logged and retried", registry=r)
        self.prediction_errors = Counter("searchmerge_edge_prediction_write_errors",
                                         "Prediction lines that could not be written (a full disk)", registry=r)
        self.last_poll_age = Gauge("searchmerge_edge_last_poll_age_seconds",
                                   "Seconds since the service last answered a poll", registry=r)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_metrics(metrics: EdgeMetrics, health: Callable[[], dict[str, Any]], host: str, port: int) -> WSGIServer:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` (0: any free port) in a daemon thread."""
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            document = health()
            status = "200 OK" if document.get("status") == "ok" else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(document).encode()]
        return prometheus(environ, start_response)

    server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="searchmerge-edge-metrics", daemon=True).start()
    return server
