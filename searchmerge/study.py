"""Study files as a whole: load one, prepare its originals, evaluate a plan.

These are the library functions behind the CLI's ``prepare`` and ``evaluate``;
everything the CLI does is available here from Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchmerge.data import get_task, model_task
from searchmerge.errors import SearchmergeError
from searchmerge.settings import StudySettings
from searchmerge.space import SharingPlan
from searchmerge.store import CheckpointKey, CheckpointStore
from searchmerge.workload import Workload, load_study_file

#: Called with one line per step of long work.
Progress = Callable[[str], None]


@dataclass(frozen=True)
class StudyFile:
    """A loaded study file: its workload, settings, and the storage it uses."""

    path: Path
    workload: Workload
    settings: StudySettings
    storage: str
    store: CheckpointStore


def _check_tasks(workload: Workload, settings: StudySettings) -> None:
    """Every model names a known task and a valid camera, and so does pretraining."""
    for spec in workload.models:
        model_task(spec)
    try:
        get_task(settings.pretrain_task)
    except SearchmergeError as exc:
        raise SearchmergeError(f"pretrain.task: {exc}") from None


def default_storage(workload_name: str) -> str:
    """The embedded default: a SQLite file named after the study, in the working directory."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", workload_name).strip("-") or "searchmerge"
    return f"sqlite:///{safe}.db"


def open_study_file(
    path: str | Path, *, storage: str | None = None, blob_dir: str | Path | None = None, target: float | None = None
) -> StudyFile:
    """Load and validate a study file, then open the checkpoint store of its storage.

    The store is opened last: it creates the SQLite file and the blob folder, which a
    study file with an error must not leave behind.
    """
    workload, document = load_study_file(path)
    settings = StudySettings.from_document(document).with_target(target)
    _check_tasks(workload, settings)
    url = storage or str(document.get("storage") or default_storage(workload.name))
    store = CheckpointStore.for_storage(url, blob_dir)
    return StudyFile(Path(path), workload, settings, url, store)


def prepare_study(study: StudyFile, *, force: bool = False, progress: Progress | None = None) -> Any:
    """Train and store the originals of a study file (or load them when stored)."""
    from searchmerge.prepare import prepare

    return prepare(study.workload, study.settings, study.store, force=force, progress=progress)


def evaluate_plan(
    study: StudyFile,
    share: str | SharingPlan,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> Any:
    """Evaluate one plan (``none``, ``all``, ``GROUP,...`` or a :class:`SharingPlan`) and store its weights.

    Returns the :class:`~searchmerge.evaluate.Evaluation` and the id of the
    checkpoint that keeps the merged weights (key: the plan's hash, kind ``merged``).
    """
    from searchmerge.evaluate import Evaluator
    from searchmerge.merge import merged_state

    prepared = prepare_study(study, progress=progress)
    evaluator = Evaluator(prepared, study.settings.evaluator, study.settings.target, progress=progress)
    names = [g.name for g in evaluator.analysis.groups]
    plan = share if isinstance(share, SharingPlan) else SharingPlan.parse(share, names)
    evaluation, merged = evaluator.evaluate(plan.checked(names), seed=seed)
    key = CheckpointKey(prepared.workload_fingerprint, plan.plan_hash, prepared.data_fingerprint, "merged")
    checkpoint = study.store.put(key, merged_state(merged), {"evaluation": evaluation.to_dict()})
    return evaluation, checkpoint

