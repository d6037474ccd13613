"""searchmerge label: a teacher labels a video or a folder of frames, resumably, into the video source's format."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from searchmerge.cli.commands import main
from searchmerge.config.teacher import TeacherSettings, load_teacher
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.frame_labels import read_frame_labels
from searchmerge.training.labelling import label, label_footage
from tests import teacher_support
from tests.teacher_support import export_square_onnx, square_frame

FRAMES = 12
HEIGHT, WIDTH = 48, 64


def _square(index: int) -> tuple[int, int, int, int] | None:
    """Where frame ``index``'s square is: moving right by 3 pixels a frame, and gone in every fourth frame."""
    return None if index % 4 == 3 else (4 + 3 * index, 8, 20 + 3 * index, 24)


def _write_video(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 10)
        for index in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(square_frame(HEIGHT, WIDTH, _square(index)), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture()
def video(tmp_path: Path) -> Path:
    return _write_video(tmp_path / "street.mp4")


@pytest.fixture()
def onnx_teacher_file(tmp_path: Path) -> Path:
    export_square_onnx(tmp_path / "square.onnx")
    path = tmp_path / "teacher.yaml"
    path.write_text("onnx: square.onnx\nlayout: torchvision\nclasses: [person]\nthreshold: 0.5\n")
    return path


def test_label_writes_labels_the_video_source_reads(video: Path, onnx_teacher_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "boxes.json"
    assert main(["label", str(video), "--teacher", str(onnx_teacher_file), "--out", str(out)]) == 0
    assert "12 frames labelled, 9 boxes" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["categories"] == [{"id": 1, "name": "person"}]
    assert [image["frame_index"] for image in document["images"]] == list(range(FRAMES))
    assert all(a["category_id"] == 1 and len(a["bbox"]) == 4 and 0.5 <= a["score"] <= 1 for a in document["annotations"])
    labels = read_frame_labels(out, FRAMES, (HEIGHT, WIDTH))
    scale = np.asarray([WIDTH, HEIGHT] * 2)
    for index in range(FRAMES):
        square = _square(index)
        if square is None:
            assert len(labels.boxes[index]) == 0
        else:
            np.testing.assert_allclose(labels.boxes[index][0] * scale, square, atol=2.0)  # H.264 blurs edges
    assert not out.with_name("boxes.json.partial").exists()


def test_stride_labels_every_nth_frame_of_a_folder(onnx_teacher_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(FRAMES):
        Image.fromarray(square_frame(HEIGHT, WIDTH, _square(index))).save(folder / f"{index:04d}.png")
    run = label(folder, onnx_teacher_file, tmp_path / "boxes.json", stride=5)
    document = json.loads((tmp_path / "boxes.json").read_text())
    assert [image["frame_index"] for image in document["images"]] == [0, 5, 10]
    assert run.frames == run.labelled == 3 and run.boxes == 3
    assert document["annotations"][1]["bbox"] == [19.0, 8.0, 16.0, 16.0]  # frame 5's square, lossless


class _Interrupting:
    """Raises KeyboardInterrupt at the ``after``-th call of the wrapped teacher's detect (Ctrl-C mid-run)."""

    def __init__(self, teacher: object, after: int) -> None:
        self.teacher, self.after, self.calls = teacher, after, 0
        self.classes = teacher.classes  # type: ignore[attr-defined]

    def detect(self, frames: list[np.ndarray]) -> list[object]:
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.teacher.detect(frames)  # type: ignore[attr-defined]


def test_an_interrupted_run_resumes_without_labelling_a_frame_twice(video: Path, tmp_path: Path) -> None:
    settings = TeacherSettings(factory="tests.teacher_support:square_detector", classes=("person",))
    teacher = load_teacher(settings, tmp_path)
    out, fresh = tmp_path / "boxes.json", tmp_path / "fresh.json"
    identity = {"teacher": "squares"}
    with pytest.raises(KeyboardInterrupt):
        label_footage(video, _Interrupting(teacher, after=7), out, stride=1, identity=identity,  # type: ignore[arg-type]
                      save_every=3)
    partial = out.with_name("boxes.json.partial")
    assert not out.exists() and partial.is_file()
    assert len(json.loads(partial.read_text())["images"]) == 7  # saved at 3 and 6, and frame 7 when interrupted
    teacher_support.SEEN.clear()
    run = label_footage(video, teacher, out, stride=1, identity=identity, save_every=3)
    assert len(teacher_support.SEEN) == FRAMES - 7 and run.labelled == FRAMES - 7 and run.frames == FRAMES
    assert not partial.exists()
    label_footage(video, teacher, fresh, stride=1, identity=identity)
    assert json.loads(out.read_text()) == json.loads(fresh.read_text())  # the same labels as an uninterrupted run
    teacher_support.SEEN.clear()
    with pytest.raises(KeyboardInterrupt):
        label_footage(video, _Interrupting(teacher, after=2), out, stride=1, identity=identity,  # type: ignore[arg-type]
                      save_every=1)
    label_footage(video, teacher, out, stride=2, identity=identity)  # another stride: the partial is not reused
    assert len(teacher_support.SEEN) == 2 + FRAMES // 2


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], message: str, out: Path) -> None:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("searchmerge: error: ") and message in error, error
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_bad_input_is_one_line_and_writes_nothing(video: Path, onnx_teacher_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "boxes.json"
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07 not a model")
    (tmp_path / "broken.yaml").write_text("onnx: broken.onnx\nclasses: [person]\n")
    _refused(capsys, ["label", str(video), "--teacher", str(tmp_path / "broken.yaml"), "--out", str(out)],
             "does not load as ONNX", out)
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: cars\nmodels:\n"
        "  - {name: a, arch: resnet18, task: classification, data: {format: video, query: presence, classes: [car]}}\n"
        "  - {name: b, arch: resnet18, task: classification, data: {format: video, query: presence}}\n"
        "teacher: {onnx: square.onnx, classes: [person]}\n"
    )
    _refused(capsys, ["label", str(video), "--teacher", str(study), "--out", str(out)],
             "model 'a' asks about class 'car', which its teacher does not know", out)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 this is not a video" * 100)
    _refused(capsys, ["label", str(garbage), "--teacher", str(onnx_teacher_file), "--out", str(out)],
             "does not open", out)
    _refused(capsys, ["label", str(video), "--teacher", str(onnx_teacher_file), "--out", str(out), "--stride", "0"],
             "stride must be a positive integer", out)
    _refused(capsys, ["label", str(video), "--teacher", str(onnx_teacher_file), "--out", str(out),
                      "--threshold", "1.5"], "threshold must be in [0, 1]", out)


def test_a_terminal_sees_a_bar_with_the_frames_left(video: Path, onnx_teacher_file: Path, tmp_path: Path) -> None:
    import io

    from searchmerge.cli.progress import TerminalProgress

    stream = io.StringIO()
    label(video, onnx_teacher_file, tmp_path / "boxes.json", stride=2, progress=TerminalProgress(stream, bars=True))
    drawn = stream.getvalue()
    assert "label street.mp4" in drawn and "0/6" in drawn and "frame/s" in drawn  # tqdm's bar: frames and rate
    quiet = io.StringIO()
    label(video, onnx_teacher_file, tmp_path / "again.json", stride=2, progress=TerminalProgress(quiet, bars=False))
    assert "frame/s" not in quiet.getvalue() and "6 frames of street.mp4 labelled" in quiet.getvalue()


def test_footage_that_breaks_part_way_keeps_what_was_labelled(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(FRAMES):
        Image.fromarray(square_frame(HEIGHT, WIDTH, _square(index))).save(folder / f"{index:04d}.png")
    broken = folder / "0007.png"
    good = broken.read_bytes()
    broken.write_bytes(b"not an image")
    study = tmp_path / "teacher.yaml"
    study.write_text("factory: tests.teacher_support:square_detector\nclasses: [person]\n")
    out = tmp_path / "boxes.json"
    with pytest.raises(SearchmergeError, match="does not decode.*the 7 frames labelled before it are kept in"):
        label(folder, study, out, save_every=100)
    assert not out.exists() and len(json.loads(out.with_name("boxes.json.partial").read_text())["images"]) == 7
    broken.write_bytes(good)  # the footage changed: its labels are made again, not mixed with the old frames'
    teacher_support.SEEN.clear()
    assert label(folder, study, out).labelled == FRAMES and len(teacher_support.SEEN) == FRAMES
