"""Uncertainty shown and used (issue 24 item 2): sample counts and 95% intervals, and acceptance on them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from scipy.stats import binomtest

from searchmerge.cli.commands import main
from searchmerge.config.settings import EvaluatorSettings, StudySettings
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.space import SharingPlan
from searchmerge.core.uncertainty import wilson
from searchmerge.data.tasks import get_kind
from searchmerge.search.merge_search import open_search
from searchmerge.training.evaluate import (
    Cost,
    Evaluation,
    Evaluator,
    ModelOutcome,
    evaluator_identity,
)
from searchmerge.training.prepare import prepare_study
from tests.conftest import copy_prepared
from tests.test_tasks import Oracle

AB_GROUP = "layer3.0.conv1"


@pytest.fixture(scope="module")
def study(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyFile:
    path, storage = copy_prepared(prepared_tiny, tmp_path_factory.mktemp("uncertainty"))
    return open_study_file(path, storage=storage)


def _outcome(ratio: float, samples: int, baseline: float = 0.9) -> ModelOutcome:
    return ModelOutcome(name="a", accuracy=ratio * baseline, baseline=baseline, ratio=ratio, meets_target=True,
                        samples=samples, interval="wilson")


def _evaluation(outcome: ModelOutcome, *, accept: str = "point", margin: float = 0.0) -> Evaluation:
    return Evaluation(plan=SharingPlan.of(["g"]), stop_reason="success", target=0.95, models=(outcome,),
                      unique_bytes=1, saved_bytes=1, cost=Cost(0, 0, 0.0, 0), accept=accept, accept_margin=margin)


def test_wilson_is_scipys_and_a_ratio_interval_is_its_accuracys_over_the_baseline() -> None:
    for correct, n, confidence in ((90, 100, 0.95), (7, 40, 0.9), (0, 12, 0.95), (12, 12, 0.95)):
        expected = binomtest(correct, n).proportion_ci(confidence, method="wilson")
        got = wilson(correct / n, n, confidence)
        assert (got.low, got.high) == pytest.approx((expected.low, expected.high))
    outcome = _outcome(0.97, 60)
    interval = outcome.ratio_interval
    assert interval is not None and interval.samples == 60 and interval.method == "wilson"
    assert interval.low == pytest.approx(wilson(0.97 * 0.9, 60).low / 0.9)
    assert interval.low < 0.97 < interval.high


def test_lower_bound_acceptance_refuses_a_plan_whose_point_estimate_passes() -> None:
    outcome = _outcome(0.97, 60)  # 0.97 of the baseline on 60 samples: its interval reaches well below 0.95
    assert _evaluation(outcome).feasible  # the default: the measured ratio
    strict = _evaluation(outcome, accept="lower-bound")
    assert not strict.feasible
    assert strict.constraint == pytest.approx(0.95 - outcome.ratio_interval.low)  # type: ignore[union-attr]
    assert not _evaluation(outcome, margin=0.03).feasible  # 0.97 - 0.03 < 0.95
    assert _evaluation(outcome, margin=0.01).feasible
    assert _evaluation(_outcome(1.0, 20_000), accept="lower-bound").feasible  # many samples: a narrow interval
    # written and read back with the record, so every reader judges it the same way
    again = Evaluation.from_dict(strict.plan, json.loads(json.dumps(strict.to_dict())))
    assert not again.feasible and again.models[0].samples == 60


def test_the_evaluator_passes_a_check_by_the_studys_acceptance(study: StudyFile) -> None:
    prepared = prepare_study(study)
    point = Evaluator(prepared, study.settings.evaluator, 0.95)
    strict = Evaluator(prepared, dataclasses.replace(study.settings.evaluator, accept="lower-bound"), 0.95)
    n = point.samples("a", "val")
    assert n == len(prepared.data["a"].val) > 0
    assert point.passes("a", 0.97) and not strict.passes("a", 0.97)  # small validation split: a wide interval
    assert strict.passes("a", 1.0, unchanged=True)  # the original on its own data: exactly 1
    evaluation, _ = strict.evaluate(SharingPlan.of([AB_GROUP]))
    assert evaluation.accept == "lower-bound"
    for m in evaluation.models:
        assert m.meets_target == strict.passes(m.name, m.ratio, unchanged=m.interval == "exact") and (
            m.test_ratio is None or strict.passes(m.name, m.test_ratio, "test"))
    assert evaluation.feasible == all(m.meets_target for m in evaluation.models)


def test_acceptance_is_read_from_the_study_file_and_changes_identities_only_when_not_default() -> None:
    assert "accept" not in evaluator_identity(EvaluatorSettings())
    assert "accept_margin" not in evaluator_identity(EvaluatorSettings())
    strict = StudySettings.from_document({"accept": "lower-bound"})
    assert strict.evaluator.accept == strict.drift_evaluator.accept == "lower-bound"
    assert evaluator_identity(strict.evaluator)["accept"] == "lower-bound"
    margin = StudySettings.from_document({"accept": {"margin": 0.01}})
    assert evaluator_identity(margin.evaluator)["accept_margin"] == 0.01
    assert StudySettings.from_document(margin.to_document()) == margin


def test_evaluate_prints_each_baseline_and_ratio_with_its_count_and_interval(
    study: StudyFile, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", str(study.path), "--storage", study.storage, "--share", AB_GROUP]
    assert main([*base, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    prepared = prepare_study(study)
    for m in document["models"]:
        n = len(prepared.data[m["name"]].val)
        assert m["samples"] == n
        assert m["ratio_interval"]["samples"] == m["baseline_interval"]["samples"] == n
        assert m["ratio_interval"]["method"] in ("wilson", "exact")
        assert m["ratio_interval"]["low"] <= m["ratio"] <= m["ratio_interval"]["high"]
        assert m["baseline_interval"]["low"] <= m["baseline"] <= m["baseline_interval"]["high"]
    assert main(base) == 0
    text = capsys.readouterr().out
    assert "ratio 95% CI" in text and "baseline 95% CI" in text and "Wilson" in text
    for m in document["models"]:
        row = next(line for line in text.splitlines() if line.startswith(m["name"] + " "))
        low, high = m["ratio_interval"]["low"], m["ratio_interval"]["high"]
        assert f"[{low:.3f}, {high:.3f}]" in row and f" {m['samples']} " in row


def test_each_trial_records_feasible_the_worst_ratio_and_each_ratios_interval(
    prepared_tiny: Path, tmp_path: Path
) -> None:
    path, storage = copy_prepared(prepared_tiny, tmp_path)  # its own store: the plan is evaluated, not read back
    study = open_study_file(path, storage=storage)
    search = open_search(study, strategy="greedy", study_name="uncertainty-attrs", seed=0)
    search.optuna_study.enqueue_trial(search.space.params_from_plan(SharingPlan.of([AB_GROUP])))
    search.run(1)
    trial = search.finished_trials()[0]
    attrs = trial.user_attrs
    prepared = prepare_study(study)
    assert isinstance(attrs["feasible"], bool) and attrs["feasible"] == (attrs["constraint"] <= 0)
    assert attrs["worst_ratio"] == pytest.approx(min(attrs[f"ratio:{name}"] for name in prepared.models), abs=1e-5)
    worst = attrs["worst_model"]  # the model that decides the constraint (its validation or test ratio)
    assert worst in prepared.models
    assert f"{attrs['constraint']:+.4f}" in attrs["constraint_is"] and worst in attrs["constraint_is"]
    for name in prepared.models:
        assert attrs[f"samples:{name}"] == len(prepared.data[name].val)
        assert f"n={attrs[f'samples:{name}']}" in attrs[f"ratio_ci95:{name}"]
    assert search.optuna_study.metric_names == ["bytes saved (B)"]
    # The note the dashboard shows first: the verdict and how the constraint follows from the worst ratio.
    from optuna_dashboard._note import get_note_from_system_attrs

    optuna_study = search.optuna_study
    system_attrs = optuna_study._storage.get_study_system_attrs(optuna_study._study_id)
    note = get_note_from_system_attrs(system_attrs, trial._trial_id)["body"]
    verdict = "**feasible**" if attrs["feasible"] else "**infeasible**"
    assert note.startswith(f"{verdict}: constraint {attrs['constraint']:+.4f} = target 0.9 - worst ratio")
    assert f"of {worst}" in note.splitlines()[0]
    for name in prepared.models:
        assert f"| {name} | {attrs[f'ratio:{name}']:.3f} |" in note and f"| {attrs[f'samples:{name}']} |" in note
    assert trial.intermediate_values, "the checks are reported as the trial's curve"
    if attrs["feasible"]:
        assert trial.intermediate_values[max(trial.intermediate_values)] >= study.settings.target


def test_a_detectors_map_gets_a_bootstrap_interval_over_its_images() -> None:
    kind = get_kind("detection")
    targets, answers = [], []
    for i in range(12):  # one box per image; a third of them answered 4 pixels off (missed at IoU 0.5)
        box = torch.tensor([[2.0, 2.0, 12.0, 12.0]]) + i
        targets.append({"boxes": box, "labels": torch.tensor([1])})
        answers.append({"boxes": box - (0.0 if i % 3 else 4.0), "labels": torch.tensor([1])})
    batch = kind.collate([(torch.zeros(3, 32, 32), t) for t in targets])
    detector, cpu = Oracle(answers).eval(), torch.device("cpu")
    mean_ap = kind.metric(detector, [batch], cpu)
    interval = kind.metric_interval(detector, [batch], cpu)
    assert interval is not None and interval.method == "bootstrap" and interval.samples == 12
    assert interval.low < mean_ap < interval.high
    assert kind.metric_interval(detector, [batch], cpu) == interval  # seeded: the same every time
    assert get_kind("classification").metric_interval(detector, [batch], cpu) is None  # Wilson's, from the count
    outcome = ModelOutcome(name="d", accuracy=mean_ap, baseline=0.8, ratio=mean_ap / 0.8, meets_target=False,
                           samples=12, interval="bootstrap", metric_bounds=(interval.low, interval.high))
    ratio = outcome.ratio_interval
    assert ratio is not None and ratio.method == "bootstrap"
    assert (ratio.low, ratio.high) == pytest.approx((interval.low / 0.8, interval.high / 0.8))
    assert outcome.baseline_interval is None  # the original's mAP was not resampled
    stored = Evaluation.from_dict(SharingPlan.of(["g"]), json.loads(json.dumps(_evaluation(outcome).to_dict())))
    assert stored.models[0].ratio_interval == ratio
