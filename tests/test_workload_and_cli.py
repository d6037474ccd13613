"""Workload definitions and the ``analyze`` command, including every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from searchmerge.cli.commands import main
from searchmerge.config.workload import ModelSpec, from_models, load_study_file
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
    workload, document = load_study_file(study)
    assert workload.name == "tiny" and workload.names == ["digits", "parity"]
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
