"""Training and scoring loops shared by preparation (originals) and evaluation (merged models).

Every loop reads its data through a ``torch.utils.data.DataLoader`` (``workers`` processes
decode in parallel; 0 reads in the calling process) and leaves what differs between task
kinds (batches, loss, metric, statistics pass) to the kind's adapter, so one loop serves
classifiers and detectors, and no dataset has to fit in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator, Sized
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from searchmerge.config.settings import TrainSettings
from searchmerge.core.uncertainty import Interval
from searchmerge.data.loading import batches, in_order
from searchmerge.data.tasks import TaskKind, get_kind

__all__ = [
    "accuracy",
    "batch_norms",
    "default_device",
    "fix_cublas_workspace",
    "recalibrate_batch_norm",
    "repeatable_kernels",
    "score",
    "score_interval",
    "steps_per_epoch",
    "train_model",
]

def fix_cublas_workspace() -> None:
    """Give cuBLAS the fixed workspace it needs to be repeatable (unless the user set one).

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` once, at its first use in the process, so a
    run sets it where it starts: when it picks its device (:func:`default_device`) or
    enters :func:`repeatable_kernels`, before any tensor reaches the GPU. Importing this
    module (or opening a study file) sets nothing.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextmanager
def repeatable_kernels() -> Iterator[None]:
    """Within this block, a seed gives the same weights on a GPU too.

    By default cuDNN picks the fastest convolution algorithms, and some of them sum
    gradients in a different order on every run, so two seeded trainings of one
    plan would part after a few steps. This selects deterministic kernels where
    PyTorch has them, and restores the caller's settings afterwards. On the CPU
    it changes nothing.
    """
    fix_cublas_workspace()
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def default_device() -> torch.device:
    """CUDA when a GPU is present, else the CPU (a run starts here: cuBLAS gets its fixed workspace)."""
    fix_cublas_workspace()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def steps_per_epoch(dataset: Sized, batch_size: int) -> int:
    return max(1, len(dataset) // batch_size)




@torch.no_grad()
def score(
    model: nn.Module, dataset: Dataset[Any], kind: TaskKind, *, device: torch.device, batch_size: int = 512,
    workers: int = 0,
) -> float:
    """The task's metric of ``model`` on ``dataset`` (eval mode; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return kind.metric(model, in_order(dataset, kind, batch_size, workers=workers), device)
    finally:
        model.train(was_training)


def score_interval(
    model: nn.Module, dataset: Dataset[Any], kind: TaskKind, *, device: torch.device, batch_size: int = 512,
    workers: int = 0,
) -> Interval | None:
    """The 95% interval of :func:`score` where the task kind tells one (a detector's bootstrap), else ``None``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return kind.metric_interval(model, in_order(dataset, kind, batch_size, workers=workers), device)
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, dataset: Dataset[Any], *, device: torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier: :func:`score` with the classification kind."""
    return score(model, dataset, get_kind("classification"), device=device, batch_size=batch_size)


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module,
    dataset: Dataset[Any],
    kind: TaskKind,
    *,
    device: torch.device,
    samples: int = 128,
    keep: Collection[nn.Module] = (),
    workers: int = 0,
) -> None:
    """Recompute batch-norm running statistics for the model's current weights.

    After merging, a model's private batch norms still hold the statistics of its
    old weights; measuring them again on a hundred-odd training images (no
    gradient, nothing else changes) removes most of the accuracy a merge loses
    at first sight. Norms in ``keep`` (statistics shared with a model that must not
    change) are left as they are. Frozen batch norms (torchvision's
    ``FrozenBatchNorm2d``) keep no running statistics and stay as they are too.
    """
    norms = [norm for norm in batch_norms(model) if norm not in keep]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the passes below
    was_training = model.training
    model.train()
    for norm in keep:
        norm.eval()
    first = Subset(dataset, range(min(samples, _length(dataset))))
    for batch in in_order(first, kind, 128, workers=workers):
        kind.statistics_pass(model, kind.to_device(batch, device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@repeatable_kernels()
def train_model(
    model: nn.Module, dataset: Dataset[Any], kind: TaskKind, settings: TrainSettings, *, seed: int,
    device: torch.device, workers: int = 0, step: Callable[[int], None] | None = None,
) -> None:
    """Supervised training of one model for ``settings.epochs`` epochs (AdamW, cosine schedule).

    ``step`` is called with 1 after each training step (a progress bar's ``advance``).
    """
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = settings.epochs * steps_per_epoch(dataset, settings.batch_size)  # type: ignore[arg-type]
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    stream = batches(dataset, kind, settings.batch_size, seed=seed, workers=workers)
    for _ in range(total):
        batch = kind.to_device(next(stream), device)
        optimizer.zero_grad(set_to_none=True)
        kind.loss(model, batch).backward()
        optimizer.step()
        schedule.step()
        if step is not None:
            step(1)
    model.eval()


def _length(dataset: Dataset[Any]) -> int:
    return len(dataset)  # type: ignore[arg-type]
