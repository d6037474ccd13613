"""A user's own models and data through every command, with only a study file: two torchvision
classifiers with their own weights on image folders, a YOLO-format detector and a dataset factory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import save_file

from searchmerge.analysis import analyze
from searchmerge.cli.commands import main
from searchmerge.config.study import open_study_file
from searchmerge.data.sources import get_source
from searchmerge.data.sources.base import SourceContext
from searchmerge.training.prepare import prepare_study
from tests import user_data

STUDY = """
name: user-box
seed: 0
target: 0.5
evaluator: {fraction: 1.0, max_epochs: 1, checks_per_epoch: 1, batch_size: 8, lr: 0.0005, init: first, min_checks: 1}
models:
  - name: gate
    arch: mobilenet_v3_small
    kwargs: {num_classes: 3}
    weights: weights/gate.safetensors
    task: classification
    data: {format: imagefolder, root: data/gate}
  - name: lobby
    arch: mobilenet_v3_small
    kwargs: {num_classes: 3}
    weights: weights/lobby.pt
    task: classification
    data: {format: imagefolder, root: data/lobby, image_size: 32, mean: 0.5, std: 0.25}
  - name: street
    factory: tests.user_data:tiny_detector
    kwargs: {num_classes: 2}
    weights: weights/street.safetensors
    task: detection
    data: {format: yolo, root: data/street}
  - name: mine
    factory: tests.user_data:tiny_classifier
    weights: weights/mine.safetensors
    task: classification
    data: {format: python, factory: tests.user_data:colour_splits}
drift:
  gate-night:
    models: {gate: {data: {format: imagefolder, root: data/gate-night}}}
"""


def _samples(fmt: str, root: Path, **options: object) -> list:
    """The training samples of a folder as the study will read them (the user trained on the same)."""
    data = get_source(fmt).open({"root": str(root), **options}, SourceContext(folder=root), task=fmt)
    return [data.train[i] for i in range(len(data.train))]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's folder: data, trained weights and the study file; nothing prepared yet."""
    from torchvision.models import mobilenet_v3_small

    folder = tmp_path_factory.mktemp("user")
    data, weights = folder / "data", folder / "weights"
    weights.mkdir()
    user_data.write_image_folder(data / "gate", seed=0)
    user_data.write_image_folder(data / "lobby", seed=1, splits=("train", "val"))
    user_data.write_image_folder(data / "gate-night", seed=2, splits=("train", "val"))
    user_data.write_yolo(data / "street", seed=3)

    gate = user_data.train_briefly(mobilenet_v3_small(num_classes=3), "classification",
                                   _samples("imagefolder", data / "gate"), steps=40)
    save_file(gate.state_dict(), str(weights / "gate.safetensors"))
    lobby = user_data.train_briefly(mobilenet_v3_small(num_classes=3), "classification",
                                    _samples("imagefolder", data / "lobby", mean=0.5, std=0.25), steps=40, seed=1)
    torch.save(lobby.state_dict(), weights / "lobby.pt")
    street = user_data.train_briefly(user_data.tiny_detector(), "detection", _samples("yolo", data / "street"),
                                     steps=120)
    save_file(street.state_dict(), str(weights / "street.safetensors"))
    splits = user_data.colour_splits()
    mine = user_data.train_briefly(user_data.tiny_classifier(), "classification",
                                   [splits["train"][i] for i in range(len(splits["train"]))], steps=40)
    save_file(mine.state_dict(), str(weights / "mine.safetensors"))
    (folder / "user.yaml").write_text(STUDY)
    return folder


def test_every_command_runs_on_user_models_and_data(
    user_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "user"
    shutil.copytree(user_dir, work)
    monkeypatch.chdir(work)  # the default storage, user-box.db, lands here
    assert main(["prepare", "user.yaml"]) == 0
    out = capsys.readouterr()
    for name in ("gate", "lobby", "street", "mine"):
        line = next(line for line in out.out.splitlines() if line.startswith(f"{name}: "))
        assert float(line.split("val ")[1].split(",")[0]) > 0
        assert line.split(",")[1].split("(")[0].strip().endswith("mAP@0.5" if name == "street" else "top-1 accuracy")
    assert "street as given (YOLO data" in out.err and "mAP@0.5" in out.err
    assert not any(line.startswith(("pretrained", "fine-tuned")) for line in out.err.splitlines())
    assert (work / "user-box.db.checkpoints.data-cache").is_dir()  # decoded images kept beside the store

    assert main(["evaluate", "user.yaml", "--share", "none", "--json"]) == 0
    none = json.loads(capsys.readouterr().out)
    assert [m["ratio"] for m in none["models"]] == [1.0, 1.0, 1.0, 1.0]  # the detector included

    study = open_study_file(work / "user.yaml")
    prepared = prepare_study(study)
    bound = analyze(prepared.workload, built=prepared.models)
    assert main(["evaluate", "user.yaml", "--share", "all", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert every["unique_bytes"] == bound.max_sharing_bytes
    # The detector and the classifier on its backbone share layers, retrained jointly.
    assert any({"street", "mine"} <= set(g.models) for g in bound.groups)

    assert main(["search", "user.yaml", "--n-trials", "3"]) == 0
    finished = optuna.load_study(study_name="user-box-greedy", storage=study.storage).get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(finished) == 3
    assert main(["report", "user.yaml", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "accuracy_vs_memory.png").is_file()
    assert main(["export", "user.yaml", "--trial", str(finished[0].number), "--out", str(tmp_path / "deploy")]) == 0
    manifest = json.loads((tmp_path / "deploy" / "manifest.json").read_text())
    assert [m["name"] for m in manifest["workload"]["models"]] == ["gate", "lobby", "street", "mine"]

    capsys.readouterr()
    # Drift on user data: the gate camera's night footage is another image folder.
    assert main(["drift-check", "user.yaml", "--data", "gate-night", "--json"]) in (0, 3)
    check = json.loads(capsys.readouterr().out)
    after = {m["name"]: (m["accuracy_before"], m["accuracy_after"]) for m in check["models"]}
    assert set(after) == {"gate", "lobby", "street", "mine"}
    assert all(before == later for name, (before, later) in after.items() if name != "gate")  # their data stays
    # ... and a re-search on it, starting from the deployed plan (re-validated on the night folder first).
    assert main(["research", "user.yaml", "--data", "gate-night", "--n-trials", "1"]) == 0
    research = optuna.load_study(study_name="user-box-greedy-gate-night", storage=study.storage)
    assert research.user_attrs["searchmerge:scenario"] == "gate-night"
    (trial,) = research.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert trial.user_attrs["warm_start"] == "deployed" and trial.user_attrs["parent_study"] == "user-box-greedy"


def test_changed_weights_or_data_are_new_originals(user_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "user"
    shutil.copytree(user_dir, work)
    storage = f"sqlite:///{work / 'u.db'}"
    first = prepare_study(open_study_file(work / "user.yaml", storage=storage))
    again = prepare_study(open_study_file(work / "user.yaml", storage=storage))
    assert again.workload_fingerprint == first.workload_fingerprint
    assert {n: b.checkpoint_id for n, b in again.baselines.items()} == {
        n: b.checkpoint_id for n, b in first.baselines.items()}

    state = torch.load(work / "weights" / "lobby.pt", weights_only=True)
    state["classifier.3.bias"] = state["classifier.3.bias"] + 0.01
    torch.save(state, work / "weights" / "lobby.pt")
    changed = prepare_study(open_study_file(work / "user.yaml", storage=storage))
    assert changed.workload_fingerprint != first.workload_fingerprint

    image = next((work / "data" / "gate" / "val" / "class0").iterdir())
    image.write_bytes((work / "data" / "gate" / "val" / "class1" / "00.png").read_bytes())
    moved = prepare_study(open_study_file(work / "user.yaml", storage=storage))
    assert moved.data["gate"].fingerprint != changed.data["gate"].fingerprint
    assert moved.data["lobby"].fingerprint == changed.data["lobby"].fingerprint
