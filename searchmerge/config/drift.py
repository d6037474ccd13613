"""The ``drift:`` section of a study file: named drift scenarios, read and checked once.

A scenario changes the cameras of every model, or of some (``models:``), or gives a model
data of its own (``models: {gate: {data: {format: imagefolder, root: ...}}}``); see
:mod:`searchmerge.search.scenarios` for what a search does with one, and the built-in
scenarios every workload has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from searchmerge.core.errors import SearchmergeError

if TYPE_CHECKING:
    from searchmerge.config.data_request import DataRequest

__all__ = ["DriftScenario", "drift_scenarios"]


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

    def to_document(self) -> dict[str, Any]:
        """The scenario as a study file's ``drift:`` entry writes it (read back by :func:`drift_scenarios`)."""
        entry: dict[str, Any] = {"models": {m: dict(c) for m, c in self.models.items()}}
        if not self.only_listed:
            entry["changes"] = dict(self.changes)
        if self.description:
            entry["description"] = self.description
        return entry


def drift_scenarios(section: Any) -> dict[str, DriftScenario]:
    """The scenarios of a study file's ``drift:`` section, by name (``{}`` without one).

    A scenario is either changes for every camera, or has a ``models`` mapping of per-model
    changes or data sources (plus optional common ``changes``; with only ``models`` given,
    the other models do not drift)::

        drift:
          dusk: {brightness: -0.1, contrast: 0.8}
          gate-moved:
            models: {gate-digit: {rotation_deg: 20, shift_px: 2}}
          gate-night:
            models: {gate-people: {data: {format: imagefolder, root: data/gate-night}}}
    """
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise SearchmergeError("'drift' must map scenario names to camera changes")
    return {str(name): _scenario_from_entry(str(name), entry) for name, entry in section.items()}


def _scenario_from_entry(name: str, entry: Any) -> DriftScenario:
    where = f"drift scenario {name!r}"
    if not isinstance(entry, Mapping):
        raise SearchmergeError(f"{where} must be a mapping of camera changes, got {entry!r}")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise SearchmergeError(f"{where}: description must be text, got {description!r}")
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

