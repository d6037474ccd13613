"""The edge's side of the HTTP API: what it asks the merging service, and how it verifies the answers.

Every call that cannot reach the service raises :class:`ServiceUnreachable`, which the
edge agent answers by serving on and retrying with backoff. A downloaded file whose
size or SHA-256 is not the version's is refused (:class:`TamperedArtifact`) before
anything is loaded from it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from searchmerge.core.errors import SearchmergeError
from searchmerge.service.protocol import EdgeStats, SampleBatch, VersionInfo

__all__ = ["ServiceClient", "ServiceUnreachable", "TamperedArtifact", "edge_of_token"]


class ServiceUnreachable(SearchmergeError):
    """The service did not answer (connection refused, timeout, a 5xx)."""


class TamperedArtifact(SearchmergeError):
    """A downloaded file is not the one the version names (size or SHA-256 differ)."""


def edge_of_token(token: str) -> str:
    """The edge name a token belongs to (tokens are ``NAME.SECRET``)."""
    name, dot, secret = token.rpartition(".")
    if not dot or not name or not secret:
        raise SearchmergeError("the token is not one 'searchmerge edge-token' made (NAME.SECRET)")
    return name


class ServiceClient:
    """Talks to the merging service as one edge.

    Args:
        server: The service's base URL, e.g. ``http://127.0.0.1:8000``.
        token: The edge's token from ``searchmerge edge-token``.
        timeout: Seconds before a request counts as unanswered.
    """

    def __init__(self, server: str, token: str, *, timeout: float = 10.0) -> None:
        self.edge = edge_of_token(token)
        self._http = httpx.Client(base_url=f"{server.rstrip('/')}/v1/edges/{self.edge}", timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **options: object) -> httpx.Response:
        try:
            response = self._http.request(method, path, **options)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise ServiceUnreachable(f"the service is unreachable: {exc}") from None
        return _checked(response)

    def current(self) -> VersionInfo:
        """The version the service wants this edge to run."""
        return VersionInfo.model_validate_json(self._request("GET", "/version").content)

    def send_samples(self, batch: SampleBatch) -> int:
        response = self._request("POST", "/samples", content=batch.model_dump_json(),
                                 headers={"Content-Type": "application/json"})
        return int(response.json()["accepted"])

    def send_stats(self, stats: EdgeStats) -> None:
        self._request("POST", "/stats", content=stats.model_dump_json(), headers={"Content-Type": "application/json"})

    def status(self) -> dict[str, object]:
        return dict(self._request("GET", "/status").json())

    def download(self, info: VersionInfo, name: str, path: Path) -> None:
        """Download one file of version ``info`` to ``path``, verifying its size and SHA-256 as it arrives.

        Raises:
            TamperedArtifact: If the bytes are not the version's (the file is removed).
            ServiceUnreachable: If the download broke off.
        """
        expected = (info.manifest_sha256, info.manifest_size) if name == "manifest.json" else (
            info.weights_sha256, info.weights_size)
        digest, size = hashlib.sha256(), 0
        try:
            with self._http.stream("GET", f"/versions/{info.version}/{name}") as response, open(path, "wb") as out:
                _checked(response)
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > expected[1]:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except httpx.TransportError as exc:
            raise ServiceUnreachable(f"the download of version {info.version} broke off: {exc}") from None
        if (digest.hexdigest(), size) != expected:
            path.unlink(missing_ok=True)
            raise TamperedArtifact(
                f"version {info.version}: {name} does not match the version's SHA-256 and size; refused"
            )


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 500:
        response.read()
        raise ServiceUnreachable(f"the service answered {response.status_code}")
    if response.status_code in (401, 403):
        raise SearchmergeError(f"the service refused this edge's token ({response.status_code});"
                               " make a new one with 'searchmerge edge-token'")
    if response.status_code >= 400:
        response.read()
        raise SearchmergeError(f"the service refused the request ({response.status_code}): {response.text[:300]}")
    return response
