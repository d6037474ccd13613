"""The service labels camera frames with the study's teacher, and judges drift from them with no scenario named.

The footage is the walkers of tests/test_video.py; the teacher (tests/teacher_support.py) finds
the one bright square of a frame, so every label the service gives is known in advance.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from torch import nn

from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources import get_source
from searchmerge.data.sources.samples import is_held_out
from searchmerge.service.cloud.db import open_engine, samples
from searchmerge.service.cloud.jobs import list_jobs
from searchmerge.service.cloud.labelling import (
    ImageTeacher,
    Labeller,
    ProvenanceTeacher,
    SampleTooLarge,
    decode_pixels,
)
from searchmerge.service.cloud.samples import recent_samples, store_samples
from searchmerge.service.cloud.service import MergingService, ServiceSettings
from searchmerge.service.cloud.versions import publish_files
from searchmerge.service.protocol import DigitsSource, Sample, SampleBatch, encode_frame
from tests.conftest import TINY_STUDY
from tests.edge_cloud_support import digits_frame
from tests.fake_edge_service import files_of, make_version
from tests.teacher_support import square_frame
from tests.test_video import HEIGHT, WIDTH, write_footage

STUDY = """
name: walk
seed: 0
target: 0.9
video: {source: walk.mkv, labels: walk.json, image_size: 16}
teacher: {factory: "tests.teacher_support:square_detector", classes: [person]}
models:
  - {name: left, factory: "tests.user_data:tiny_classifier", kwargs: {num_classes: 2}, task: classification,
     data: {format: video, region: [0.0, 0.0, 0.5, 1.0], query: presence}}
  - {name: right, factory: "tests.user_data:tiny_classifier", kwargs: {num_classes: 3}, task: classification,
     data: {format: video, region: [0.5, 0.0, 1.0, 1.0], query: count, bins: [0, 1, 2]}}
  - {name: boxes, factory: "tests.user_data:tiny_classifier", kwargs: {num_classes: 2}, task: detection,
     data: {format: video, region: [0.5, 0.0, 1.0, 1.0], query: detection}}
"""
#: A square in the left half, and one in the right half (x1, y1, x2, y2 in pixels of the 64 x 48 frame).
LEFT_SQUARE, RIGHT_SQUARE = (4, 10, 14, 20), (40, 8, 52, 24)


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_footage(tmp_path_factory.mktemp("walk"))


@pytest.fixture()
def study(footage: Path, tmp_path: Path) -> StudyFile:
    for name in ("walk.mkv", "walk.json"):
        shutil.copy(footage / name, tmp_path / name)
    (tmp_path / "walk.yaml").write_text(STUDY)
    return open_study_file(tmp_path / "walk.yaml", storage=f"sqlite:///{tmp_path / 'walk.db'}")


def sample(model: str, pixels: np.ndarray, **frame: object) -> Sample:
    return Sample(model=model, frame=encode_frame(pixels, **frame))  # type: ignore[arg-type]


def test_the_teacher_labels_whole_frames_and_regions_and_the_view_is_what_the_model_sees(study: StudyFile) -> None:
    labeller = Labeller(study)
    left_frame = square_frame(HEIGHT, WIDTH, LEFT_SQUARE)
    right_frame = square_frame(HEIGHT, WIDTH, RIGHT_SQUARE)
    nobody = square_frame(HEIGHT, WIDTH, None)
    batch = SampleBatch(samples=[
        sample("left", left_frame), sample("left", right_frame), sample("left", nobody),
        sample("right", right_frame), sample("right", left_frame),
        sample("right", right_frame[:, 32:], region=[32, 0, 64, 48]),  # the region alone, with its position
        sample("boxes", right_frame, encoding="jpeg"),
    ])
    labelled = labeller.label(batch)
    assert [item.label for item in labelled[:6]] == [1, 0, 0, 1, 0, 1]
    target = labelled[6].target
    assert labelled[6].label == -1 and target is not None and target["labels"] == [1]
    # The square at x 40..52, y 8..24 of the frame is at x 8..20 (x 0.5), y 8..24 (x 1/3) of the 16 x 16 view.
    assert np.allclose(target["boxes"], [[4.0, 8 / 3, 10.0, 8.0]], atol=0.6)
    crops = get_source("video").open({"region": [0.5, 0.0, 1.0, 1.0], "query": "presence"}, _context(study),
                                     task="classification")
    assert labelled[3].view.shape == (16, 16, 3) == crops.train.crops.shape[1:]
    assert np.array_equal(labelled[3].view, labelled[5].view)  # the region alone gives the model the same view

    engine = open_engine(study.storage)
    assert store_samples(engine, study.workload.name, "gate", batch, labeller) == 7
    with engine.connect() as conn:
        rows = conn.execute(sa.select(samples).order_by(samples.c.id)).all()
    assert [row.label for row in rows] == [1, 0, 0, 1, 0, 1, -1]
    assert all(row.encoding == "png" and row.frame.startswith(b"\x89PNG") for row in rows)
    assert json.loads(rows[6].target_json)["labels"] == [1]
    recent = recent_samples(engine, study.workload.name, since=rows[0].received_at, window=10)
    frame = recent["right"][0].frame
    assert frame.shape == (3, 16, 16) and frame.dtype == np.float32
    assert np.allclose(frame, labelled[3].view.transpose(2, 0, 1) / 255.0)  # video models take pixels / 255


def _context(study: StudyFile):  # type: ignore[no-untyped-def]
    from searchmerge.training.prepare import source_context

    return source_context(study.settings, study_path=study.path)


def test_frames_that_do_not_fit_are_refused_and_nothing_is_stored(study: StudyFile) -> None:
    labeller = Labeller(study, max_sample_bytes=4096)
    frame = square_frame(HEIGHT, WIDTH, LEFT_SQUARE)
    engine = open_engine(study.storage)
    bad = [
        (sample("left", frame[:40]), "its frame is 64x40 pixels; it must be 64x48"),
        (sample("left", frame[:, :, :1]), "the model takes 3 channel(s)"),
        (sample("right", frame[:, 32:], region=[0, 0, 32, 48]), "is not inside the 64x48 frame around"),
        (sample("right", frame[:, 32:], region=[32, 0, 96, 48]), "is not inside the 64x48 frame around"),
        (sample("nobody", frame), "the deployment has no model 'nobody'"),
    ]
    for wrong, message in bad:
        with pytest.raises(SearchmergeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            store_samples(engine, study.workload.name, "gate", SampleBatch(samples=[sample("left", frame), wrong]),
                          labeller)
    noise = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    with pytest.raises(SampleTooLarge, match="more than the 4096 a sample may have"):
        store_samples(engine, study.workload.name, "gate", SampleBatch(samples=[sample("left", noise)]), labeller)
    with pytest.raises(SearchmergeError, match="this edge does not run model 'left'"):
        store_samples(engine, study.workload.name, "gate", SampleBatch(samples=[sample("left", frame)]), labeller,
                      runs={"right"})
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(samples)).scalar() == 0
    with pytest.raises(SearchmergeError, match="does not decode as PNG"):
        decode_pixels(encode_frame(frame).model_copy(update={"data": "iVBORw0KGgo="}), (HEIGHT, WIDTH), 3)


def test_a_study_without_a_teacher_cannot_label_camera_frames(study: StudyFile, tmp_path: Path) -> None:
    (tmp_path / "bare.yaml").write_text(STUDY.replace('teacher: {factory: "tests.teacher_support:square_detector",'
                                                      ' classes: [person]}\n', ""))
    bare = open_study_file(tmp_path / "bare.yaml", storage=study.storage)
    with pytest.raises(SearchmergeError, match="has no teacher: section"):
        Labeller(bare).label(SampleBatch(samples=[sample("left", square_frame(HEIGHT, WIDTH, None))]))


def test_a_digits_study_is_labelled_by_the_generator_its_teacher(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    tiny = open_study_file(tmp_path / "tiny.yaml", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    labeller = Labeller(tiny)
    assert isinstance(labeller.teacher, ProvenanceTeacher)  # no teacher: section: the generator is the teacher
    night = labeller.footage.data("night")["b"].val
    labelled = labeller.label(SampleBatch(samples=[
        Sample(model="b", frame=digits_frame(night[i][0]), source=DigitsSource(kind="digits", scenario="night",
                                                                              split="val", index=i))
        for i in range(4)]))
    assert [frame.label for frame in labelled] == [int(night[i][1]) for i in range(4)]
    assert [(frame.scenario, frame.split, frame.index) for frame in labelled] == [("night", "val", i) for i in range(4)]
    assert labelled[0].target is None and labelled[0].view.shape == (16, 16, 1)
    with pytest.raises(SearchmergeError, match="sample 0: model 'b' is a digits model: its sample needs the frame's"
                                               r" provenance \(source\)"):
        labeller.label(SampleBatch(samples=[Sample(model="b", frame=digits_frame(night[0][0]))]))


def test_each_teacher_refuses_in_one_line_the_samples_it_cannot_label(study: StudyFile, tmp_path: Path) -> None:
    digits_model = ('  - {name: d, factory: "searchmerge.zoo:small_vgg", kwargs: {num_classes: 2, widths: [4, 8, 8]},'
                    ' task: high}\n')
    (tmp_path / "mixed.yaml").write_text(STUDY + digits_model)
    mixed = open_study_file(tmp_path / "mixed.yaml", storage=study.storage)
    provenance = Sample(model="d", frame=digits_frame(np.zeros((3, 32, 32), np.float32)),
                        source=DigitsSource(kind="digits", index=0))
    labeller = Labeller(mixed)
    assert isinstance(labeller.teacher, ImageTeacher)  # the teacher: section names the study's teacher
    with pytest.raises(SearchmergeError) as refused:
        labeller.label(SampleBatch(samples=[provenance]))
    assert str(refused.value) == ("sample 0: model 'd' reads the digits generator, whose frames are labelled by their"
                                  " provenance, but this study's teacher is the detector of its teacher: section,"
                                  " which labels camera frames only")
    with pytest.raises(SearchmergeError, match="its teacher is not the digits generator"):
        labeller.footage  # noqa: B018 - the property refuses
    # Without the section, the generator is the teacher, and a camera frame is refused the way it always was.
    (tmp_path / "bare.yaml").write_text(STUDY.replace('teacher: {factory: "tests.teacher_support:square_detector",'
                                                      ' classes: [person]}\n', "") + digits_model)
    bare = Labeller(open_study_file(tmp_path / "bare.yaml", storage=study.storage))
    assert isinstance(bare.teacher, ProvenanceTeacher)
    with pytest.raises(SearchmergeError, match="sample 0: study file .* has no teacher: section, so the service cannot"
                                               " label camera frames"):
        bare.label(SampleBatch(samples=[sample("left", square_frame(HEIGHT, WIDTH, None))]))


class Nobody(nn.Module):
    """Always answers 'nobody': right when the region is empty, wrong whenever someone walks in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)


def test_a_drift_is_judged_from_teacher_labelled_samples_alone(
    study: StudyFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    service = MergingService(study, ServiceSettings(window=16, min_samples=8, drift_min_edges=1, research_samples=30),
                             progress=lines.append)
    publish_files(service.engine, study, files_of(make_version(tmp_path / "v1", seed=1)), source_study="walk-greedy",
                  trial=0, checkpoint="c")
    monkeypatch.setattr(service, "_models", lambda version: {"left": Nobody()})
    monkeypatch.setattr(service, "_baseline_accuracies", lambda _version: {"left": 0.95})
    empty = square_frame(HEIGHT, WIDTH, None)
    service.store_samples("gate", SampleBatch(samples=[sample("left", empty) for _ in range(12)]))
    check = service.check()
    assert check is not None and not check.missing and check.scenario is None  # the empty street: all right
    # People walk into the left region: the teacher sees them, the model does not. No scenario is named anywhere.
    service.store_samples("gate", SampleBatch(samples=[sample("left", square_frame(HEIGHT, WIDTH, LEFT_SQUARE))
                                                       for _ in range(24)]))
    check = service.check()
    assert check is not None and [m.name for m in check.missing] == ["left"] and check.scenario is None
    # 36 samples so far (ids 1-36), 26 of them not held out for the publish gate: the re-search waits for 30.
    trainable = sum(not is_held_out(i) for i in range(1, 37))
    assert trainable < 30 and not list_jobs(service.engine, service.deployment)
    assert any("the re-search waits for 30 samples of each" in line and f"left: {trainable} so far" in line
               for line in lines)
    service.store_samples("gate", SampleBatch(samples=[sample("left", square_frame(HEIGHT, WIDTH, LEFT_SQUARE))
                                                       for _ in range(8)]))  # ids 37-44: 32 not held out
    service.check()
    (job,) = list_jobs(service.engine, service.deployment)
    assert (job.parent_study, job.scenario) == ("walk-greedy", "samples:walk")


def test_an_edge_camera_stream_shows_the_model_its_region_and_sends_the_whole_frame(
    study: StudyFile, tmp_path: Path
) -> None:
    from PIL import Image

    from searchmerge.service.edge.streams import CameraStream

    folder = tmp_path / "camera"
    folder.mkdir()
    for number, box in enumerate((LEFT_SQUARE, RIGHT_SQUARE)):
        Image.fromarray(square_frame(HEIGHT, WIDTH, box)).save(folder / f"{number:03d}.png")
    stream = CameraStream(folder, (3, 16, 16), (0.0, 0.0, 0.5, 1.0))
    first, second = stream.next(), stream.next()
    crops = get_source("video").open({"region": [0.0, 0.0, 0.5, 1.0], "query": "presence"}, _context(study),
                                     task="classification")
    assert first.image.shape == crops.train[0][0].shape == (3, 16, 16)
    assert float(first.image.max()) == 1.0 and float(second.image.max()) < 0.1  # the square is in the left half once
    assert first.sample is not None and first.sample.encoded() == (folder / "000.png").read_bytes()
    labelled = Labeller(study).label(SampleBatch(samples=[Sample(model="left", frame=first.sample),
                                                          Sample(model="left", frame=second.sample)]))  # type: ignore[arg-type]
    assert [item.label for item in labelled] == [1, 0]
    assert np.allclose(labelled[0].view.transpose(2, 0, 1) / 255.0, first.image.numpy())  # what the edge's model saw


def test_an_edge_camera_stream_drifts_its_whole_frame_and_the_teacher_labels_what_it_shows(
    study: StudyFile, tmp_path: Path
) -> None:
    """``searchmerge edge --drift`` on camera streams: a knocked camera (``pan``) moves the scene in the whole
    frame, before the model crops it and before the teacher sees it; the evening look darkens it; the teacher
    runs once per frame, however many models send it."""
    from PIL import Image

    from searchmerge.config.drift import drift_scenarios
    from searchmerge.service.edge.agent import camera_drifts
    from searchmerge.service.edge.streams import CameraStream
    from tests import teacher_support

    folder = tmp_path / "camera"
    folder.mkdir()
    Image.fromarray(square_frame(HEIGHT, WIDTH, RIGHT_SQUARE)).save(folder / "000.png")
    settings = dataclasses.replace(study.settings, drift=drift_scenarios({
        "knocked": {"models": {"left": {"pan": 0.5}}},  # the left camera turned right by half the frame
        "dusk": {"brightness": -0.2},
        "elsewhere": {"models": {"left": {"data": {"format": "digits"}}}},
    }))
    cameras = {"left": "left", "left-2": "left", "right": "right"}
    knocked = camera_drifts("knocked", cameras, settings)
    assert knocked["left"].pan == 0.5 and knocked["right"].pan == 0.0 and knocked["right"].look.is_neutral
    with pytest.raises(SearchmergeError, match="unknown drift scenario 'nowhere'; known scenarios: .*knocked"):
        camera_drifts("nowhere", cameras, settings)
    with pytest.raises(SearchmergeError, match="'elsewhere', model 'left'.* other data"):
        camera_drifts("elsewhere", cameras, settings)

    stream = CameraStream(folder, (3, 16, 16), (0.0, 0.0, 0.5, 1.0))
    before = stream.next()
    assert float(before.image.max()) < 0.1 and before.scenario is None  # the square is in the right half
    stream.drift("knocked", knocked["left"])
    after = stream.next()
    assert after.scenario == "knocked" and float(after.image.max()) == 1.0  # now the left camera sees it
    assert after.sample is not None and after.sample.encoding == "png"
    pixels = decode_pixels(after.sample, (HEIGHT, WIDTH), 3)
    assert pixels[12, 8 + 2].min() == 255 and pixels[12, 40 + 2].max() == 0  # x 40..52 moved by 32 px to 8..20
    stream.drift("dusk", camera_drifts("dusk", cameras, settings)["left"])
    dusk = stream.next()
    assert dusk.sample is not None and decode_pixels(dusk.sample, (HEIGHT, WIDTH), 3).max() == 204  # 255 - 0.2 x 255

    teacher_support.SEEN.clear()
    labelled = Labeller(study).label(SampleBatch(samples=[
        Sample(model="left", frame=before.sample), Sample(model="left", frame=after.sample),  # type: ignore[arg-type]
        Sample(model="right", frame=after.sample), Sample(model="right", frame=before.sample),  # type: ignore[arg-type]
    ]))
    assert [item.label for item in labelled] == [0, 1, 0, 1]  # what each frame shows, as the teacher sees it
    assert len(teacher_support.SEEN) == 2  # two distinct frames: the teacher ran twice for four samples
