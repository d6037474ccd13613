"""Data sources on tiny data made here: image folders, YOLO, COCO, dataset factories, the image
cache, stratified index subsets, and every kind of bad input as one line with exit status 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources import format_names, get_source, subsample
from searchmerge.data.sources.base import SourceContext, subsample_indices
from searchmerge.data.sources.images import ImageReader
from tests import user_data
from tests.bad_input_support import assert_prepare_refuses


def context(folder: Path, cache: Path | None = None) -> SourceContext:
    return SourceContext(folder=folder, cache_dir=cache)


def test_image_folder_classes_labels_and_fingerprint(tmp_path: Path) -> None:
    user_data.write_image_folder(tmp_path / "gate", classes=3, per_class=4, splits=("train", "val"))
    data = get_source("imagefolder").open({"root": "gate", "image_size": [16, 24]}, context(tmp_path),
                                          task="classification")
    assert data.kind == "classification" and data.num_classes == 3
    assert len(data.train) == 12 and data.test is data.val  # no test/: val serves as test
    image, label = data.train[5]
    assert image.shape == (3, 16, 24) and label == 1 and 0 <= float(image.min()) <= float(image.max()) <= 1
    assert data.class_labels("train").tolist() == [0] * 4 + [1] * 4 + [2] * 4
    red, green = data.train[0][0], data.train[4][0]
    assert red[0].mean() > red[1].mean() and green[1].mean() > green[0].mean()  # the pixels are the files'
    again = get_source("imagefolder").open({"root": "gate", "image_size": [16, 24]}, context(tmp_path),
                                           task="classification")
    assert again.fingerprint == data.fingerprint
    (tmp_path / "gate" / "train" / "class0" / "00.png").write_bytes(
        (tmp_path / "gate" / "train" / "class1" / "00.png").read_bytes())
    changed = get_source("imagefolder").open({"root": "gate", "image_size": [16, 24]}, context(tmp_path),
                                             task="classification")
    assert changed.fingerprint != data.fingerprint


def test_yolo_boxes_are_pixels_and_labels_shift_by_one(tmp_path: Path) -> None:
    user_data.write_yolo(tmp_path / "street", per_split=4)
    (tmp_path / "street" / "val" / "labels" / "01.txt").unlink()  # an image without objects
    data = get_source("yolo").open({"root": "street", "image_size": 64}, context(tmp_path), task="detection")
    assert data.kind == "detection" and data.num_classes == 2
    line = (tmp_path / "street" / "train" / "labels" / "00.txt").read_text().split()
    image, target = data.train[0]
    assert image.shape == (3, 64, 64)  # resized, and the boxes with it
    xc, yc, w, h = (float(v) * 64 for v in line[1:])
    assert target["labels"].tolist() == [1]
    assert torch.allclose(target["boxes"], torch.tensor([[xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2]]), atol=1e-3)
    assert data.val[1][1]["boxes"].shape == (0, 4)


def test_coco_reads_boxes_in_pixels(tmp_path: Path) -> None:
    user_data.write_coco(tmp_path / "dock", per_split=3)
    data = get_source("coco").open({"root": "dock"}, context(tmp_path), task="detection")
    image, target = data.val[2]
    assert image.shape == (3, 32, 32) and target["labels"].tolist() == [1] and data.num_classes == 2
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    assert float(image[:, int(y1) + 1, int(x1) + 1].mean()) > 0.8  # inside the bright square
    assert float(image[:, int(y1) - 1, int(x1) - 1].mean()) < 0.2 if x1 >= 1 and y1 >= 1 else True


def test_dataset_factory_classes_from_targets() -> None:
    data = get_source("python").open({"factory": "tests.user_data:colour_splits", "kwargs": {"count": 12}},
                                     context(Path.cwd()), task="classification")
    assert data.num_classes == 3 and len(data.train) == 12 and len(data.val) == 6
    assert data.class_labels("train").tolist() == data.train.targets


def test_the_image_cache_is_read_instead_of_the_file(tmp_path: Path) -> None:
    user_data.write_image_folder(tmp_path / "gate", classes=2, per_class=1, splits=("train",))
    path = tmp_path / "gate" / "train" / "class0" / "00.png"
    reader = ImageReader(size=(8, 8), cache_dir=tmp_path / "cache")
    first = reader(path)
    entries = list((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 1
    np.save(entries[0], np.zeros((8, 8, 3), dtype=np.uint8))  # the cache now says black
    assert torch.equal(reader(path), torch.zeros(3, 8, 8)) and not torch.equal(first, torch.zeros(3, 8, 8))
    path.write_bytes((tmp_path / "gate" / "train" / "class1" / "00.png").read_bytes())  # a changed file ...
    assert not torch.equal(reader(path), torch.zeros(3, 8, 8))  # ... is a new cache entry


def test_subsample_is_a_seeded_stratified_index_subset() -> None:
    labels = np.array([0] * 10 + [1] * 4 + [2] * 2)
    chosen = subsample_indices(len(labels), labels, 0.5, seed=3)
    assert sorted(np.bincount(labels[chosen]).tolist()) == [1, 2, 5]
    assert chosen.tolist() == sorted(chosen.tolist()) == subsample_indices(len(labels), labels, 0.5, seed=3).tolist()
    assert chosen.tolist() != subsample_indices(len(labels), labels, 0.5, seed=4).tolist()
    data = get_source("python").open({"factory": "tests.user_data:colour_splits"}, context(Path.cwd()),
                                     task="classification")
    subset = subsample(data, "train", 0.5, seed=0)
    assert len(subset) == len(subsample_indices(24, data.class_labels("train"), 0.5, seed=0))
    assert subsample(data, "train", 1.0, seed=0) is data.train
    assert set(format_names()) >= {"imagefolder", "yolo", "coco", "python", "digits"}


BAD_STUDY = """
name: bad
evaluator: {max_epochs: 1, batch_size: 4}
models:
  - {name: a, factory: "tests.user_data:tiny_classifier", weights: a.safetensors, task: classification,
     data: {format: imagefolder, root: cls}}
  - {name: b, factory: "tests.user_data:tiny_detector", weights: b.safetensors, task: detection,
     data: {format: yolo, root: det}}
"""


@pytest.fixture(scope="module")
def bad_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    user_data.write_image_folder(folder / "cls", classes=3, per_class=2)
    user_data.write_yolo(folder / "det", per_split=3)
    save_file(user_data.tiny_classifier().state_dict(), str(folder / "a.safetensors"))
    save_file(user_data.tiny_detector().state_dict(), str(folder / "b.safetensors"))
    (folder / "bad.yaml").write_text(BAD_STUDY)
    return folder


def _break_yolo_line(folder: Path) -> None:
    (folder / "det" / "val" / "labels" / "01.txt").write_text("0 0.5 0.5 0.2\n")


def _box_outside(folder: Path) -> None:
    (folder / "det" / "train" / "labels" / "02.txt").write_text("0 0.9 0.5 0.4 0.2\n")


def _undecodable(folder: Path) -> None:
    (folder / "cls" / "val" / "class1" / "01.png").write_bytes(b"not a png")


def _study(text_change: tuple[str, str]):  # type: ignore[no-untyped-def]
    def change(folder: Path) -> None:
        path = folder / "bad.yaml"
        assert text_change[0] in path.read_text()
        path.write_text(path.read_text().replace(*text_change))
    return change


BAD_INPUTS = [
    (lambda f: shutil.rmtree(f / "cls" / "val"), "model 'a': data (imagefolder): folder '{f}/cls/val' does not exist"),
    (lambda f: (f / "cls" / "val" / "class0").rename(f / "cls" / "val" / "klass0"),
     "model 'a': data (imagefolder): the class folders of val/ (class1, class2, klass0) differ from those of train/"),
    (_undecodable, "image '{f}/cls/val/class1/01.png' does not decode"),
    (_break_yolo_line, "model 'b': label file '{f}/det/val/labels/01.txt', line 1: expected 'class x_center y_center"),
    (_box_outside, "model 'b': label file '{f}/det/train/labels/02.txt', line 1: box '0.9 0.5 0.4 0.2' is not inside"),
    (_study(("task: detection,", "task: classification,")),
     "model 'b': task 'classification' is classification, but format 'yolo' holds detection data"),
    (_study(('"tests.user_data:tiny_classifier", weights: a', '"tests.user_data:tiny_detector", weights: b')),
     "model 'a' gives list outputs (a detection model?) but its task is classification"),
    (lambda f: save_file(user_data.tiny_classifier(num_classes=5).state_dict(), str(f / "a.safetensors")),
     "model 'a': weights file '{f}/a.safetensors' does not fit the architecture: key 'fc.weight' has shape (5, 16)"),
    (_study(("data: {format: imagefolder, root: cls}", "data: {format: python, factory: 'tests.user_data:not_splits'}")),
     "model 'a': dataset factory 'tests.user_data:not_splits' returned list, not a mapping"),
    (lambda f: [p.unlink() for p in (f / "cls" / "test").rglob("*.png")],
     "model 'a': data (imagefolder): split 'test' ('{f}/cls/test') has no images"),
    (_study(("task: classification", "taks: classification")),
     "model #1: unknown key 'taks' (did you mean 'task'?)"),
    (_study(("evaluator:", "evaluater:")), "unknown key 'evaluater' (did you mean 'evaluator'?)"),
    (_study(("format: yolo", "format: yollo")), "model 'b': unknown data format 'yollo' (did you mean 'yolo'?)"),
    (_study(("root: cls}", "root: cls, image_sise: 8}")), "unknown key 'image_sise' (did you mean 'image_size'?)"),
]


@pytest.mark.parametrize(("breaks", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    breaks, message: str, bad_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    assert_prepare_refuses(bad_base, "bad.yaml", breaks, message, tmp_path, capsys)


def test_an_unusable_source_is_refused_with_its_name() -> None:
    with pytest.raises(SearchmergeError, match=r"unknown data format 'imagefolders' \(did you mean 'imagefolder'\?\)"):
        get_source("imagefolders")


def test_worker_processes_read_the_same_batches_and_keep_errors_to_one_line(tmp_path: Path) -> None:
    from searchmerge.data.loading import batches, in_order
    from searchmerge.data.tasks import get_kind

    user_data.write_image_folder(tmp_path / "gate", classes=2, per_class=6, splits=("train", "val"))
    data = get_source("imagefolder").open({"root": "gate"}, context(tmp_path), task="classification")
    kind = get_kind("classification")
    serial = [(x.sum().item(), y.tolist()) for x, y in in_order(data.train, kind, 4)]
    assert [(x.sum().item(), y.tolist()) for x, y in in_order(data.train, kind, 4, workers=2)] == serial
    one, two = batches(data.train, kind, 4, seed=1), batches(data.train, kind, 4, seed=1, workers=2)
    assert [next(one)[1].tolist() for _ in range(5)] == [next(two)[1].tolist() for _ in range(5)]
    (tmp_path / "gate" / "train" / "class1" / "03.png").write_bytes(b"broken")
    with pytest.raises(SearchmergeError) as raised:
        list(in_order(data.train, kind, 4, workers=2))
    message = str(raised.value)  # raised in a worker process, where DataLoader wraps it in a traceback
    assert message.startswith(f"image '{tmp_path}/gate/train/class1/03.png' does not decode: ")
    assert "\n" not in message and "Caught" not in message
