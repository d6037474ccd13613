"""Incremental merging (issue 21): untouched models never retrain, and a plan that extends a
stored feasible plan starts from its merged weights, retraining only the added groups' members."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from searchmerge.cli.commands import main
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.space import SharingPlan
from searchmerge.search.scenarios import drifted_workload
from searchmerge.training.deployment import export_deployment, load_deployment
from searchmerge.training.evaluate import Evaluator, evaluate_plan
from searchmerge.training.prepare import prepare_study
from tests.conftest import copy_prepared

#: Shared by models a and b only: c (a VGG) shares nothing under it.
AB_GROUP = "layer3.0.conv1"


@pytest.fixture(scope="module")
def study(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyFile:
    path, storage = copy_prepared(prepared_tiny, tmp_path_factory.mktemp("incremental"))
    return open_study_file(path, storage=storage)


def _same(model: torch.nn.Module, original: torch.nn.Module) -> bool:
    mine, theirs = model.state_dict(), original.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine)


def _counting_scores(evaluator: Evaluator, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    scored: list[tuple[str, str]] = []
    real = evaluator.score

    def score(model: torch.nn.Module, name: str, split: str) -> float:
        scored.append((name, split))
        return real(model, name, split)

    monkeypatch.setattr(evaluator, "score", score)
    return scored


def test_an_untouched_model_keeps_its_weights_costs_no_step_and_is_not_run(
    study: StudyFile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prepared = prepare_study(study)
    settings = dataclasses.replace(study.settings.evaluator, early_exit=False, max_epochs=1)
    evaluator = Evaluator(prepared, settings, study.settings.target)
    scored = _counting_scores(evaluator, monkeypatch)
    evaluation, merged = evaluator.evaluate(SharingPlan.of([AB_GROUP]))
    assert _same(merged["c"], prepared.models["c"])
    assert evaluation.cost.steps > 0
    assert evaluation.cost.samples == evaluation.cost.steps * settings.batch_size * 2  # a and b only
    outcome = {m.name: m for m in evaluation.models}
    assert not outcome["c"].retrained and outcome["a"].retrained and outcome["b"].retrained
    assert outcome["c"].ratio == 1.0 and ("c", "val") not in scored  # its baseline, on its baseline data
    # Bit for bit in the checkpoint and in an export too.
    _, checkpoint = evaluate_plan(study, AB_GROUP)
    tensors = study.store.load(checkpoint)
    for key, value in prepared.models["c"].state_dict().items():
        assert torch.equal(tensors[f"c/{key}"], value), key
    folder = export_deployment(tmp_path / "export", prepared.workload, merged, plan=evaluation.plan)
    assert _same(load_deployment(folder).models["c"], prepared.models["c"])


def test_on_drifted_data_an_untouched_model_is_scored_once_and_trains_only_when_it_misses(
    study: StudyFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare_study(study)
    night = drifted_workload(study, prepared, "night")
    settings = dataclasses.replace(study.settings.drift_evaluator, early_exit=False, max_epochs=1)
    plan = SharingPlan.of([AB_GROUP])

    lenient = Evaluator(night, settings, 0.05)  # c meets this on the night frames as it is
    scored = _counting_scores(lenient, monkeypatch)
    evaluation, merged = lenient.evaluate(plan)
    c = next(m for m in evaluation.models if m.name == "c")
    assert not c.retrained and _same(merged["c"], prepared.models["c"])
    assert scored.count(("c", "val")) == 1 and c.ratio < 1.0  # judged on the new data, once
    assert evaluation.cost.samples == evaluation.cost.steps * settings.batch_size * 2

    strict = Evaluator(night, settings, 1.0)  # c misses this on the night frames: fine-tuned from its original
    evaluation, merged = strict.evaluate(plan)
    c = next(m for m in evaluation.models if m.name == "c")
    assert c.retrained and not _same(merged["c"], prepared.models["c"])
    assert evaluation.cost.samples == evaluation.cost.steps * settings.batch_size * 3


def test_evaluate_json_says_which_models_retrained(study: StudyFile, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(study.path), "--storage", study.storage, "--share", AB_GROUP, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {m["name"]: m["retrained"] for m in document["models"]} == {"a": True, "b": True, "c": False}
