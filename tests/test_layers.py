"""The package's layers: the import-linter contract holds, and every module sits in a layer."""

from __future__ import annotations

import os
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


def test_importing_and_opening_a_study_file_sets_no_environment_variable() -> None:
    """cuBLAS's fixed workspace is set where a run starts, not when training code is imported."""
    code = (
        "import os\n"
        "import searchmerge.training.evaluate, searchmerge.search.merge_search\n"
        "from searchmerge.config.study import open_study_file\n"
        "open_study_file('studies/digits-edge.yaml')\n"
        "assert 'CUBLAS_WORKSPACE_CONFIG' not in os.environ, 'set at import'\n"
        "from searchmerge.training.train import default_device, repeatable_kernels\n"
        "with repeatable_kernels():\n"
        "    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'\n"
        "del os.environ['CUBLAS_WORKSPACE_CONFIG']\n"
        "default_device()\n"
        "assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
