"""Per-model loss weights (Gemel): a lagging model's loss weighs (target / ratio) ** p, capped (issue 21 item 6)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from searchmerge.config.settings import LOSS_WEIGHT_CAP, EvaluatorSettings
from searchmerge.config.study import StudyFile, open_study_file
from searchmerge.core.space import SharingPlan
from searchmerge.storage.store import variant_of
from searchmerge.training import evaluate
from searchmerge.training.evaluate import Evaluator, evaluator_identity, merged_key
from searchmerge.training.prepare import prepare_study
from tests.conftest import TINY_STUDY, copy_prepared


@pytest.fixture(scope="module")
def study(prepared_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> StudyFile:
    text = TINY_STUDY.replace("init: first}", "init: first, loss_weights: 0.75}")
    path, storage = copy_prepared(prepared_tiny, tmp_path_factory.mktemp("weights"), text)
    return open_study_file(path, storage=storage)


def test_each_learner_weighs_target_over_its_latest_ratio_to_the_power_capped(
    study: StudyFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert study.settings.evaluator.loss_weights == 0.75  # read from the study file
    seen: list[tuple[dict[str, float], dict[str, float]]] = []
    real = evaluate._Retraining.train

    def train(self: evaluate._Retraining, steps: int) -> None:
        seen.append((self.loss_weights(), {n: self.scores.curves[n][-1][1] for n in self.learners}))
        real(self, steps)

    monkeypatch.setattr(evaluate._Retraining, "train", train)
    prepared = prepare_study(study)
    settings = dataclasses.replace(study.settings.evaluator, early_exit=False, max_epochs=2)
    target = 0.99  # every merged model lags it at first
    plan = SharingPlan.of(["layer2.0.conv2", "layer3.0.conv2"])
    Evaluator(prepared, settings, target).evaluate(plan)
    assert seen, "full retraining with loss weights scores every check, so every interval has its weights"
    for weights, ratios in seen:
        for name, ratio in ratios.items():
            assert weights[name] == pytest.approx(min(LOSS_WEIGHT_CAP, (target / ratio) ** 0.75))
    assert any(w > 1 for weights, _ in seen for w in weights.values())

    seen.clear()
    off = dataclasses.replace(settings, loss_weights=0.0, early_exit=True)
    Evaluator(prepared, off, target).evaluate(plan)
    assert seen and all(w == 1.0 for weights, _ in seen for w in weights.values())


def test_the_setting_keeps_the_keys_of_records_made_before_it(study: StudyFile) -> None:
    prepared = prepare_study(study)
    off, on = EvaluatorSettings(), EvaluatorSettings(loss_weights=0.75)
    assert "loss_weights" not in evaluator_identity(off) and evaluator_identity(on)["loss_weights"] == 0.75
    plan = SharingPlan.of([])
    later = ("loss_weights", "accept", "accept_margin")  # settings added since, left out at their defaults
    before = {"seed": 0, "target": 0.9, "evaluator": {k: v for k, v in dataclasses.asdict(off).items()
                                                      if k not in later},
              "start_checkpoint": None, "frozen": []}
    assert merged_key(prepared, plan, target=0.9, settings=off, seed=0).variant == variant_of(before)
    assert merged_key(prepared, plan, target=0.9, settings=on, seed=0).variant != variant_of(before)
