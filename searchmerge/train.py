"""Training and scoring loops shared by preparation (originals) and evaluation (merged models)."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from searchmerge.data import Split
from searchmerge.settings import TrainSettings


# cuBLAS is repeatable only with a fixed workspace; it must be set before its first use.
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
    """CUDA when a GPU is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batches(split: Split, batch_size: int, *, seed: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches of a split, reproducible by seed."""
    generator = torch.Generator().manual_seed(seed)
    x, y = split.x.to(device), split.y.to(device)
    while True:
        order = torch.randperm(len(y), generator=generator).to(device)
        for start in range(0, len(y) - batch_size + 1 if len(y) >= batch_size else 1, batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]


def steps_per_epoch(split: Split, batch_size: int) -> int:
    return max(1, len(split.y) // batch_size)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, *, device: torch.device, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``split`` (eval mode; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(split.y), batch_size):
        x = split.x[start : start + batch_size].to(device)
        y = split.y[start : start + batch_size].to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return correct / len(split.y)


@torch.no_grad()
def recalibrate_batch_norm(
    model: nn.Module, split: Split, *, device: torch.device, samples: int = 128, keep: Collection[nn.Module] = ()
) -> None:
    """Recompute batch-norm running statistics for the model's current weights.

    After merging, a model's private batch norms still hold the statistics of its
    old weights; measuring them again on a hundred-odd training images (no
    gradient, nothing else changes) removes most of the accuracy a merge loses
    at first sight. Norms in ``keep`` (statistics shared with a model that must not
    change) are left as they are.
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
    for start in range(0, min(samples, len(split.y)), 128):
        model(split.x[start : min(start + 128, samples)].to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@repeatable_kernels()
def train_model(model: nn.Module, split: Split, settings: TrainSettings, *, seed: int, device: torch.device) -> None:
    """Supervised training of one model for ``settings.epochs`` epochs (Adam, cosine schedule)."""
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = settings.epochs * steps_per_epoch(split, settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    loss_fn = nn.CrossEntropyLoss()
    stream = batches(split, settings.batch_size, seed=seed, device=device)
    for _ in range(total):
        x, y = next(stream)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        schedule.step()
    model.eval()
