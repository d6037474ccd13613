"""Workload definitions and the ``analyze`` command, including every kind of bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from searchmerge.cli.commands import main
from searchmerge.config.settings import StudySettings
from searchmerge.config.study import load_study_file, read_study_file
from searchmerge.config.workload import ModelSpec, from_models
from searchmerge.core.errors import SearchmergeError
from tests.conftest import TinyNet

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_study_file_with_factories_kwargs_and_weights(tmp_path: Path) -> None:
    source = TinyNet(classes=2)
    save_file(source.state_dict(), str(tmp_path / "parity.safetensors"))
    study = write(
        tmp_path,
        """
name: tiny
models:
  - {name: digits, factory: "tests.conftest:tiny_net", input_shape: [3, 16, 16], task: digit}
  - {name: parity, factory: "tests.conftest:tiny_net", kwargs: {classes: 2}, weights: parity.safetensors}
""",
    )
    workload, settings = load_study_file(study)
    assert workload.name == "tiny" and workload.names == ["digits", "parity"]
    assert settings == StudySettings()  # a file without settings keeps every default
    assert workload.spec("digits").input_shape == (3, 16, 16)
    assert workload.spec("digits").options == {"task": "digit"}
    models = workload.build()
    assert torch.equal(models["parity"].fc.weight, source.fc.weight)


def test_repeated_names_get_suffixes() -> None:
    assert from_models(["resnet18", "resnet18", "resnet34"]).names == ["resnet18", "resnet18_2", "resnet34"]


@pytest.mark.parametrize(
    "spec,message",
    [
        (ModelSpec(name="x", arch="resnet5000"), "unknown architecture 'resnet5000'"),
        (ModelSpec(name="x", arch="no_such_pkg.mod:make"), "cannot import 'no_such_pkg.mod'"),
        (ModelSpec(name="x", arch="tests.conftest:missing"), "has no attribute 'missing'"),
        (ModelSpec(name="x", arch="tests.conftest:not_a_module"), "returned str, not a torch nn.Module"),
        (ModelSpec(name="x", arch="tests.conftest:tiny_net", weights="/nonexistent.safetensors"), "does not exist"),
    ],
)
def test_bad_models_are_named_in_the_error(spec: ModelSpec, message: str) -> None:
    with pytest.raises(SearchmergeError, match=message.replace("(", r"\(")):
        spec.build()


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    save_file(TinyNet(classes=3).state_dict(), str(tmp_path / "w.safetensors"))
    spec = ModelSpec(name="x", arch="tests.conftest:tiny_net", weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(SearchmergeError, match="does not fit the architecture"):
        spec.build()


def test_fewer_than_two_models() -> None:
    with pytest.raises(SearchmergeError, match="at least two"):
        from_models(["resnet18"])


@pytest.mark.parametrize(
    "text,message",
    [
        ("models: [", "not valid YAML"),
        ("- just a list", "must be a mapping with a 'models' list"),
        ("models:\n  - {name: a}\n  - {name: b, arch: resnet18}", "needs 'name' and 'arch'"),
        ("models:\n  - {name: a, arch: resnet18, input_shape: [3, -1]}\n  - {name: b, arch: resnet18}", "input_shape"),
    ],
)
def test_invalid_study_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SearchmergeError, match=message):
        load_study_file(write(tmp_path, text))


def test_unreadable_study_file(tmp_path: Path) -> None:
    with pytest.raises(SearchmergeError, match="cannot read study file"):
        load_study_file(tmp_path / "missing.yaml")


def test_cli_json_on_factories(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "tests.conftest:tiny_net", "tests.conftest:tiny_net", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in document["models"]] == ["tiny_net", "tiny_net_2"]
    assert document["pairs"][0]["common_layers"] == 4


def test_cli_text_output_has_the_three_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = write(
        tmp_path,
        "models:\n"
        "  - {name: a, factory: 'tests.conftest:tiny_net', input_shape: [3, 16, 16]}\n"
        "  - {name: b, factory: 'tests.conftest:tiny_net', input_shape: [3, 16, 16]}\n",
    )
    assert main(["analyze", str(study), "--activations", "--batch-sizes", "1,2"]) == 0
    out = capsys.readouterr().out
    for heading in ("Models", "Pairs", "Workload", "run bs=2", "Largest shareable groups"):
        assert heading in out


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["resnet5000", "resnet18"], "unknown architecture 'resnet5000'"),
        (["resnet18"], "at least two"),
        (["missing.yaml"], "cannot read study file"),
        (["no_such_pkg:f", "resnet18"], "cannot import"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(arguments: list[str], message: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "searchmerge.cli", "analyze", *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("searchmerge: error:") and message in lines[0]


# ------------------------------------------------------------------ the study file's settings, parsed once

TWO_TINY_MODELS = """
models:
  - {name: a, factory: "tests.conftest:tiny_net", input_shape: [3, 16, 16], task: digit}
  - {name: b, factory: "tests.conftest:tiny_net", kwargs: {classes: 2}, input_shape: [3, 16, 16], task: parity}
"""


@pytest.mark.parametrize(
    "line,message",
    [
        ("seed: abc", "seed must be an integer, got 'abc'"),
        ('evaluator: {early_exit: "no"}', "evaluator.early_exit must be true or false, got 'no' (quoted"),
        ("pretrain: {task: digit, epochs: 0}", "pretrain.epochs must be at least 1, got 0"),
        ("finetune: {epochs: 0}", "finetune.epochs must be at least 1, got 0"),
        ("data: {cache: 'false'}", "data.cache must be true or false, got 'false'"),
        ("evaluator: {max_epochs: 2.5}", "evaluator.max_epochs must be an integer, got 2.5"),
        ("drift_evaluator: {fraction: 0}", "drift_evaluator.fraction must be in (0, 1], got 0.0"),
        ("evaluator: {init: mean}", "evaluator.init must be 'first' or 'average', got 'mean'"),
        ("target: 0", "target must be in (0, 1]"),
        ("data: {workers: -1}", "data.workers must be at least 0, got -1"),
        ("storage: 5", "storage must be text, got 5"),
        ("drift: {dusk: {brightness: dark}}", "drift change 'brightness' must be a number, got 'dark'"),
        ("deploy: {gpu_memory: 1GiB, fps: true}", "fps must be a positive number, got True"),
        ("pretrain: {taks: digit}", "pretrain: unknown key 'taks' (did you mean 'task'?)"),
        ("evaluatr: {}", "unknown key 'evaluatr' (did you mean 'evaluator'?)"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_path_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    study = write(tmp_path, TWO_TINY_MODELS + line + "\n")
    database = tmp_path / "refused.db"
    assert main(["prepare", str(study), "--storage", f"sqlite:///{database}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # a progress line, then the error
    assert not any("Traceback" in line for line in err)
    assert err[-1].startswith(f"searchmerge: error: study file {str(study)!r}: ") and message in err[-1], err[-1]
    assert not database.exists()


def test_settings_are_read_once_into_a_frozen_object_that_writes_them_back(tmp_path: Path) -> None:
    study = write(tmp_path, TWO_TINY_MODELS + """
storage: sqlite:///mine.db
seed: 3
evaluator: {early_exit: no, lr: 1e-3}
drift_evaluator: {max_epochs: 5}
deploy: {gpu_memory: 1GiB, fps: 10}
drift:
  dusk: {brightness: -0.1}
  gate-moved: {models: {a: {shift_px: 2}}}
""")
    loaded = read_study_file(study)
    settings = loaded.settings
    assert settings.evaluator.early_exit is False  # YAML's unquoted no
    assert settings.evaluator.lr == 0.001  # YAML 1.1 reads 1e-3 as text; it is a number
    assert settings.drift_evaluator.max_epochs == 5 and settings.drift_evaluator.lr == 0.001
    assert settings.drift["gate-moved"].only_listed and settings.drift["dusk"].changes == {"brightness": -0.1}
    assert not hasattr(loaded.workload, "settings")  # the document stops in searchmerge.config
    assert StudySettings.from_document(settings.to_document()) == settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 4  # type: ignore[misc]
    # one storage rule: --storage, else the file's storage:, else a SQLite file named after the study
    assert loaded.storage == "sqlite:///mine.db"
    assert read_study_file(study, storage="sqlite:///other.db").storage == "sqlite:///other.db"
    assert read_study_file(write(tmp_path, TWO_TINY_MODELS, "plain.yaml")).storage == "sqlite:///plain.db"


def test_dashboard_opens_the_study_files_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna_dashboard

    served: list[str] = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **_options: served.append(storage))
    mine, other = f"sqlite:///{tmp_path / 'mine.db'}", f"sqlite:///{tmp_path / 'other.db'}"
    study = write(tmp_path, TWO_TINY_MODELS + f"storage: {mine}\n")
    assert main(["dashboard", str(study)]) == 0
    assert main(["dashboard", str(study), "--storage", other]) == 0
    assert served == [mine, other]
