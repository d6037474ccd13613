"""The digits camera generator as footage: each model's frames per drift scenario, and their labels.

The generator is deterministic, so a frame is named by its provenance (the model's
stream, the drift scenario its camera was in, the split and the index) and the same
provenance gives the same frame and label in every process. The edge's camera streams
show these frames; in the merging service the generator is the teacher of a digits study
(:class:`~searchmerge.service.cloud.labelling.ProvenanceTeacher`), which labels the samples
they send from the same footage, with the generator's own labels.
"""

from __future__ import annotations

import threading
from typing import Any

from searchmerge.config.settings import StudySettings
from searchmerge.config.workload import Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.search.scenarios import known_scenarios, scenario_data
from searchmerge.service.protocol import Sample

__all__ = ["Footage"]


class Footage:
    """The digits camera generator of a deployment: each model's frames, per drift scenario.

    Made once per scenario and kept, since every sample of a scenario is labelled from
    the same data. The edge's camera streams and the service's labels come from here.
    """

    def __init__(self, workload: Workload, settings: StudySettings) -> None:
        self.workload = workload
        self.settings = settings
        self.scenarios = known_scenarios(settings)
        self._data: dict[str | None, dict[str, Any]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def data(self, scenario: str | None) -> dict[str, Any]:
        """Each model's data seen through its camera in ``scenario`` (``None``: undrifted)."""
        if scenario is not None and scenario not in self.scenarios:
            raise SearchmergeError(
                f"unknown drift scenario {scenario!r}; known scenarios: {', '.join(sorted(self.scenarios))}"
            )
        with self._lock:
            if scenario not in self._data:
                chosen = None if scenario is None else self.scenarios[scenario]
                self._data[scenario] = scenario_data(self.workload, self.settings, chosen)
            return self._data[scenario]

    def label(self, sample: Sample) -> int:
        """The generator's label of the frame ``sample`` names.

        Raises:
            SearchmergeError: If the model, the scenario or the frame is not the generator's.
        """
        source = sample.source
        data = self.data(source.scenario)
        if sample.model not in data:
            raise SearchmergeError(f"the deployment has no model {sample.model!r}")
        split = getattr(data[sample.model], source.split)
        if source.index >= len(split):
            raise SearchmergeError(
                f"the {source.split} footage of model {sample.model!r} has {len(split)} frames, not {source.index + 1}"
            )
        _, label = split[source.index]
        return int(label)

    def input_shape(self, model: str) -> tuple[int, ...]:
        """The shape of the frames of ``model``'s footage (channels, height, width).

        Asked for every sample; a frame is rendered (camera and all) to learn it, so it is kept.
        """
        if model not in self._shapes:
            self._shapes[model] = tuple(self.data(None)[model].test[0][0].shape)
        return self._shapes[model]
