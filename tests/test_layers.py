"""The package's layers: the import-linter contract holds, and every module sits in a layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Top-level modules that are not layers: the public API, and the model catalogue that
#: study files and stored manifests name by path (``searchmerge.zoo:small_resnet``).
ENTRY_POINTS = {"__init__.py", "zoo.py"}


def test_the_layer_contract_holds() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_lives_in_a_layer() -> None:
    top_level = {path.name for path in (REPO / "searchmerge").glob("*.py")}
    assert top_level == ENTRY_POINTS


def test_the_public_api_imports_every_name_without_loading_torch() -> None:
    code = (
        "import sys, searchmerge\n"
        "assert 'torch' not in sys.modules and 'optuna' not in sys.modules, 'import searchmerge did work'\n"
        "from searchmerge import *\n"
        "missing = [n for n in searchmerge.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "print(len(searchmerge.__all__))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in ("open_study_file", "open_search", "analyze", "SharingPlan", "Evaluator", "load_deployment",
                 "export_deployment", "SwapRuntime"):
        assert name in __import__("searchmerge").__all__
