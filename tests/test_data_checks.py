"""``prepare`` counts every model's splits before anything is trained, and a failed prepare leaves nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchmerge.cli.commands import main
from searchmerge.data.checks import check_data
from searchmerge.data.sources import frames, get_source
from searchmerge.data.sources.base import SourceContext
from tests import user_data

SIZE, FRAMES = 32, 40
#: People walk through the footage in frames 12-27 only, as in a street video filmed around a crowd.
MIDDLE = range(12, 28)


def write_middle_footage(folder: Path) -> Path:
    """``folder/frames/NNN.png`` and ``folder/boxes.csv`` (MOT-style): a bright person in the middle frames."""
    (folder / "frames").mkdir(parents=True)
    lines = []
    for frame in range(FRAMES):
        pixels = np.full((SIZE, SIZE, 3), 30, dtype=np.uint8)
        if frame in MIDDLE:
            pixels[8:24, 10:18] = 220
            lines.append(f"{frame + 1},1,10,8,8,16,1")
        Image.fromarray(pixels).save(folder / "frames" / f"{frame:03d}.png")
    (folder / "boxes.csv").write_text("\n".join(lines) + "\n")
    return folder


STUDY = """
name: middle
target: 0.9
video: {source: frames, labels: boxes.csv, split: SPLIT}
pretrain: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
models:
  - {name: door, arch: ARCH, kwargs: {num_classes: 2}, task: classification,
     data: {format: video, query: presence}}
  - {name: desk, factory: "tests.user_data:tiny_detector", task: detection,
     data: {format: video, query: detection}}
"""


def study(folder: Path, split: str = "{train: 0.6, val: 0.2, test: 0.2}", arch: str = "resnet18") -> Path:
    write_middle_footage(folder)
    path = folder / "middle.yaml"
    path.write_text(STUDY.replace("SPLIT", split).replace("ARCH", arch))
    return path


def refused(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``prepare`` exits 2 and leaves no store and no cache; its error lines."""
    database = path.parent / "middle.db"
    assert main(["prepare", str(path), "--storage", f"sqlite:///{database}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not database.exists() and not any("Traceback" in line for line in err)
    assert not [p for p in path.parent.rglob("*") if "data-cache" in p.name or "checkpoints" in p.name]
    return err


def test_a_video_with_people_only_in_its_middle_is_refused_by_time_and_accepted_in_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []
    save = frames.save_cache_entry
    monkeypatch.setattr(frames, "save_cache_entry", lambda path, pixels: (written.append(path), save(path, pixels)))
    err = refused(study(tmp_path), capsys)  # the frames were decoded and cached, then removed with the refusal
    assert written and not any(path.exists() for path in written)
    assert err[-3] == "searchmerge: error: the splits of 2 models cannot judge them (one line each):"
    door, desk = err[-2:]  # one line per model
    assert door.startswith("  model 'door': split 'test' has no example of class 1 (somebody): ")  # frames 32-39
    assert "split 'train'" not in door and "split 'val'" not in door  # frames 0-23 and 24-31 hold both
    assert "try split: {mode: blocks, block: 10}" in door and "more footage" in door
    assert desk.startswith("  model 'desk': split 'test' has no box of class 1 (person): ")

    source = get_source("video")
    context = SourceContext(folder=tmp_path, defaults={"video": {"source": "frames", "labels": "boxes.csv"}})
    blocks = source.open({"query": "presence", "split": {"mode": "blocks", "block": 10}}, context,
                         task="classification")
    assert blocks.val.frames.tolist() == [6, 7, 16, 17, 26, 27, 36, 37]  # the same cut in every block of 10
    check = check_data("door", blocks, target=0.9)
    assert check.problems == ()
    assert {c.split: dict(c.per_class) for c in check.counts} == {  # type: ignore[arg-type]
        "train": {0: 14, 1: 10}, "val": {0: 4, 1: 4}, "test": {0: 6, 1: 2}}
    assert check.warnings and "one example of 8 moves the metric by 0.125" in check.warnings[0]


def test_a_folder_missing_a_class_in_val_is_refused_naming_the_split_and_the_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_data.write_image_folder(tmp_path / "gate", classes=3, per_class=3)
    for image in (tmp_path / "gate" / "val" / "class2").iterdir():
        image.unlink()  # the class folder stays, empty
    (tmp_path / "gate" / "test" / "class1" / "00.png").unlink()
    (tmp_path / "gate" / "test" / "class1" / "01.png").unlink()
    user_data.write_image_folder(tmp_path / "lobby", classes=3, per_class=2)
    path = tmp_path / "middle.yaml"
    path.write_text("name: gate\nmodels:\n" + "".join(
        f"  - {{name: {name}, factory: 'tests.user_data:tiny_classifier', data: {{format: imagefolder, root: {name}}}}}\n"
        for name in ("gate", "lobby")))
    err = refused(path, capsys)
    assert err[-1].startswith("searchmerge: error: model 'gate': ")  # one line: lobby's splits are fine
    assert "model 'gate': split 'val' has no example of class 2 (class2); split 'test' has 1 example of class 1" \
           " (class1) (fewer than 2, the minimum)" in err[-1]
    assert "class 0" not in err[-1] and "lobby" not in err[-1]
    assert f"into the split's class folder under '{tmp_path / 'gate'}'" in err[-1]


def test_a_detector_without_boxes_in_a_split_is_refused(tmp_path: Path) -> None:
    user_data.write_yolo(tmp_path / "street", per_split=3)
    for label in (tmp_path / "street" / "val" / "labels").iterdir():
        label.unlink()  # val images hold nobody
    data = get_source("yolo").open({"root": "street"}, SourceContext(folder=tmp_path), task="detection")
    assert check_data("street", data, target=0.95).problems == ("split 'val' has no box of class 1",)


def test_an_unknown_arch_suggests_the_close_name_and_leaves_no_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(study(tmp_path, split="{mode: blocks, block: 10}", arch="resnet81"), capsys)
    assert "model 'door': unknown architecture 'resnet81' (did you mean 'resnet18'?)" in err[-1]
