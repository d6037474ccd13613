"""The video source on a tiny video written here with PyAV (rectangles walking across a dark
frame, with a teacher's boxes that match them): each query, time splits, the crop cache,
frame folders and MOT-style labels, drift, bad input as one line with exit status 2, a
whole study prepared and evaluated, and the shipped campus footage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from searchmerge.cli.commands import main
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources import get_source
from searchmerge.data.sources.base import SourceContext
from searchmerge.data.sources.frame_labels import read_frame_labels
from searchmerge.data.sources.frames import Footage
from searchmerge.storage.store import CheckpointStore
from tests.bad_input_support import assert_prepare_refuses

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, FRAMES = 64, 48, 30


def people(frame: int) -> list[tuple[int, int, int, int]]:
    """The boxes (x, y, width, height) of the walkers on ``frame``: two cross the frame, one stands a while."""
    boxes = [(2 * frame, 6, 6, 12), (WIDTH - 8 - 3 * frame, 28, 6, 14)]
    if 10 <= frame < 20:
        boxes.append((40, 16, 8, 10))
    return [box for box in boxes if 0 <= box[0] and box[0] + box[2] <= WIDTH]


def picture(frame: int) -> np.ndarray:
    pixels = np.full((HEIGHT, WIDTH, 3), 30, dtype=np.uint8)
    for x, y, w, h in people(frame):
        pixels[y : y + h, x : x + w] = 220
    return pixels


def write_footage(folder: Path) -> Path:
    """``folder/walk.mkv`` (lossless FFV1) and ``folder/walk.json``, COCO-style with frame indices."""
    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(folder / "walk.mkv"), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
        for frame in range(FRAMES):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    images = [{"id": f + 1, "frame_index": f, "width": WIDTH, "height": HEIGHT} for f in range(FRAMES)]
    annotations = [{"id": len(images) + i, "image_id": f + 1, "category_id": 1, "bbox": list(box)}
                   for f in range(FRAMES) for i, box in enumerate(people(f))]
    (folder / "walk.json").write_text(json.dumps({
        "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}))
    return folder


def context(folder: Path, cache: Path | None = None, **video: object) -> SourceContext:
    footage = {"source": "walk.mkv", "labels": "walk.json", **video}
    return SourceContext(folder=folder, cache_dir=cache, defaults={"video": footage})


def open_video(folder: Path, cache: Path | None = None, *, video: dict | None = None, **options: object):  # type: ignore[no-untyped-def]
    task = "detection" if options.get("query") == "detection" else "classification"
    return get_source("video").open(options, context(folder, cache, **(video or {})), task=task)


def centres_in(frame: int, region: tuple[float, float, float, float]) -> list[tuple[int, int, int, int]]:
    x0, y0, x1, y1 = region[0] * WIDTH, region[1] * HEIGHT, region[2] * WIDTH, region[3] * HEIGHT
    return [b for b in people(frame) if x0 <= b[0] + b[2] / 2 < x1 and y0 <= b[1] + b[3] / 2 < y1]


def all_labels(data) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(v) for split in ("train", "val", "test") for v in data.class_labels(split)]


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_footage(tmp_path_factory.mktemp("walk"))


LEFT = (0.0, 0.0, 0.5, 1.0)


def test_presence_and_count_follow_the_teacher_boxes_whose_centre_is_in_the_region(footage: Path) -> None:
    presence = open_video(footage, region=list(LEFT), query="presence", image_size=16)
    assert presence.kind == "classification" and presence.num_classes == 2
    assert all_labels(presence) == [int(bool(centres_in(f, LEFT))) for f in range(FRAMES)]
    count = open_video(footage, region=list(LEFT), query="count", bins=[0, 1, 2])
    assert count.num_classes == 3
    assert all_labels(count) == [min(len(centres_in(f, LEFT)), 2) for f in range(FRAMES)]
    assert set(all_labels(count)) == {0, 1, 2}  # the walkers make every class
    image, label = count.train[0]
    assert image.shape == (3, HEIGHT, WIDTH // 2) and image.dtype == torch.float32 and label == all_labels(count)[0]
    unbinned = open_video(footage, query="count")  # the whole frame, one class per count
    assert unbinned.num_classes == 1 + max(len(people(f)) for f in range(FRAMES))


def test_detection_keeps_the_boxes_in_the_region_clipped_and_in_pixels_of_the_crop(footage: Path) -> None:
    region = (0.25, 0.0, 0.75, 1.0)
    data = open_video(footage, region=list(region), query="detection", image_size=[24, 64])
    assert data.kind == "detection" and data.num_classes == 2
    frame = 14  # a walker's box crosses the region's left edge; its centre is inside
    image, target = data.train[frame]
    assert image.shape == (3, 24, 64)
    expected = []
    for x, y, w, h in centres_in(frame, region):
        left, right = max(x, 16) - 16, min(x + w, 48) - 16
        expected.append([left * 2, y / 2, right * 2, (y + h) / 2])  # the crop is 32x48, resized to 64x24
    assert torch.allclose(target["boxes"][target["boxes"][:, 0].argsort()], torch.tensor(sorted(expected)))
    assert target["labels"].tolist() == [1] * len(expected)
    assert any(x < 16 for x, _, _, _ in centres_in(frame, region))  # the clipped case is there


def test_splits_are_contiguous_in_time_and_every_stride_th_frame_is_used(footage: Path) -> None:
    data = open_video(footage, region=list(LEFT), query="presence", video={"split": {"train": 0.5, "val": 0.25,
                                                                                       "test": 0.25}, "stride": 2})
    frames = [data.train.frames.tolist(), data.val.frames.tolist(), data.test.frames.tolist()]
    assert frames == [[0, 2, 4, 6, 8, 10, 12, 14], [16, 18, 20], [22, 24, 26, 28]]  # 15 frames: 8, 3, 4
    assert data.class_labels("val").tolist() == [int(bool(centres_in(f, LEFT))) for f in frames[1]]
    other = open_video(footage, region=list(LEFT), query="presence")
    assert other.fingerprint != data.fingerprint and len(other.train) == 18


def test_crops_are_decoded_once_then_read_from_the_cache(footage: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = open_video(footage, cache, region=list(LEFT), query="count", image_size=16)
    entries = list(cache.rglob("*.npy"))
    assert len(entries) == 1
    uncached = open_video(footage, None, region=list(LEFT), query="count", image_size=16)
    assert torch.equal(first.val[2][0], uncached.val[2][0])

    def no_decoding(self: Footage):  # type: ignore[no-untyped-def]
        raise AssertionError("decoded although the crops are cached")

    monkeypatch.setattr(Footage, "frames", no_decoding)
    again = open_video(footage, cache, region=list(LEFT), query="count", image_size=16)
    assert torch.equal(again.test[3][0], first.test[3][0]) and again.fingerprint == first.fingerprint
    with pytest.raises(AssertionError, match="decoded although"):
        open_video(footage, cache, region=list(LEFT), query="count", image_size=24)  # another size: a new entry


def test_a_folder_of_frames_with_mot_style_labels_gives_the_same_data(footage: Path, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    lines = []
    for frame in range(FRAMES):
        Image.fromarray(picture(frame)).save(frames / f"{frame:04d}.png")
        lines += [f"{frame + 1},{i + 1},{x},{y},{w},{h},1,-1,-1,-1" for i, (x, y, w, h) in enumerate(people(frame))]
    lines.append(f"3,9,{0},{0},{10},{10},0,-1,-1,-1")  # conf 0: an ignored box
    (tmp_path / "walk.csv").write_text("\n".join(lines) + "\n")
    mot = get_source("video").open({"region": list(LEFT), "query": "count", "bins": [0, 1, 2]},
                                   SourceContext(folder=tmp_path, defaults={"video": {"source": "frames",
                                                                                      "labels": "walk.csv"}}),
                                   task="classification")
    coco = open_video(footage, region=list(LEFT), query="count", bins=[0, 1, 2])
    assert all_labels(mot) == all_labels(coco)
    assert torch.equal(mot.train[5][0], torch.from_numpy(picture(5)[:, :32]).permute(2, 0, 1).float() / 255)


def test_drift_darkens_and_moves_a_camera(footage: Path) -> None:
    source = get_source("video")
    options = {"region": [0.1, 0.0, 0.6, 1.0], "query": "presence"}
    evening = source.drifted(options, {"brightness": -0.2, "contrast": 0.6, "noise_std": 0.05})
    assert evening["camera"] == {"brightness": -0.2, "contrast": 0.6, "noise_std": 0.05, "blur_sigma": 0.0}
    assert source.drifted(evening, {"contrast": 0.5})["camera"]["contrast"] == pytest.approx(0.3)  # multiplies
    day, dusk = open_video(footage, **options), open_video(footage, **evening)
    assert dusk.val[1][0].mean() < day.val[1][0].mean() - 0.1
    assert torch.equal(dusk.val[1][0], open_video(footage, **evening).val[1][0])  # the same noise every read
    assert dusk.fingerprint != day.fingerprint
    nudged = source.drifted(options, {"pan": 0.5, "tilt": -0.1})
    assert nudged["region"] == pytest.approx([0.6, 0.0, 1.0, 0.9])  # what leaves the frame is cut off
    with pytest.raises(SearchmergeError, match="a video camera has no rotation_deg"):
        source.drifted(options, {"rotation_deg": 18.0})



def test_a_whole_frame_drifts_as_a_camera_would_show_it() -> None:
    """CameraDrift (the edge's --drift on camera streams): a scenario's common changes then a model's own add
    up; a knocked camera shifts the scene the other way with black beyond the old edge; the same noise for the
    same seed and frame; a drift out of the frame, or a change a camera lacks, is refused in one line."""
    from searchmerge.data.sources.video import CameraDrift

    frame = np.full((10, 20, 3), 200, dtype=np.uint8)
    frame[:, :10] = 100  # dark left half, bright right half
    drift = CameraDrift.from_changes([{"tilt": 0.2, "brightness": -0.1}, {"tilt": -0.1, "pan": -0.25}], "here")
    assert (drift.pan, drift.tilt) == (-0.25, pytest.approx(0.1)) and drift.look.brightness == -0.1
    shown = drift.apply(frame, seed=0, frame=3)
    assert shown.shape == frame.shape and shown.dtype == np.uint8
    assert (shown[9] == 0).all() and (shown[:, :5] == 0).all()  # looked down and left: black bottom row, left band
    assert shown[0, 5, 0] == 100 - 26 and shown[0, 15, 0] == 200 - 26  # the scene moved right by 5 px, 0.1 darker
    noisy = CameraDrift.from_changes([{"noise_std": 0.05}], "here")
    assert np.array_equal(noisy.apply(frame, 0, 7), noisy.apply(frame, 0, 7))
    assert not np.array_equal(noisy.apply(frame, 0, 7), noisy.apply(frame, 0, 8))
    with pytest.raises(SearchmergeError, match="here: pan 1.0 and tilt 0.0 move the view out of the frame"):
        CameraDrift.from_changes([{"pan": 0.5}, {"pan": 0.5}], "here")
    with pytest.raises(SearchmergeError, match="here: a camera has no rotation_deg"):
        CameraDrift.from_changes([{"rotation_deg": 18.0}], "here")

STUDY = """
name: walk
seed: 0
target: 0.9
video: {source: walk.mkv, labels: walk.json, split: {train: 0.6, val: 0.2, test: 0.2, mode: blocks, block: 10},
        image_size: 32}
pretrain: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
evaluator: {max_epochs: 1, batch_size: 8}
models:
  - {name: left, factory: "tests.user_data:tiny_classifier", kwargs: {num_classes: 2}, task: classification,
     data: {format: video, region: [0.0, 0.0, 0.5, 1.0], query: presence}}
  - {name: right, factory: "tests.user_data:tiny_classifier", kwargs: {num_classes: 2}, task: classification,
     data: {format: video, region: [0.5, 0.0, 1.0, 0.5], query: count, bins: [0, 1]}}
"""


@pytest.fixture(scope="module")
def study_base(footage: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    for name in ("walk.mkv", "walk.json"):
        shutil.copy(footage / name, folder / name)
    (folder / "walk.yaml").write_text(STUDY)
    return folder


def test_a_video_study_is_pretrained_on_the_whole_frame_fine_tuned_per_region_and_evaluated(
    study_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "study"
    shutil.copytree(study_base, folder)
    storage = f"sqlite:///{folder / 'walk.db'}"
    assert main(["prepare", str(folder / "walk.yaml"), "--storage", storage]) == 0
    out = capsys.readouterr().err  # progress lines
    assert "pretrained tests.user_data:tiny_classifier" in out and "region [0.0, 0.0, 1.0, 1.0], count" in out
    assert "fine-tuned left" in out and "fine-tuned right" in out
    # 6 validation frames: one frame moves a ratio by 0.167, more than the 0.1 between baseline and target
    assert "warning: model 'left': split 'val' has 6 and 'test' has 6 examples: one example of 6 moves" in out
    assert len(CheckpointStore.for_storage(storage).list()) == 2
    assert list((folder / "walk.db.checkpoints.data-cache" / "video").glob("*.npy"))
    assert main(["evaluate", str(folder / "walk.yaml"), "--storage", storage, "--share", "all"]) == 0


def _edit(old: str, new: str):  # type: ignore[no-untyped-def]
    def change(folder: Path) -> None:
        path = folder / "walk.yaml"
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
    return change


def _labels(change) -> object:  # type: ignore[no-untyped-def]
    def apply(folder: Path) -> None:
        document = json.loads((folder / "walk.json").read_text())
        change(document)
        (folder / "walk.json").write_text(json.dumps(document))
    return apply


BAD_INPUTS = [
    (lambda f: (f / "walk.mkv").write_bytes(b"not a video"), "video '{f}/walk.mkv' does not open"),
    (_edit("source: walk.mkv", "source: gone.mkv"), "video '{f}/gone.mkv' does not exist"),
    (_labels(lambda d: d["images"].append({"id": 99, "frame_index": FRAMES, "width": WIDTH, "height": HEIGHT})),
     f"labels file '{{f}}/walk.json' labels frame {FRAMES}, but the video has {FRAMES} frames"),
    (_labels(lambda d: d["annotations"][0].update(category_id=7)),
     "labels file '{f}/walk.json': annotation #1 has category_id 7, an unknown class"),
    (_edit("query: presence}", "query: presence, classes: [car]}"),
     "model 'left': data (video): class 'car' is not in the labels file '{f}/walk.json' (its classes: person)"),
    (_edit("[0.0, 0.0, 0.5, 1.0]", "[0.0, 0.0, 1.5, 1.0]"),
     "model 'left': data (video): region [0.0, 0.0, 1.5, 1.0] is not inside [0, 1]"),
    (_edit("[0.0, 0.0, 0.5, 1.0]", "[0.5, 0.0, 0.5, 1.0]"),
     "model 'left': data (video): region [0.5, 0.0, 0.5, 1.0] has zero area"),
    (_edit("test: 0.2,", "test: 0.01,"),
     "model 'left': data (video): split 'test' (0.01 of 30 frames, in blocks of 10) gets no frame"),
    (_edit("bins: [0, 1]", "bins: [0, 1, 1]"), "model 'right': data (video): bins [0, 1, 1] must start at 0 and be"
                                               " increasing"),
    (_edit("query: presence}", "query: detection}"),
     "model 'left': data (video): query 'detection' gives detection labels, but the model's task is classification"),
    (_edit("video: {", "video: {sorce: x, "), "video: unknown key 'sorce' (did you mean 'source'?)"),
]


@pytest.mark.parametrize(("breaks", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_stores_nothing(
    breaks, message: str, study_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    assert_prepare_refuses(study_base, "walk.yaml", breaks, message, tmp_path, capsys)


def test_the_shipped_campus_footage_decodes_to_795_frames_and_its_teacher_labels_load() -> None:
    campus = ROOT / "studies" / "campus"
    footage = Footage.probe(campus / "campus.mp4")
    assert (footage.frame_count, footage.height, footage.width) == (795, 288, 384)
    assert sum(1 for _ in footage.frames()) == 795
    labels = read_frame_labels(campus / "campus-boxes.json", footage.frame_count, (footage.height, footage.width))
    assert labels.classes == ("person",) and labels.frames == tuple(range(795))
    assert sum(len(boxes) for boxes in labels.boxes.values()) == 2987


def test_the_campus_study_file_is_valid_and_its_detector_can_share_with_a_mobilenet(tmp_path: Path) -> None:
    from searchmerge.analysis.analyze import analyze
    from searchmerge.config.data_request import model_request
    from searchmerge.config.study import open_study_file
    from searchmerge.config.workload import ModelSpec, Workload
    from searchmerge.zoo import person_detector

    study = open_study_file(ROOT / "studies" / "campus.yaml", storage=f"sqlite:///{tmp_path / 'campus.db'}")
    assert {model_request(spec).kind for spec in study.workload.models} == {"classification", "detection"}
    assert study.settings.video["source"] == "campus/campus.mp4"
    detector = person_detector(min_size=48, max_size=64).train()
    losses = detector([torch.rand(3, 48, 64)], [{"boxes": torch.tensor([[10.0, 8.0, 20.0, 30.0]]),
                                                  "labels": torch.tensor([1])}])
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness"}
    workload = Workload(models=(ModelSpec(name="people", module=detector),
                                ModelSpec(name="count", arch="mobilenet_v3_small", kwargs={"num_classes": 3})))
    shared = [g for g in analyze(workload).groups if g.models == ("people", "count")]
    assert any(layer == "backbone.body.0.0" for g in shared for _, layer in g.members)
