"""The frames of footage, for the video source: a video file or a folder of images.

A video is read with PyAV (anything its bundled FFmpeg decodes: MP4, AVI, MKV, ...); a
folder of images is read as frames in file-name order. Decoding is the slow part of
reading footage, and every trial of a search reads the same frames, so the frames a model
uses, cropped to its region and resized, are decoded once and kept as one 8-bit ``.npy``
file (frames x H x W x 3) in the study's data cache. Its name covers the footage's
identity (path, size and modification time of every file), the region in pixels, the size
and the frames, so changed footage never reuses a stale entry; later reads, by any trial or
worker process, map that file into memory instead of decoding. Without a cache the crops are
held in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.base import file_identity
from searchmerge.data.sources.images import (
    decode_image,
    image_files,
    image_size_of,
    save_cache_entry,
)

__all__ = ["Crops", "Footage", "PixelBox", "crop_frame"]

#: A crop in pixels of the frame: left, top, right, bottom (right and bottom excluded).
PixelBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class Footage:
    """A video file or a folder of frame images, probed when made: its frame count and frame size.

    Attributes:
        path: The video file or the folder.
        frame_count: How many frames it has (video packets that carry a frame; images in the folder).
        height: Frame height in pixels.
        width: Frame width in pixels.
    """

    path: Path
    frame_count: int
    height: int
    width: int

    @classmethod
    def probe(cls, path: Path) -> Footage:
        """Open ``path`` and count its frames without decoding them; footage that does not open is refused."""
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise SearchmergeError(f"video folder {str(path)!r} has no image files (frames)")
            height, width = image_size_of(files[0])
            return cls(path, len(files), height, width)
        if not path.is_file():
            raise SearchmergeError(f"video {str(path)!r} does not exist")
        import av

        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise SearchmergeError(f"video {str(path)!r} has no video stream")
                stream = container.streams.video[0]
                height, width = stream.codec_context.height, stream.codec_context.width
                count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        except av.error.FFmpegError as exc:
            raise SearchmergeError(f"video {str(path)!r} does not open: {exc.strerror or exc}") from None
        if count == 0 or height <= 0 or width <= 0:
            raise SearchmergeError(f"video {str(path)!r} has no frames")
        return cls(path, count, height, width)

    @property
    def identity(self) -> dict[str, Any]:
        """What changes when the footage does: its path, and the size and modification time of its file(s)."""
        files = image_files(self.path) if self.path.is_dir() else [self.path]
        return {"path": str(self.path.resolve()), "files": file_identity(files, self.path.parent)}

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, as 8-bit RGB pixels (H x W x 3)."""
        if self.path.is_dir():
            yield from (_read_image(file, self.height, self.width) for file in image_files(self.path))
            return
        import av

        try:
            with av.open(str(self.path)) as container:
                for frame in container.decode(video=0):
                    yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise SearchmergeError(f"video {str(self.path)!r} does not decode: {exc.strerror or exc}") from None

    def crops(
        self, box: PixelBox, size: tuple[int, int] | None, indices: Sequence[int], cache_dir: Path | None
    ) -> Crops:
        """The frames ``indices`` (ascending) cropped to ``box`` and resized to ``size`` (height, width).

        Read from the cache when there; else decoded, and written to the cache when there is one.
        """
        cached = None
        if cache_dir is not None:
            key = repr((self.identity, box, size, list(indices)))  # one entry per footage, region, size and frames
            name = hashlib.sha256(key.encode()).hexdigest()
            cached = cache_dir / "video" / f"{name}.npy"
            if cached.is_file():
                try:
                    return Crops(np.load(cached, mmap_mode="r"), cached)
                except (OSError, ValueError):
                    pass  # a damaged entry is decoded again and rewritten
        wanted = set(indices)
        pixels = [crop_frame(frame, box, size) for index, frame in enumerate(self.frames()) if index in wanted]
        if len(pixels) != len(wanted):
            raise SearchmergeError(
                f"video {str(self.path)!r} decodes to fewer frames than its {self.frame_count}: frame"
                f" {max(wanted)} is not there"
            )
        array = np.stack(pixels)
        if cached is not None:
            save_cache_entry(cached, array)
        return Crops(array)


class Crops:
    """Cropped frames (frames x H x W x 3, 8-bit): mapped from a cache file, or held in memory.

    A worker process that receives these re-maps the cache file rather than copying its bytes.
    """

    def __init__(self, array: np.ndarray, path: Path | None = None) -> None:
        self._array: np.ndarray | None = array
        self.path = path
        self.shape: tuple[int, ...] = tuple(array.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")  # type: ignore[arg-type]
        return np.array(self._array[index])  # a copy: torch wants writable memory

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None
        return state


def _read_image(path: Path, height: int, width: int) -> np.ndarray:
    pixels = decode_image(path, what="frame")
    if pixels.shape[:2] != (height, width):
        raise SearchmergeError(
            f"frame {str(path)!r} is {pixels.shape[1]}x{pixels.shape[0]}, but the first frame of its folder is"
            f" {width}x{height}: every frame must have the same size"
        )
    return pixels


def crop_frame(frame: np.ndarray, box: PixelBox, size: tuple[int, int] | None) -> np.ndarray:
    """``frame`` (H x W x 3, 8-bit) cropped to ``box`` and resized to ``size`` (height, width): a camera's view.

    The video source's crops and the merging service's samples go through this one function,
    so a model sees a sampled frame exactly as it saw its training frames.
    """
    from PIL import Image

    left, top, right, bottom = box
    crop = frame[top:bottom, left:right]
    if size is None or crop.shape[:2] == size:
        return np.ascontiguousarray(crop)
    image = Image.fromarray(crop).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)

