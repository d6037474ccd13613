"""The service's drift check and logs: drifted windows name their scenario, numbers say what they are."""

from __future__ import annotations

import itertools
import logging
from datetime import datetime, timezone

import numpy as np
import pytest
import torch
from torch import nn

from searchmerge.cli.progress import log_to_stderr
from searchmerge.service.cloud.monitor import check_samples
from searchmerge.service.cloud.samples import LabelledSample


class Constant(nn.Module):
    """Always answers class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1)


_ids = itertools.count()  # a stored sample's id is unique


def samples(label: int, scenario: str | None, count: int) -> list[LabelledSample]:
    frame = np.zeros((3, 4, 4), dtype=np.float32)
    stamp = datetime.now(timezone.utc)
    return [LabelledSample(next(_ids), "gate", scenario, label, frame, stamp) for _ in range(count)]


def test_a_window_that_already_holds_drifted_frames_names_the_drift_not_undrifted_footage() -> None:
    # Night fell a moment ago: 40 day frames (right) and 24 night frames (wrong) in the window.
    window = {"gate": samples(0, None, 40) + samples(1, "night", 24)}
    check = check_samples(2, {"gate": Constant()}, window, {"gate": 0.98}, 0.95, min_samples=32)
    (gate,) = check.missing
    assert gate.scenario == "night" and check.scenario == "night"  # not None, the "undrifted footage" of old
    assert dict(gate.seen) == {None: 40, "night": 24}
    line = gate.describe()
    assert line.startswith("gate: accuracy 0.62 on 64 samples (40 undrifted, 24 night), ratio 0.638 to its baseline"
                           " accuracy 0.98 (95% CI [0.513, 0.748]), at most ")
    assert line.endswith("at 90% confidence, target ratio 0.95")
    assert gate.to_dict()["seen"] == {"undrifted": 40, "night": 24}


def test_a_window_of_undrifted_frames_alone_names_no_scenario() -> None:
    window = {"gate": samples(1, None, 64)}
    check = check_samples(1, {"gate": Constant()}, window, {"gate": 0.98}, 0.95, min_samples=32)
    assert [m.name for m in check.missing] == ["gate"] and check.scenario is None


class Counting(Constant):
    """Class 0, counting the frames it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.shown = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shown += len(x)
        return super().forward(x)


def test_a_check_scores_only_the_samples_no_earlier_check_of_its_version_scored() -> None:
    model, verdicts = Counting(), {}
    first = samples(0, None, 40) + samples(1, None, 24)
    check = check_samples(1, {"gate": model}, {"gate": first}, {"gate": 0.98}, 0.95, verdicts=verdicts)
    assert model.shown == 64 and check.models[0].correct == 40
    # The window moved on by 16 samples, all wrong: only those 16 are shown to the model, the count is the window's.
    moved = first[16:] + samples(1, None, 16)
    check = check_samples(1, {"gate": model}, {"gate": moved}, {"gate": 0.98}, 0.95, verdicts=verdicts)
    assert model.shown == 64 + 16 and check.models[0].correct == 24 and check.models[0].samples == 64
    # Without remembered verdicts (another version, the publish gate) every sample is scored.
    check_samples(2, {"gate": model}, {"gate": moved}, {"gate": 0.98}, 0.95)
    assert model.shown == 64 + 16 + 64


def test_the_long_running_commands_log_with_time_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("searchmerge")
    before = (list(logger.handlers), logger.propagate, logger.level)
    try:
        log_to_stderr()
        log_to_stderr()  # once: no second handler
        logging.getLogger("searchmerge.service").warning("drift detected")
        line = capsys.readouterr().err.strip()
        assert line.count("drift detected") == 1
        stamp, clock, level, name, *_ = line.split()
        datetime.strptime(f"{stamp} {clock}", "%Y-%m-%d %H:%M:%S,%f")
        assert (level, name) == ("WARNING", "searchmerge.service:")
    finally:
        logger.handlers[:], logger.propagate = before[0], before[1]
        logger.setLevel(before[2])
