"""What the user wants merged: a list of named models.

A model is given by a torchvision architecture name (built with ``weights=None``
because nothing can be downloaded at run time), by an import path
``package.module:factory``, or directly as an ``nn.Module`` from Python. A
workload is written in a YAML study file (read by :mod:`searchmerge.config.study`, whose
``models:`` list :func:`workload_from_document` checks) or assembled in Python; either way
it is validated here, once, so that later stages can trust it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.imports import import_callable
from searchmerge.core.keys import check_keys, did_you_mean

DEFAULT_INPUT_SHAPE: tuple[int, ...] = (3, 224, 224)

#: The keys of one model's entry; ``task``, ``camera`` and ``data`` are kept in ``ModelSpec.options``.
MODEL_KEYS = ("name", "arch", "factory", "kwargs", "weights", "input_shape", "task", "camera", "data")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a workload.

    Args:
        name: Unique name of the model within the workload.
        arch: A torchvision architecture name (``"resnet50"``) or an import path
            ``"package.module:factory"``. Ignored when ``module`` is given.
        kwargs: Keyword arguments for the builder or factory.
        weights: Optional weights file (``.safetensors``, or a ``.pt`` state dict
            read with ``weights_only=True``) loaded after building.
        input_shape: Shape of one input sample, used to measure activation memory.
        module: A ready ``nn.Module`` (Python API only).
        options: Further per-model settings used by later stages (task, camera, ...).
    """

    name: str
    arch: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    module: Any = field(default=None, compare=False, repr=False)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise SearchmergeError(f"model name must be a non-empty string, got {self.name!r}")
        if self.module is None and not self.arch:
            raise SearchmergeError(f"model {self.name!r}: give an architecture name or a factory path")

    def build(self) -> Any:
        """Build the ``nn.Module`` (a fresh one each call unless ``module`` was given)."""
        from torch import nn

        if self.module is not None:
            model = self.module
        elif ":" in str(self.arch):
            model = _call_factory(self.name, str(self.arch), self.kwargs)
        else:
            model = _build_torchvision(self.name, str(self.arch), self.kwargs)
        if not isinstance(model, nn.Module):
            raise SearchmergeError(
                f"model {self.name!r}: factory {self.arch!r} returned {type(model).__name__}, not a torch nn.Module"
            )
        if self.weights:
            _load_weights(self.name, model, Path(self.weights))
        return model


@dataclass(frozen=True)
class Workload:
    """A validated list of at least two uniquely named models (a study's settings are its own:
    :class:`~searchmerge.config.settings.StudySettings`)."""

    models: tuple[ModelSpec, ...]
    name: str = "workload"

    def __post_init__(self) -> None:
        if len(self.models) < 2:
            raise SearchmergeError(
                f"workload {self.name!r} has {len(self.models)} model(s); merging needs at least two"
            )
        names = [m.name for m in self.models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise SearchmergeError(f"workload {self.name!r}: model names must be unique, repeated: {duplicated}")

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def spec(self, name: str) -> ModelSpec:
        for model in self.models:
            if model.name == name:
                return model
        raise SearchmergeError(f"workload {self.name!r} has no model named {name!r}; it has {self.names}")

    def build(self) -> dict[str, Any]:
        """Build every model, in workload order."""
        return {m.name: m.build() for m in self.models}


def from_models(models: Iterable[str] | Mapping[str, Any] | Workload, *, name: str = "workload") -> Workload:
    """Make a workload from what a user is likely to have at hand.

    Accepts a :class:`Workload`, a list of architecture names or factory paths
    (repeated names become ``resnet50``, ``resnet50_2``, ...), or a mapping from
    model name to an ``nn.Module``, an architecture name or a :class:`ModelSpec`.
    """
    if isinstance(models, Workload):
        return models
    specs: list[ModelSpec] = []
    if isinstance(models, Mapping):
        for model_name, value in models.items():
            if isinstance(value, ModelSpec):
                specs.append(value)
            elif isinstance(value, str):
                specs.append(ModelSpec(name=model_name, arch=value))
            else:
                specs.append(ModelSpec(name=model_name, module=value))
    else:
        seen: dict[str, int] = {}
        for arch in models:
            base = arch.rsplit(":", 1)[-1]
            seen[base] = seen.get(base, 0) + 1
            specs.append(ModelSpec(name=base if seen[base] == 1 else f"{base}_{seen[base]}", arch=arch))
    return Workload(models=tuple(specs), name=name)


def workload_from_document(path: Path, document: Mapping[str, Any]) -> Workload:
    """The workload of a study file's document: its ``models`` list and its ``name``.

    Each entry has ``name`` and ``arch`` (or ``factory``), and optionally ``kwargs``,
    ``weights``, ``input_shape`` and the per-model settings that later stages use (kept in
    ``ModelSpec.options``). Relative weights paths are resolved against the study file's folder.
    """
    models = document.get("models")
    if not isinstance(models, list):
        raise SearchmergeError(f"study file {str(path)!r} must be a mapping with a 'models' list")
    specs = [_spec_from_entry(path, index, entry) for index, entry in enumerate(models)]
    name = document.get("name") or path.stem
    if not isinstance(name, str):
        raise SearchmergeError(f"study file {str(path)!r}: name must be text, got {name!r}")
    return Workload(models=tuple(specs), name=name)


def _spec_from_entry(path: Path, index: int, entry: Any) -> ModelSpec:
    where = f"study file {str(path)!r}, model #{index + 1}"
    if not isinstance(entry, dict):
        raise SearchmergeError(f"{where}: expected a mapping with 'name' and 'arch', got {entry!r}")
    check_keys(where, entry, MODEL_KEYS)
    known = {"name", "arch", "factory", "kwargs", "weights", "input_shape"}
    arch = entry.get("arch") or entry.get("factory")
    name = entry.get("name") or (str(arch).rsplit(":", 1)[-1] if arch else None)
    if not name or not arch:
        raise SearchmergeError(f"{where}: needs 'name' and 'arch' (a torchvision name or 'package.module:factory')")
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise SearchmergeError(f"{where}: 'kwargs' must be a mapping")
    weights = entry.get("weights")
    if weights is not None:
        weights_path = Path(str(weights))
        weights = str(weights_path if weights_path.is_absolute() else path.parent / weights_path)
    shape = entry.get("input_shape", DEFAULT_INPUT_SHAPE)
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise SearchmergeError(f"{where}: 'input_shape' must be a list of positive integers, got {shape!r}")
    options = {k: v for k, v in entry.items() if k not in known}
    return ModelSpec(
        name=str(name), arch=str(arch), kwargs=kwargs, weights=weights, input_shape=tuple(shape), options=options
    )


def _build_torchvision(model_name: str, arch: str, kwargs: Mapping[str, Any]) -> Any:
    from torchvision import models as tv_models

    try:
        builder = tv_models.get_model_builder(arch)
    except ValueError:
        names = sorted(tv_models.list_models())
        known = ", ".join(names[:12])
        raise SearchmergeError(
            f"model {model_name!r}: unknown architecture {arch!r}{did_you_mean(arch, names)} (not a torchvision model"
            f" name such as {known}, ...; for your own model use 'package.module:factory')"
        ) from None
    arguments: dict[str, Any] = {"weights": None, **kwargs}
    if "weights_backbone" in inspect.signature(builder).parameters:
        # Detectors default to downloading an ImageNet backbone; nothing may be downloaded.
        arguments.setdefault("weights_backbone", None)
    try:
        return builder(**arguments)
    except (TypeError, ValueError) as exc:
        raise SearchmergeError(f"model {model_name!r}: cannot build {arch!r} with {dict(kwargs)}: {exc}") from None


def _call_factory(model_name: str, path: str, kwargs: Mapping[str, Any]) -> Any:
    factory = import_callable(path, f"model {model_name!r}")
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise SearchmergeError(f"model {model_name!r}: calling {path!r} failed: {exc}") from None


def _load_weights(model_name: str, model: Any, path: Path) -> None:
    import torch

    if not path.is_file():
        raise SearchmergeError(f"model {model_name!r}: weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        raise SearchmergeError(f"model {model_name!r}: cannot read weights file {str(path)!r}: {exc}") from None
    mismatch = _first_mismatch(model.state_dict(), state)
    if mismatch:
        raise SearchmergeError(f"model {model_name!r}: weights file {str(path)!r} does not fit the architecture: {mismatch}")
    model.load_state_dict(state)


def _first_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """The first key (in the model's order) that is missing, unexpected or of another shape; '' if none."""
    for key, tensor in expected.items():
        if key.endswith("num_batches_tracked") and key not in given:
            continue  # a batch norm's step count; a file saved from a frozen batch norm has none
        if key not in given:
            return f"key {key!r} is missing from the file"
        if tuple(given[key].shape) != tuple(tensor.shape):
            return f"key {key!r} has shape {tuple(given[key].shape)} in the file, {tuple(tensor.shape)} in the model"
    extra = [key for key in given if key not in expected]
    return f"key {extra[0]!r} of the file is not in the model" if extra else ""
