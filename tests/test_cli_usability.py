"""What a new user meets first: exit statuses, suggested commands, errors that name their remedy.

Runs the CLI on the tiny digits study (a low target, so that a deployed plan exists after a
short greedy search and survives a camera that did not change).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from searchmerge.cli import EXIT_DRIFT_MISSES, main
from searchmerge.study import StudyFile, open_study_file
from tests.conftest import TINY_STUDY

#: The tiny study at a low target, with a scenario that changes nothing but the footage and
#: one that leaves the cameras almost blind.
STUDY = TINY_STUDY.replace("target: 0.9", "target: 0.5") + """
drift:
  same: {brightness: 0.0}
  blind: {contrast: 0.05, noise_std: 0.5}
"""
PARENT = "tiny-digits-greedy"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> StudyFile:
    """The study with a finished greedy search, whose best feasible plan is the deployed one."""
    folder = tmp_path_factory.mktemp("usability")
    (folder / "tiny.yaml").write_text(STUDY)
    study = open_study_file(folder / "tiny.yaml", storage=f"sqlite:///{folder / 'tiny.db'}")
    assert main(["search", str(study.path), "--storage", study.storage, "--strategy", "greedy", "--n-trials", "2"]) == 0
    return study


def test_drift_check_exit_status_says_whether_the_deployed_plan_holds(
    deployed: StudyFile, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["drift-check", str(deployed.path), "--storage", deployed.storage]
    assert main([*base, "--data", "same"]) == 0
    assert "every model still meets its target" in capsys.readouterr().out
    assert main([*base, "--data", "same", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["missing"] == []

    assert main([*base, "--data", "blind", "--json"]) == EXIT_DRIFT_MISSES == 3
    assert json.loads(capsys.readouterr().out)["missing"]
    assert main([*base, "--data", "blind"]) == EXIT_DRIFT_MISSES
    out = capsys.readouterr().out
    suggested = next(line for line in out.splitlines() if line.startswith("re-search: "))
    command = shlex.split(suggested.removeprefix("re-search: "))
    assert command == ["searchmerge", "research", str(deployed.path), "--data", "blind", "--from-study", PARENT,
                       f"--storage={deployed.storage}"]
    assert "STUDY.yaml" not in out

    assert main([*base, "--data", "fog"]) == 2  # bad input keeps its own status


@pytest.mark.parametrize(("command", "default"), [("search", 20), ("worker", 20), ("research", 10)])
def test_help_states_the_default_number_of_trials(
    command: str, default: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert f"(default: {default})" in " ".join(capsys.readouterr().out.split())

