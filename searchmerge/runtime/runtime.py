"""The swap-aware runtime: a deployment in host memory, run on a device under a memory budget.

Every distinct tensor of the deployment is held once in host memory (pinned on CUDA, so
copies are fast and asynchronous). Running a model copies in the tensors it needs that
are not resident (a tensor it shares with a resident model is already there) and evicts
others, as a :class:`~searchmerge.runtime.residency.Residency` decides, so the device
never holds more than the budget; the model then runs with its resident tensors
(``torch.func.functional_call``: the host modules are never moved). A model that does
not fit even alone runs layer by layer: each layer's tensors are copied in just before it
runs and dropped after, the next layer's copy overlapping the current layer's compute
(a side CUDA stream) when the budget holds two layers.

On a machine without a GPU the same runtime runs on a *simulated device*
(``device="simulated"``): tensors are copied into separate CPU memory under the same
budget and accounting, the models really run (on the CPU), and copy time is accounted
as bytes over the link bandwidth instead of measured. Tests use it; nothing else
differs.

Example:
    >>> runtime = SwapRuntime.from_deployment("deploy/", gpu_memory="2GiB", device="cuda")  # doctest: +SKIP
    >>> runtime.run("vgg16-a", images)  # doctest: +SKIP
    >>> runtime.counters.swaps, runtime.counters.bytes_loaded  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from searchmerge.analysis.memory import example_inputs
from searchmerge.config.deploy import PCIE3_X16_BYTES_PER_S, parse_bytes
from searchmerge.core.errors import SearchmergeError
from searchmerge.runtime.measure import tensor_index
from searchmerge.runtime.profile import PlanProfile, Profile
from searchmerge.runtime.residency import Counters, Residency, StreamPlan
from searchmerge.runtime.simulator import Executor, Step, streamed_seconds

__all__ = ["RuntimeExecutor", "SwapRuntime"]

#: The device name that selects the simulated device.
SIMULATED = "simulated"


class SwapRuntime:
    """Run the models of a deployment on a device that holds at most ``gpu_memory`` bytes.

    Args:
        models: The deployment's models by name (tied tensors tied, as
            :func:`~searchmerge.training.deployment.load_deployment` gives them), in host memory.
        gpu_memory: The budget: bytes, or a size such as ``"4GiB"``.
        device: ``cuda`` (or ``cuda:N``), or ``simulated``.
        policy: Eviction policy, ``lru`` or ``lookahead`` (give ``upcoming`` to :meth:`run`).
        swap: ``model`` or ``unit`` (see :class:`~searchmerge.runtime.residency.Residency`).
        profile: Run memory (activations) per model and batch size, reserved in the budget
            during a run; without it, only weights are budgeted.
        link_bytes_per_s: Copy bandwidth the simulated device accounts with.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        *,
        gpu_memory: int | str,
        device: str = "cuda",
        policy: str = "lru",
        swap: str = "model",
        profile: Profile | None = None,
        link_bytes_per_s: float = PCIE3_X16_BYTES_PER_S,
    ) -> None:
        self.simulated = device == SIMULATED
        self.device = torch.device("cpu" if self.simulated else device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SearchmergeError("no CUDA device is available; use device='simulated' to run on the CPU")
        self.models = {name: model.eval() for name, model in models.items()}
        self.layout, ids = tensor_index(self.models)
        self.residency = Residency(self.layout, parse_bytes(gpu_memory, "gpu-memory"), policy=policy, swap=swap)
        self.profile = profile
        self.link_bytes_per_s = link_bytes_per_s
        #: Copies made per tensor id (a shared tensor is copied once while it stays resident).
        self.copies: Counter[int] = Counter()
        #: Seconds spent in the last run's copies (not hidden behind compute) and compute.
        self.last_load_s = 0.0
        self.last_compute_s = 0.0
        #: The most device bytes held at once (weights, streamed layers and reserved run memory).
        self.peak_bytes = 0
        self._host = self._host_tensors(ids)
        self._resident: dict[int, torch.Tensor] = {}
        self._bindings = {name: self._model_bindings(name, ids[name]) for name in self.models}

    @classmethod
    def from_deployment(cls, directory: str | os.PathLike[str], **options: Any) -> SwapRuntime:
        """A runtime holding the deployment written by :func:`~searchmerge.training.deployment.export_deployment`."""
        from searchmerge.training.deployment import load_deployment

        return cls(load_deployment(directory, device="cpu").models, **options)

    @property
    def counters(self) -> Counters:
        return self.residency.counters

    @property
    def budget(self) -> int:
        return self.residency.budget

    def resident_models(self) -> frozenset[str]:
        return self.residency.resident_models()

    def resident_bytes(self) -> int:
        """Bytes of the tensors resident on the device now (what the budget covers between runs)."""
        return sum(t.numel() * t.element_size() for t in self._resident.values())

    def host_tensor(self, tensor: int) -> torch.Tensor:
        """The host copy of tensor ``tensor`` (an index into :attr:`layout`)."""
        return self._host[tensor]

    def resident_tensor(self, tensor: int) -> torch.Tensor | None:
        """The device copy of tensor ``tensor``, or ``None`` when it is not resident."""
        return self._resident.get(tensor)

    def preload(self, reuse: Mapping[int, torch.Tensor] | None = None) -> int:
        """Make the models resident before they run, in workload order, as far as the budget holds them.

        A version switch warms a new runtime up this way while the old one still serves.
        The device tensors in ``reuse`` (by this runtime's tensor index: copies of equal
        content that the old runtime holds) are adopted instead of copied, so only the
        tensors that changed cross the link. A model that would evict a preloaded one is
        left to load when it first runs.

        Returns:
            The bytes copied to the device.
        """
        reuse = reuse or {}
        copied = 0
        for name in self.models:
            if self.residency.used + self.residency.missing_bytes(name) > self.budget:
                continue
            change = self.residency.acquire(name)
            ids = [t for block in change.loaded for t in self.layout.blocks[block].tensors]
            adopted = {t: reuse[t] for t in ids if t in reuse}
            self._resident.update(adopted)
            copies, seconds = self._copy([t for t in ids if t not in adopted], None)
            self._resident.update(copies)
            self.counters.load_seconds += seconds()
            adopted_bytes = sum(self.layout.sizes[t] for t in adopted)
            self.counters.bytes_loaded -= adopted_bytes  # counted by acquire, but never copied
            self.counters.tensors_loaded -= len(adopted)
            copied += change.bytes_loaded - adopted_bytes
        self._note_peak(0)
        return copied

    # --------------------------------------------------------------------- running
    def run(self, name: str, inputs: Any, *, upcoming: Sequence[str] = ()) -> Any:
        """Run model ``name`` on ``inputs`` (moved to the device), swapping tensors as needed.

        Args:
            name: The model.
            inputs: What its ``forward`` takes: a batched tensor, or a list of images.
            upcoming: The models the schedule runs next (for the ``lookahead`` policy).

        Returns:
            The model's outputs, on the device.
        """
        if name not in self.models:
            raise SearchmergeError(f"the deployment has no model named {name!r}; it has {list(self.models)}")
        inputs = _to_device(inputs, self.device)
        extra = self._run_memory(name, inputs)
        if self.residency.fits(name, extra):
            change = self.residency.acquire(name, extra=extra, upcoming=upcoming)
            self._drop(change.evicted)
            self.last_load_s = self._copy_in(change.loaded)
            self._note_peak(extra)
            tensors = {key: self._resident[t] for key, t, _, _ in self._bindings[name]}
            start = self._now()
            with torch.inference_mode():
                outputs = torch.func.functional_call(self.models[name], tensors, (inputs,))
            self.last_compute_s = self._now() - start
            return outputs
        plan = self.residency.stream(name, extra=extra, upcoming=upcoming)
        self._drop(plan.evicted)
        return self._stream(name, inputs, plan, extra)

    def _run_memory(self, name: str, inputs: Any) -> int:
        """Run memory to reserve: the profile's activations at this batch size (0 without a profile)."""
        if self.profile is None:
            return 0
        batch = len(inputs)
        measured = self.profile.model(name).activation_bytes
        fitting = [b for b in sorted(measured) if b >= batch]
        return measured[fitting[0]] if fitting else max(measured.values())

    # ------------------------------------------------------------------- streaming
    def _stream(self, name: str, inputs: Any, plan: StreamPlan, extra: int) -> Any:
        """Run ``name`` layer by layer: copy each layer in before it runs, drop it after."""
        model = self.models[name]
        stream = _LayerStream(self, name, plan, extra)
        handles = stream.attach(model)
        start = self._now()
        try:
            with torch.inference_mode():
                outputs = model(inputs)
        except RuntimeError as exc:
            raise SearchmergeError(
                f"model {name!r} cannot run layer by layer: {str(exc).splitlines()[0]}"
                " (are a layer's weights used outside its own forward?)"
            ) from None
        finally:
            for handle in handles:
                handle.remove()
            for _, tensor, module, attr in self._bindings[name]:
                _bind(module, attr, self._host[tensor])
        elapsed = self._now() - start
        self.counters.load_seconds += stream.copy_seconds()
        self.last_load_s, self.last_compute_s = stream.load_and_compute_seconds(elapsed)
        return outputs

    # -------------------------------------------------------------------- copying
    def _copy_in(self, blocks: Sequence[int]) -> float:
        """Copy the tensors of ``blocks`` to the device; the seconds it took (or is accounted)."""
        ids = [t for block in blocks for t in self.layout.blocks[block].tensors]
        copies, seconds = self._copy(ids, None)
        self._resident.update(copies)
        elapsed = seconds()
        self.counters.load_seconds += elapsed
        return elapsed

    def _copy(self, ids: Sequence[int], stream: Any) -> tuple[dict[int, torch.Tensor], Callable[[], float]]:
        """Device copies of the host tensors ``ids`` and how to read the copy time.

        On CUDA the copy is timed with events (read after it finished; a copy on
        ``stream``, a side stream, runs asynchronously); on the simulated device it takes
        the bytes over the link bandwidth.
        """
        self.copies.update(ids)
        nbytes = sum(self.layout.sizes[t] for t in ids)
        if self.simulated or not ids:
            return {t: self._host[t].clone() for t in ids}, lambda: self._account_seconds(nbytes)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream or torch.cuda.current_stream(self.device)):
            begin.record()
            copies = {t: self._host[t].to(self.device, non_blocking=True) for t in ids}
            end.record()

        def seconds() -> float:
            end.synchronize()
            return begin.elapsed_time(end) / 1000.0

        return copies, seconds

    def _drop(self, blocks: Sequence[int]) -> None:
        for block in blocks:
            for tensor in self.layout.blocks[block].tensors:
                self._resident.pop(tensor, None)

    def _account_seconds(self, nbytes: float) -> float:
        return nbytes / self.link_bytes_per_s

    def _note_peak(self, transient: int) -> None:
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes() + transient)

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # ----------------------------------------------------------------------- setup
    def _host_tensors(self, ids: Mapping[str, Mapping[str, int]]) -> list[torch.Tensor]:
        """One host tensor per distinct tensor (pinned on CUDA), which the modules keep holding."""
        host: dict[int, torch.Tensor] = {}
        for name, model in self.models.items():
            for key, tensor in model.state_dict(keep_vars=True).items():
                index = ids[name][key]
                if index in host:
                    continue
                tensor.data = tensor.data.to("cpu")
                if self.device.type == "cuda" and tensor.numel():
                    tensor.data = tensor.data.pin_memory()
                host[index] = tensor.detach()
            for module in model.modules():  # buffers outside the state dict are not in the deployment
                for attr in getattr(module, "_non_persistent_buffers_set", ()):
                    if module._buffers.get(attr) is not None:
                        module._buffers[attr] = module._buffers[attr].to(self.device)
        return [host[i] for i in range(len(self.layout.keys))]

    def _model_bindings(self, name: str, ids: Mapping[str, int]) -> list[tuple[str, int, nn.Module, str]]:
        """Per state key of ``name``: its tensor id, the module that owns it and the attribute."""
        model = self.models[name]
        return [(key, index, model.get_submodule(key.rpartition(".")[0]), key.rpartition(".")[2])
                for key, index in ids.items()]


class _LayerStream:
    """One layer-by-layer run of a model: the state its forward hooks share.

    Before a layer runs, its tensors that are not resident are copied in (unless prefetched)
    and bound into its module, and the next layer's copy starts on a side stream when the
    plan prefetches and the budget holds it; after the layer, its module gets its host
    tensors back and the copies are dropped.
    """

    def __init__(self, runtime: SwapRuntime, name: str, plan: StreamPlan, extra: int) -> None:
        self.runtime, self.plan, self.extra = runtime, plan, extra
        self.layers = runtime.layout.layers[name]
        self.index_of = {layer: i for i, (layer, _) in enumerate(self.layers)}
        #: Per layer (module name): the tensor ids it owns, with their module and attribute.
        self.owned: dict[str, list[tuple[int, nn.Module, str]]] = {}
        for key, tensor, module, attr in runtime._bindings[name]:
            self.owned.setdefault(key.rpartition(".")[0], []).append((tensor, module, attr))
        self.side = torch.cuda.Stream(runtime.device) if runtime.device.type == "cuda" else None
        #: Per layer index: its device copies, and whether they were made on the side stream.
        self.fetched: dict[int, tuple[dict[int, torch.Tensor], bool]] = {}
        #: Per copy: whether it was a prefetch, and how to read its seconds.
        self.timers: list[tuple[bool, Callable[[], float]]] = []
        self.compute = [0.0] * len(self.layers)  # simulated device: measured seconds per layer
        self.live = 0  # bytes of streamed copies on the device now
        self.started = 0.0

    def attach(self, model: nn.Module) -> list[Any]:
        """Hook every layer of ``model`` that owns tensors; the handles to remove after the run."""
        handles = []
        for layer in self.owned:
            module = model.get_submodule(layer)
            handles.append(module.register_forward_pre_hook(functools.partial(self.before, layer)))
            handles.append(module.register_forward_hook(functools.partial(self.after, layer)))
        return handles

    def fetch(self, i: int, *, ahead: bool) -> None:
        """Copy layer ``i``'s missing tensors in; a prefetch (``ahead``) is skipped without room."""
        runtime = self.runtime
        ids = [t for t in self.layers[i][1] if t not in runtime._resident]
        size = sum(runtime.layout.sizes[t] for t in ids)
        if ahead and runtime.residency.used + self.live + size + self.extra > runtime.budget:
            return  # no room to prefetch: the layer is copied when it runs
        copies, seconds = runtime._copy(ids, self.side if ahead else None)
        self.timers.append((ahead, seconds))
        self.live += size
        runtime._note_peak(self.extra + self.live)
        self.fetched[i] = (copies, ahead and self.side is not None)

    def before(self, layer: str, _module: nn.Module, _args: Any) -> None:
        runtime = self.runtime
        i = self.index_of[layer]
        if i not in self.fetched:
            self.fetch(i, ahead=False)
        copies, on_side = self.fetched[i]
        if on_side:
            torch.cuda.current_stream(runtime.device).wait_stream(self.side)
        for tensor, module, attr in self.owned[layer]:
            _bind(module, attr, runtime._resident.get(tensor, copies.get(tensor)))
        if self.plan.prefetch and i + 1 < len(self.layers) and i + 1 not in self.fetched:
            self.fetch(i + 1, ahead=True)
        if runtime.simulated:
            self.started = time.perf_counter()

    def after(self, layer: str, _module: nn.Module, _args: Any, _output: Any) -> None:
        runtime = self.runtime
        i = self.index_of[layer]
        if runtime.simulated:
            self.compute[i] += time.perf_counter() - self.started
        for tensor, module, attr in self.owned[layer]:
            _bind(module, attr, runtime._host[tensor])
        copies, on_side = self.fetched.pop(i, ({}, False))
        for copy in copies.values():
            if on_side:  # made on the side stream, used on this one: not to be reused before
                copy.record_stream(torch.cuda.current_stream(runtime.device))
            self.live -= copy.numel() * copy.element_size()

    def copy_seconds(self) -> float:
        """Seconds all the run's copies took (or are accounted)."""
        return sum(seconds() for _, seconds in self.timers)

    def load_and_compute_seconds(self, elapsed: float) -> tuple[float, float]:
        """Seconds of copying not hidden behind compute, and of compute, of a run that took ``elapsed``."""
        if self.runtime.simulated:  # copies are accounted, not done at link speed: overlap them on paper
            total_compute = sum(self.compute) or elapsed
            shares = [c / total_compute for c in self.compute] if sum(self.compute) else []
            total = streamed_seconds(self.plan.layer_bytes, shares, total_compute, self.runtime._account_seconds,
                                     self.plan.prefetch)
            return total - total_compute, total_compute
        # measured: the copies that stalled the run are what was not hidden
        stalled = sum(seconds() for ahead, seconds in self.timers if not ahead)
        return stalled, max(elapsed - stalled, 0.0)


def _bind(module: nn.Module, attr: str, tensor: torch.Tensor) -> None:
    """Make ``tensor`` the ``attr`` parameter or buffer of ``module`` for the next forward.

    ``setattr`` refuses a plain tensor in a parameter's place, so the tensor goes into the
    module's parameter (or buffer) dict, as :func:`torch.func.functional_call` does for all
    tensors at once; a streamed run binds one layer at a time and restores the host tensors.
    """
    slots = module._parameters if attr in module._parameters else module._buffers
    slots[attr] = tensor


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_to_device(item, device) for item in inputs)
    return inputs


class RuntimeExecutor(Executor):
    """The simulator's scheduler driving the real runtime: every batch really runs.

    The scheduler's clock advances by the runtime's measured copy and compute time, so its
    frames processed and dropped are the runtime's, for comparison with the prediction.
    """

    def __init__(self, runtime: SwapRuntime, profile: Profile, plan: PlanProfile, input_shapes: Mapping[str, Sequence[int]]) -> None:
        if plan.layout.sizes != runtime.layout.sizes or plan.layout.layers != runtime.layout.layers:
            raise SearchmergeError(f"the profile's plan {plan.name!r} does not describe the runtime's deployment")
        super().__init__(profile, plan, runtime.residency)
        self.runtime = runtime
        self.input_shapes = input_shapes
        self._inputs: dict[tuple[str, int], Any] = {}

    def run(self, model: str, batch: int, upcoming: Sequence[str]) -> Step:
        key = (model, batch)
        if key not in self._inputs:
            self._inputs[key] = example_inputs(self.runtime.models[model], self.input_shapes[model], batch, self.runtime.device)
        self.runtime.run(model, self._inputs[key], upcoming=upcoming)
        return Step(load_s=self.runtime.last_load_s, compute_s=self.runtime.last_compute_s)
