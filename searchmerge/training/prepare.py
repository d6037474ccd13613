"""Prepare a workload's originals: each model's data, the model as given or made by the recipe, baselines.

A model with ``weights`` (or a factory that returns it trained) is used as it is: it is
loaded, checked against one batch of its data and scored on its validation and test
splits. A model whose data comes without trained models (the digits demo) and that has
no weights is made by the study's recipe (:mod:`searchmerge.training.recipe`: pretrain, fine-tune).
Either way the originals go into the checkpoint store with their validation and test
metric (top-1 accuracy, or mAP@0.5 for a detector): the baselines that a merged model is
compared with.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shlex
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchmerge.config.data_request import DataRequest, check_fits, model_request
from searchmerge.config.settings import StudySettings
from searchmerge.config.study import StudyFile
from searchmerge.config.workload import DEFAULT_INPUT_SHAPE, Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Counter, Progress, counted
from searchmerge.data.checks import MIN_EXAMPLES, check_workload_data
from searchmerge.data.loading import in_order
from searchmerge.data.sources import SourceContext, TaskData
from searchmerge.data.sources.base import digest
from searchmerge.data.tasks import TaskKind
from searchmerge.storage.lease import hold_lease
from searchmerge.storage.store import (
    CheckpointCorruptError,
    CheckpointKey,
    CheckpointRecord,
    CheckpointStore,
)
from searchmerge.training.recipe import arch_key, fine_tune, pretrain
from searchmerge.training.train import default_device, score, steps_per_epoch

__all__ = [
    "Baseline",
    "PreparedWorkload",
    "data_fingerprint",
    "prepare",
    "prepare_study",
    "source_context",
    "workload_data",
    "workload_fingerprint",
]


@dataclass(frozen=True)
class Baseline:
    """An original model's metric (accuracy, or mAP@0.5 for a detector), against which its merged version is judged."""

    val_accuracy: float
    test_accuracy: float
    checkpoint_id: str


@dataclass(frozen=True)
class PreparedWorkload:
    """A workload ready to be merged: its data, its original models, their baselines and task kinds."""

    workload: Workload
    settings: StudySettings
    data: Mapping[str, TaskData]
    models: Mapping[str, nn.Module]
    baselines: Mapping[str, Baseline]
    workload_fingerprint: str
    data_fingerprint: str
    #: Each model's task adapter: how it is batched, trained, scored and recalibrated.
    kinds: Mapping[str, TaskKind]
    #: The fingerprint of the data the baselines were measured on: ``data_fingerprint`` when
    #: prepared; a drift scenario's data has another (an original scores less on it).
    baseline_data_fingerprint: str
    #: The models whose baselines were re-based on this data (a drifted search with ``drift_baseline:
    #: reachable``, :mod:`searchmerge.search.drift_targets`): their merged weights depend on them.
    rebased: tuple[str, ...] = ()

    @property
    def on_baseline_data(self) -> bool:
        """Whether ``data`` is the data the baselines were measured on, so an original scores its baseline."""
        return self.baseline_data_fingerprint == self.data_fingerprint


def source_context(
    settings: StudySettings, *, study_path: str | Path | None = None, cache_dir: Path | None = None,
    seed: int | None = None,
) -> SourceContext:
    """What the data sources of a study need: its folder, seed, image cache, top-level ``data:`` and ``video:``."""
    return SourceContext(
        folder=Path(study_path).parent if study_path is not None else Path.cwd(),
        seed=settings.seed if seed is None else seed,
        cache_dir=cache_dir if settings.cache else None,
        defaults={"image_size": settings.image_size, "channels": settings.channels, "video": settings.video},
    )


def workload_data(
    workload: Workload,
    context: SourceContext,
    *,
    request_of: Callable[[DataRequest], DataRequest] | None = None,
) -> dict[str, TaskData]:
    """Each model's data (file lists and labels; samples are read when used).

    Args:
        workload: Models with a ``task`` (and ``data`` or a digits ``camera``) each.
        context: The study's folder, seed and cache (see :func:`source_context`).
        request_of: Changes a model's data request (a drift scenario's cameras or data).
    """
    data = {}
    for spec in workload.models:
        request = model_request(spec)
        data[spec.name] = (request_of(request) if request_of is not None else request).open(context)
    return data


def workload_fingerprint(workload: Workload, settings: StudySettings) -> str:
    """Identifies the originals: same models (and weights files), tasks and training settings, same fingerprint."""
    models = []
    for m in workload.models:
        described: dict[str, Any] = {"name": m.name, "arch": m.arch, "kwargs": dict(m.kwargs), "options": dict(m.options)}
        if m.weights:
            described["weights_sha256"] = _file_sha256(m.name, Path(m.weights))
        if tuple(m.input_shape) != DEFAULT_INPUT_SHAPE:
            described["input_shape"] = list(m.input_shape)
        models.append(described)
    described_workload = {
        "workload": workload.name,
        "models": models,
        "seed": settings.seed,
        "image_size": settings.image_size,
        "channels": settings.channels,
        "pretrain_task": settings.pretrain_task,
        "pretrain": vars(settings.pretrain),
        "finetune": vars(settings.finetune),
    }
    return digest(described_workload)


def data_fingerprint(data: Mapping[str, TaskData]) -> str:
    return digest({name: task_data.fingerprint for name, task_data in data.items()})


def prepare(
    workload: Workload,
    settings: StudySettings,
    store: CheckpointStore | Callable[[], CheckpointStore],
    *,
    force: bool = False,
    progress: Progress | None = None,
    study_path: str | Path | None = None,
    cache_dir: Path | None = None,
    lease_seconds: float = 60.0,
    min_examples: int = MIN_EXAMPLES,
) -> PreparedWorkload:
    """Store the originals and their baselines, or load them when they are already stored.

    Before anything is built from data or trained, every model's splits are counted
    (:mod:`searchmerge.data.checks`): a split that lacks a class the model predicts, or holds
    fewer than ``min_examples`` of one, is refused, one line per model; a split so small that
    one example moves a ratio by more than the margin to the target is reported as a warning.
    A failed prepare leaves nothing behind: no store, and no decoded images or frames in the
    cache that were not there before.

    Workers that start together on one storage prepare the originals once: the first
    holds a lease in the database while it works (see :mod:`searchmerge.storage.lease`), the
    others wait for it and then load what it stored; a holder killed mid-way loses
    its lease after ``lease_seconds`` and a waiting worker takes the work over.

    Args:
        workload: Models with a ``task`` and their data each.
        settings: The study's settings (seed, data, recipe).
        store: Where originals and baselines are kept, or a function that opens it: it is
            then opened only after every model was checked against its data, so bad input
            leaves no database file behind.
        force: Prepare again even when stored originals exist.
        progress: Called with one line per step of long work.
        study_path: The study file the workload comes from: relative data paths start at its
            folder, and an error about a corrupt stored original names it.
        cache_dir: Where decoded images are kept between runs (``None``: not kept).
        lease_seconds: How long a preparing worker's claim lasts without renewal.
        min_examples: The fewest examples of each class (a detector: boxes) every split must hold.

    Raises:
        SearchmergeError: If data is missing or malformed, a split lacks a class or holds too
            few of one, a model does not fit its data or scores 0 on a split (a ratio to a
            baseline of 0 means nothing); nothing is stored then.
    """
    context = source_context(settings, study_path=study_path, cache_dir=cache_dir)
    with _cache_kept_only_on_success(context.cache_dir):
        return _prepare(workload, settings, store, context, force=force, progress=progress, study_path=study_path,
                        lease_seconds=lease_seconds, min_examples=min_examples)


def _prepare(
    workload: Workload,
    settings: StudySettings,
    store: CheckpointStore | Callable[[], CheckpointStore],
    context: SourceContext,
    *,
    force: bool,
    progress: Progress | None,
    study_path: str | Path | None,
    lease_seconds: float,
    min_examples: int,
) -> PreparedWorkload:
    say = progress or (lambda _line: None)
    requests = {spec.name: model_request(spec) for spec in workload.models}
    torch.manual_seed(settings.seed)  # the heads that pretraining does not give start the same every run
    models = {spec.name: spec.build() for spec in workload.models}  # an unknown arch fails before data is read
    data = {name: request.open(context) for name, request in requests.items()}
    checks = check_workload_data(data, target=settings.target, min_examples=min_examples)  # refuses before training
    kinds = {name: request.adapter for name, request in requests.items()}
    fingerprint = workload_fingerprint(workload, settings)
    data_print = data_fingerprint(data)
    for name, model in models.items():
        check_fits(name, model, data[name], kinds[name])
    store = store() if callable(store) else store

    baselines: dict[str, Baseline] = {}

    def reuse_stored(names: list[str]) -> list[str]:
        """Load the stored originals among ``names`` into ``models``; the names still missing."""
        missing = []
        for name in names:
            record = None if force else store.find(_original_key(fingerprint, name, data[name]))
            if record is None:
                missing.append(name)
                continue
            models[name].load_state_dict(_load_original(store, record, name, study_path))
            baselines[name] = Baseline(record.metadata["val_accuracy"], record.metadata["test_accuracy"], record.id)
            say(f"reusing stored original {name} (checkpoint {record.id}): val {baselines[name].val_accuracy:.3f},"
                f" test {baselines[name].test_accuracy:.3f}")
        return missing

    missing = reuse_stored(list(models))
    if missing:
        # Workers started together on one storage: the first prepares, the others wait and then reuse.
        with hold_lease(store.url, f"prepare:{fingerprint}:{data_print}", seconds=lease_seconds, say=say):
            missing = reuse_stored(missing) if not force else missing
            if missing:
                for name in missing:  # said when originals are made, not at every command that reuses them
                    for warning in checks[name].warnings:
                        say(f"warning: {warning}")
                originals = _Originals(workload, settings, requests, data, context, say)
                measured = originals.make(models, missing)
                for name in missing:  # stored only once every model is ready: bad input stores nothing
                    model = models[name].to("cpu")
                    val, test = measured[name]
                    metadata = {"val_accuracy": val, "test_accuracy": test, "task": requests[name].task,
                                "metric": kinds[name].metric_name}
                    key = _original_key(fingerprint, name, data[name])
                    baselines[name] = Baseline(val, test, store.put(key, dict(model.state_dict()), metadata,
                                                                    replace=force))

    for model in models.values():
        model.eval()
    return PreparedWorkload(workload, settings, data, models, baselines, fingerprint, data_print, kinds, data_print)


@contextlib.contextmanager
def _cache_kept_only_on_success(cache_dir: Path | None) -> Iterator[None]:
    """Remove the cache files (decoded images, frames) and folders made in the block if it fails.

    What was cached before stays; an interrupted run (Ctrl-C) keeps what it decoded for the next.
    """
    if cache_dir is None:
        yield
        return
    before = set(cache_dir.rglob("*")) if cache_dir.is_dir() else set()
    existed = cache_dir.is_dir()
    try:
        yield
    except Exception:
        if cache_dir.is_dir():
            made = [path for path in cache_dir.rglob("*") if path not in before]
            for path in made:
                if not path.is_dir():
                    path.unlink(missing_ok=True)
            for folder in sorted((p for p in made if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: another worker's entries stay
            if not existed:
                with contextlib.suppress(OSError):
                    cache_dir.rmdir()
        raise


#: Samples per batch when prepare reads a training split once.
_READ_BATCH = 64


@dataclass(frozen=True)
class _Originals:
    """Makes the missing originals: as given, or by the recipe; then measures their baselines."""

    workload: Workload
    settings: StudySettings
    requests: Mapping[str, DataRequest]
    data: Mapping[str, TaskData]
    context: SourceContext
    say: Progress

    def make(self, models: Mapping[str, nn.Module], missing: list[str]) -> dict[str, tuple[float, float]]:
        """Each missing model's (val, test) metric, after the recipe trained it where it must."""
        device = default_device()
        recipe = [n for n in missing if self.requests[n].makes_originals and not self.workload.spec(n).weights]
        tune = self.settings.finetune
        planned = sum(tune.epochs * steps_per_epoch(self.data[n].train, tune.batch_size)  # type: ignore[arg-type]
                      if n in recipe else math.ceil(len(self.data[n].train) / _READ_BATCH)  # type: ignore[arg-type]
                      for n in missing)
        with counted(self.say, planned, "prepare") as steps:  # pretraining adds its steps once its data is open
            return self._make(models, missing, recipe, device, steps)

    def _make(
        self, models: Mapping[str, nn.Module], missing: list[str], recipe: list[str], device: torch.device,
        steps: Counter,
    ) -> dict[str, tuple[float, float]]:
        pretrained = pretrain(self.workload, self.settings, self.requests, recipe, self.context, device, self.say,
                              steps=steps)
        measured = {}
        for name in missing:
            start = time.perf_counter()
            request, data = self.requests[name], self.data[name]
            if name in recipe:
                fine_tune(models[name], pretrained[arch_key(self.workload.spec(name))], data, request, self.settings,
                          device, step=steps.advance)
                done = f"fine-tuned {name} on {request.task}"
            else:
                self._read_training_split(name, steps)
                done = f"{name} as given ({data.description})"
            model = models[name].to(device)
            val, test = (score(model, split, request.adapter, device=device, workers=self.settings.workers)
                         for split in (data.val, data.test))
            for split, value in (("val", val), ("test", test)):
                if value <= 0:
                    raise SearchmergeError(
                        f"model {name!r} scores 0 {request.adapter.metric_name} on the {split} split of"
                        f" {data.description}: a merged model's ratio to a baseline of 0 means nothing (are the"
                        " weights trained for this data?)"
                    )
            measured[name] = (val, test)
            self.say(f"{done}: val {val:.3f}, test {test:.3f} {request.adapter.metric_name}"
                     f" ({time.perf_counter() - start:.1f} s)")
        return measured

    def _read_training_split(self, name: str, steps: Counter) -> None:
        """Read every training sample once: a sample that does not decode is found now, not mid-search,
        and the image cache is filled for the first evaluation."""
        adapter = self.requests[name].adapter
        for _ in in_order(self.data[name].train, adapter, _READ_BATCH, workers=self.settings.workers):
            steps.advance()


def prepare_study(study: StudyFile, *, force: bool = False, progress: Progress | None = None) -> PreparedWorkload:
    """Store the originals of a study file and their baselines, or load them when they are stored."""
    return prepare(study.workload, study.settings, lambda: study.store, force=force, progress=progress,
                   study_path=study.path, cache_dir=study.cache_dir)


def _load_original(
    store: CheckpointStore, record: CheckpointRecord, name: str, study_path: str | Path | None
) -> dict[str, torch.Tensor]:
    """A stored original's weights; a corrupt file is reported with the command that rebuilds it."""
    try:
        return store.load(record.id)
    except CheckpointCorruptError as exc:
        command = shlex.join(["searchmerge", "prepare", str(study_path or "STUDY.yaml"), "--force"])
        raise CheckpointCorruptError(
            f"the stored original of model {name!r} is unusable: {exc}; `{command}` (prepare(..., force=True)"
            " from Python) trains it again and replaces it"
        ) from None


def _original_key(fingerprint: str, name: str, data: TaskData) -> CheckpointKey:
    return CheckpointKey(fingerprint, name, data.fingerprint, "original")


def _file_sha256(name: str, path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise SearchmergeError(f"model {name!r}: cannot read weights file {str(path)!r}: {exc.strerror or exc}") from None
    return digest.hexdigest()

