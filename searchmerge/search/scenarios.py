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
from pathlib import Path

from searchmerge.config.data_request import model_request
from searchmerge.config.drift import DriftScenario
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
    "SAMPLES_PREFIX",
    "DriftScenario",
    "drift_seed",
    "drifted_data",
    "drifted_workload",
    "get_scenario",
    "known_scenarios",
    "samples_scenario",
    "scenario_data",
    "scenarios",
]

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

    The section's forms (changes for every camera, or per-model changes and data sources) are
    described where it is read: :func:`searchmerge.config.drift.drift_scenarios`.
    """
    return known_scenarios(study.settings)


def known_scenarios(settings: StudySettings) -> dict[str, DriftScenario]:
    """The built-in scenarios and the study's own, which add to or replace them (see :func:`scenarios`).

    A deployment's manifest keeps the study's settings, so an edge without the study
    file finds the same scenarios.
    """
    return {**BUILTIN_SCENARIOS, **settings.drift}


#: ``--data samples:DEPLOYMENT``: the frames the edges of a deployment sent, as the service labelled them.
SAMPLES_PREFIX = "samples:"


def samples_scenario(study: StudyFile, name: str) -> DriftScenario:
    """``samples:DEPLOYMENT``: every model on the samples its edges sent (``format: samples``, in the
    study's storage), with a replay share of its original training data; ``samples:FOLDER``: on a
    folder of labelled frames (``FOLDER/MODEL/LABEL/NAME.png``) instead.

    This is drift as the cameras saw it, with no scenario named: the merging service re-searches
    on it when the samples show a model missing its target.
    """
    origin = name[len(SAMPLES_PREFIX):]
    if not origin:
        raise SearchmergeError(f"--data {name!r}: name the deployment, samples:DEPLOYMENT (the study's workload name,"
                               f" {study.workload.name!r}), or a folder of labelled frames, samples:FOLDER")
    folder = Path(origin).expanduser()
    where = ({"root": str(folder.absolute())} if folder.is_dir()
             else {"storage": study.storage, "deployment": origin})
    models = {}
    for spec in study.workload.models:
        request = model_request(spec)
        original = {"format": request.format, **request.options}
        models[spec.name] = {"data": {"format": "samples", **where, "model": spec.name, "original": original,
                                      "seed": study.settings.seed}}
    what = f"folder {origin!r}" if folder.is_dir() else f"the edges of {origin!r}"
    return DriftScenario(name, models=models, only_listed=True,
                         description=f"the labelled frames of {what}")


def get_scenario(study: StudyFile, name: str) -> DriftScenario:
    """The scenario called ``name`` (or ``samples:DEPLOYMENT``), or an error listing the known ones."""
    if name.startswith(SAMPLES_PREFIX):
        return samples_scenario(study, name)
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
