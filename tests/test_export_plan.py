"""`searchmerge export --plan PLAN`: the weights `evaluate` stored for a plan (issue 21 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from searchmerge.cli.commands import main
from searchmerge.config.study import open_study_file
from searchmerge.training.deployment import load_deployment
from searchmerge.training.prepare import prepare_study
from tests.conftest import copy_prepared

AB_GROUP = "layer3.0.conv1"


def test_export_a_plan_evaluated_with_evaluate_the_originals_and_a_plan_never_evaluated(
    prepared_tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, storage = copy_prepared(prepared_tiny, tmp_path / "study")
    base = [str(path), "--storage", storage]
    assert main(["evaluate", *base, "--share", AB_GROUP, "--seed", "1", "--json"]) == 0
    checkpoint = json.loads(capsys.readouterr().out)["checkpoint"]
    study = open_study_file(path, storage=storage)

    assert main(["export", *base, "--plan", AB_GROUP, "--seed", "1", "--out", str(tmp_path / "plan")]) == 0
    assert f"plan {AB_GROUP!r} as 'evaluate' stored it" in capsys.readouterr().out
    deployment = load_deployment(tmp_path / "plan")
    stored = study.store.load(checkpoint)
    for name, model in deployment.models.items():
        for key, value in model.state_dict().items():
            assert torch.equal(value, stored[f"{name}/{key}"]), f"{name}/{key}"
    assert deployment.metadata["checkpoint"] == checkpoint and deployment.metadata["confirmed"] is None
    assert sorted(deployment.plan.shared) == [AB_GROUP]  # type: ignore[union-attr]

    assert main(["export", *base, "--plan", "none", "--out", str(tmp_path / "none")]) == 0
    originals = prepare_study(study).models
    for name, model in load_deployment(tmp_path / "none").models.items():
        for key, value in model.state_dict().items():
            assert torch.equal(value, originals[name].state_dict()[key]), f"{name}/{key}"

    capsys.readouterr()
    assert main(["export", *base, "--plan", AB_GROUP, "--out", str(tmp_path / "other-seed")]) == 2  # seed 0: never
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("searchmerge: error:")]
    assert len(errors) == 1 and f"searchmerge evaluate {path} --share {AB_GROUP} --seed 0" in errors[0]
    assert not (tmp_path / "other-seed").exists()
    assert main(["export", *base, "--plan", AB_GROUP, "--trial", "0", "--out", str(tmp_path / "x")]) == 2
    assert "drop --trial" in capsys.readouterr().err
