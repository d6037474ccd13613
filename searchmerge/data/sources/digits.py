"""The digits demo source: real task data for edge-camera workloads from scikit-learn's digits.

Merging layers is only worth it if every merged model keeps its accuracy after joint
retraining, so the models need real data to be retrained and judged on. This module turns
scikit-learn's ``load_digits`` (1797 real 8x8 scans that ship inside the package, so
nothing is ever downloaded) into several *tasks* (digit, parity, loops, ...) seen through
a configurable *camera* (rotation, shift, blur, noise, exposure). Several models watching
the same scene with different tasks is exactly the edge-video setting searchmerge targets,
and a changed camera is the drift that :mod:`searchmerge.search.scenarios` re-checks a plan against.

Everything is deterministic: the same task, camera and seed give bit-identical tensors in
any process, so a :attr:`DigitsData.fingerprint` can key caches and checkpoints.

In a study file this is ``format: digits``, the data of a model without a ``data:``
section: its ``task:`` is one of the digit tasks, its ``camera:`` how it sees them, and
the top-level ``data: {image_size, channels}`` the image format. The demo ships no
trained models, so models on it without ``weights`` are made by the study's recipe
(pretrain + fine-tune, :mod:`searchmerge.training.recipe`).

Example:
    >>> from searchmerge.data.sources.digits import CameraCondition, make_task_data, shifted
    >>> day = CameraCondition(noise_std=0.02)
    >>> data = make_task_data("parity", day, seed=0)
    >>> data.num_classes, tuple(data.train.x.shape[1:])
    (2, (3, 32, 32))
    >>> night = shifted(day, brightness=-0.2, contrast=0.6, noise_std=0.1)
    >>> make_task_data("parity", night, seed=0).fingerprint != data.fingerprint
    True
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.base import Source, SourceContext, subsample_indices

__all__ = [
    "NORM_MEAN",
    "NORM_STD",
    "TASKS",
    "CameraCondition",
    "DigitsData",
    "DigitsSource",
    "MULTIPLIED",
    "Split",
    "Task",
    "apply_camera",
    "drift_camera",
    "get_task",
    "load_digit_images",
    "make_task_data",
    "register_task",
    "shifted",
    "stratified_subsample",
    "task_names",
    "validate_split",
]

#: Images in [0, 1] are normalised as ``(x - NORM_MEAN) / NORM_STD`` to [-1, 1]. Fixed
#: constants rather than per-dataset statistics, so that data seen through a drifted camera
#: is normalised exactly like the data the models were trained on (as a deployed model
#: would see it).
NORM_MEAN = 0.5
NORM_STD = 0.5

_DIGIT_SCALE = 16.0  # load_digits stores intensities as 0..16
_NATIVE_SIZE = 8


# --------------------------------------------------------------------------- camera


@dataclass(frozen=True)
class CameraCondition:
    """How a camera sees the scene; every default leaves the image unchanged.

    The fields are applied in the order light takes through a camera (see
    :func:`apply_camera`): pose (rotation, shift), optics (blur), exposure (contrast,
    brightness), sensor (noise), and finally saturation to [0, 1]. Fixed and random parts
    are separate fields so that a *moved* camera (a fixed rotation) and a *shaky* camera
    (random jitter per frame) can be told apart.

    Attributes:
        rotation_deg: Fixed rotation of every image in degrees, counter-clockwise as
            displayed; models a camera mounted at an angle.
        rotation_jitter_deg: Largest absolute extra rotation drawn uniformly per image;
            models a camera that wobbles. Must be >= 0.
        shift_px: Largest absolute translation, drawn uniformly per image and per axis, in
            pixels of the output image; models objects that are not centred in the crop.
            Must be >= 0.
        blur_sigma: Standard deviation in output pixels of a Gaussian blur; models an out of
            focus or dirty lens. Must be >= 0.
        noise_std: Standard deviation of additive Gaussian sensor noise on the [0, 1] scale;
            models low light / high gain. Must be >= 0. Like everything else it is clipped
            to [0, 1] at the end, so on black or white pixels half of it is cut off.
        brightness: Added to every pixel on the [0, 1] scale; negative is darker.
        contrast: Factor applied around each image's mean; below 1 is flatter (haze, night).
            Must be > 0, since 0 would erase every image.
    """

    rotation_deg: float = 0.0
    rotation_jitter_deg: float = 0.0
    shift_px: float = 0.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    brightness: float = 0.0
    contrast: float = 1.0

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SearchmergeError(
                    f"camera condition {spec.name!r} must be a number, got {value!r}"
                )
            if not math.isfinite(value):
                raise SearchmergeError(
                    f"camera condition {spec.name!r} must be finite, got {value!r}"
                )
            # Store floats so that to_dict() and the stable seed do not depend on whether a
            # YAML file wrote 1 or 1.0.
            object.__setattr__(self, spec.name, float(value))
        for name in ("rotation_jitter_deg", "shift_px", "blur_sigma", "noise_std"):
            if getattr(self, name) < 0:
                raise SearchmergeError(
                    f"camera condition {name!r} must be >= 0, got {getattr(self, name)!r}"
                )
        if self.contrast <= 0:
            raise SearchmergeError(
                f"camera condition 'contrast' must be > 0, got {self.contrast!r}"
            )

    @property
    def is_neutral(self) -> bool:
        """Whether this condition leaves images exactly as they are."""
        return self == CameraCondition()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CameraCondition:
        """Build a condition from a mapping such as a parsed YAML study file.

        Args:
            values: Field names to numbers; missing fields keep their neutral default.

        Returns:
            The validated condition.

        Raises:
            SearchmergeError: If a key is not a field or a value is invalid.
        """
        if not isinstance(values, Mapping):
            raise SearchmergeError(
                f"a camera condition must be a mapping, got {type(values).__name__}"
            )
        known = _camera_field_names()
        unknown = sorted(str(key) for key in values if key not in known)
        if unknown:
            raise SearchmergeError(
                f"unknown camera condition field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(known)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        """All fields as plain floats; ``from_dict(c.to_dict()) == c``."""
        return dataclasses.asdict(self)


def _camera_field_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in dataclasses.fields(CameraCondition))


def shifted(camera: CameraCondition, **changes: float) -> CameraCondition:
    """A copy of ``camera`` with some fields changed, validated like a new one.

    Drift scenarios are written as changes to the deployed camera ("the same camera at
    night: darker, flatter, noisier"), which reads better than repeating every field.

    Args:
        camera: The condition to start from.
        **changes: Fields to replace, e.g. ``brightness=-0.3``.

    Returns:
        The changed condition.

    Raises:
        SearchmergeError: If a name is not a field or a value is invalid.
    """
    known = _camera_field_names()
    unknown = sorted(name for name in changes if name not in known)
    if unknown:
        raise SearchmergeError(
            f"unknown camera condition field(s) {', '.join(unknown)}; "
            f"known fields: {', '.join(known)}"
        )
    return dataclasses.replace(camera, **changes)


def apply_camera(
    images: torch.Tensor,
    camera: CameraCondition,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """See ``images`` through ``camera``: a pure function of its inputs.

    Kept separate from dataset creation so that a drift scenario can show the same scenes
    through a changed camera. Steps whose fields are neutral are skipped, so the neutral
    condition returns an exact copy of the input. The whole batch is processed at once.

    Args:
        images: Float tensor ``N x C x H x W`` with values in [0, 1] (background 0).
        camera: The condition to apply.
        generator: Source of the random rotation, shift and noise. ``None`` uses a fresh
            generator seeded from the condition, so that results are still reproducible.

    Returns:
        A new tensor of the same shape and dtype, clamped to [0, 1]; the input is not
        modified.

    Raises:
        SearchmergeError: If ``images`` is not a 4-D floating point tensor.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise SearchmergeError("apply_camera expects a tensor of shape N x C x H x W")
    if not images.is_floating_point():
        raise SearchmergeError(f"apply_camera expects float images, got {images.dtype}")
    if generator is None:
        generator = torch.Generator().manual_seed(_stable_seed("apply_camera", camera))
    out = images.clone()
    if camera.rotation_deg or camera.rotation_jitter_deg or camera.shift_px:
        out = _apply_pose(out, camera, generator)
    if camera.blur_sigma:
        out = _gaussian_blur(out, camera.blur_sigma)
    if camera.contrast != 1.0:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * camera.contrast + mean
    if camera.brightness:
        out = out + camera.brightness
    if camera.noise_std:
        out = out + camera.noise_std * _randn(out.shape, generator).to(out)
    return out.clamp_(0.0, 1.0)


def _uniform(n: int, bound: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` float64 draws from U(-bound, bound) on the CPU."""
    draws = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    return (draws * 2.0 - 1.0).cpu() * bound


def _randn(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device)


def _apply_pose(
    images: torch.Tensor, camera: CameraCondition, generator: torch.Generator
) -> torch.Tensor:
    """Rotate about the centre, then translate, with one ``grid_sample`` for the batch.

    Pixels that come from outside the frame are background (0), as for a digit on paper.
    """
    n, _, height, width = images.shape
    angles = torch.full((n,), math.radians(camera.rotation_deg), dtype=torch.float64)
    if camera.rotation_jitter_deg:
        angles = angles + torch.deg2rad(_uniform(n, camera.rotation_jitter_deg, generator))
    shift = torch.zeros(n, 2, dtype=torch.float64)
    if camera.shift_px:
        shift[:, 0] = _uniform(n, camera.shift_px, generator)
        shift[:, 1] = _uniform(n, camera.shift_px, generator)
    # affine_grid maps each output position to the input position it samples from, in
    # coordinates where the image spans [-1, 1] (one pixel is 2 / size wide). A content
    # point p ends up at R(-a) p + t, so the sampler needs p = R(a) (out - t). With y
    # pointing down, R(-a) is a counter-clockwise turn on screen.
    cos, sin = torch.cos(angles), torch.sin(angles)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)
    t = shift * torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    offset = -(rotation @ t.unsqueeze(-1))
    theta = torch.cat([rotation, offset], dim=2).to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with edge-replicating borders.

    Written as a weighted sum of shifted slices rather than ``conv2d`` so that the result is
    bit-identical whatever backend or thread count a convolution would pick; the kernels are
    a few taps long, so this is as fast.
    """
    kernel = _gaussian_kernel(sigma).tolist()
    radius = len(kernel) // 2
    height, width = images.shape[-2:]
    padded = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    rows = sum(w * padded[..., :, k : k + width] for k, w in enumerate(kernel))
    padded = F.pad(rows, (0, 0, radius, radius), mode="replicate")
    return sum(w * padded[..., k : k + height, :] for k, w in enumerate(kernel))


def _stable_seed(*parts: object) -> int:
    """A 63-bit seed from a SHA-256 of ``parts``, equal in every process.

    Python's ``hash()`` of strings is salted per process, so it cannot be used here.
    """
    text = json.dumps(
        [p.to_dict() if isinstance(p, CameraCondition) else p for p in parts],
        sort_keys=True,
    )
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """A named question asked about each digit, answered by a class index.

    Most tasks are functions of the digit, so one set of features (which digit is it?)
    serves them all. A *turned* task asks about the picture instead: every image is turned
    by 0-3 quarter turns (drawn per image from the seed) and the class is the number of
    turns, whatever the digit. Its features conflict with those of the upright-digit tasks,
    which is what makes sharing layers between them cost accuracy.

    Attributes:
        name: Registry name, e.g. ``"parity"``.
        labels: The class of each digit 0..9; classes are 0..num_classes-1. For a turned
            task, the classes themselves (0..3).
        description: One line for reports.
        turned: The class is the image's number of quarter turns, not a function of the digit.
    """

    name: str
    labels: tuple[int, ...]
    description: str = ""
    turned: bool = False

    @property
    def num_classes(self) -> int:
        """How many classes the task has."""
        return max(self.labels) + 1

    def label(self, digits: np.ndarray) -> np.ndarray:
        """Class of every digit in ``digits`` as an int64 array (vectorised lookup)."""
        return np.asarray(self.labels, dtype=np.int64)[np.asarray(digits)]


_TASKS: dict[str, Task] = {}

#: Read-only view of the registered tasks by name.
TASKS: Mapping[str, Task] = types.MappingProxyType(_TASKS)


def register_task(
    name: str,
    num_classes: int,
    label_of: Callable[[int], int],
    *,
    description: str = "",
) -> Task:
    """Register a task by name so that workloads and study files can refer to it.

    The label function is evaluated once on the ten digits and stored as a table, which
    keeps labelling fast and lets the classes be checked here rather than mid-training.

    Args:
        name: New, unique task name.
        num_classes: Number of classes; ``label_of`` must return each of 0..num_classes-1.
        label_of: Class of a digit 0..9.
        description: One line for reports.

    Returns:
        The registered task.

    Raises:
        SearchmergeError: If the name is taken or the labels do not cover the classes.
    """
    if name in _TASKS:
        raise SearchmergeError(f"task {name!r} is already registered")
    labels = tuple(int(label_of(digit)) for digit in range(10))
    if num_classes < 2 or sorted(set(labels)) != list(range(num_classes)):
        raise SearchmergeError(
            f"task {name!r} must label the digits with each of classes 0..{num_classes - 1} "
            f"(at least 2 classes), got {labels}"
        )
    task = Task(name=name, labels=labels, description=description)
    _TASKS[name] = task
    return task


def task_names() -> tuple[str, ...]:
    """Names of all registered tasks, sorted."""
    return tuple(sorted(_TASKS))


def get_task(name: str) -> Task:
    """The registered task called ``name``.

    Raises:
        SearchmergeError: If no such task exists; the message lists the known ones.
    """
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise SearchmergeError(
            f"unknown task {name!r}; known tasks: {', '.join(task_names())}"
        ) from None


_LOOPS = {0: 1, 6: 1, 9: 1, 8: 2}

register_task("digit", 10, lambda d: d, description="which digit 0-9")
register_task("parity", 2, lambda d: d % 2, description="even (0) or odd (1)")
register_task("high", 2, lambda d: int(d >= 5), description="digit >= 5")
register_task("mod3", 3, lambda d: d % 3, description="digit modulo 3")
register_task(
    "loops", 3, lambda d: _LOOPS.get(d, 0), description="closed loops: 0,6,9 -> 1; 8 -> 2"
)
_TASKS["turns"] = Task(
    name="turns", labels=(0, 1, 2, 3), turned=True,
    description="how many quarter turns the picture is rotated (any digit)",
)
register_task("prime", 2, lambda d: int(d in (2, 3, 5, 7)), description="2, 3, 5 or 7")


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True, eq=False)
class Split(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and labels of one split (train, val or test), held in memory (1797 digits at most).

    A map-style dataset, so it is read through a ``DataLoader`` like every other source's.
    Compared by identity (``eq=False``): comparing tensors element-wise is the caller's
    choice (``torch.equal``), not something ``==`` should hide.

    Attributes:
        x: Float32 images ``N x C x H x W``.
        y: Int64 labels ``N``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or self.x.dim() != 4:
            raise SearchmergeError("split images must be a tensor of shape N x C x H x W")
        if self.x.dtype != torch.float32:
            raise SearchmergeError(f"split images must be float32, got {self.x.dtype}")
        if not isinstance(self.y, torch.Tensor) or self.y.dim() != 1:
            raise SearchmergeError("split labels must be a 1-D tensor")
        if self.y.dtype != torch.int64:
            raise SearchmergeError(f"split labels must be int64, got {self.y.dtype}")
        if len(self.x) != len(self.y):
            raise SearchmergeError(
                f"split has {len(self.x)} images but {len(self.y)} labels"
            )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def validate_split(split: Split, name: str, *, task: str | None = None) -> None:
    """Check that a split can train or judge a classifier.

    An empty split makes accuracy undefined, and a single class makes it meaningless (a
    constant predictor is perfect), so both are refused before any training is spent.

    Args:
        split: The split to check.
        name: Its name for the message, e.g. ``"val"``.
        task: The task name for the message, if known.

    Raises:
        SearchmergeError: If the split is empty, has a single class or negative labels.
    """
    where = f"split {name!r}" + (f" of task {task!r}" if task is not None else "")
    if len(split) == 0:
        raise SearchmergeError(f"{where} is empty")
    classes = torch.unique(split.y)
    if int(classes[0]) < 0:
        raise SearchmergeError(f"{where} has negative labels")
    if len(classes) < 2:
        raise SearchmergeError(
            f"{where} has a single class ({int(classes[0])}); it needs at least two"
        )


def stratified_subsample(split: Split, fraction: float, *, seed: int) -> Split:
    """A deterministic subsample with every class kept in proportion.

    Retraining candidate plans on a fraction of the data is what makes the search
    affordable; keeping every class (at least one example each) keeps the accuracy of the
    subsample comparable with the full one.

    Args:
        split: The split to subsample.
        fraction: Share of each class to keep, in (0, 1].
        seed: Chooses which examples; the same seed gives the same subsample.

    Returns:
        A new split, examples in their original order.

    Raises:
        SearchmergeError: If ``fraction`` is not in (0, 1].
    """
    index = torch.from_numpy(subsample_indices(len(split), split.y.numpy(), fraction, seed=seed))
    return Split(x=split.x[index], y=split.y[index])


# --------------------------------------------------------------------------- task data


@dataclass(frozen=True, eq=False)
class DigitsData:
    """The train, val and test data of one digit task seen through one camera.

    Validated on construction: every split must be non-empty, hold at least two classes
    and labels below ``num_classes``, and all splits must share one image shape.

    Attributes:
        train: Data to (re)train on.
        val: Data to judge candidate plans and stop early on.
        test: Held-out data for the final report.
        num_classes: Number of classes of the task.
        task: Task name.
        camera: Camera condition the images were seen through.
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    task: str
    camera: CameraCondition = CameraCondition()

    def __post_init__(self) -> None:
        shapes = {tuple(split.x.shape[1:]) for _, split in self.splits()}
        if len(shapes) != 1:
            raise SearchmergeError(
                f"splits of task {self.task!r} have different image shapes {sorted(shapes)}"
            )
        for name, split in self.splits():
            validate_split(split, name, task=self.task)
            if int(split.y.max()) >= self.num_classes:
                raise SearchmergeError(
                    f"split {name!r} of task {self.task!r} has label {int(split.y.max())} "
                    f"but the task has {self.num_classes} classes"
                )

    @property
    def kind(self) -> str:
        """Every digit task is a classification."""
        return "classification"

    @property
    def description(self) -> str:
        return f"digits task {self.task!r}"

    def class_labels(self, split: str) -> np.ndarray:
        """The class of every sample of ``split`` (for stratified subsamples)."""
        return getattr(self, split).y.numpy()

    def splits(self) -> tuple[tuple[str, Split], ...]:
        """``(name, split)`` pairs in the order train, val, test."""
        return (("train", self.train), ("val", self.val), ("test", self.test))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of every image, for building models."""
        channels, height, width = self.train.x.shape[1:]
        return (channels, height, width)

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the task name and every split's tensors.

        Equal data gives an equal fingerprint in any process on the same platform, so it
        can key cached evaluations and checkpoints. Computed on each access (hashing a few
        tens of MB takes milliseconds), so it stays right even if a tensor is edited.
        """
        digest = hashlib.sha256()
        digest.update(f"task={self.task};classes={self.num_classes}".encode())
        for name, split in self.splits():
            for tensor in (split.x, split.y):
                header = f";{name}:{tensor.dtype}:{tuple(tensor.shape)};"
                digest.update(header.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().data)
        return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digit scans (float32, 0..16) and their digits, loaded once per process."""
    from sklearn.datasets import load_digits  # ships with scikit-learn; no download

    bunch = load_digits()
    images = bunch.images.astype(np.float32)
    digits = bunch.target.astype(np.int64)
    images.flags.writeable = False
    digits.flags.writeable = False
    return images, digits


def load_digit_images(image_size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """All 1797 digits upsampled to ``image_size`` with values in [0, 1].

    Args:
        image_size: Output height and width in pixels (>= 8); bilinear upsampling.

    Returns:
        Images ``1797 x 1 x image_size x image_size`` (float32) and the digit of each.
    """
    _check_int("image_size", image_size, minimum=_NATIVE_SIZE)
    images, digits = _digits()
    native = torch.from_numpy(images.copy()).unsqueeze(1) / _DIGIT_SCALE
    if image_size == _NATIVE_SIZE:
        return native, digits
    upsampled = F.interpolate(
        native, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    return upsampled, digits


def make_task_data(
    task: str,
    camera: CameraCondition | None = None,
    *,
    seed: int = 0,
    image_size: int = 32,
    channels: int = 3,
    splits: Sequence[float] = (0.6, 0.2, 0.2),
) -> DigitsData:
    """Real data for one task, seen through one camera, split for training.

    The split depends only on ``seed`` (it is stratified by digit, so it is the same for
    every task and camera): the same scenes can be compared under a drifted camera, and a
    model pretrained on one task's training images never saw another task's test images. The camera's randomness depends on the
    seed, task and condition, through a stable hash.

    Args:
        task: A registered task name (see :func:`task_names`).
        camera: How the images are seen; ``None`` is the neutral camera.
        seed: Fixes the split and the camera's randomness (0 <= seed < 2**32).
        image_size: Height and width of the images (>= 8).
        channels: Number of identical channels, e.g. 3 for ImageNet-style models.
        splits: Train, val and test shares; positive and summing to 1.

    Returns:
        The validated :class:`DigitsData`; images are float32 normalised with
        :data:`NORM_MEAN` and :data:`NORM_STD`.

    Raises:
        SearchmergeError: If an argument is invalid or a split would lack a class.

    Example:
        >>> data = make_task_data("loops", seed=1, image_size=16, channels=1)
        >>> data.input_shape, data.num_classes
        ((1, 16, 16), 3)
    """
    spec = get_task(task)
    camera = CameraCondition() if camera is None else camera
    if not isinstance(camera, CameraCondition):
        raise SearchmergeError(
            f"camera must be a CameraCondition, got {type(camera).__name__}"
        )
    _check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    _check_int("channels", channels, minimum=1)
    images, digits = load_digit_images(image_size)
    if spec.turned:
        images, labels = _quarter_turned(images, seed=_stable_seed(seed, task, "turns"))
    else:
        labels = spec.label(digits)
    # Split by the digit, not the task label: every task of one seed then uses the same
    # images for training, so pretraining on one task never sees another task's test set.
    parts = _split_indices(digits, _check_shares(splits), seed=seed, task=task)

    generator = torch.Generator().manual_seed(_stable_seed(seed, task, camera))
    seen = apply_camera(images, camera, generator)
    x = ((seen - NORM_MEAN) / NORM_STD).expand(-1, channels, -1, -1)
    y = torch.from_numpy(labels)
    train, val, test = (
        Split(x=x[torch.from_numpy(idx)].contiguous(), y=y[torch.from_numpy(idx)])
        for idx in parts
    )
    return DigitsData(
        train=train, val=val, test=test, num_classes=spec.num_classes, task=task, camera=camera
    )


def _quarter_turned(images: torch.Tensor, *, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Every image turned by 0-3 quarter turns (drawn from ``seed``), and the turns."""
    turns = np.random.default_rng(seed).integers(0, 4, size=len(images))
    turned = torch.stack([torch.rot90(image, int(k), dims=(1, 2)) for image, k in zip(images, turns)])
    return turned, turns.astype(np.int64)


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SearchmergeError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SearchmergeError(f"{name} must be {bound}, got {value!r}")


def _check_shares(splits: Sequence[float]) -> tuple[float, float, float]:
    shares = tuple(splits)
    if (
        len(shares) != 3
        or any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in shares)
        or any(not s > 0 for s in shares)
        or not math.isclose(sum(shares), 1.0, abs_tol=1e-6)
    ):
        raise SearchmergeError(
            f"splits must be three positive shares (train, val, test) summing to 1, "
            f"got {splits!r}"
        )
    return shares  # type: ignore[return-value]


def _split_indices(
    labels: np.ndarray, shares: tuple[float, float, float], *, seed: int, task: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test, each stratified by label and sorted."""
    from sklearn.model_selection import train_test_split

    train_share, val_share, _ = shares
    index = np.arange(len(labels))
    try:
        train, rest = train_test_split(
            index, train_size=train_share, stratify=labels, random_state=seed
        )
        val, test = train_test_split(
            rest,
            train_size=val_share / (1.0 - train_share),
            stratify=labels[rest],
            random_state=seed,
        )
    except ValueError as error:  # too small a share to hold every class
        raise SearchmergeError(
            f"cannot split task {task!r} with shares {shares}: {error}"
        ) from None
    return np.sort(train), np.sort(val), np.sort(test)


# --------------------------------------------------------------------------- drift and source

#: The camera field that a drift multiplies; every other field adds.
MULTIPLIED = frozenset({"contrast"})


def drift_camera(camera: CameraCondition, changes: Mapping[str, float]) -> CameraCondition:
    """Apply drift ``changes`` to ``camera``: offsets add, ``contrast`` multiplies.

    Adding keeps a camera's own character (a camera that was already dim gets dimmer
    at night); multiplying contrast keeps it positive, as a contrast must be.
    """
    values = {}
    for name, change in changes.items():
        if isinstance(change, bool) or not isinstance(change, (int, float)):
            raise SearchmergeError(f"drift change {name!r} must be a number, got {change!r}")
        current = getattr(camera, name, None)
        values[name] = current * change if name in MULTIPLIED else (current or 0.0) + change
    return shifted(camera, **values)  # validates names and values (e.g. no negative noise)


class DigitsSource(Source):
    """``format: digits`` (the default without ``data:``): ``camera``, ``image_size``, ``channels``.

    ``image_size`` and ``channels`` default to the study file's top-level ``data:`` section
    (32 and 3). The model's ``task:`` names the digit task.
    """

    keys = frozenset({"camera", "image_size", "channels"})
    normalisation = (NORM_MEAN, NORM_STD)
    kind = "classification"
    makes_originals = True

    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> DigitsData:
        return make_task_data(
            task,
            camera_of(options),
            seed=context.seed,
            image_size=options.get("image_size", context.defaults.get("image_size", 32)),
            channels=options.get("channels", context.defaults.get("channels", 3)),
        )

    def check(self, options: Mapping[str, Any], task: str) -> None:
        get_task(task)
        camera_of(options)

    def task_kind(self, task: str) -> str | None:
        return "classification" if task in _TASKS else None

    def drifted(self, options: Mapping[str, Any], changes: Mapping[str, float]) -> dict[str, Any]:
        return {**options, "camera": drift_camera(camera_of(options), changes).to_dict()}


def camera_of(options: Mapping[str, Any]) -> CameraCondition:
    """The camera of a digits ``data:`` section (the model's ``camera:``); neutral when absent."""
    camera = options.get("camera") or {}
    if isinstance(camera, CameraCondition):
        return camera
    if not isinstance(camera, Mapping):
        raise SearchmergeError(f"'camera' must be a mapping, got {camera!r}")
    return CameraCondition.from_dict(dict(camera))
