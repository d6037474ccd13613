"""What one kind of task needs from the pipeline: batches, a loss, a metric, statistics.

Classification and detection models are retrained and judged by the same evaluator; they
differ only in how samples are put into a batch, how a batch gives a training loss, how a
model is scored and how a batch passes through the model to re-measure its batch-norm
statistics. A :class:`TaskKind` is that difference, so the evaluator, ``prepare``, the
drift check and research call one adapter and never test which kind they hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.uncertainty import Interval

__all__ = ["Batch", "MODEL_ERRORS", "TaskKind", "describe", "eval_output", "first_line", "image_and_target"]

#: A collated batch: the inputs and the targets, in the kind's own form.
Batch = tuple[Any, Any]

#: What a model's forward pass raises on input it cannot take (torchvision asserts too).
MODEL_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError, IndexError, KeyError)


class TaskKind(ABC):
    """The adapter of one task kind; stateless, so one instance serves every model."""

    #: Registry name, as a study file's ``task:`` writes it.
    name: ClassVar[str]
    #: What :meth:`metric` measures, for messages and reports.
    metric_name: ClassVar[str]
    #: Whether :meth:`metric` is a proportion of samples (accuracy), so that its confidence
    #: interval is Wilson's (:mod:`searchmerge.core.uncertainty`); a kind whose metric is not
    #: (mAP) is reported with its sample count and no interval.
    proportion: ClassVar[bool] = False

    @abstractmethod
    def collate(self, samples: Sequence[tuple[Any, Any]]) -> Batch:
        """One batch from ``(input, target)`` samples (a ``DataLoader``'s ``collate_fn``)."""

    @abstractmethod
    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        """The batch with every tensor on ``device``."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of ``model`` (in training mode) on a batch already on its device."""

    @abstractmethod
    def metric(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> float:
        """The metric of ``model`` (in eval mode, without gradients) over every batch of a split."""

    def metric_interval(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> Interval | None:
        """The 95% interval of :meth:`metric` over every batch of a split, where the kind can tell one.

        A kind whose metric is a proportion needs none (its interval is Wilson's, from the count);
        one whose metric is not may resample its samples (:func:`~searchmerge.core.uncertainty.bootstrap`).
        ``None``: the metric is reported with its sample count only.
        """
        return None

    @abstractmethod
    def statistics_pass(self, model: nn.Module, batch: Batch) -> None:
        """Run a batch (on the model's device) through ``model`` so its batch norms see it."""

    @abstractmethod
    def check_model(self, name: str, model: nn.Module, batch: Batch, num_classes: int | None, data: str) -> None:
        """Refuse, with one line naming ``name``, a model that does not fit this kind and its data.

        ``num_classes`` is the data's (``None`` when it does not say), ``data`` its description.
        Called once per model in ``prepare`` with one batch of its data (on the CPU); it must
        leave the model's weights and statistics as they were.
        """

    @abstractmethod
    def check_sample(self, where: str, sample: Any, num_classes: int | None) -> None:
        """Refuse a sample that is not ``(input, target)`` of this kind (a dataset factory's)."""


def describe(value: Any) -> str:
    """A value's kind for a message: a tensor's dtype and shape, else its type."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's run over many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def eval_output(name: str, model: nn.Module, inputs: Any, what: str) -> Any:
    """The model's eval-mode output for ``inputs`` (its mode restored); a model that cannot take them is refused.

    ``what`` describes the inputs for the message ("images of shape (3, 32, 32)").
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(inputs)
    except MODEL_ERRORS as exc:
        raise SearchmergeError(f"model {name!r} cannot take {what}: {first_line(exc)}") from None
    finally:
        model.train(was_training)


def image_and_target(where: str, sample: Any, target: str) -> tuple[torch.Tensor, Any]:
    """A sample's image (a float tensor C x H x W) and target; anything else is refused."""
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise SearchmergeError(f"{where}: a sample must be (image tensor, {target}), got {describe(sample)}")
    image, value = sample
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or not image.is_floating_point():
        raise SearchmergeError(f"{where}: the image must be a float tensor C x H x W, got {describe(image)}")
    return image, value
