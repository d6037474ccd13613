"""A study file as a whole: its workload, settings, storage and checkpoint store.

The YAML is read here, once (:func:`read_study_file`), into one frozen
:class:`StudyFile`: the workload (:mod:`~searchmerge.config.workload`), the validated
settings (:mod:`~searchmerge.config.settings`, by the schema of
:mod:`~searchmerge.config.schema`) and the storage URL (:func:`study_storage`, the one
rule). Nothing past this package sees the document.

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
from typing import Any

import yaml

from searchmerge.config import schema
from searchmerge.config.data_request import model_request
from searchmerge.config.settings import SETTINGS_KEYS, STUDY_FILE_KEYS, StudySettings
from searchmerge.config.workload import Workload, workload_from_document
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.keys import check_keys
from searchmerge.storage.store import CheckpointStore

__all__ = [
    "STUDY_KEYS",
    "StudyFile",
    "default_storage",
    "load_study_file",
    "open_study_file",
    "read_study_file",
    "study_storage",
]

#: The top-level keys of a study file (docs/study-files.md); any other is refused as a typo.
STUDY_KEYS = (*STUDY_FILE_KEYS, *SETTINGS_KEYS)


@dataclass(frozen=True)
class StudyFile:
    """A loaded study file: its workload, settings, and the storage it uses.

    Attributes:
        path: The study file.
        workload: Its models.
        settings: Everything else it sets, validated.
        storage: The storage URL of its search and checkpoints (:func:`study_storage`).
        blob_dir: Where checkpoint blobs go when the storage needs a location for them.

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


def study_storage(given: str | None, written: str | None, workload_name: str) -> str:
    """The storage a study uses: the one given (``--storage``), else the file's ``storage:``, else the default.

    Example:
        >>> study_storage(None, None, "digits edge")
        'sqlite:///digits-edge.db'
        >>> study_storage("postgresql://db/s", "sqlite:///mine.db", "x")
        'postgresql://db/s'
    """
    return given or written or default_storage(workload_name)


def read_study_file(
    path: str | Path, *, storage: str | None = None, blob_dir: str | Path | None = None, target: float | None = None
) -> StudyFile:
    """Read a study file into its one validated, frozen object; nothing is opened, read or written.

    The YAML is parsed once: every key is known, every value has its type and range (a
    one-line error names the key's path). Commands that need only the models or the
    settings (``analyze``, ``profile``, ``simulate``, ``dashboard``) read a file this way;
    :func:`open_study_file` also checks each model's data and task, for training.

    Args:
        path: The study file.
        storage: The storage URL to use instead of the file's ``storage:`` (:func:`study_storage`).
        blob_dir: Where checkpoint blobs go (see :class:`StudyFile`).
        target: An accuracy target instead of the file's ``target:``.
    """
    path = Path(path)
    document = _read_document(path)
    where = f"study file {str(path)!r}"
    check_keys(where, document, STUDY_KEYS)
    workload = workload_from_document(path, document)
    try:
        settings = StudySettings.from_document(document)
        written = schema.typed("storage", document["storage"], str) if document.get("storage") is not None else None
    except SearchmergeError as exc:
        raise SearchmergeError(f"{where}: {exc}") from None
    url = study_storage(storage, written, workload.name)
    return StudyFile(path, workload, settings.with_target(target), url, blob_dir)


def load_study_file(path: str | Path) -> tuple[Workload, StudySettings]:
    """A study file's workload and validated settings (:func:`read_study_file`, without its storage)."""
    study = read_study_file(path)
    return study.workload, study.settings


def open_study_file(
    path: str | Path, *, storage: str | None = None, blob_dir: str | Path | None = None, target: float | None = None
) -> StudyFile:
    """Load and validate a study file; its checkpoint store opens when first used.

    Besides what :func:`read_study_file` checks, every model's data and task are resolved
    (format, keys, task kind). Nothing is written here: a study file with an error leaves no
    SQLite file or blob folder behind. A storage that needs a blob location and has none is
    refused now.
    """
    study = read_study_file(path, storage=storage, blob_dir=blob_dir, target=target)
    _check_tasks(study.workload, study.settings)
    CheckpointStore.check_blob_location(study.storage, blob_dir)
    return study


def _read_document(path: Path) -> dict[str, Any]:
    """The YAML mapping of a study file, or a one-line error (unreadable, not YAML, no ``models`` list)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SearchmergeError(f"cannot read study file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SearchmergeError(f"study file {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise SearchmergeError(f"study file {str(path)!r} must be a mapping with a 'models' list")
    return document
