"""The retraining evaluator: does a sharing plan keep every model accurate?

The merged models are retrained jointly (each model's loss on its own data,
summed, so shared weights get every model's gradient) on a stratified subsample
of each model's training data, and scored on their validation splits at regular
checks. It exits early on success (every model at ``target`` x baseline at one
check) and on hopeless failure (a model's learning curve, extrapolated
optimistically over the remaining budget, cannot reach its target; or the caller,
e.g. an Optuna pruner, says stop). Validation accuracy on small splits is noisy,
so a pass by a hair is confirmed on the test split before it counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from searchmerge.analysis import AnalysisResult, analyze
from searchmerge.analysis.memory import model_tensors, unique_tensor_bytes
from searchmerge.data import Split, stratified_subsample
from searchmerge.merge import merge_models
from searchmerge.prepare import PreparedWorkload
from searchmerge.settings import EvaluatorSettings, check_target
from searchmerge.space import SharingPlan
from searchmerge.train import accuracy, batches, default_device, recalibrate_batch_norm, steps_per_epoch

#: Called after every check with (check index, worst accuracy ratio); returns True to stop (prune).
ReportFn = Callable[[int, float], bool]


@dataclass(frozen=True)
class ModelOutcome:
    """One merged model's accuracy at the deciding check."""

    name: str
    accuracy: float
    baseline: float
    ratio: float
    meets_target: bool
    test_ratio: float | None = None


@dataclass(frozen=True)
class Cost:
    """What an evaluation spent."""

    steps: int
    samples: int
    seconds: float
    checks: int


@dataclass(frozen=True)
class Evaluation:
    """The outcome of evaluating one plan."""

    plan: SharingPlan
    feasible: bool
    stop_reason: str
    target: float
    models: tuple[ModelOutcome, ...]
    unique_bytes: int
    saved_bytes: int
    cost: Cost
    curve: tuple[float, ...] = field(default=())

    @property
    def worst_ratio(self) -> float:
        return min(m.ratio for m in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": sorted(self.plan.shared),
            "plan_hash": self.plan.plan_hash,
            "feasible": self.feasible,
            "stop_reason": self.stop_reason,
            "target": self.target,
            "models": [asdict(m) for m in self.models],
            "unique_bytes": self.unique_bytes,
            "saved_bytes": self.saved_bytes,
            "cost": asdict(self.cost),
            "curve": list(self.curve),
        }


class Evaluator:
    """Scores sharing plans of one prepared workload.

    Args:
        prepared: The workload's data, originals and baselines.
        settings: Retraining budget and early-exit rules.
        target: Share of its baseline accuracy each model must keep, in (0, 1].
        analysis: The workload's analysis (computed from the originals if not given).
        device: Where to retrain (CUDA when present by default).
        progress: Called with one line after every check of a long evaluation.
    """

    def __init__(
        self,
        prepared: PreparedWorkload,
        settings: EvaluatorSettings,
        target: float,
        *,
        analysis: AnalysisResult | None = None,
        device: torch.device | str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.prepared = prepared
        self.settings = settings
        self.target = check_target(target)
        self.analysis = analysis or analyze(prepared.workload, built=prepared.models)
        self.device = torch.device(device) if device is not None else default_device()
        self.progress = progress

    def evaluate(
        self,
        plan: SharingPlan,
        *,
        seed: int = 0,
        report: ReportFn | None = None,
        start_from: Mapping[str, nn.Module] | None = None,
    ) -> tuple[Evaluation, dict[str, nn.Module]]:
        """Merge, retrain and judge ``plan``; returns the evaluation and the merged models.

        The merged models returned carry the weights of the deciding check (for a
        feasible plan: the check where every model met its target at once).
        """
        started = time.perf_counter()
        plan.checked([g.name for g in self.analysis.groups])
        settings, names = self.settings, list(self.prepared.models)
        originals = start_from if start_from is not None else self.prepared.models
        merged = merge_models(originals, self.analysis.groups, plan, init=settings.init)  # type: ignore[arg-type]
        unique = unique_tensor_bytes(model_tensors(merged.values()))

        torch.manual_seed(seed)
        train = {n: _subsample(self.prepared.data[n].train, settings.fraction, seed) for n in names}
        streams = {
            n: batches(train[n], settings.batch_size, seed=seed + i, device=self.device) for i, n in enumerate(names)
        }
        touched = {model for group in self.analysis.groups if group.name in plan.shared for model in group.models}
        for name, model in merged.items():
            model.to(self.device)
            if settings.recalibrate and name in touched:
                recalibrate_batch_norm(model, train[name], device=self.device)
        parameters = _unique_parameters(merged.values())
        optimizer = torch.optim.Adam(parameters, lr=settings.lr) if parameters else None
        loss_fn = nn.CrossEntropyLoss()

        epoch_steps = max(steps_per_epoch(s, settings.batch_size) for s in train.values())
        check_every = max(1, epoch_steps // settings.checks_per_epoch)
        total_checks = max(1, math.ceil(settings.max_epochs * epoch_steps / check_every))
        schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_checks * check_every)
            if optimizer is not None
            else None
        )
        history: list[dict[str, float]] = []
        steps = 0
        outcome: tuple[bool, str, dict[str, float], dict[str, float | None]] | None = None

        for check in range(total_checks + 1):
            if check > 0 and optimizer is not None:
                for model in merged.values():
                    model.train()
                for _ in range(check_every):
                    optimizer.zero_grad(set_to_none=True)
                    loss = sum(loss_fn(merged[n](x), y) for n in names for x, y in [next(streams[n])])
                    loss.backward()  # type: ignore[union-attr]
                    optimizer.step()
                    schedule.step()  # type: ignore[union-attr]
                    steps += 1
                if settings.recalibrate:
                    for name in touched:
                        recalibrate_batch_norm(merged[name], train[name], device=self.device)
            ratios = self._ratios(merged)
            history.append(ratios)
            if self.progress is not None:
                worst = min(ratios, key=ratios.__getitem__)
                self.progress(f"check {check}/{total_checks} after {steps} steps: worst accuracy ratio"
                              f" {ratios[worst]:.3f} ({worst}), target {self.target}")
            confirmed = self._confirm(merged, ratios)
            last = check == total_checks or optimizer is None
            if confirmed is not None and (settings.early_exit or last):
                outcome = (True, "success", ratios, confirmed)
                break
            if last:
                outcome = (False, "budget", ratios, {})
                break
            if report is not None and report(check, min(ratios.values())):
                outcome = (False, "pruned", ratios, {})
                break
            if settings.early_exit and self._hopeless(history, check, total_checks):
                outcome = (False, "hopeless", ratios, {})
                break
        assert outcome is not None
        feasible, reason, ratios, test_ratios = outcome

        for model in merged.values():
            model.to("cpu").eval()
        baselines = self.prepared.baselines
        models = tuple(
            ModelOutcome(
                name=n,
                accuracy=ratios[n] * baselines[n].val_accuracy,
                baseline=baselines[n].val_accuracy,
                ratio=ratios[n],
                meets_target=ratios[n] >= self.target,
                test_ratio=test_ratios.get(n),
            )
            for n in names
        )
        samples = steps * settings.batch_size * len(names)
        cost = Cost(steps=steps, samples=samples, seconds=time.perf_counter() - started, checks=len(history))
        curve = tuple(min(r.values()) for r in history)
        evaluation = Evaluation(
            plan=plan,
            feasible=feasible,
            stop_reason=reason,
            target=self.target,
            models=models,
            unique_bytes=unique,
            saved_bytes=self.analysis.total_bytes - unique,
            cost=cost,
            curve=curve,
        )
        return evaluation, merged

    def _ratios(self, merged: Mapping[str, nn.Module]) -> dict[str, float]:
        data, baselines = self.prepared.data, self.prepared.baselines
        return {
            n: accuracy(m, data[n].val, device=self.device) / baselines[n].val_accuracy for n, m in merged.items()
        }

    def _confirm(self, merged: Mapping[str, nn.Module], ratios: Mapping[str, float]) -> dict[str, float | None] | None:
        """Test ratios of the marginal passes when every model passes and they hold; else ``None``."""
        if any(r < self.target for r in ratios.values()):
            return None
        confirmed: dict[str, float | None] = {}
        for name, ratio in ratios.items():
            if ratio >= self.target + self.settings.confirm_margin:
                confirmed[name] = None
                continue
            baseline = self.prepared.baselines[name].test_accuracy
            test_ratio = accuracy(merged[name], self.prepared.data[name].test, device=self.device) / baseline
            if test_ratio < self.target:
                return None
            confirmed[name] = test_ratio
        return confirmed

    def _hopeless(self, history: Sequence[Mapping[str, float]], check: int, total_checks: int) -> bool:
        """Some model's curve, extrapolated at its best recent pace, stays below its target."""
        if check < self.settings.min_checks:
            return False
        remaining = total_checks - check
        for name in history[-1]:
            curve = [h[name] for h in history]
            best = max(curve)
            if best >= self.target:
                continue
            recent = curve[-3:]
            pace = max([b - a for a, b in zip(recent, recent[1:])] + [0.0])
            if best + self.settings.optimism * pace * remaining < self.target:
                return True
        return False


def _subsample(split: Split, fraction: float, seed: int) -> Split:
    return split if fraction >= 1 else stratified_subsample(split, fraction, seed=seed)


def _unique_parameters(models: Sequence[nn.Module] | Any) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for model in models:
        for parameter in model.parameters():
            if parameter.requires_grad:
                seen.setdefault(id(parameter), parameter)
    return list(seen.values())
