"""The check every bad-input test makes: one error line, exit status 2, nothing written."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from searchmerge.cli.commands import main
from searchmerge.storage.store import CheckpointStore


def assert_prepare_refuses(
    base: Path, study_file: str, breaks: Callable[[Path], None], message: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``prepare`` of a broken copy of ``base`` exits 2 with ``message`` on one line and stores nothing.

    ``message`` may name the copy's folder as ``{f}``. The store is opened only after the study file
    and every model's data were checked, so most bad input leaves no SQLite file behind; data found
    broken later (an image that does not decode while scoring) may leave an empty store.
    """
    folder = tmp_path / "study"
    shutil.copytree(base, folder)
    breaks(folder)
    database = folder / "refused.db"
    assert main(["prepare", str(folder / study_file), "--storage", f"sqlite:///{database}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("searchmerge: error: ") and message.format(f=folder) in err[-1], err[-1]
    assert not any("Traceback" in line for line in err)
    stored = CheckpointStore.for_storage(f"sqlite:///{database}").list() if database.exists() else []
    assert stored == []
