"""A study file as a whole: its workload, settings, storage and checkpoint store.

Opening a study file validates it and opens its store; nothing is trained here.
Preparing the originals is :func:`searchmerge.training.prepare.prepare_study`, evaluating a
plan :func:`searchmerge.training.evaluate.evaluate_plan`, searching
:func:`searchmerge.search.merge_search.open_search`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from searchmerge.config.data_request import model_request
from searchmerge.config.settings import StudySettings
from searchmerge.config.workload import Workload, load_study_file
from searchmerge.core.errors import SearchmergeError
from searchmerge.storage.store import CheckpointStore

__all__ = ["StudyFile", "default_storage", "open_study_file"]


@dataclass(frozen=True)
class StudyFile:
    """A loaded study file: its workload, settings, and the storage it uses.

    The checkpoint store opens on first use: opening creates the SQLite file and the
    blob folder, which nothing may create before the work that needs them has
    checked its input (a model that does not fit its task, say).
    """

    path: Path
    workload: Workload
    settings: StudySettings
    storage: str
    blob_dir: str | Path | None = None

    @functools.cached_property
    def store(self) -> CheckpointStore:
        """The checkpoint store of the study's storage."""
        return CheckpointStore.for_storage(self.storage, self.blob_dir)

    @property
    def cache_dir(self) -> Path:
        """Where decoded images are cached: beside the store's blob folder, or beside the study file."""
        blobs = str(CheckpointStore.check_blob_location(self.storage, self.blob_dir))  # opens nothing
        if "://" in blobs:  # an object store: the cache stays on this machine
            return self.path.parent / f".{self.path.stem}.data-cache"
        return Path(blobs).with_name(Path(blobs).name + ".data-cache")


def _check_tasks(workload: Workload, settings: StudySettings) -> None:
    """Every model names a known task and data (format, keys, camera), and so does pretraining."""
    for spec in workload.models:
        request = model_request(spec)
        if request.makes_originals and not spec.weights:
            try:
                request.source.check({}, settings.pretrain_task)
            except SearchmergeError as exc:
                raise SearchmergeError(f"pretrain.task: {exc}") from None


def default_storage(workload_name: str) -> str:
    """The embedded default: a SQLite file named after the study, in the working directory."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", workload_name).strip("-") or "searchmerge"
    return f"sqlite:///{safe}.db"


def open_study_file(
    path: str | Path, *, storage: str | None = None, blob_dir: str | Path | None = None, target: float | None = None
) -> StudyFile:
    """Load and validate a study file; its checkpoint store opens when first used.

    Nothing is written here: a study file with an error leaves no SQLite file or blob
    folder behind. A storage that needs a blob location and has none is refused now.
    """
    workload, document = load_study_file(path)
    settings = StudySettings.from_document(document).with_target(target)
    _check_tasks(workload, settings)
    url = storage or str(document.get("storage") or default_storage(workload.name))
    CheckpointStore.check_blob_location(url, blob_dir)
    return StudyFile(Path(path), workload, settings, url, blob_dir)
