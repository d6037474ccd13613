"""The teacher API: ONNX and torchvision-style teachers, the teacher: section, COCO-style labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from searchmerge.config.settings import StudySettings
from searchmerge.config.teacher import TeacherSettings, load_teacher, read_teacher
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.frame_labels import read_frame_labels
from searchmerge.data.teacher import OnnxTeacher, coco_document, coco_image
from tests import teacher_support
from tests.teacher_support import export_square_onnx, square_detector, square_frame

FACTORY = "tests.teacher_support:square_detector"


def test_onnx_teacher_finds_the_square_in_frames_of_any_size(tmp_path: Path) -> None:
    onnx = export_square_onnx(tmp_path / "square.onnx")
    teacher = OnnxTeacher(onnx, layout="torchvision", classes=["person"], threshold=0.5)
    found = teacher.detect([square_frame(30, 40, (5, 6, 15, 20)), square_frame(50, 20, None)])
    assert teacher.classes == ("person",)
    np.testing.assert_allclose(found[0].boxes, [[5, 6, 15, 20]])
    np.testing.assert_allclose(found[0].scores, [0.9], rtol=1e-6)
    assert found[0].classes.tolist() == [0] and (found[0].width, found[0].height) == (40, 30)
    assert len(found[1]) == 0  # nobody: score 0 is under the threshold
    above = OnnxTeacher(onnx, layout="torchvision", classes=["person"], threshold=0.95)
    assert len(above.detect([square_frame(30, 40, (5, 6, 15, 20))])[0]) == 0


def test_input_size_resizes_frames_and_maps_boxes_back(tmp_path: Path) -> None:
    settings = TeacherSettings(factory=FACTORY, classes=("person",), input_size=(20, 20))
    teacher = load_teacher(settings, tmp_path)
    teacher_support.SEEN.clear()
    found = teacher.detect([square_frame(40, 80, (20, 10, 60, 30))])
    assert teacher_support.SEEN == [(20, 20)]  # the model saw the resized frame
    np.testing.assert_allclose(found[0].boxes, [[20, 10, 60, 30]], atol=4.0)  # in the frame's own pixels


def test_factory_teacher_loads_its_weights_file(tmp_path: Path) -> None:
    model = square_detector()
    weights = {name: tensor.detach() * 0.5 for name, tensor in model.state_dict().items()}
    save_file(weights, str(tmp_path / "half.safetensors"))
    settings = TeacherSettings(factory=FACTORY, weights="half.safetensors", classes=("person",))
    found = load_teacher(settings, tmp_path).detect([square_frame(30, 40, (10, 10, 20, 20))])
    np.testing.assert_allclose(found[0].boxes, [[5, 5, 10, 10]])  # the file's scale 0.5, not the built 1.0


def test_torchvision_architecture_teacher_labels_in_frame_pixels(tmp_path: Path) -> None:
    settings = TeacherSettings(
        arch="ssdlite320_mobilenet_v3_large", kwargs={"num_classes": 3}, classes=("person", "car"), threshold=0.0
    )
    teacher = load_teacher(settings, tmp_path)
    found = teacher.detect([square_frame(48, 64, (5, 5, 30, 30))])[0]
    assert len(found) > 0  # untrained, but at threshold 0 it keeps what it proposes
    assert found.boxes.shape[1] == 4 and (found.boxes[:, 2] <= 64).all() and (found.boxes[:, 3] <= 48).all()
    assert set(found.classes.tolist()) <= {0, 1}


def test_labels_round_trip_through_the_video_sources_reader(tmp_path: Path) -> None:
    onnx = export_square_onnx(tmp_path / "square.onnx")
    teacher = OnnxTeacher(onnx, layout="torchvision", classes=["person"])
    frames = [square_frame(30, 40, (4, 3, 14, 13)), square_frame(30, 40, None), square_frame(30, 40, (20, 10, 40, 30))]
    images, annotations = [], []
    for index, found in zip((0, 5, 10), teacher.detect(frames)):
        image, boxes = coco_image(index, found, len(annotations) + 1)
        images.append(image)
        annotations += boxes
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco_document(teacher.classes, images, annotations, {"teacher": "square"})))
    labels = read_frame_labels(path, 11, (30, 40))
    assert labels.classes == ("person",) and labels.frames == (0, 5, 10)
    np.testing.assert_allclose(labels.boxes[0], [[0.1, 0.1, 0.35, 13 / 30]], atol=1e-6)
    assert len(labels.boxes[5]) == 0 and labels.classes_of[10].tolist() == [0]


def test_the_teacher_section_is_checked_with_key_paths(tmp_path: Path) -> None:
    document = {"models": [], "teacher": {"onnx": "t.onnx", "layout": "tf_object_detection", "classes": ["person"],
                                          "threshold": 0.3, "input_size": 300}}
    settings = StudySettings.from_document(document)
    assert settings.teacher is not None and settings.teacher.kind == "onnx"
    assert settings.teacher.input_size == (300, 300)
    assert StudySettings.from_document(settings.to_document()).teacher == settings.teacher
    bad = [
        ({"onnx": "t.onnx", "classes": ["p"], "threshold": 2}, "teacher.threshold must be in [0, 1]"),
        ({"onnx": "t.onnx", "arch": "x", "classes": ["p"]}, "exactly one of onnx, arch or factory, got onnx, arch"),
        ({"onnx": "t.onnx"}, "teacher.classes must list"),
        ({"onnx": "t.onnx", "classes": ["p", "p"]}, "teacher.classes names a class twice"),
        ({"onnx": "t.onnx", "classes": ["p"], "layout": "yolo"}, "teacher.layout must be"),
        ({"onnx": "t.onnx", "classes": ["p"], "treshold": 0.2}, "'treshold'"),
        ({"arch": "x", "classes": ["p"], "input_size": [1, 2, 3]}, "teacher.input_size must be [height, width]"),
        ({"onnx": "t.onnx", "classes": ["p"], "weights": "w.pt"}, "weights and kwargs are for arch or factory"),
    ]
    for section, message in bad:
        with pytest.raises(SearchmergeError, match=re.escape(message)):
            StudySettings.from_document({"models": [], "teacher": section})


def test_read_teacher_takes_a_study_file_or_a_bare_section(tmp_path: Path) -> None:
    (tmp_path / "study.yaml").write_text("name: s\nmodels: []\nteacher: {factory: x:y, classes: [person]}\n")
    (tmp_path / "teacher.yaml").write_text("onnx: t.onnx\nclasses: [person]\n")
    (tmp_path / "no-teacher.yaml").write_text("name: s\nmodels: []\n")
    assert read_teacher(tmp_path / "study.yaml").kind == "factory"
    assert read_teacher(tmp_path / "teacher.yaml").kind == "onnx"
    with pytest.raises(SearchmergeError, match="has no teacher: section"):
        read_teacher(tmp_path / "no-teacher.yaml")


def test_a_teacher_file_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(SearchmergeError, match="does not load as ONNX") as caught:
        load_teacher(TeacherSettings(onnx="broken.onnx", classes=("person",)), tmp_path)
    assert "\n" not in str(caught.value)
    with pytest.raises(SearchmergeError, match="does not exist"):
        load_teacher(TeacherSettings(onnx="missing.onnx", classes=("person",)), tmp_path)
    onnx = export_square_onnx(tmp_path / "square.onnx")
    with pytest.raises(SearchmergeError, match="does not have the tf_object_detection layout"):
        OnnxTeacher(onnx, layout="tf_object_detection", classes=["person"])
    with pytest.raises(SearchmergeError, match="weights file"):
        load_teacher(TeacherSettings(factory=FACTORY, weights="none.safetensors", classes=("p",)), tmp_path)


def test_the_shipped_campus_teacher_finds_people_without_tensorflow() -> None:
    from searchmerge.data.sources.frames import Footage

    campus = Path(__file__).resolve().parent.parent / "studies" / "campus"
    settings = read_teacher(campus.parent / "campus.yaml")
    teacher = load_teacher(settings, campus.parent)
    frame = next(iter(Footage.probe(campus / "campus.mp4").frames()))
    found = teacher.detect([frame])[0]
    assert teacher.classes == ("person",) and 1 <= len(found) <= 8
    assert (found.scores >= settings.threshold).all()
