"""Reading image files for the file sources: decode, resize, normalise, cache on disk.

Decoding a JPEG or PNG and resizing it costs more than the rest of a retraining step on a
small model, and a search reads the same images in every trial. The first read of an image
keeps its decoded, resized pixels (8-bit, as a ``.npy`` file named by the file's path,
size, modification time and the target size) in the study's data cache; later reads, by
any trial or worker process, load that instead. A changed image file has another name in
the cache, so a stale entry is never used. Nothing is held in memory between reads.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from searchmerge.core.errors import SearchmergeError

__all__ = ["IMAGE_SUFFIXES", "ImageReader", "channel_values", "image_files", "image_size_of", "image_size_option"]

#: File suffixes read as images (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_size_option(value: object, where: str) -> tuple[int, int] | None:
    """``image_size`` as (height, width): one integer for a square, or [H, W]."""
    if value is None:
        return None
    size = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise SearchmergeError(f"{where}: image_size must be a positive integer or [height, width], got {value!r}")
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class ImageReader:
    """Reads one image file as a float tensor 3 x H x W in [0, 1], optionally normalised.

    Attributes:
        size: (height, width) to resize to; ``None`` keeps each image's own size.
        mean: Per-channel mean subtracted after scaling to [0, 1] (with ``std``).
        std: Per-channel standard deviation divided by.
        cache_dir: Where decoded pixels are kept; ``None`` decodes on every read.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    cache_dir: Path | None = None

    def __call__(self, path: Path) -> torch.Tensor:
        pixels = torch.from_numpy(self.pixels(path)).permute(2, 0, 1).float().div_(255.0)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean).view(-1, 1, 1)
            std = torch.tensor(self.std).view(-1, 1, 1)
            pixels = (pixels - mean) / std
        return pixels

    def pixels(self, path: Path) -> np.ndarray:
        """The image's 8-bit RGB pixels (H x W x 3) at the reader's size, from the cache when there."""
        cached = self._cache_path(path)
        if cached is not None and cached.is_file():
            try:
                return np.load(cached)
            except (OSError, ValueError):
                pass  # a damaged cache entry is decoded again and rewritten
        pixels = self._decode(path)
        if cached is not None:
            save_cache_entry(cached, pixels)
        return pixels

    def _decode(self, path: Path) -> np.ndarray:
        return decode_image(path, self.size)

    def _cache_path(self, path: Path) -> Path | None:
        if self.cache_dir is None:
            return None
        try:
            stat = path.stat()
        except OSError as exc:
            raise SearchmergeError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from None
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.size}"
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.cache_dir / name[:2] / f"{name}.npy"


def decode_image(path: Path, size: tuple[int, int] | None = None, what: str = "image") -> np.ndarray:
    """An image file's 8-bit RGB pixels (H x W x 3), resized to ``size`` (height, width) when given.

    A file that does not decode is one line naming it, as ``what`` (an image, a video's frame).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SearchmergeError(f"{what} {str(path)!r} does not decode: {exc}") from None


def save_cache_entry(path: Path, pixels: np.ndarray) -> None:
    """Write a cache entry through a temporary file and a rename: readers never see half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, pixels)
        os.replace(temporary, path)
    except OSError:
        Path(temporary).unlink(missing_ok=True)  # a full or read-only disk only costs the cache


def channel_values(value: object, where: str, name: str) -> tuple[float, ...] | None:
    """A ``mean`` or ``std`` option: three numbers (one per RGB channel) or one for all."""
    if value is None:
        return None
    values: Sequence[object] = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value  # type: ignore[assignment]
    if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise SearchmergeError(f"{where}: {name} must be a number or three numbers (R, G, B), got {value!r}")
    if name == "std" and any(float(v) <= 0 for v in values):  # type: ignore[arg-type]
        raise SearchmergeError(f"{where}: std must be positive, got {value!r}")
    return tuple(float(v) for v in values)  # type: ignore[arg-type]


def image_size_of(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (UnidentifiedImageError, OSError) as exc:
        raise SearchmergeError(f"image {str(path)!r} does not decode: {exc}") from None
