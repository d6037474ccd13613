"""Tests for searchmerge.data.sources.digits (the digits demo source): real digit tasks seen through a configurable camera."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.digits import (
    NORM_MEAN,
    NORM_STD,
    TASKS,
    CameraCondition,
    DigitsData,
    Split,
    apply_camera,
    get_task,
    load_digit_images,
    make_task_data,
    register_task,
    shifted,
    stratified_subsample,
    task_names,
    validate_split,
)

EXPECTED_CLASSES = {"digit": 10, "parity": 2, "high": 2, "mod3": 3, "loops": 3, "prime": 2}
NUM_DIGITS = 1797
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits16() -> torch.Tensor:
    """A small batch of real digits in [0, 1], 16x16, one channel."""
    images, _ = load_digit_images(16)
    return images[:64]


def _split(labels: list[int]) -> Split:
    return Split(x=torch.zeros(len(labels), 1, 8, 8), y=torch.tensor(labels, dtype=torch.int64))


# --------------------------------------------------------------------------- tasks


@pytest.mark.parametrize(("task", "num_classes"), sorted(EXPECTED_CLASSES.items()))
def test_shapes_dtypes_and_classes_per_task(task: str, num_classes: int) -> None:
    data = make_task_data(task, CameraCondition(), image_size=16, channels=3)
    assert data.task == task
    assert data.num_classes == num_classes
    assert data.input_shape == (3, 16, 16)
    assert sum(len(split) for _, split in data.splits()) == NUM_DIGITS
    for _, split in data.splits():
        assert split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64
        assert split.x.shape[1:] == (3, 16, 16)
        assert split.x.min() >= -1.0 and split.x.max() <= 1.0
        # Stratified: every class in every split.
        assert torch.unique(split.y).tolist() == list(range(num_classes))


def test_split_shares_follow_the_requested_fractions() -> None:
    data = make_task_data("digit", splits=(0.6, 0.2, 0.2), image_size=8)
    assert len(data.train) == pytest.approx(0.6 * NUM_DIGITS, abs=2)
    assert len(data.val) == pytest.approx(0.2 * NUM_DIGITS, abs=2)
    assert len(data.test) == pytest.approx(0.2 * NUM_DIGITS, abs=2)


def test_task_labels_are_the_documented_functions_of_the_digit() -> None:
    assert get_task("digit").labels == tuple(range(10))
    assert get_task("parity").labels == (0, 1, 0, 1, 0, 1, 0, 1, 0, 1)
    assert get_task("high").labels == (0, 0, 0, 0, 0, 1, 1, 1, 1, 1)
    assert get_task("mod3").labels == (0, 1, 2, 0, 1, 2, 0, 1, 2, 0)
    assert get_task("loops").labels == (1, 0, 0, 0, 0, 0, 1, 0, 2, 1)
    assert get_task("prime").labels == (0, 0, 1, 1, 0, 1, 0, 1, 0, 0)
    assert set(EXPECTED_CLASSES) <= set(task_names()) == set(TASKS)


def test_labels_of_a_derived_task_agree_with_the_digit_task() -> None:
    digit = make_task_data("digit", image_size=8, channels=1)
    loops = make_task_data("loops", image_size=8, channels=1)
    # Same neutral images, so an image's loop label must follow from its digit label.
    by_image = {bytes(x.numpy()): int(y) for x, y in zip(digit.train.x, digit.train.y)}
    table = get_task("loops").labels
    for x, y in zip(loops.test.x, loops.test.y):
        key = bytes(x.numpy())
        if key in by_image:
            assert table[by_image[key]] == int(y)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(SearchmergeError, match="unknown task 'colour'.*digit.*parity"):
        make_task_data("colour", CameraCondition())


def test_register_task_checks_classes_and_duplicates() -> None:
    with pytest.raises(SearchmergeError, match="already registered"):
        register_task("digit", 10, lambda d: d)
    with pytest.raises(SearchmergeError, match="classes 0..2"):
        register_task("bad_gap", 3, lambda d: 0 if d < 5 else 2)
    with pytest.raises(SearchmergeError, match="at least 2"):
        register_task("bad_one", 1, lambda d: 0)
    assert "bad_gap" not in TASKS and "bad_one" not in TASKS


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_tensors() -> None:
    camera = CameraCondition(rotation_jitter_deg=10, shift_px=2, noise_std=0.05)
    a = make_task_data("parity", camera, seed=3, image_size=16)
    b = make_task_data("parity", camera, seed=3, image_size=16)
    for (_, sa), (_, sb) in zip(a.splits(), b.splits()):
        assert torch.equal(sa.x, sb.x)
        assert torch.equal(sa.y, sb.y)
    assert a.fingerprint == b.fingerprint


def test_different_seed_gives_a_different_split() -> None:
    a = make_task_data("parity", seed=0, image_size=8)
    b = make_task_data("parity", seed=1, image_size=8)
    assert len(a.train) == len(b.train)
    assert not torch.equal(a.train.x, b.train.x)
    assert a.fingerprint != b.fingerprint


def test_split_does_not_depend_on_the_camera() -> None:
    # Drift compares the same scenes under another camera: only the pixels may change.
    day = make_task_data("digit", seed=5, image_size=8)
    night = make_task_data("digit", CameraCondition(brightness=-0.2), seed=5, image_size=8)
    assert torch.equal(day.test.y, night.test.y)
    assert not torch.equal(day.test.x, night.test.x)


def test_splits_partition_the_plain_upsampled_digits() -> None:
    images, _ = load_digit_images(16)
    plain = {bytes(img.numpy()) for img in images}
    assert len(plain) == NUM_DIGITS  # the digits are distinct, so bytes identify them
    data = make_task_data("digit", CameraCondition(), image_size=16, channels=2)
    seen: list[bytes] = []
    for _, split in data.splits():
        assert torch.equal(split.x[:, 0], split.x[:, 1])  # channels are copies
        pixels = split.x[:, :1] * NORM_STD + NORM_MEAN
        seen.extend(bytes(img.numpy()) for img in pixels)
    assert len(seen) == len(set(seen)) == NUM_DIGITS
    assert set(seen) == plain


_FINGERPRINT_SCRIPT = """
from searchmerge.data.sources.digits import CameraCondition, make_task_data
camera = CameraCondition(rotation_deg=5, rotation_jitter_deg=8, shift_px=1.5,
                         blur_sigma=0.7, noise_std=0.05, brightness=0.1, contrast=0.9)
print(make_task_data("mod3", camera, seed=7, image_size=16).fingerprint)
"""


def test_fingerprint_is_stable_in_another_process() -> None:
    camera = CameraCondition(
        rotation_deg=5, rotation_jitter_deg=8, shift_px=1.5,
        blur_sigma=0.7, noise_std=0.05, brightness=0.1, contrast=0.9,
    )
    here = make_task_data("mod3", camera, seed=7, image_size=16).fingerprint
    result = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT_SCRIPT],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONHASHSEED": "12345"},  # another hash salt
    )
    assert result.stdout.strip() == here
    assert len(here) == 64 and int(here, 16) >= 0


def test_fingerprint_depends_on_task_name() -> None:
    parity = make_task_data("parity", image_size=8)
    x = {name: split for name, split in parity.splits()}
    renamed = DigitsData(**x, num_classes=2, task="prime_like")
    assert renamed.fingerprint != parity.fingerprint


# --------------------------------------------------------------------------- camera


def test_neutral_camera_returns_the_images_unchanged(digits16: torch.Tensor) -> None:
    out = apply_camera(digits16, CameraCondition(), torch.Generator().manual_seed(0))
    assert torch.equal(out, digits16)
    assert out is not digits16
    assert CameraCondition().is_neutral


def test_apply_camera_does_not_modify_its_input(digits16: torch.Tensor) -> None:
    before = digits16.clone()
    apply_camera(digits16, CameraCondition(rotation_deg=10, brightness=0.2, noise_std=0.1))
    assert torch.equal(digits16, before)


def test_brightness_shifts_the_mean(digits16: torch.Tensor) -> None:
    brighter = apply_camera(digits16, CameraCondition(brightness=0.2))
    darker = apply_camera(digits16, CameraCondition(brightness=-0.2))
    assert brighter.mean() > digits16.mean() + 0.1
    assert darker.mean() < digits16.mean() - 0.05
    assert brighter.min() >= 0 and brighter.max() <= 1  # saturates like a sensor


def test_contrast_scales_around_the_mean(digits16: torch.Tensor) -> None:
    flat = apply_camera(digits16, CameraCondition(contrast=0.5))
    per_image = (1, 2, 3)
    assert torch.allclose(flat.std(dim=per_image), 0.5 * digits16.std(dim=per_image), atol=1e-5)
    assert torch.allclose(flat.mean(dim=per_image), digits16.mean(dim=per_image), atol=1e-5)


def test_noise_increases_variance_and_is_seeded(digits16: torch.Tensor) -> None:
    camera = CameraCondition(noise_std=0.1)
    a = apply_camera(digits16, camera, torch.Generator().manual_seed(1))
    b = apply_camera(digits16, camera, torch.Generator().manual_seed(1))
    c = apply_camera(digits16, camera, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a - digits16).var() > 0.001
    # On a grey scene nothing saturates, so the variance grows by noise_std ** 2.
    grey = torch.full((4, 1, 16, 16), 0.5)
    noisy = apply_camera(grey, camera, torch.Generator().manual_seed(1))
    assert noisy.var().item() == pytest.approx(0.01, rel=0.1)
    # On the digits' black background the sensor clips below 0, as a real one would.
    assert a.min() >= 0 and a.max() <= 1


def test_blur_smooths_edges(digits16: torch.Tensor) -> None:
    def edges(x: torch.Tensor) -> float:
        return (x[..., 1:] - x[..., :-1]).abs().mean().item()

    blurred = apply_camera(digits16, CameraCondition(blur_sigma=1.5))
    assert blurred.shape == digits16.shape
    assert edges(blurred) < 0.8 * edges(digits16)
    # A normalised kernel with replicated borders keeps a flat image flat.
    flat = torch.full((2, 1, 8, 8), 0.3)
    assert torch.allclose(apply_camera(flat, CameraCondition(blur_sigma=2.0)), flat)


def test_rotation_changes_pixels_and_turns_counter_clockwise(digits16: torch.Tensor) -> None:
    rotated = apply_camera(digits16, CameraCondition(rotation_deg=20))
    assert (rotated - digits16).abs().mean() > 0.02
    dot = torch.zeros(1, 1, 9, 9)
    dot[0, 0, 4, 7] = 1.0  # right of the centre
    turned = apply_camera(dot, CameraCondition(rotation_deg=90))
    assert (turned[0, 0] > 0.5).nonzero().tolist() == [[1, 4]]  # now above the centre


def test_shift_and_jitter_vary_per_image() -> None:
    same = load_digit_images(16)[0][:1].repeat(8, 1, 1, 1)
    moved = apply_camera(same, CameraCondition(shift_px=3), torch.Generator().manual_seed(0))
    assert not torch.equal(moved[0], moved[1])
    wobbled = apply_camera(
        same, CameraCondition(rotation_jitter_deg=20), torch.Generator().manual_seed(0)
    )
    assert not torch.equal(wobbled[0], wobbled[1])


def test_camera_round_trips_through_dict() -> None:
    camera = CameraCondition(rotation_deg=-5, shift_px=1, blur_sigma=0.5, contrast=0.8)
    assert CameraCondition.from_dict(camera.to_dict()) == camera
    assert camera.to_dict()["shift_px"] == 1.0
    assert isinstance(camera.to_dict()["shift_px"], float)
    assert CameraCondition.from_dict({}) == CameraCondition()


def test_shifted_changes_only_the_named_fields() -> None:
    day = CameraCondition(noise_std=0.02, rotation_deg=3)
    night = shifted(day, brightness=-0.3, contrast=0.5)
    assert night == CameraCondition(noise_std=0.02, rotation_deg=3, brightness=-0.3, contrast=0.5)
    with pytest.raises(SearchmergeError, match="unknown camera condition field.*zoom"):
        shifted(day, zoom=2.0)
    with pytest.raises(SearchmergeError, match="blur_sigma"):
        shifted(day, blur_sigma=-1.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"blur_sigma": -0.5}, "'blur_sigma' must be >= 0"),
        ({"noise_std": -0.1}, "'noise_std' must be >= 0"),
        ({"shift_px": -1}, "'shift_px' must be >= 0"),
        ({"rotation_jitter_deg": -3}, "'rotation_jitter_deg' must be >= 0"),
        ({"contrast": 0.0}, "'contrast' must be > 0"),
        ({"brightness": float("nan")}, "'brightness' must be finite"),
        ({"rotation_deg": "ten"}, "'rotation_deg' must be a number"),
        ({"noise_std": True}, "'noise_std' must be a number"),
        ({"exposure": 1.0}, "unknown camera condition field.*exposure.*known fields"),
    ],
)
def test_bad_camera_values_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(SearchmergeError, match=message):
        CameraCondition.from_dict(values)


def test_apply_camera_refuses_non_image_tensors() -> None:
    with pytest.raises(SearchmergeError, match="N x C x H x W"):
        apply_camera(torch.zeros(8, 8), CameraCondition())
    with pytest.raises(SearchmergeError, match="float"):
        apply_camera(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), CameraCondition())


# --------------------------------------------------------------------------- validation


def test_validate_split_names_split_and_task() -> None:
    with pytest.raises(SearchmergeError, match="split 'val' of task 'parity' is empty"):
        validate_split(_split([]), "val", task="parity")
    with pytest.raises(SearchmergeError, match="split 'train' of task 'high' has a single class"):
        validate_split(_split([1, 1, 1]), "train", task="high")
    with pytest.raises(SearchmergeError, match="split 'test' has a single class"):
        validate_split(_split([0]), "test")
    validate_split(_split([0, 1, 1]), "train")


def test_task_data_refuses_a_single_class_split() -> None:
    good = _split([0, 1, 0, 1])
    with pytest.raises(SearchmergeError, match="split 'test' of task 'parity' has a single class"):
        DigitsData(train=good, val=good, test=_split([1, 1]), num_classes=2, task="parity")
    with pytest.raises(SearchmergeError, match="label 3 but the task has 2 classes"):
        DigitsData(train=good, val=_split([0, 3]), test=good, num_classes=2, task="parity")


def test_split_checks_dtypes_and_lengths() -> None:
    with pytest.raises(SearchmergeError, match="float32"):
        Split(x=torch.zeros(2, 1, 8, 8, dtype=torch.float64), y=torch.tensor([0, 1]))
    with pytest.raises(SearchmergeError, match="int64"):
        Split(x=torch.zeros(2, 1, 8, 8), y=torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(SearchmergeError, match="2 images but 3 labels"):
        Split(x=torch.zeros(2, 1, 8, 8), y=torch.tensor([0, 1, 1]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"splits": (0.5, 0.5)}, "three positive shares"),
        ({"splits": (0.7, 0.2, 0.2)}, "summing to 1"),
        ({"splits": (0.998, 0.001, 0.001)}, "cannot split task 'digit'"),
        ({"seed": -1}, "seed must be in"),
        ({"image_size": 4}, "image_size must be >= 8"),
        ({"channels": 0}, "channels must be >= 1"),
        ({"camera": {"brightness": 0.1}}, "camera must be a CameraCondition"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SearchmergeError, match=message):
        make_task_data("digit", **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- subsampling


def test_stratified_subsample_keeps_every_class_in_proportion() -> None:
    train = make_task_data("loops", image_size=8).train
    sub = stratified_subsample(train, 0.25, seed=0)
    full_counts = torch.bincount(train.y)
    sub_counts = torch.bincount(sub.y, minlength=len(full_counts))
    assert torch.all(sub_counts >= 1)
    for full, part in zip(full_counts.tolist(), sub_counts.tolist()):
        assert part == max(1, round(0.25 * full))


def test_stratified_subsample_is_deterministic_by_seed() -> None:
    train = make_task_data("digit", image_size=8).train
    a = stratified_subsample(train, 0.1, seed=4)
    b = stratified_subsample(train, 0.1, seed=4)
    c = stratified_subsample(train, 0.1, seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    full = stratified_subsample(train, 1.0, seed=0)
    assert torch.equal(full.x, train.x) and torch.equal(full.y, train.y)


def test_stratified_subsample_keeps_rare_classes() -> None:
    split = _split([0] * 50 + [1] * 2 + [2])
    sub = stratified_subsample(split, 0.01, seed=0)
    assert sorted(sub.y.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), "half"])
def test_stratified_subsample_refuses_bad_fractions(fraction: object) -> None:
    with pytest.raises(SearchmergeError, match=r"fraction must be"):
        stratified_subsample(_split([0, 1]), fraction, seed=0)  # type: ignore[arg-type]


def test_the_turns_task_labels_the_picture_not_the_digit() -> None:
    upright = make_task_data("digit", seed=2, image_size=8, channels=1)
    turned = make_task_data("turns", seed=2, image_size=8, channels=1)
    assert turned.num_classes == 4 and get_task("turns").turned
    assert sorted(torch.unique(turned.train.y).tolist()) == [0, 1, 2, 3]
    for split_name in ("train", "test"):
        up, tu = getattr(upright, split_name), getattr(turned, split_name)
        back = torch.stack([torch.rot90(x, -int(k), dims=(1, 2)) for x, k in zip(tu.x, tu.y)])
        assert torch.equal(back, up.x)  # the same scenes, each turned by its label
    # Every digit appears at every turn: the class says nothing about which digit it is.
    digits, turns = upright.train.y.numpy(), turned.train.y.numpy()
    assert all(len(set(turns[digits == d])) == 4 for d in range(10))
    assert make_task_data("turns", seed=2, image_size=8, channels=1).fingerprint == turned.fingerprint
