"""The HTTP API of the merging service (FastAPI; the schema at ``/openapi.json``, pages at ``/docs``).

Every route under ``/v1/edges/{edge}/`` needs that edge's bearer token: no token, or
one that is nobody's, is 401; another edge's token is 403; both answer the same few
words and reveal nothing else. The token is checked before the body is read, and a
body is read only up to the upload limit (413 past it) before it is parsed and
validated (422 when it does not fit), so a refused upload stores nothing.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run
# time, and the local ``Edge`` dependency alias must be an object, not a string.
import logging
import math
from typing import Annotated, Literal, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from searchmerge.core.errors import SearchmergeError
from searchmerge.service.cloud.labelling import SampleTooLarge
from searchmerge.service.cloud.quotas import QuotaExceeded
from searchmerge.service.cloud.service import MergingService
from searchmerge.service.cloud.tokens import authenticate
from searchmerge.service.cloud.versions import (
    CorruptBlob,
    current_version,
    get_version,
    read_artifact,
)
from searchmerge.service.protocol import (
    Accepted,
    EdgeStats,
    SampleBatch,
    ServiceStatus,
    VersionInfo,
)
from searchmerge.training.deployment import MANIFEST_FILE

__all__ = ["create_app"]

_M = TypeVar("_M", bound=BaseModel)
_bearer = HTTPBearer(auto_error=False)
_UNAUTHENTICATED = HTTPException(401, "not authenticated", headers={"WWW-Authenticate": "Bearer"})
_FORBIDDEN = HTTPException(403, "forbidden")


def create_app(service: MergingService) -> FastAPI:
    """The API of ``service`` as an ASGI application (run it with uvicorn)."""
    app = FastAPI(title="searchmerge merging service", version="1",
                  description="Published merged deployments for edge agents; their samples and statistics.")
    limit = service.settings.max_upload_bytes

    def edge_of(edge: str, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
        if credentials is None:
            raise _UNAUTHENTICATED
        name = authenticate(service.engine, service.deployment, credentials.credentials)
        if name is None:
            raise _UNAUTHENTICATED
        if name != edge:
            raise _FORBIDDEN
        return name

    Edge = Annotated[str, Depends(edge_of)]

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/edges/{edge}/version", response_model=VersionInfo, tags=["versions"])
    def version(edge: Edge) -> VersionInfo:
        """The version the edge should run: the newest one not withdrawn."""
        current = current_version(service.engine, service.deployment)
        if current is None:
            raise HTTPException(404, "no version published yet")
        return current

    @app.get("/v1/edges/{edge}/versions/{number}/{name}", tags=["versions"],
             responses={200: {"content": {"application/octet-stream": {}}}})
    def artifact(edge: Edge, number: int, name: Literal["manifest.json", "weights.safetensors"]) -> StreamingResponse:
        """A file of a version, as stored; verify it against the version's SHA-256."""
        info = get_version(service.engine, service.deployment, number)
        if info is None:
            raise HTTPException(404, f"no version {number}")
        digest, size = ((info.manifest_sha256, info.manifest_size) if name == MANIFEST_FILE
                        else (info.weights_sha256, info.weights_size))
        try:
            service.artifacts.check(number, name)  # never serve bytes known not to be the version's
        except CorruptBlob as exc:
            service.say(str(exc), logging.ERROR)
            raise HTTPException(503, f"version {number}'s stored {name} is damaged; the operator was told") from None
        chunks = read_artifact(service.engine, service.study, number, name)
        return StreamingResponse(chunks, media_type="application/octet-stream",
                                 headers={"X-Content-SHA256": digest, "Content-Length": str(size)})

    @app.post("/v1/edges/{edge}/samples", status_code=202, response_model=Accepted, tags=["edges"],
              openapi_extra=_body_schema(SampleBatch))
    async def upload_samples(edge: Edge, request: Request) -> Accepted:
        """Sampled frames (PNG or JPEG); labelled by the service and stored whole, or refused whole."""
        batch = _parse(SampleBatch, await _read_body(request, limit))
        try:
            stored = await run_in_threadpool(service.store_samples, edge, batch)
        except QuotaExceeded as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": str(math.ceil(exc.retry_after))}) from None
        except SampleTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except SearchmergeError as exc:
            raise HTTPException(422, str(exc)) from None
        return Accepted(accepted=stored)

    @app.post("/v1/edges/{edge}/stats", status_code=204, tags=["edges"], openapi_extra=_body_schema(EdgeStats))
    async def upload_stats(edge: Edge, request: Request) -> Response:
        """The edge's own statistics: frames per stream, version, switches, bytes loaded."""
        stats = _parse(EdgeStats, await _read_body(request, limit))
        await run_in_threadpool(service.record_stats, edge, stats)
        return Response(status_code=204)

    @app.get("/v1/edges/{edge}/status", response_model=ServiceStatus, tags=["versions"])
    def status(edge: Edge) -> ServiceStatus:
        """Versions, re-search jobs and the last drift check on the samples."""
        return service.status()

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (SampleBatch, EdgeStats):
                document = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(document.pop("$defs", {}))
                components[model.__name__] = document
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _body_schema(model: type[BaseModel]) -> dict[str, object]:
    """The OpenAPI request body of a route that reads its body itself (to limit its size first)."""
    reference = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": reference}}}}


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is larger than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")
    return bytes(body)


def _parse(model: type[_M], body: bytes) -> _M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None
