"""Drift: what the cameras see changes after deployment. Scenarios and drifted data.

A deployed merge was found feasible on the data the originals were trained on. When a
camera's picture changes (night, rain, a camera knocked to a new angle) the merged models
may fall below their targets while the originals would not, or vice versa. This module
makes that change reproducible and measurable:

* a **drift scenario** gives some models data of their own (``models: {gate: {data:
  {format: imagefolder, root: data/gate-night}}}``: footage of the changed scene), or
  changes the cameras of a source that renders its images through one (the digits demo).
  Camera offsets add to the camera's value (``rotation_deg``, ``rotation_jitter_deg``,
  ``shift_px``, ``blur_sigma``, ``noise_std``, ``brightness``) and ``contrast`` multiplies
  it, so "night" means "this camera, darker and flatter" whatever the camera was;
* **drifted data** is the scenario's data source, or the same real images through the
  changed cameras with splits of their own (seeded by the study seed and the scenario
  name), so it is new footage rather than the training images re-coloured;
* a **drifted workload** is a prepared workload with the drifted data and the original
  baselines, which a search (:mod:`searchmerge.search.merge_search`) is given to search on it.

Baselines stay the originals' validation metric on the original data: that is the
accuracy the application was promised, and a drift is only handled when the merged models
deliver it again. The drift check of a deployed plan is :mod:`searchmerge.search.drift_check`,
the incremental re-search :mod:`searchmerge.search.research`.

Example:
    >>> night = BUILTIN_SCENARIOS["night"]
    >>> night.changes_for("gate")
    ({'brightness': -0.2, 'contrast': 0.6, 'noise_std': 0.08},)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from searchmerge.config.data_request import DataRequest
from searchmerge.config.settings import StudySettings
from searchmerge.config.study import StudyFile
from searchmerge.config.workload import Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources import SourceContext, TaskData
from searchmerge.training.prepare import (
    PreparedWorkload,
    data_fingerprint,
    source_context,
    workload_data,
)

__all__ = [
    "BUILTIN_SCENARIOS",
    "DriftScenario",
    "drift_seed",
    "drifted_data",
    "drifted_workload",
    "get_scenario",
    "scenario_data",
    "scenarios",
    "workload_scenarios",
]

@dataclass(frozen=True)
class DriftScenario:
    """What changes for the models of a workload: their cameras, or their data.

    Attributes:
        name: The scenario's name (``--data NAME``).
        changes: Camera changes applied to every model (``{"brightness": -0.2}``).
        models: Per model, extra camera changes (applied after ``changes``) or ``{"data":
            {...}}``, another data source for it; with ``only_listed`` the other models keep
            their data.
        only_listed: Whether only the models in ``models`` drift.
        description: One line for people.
    """

    name: str
    changes: Mapping[str, float] = field(default_factory=dict)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    only_listed: bool = False
    description: str = ""

    def changes_for(self, model: str) -> tuple[Mapping[str, float], ...]:
        """The camera changes ``model`` sees, in the order they apply (none when its data is replaced)."""
        own = self.models.get(model, {})
        if (self.only_listed and model not in self.models) or "data" in own:
            return ()
        return tuple(changes for changes in (self.changes, own) if changes)

    def request_for(self, request: DataRequest) -> DataRequest:
        """A model's data request as it is in this scenario."""
        own = self.models.get(request.model, {})
        if "data" in own:
            return request.replaced(own["data"])
        for changes in self.changes_for(request.model):
            request = request.drifted(changes)
        return request

    def check_models(self, names: list[str]) -> None:
        """Refuse per-model changes for models the workload does not have."""
        unknown = sorted(set(self.models) - set(names))
        if unknown:
            raise SearchmergeError(
                f"drift scenario {self.name!r} names model(s) {', '.join(unknown)} that the workload does not have"
                f" (models: {', '.join(names)})"
            )


#: Scenarios every workload has; a study file's ``drift:`` section may add or replace them.
BUILTIN_SCENARIOS: dict[str, DriftScenario] = {
    "night": DriftScenario(
        "night",
        {"brightness": -0.2, "contrast": 0.6, "noise_std": 0.08},
        description="every camera at night: darker, flatter, noisier",
    ),
    "moved": DriftScenario(
        "moved",
        {"rotation_deg": 18.0, "shift_px": 2.0},
        description="every camera knocked to a new angle: turned 18 degrees, 2 px more shift",
    ),
    "rain": DriftScenario(
        "rain",
        {"blur_sigma": 1.0, "noise_std": 0.05, "contrast": 0.85},
        description="rain on every lens: blurred, noisier, a little flatter",
    ),
}


def scenarios(study: StudyFile) -> dict[str, DriftScenario]:
    """The built-in scenarios and those of the study file's ``drift:`` section.

    A study file's scenario is either changes for every camera, or has a ``models``
    mapping of per-model changes or data sources (plus optional common ``changes``; with
    only ``models`` given, the other models do not drift)::

        drift:
          dusk: {brightness: -0.1, contrast: 0.8}
          gate-moved:
            models: {gate-digit: {rotation_deg: 20, shift_px: 2}}
          gate-night:
            models: {gate-people: {data: {format: imagefolder, root: data/gate-night}}}
    """
    return workload_scenarios(study.workload, where=f"study file {str(study.path)!r}")


def workload_scenarios(workload: Workload, *, where: str = "the workload") -> dict[str, DriftScenario]:
    """The built-in scenarios and those of a workload's ``drift:`` section (see :func:`scenarios`).

    A deployment's manifest keeps the workload's settings, so an edge without the study
    file finds the same scenarios.
    """
    found = dict(BUILTIN_SCENARIOS)
    section = workload.settings.get("drift") or {}
    if not isinstance(section, Mapping):
        raise SearchmergeError(f"{where}: 'drift' must map scenario names to camera changes")
    for name, entry in section.items():
        found[str(name)] = _scenario_from_entry(str(name), entry)
    return found


def _scenario_from_entry(name: str, entry: Any) -> DriftScenario:
    where = f"drift scenario {name!r}"
    if not isinstance(entry, Mapping):
        raise SearchmergeError(f"{where} must be a mapping of camera changes, got {entry!r}")
    description = str(entry.get("description", ""))
    if "models" not in entry and "changes" not in entry:
        changes = {k: v for k, v in entry.items() if k != "description"}
        return DriftScenario(name, _checked_changes(where, changes), description=description)
    unknown = sorted(set(entry) - {"models", "changes", "description"})
    if unknown:
        raise SearchmergeError(f"{where}: unknown key(s) {unknown}; use 'changes' and 'models' (or only camera fields)")
    models = entry.get("models") or {}
    if not isinstance(models, Mapping):
        raise SearchmergeError(f"{where}: 'models' must map model names to camera changes")
    return DriftScenario(
        name,
        _checked_changes(where, entry.get("changes") or {}),
        {str(m): _model_entry(f"{where}, model {m!r}", c) for m, c in models.items()},
        only_listed="changes" not in entry,
        description=description,
    )


def _model_entry(where: str, entry: Any) -> dict[str, Any]:
    """One model's part of a scenario: camera changes, or ``{data: {...}}`` (checked when the data is read)."""
    if isinstance(entry, Mapping) and "data" in entry:
        if set(entry) != {"data"} or not isinstance(entry["data"], Mapping):
            raise SearchmergeError(f"{where}: give either camera changes or only 'data: {{format: ..., ...}}'")
        return {"data": dict(entry["data"])}
    return _checked_changes(where, entry)


def _checked_changes(where: str, changes: Any) -> dict[str, float]:
    """Numbers by name; which names a camera has, its data source checks when it applies them."""
    if not isinstance(changes, Mapping):
        raise SearchmergeError(f"{where}: camera changes must be a mapping, got {changes!r}")
    for key, value in changes.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SearchmergeError(f"{where}: drift change {key!r} must be a number, got {value!r}")
    return {str(k): float(v) for k, v in changes.items()}


def get_scenario(study: StudyFile, name: str) -> DriftScenario:
    """The scenario called ``name``, or an error listing the known ones."""
    known = scenarios(study)
    if name not in known:
        raise SearchmergeError(f"unknown drift scenario {name!r}; known scenarios: {', '.join(sorted(known))}")
    return known[name]


def drift_seed(seed: int, scenario: str) -> int:
    """The seed of a scenario's data: new splits and camera noise, the same in every process."""
    digest = hashlib.sha256(json.dumps(["drift", seed, scenario]).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def drifted_data(study: StudyFile, scenario: str) -> dict[str, TaskData]:
    """Each model's data in the scenario: its own data source, or seen through its drifted camera."""
    context = source_context(study.settings, study_path=study.path, cache_dir=study.cache_dir)
    return scenario_data(study.workload, study.settings, get_scenario(study, scenario), context=context)


def scenario_data(
    workload: Workload, settings: StudySettings, scenario: DriftScenario | None, *, context: SourceContext | None = None
) -> dict[str, TaskData]:
    """Each model's data in ``scenario`` (``None``: the original data).

    The same footage wherever it is made: an edge's camera stream and the service that
    labels its samples call this with the deployment's workload and settings.

    Args:
        workload: The models and their data.
        settings: The study's settings (seed, data format).
        scenario: The drift scenario, or ``None``.
        context: Where relative data paths start and images are cached (default: the
            working directory, no cache).
    """
    context = context or source_context(settings)
    if scenario is None:
        return workload_data(workload, context)
    scenario.check_models([spec.name for spec in workload.models])
    seed = drift_seed(settings.seed, scenario.name)
    try:
        return workload_data(workload, dataclasses.replace(context, seed=seed), request_of=scenario.request_for)
    except SearchmergeError as exc:
        raise SearchmergeError(f"drift scenario {scenario.name!r}, {exc}") from None


def drifted_workload(study: StudyFile, prepared: PreparedWorkload, scenario: str) -> PreparedWorkload:
    """``prepared`` with the scenario's data; originals and baselines unchanged.

    The baselines stay those measured on the original data (a ratio says how much of its
    original accuracy a model keeps on the new footage), so an unchanged original is no
    longer assumed to meet them: the evaluator scores it.

    The drifted data must fit every model as the original data did (same kind, same
    classes), or merged models could not be scored on it.
    """
    data = drifted_data(study, scenario)
    for name, original in prepared.data.items():
        new = data[name]
        if new.kind != original.kind or (new.kind == "classification" and new.num_classes != original.num_classes):
            raise SearchmergeError(
                f"drift scenario {scenario!r}: {new.description} for model {name!r} is {new.kind} data with"
                f" {new.num_classes} classes, but the model's data is {original.kind} with {original.num_classes}"
            )
    return dataclasses.replace(prepared, data=data, data_fingerprint=data_fingerprint(data))
