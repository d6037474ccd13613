"""Running merged models on an edge box's GPU: profiles, a swap-aware runtime, a stream simulator.

* :mod:`~searchmerge.runtime.profile`: what a workload costs on a device, per plan
  (measured by :mod:`~searchmerge.runtime.measure`);
* :mod:`~searchmerge.runtime.layout` and :mod:`~searchmerge.runtime.residency`: which
  tensors each model needs, and what is resident under a budget;
* :mod:`~searchmerge.runtime.runtime`: the swap-aware runtime (CUDA, or a simulated device);
* :mod:`~searchmerge.runtime.simulator`: camera streams, batching, frames processed in time;
* :mod:`~searchmerge.runtime.objective`: the memory-aware search's objective.

The plain-Python parts (layout, residency, profile, simulator) are imported here; the
modules that hold tensors (measure, runtime, objective) are imported where used.
"""

from searchmerge.runtime.layout import Block, TensorLayout
from searchmerge.runtime.profile import ModelProfile, PlanProfile, Profile
from searchmerge.runtime.residency import Counters, Residency
from searchmerge.runtime.simulator import SimulationResult, StreamResult, simulate

__all__ = [
    "Block",
    "Counters",
    "ModelProfile",
    "PlanProfile",
    "Profile",
    "Residency",
    "SimulationResult",
    "StreamResult",
    "TensorLayout",
    "simulate",
]
