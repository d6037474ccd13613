"""What the edge and the merging service say to each other: the documents of the HTTP API.

Both sides use these pydantic models, so the service validates exactly what the edge
sends, and the OpenAPI schema (``/openapi.json``) describes them.

A **sample** is a frame the edge ran, as the model saw it (``float32``, channels x
height x width, base64 of the little-endian bytes), with its *provenance*: which
generator made it. For the digits workload that is the camera generator's stream of a
model (``scenario``: the drift scenario the camera was in, or none), its split and the
frame's index in it. The service labels the frame from that provenance with the
generator's own label, so the edge never has to know (or be trusted with) the truth.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Accepted",
    "DigitsSource",
    "EdgeStats",
    "Frame",
    "JobInfo",
    "Sample",
    "SampleBatch",
    "ServiceStatus",
    "StreamStats",
    "VersionInfo",
    "encode_frame",
]

#: The most samples one upload may carry (the byte limit applies too).
MAX_SAMPLES = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionInfo(_Strict):
    """A published deployment: what to download, the checksums to verify it with, and the
    signature of the operator's key (see :mod:`searchmerge.service.signing`)."""

    version: int
    created_at: datetime
    source_study: str
    trial: int
    scenario: str | None
    manifest_sha256: str
    manifest_size: int
    weights_sha256: str
    weights_size: int
    signature: str | None = Field(default=None, description="base64 Ed25519 signature of the version's number and"
                                  " manifest SHA-256; none when the service has no signing key")
    signed_by: str | None = Field(default=None, description="the signing key's id (16 hex digits)")


class Frame(_Strict):
    """One image as the model sees it: ``float32``, ``shape`` = channels, height, width."""

    dtype: Literal["float32"]
    shape: Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=3, max_length=3)]
    data: str = Field(description="base64 of the little-endian float32 values, row-major")

    @model_validator(mode="after")
    def _fits(self) -> Frame:
        self.array()  # the bytes must be the shape's worth of finite floats
        return self

    def array(self) -> np.ndarray:
        """The frame as a ``float32`` array of ``shape``."""
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("frame data is not valid base64") from None
        expected = math.prod(self.shape) * 4
        if len(raw) != expected:
            raise ValueError(f"frame data has {len(raw)} bytes; shape {self.shape} of float32 needs {expected}")
        values = np.frombuffer(raw, dtype="<f4").reshape(self.shape)
        if not np.isfinite(values).all():
            raise ValueError("frame data holds values that are not finite")
        return values


class DigitsSource(_Strict):
    """Where a frame of the digits camera generator comes from, so the service can label it."""

    kind: Literal["digits"]
    scenario: str | None = Field(default=None, max_length=255, description="the drift scenario the camera was in")
    split: Literal["train", "val", "test"] = "test"
    index: int = Field(ge=0, description="the frame's index in the split")


class Sample(_Strict):
    """One sampled frame of one model's stream."""

    model: str = Field(min_length=1, max_length=255)
    frame: Frame
    source: DigitsSource
    version: int | None = Field(default=None, description="the version the edge ran the frame with")
    prediction: int | None = Field(default=None, description="what that version predicted")


class SampleBatch(_Strict):
    """An upload of sampled frames; stored whole or not at all."""

    samples: Annotated[list[Sample], Field(min_length=1, max_length=MAX_SAMPLES)]


class StreamStats(_Strict):
    """Frames of one stream so far."""

    model: str
    processed: int = Field(ge=0)
    dropped: int = Field(ge=0)


class EdgeStats(_Strict):
    """What an edge reports about itself."""

    version: int | None = None
    streams: dict[str, StreamStats] = Field(default_factory=dict)
    switches: int = Field(default=0, ge=0)
    refused: int = Field(default=0, ge=0)
    runtime_swaps: int = Field(default=0, ge=0)
    bytes_loaded: int = Field(default=0, ge=0)

    @field_validator("streams")
    @classmethod
    def _few_streams(cls, value: dict[str, StreamStats]) -> dict[str, StreamStats]:
        if len(value) > 256:
            raise ValueError("at most 256 streams")
        return value


class Accepted(_Strict):
    """How many samples an upload stored."""

    accepted: int


class JobInfo(_Strict):
    """A re-search the service started after a drift."""

    id: int
    parent_study: str
    scenario: str
    study_name: str
    state: str
    n_trials: int
    detected_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    version: int | None
    message: str
    attempts: int = Field(default=0, description="how often the job was started (a crash counts)")
    holder: str | None = Field(default=None, description="the process running it (host:pid:id), if any")


class ServiceStatus(_Strict):
    """The deployment's versions, its re-search jobs and the last drift check on the samples."""

    deployment: str
    current: int | None
    versions: list[VersionInfo]
    jobs: list[JobInfo]
    check: dict[str, object] | None


def encode_frame(values: np.ndarray) -> Frame:
    """A frame document of a ``float32`` array of shape channels x height x width."""
    array = np.ascontiguousarray(values, dtype="<f4")
    return Frame(dtype="float32", shape=list(array.shape), data=base64.b64encode(array.tobytes()).decode())
