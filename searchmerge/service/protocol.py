"""What the edge and the merging service say to each other: the documents of the HTTP API.

Both sides use these pydantic models, so the service validates exactly what the edge
sends, and the OpenAPI schema (``/openapi.json``) describes them.

A **sample** is a frame the edge ran, as compact 8-bit pixels: PNG or JPEG bytes
(base64), either the camera's whole frame or a part of it with its position
(``region``). The service labels it itself, never from the edge's word: a model on video
footage by running the study's teacher on the pixels and asking the teacher's boxes the
model's question about its region; a model of the digits generator by the frame's
*provenance* (``source``: the camera generator's stream of the model, the drift scenario its
camera was in, the split and the frame's index), with the generator's own label.
"""

from __future__ import annotations

import base64
import binascii
import io
from datetime import datetime
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    """One frame's pixels, encoded (8-bit PNG or JPEG): the whole camera frame, or the part at ``region``."""

    encoding: Literal["png", "jpeg"]
    data: str = Field(description="base64 of the PNG or JPEG file's bytes")
    region: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=4, max_length=4)] | None = Field(
        default=None, description="where the image lies in the camera's whole frame: [left, top, right, bottom]"
        " in pixels; none: the image is the whole frame (or, for a provenance sample, the model's view)")

    @field_validator("data")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("frame data is not valid base64") from None
        return value

    @property
    def size(self) -> int:
        """The encoded image's bytes."""
        return len(self.data) * 3 // 4

    def encoded(self) -> bytes:
        return base64.b64decode(self.data)


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
    source: DigitsSource | None = Field(default=None, description="the digits generator's frame this is (its"
                                        " provenance labels it); none for camera footage, which the teacher labels")
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


def encode_frame(pixels: np.ndarray, *, encoding: str = "png", region: list[int] | None = None) -> Frame:
    """A frame document of 8-bit pixels (H x W x 3 RGB, or H x W x 1 grey), PNG (lossless) or JPEG encoded."""
    from PIL import Image

    array = np.asarray(pixels, dtype=np.uint8)
    image = Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    out = io.BytesIO()
    image.save(out, format="PNG" if encoding == "png" else "JPEG", **({"quality": 90} if encoding == "jpeg" else {}))
    return Frame(encoding=encoding, data=base64.b64encode(out.getvalue()).decode(), region=region)  # type: ignore[arg-type]
