"""Reading a dataset as batches: endless shuffled mini-batches for training, or in order once.

Every loop reads its data through a ``torch.utils.data.DataLoader`` (``workers`` processes
decode in parallel; 0 reads in the calling process), with generators of its own so the
order depends on the seed alone. Training (:mod:`searchmerge.training.train`) and the
check that a model fits its data (:mod:`searchmerge.config.data_request`) both read here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.tasks import Batch, TaskKind

__all__ = ["EndlessShuffle", "batches", "in_order"]


class EndlessShuffle(Sampler[list[int]]):
    """Batches of indices for ever: each epoch a fresh seeded permutation, cut into full batches.

    A split smaller than one batch gives it whole as every batch. Its own generator makes
    the order depend on the seed alone, whatever else draws random numbers meanwhile.
    """

    def __init__(self, size: int, batch_size: int, *, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        last = self.size - self.batch_size + 1 if self.size >= self.batch_size else 1
        while True:
            order = torch.randperm(self.size, generator=generator)
            for start in range(0, last, self.batch_size):
                yield order[start : start + self.batch_size].tolist()


def batches(dataset: Dataset[Any], kind: TaskKind, batch_size: int, *, seed: int, workers: int = 0) -> Iterator[Batch]:
    """Endless shuffled mini-batches of a dataset (on the CPU), reproducible by seed."""
    loader = DataLoader(dataset, batch_sampler=EndlessShuffle(_length(dataset), batch_size, seed=seed),
                        collate_fn=kind.collate, num_workers=workers, generator=_own_generator(seed))
    return _read(loader)


def in_order(dataset: Dataset[Any], kind: TaskKind, batch_size: int, *, workers: int = 0) -> Iterator[Batch]:
    """The dataset's batches in order, once (on the CPU)."""
    return _read(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=kind.collate,
                            num_workers=workers, generator=_own_generator(0)))


def _own_generator(seed: int) -> torch.Generator:
    """A loader draws its workers' seeds from this, not from the global generator training uses."""
    return torch.Generator().manual_seed(seed)


def _read(loader: Iterable[Batch]) -> Iterator[Batch]:
    """The loader's batches; an error of the data raised in a worker process keeps its one line."""
    try:
        yield from loader
    except SearchmergeError as exc:
        message = str(exc)
        if message.startswith("Caught "):  # re-raised from a worker, with its traceback as the message
            message = message.strip().splitlines()[-1].split("SearchmergeError: ", 1)[-1]
        raise SearchmergeError(message) from None


def _length(dataset: Dataset[Any]) -> int:
    return len(dataset)  # type: ignore[arg-type]
