"""Preparation, the retraining evaluator and the `prepare` / `evaluate` commands on a tiny workload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from searchmerge.analysis import analyze
from searchmerge.cli.commands import main
from searchmerge.config.settings import StudySettings
from searchmerge.config.study import open_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.storage.store import CheckpointCorruptError
from searchmerge.training.evaluate import Evaluator, evaluate_plan
from searchmerge.training.merge import merge_models
from searchmerge.training.prepare import prepare_study
from tests.conftest import TINY_STUDY, copy_prepared


@pytest.fixture(scope="module")
def study_dir(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    copy_prepared(prepared_tiny, folder)
    return folder


def open_tiny(folder: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    return open_study_file(folder / "tiny.yaml", storage=f"sqlite:///{folder / 'tiny.db'}", **kwargs)


def test_prepare_stores_originals_and_reuses_them(study_dir: Path) -> None:
    study = open_tiny(study_dir)
    prepared = prepare_study(study)  # loaded, not retrained
    assert set(prepared.baselines) == {"a", "b", "c"}
    for baseline in prepared.baselines.values():
        assert 0.5 < baseline.val_accuracy <= 1 and 0 < baseline.test_accuracy <= 1
    records = study.store.list(prepared.workload_fingerprint, kind="original")
    assert {r.id for r in records} == {b.checkpoint_id for b in prepared.baselines.values()}


def test_preparing_again_from_scratch_gives_the_same_originals(study_dir: Path, tmp_path: Path) -> None:
    """Seeded end to end: a fresh store trains bit-identical originals (heads included)."""
    first = prepare_study(open_tiny(study_dir))
    again = prepare_study(open_study_file(study_dir / "tiny.yaml", storage=f"sqlite:///{tmp_path / 'again.db'}"))
    assert {n: b.val_accuracy for n, b in again.baselines.items()} == {
        n: b.val_accuracy for n, b in first.baselines.items()
    }
    for name, model in first.models.items():
        for (key, value), other in zip(model.state_dict().items(), again.models[name].state_dict().values()):
            assert value.equal(other), f"{name}.{key} differs between two preparations"


def test_share_none_keeps_every_model_exactly(study_dir: Path) -> None:
    study = open_tiny(study_dir)
    evaluation, checkpoint = evaluate_plan(study, "none")
    assert evaluation.feasible and evaluation.stop_reason == "success"
    assert all(m.ratio == pytest.approx(1.0, abs=0.01) for m in evaluation.models)
    prepared = prepare_study(study)
    assert evaluation.unique_bytes == analyze(prepared.workload, built=prepared.models).total_bytes
    assert evaluation.saved_bytes == 0
    assert study.store.record(checkpoint).metadata["evaluation"]["feasible"] is True


def test_share_all_reaches_the_max_sharing_bound(study_dir: Path) -> None:
    study = open_tiny(study_dir)
    prepared = prepare_study(study)
    bound = analyze(prepared.workload, built=prepared.models)
    evaluation, checkpoint = evaluate_plan(study, "all")
    assert evaluation.unique_bytes == bound.max_sharing_bytes
    assert evaluation.cost.steps > 0 and evaluation.cost.samples == evaluation.cost.steps * 64 * 3
    assert len(evaluation.curve) == evaluation.cost.checks
    tensors = study.store.load(checkpoint)
    assert any(key.startswith("a/") for key in tensors)


def test_evaluation_is_repeatable(study_dir: Path) -> None:
    study = open_tiny(study_dir)
    prepared = prepare_study(study)
    evaluator = Evaluator(prepared, study.settings.evaluator, 0.9)
    plan = SharingPlan.of([evaluator.analysis.groups[0].name])
    first, _ = evaluator.evaluate(plan, seed=3)
    second, _ = evaluator.evaluate(plan, seed=3)
    assert [m.ratio for m in first.models] == [m.ratio for m in second.models]
    assert first.cost.steps == second.cost.steps


def test_frozen_models_and_what_they_share_keep_their_weights(study_dir: Path) -> None:
    study = open_tiny(study_dir)
    prepared = prepare_study(study)
    settings = study.settings.with_evaluator(early_exit=False, max_epochs=1).evaluator
    # Norm layers shared too: a learner must not move a frozen model's shared statistics either.
    evaluator = Evaluator(prepared, settings, 0.9, analysis=analyze(prepared.workload, built=prepared.models,
                                                                    share_norm=True))
    plan = SharingPlan.of([g.name for g in evaluator.analysis.groups])
    kept = next(iter(prepared.models))
    before = merge_models(prepared.models, evaluator.analysis.groups, plan, init=settings.init)
    evaluation, merged = evaluator.evaluate(plan, frozen={kept})
    assert evaluation.cost.steps > 0
    assert evaluation.cost.samples == evaluation.cost.steps * settings.batch_size * (len(prepared.models) - 1)
    for key, value in merged[kept].state_dict().items():
        assert torch.equal(value, before[kept].state_dict()[key]), key  # shared tensors included
    others = [n for n in prepared.models if n != kept]
    assert any(
        not torch.equal(value, before[others[0]].state_dict()[key])
        for key, value in merged[others[0]].state_dict().items()
    ), "the other models should have retrained"
    with pytest.raises(SearchmergeError, match="cannot freeze model"):
        evaluator.evaluate(plan, frozen={"no-such-model"})


def test_hopeless_plans_stop_early_and_pruner_stops(study_dir: Path) -> None:
    study = open_tiny(study_dir)
    prepared = prepare_study(study)
    # Curves expected to flatten fast (pace_decay 0.3) and no near-miss margin: a plan far below
    # an unreachable target (keep 100% after sharing everything) is given up after a few checks.
    settings = study.settings.with_evaluator(max_epochs=6, min_checks=1, pace_decay=0.3, optimism=1.0,
                                             confirm_margin=0.0).evaluator
    evaluator = Evaluator(prepared, settings, 1.0)
    names = [g.name for g in evaluator.analysis.groups]
    evaluation, _ = evaluator.evaluate(SharingPlan.of(names))
    assert not evaluation.feasible and evaluation.stop_reason == "hopeless"
    assert evaluation.cost.checks < 6 * settings.checks_per_epoch + 1  # stopped before the end of its budget
    calls: list[int] = []
    pruned, _ = evaluator.evaluate(SharingPlan.of(names), report=lambda check, _v: calls.append(check) or True)
    assert pruned.stop_reason == "pruned" and calls == [0] and not pruned.feasible


def test_bad_plans_and_targets(study_dir: Path) -> None:
    study = open_tiny(study_dir)
    with pytest.raises(SearchmergeError, match="do not exist: no-such-group"):
        evaluate_plan(study, "no-such-group")
    with pytest.raises(SearchmergeError, match=r"target must be in \(0, 1\]"):
        open_tiny(study_dir, target=1.5)
    with pytest.raises(SearchmergeError, match=r"target must be in \(0, 1\]"):
        Evaluator(prepare_study(study), study.settings.evaluator, 0.0)
    for bad in (0.0, 1.5):
        with pytest.raises(SearchmergeError, match=r"evaluator.pace_decay must be in \(0, 1\]"):
            StudySettings.from_document({"evaluator": {"pace_decay": bad}})
    with pytest.raises(SearchmergeError, match="drift_evaluator must be a mapping"):
        StudySettings.from_document({"drift_evaluator": [3]})


def test_corrupt_original_is_reported_not_loaded(tmp_path: Path, study_dir: Path) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(study_dir, folder)
    study = open_tiny(folder)
    record = study.store.list(kind="original")[0]
    blob = Path(study.store.blob_location) / record.blob
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError):
        prepare_study(study)


def test_models_that_do_not_fit_their_task(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(TINY_STUDY.replace("num_classes: 2, widths", "num_classes: 5, widths", 1))
    study = open_study_file(tmp_path / "bad.yaml", storage=f"sqlite:///{tmp_path / 'bad.db'}")
    with pytest.raises(SearchmergeError, match="task 'parity' has 2 classes"):
        prepare_study(study)


def test_cli_evaluate_json_and_errors(study_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["evaluate", str(study_dir / "tiny.yaml"), "--storage", f"sqlite:///{study_dir / 'tiny.db'}"]
    assert main([*arguments, "--share", "none", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) >= {"models", "feasible", "unique_bytes", "saved_bytes", "cost", "checkpoint"}
    assert set(document["models"][0]) >= {"name", "accuracy", "ratio", "check"}
    assert all(m["ratio"] == 1.0 and m["check"] == 0 for m in document["models"])  # the originals, not run
    assert main([*arguments, "--share", "bogus"]) == 2
    assert "do not exist: bogus" in capsys.readouterr().err
    assert main([*arguments, "--share", "none"]) == 0
    out = capsys.readouterr().out
    assert "FEASIBLE" in out and "scored at check" in out
