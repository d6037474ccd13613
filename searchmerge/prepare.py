"""Prepare a workload's originals: data per camera task, pretraining, fine-tuning, baselines.

Real edge models are fine-tuned from a common pretrained backbone, so this does the
same: every architecture is pretrained once on a source task, then one copy per
camera task is fine-tuned on that camera's data. The originals go into the
checkpoint store with their validation and test accuracy, which are the baselines
that a merged model's accuracy is compared with.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchmerge.data import CameraCondition, TaskData, make_task_data, model_task
from searchmerge.errors import SearchmergeError
from searchmerge.lease import hold_lease
from searchmerge.progress import Progress
from searchmerge.settings import StudySettings
from searchmerge.store import CheckpointCorruptError, CheckpointKey, CheckpointRecord, CheckpointStore
from searchmerge.study import StudyFile
from searchmerge.train import accuracy, default_device, train_model
from searchmerge.workload import ModelSpec, Workload

__all__ = [
    "Baseline",
    "PreparedWorkload",
    "data_fingerprint",
    "model_task",
    "prepare",
    "prepare_study",
    "workload_data",
    "workload_fingerprint",
]


@dataclass(frozen=True)
class Baseline:
    """An original model's accuracy, against which its merged version is judged."""

    val_accuracy: float
    test_accuracy: float
    checkpoint_id: str


@dataclass(frozen=True)
class PreparedWorkload:
    """A workload ready to be merged: its data, its original models and their baselines."""

    workload: Workload
    settings: StudySettings
    data: Mapping[str, TaskData]
    models: Mapping[str, nn.Module]
    baselines: Mapping[str, Baseline]
    workload_fingerprint: str
    data_fingerprint: str


def workload_data(
    workload: Workload,
    settings: StudySettings,
    *,
    seed: int | None = None,
    camera_of: Callable[[str, CameraCondition], CameraCondition] | None = None,
) -> dict[str, TaskData]:
    """Each model's task data, made deterministically from the study's seed.

    Args:
        workload: Models with a ``task`` (and optional ``camera``) each.
        settings: The study's settings (seed, image size, channels).
        seed: Another seed for the splits and camera noise (a drift scenario's own footage).
        camera_of: Changes a model's camera, given the model's name (a drift scenario).
    """
    data = {}
    for spec in workload.models:
        task, camera = model_task(spec)
        if camera_of is not None:
            camera = camera_of(spec.name, camera)
        try:
            data[spec.name] = make_task_data(
                task, camera, seed=settings.seed if seed is None else seed,
                image_size=settings.image_size, channels=settings.channels,
            )
        except SearchmergeError as exc:
            raise SearchmergeError(f"model {spec.name!r}: {exc}") from None
    return data


def workload_fingerprint(workload: Workload, settings: StudySettings) -> str:
    """Identifies the originals: same models, tasks and training settings, same fingerprint."""
    described = {
        "workload": workload.name,
        "models": [
            {"name": m.name, "arch": m.arch, "kwargs": dict(m.kwargs), "options": dict(m.options)}
            for m in workload.models
        ],
        "seed": settings.seed,
        "image_size": settings.image_size,
        "channels": settings.channels,
        "pretrain_task": settings.pretrain_task,
        "pretrain": vars(settings.pretrain),
        "finetune": vars(settings.finetune),
    }
    return _digest(described)


def data_fingerprint(data: Mapping[str, TaskData]) -> str:
    return _digest({name: task_data.fingerprint for name, task_data in data.items()})


def prepare(
    workload: Workload,
    settings: StudySettings,
    store: CheckpointStore,
    *,
    force: bool = False,
    progress: Progress | None = None,
    study_path: str | Path | None = None,
    lease_seconds: float = 60.0,
) -> PreparedWorkload:
    """Train and store the originals, or load them when they are already stored.

    Workers that start together on one storage train the originals once: the first
    holds a lease in the database while it trains (see :mod:`searchmerge.lease`), the
    others wait for it and then load what it stored; a holder killed mid-way loses
    its lease after ``lease_seconds`` and a waiting worker takes the training over.

    Args:
        workload: Models with a ``task`` (and optional ``camera``) each.
        settings: The study's settings (seed, pretraining, fine-tuning).
        store: Where originals and baselines are kept.
        force: Retrain even when stored originals exist.
        progress: Called with one line per step of long work.
        study_path: The study file the workload comes from, named in the command that an
            error about a corrupt stored original suggests.
        lease_seconds: How long a preparing worker's claim lasts without renewal.
    """
    say = progress or (lambda _line: None)
    data = workload_data(workload, settings)
    fingerprint = workload_fingerprint(workload, settings)
    data_print = data_fingerprint(data)
    torch.manual_seed(settings.seed)  # the heads that pretraining does not give start the same every run
    models = {spec.name: spec.build() for spec in workload.models}
    for name, model in models.items():
        _check_fits(name, model, data[name])

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
        # Workers started together on one storage: the first trains, the others wait and then reuse.
        with hold_lease(store.url, f"prepare:{fingerprint}:{data_print}", seconds=lease_seconds, say=say):
            missing = reuse_stored(missing) if not force else missing
            if missing:
                _train_missing(workload, settings, store, models, data, fingerprint, missing, baselines, say,
                               replace=force)

    for model in models.values():
        model.eval()
    return PreparedWorkload(workload, settings, data, models, baselines, fingerprint, data_print)


def _train_missing(
    workload: Workload,
    settings: StudySettings,
    store: CheckpointStore,
    models: Mapping[str, nn.Module],
    data: Mapping[str, TaskData],
    fingerprint: str,
    missing: list[str],
    baselines: dict[str, Baseline],
    say: Progress,
    *,
    replace: bool,
) -> None:
    """Pretrain the architectures of ``missing``, fine-tune and store each of them, and measure its baselines."""
    device = default_device()
    pretrained = _pretrain(workload, settings, missing, device, say)
    for name in missing:
        start = time.perf_counter()
        model = models[name]
        _load_backbone(model, pretrained[_arch_key(workload.spec(name))])
        train_model(model, data[name].train, settings.finetune, seed=settings.seed, device=device)
        val = accuracy(model, data[name].val, device=device)
        test = accuracy(model, data[name].test, device=device)
        model.to("cpu")
        metadata = {"val_accuracy": val, "test_accuracy": test, "task": data[name].task}
        key = _original_key(fingerprint, name, data[name])
        checkpoint = store.put(key, dict(model.state_dict()), metadata, replace=replace)
        baselines[name] = Baseline(val, test, checkpoint)
        say(f"fine-tuned {name} on {data[name].task}: val {val:.3f}, test {test:.3f} ({time.perf_counter() - start:.1f} s)")


def prepare_study(study: StudyFile, *, force: bool = False, progress: Progress | None = None) -> PreparedWorkload:
    """Train and store the originals of a study file, or load them when they are stored."""
    return prepare(study.workload, study.settings, study.store, force=force, progress=progress, study_path=study.path)


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


def _arch_key(spec: ModelSpec) -> str:
    kwargs = {k: v for k, v in spec.kwargs.items() if k != "num_classes"}
    return json.dumps([spec.arch, kwargs], sort_keys=True, default=str)


def _pretrain(
    workload: Workload, settings: StudySettings, names: list[str], device: torch.device, say: Progress
) -> dict[str, dict[str, torch.Tensor]]:
    """Pretrain each architecture once on the source task (neutral camera, training images only)."""
    source = make_task_data(
        settings.pretrain_task, seed=settings.seed, image_size=settings.image_size, channels=settings.channels
    )
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        spec = workload.spec(name)
        key = _arch_key(spec)
        if key in weights:
            continue
        start = time.perf_counter()
        torch.manual_seed(settings.seed)
        model = ModelSpec(
            name=f"{name}-source", arch=spec.arch, kwargs={**spec.kwargs, "num_classes": source.num_classes}
        ).build()
        _check_fits(f"{name} (pretraining)", model, source)
        train_model(model, source.train, settings.pretrain, seed=settings.seed, device=device)
        acc = accuracy(model, source.val, device=device)
        weights[key] = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
        say(f"pretrained {spec.arch} {dict(spec.kwargs)} on {settings.pretrain_task}: val {acc:.3f}"
            f" ({time.perf_counter() - start:.1f} s)")
    return weights


def _load_backbone(model: nn.Module, pretrained: Mapping[str, torch.Tensor]) -> None:
    """Start from the pretrained weights wherever the shapes agree (the head may differ)."""
    own = model.state_dict()
    fitting = {k: v for k, v in pretrained.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)


def _check_fits(name: str, model: nn.Module, data: TaskData) -> None:
    """The model must take the task's images and give one score per class."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.val.x[:2])
    except RuntimeError as exc:
        raise SearchmergeError(
            f"model {name!r} cannot take the {data.task!r} images of shape {tuple(data.val.x.shape[1:])}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise SearchmergeError(
            f"model {name!r} gives {tuple(out.shape[1:])} outputs per image but task {data.task!r} has"
            f" {data.num_classes} classes (set num_classes: {data.num_classes} in its kwargs)"
        )


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]
