"""The recipe that makes originals for data that comes without trained models (the digits demo).

Real edge models are fine-tuned from a common pretrained backbone, so the recipe does the
same: every architecture is pretrained once on a source task of the model's data source
(``pretrain.task``, seen through a neutral camera), then one copy per model is fine-tuned
on that model's own training split. A model that comes with its own ``weights`` never
goes through it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from searchmerge.config.data_request import DataRequest, check_fits
from searchmerge.config.settings import StudySettings
from searchmerge.config.workload import ModelSpec, Workload
from searchmerge.core.progress import Counter, Progress
from searchmerge.data.sources import SourceContext, TaskData
from searchmerge.training.train import score, steps_per_epoch, train_model

__all__ = ["fine_tune", "pretrain"]


def arch_key(spec: ModelSpec) -> str:
    """Models of one architecture (kwargs but the classes) share one pretrained backbone."""
    kwargs = {k: v for k, v in spec.kwargs.items() if k != "num_classes"}
    return json.dumps([spec.arch, kwargs], sort_keys=True, default=str)


def pretrain(
    workload: Workload,
    settings: StudySettings,
    requests: Mapping[str, DataRequest],
    names: list[str],
    context: SourceContext,
    device: torch.device,
    say: Progress,
    steps: Counter | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Pretrain each architecture of ``names`` once on its source's ``pretrain.task`` (training images only).

    ``steps`` counts the training steps: each architecture's are added once its data is opened.
    """
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        spec = workload.spec(name)
        key = arch_key(spec)
        if key in weights:
            continue
        request = requests[name]
        options, task = request.source.pretraining(request.options, request.kind, settings.pretrain_task)
        source = request.source.open(options, context, task=task)
        start = time.perf_counter()
        torch.manual_seed(settings.seed)
        model = ModelSpec(
            name=f"{name}-source", arch=spec.arch, kwargs={**spec.kwargs, "num_classes": source.num_classes}
        ).build()
        check_fits(f"{name} (pretraining)", model, source, request.adapter)
        if steps is not None:
            steps.grow(settings.pretrain.epochs * steps_per_epoch(source.train, settings.pretrain.batch_size))  # type: ignore[arg-type]
        train_model(model, source.train, request.adapter, settings.pretrain, seed=settings.seed, device=device,
                    workers=settings.workers, step=steps.advance if steps is not None else None)
        metric = score(model, source.val, request.adapter, device=device, workers=settings.workers)
        weights[key] = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
        say(f"pretrained {spec.arch} {dict(spec.kwargs)} on {source.description}: val {metric:.3f}"
            f" ({time.perf_counter() - start:.1f} s)")
    return weights


def fine_tune(
    model: nn.Module, pretrained: Mapping[str, torch.Tensor], data: TaskData, request: DataRequest,
    settings: StudySettings, device: torch.device, step: Callable[[int], None] | None = None,
) -> None:
    """Start from the pretrained weights wherever the shapes agree (the head may differ), then train.

    ``step`` is called with 1 after each training step.
    """
    own = model.state_dict()
    fitting = {k: v for k, v in pretrained.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    train_model(model, data.train, request.adapter, settings.finetune, seed=settings.seed, device=device,
                workers=settings.workers, step=step)
