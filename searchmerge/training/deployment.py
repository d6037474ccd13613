"""The merged deployment artifact: merged models saved once, loaded with their ties.

A merged workload is only worth deploying if it still holds each shared tensor
once after a trip through the disk. Saving each model's ``state_dict`` on its own
would write a shared layer once per model and load it back as separate copies,
undoing the memory the merge saved. A deployment directory therefore holds:

* ``weights.safetensors``: every distinct tensor storage of all models, written
  once under the key of its first occurrence (``"model/param.name"``);
* ``manifest.json``: a small, readable description: format version, the model
  specs needed to rebuild the architectures, the sharing plan, the map from each
  model's ``state_dict`` key to its tensor in the weights file, the weights file's
  size and SHA-256, the study's settings an edge needs (:data:`EDGE_SETTINGS`: the seed,
  target, image size and channels, video section and drift scenarios, from which its
  footage comes; nothing else, so no storage URL, credential or training setting) and the
  caller's metadata.

Loading rebuilds each model from its spec, fills it from the weights file and
ties again every slot that maps to the same tensor, so the loaded models use the
same memory and give the same outputs as the merged models that were exported.
Only safetensors and JSON are read: nothing is unpickled.

Example:
    >>> from searchmerge.training.deployment import export_deployment, load_deployment
    >>> export_deployment("deploy/", workload, merged, plan=plan)  # doctest: +SKIP
    PosixPath('deploy')
    >>> deployment = load_deployment("deploy/", device="cuda")  # doctest: +SKIP
    >>> deployment.models["digits"](images)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from searchmerge.config.settings import StudySettings
from searchmerge.config.workload import ModelSpec, Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.storage.atomic import write_atomic
from searchmerge.storage.identity import tensor_identity

__all__ = [
    "EDGE_SETTINGS",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "Deployment",
    "export_deployment",
    "load_deployment",
]

FORMAT = "searchmerge-deployment"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
#: The study settings a manifest keeps, by section (``None``: the whole section): what an edge
#: needs to make its footage and nothing more. A manifest goes to every edge, so this is an
#: allowlist: a setting added to the study file stays out until it is named here.
EDGE_SETTINGS: dict[str, tuple[str, ...] | None] = {
    "seed": None, "target": None, "data": ("image_size", "channels"), "video": None, "drift": None,
}


@dataclass(frozen=True)
class Deployment:
    """A loaded deployment: the merged models, ready to run, and what describes them.

    Attributes:
        workload: The workload the models were built from (specs without weights
            files: the weights come from the deployment).
        models: The models by name, in workload order, with shared tensors tied.
        plan: The sharing plan that was exported, or ``None`` if none was given.
        metadata: The caller's metadata, as exported.
        settings: The study's settings, as exported (the defaults when none were given).
    """

    workload: Workload
    models: dict[str, nn.Module]
    plan: SharingPlan | None
    metadata: dict[str, Any] = field(default_factory=dict)
    settings: StudySettings = field(default_factory=StudySettings)


def export_deployment(
    directory: str | os.PathLike[str],
    workload: Workload,
    models: Mapping[str, nn.Module],
    *,
    plan: SharingPlan | None = None,
    metadata: dict[str, Any] | None = None,
    settings: StudySettings | None = None,
) -> Path:
    """Write merged models to ``directory`` so that they load back with their ties.

    Args:
        directory: Where to write; created if missing. An earlier deployment in
            it is replaced.
        workload: The workload the models were built from. Every model needs a
            rebuildable spec (an architecture name or factory path): a spec given
            only as an ``nn.Module`` cannot be rebuilt on the deployment side.
        models: The (merged) models by name, one per model of the workload.
        plan: The sharing plan the models were merged with, kept for reference.
        metadata: Anything JSON-serialisable to keep with the deployment (trial
            number, accuracies, ...).
        settings: The study's settings; only those of :data:`EDGE_SETTINGS` are written (its
            footage and drift scenarios), never the storage or the training settings.

    Returns:
        The deployment directory.

    Raises:
        SearchmergeError: If a model is missing or cannot be rebuilt, or the
            specs or metadata are not JSON-serialisable.
    """
    directory = Path(directory)
    _check_models(workload, models)
    specs = [_spec_to_json(spec) for spec in workload.models]
    weights, tensor_map = _collect_tensors(workload, models)
    data = _serialize(weights)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "workload": {"name": workload.name, "settings": {} if settings is None else _edge_settings(settings),
                     "models": specs},
        "plan": None if plan is None else sorted(plan.shared),
        "weights": {"file": WEIGHTS_FILE, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "tensors": tensor_map,
        "metadata": dict(metadata or {}),
    }
    manifest_bytes = _to_json_bytes(manifest, "the deployment manifest (workload settings or metadata)")
    directory.mkdir(parents=True, exist_ok=True)
    # The manifest goes last: a crash in between leaves an old manifest whose
    # checksum no longer matches the weights, which loading reports.
    write_atomic(directory / WEIGHTS_FILE, data)
    write_atomic(directory / MANIFEST_FILE, manifest_bytes)
    return directory


def load_deployment(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Deployment:
    """Load a deployment written by :func:`export_deployment`, with shared tensors tied again.

    The weights file is checked against the manifest's size and SHA-256 before it
    is parsed, so a truncated or altered file is reported instead of loaded.

    Args:
        directory: The deployment directory.
        device: Where to put the models.

    Returns:
        The deployment: workload, models (in eval mode), plan and metadata.

    Raises:
        SearchmergeError: If a file is missing, corrupt or of another format
            version, or a rebuilt model does not fit its saved tensors.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory / MANIFEST_FILE)
    tensors = _read_weights(directory / WEIGHTS_FILE, manifest["weights"], device)
    workload = _workload_from_json(manifest["workload"])
    settings = _settings_from_json(directory / MANIFEST_FILE, manifest["workload"])
    shared: dict[tuple[str, bool], torch.Tensor] = {}
    models: dict[str, nn.Module] = {}
    for spec in workload.models:
        model = spec.build().to(device)
        _fill_model(spec.name, model, manifest["tensors"].get(spec.name, {}), tensors, shared)
        models[spec.name] = model.eval()
    plan = None if manifest["plan"] is None else SharingPlan.of(manifest["plan"])
    return Deployment(workload=workload, models=models, plan=plan, metadata=dict(manifest["metadata"]),
                      settings=settings)


# --- export -----------------------------------------------------------------


def _check_models(workload: Workload, models: Mapping[str, nn.Module]) -> None:
    """The models must be exactly the workload's, or the manifest could not rebuild them."""
    missing = [name for name in workload.names if name not in models]
    extra = sorted(set(models) - set(workload.names))
    if missing or extra:
        raise SearchmergeError(
            f"the models do not match workload {workload.name!r}: missing {missing}, not in the workload {extra}"
        )
    for name in workload.names:
        if not isinstance(models[name], nn.Module):
            raise SearchmergeError(f"model {name!r} is a {type(models[name]).__name__}, not a torch nn.Module")


def _edge_settings(settings: StudySettings) -> dict[str, Any]:
    """The sections and keys of :data:`EDGE_SETTINGS` of the settings' document."""
    document = settings.to_document()
    kept: dict[str, Any] = {}
    for section, keys in EDGE_SETTINGS.items():
        if section in document:
            value = document[section]
            kept[section] = value if keys is None else {k: value[k] for k in keys if k in value}
    return kept


def _spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    """What rebuilds a model: everything in its spec but the module and the weights file."""
    if not spec.arch:
        raise SearchmergeError(
            f"model {spec.name!r} was given as an nn.Module without an architecture, so a deployment cannot"
            " rebuild it; give it as ModelSpec(name=..., arch='package.module:factory', kwargs=...)"
        )
    document = {
        "name": spec.name,
        "arch": spec.arch,
        "kwargs": dict(spec.kwargs),
        "input_shape": list(spec.input_shape),
        "options": dict(spec.options),
    }
    _to_json_bytes(document, f"model {spec.name!r}: its kwargs or options")
    return document


def _collect_tensors(
    workload: Workload, models: Mapping[str, nn.Module]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, str]]]:
    """Each distinct tensor once, named by its first occurrence, and every model's key map.

    Tied tensors are recognised by :func:`~searchmerge.storage.identity.tensor_identity`
    (the same view of the same storage). Tensors that merely overlap are saved as separate copies:
    correct values, but not tied after loading.
    """
    unique: dict[str, torch.Tensor] = {}
    first_key: dict[tuple[object, ...], str] = {}
    tensor_map: dict[str, dict[str, str]] = {}
    for name in workload.names:
        keys: dict[str, str] = {}
        for state_key, tensor in models[name].state_dict(keep_vars=True).items():
            if not isinstance(tensor, torch.Tensor):
                raise SearchmergeError(
                    f"model {name!r}: state_dict entry {state_key!r} is a {type(tensor).__name__}, not a tensor;"
                    " deployments hold only tensors"
                )
            identity = tensor_identity(tensor)
            file_key = first_key.get(identity) if identity is not None else None
            if file_key is None:
                file_key = f"{name}/{state_key}"
                unique[file_key] = tensor
                if identity is not None:
                    first_key[identity] = file_key
            keys[state_key] = file_key
        tensor_map[name] = keys
    return unique, tensor_map


def _serialize(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of contiguous CPU copies (safetensors refuses tensors sharing memory)."""
    copies = {
        key: tensor.detach().to(device="cpu", memory_format=torch.contiguous_format, copy=True)
        for key, tensor in tensors.items()
    }
    try:
        return safetensors.torch.save(copies, metadata={"format": "pt"})
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SearchmergeError(f"cannot save the models' tensors as safetensors: {exc}") from exc


def _to_json_bytes(document: Any, what: str) -> bytes:
    try:
        return json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise SearchmergeError(f"{what} cannot be written as JSON: {exc}") from None


# --- load -------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, after checking that it is one this version can read."""
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SearchmergeError(f"{str(path)!r} does not exist: not a searchmerge deployment directory") from None
    except (OSError, ValueError) as exc:
        raise SearchmergeError(f"cannot read deployment manifest {str(path)!r}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SearchmergeError(f"{str(path)!r} is not a searchmerge deployment manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise SearchmergeError(
            f"deployment manifest {str(path)!r} has format version {manifest.get('version')!r};"
            f" this searchmerge reads version {FORMAT_VERSION}"
        )
    missing = [key for key in ("workload", "plan", "weights", "tensors", "metadata") if key not in manifest]
    if missing:
        raise SearchmergeError(f"deployment manifest {str(path)!r} lacks {missing}")
    return manifest


def _read_weights(path: Path, expected: Mapping[str, Any], device: str | torch.device) -> dict[str, torch.Tensor]:
    """The weights file's tensors, parsed only after its size and SHA-256 match the manifest."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SearchmergeError(f"cannot read deployment weights {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) != expected.get("size"):
        raise SearchmergeError(
            f"deployment weights {str(path)!r} are corrupt: {len(data)} bytes, {expected.get('size')} expected"
        )
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise SearchmergeError(
            f"deployment weights {str(path)!r} are corrupt: their SHA-256 does not match the manifest"
        )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure means an unusable file
        raise SearchmergeError(f"deployment weights {str(path)!r} are not a valid safetensors file: {exc}") from None
    return {key: _own_storage(tensor).to(device) for key, tensor in tensors.items()}


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor with a storage of its own, so memory accounting sees only its bytes."""
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def _workload_from_json(document: Mapping[str, Any]) -> Workload:
    """The workload, with specs that build the architectures only (weights come from the file)."""
    specs = tuple(
        ModelSpec(
            name=entry["name"],
            arch=entry["arch"],
            kwargs=entry.get("kwargs", {}),
            input_shape=tuple(entry["input_shape"]),
            options=entry.get("options", {}),
        )
        for entry in document["models"]
    )
    return Workload(models=specs, name=document.get("name", "workload"))


def _settings_from_json(path: Path, document: Mapping[str, Any]) -> StudySettings:
    """The study's settings a manifest keeps, read by the study file's schema (an older manifest's
    copy of the file's sections, ``storage:`` included, reads the same way)."""
    try:
        return StudySettings.from_document(document.get("settings") or {})
    except SearchmergeError as exc:
        raise SearchmergeError(f"deployment manifest {str(path)!r}: its settings: {exc}") from None


def _fill_model(
    name: str,
    model: nn.Module,
    keys: Mapping[str, str],
    tensors: Mapping[str, torch.Tensor],
    shared: dict[tuple[str, bool], torch.Tensor],
) -> None:
    """Put the saved tensors into a rebuilt model, reusing one object per file key.

    ``shared`` holds the object already placed for each (file key, is parameter),
    so slots of different models that were one tensor at export time become one
    object again, and a parameter and a buffer tied at export share one storage.
    """
    state_keys = set(model.state_dict(keep_vars=True))
    if state_keys != set(keys):
        missing, unexpected = sorted(state_keys - set(keys)), sorted(set(keys) - state_keys)
        raise SearchmergeError(
            f"model {name!r}: the rebuilt architecture does not fit the deployment"
            f" (not saved: {missing[:5]}, saved but absent: {unexpected[:5]})"
        )
    for state_key, file_key in keys.items():
        module_name, _, tensor_name = state_key.rpartition(".")
        module = model.get_submodule(module_name)
        current = _slot(module, tensor_name)
        if file_key not in tensors:
            raise SearchmergeError(f"model {name!r}: tensor {file_key!r} is missing from the deployment weights")
        value = tensors[file_key]
        if value.shape != current.shape:
            raise SearchmergeError(
                f"model {name!r}: {state_key} has shape {tuple(current.shape)} but the deployment saved"
                f" {tuple(value.shape)}"
            )
        is_parameter = tensor_name in module._parameters
        obj = shared.get((file_key, is_parameter))
        if obj is None:
            obj = nn.Parameter(value, requires_grad=current.requires_grad) if is_parameter else value
            shared[(file_key, is_parameter)] = obj
        if is_parameter:
            module._parameters[tensor_name] = obj  # type: ignore[assignment]
        else:
            module._buffers[tensor_name] = obj


def _slot(module: nn.Module, tensor_name: str) -> torch.Tensor:
    """The parameter or buffer a state_dict key names (extra state is not supported)."""
    current = module._parameters.get(tensor_name)
    if current is None:
        current = module._buffers.get(tensor_name)
    if current is None:
        raise SearchmergeError(
            f"{type(module).__name__}.{tensor_name} is neither a parameter nor a buffer;"
            " deployments hold only tensors"
        )
    return current
