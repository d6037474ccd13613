"""What a new user meets first: exit statuses, suggested commands, errors that name their remedy.

Runs the CLI on the tiny digits study (a low target, so that a deployed plan exists after a
short greedy search and survives a camera that did not change).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from searchmerge.cli.commands import EXIT_DRIFT_MISSES, main
from searchmerge.cli.report import accuracy_figure, plot_searches, savings_figure
from searchmerge.config.study import StudyFile, open_study_file
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


def _trial(number: int, state: str, feasible: bool, saved: int, ratio: float) -> SimpleNamespace:
    total = 10_000_000
    return SimpleNamespace(number=number, state=state, feasible=feasible, saved_bytes=saved,
                           unique_bytes=total - saved, worst_ratio=ratio)


def _search(name: str, strategy: str, trials: list[SimpleNamespace]) -> SimpleNamespace:
    feasible = [t for t in trials if t.feasible]
    return SimpleNamespace(
        study_name=name, strategy=strategy, history=lambda: trials,
        best=lambda: max(feasible, key=lambda t: t.saved_bytes) if feasible else None,
        space=SimpleNamespace(max_saved_bytes=6_000_000), study_file=SimpleNamespace(settings=SimpleNamespace(target=0.9)),
    )


def test_plots_mark_stopped_plans_the_best_plan_no_sharing_and_name_studies(tmp_path: Path) -> None:
    parent = _search("wl-greedy", "greedy", [
        _trial(0, "COMPLETE", False, 6_000_000, 0.7), _trial(1, "PRUNED", False, 4_000_000, 0.41),
        _trial(2, "COMPLETE", True, 2_000_000, 0.93)])
    research = _search("wl-greedy-night", "greedy", [_trial(0, "COMPLETE", True, 1_000_000, 0.95)])

    accuracy = accuracy_figure([parent, research])
    axes, night = accuracy.axes[:2]  # one panel per study
    assert (axes.get_title(), night.get_title()) == ("wl-greedy", "wl-greedy-night")
    _, labels = axes.get_legend_handles_labels()
    assert labels[:5] == ["feasible plan", "infeasible plan", "pruned: ratio when stopped", "best feasible plan",
                          "no sharing (10.0 MB)"]
    assert "target 0.9" in labels and any(text.get_text() == "target 0.9" for text in axes.texts)
    assert axes.get_ylabel() == "worst accuracy ratio (merged / original)"
    marks = dict(zip(labels, axes.collections))
    assert marks["feasible plan"].get_offsets().tolist() == [[8.0, 0.93]]
    assert marks["infeasible plan"].get_offsets().tolist() == [[4.0, 0.7]]
    assert marks["feasible plan"].get_facecolors().tolist() != marks["infeasible plan"].get_facecolors().tolist()
    shapes = [marks[name].get_paths()[0].vertices.tolist() for name in ("feasible plan", "infeasible plan")]
    assert shapes[0] != shapes[1]  # the markers differ too
    hollow = marks["pruned: ratio when stopped"]
    assert hollow.get_offsets().tolist() == [[6.0, 0.41]] and hollow.get_facecolors().size == 0
    assert marks["best feasible plan"].get_offsets().tolist() == [[8.0, 0.93]]
    legend = accuracy.legends[0]  # one legend for the figure, beside the panels
    panels_right = max(ax.get_position().x1 for ax in accuracy.axes if ax.get_visible())
    assert legend.get_bbox_to_anchor().x0 >= panels_right * accuracy.bbox.width - 1

    savings = savings_figure([parent, research])
    axes = savings.axes[0]
    _, labels = axes.get_legend_handles_labels()
    assert labels[:2] == ["wl-greedy", "wl-greedy-night"]  # one line per study, not two "greedy"
    assert all(float(tick).is_integer() for tick in axes.get_xticks())
    assert [p.name for p in plot_searches([parent, research], tmp_path)] == [
        "savings_vs_trials.png", "accuracy_vs_memory.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in ("savings_vs_trials.png", "accuracy_vs_memory.png"))


def test_analyze_activations_reports_the_workloads_run_memory(capsys: pytest.CaptureFixture[str]) -> None:
    # Two small nets and a wider one: the wider one's activations decide the run memory.
    models = ["tests.conftest:tiny_net", "tests.conftest:tiny_net", "searchmerge.zoo:small_vgg"]
    assert main(["analyze", *models, "--activations", "--batch-sizes", "1,2", "--device", "cpu", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    workload = document["workload"]
    for size in ("1", "2"):
        largest = max(m["activation_bytes"][size] for m in document["models"])
        assert largest > 0
        assert workload["run_bytes"][size] == workload["total_bytes"] + largest
        assert workload["max_sharing_run_bytes"][size] == workload["max_sharing_bytes"] + largest
        assert workload["max_sharing_run_bytes"][size] < workload["run_bytes"][size]
    assert workload["run_bytes"]["2"] > workload["run_bytes"]["1"]

    assert main(["analyze", *models, "--activations", "--batch-sizes", "1,2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    table = out.split("Workload run memory")[1].split("\n\n")[0].splitlines()
    assert table[3].split() == ["bs=1", *_mb(workload["run_bytes"]["1"]), *_mb(workload["max_sharing_run_bytes"]["1"]),
                                f"{100 * (1 - workload['max_sharing_run_bytes']['1'] / workload['run_bytes']['1']):.1f}%"]
    assert table[4].startswith("bs=2")


def _mb(size: int) -> list[str]:
    """A size as the text tables print it, split into number and unit."""
    from searchmerge.cli.report import megabytes

    return megabytes(size).split()



@pytest.mark.parametrize(("entry_end", "message"), [
    ("}", "model 'c' has no 'task' in the study file"),
    (",\n     task: colour}", "model 'c': unknown task 'colour'"),
    (",\n     task: high, camera: {glare: 1}}", "model 'c': unknown camera condition field(s) glare"),
])
@pytest.mark.parametrize("command", ["prepare", "evaluate", "search"])
def test_a_study_file_with_an_error_writes_nothing(
    command: str, entry_end: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert TINY_STUDY.count(",\n     task: high}") == 1
    (tmp_path / "bad.yaml").write_text(TINY_STUDY.replace(",\n     task: high}", entry_end))
    monkeypatch.chdir(tmp_path)  # the default storage is a SQLite file in the working directory
    assert main([command, "bad.yaml"]) == 2
    assert f"searchmerge: error: {message}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_the_first_line_comes_first_and_prepare_says_it_reuses_originals(
    deployed: StudyFile, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prepare", str(deployed.path), "--storage", deployed.storage]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"searchmerge prepare: opening study file {deployed.path} ..."
    for name in deployed.workload.names:
        assert sum(line.startswith(f"reusing stored original {name} (checkpoint ") for line in err) == 1
    assert not any(line.startswith(("pretrained", "fine-tuned")) for line in err)


def test_a_corrupt_original_is_named_with_the_command_that_rebuilds_it(
    deployed: StudyFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A copy of the deployed study's storage (SQLite file and blob folder beside it).
    database = Path(deployed.storage.removeprefix("sqlite:///"))
    copy = tmp_path / "copy.db"
    copy.write_bytes(database.read_bytes())
    shutil.copytree(f"{database}.checkpoints", f"{copy}.checkpoints")
    storage = f"sqlite:///{copy}"
    record = open_study_file(deployed.path, storage=storage).store.list(kind="original")[0]
    blob = next(Path(f"{copy}.checkpoints").rglob(record.blob))
    blob.write_bytes(blob.read_bytes()[:-10])  # truncated

    commands = [["prepare"], ["search", "--n-trials", "3"], ["report", "--out", str(tmp_path / "report")]]
    for command in commands:
        assert main([command[0], str(deployed.path), "--storage", storage, *command[1:]]) == 2
        error = capsys.readouterr().err.splitlines()[-1]
        assert error.startswith("searchmerge: error: the stored original of model ")
        assert str(blob.name) in error and "is corrupt" in error
        assert f"`searchmerge prepare {deployed.path} --force`" in error

    assert main(["prepare", str(deployed.path), "--storage", storage, "--force"]) == 0  # the remedy works
    assert main(["report", str(deployed.path), "--storage", storage, "--out", str(tmp_path / "report")]) == 0
    capsys.readouterr()


def test_a_postgresql_storage_without_a_blob_folder_names_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY_STUDY)
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "tiny.yaml", "--storage", "postgresql+psycopg://postgres@127.0.0.1:5432/test"]) == 2
    error = capsys.readouterr().err
    assert "--blob-dir" in error and "blob_dir=" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_a_model_that_does_not_fit_its_task_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found only when the models are built, after the study file was read: still nothing on disk."""
    wrong = TINY_STUDY.replace('small_vgg", kwargs: {num_classes: 2', 'small_vgg", kwargs: {num_classes: 5')
    assert wrong != TINY_STUDY
    (tmp_path / "bad.yaml").write_text(wrong)
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "bad.yaml"]) == 2
    assert "searchmerge: error: model 'c'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
