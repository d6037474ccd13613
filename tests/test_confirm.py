"""`searchmerge confirm` and `export --confirm`: a trial's plan retrained in full from its originals,
the verdict recorded with the trial and carried by exports (issue 21 item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchmerge.cli.commands import EXIT_NOT_CONFIRMED, main
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.space import SharingPlan
from searchmerge.search.confirmation import confirm, confirmation_state
from searchmerge.search.merge_search import load_search, open_search
from searchmerge.training.deployment import load_deployment
from searchmerge.training.evaluate import Evaluator, full_retraining
from tests.conftest import copy_prepared

AB_GROUP = "layer3.0.conv1"
NAME = "confirm-greedy"


@pytest.fixture(scope="module")
def searched(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyFile:
    """The tiny study with one search of three trials: AB_GROUP, then AB_GROUP and fc (incrementally), then another."""
    path, storage = copy_prepared(prepared_tiny, tmp_path_factory.mktemp("confirm"))
    study = open_study_file(path, storage=storage)
    search = open_search(study, strategy="greedy", study_name=NAME, seed=0)
    for plan in (SharingPlan.of([AB_GROUP]), SharingPlan.of([AB_GROUP, "fc"]), SharingPlan.of(["layer2.0.conv1"])):
        search.optuna_study.enqueue_trial(search.space.params_from_plan(plan))
    search.run(3)
    return study


def test_confirm_retrains_the_plan_in_full_from_the_originals_and_records_the_verdict(searched: StudyFile) -> None:
    search = load_search(searched, study_name=NAME)
    trial = search.trial(1)
    assert confirmation_state(search, 1) is None
    done = confirm(search, trial)
    settings = full_retraining(search.evaluator_settings)
    direct, _ = Evaluator(search.prepared, settings, search.evaluator.target).evaluate(trial.plan, seed=0)
    assert [m.ratio for m in done.evaluation.models] == [m.ratio for m in direct.models]  # from the originals
    assert searched.store.record(done.checkpoint).key.variant != searched.store.record(str(trial.checkpoint)).key.variant
    again = load_search(searched, study_name=NAME)  # a fresh reader sees it with the trial
    attrs = next(t for t in again.finished_trials() if t.number == 1).user_attrs
    assert attrs["confirmed"] is done.confirmed and attrs["confirmation_checkpoint"] == done.checkpoint
    assert confirmation_state(again, 1) is done.confirmed and confirmation_state(again, 0) is None
    assert confirm(again, again.trial(1)).from_store  # confirming again costs nothing


def test_confirm_and_export_commands(searched: StudyFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [str(searched.path), "--storage", searched.storage]
    status = main(["confirm", *base, "--trial", "0", "--json"])  # the only search: no --study-name needed
    document = json.loads(capsys.readouterr().out)
    assert status == (0 if document["confirmed"] else EXIT_NOT_CONFIRMED)
    assert document["trial"] == 0 and document["evaluation"]["plan"] == [AB_GROUP]
    assert main(["export", *base, "--trial", "0", "--out", str(tmp_path / "zero")]) == 0
    out = capsys.readouterr().out
    assert ("confirmed by full retraining" if document["confirmed"] else "FAILED confirmation") in out
    assert load_deployment(tmp_path / "zero").metadata["confirmed"] is document["confirmed"]

    search = load_search(searched, study_name=NAME)
    never = 2
    assert confirmation_state(search, never) is None
    assert main(["export", *base, "--trial", str(never), "--out", str(tmp_path / "never")]) == 0
    assert f"not confirmed: searchmerge confirm {searched.path}" in capsys.readouterr().out
    assert load_deployment(tmp_path / "never").metadata["confirmed"] is None
    status = main(["export", *base, "--trial", str(never), "--confirm", "--out", str(tmp_path / "confirmed")])
    verdict = confirmation_state(load_search(searched, study_name=NAME), never)
    assert verdict is not None and status == (0 if verdict else 2)
    assert (tmp_path / "confirmed").exists() is verdict
