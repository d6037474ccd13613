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
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.search.merge_search import TrialSummary, incremental_start, open_search
from searchmerge.search.scenarios import drifted_workload
from searchmerge.training.deployment import export_deployment, load_deployment
from searchmerge.training.evaluate import (
    Evaluator,
    StartPoint,
    evaluate_plan,
    merged_key,
)
from searchmerge.training.merge import merged_state
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


def test_an_extending_plan_retrains_only_the_added_groups_members_from_the_start_weights(
    study: StudyFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = prepare_study(study)
    evaluator = Evaluator(prepared, study.settings.evaluator, study.settings.target)
    base = SharingPlan.of([AB_GROUP])
    base_evaluation, base_merged = evaluator.evaluate(base)
    start = StartPoint(plan=base, checkpoint="base", tensors=merged_state(base_merged), evaluation=base_evaluation)
    plan = SharingPlan.of([AB_GROUP, "fc"])  # adds fc, shared by b and c: a is frozen with the start's weights

    # With a learning rate too small to move a float32 weight nothing moves but batch-norm statistics: the added group holds its
    # first member's (b's) tensors in the start's weights, and every other weight is the start's.
    still = Evaluator(prepared, dataclasses.replace(study.settings.evaluator, lr=1e-30, max_epochs=1, early_exit=False),
                      study.settings.target, analysis=evaluator.analysis)
    scored = _counting_scores(still, monkeypatch)
    evaluation, merged = still.evaluate(plan, start=start)
    assert torch.equal(merged["c"].fc.weight, base_merged["b"].fc.weight)
    assert merged["c"].fc.weight is merged["b"].fc.weight
    assert _same(merged["a"], base_merged["a"]) and ("a", "val") not in scored  # its ratio is the start's
    outcome = {m.name: m for m in evaluation.models}
    assert {n for n, m in outcome.items() if m.retrained} == {"b", "c"}
    assert outcome["a"].ratio == next(m.ratio for m in base_evaluation.models if m.name == "a")
    assert evaluation.cost.samples == evaluation.cost.steps * still.settings.batch_size * 2

    evaluation, merged = evaluator.evaluate(plan, start=start)
    assert _same(merged["a"], base_merged["a"])  # a's layer3.0.conv1, shared with b, included
    assert torch.equal(merged["b"].get_submodule(AB_GROUP).weight, base_merged["a"].get_submodule(AB_GROUP).weight)
    with pytest.raises(SearchmergeError, match="does not extend"):
        evaluator.evaluate(base, start=start)


def _summary(number: int, shared: list[str], saved: int, *, feasible: bool = True,
             checkpoint: str | None = "x") -> TrialSummary:
    return TrialSummary(number=number, state="COMPLETE", plan=SharingPlan.of(shared), feasible=feasible,
                        saved_bytes=saved, unique_bytes=0, worst_ratio=1.0, seconds=0.0, checkpoint=checkpoint,
                        strategy="tpe")


def test_the_start_is_the_largest_stored_feasible_strict_subset() -> None:
    plan = SharingPlan.of(["g1", "g2", "g3"])
    trials = [
        _summary(0, ["g1"], 10),
        _summary(1, ["g1", "g2"], 30),
        _summary(2, ["g2", "g3"], 50, feasible=False),  # infeasible
        _summary(3, ["g1", "g4"], 90),  # not a subset
        _summary(4, ["g1", "g2", "g3"], 60),  # the plan itself
        _summary(5, ["g3"], 30),  # ties with trial 1: the earlier wins
        _summary(6, ["g2", "g3"], 80, checkpoint=None),  # no stored weights
        _summary(7, [], 0),  # sharing nothing is no start
    ]
    assert incremental_start(plan, trials).number == 1  # type: ignore[union-attr]
    assert incremental_start(SharingPlan.of(["g5"]), trials) is None


def test_a_search_starts_each_plan_from_its_largest_stored_feasible_subset(study: StudyFile) -> None:
    prepared = prepare_study(study)
    search = open_search(study, prepared=prepared, strategy="tpe", study_name="incremental-tpe", seed=0)
    base, plan = SharingPlan.of([AB_GROUP]), SharingPlan.of([AB_GROUP, "fc"])
    for shared in (base, plan):
        search.optuna_study.enqueue_trial(search.space.params_from_plan(shared))
    search.run(2)
    first, second = sorted(search.finished_trials(), key=lambda t: t.number)
    assert first.user_attrs["feasible"], "the start must be feasible for this test"
    assert "start_trial" not in first.user_attrs
    assert second.user_attrs["start_trial"] == 0
    assert second.user_attrs["start_checkpoint"] == first.user_attrs["checkpoint"]
    assert second.user_attrs["retrained_models"] == ["b", "c"]
    record = study.store.record(second.user_attrs["checkpoint"])
    assert record.metadata["evaluated_with"]["start_checkpoint"] == first.user_attrs["checkpoint"]
    # The key records where it started: the same plan from the originals has a record of its own.
    from_originals = merged_key(prepared, plan, target=study.settings.target, settings=search.evaluator_settings,
                                seed=0)
    assert study.store.find(from_originals) is None
    before, after = study.store.load(first.user_attrs["checkpoint"]), study.store.load(record.id)
    assert all(torch.equal(after[key], value) for key, value in before.items() if key.startswith("a/"))

    scratch = open_search(study, prepared=prepared, strategy="tpe", study_name="scratch-tpe", seed=0,
                          incremental=False)
    scratch.optuna_study.enqueue_trial(search.space.params_from_plan(base))
    scratch.optuna_study.enqueue_trial(search.space.params_from_plan(plan))
    scratch.run(2)
    second = max(scratch.finished_trials(), key=lambda t: t.number)
    assert "start_trial" not in second.user_attrs and study.store.find(from_originals) is not None
