"""The edge's camera streams: the digits camera generator (with a drift switch) and frame folders.

A stream yields frames for one model, one after another, for ever (a stream loops over
its footage). A digits stream shows the generator's test footage of its model through
the model's camera; :meth:`DigitsStream.drift` turns a drift scenario on mid-run (the
same cameras, changed as the scenario says, on the scenario's own footage). Its frames
carry their provenance, so the service can label the samples. A folder stream shows
the images of a folder (PNG or JPEG, sorted by name), resized to the model's input and
normalised as the digits data are; its frames have no provenance and are not sampled. A
camera stream shows a folder of a camera's whole frames to a model on video footage, which
sees its region of them; each sampled frame goes to the service whole, for its teacher. A camera
stream drifts too (:meth:`CameraStream.drift`): the scenario's camera changes are applied to the
whole frame (:class:`~searchmerge.data.sources.video.CameraDrift`), which is then what the model
crops and what the teacher labels.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources import get_source
from searchmerge.data.sources.base import model_input
from searchmerge.data.sources.frames import crop_frame
from searchmerge.data.sources.video import CameraDrift
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import DigitsSource, Frame, encode_frame

__all__ = ["CameraStream", "DigitsStream", "FolderStream", "StreamFrame"]

#: Images in [0, 1] are normalised as ``(x - 0.5) / 0.5``, as the digits data are.
_MEAN, _STD = 0.5, 0.5
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class StreamFrame:
    """One frame: the image as the model takes it, and where it came from."""

    image: torch.Tensor
    index: int
    source: DigitsSource | None
    truth: int | None
    #: The camera's whole frame as it came (PNG or JPEG), sent as the sample for the service's teacher.
    sample: Frame | None = None
    #: The drift scenario the camera was in (``None``: undrifted).
    scenario: str | None = None


class DigitsStream:
    """The digits generator's footage of ``model``, in its camera, looping.

    Undrifted, the stream shows the test footage (frames no model was trained or judged on). In
    a drift scenario it shows all of the scenario's footage, train, validation and test in turn
    (no model has seen any of it): the service re-searches on the samples it is sent, and a
    stream that looped over a few hundred frames would send it the same frames again and again,
    so that the frames it judges a re-search on would be copies of those it trained on.

    Args:
        footage: The deployment's footage (:class:`~searchmerge.service.footage.Footage`).
        model: The model whose camera the stream is.
        split: Which footage to show undrifted.
    """

    #: How its frames were made from 8-bit pixels (the digits data's normalisation).
    normalisation = get_source("digits").normalisation

    def __init__(self, footage: Footage, model: str, *, split: str = "test") -> None:
        self.footage = footage
        self.model = model
        self.split = split
        self.scenario: str | None = None
        self._position = 0
        self._frames = self._load()

    def _load(self) -> list[tuple[str, Any]]:
        data = self.footage.data(self.scenario)
        if self.model not in data:
            raise SearchmergeError(f"the deployment has no model {self.model!r} for a digits stream")
        splits = (self.split,) if self.scenario is None else ("train", "val", "test")
        return [(split, getattr(data[self.model], split)) for split in splits]

    def drift(self, scenario: str | None) -> None:
        """Switch the camera to ``scenario`` (``None``: back to normal), from the next frame on."""
        self.scenario = scenario
        self._frames = self._load()
        self._position = 0

    def next(self) -> StreamFrame:
        position = self._position % sum(len(frames) for _, frames in self._frames)
        self._position += 1
        for split, frames in self._frames:
            if position < len(frames):
                break
            position -= len(frames)
        image, label = frames[position]
        source = DigitsSource(kind="digits", scenario=self.scenario, split=split, index=position)  # type: ignore[arg-type]
        return StreamFrame(image, position, source, int(label), scenario=self.scenario)


class FolderStream:
    """The images of a folder, sorted by name and looping, as ``shape`` (channels, height, width)."""

    normalisation = (_MEAN, _STD)

    def __init__(self, folder: Path, shape: tuple[int, ...]) -> None:
        self.files = _frame_files(folder)
        self.shape = shape
        self._position = 0

    def next(self) -> StreamFrame:
        from PIL import Image

        index = self._position % len(self.files)
        self._position += 1
        channels, height, width = self.shape
        with Image.open(self.files[index]) as picture:
            pixels = np.asarray(picture.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
        image = torch.from_numpy(pixels).reshape(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1)
        image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        image = image.expand(channels, -1, -1) if image.shape[0] == 1 else image[:channels]
        return StreamFrame(((image - _MEAN) / _STD).contiguous(), index, None, None)


class CameraStream:
    """A camera's whole frames (a folder of PNG or JPEG images, sorted, looping) for a model on video footage.

    The model sees its region of each frame, cropped and resized as the video source does
    (:func:`~searchmerge.data.sources.frames.crop_frame`), in [0, 1]. The frame itself, as the camera
    gave it, goes to the service as the sample: the service's teacher labels it there. Once
    :meth:`drift` is called, every frame is first changed as the scenario says (and re-encoded
    in its file's format for the sample).

    Args:
        folder: The frames.
        shape: The model's input (channels, height, width).
        region: The model's region (x0, y0, x1, y1, shares of the frame).
        seed: The study's seed (the drifted camera's noise is drawn from it and the frame's index).
    """

    normalisation = get_source("video").normalisation

    def __init__(self, folder: Path, shape: tuple[int, ...], region: tuple[float, float, float, float], *,
                 seed: int = 0) -> None:
        self.files = _frame_files(folder)
        self.shape = shape
        self.region = region
        self.seed = seed
        self.scenario: str | None = None
        self._camera: CameraDrift | None = None
        self._position = 0

    def drift(self, scenario: str | None, camera: CameraDrift | None = None) -> None:
        """Show every frame from the next one on through ``camera`` (``None``: as it came), as ``scenario``."""
        self.scenario = scenario if camera is not None else None
        self._camera = camera

    def next(self) -> StreamFrame:
        index = self._position % len(self.files)
        self._position += 1
        return self.frame(index)

    def frame(self, index: int) -> StreamFrame:
        """The ``index``-th frame of the folder as the camera shows it now (drifted or not)."""
        raw = self.files[index].read_bytes()
        encoding = "png" if self.files[index].suffix.lower() == ".png" else "jpeg"
        pixels = _decoded(raw)
        if self._camera is None:
            sample = Frame(encoding=encoding, data=base64.b64encode(raw).decode())
        else:
            pixels = self._camera.apply(pixels, self.seed, index)
            sample = encode_frame(pixels, encoding=encoding)
        height, width = pixels.shape[:2]
        x0, y0, x1, y1 = self.region
        box = (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))
        view = crop_frame(pixels, box, tuple(self.shape[1:]))  # type: ignore[arg-type]
        image = torch.from_numpy(model_input(view, self.normalisation))
        return StreamFrame(image, index, None, None, sample, self.scenario)


def _decoded(raw: bytes) -> np.ndarray:
    """A PNG or JPEG file's bytes as 8-bit RGB pixels (H x W x 3)."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.uint8)


def _frame_files(folder: Path) -> list[Path]:
    """The PNG and JPEG images of ``folder``, sorted by name; a folder without any is refused."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise SearchmergeError(f"frame folder {str(folder)!r} has no PNG or JPEG images")
    return files
