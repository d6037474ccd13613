"""The edge's side of the HTTP API: what it asks the merging service, and how it verifies the answers.

Every call that cannot reach the service raises :class:`ServiceUnreachable`, which the
edge agent answers by serving on and retrying with backoff; an answer that cannot be read
(a 200 with an HTML page from a proxy, a body that does not decode) raises
:class:`BadAnswer`. A downloaded file whose size or SHA-256 is not the version's is
refused (:class:`TamperedArtifact`) before anything is loaded from it.

The connection is trusted as the operator says: ``https://`` is verified against a CA
file or the system's store; plain ``http://`` is refused to any host that is not this
machine (:func:`check_server`) unless the operator allows it, since the token and the
versions would cross the network unencrypted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from searchmerge.core.errors import SearchmergeError
from searchmerge.service.protocol import EdgeStats, SampleBatch, VersionInfo

__all__ = [
    "BadAnswer",
    "InsecureServer",
    "RateLimited",
    "ServiceClient",
    "ServiceUnreachable",
    "TamperedArtifact",
    "check_server",
    "edge_of_token",
]


class ServiceUnreachable(SearchmergeError):
    """The service did not answer (connection refused, timeout, a 5xx)."""


class TamperedArtifact(SearchmergeError):
    """A downloaded file is not the one the version names (size or SHA-256 differ)."""


class BadAnswer(SearchmergeError):
    """The service (or something in between) answered with a body that cannot be read."""


class RateLimited(SearchmergeError):
    """The service asks the edge to send fewer samples (429); ``retry_after`` seconds to wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InsecureServer(SearchmergeError):
    """The service's URL would send the token and the versions unencrypted over a network."""


def check_server(server: str, *, allow_insecure: bool = False) -> None:
    """Refuse a service URL the edge must not talk to.

    ``https://`` is always allowed; ``http://`` only to this machine (``localhost`` or a
    loopback address), or anywhere when ``allow_insecure``.

    Raises:
        InsecureServer: For plain ``http://`` to another host, or another scheme.
    """
    parts = urlsplit(server)
    if parts.scheme == "https":
        return
    if parts.scheme != "http" or not parts.hostname:
        raise InsecureServer(f"the service's URL {server!r} is not http(s)://HOST[:PORT]")
    if allow_insecure or _is_loopback(parts.hostname):
        return
    raise InsecureServer(
        f"refusing plain http:// to {parts.hostname}, which is not this machine: the token and the versions would"
        " cross the network unencrypted; serve with --tls-cert/--tls-key and give https://, or --allow-insecure"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def edge_of_token(token: str) -> str:
    """The edge name a token belongs to (tokens are ``NAME.SECRET``)."""
    name, dot, secret = token.rpartition(".")
    if not dot or not name or not secret:
        raise SearchmergeError("the token is not one 'searchmerge edge-token' made (NAME.SECRET)")
    return name


class ServiceClient:
    """Talks to the merging service as one edge.

    Args:
        server: The service's base URL, e.g. ``https://merging.example:8443`` or ``http://127.0.0.1:8000``.
        token: The edge's token from ``searchmerge edge-token``.
        timeout: Seconds before a request counts as unanswered.
        ca_file: The certificate authority (PEM) that signed the service's TLS certificate
            (default: the system's store).
        allow_insecure: Allow plain ``http://`` to a host that is not this machine.

    Raises:
        InsecureServer: See :func:`check_server`.
    """

    def __init__(self, server: str, token: str, *, timeout: float = 10.0, ca_file: Path | None = None,
                 allow_insecure: bool = False) -> None:
        check_server(server, allow_insecure=allow_insecure)
        self.edge = edge_of_token(token)
        try:
            verify = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise SearchmergeError(f"cannot read the CA file {str(ca_file)!r}: {exc}") from None
        self._http = httpx.Client(base_url=f"{server.rstrip('/')}/v1/edges/{self.edge}", timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"}, verify=verify)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **options: object) -> httpx.Response:
        try:
            response = self._http.request(method, path, **options)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise ServiceUnreachable(f"the service is unreachable: {exc}") from None
        except httpx.HTTPError as exc:  # a body that does not decode, too many redirects, ...
            raise BadAnswer(f"the service's answer to {method} {path} cannot be read: {exc}") from None
        return _checked(response)

    def current(self) -> VersionInfo:
        """The version the service wants this edge to run."""
        response = self._request("GET", "/version")
        try:
            return VersionInfo.model_validate_json(response.content)
        except ValueError:
            raise BadAnswer(f"the answer to GET /version is not a version document: {_describe(response)}") from None

    def send_samples(self, batch: SampleBatch) -> int:
        response = self._request("POST", "/samples", content=batch.model_dump_json(),
                                 headers={"Content-Type": "application/json"})
        try:
            return int(response.json()["accepted"])
        except (ValueError, KeyError, TypeError):
            raise BadAnswer(f"the answer to POST /samples is not a count of samples: {_describe(response)}") from None

    def send_stats(self, stats: EdgeStats) -> None:
        self._request("POST", "/stats", content=stats.model_dump_json(), headers={"Content-Type": "application/json"})

    def status(self) -> dict[str, object]:
        return dict(self._request("GET", "/status").json())

    def download(self, info: VersionInfo, name: str, path: Path) -> None:
        """Download one file of version ``info`` to ``path``, verifying its size and SHA-256 as it arrives.

        Raises:
            TamperedArtifact: If the bytes are not the version's (the file is removed).
            ServiceUnreachable: If the download broke off.
            BadAnswer: If the body did not decode.
            OSError: If the file cannot be written (a full disk).
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
        except httpx.HTTPError as exc:
            raise BadAnswer(f"the download of version {info.version}'s {name} cannot be read: {exc}") from None
        if (digest.hexdigest(), size) != expected:
            path.unlink(missing_ok=True)
            raise TamperedArtifact(
                f"version {info.version}: {name} does not match the version's SHA-256 and size; refused"
            )


def _describe(response: httpx.Response) -> str:
    """A short account of an answer that was not what was asked for (status, type, its start)."""
    start = response.content[:80].decode("utf-8", "replace").replace("\n", " ")
    return f"HTTP {response.status_code}, {response.headers.get('content-type', 'no content type')}, {start!r}"


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 500:
        response.read()
        raise ServiceUnreachable(f"the service answered {response.status_code}")
    if response.status_code == 429:
        response.read()
        try:
            wait = max(float(response.headers.get("retry-after", "60")), 0.0)
        except ValueError:
            wait = 60.0
        raise RateLimited(f"the service asks this edge to slow down (429: {response.text[:200]})", wait)
    if response.status_code in (401, 403):
        raise SearchmergeError(f"the service refused this edge's token ({response.status_code});"
                               " make a new one with 'searchmerge edge-token'")
    if response.status_code >= 400:
        response.read()
        raise SearchmergeError(f"the service refused the request ({response.status_code}): {response.text[:300]}")
    return response
