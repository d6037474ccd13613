"""A study's plans on an edge box: which plans, their profile, their simulation, the figures.

These are the library functions behind ``searchmerge profile`` and ``searchmerge
simulate``. The plans are ``none`` (every model on its own), ``all`` (max sharing, every
shareable group shared), ``best`` (the best feasible plan of the study's search) and any
list of groups. ``none``, ``all`` and a list of groups need only the architectures, so a
study of untrained torchvision models (``studies/paper-scale.yaml``) is profiled and
simulated without any training; ``best`` needs a search.

Example:
    >>> from searchmerge.config.deploy import DeploySettings
    >>> report = simulate_study("studies/paper-scale.yaml", DeploySettings(gpu_memory="1GiB"))  # doctest: +SKIP
    >>> [(r.plan, r.processed_fraction) for r in report.results]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from searchmerge.cli.report import format_table, megabytes, percent
from searchmerge.config.deploy import DeploySettings, format_bytes, parse_bytes
from searchmerge.config.study import read_study_file
from searchmerge.config.workload import Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.runtime.profile import Profile, plan_fingerprint, workload_fingerprint
from searchmerge.runtime.simulator import SimulationResult, simulate

__all__ = [
    "SimulationReport",
    "deploy_settings",
    "format_simulation",
    "memory_levels",
    "memory_sweep",
    "profile_study",
    "simulate_study",
    "write_figures",
]

Progress = Callable[[str], None]

#: The plans compared when none is named (``best`` only when the study has a search).
DEFAULT_PLANS = ("none", "best", "all")


@dataclass(frozen=True)
class _Source:
    """Where a study's plans come from: its file, and the storage of its search."""

    path: str
    storage: str | None = None
    blob_dir: str | None = None
    study_name: str | None = None


def deploy_settings(path: str | os.PathLike[str], **given: Any) -> DeploySettings:
    """The edge box to simulate: the flags ``given`` (those not ``None``) over the study's ``deploy:`` section.

    Raises:
        SearchmergeError: For a bad value, or no GPU memory budget anywhere.
    """
    section = read_study_file(path).settings.deploy
    values = {key: value for key, value in given.items() if value is not None}
    if section is not None:
        return replace(section, **values)
    if "gpu_memory" not in values:
        raise SearchmergeError("give the GPU memory budget with --gpu-memory (e.g. 4GiB) or a deploy: section")
    return DeploySettings(**values)


def profile_study(
    path: str | os.PathLike[str],
    plans: Sequence[str] | None = None,
    *,
    storage: str | None = None,
    blob_dir: str | None = None,
    study_name: str | None = None,
    device: str | None = None,
    link_bytes_per_s: float | str | None = None,
    repeats: int = 3,
    progress: Progress | None = None,
) -> Profile:
    """Measure a study's workload on the device present and lay out its plans.

    Args:
        path: The study file.
        plans: Plan names: ``none``, ``all``, ``best`` or comma-separated groups (default:
            none, the search's best when there is one, and all).
        storage, blob_dir, study_name: Where the search with the ``best`` plan is.
        device: Where to measure (default: CUDA when present).
        link_bytes_per_s: Host-to-device bandwidth (bytes per second, or a size such as
            ``12GB``) instead of the measured one (CUDA) or PCIe 3 x16.
        repeats: Timed runs per batch size.
        progress: Called with one line per step.
    """
    from searchmerge.analysis import analyze
    from searchmerge.runtime.measure import measure_profile

    source = _Source(str(path), storage, blob_dir, study_name)
    workload = read_study_file(path).workload
    link = None if link_bytes_per_s is None else float(parse_bytes(link_bytes_per_s, "link bandwidth"))
    say = progress or (lambda _line: None)
    say(f"building the {len(workload.models)} models of {workload.name!r} and finding their shareable groups ...")
    models = workload.build()
    groups = analyze(workload, built=models).groups
    resolved = _resolve(source, plans, [g.name for g in groups], say)
    return measure_profile(workload, resolved, models=models, groups=groups, device=device,
                           link_bytes_per_s=link, repeats=repeats, progress=say)


@dataclass(frozen=True)
class SimulationReport:
    """Several plans simulated on one edge box, side by side."""

    settings: DeploySettings
    device: str
    results: tuple[SimulationResult, ...]
    profile: Profile

    def to_dict(self) -> dict[str, Any]:
        """The ``simulate --json`` document."""
        settings = self.settings
        return {
            "gpu_memory_bytes": settings.gpu_memory,
            "fps": _number(settings.fps),
            "sla_ms": _number(settings.sla_ms),
            "seconds": _number(settings.seconds),
            "policy": settings.policy,
            "swap": settings.swap,
            "profiled_on": self.device,
            "plans": [result.to_dict() for result in self.results],
        }


def simulate_study(
    path: str | os.PathLike[str],
    settings: DeploySettings,
    *,
    plans: Sequence[str] | None = None,
    profile: Profile | str | os.PathLike[str] | None = None,
    storage: str | None = None,
    blob_dir: str | None = None,
    study_name: str | None = None,
    progress: Progress | None = None,
) -> SimulationReport:
    """Simulate a study's plans on the edge box ``settings`` describes.

    Args:
        path: The study file.
        settings: Budget, fps, SLA, seconds, policy, swap mode.
        plans: Plan names (default: those of ``profile``, or none, best when there is a
            search, and all).
        profile: A profile (or its file) measured for this workload and these plans;
            default: one is measured now.
        storage, blob_dir, study_name: Where the search with the ``best`` plan is.
        progress: Called with one line per step.

    Raises:
        SearchmergeError: If the profile belongs to another workload or plan, a plan is not
            the study's, or the budget cannot run some model even layer by layer.
    """
    say = progress or (lambda _line: None)
    if profile is None:
        profile = profile_study(path, plans, storage=storage, blob_dir=blob_dir, study_name=study_name, progress=say)
        names = [p.name for p in profile.plans]
    else:
        profile = profile if isinstance(profile, Profile) else Profile.load(profile)
        workload = read_study_file(path).workload
        names = _canonical(plans) if plans else [p.name for p in profile.plans]
        source = _Source(str(path), storage, blob_dir, study_name)
        for name in names:
            profile.plan(name)  # a plan the profile lacks is named before any work
        profile.check_for(workload_fingerprint(workload), workload.name, _fingerprints(source, workload, names, say))
    say(f"simulating {len(names)} plan(s) for {settings.seconds:g} s of {len(profile.models)} streams ...")
    results = tuple(simulate(profile, name, settings) for name in names)
    return SimulationReport(settings=settings, device=profile.device, results=results, profile=profile)


def memory_levels(profile: Profile, plan: str = "none") -> dict[str, int]:
    """Gemel's three budgets: the minimum that runs (the largest model alone), 50% and 75% of what fits everything."""
    layout = profile.plan(plan).layout
    smallest = min(profile.batch_sizes)
    run = {m: layout.model_bytes(m) + profile.model(m).activation_bytes[smallest] for m in layout.models}
    everything = layout.resident_bytes + max(profile.model(m).activation_bytes[smallest] for m in layout.models)
    return {"minimum": max(run.values()), "50%": everything // 2, "75%": everything * 3 // 4, "everything": everything}


def memory_sweep(
    profile: Profile, settings: DeploySettings, plans: Sequence[str], *, points: int = 10
) -> dict[str, list[tuple[int, float]]]:
    """Processed fraction per plan at ``points`` budgets from the minimum that runs to a bit over what fits all."""
    levels = memory_levels(profile)
    low, high = levels["minimum"], int(levels["everything"] * 1.1)
    budgets = sorted({low + (high - low) * i // max(points - 1, 1) for i in range(points)} | {settings.gpu_memory})
    sweep: dict[str, list[tuple[int, float]]] = {}
    for name in plans:
        sweep[name] = [
            (budget, simulate(profile, name, replace(settings, gpu_memory=budget)).processed_fraction)
            for budget in budgets
        ]
    return sweep


def write_figures(report: SimulationReport, directory: str | os.PathLike[str]) -> list[Path]:
    """The residency timeline (the paper's Figure 1) and processed fraction against memory, as PNGs."""
    from searchmerge.runtime.plots import plot_sweep, plot_timeline

    directory = Path(directory)
    names = [result.plan for result in report.results]
    timeline = plot_timeline(report.results, directory / "timeline.png", window_s=min(5.0, report.settings.seconds))
    sweep = plot_sweep(memory_sweep(report.profile, report.settings, names), directory / "processed-vs-memory.png")
    return [timeline, sweep]


def format_simulation(report: SimulationReport) -> str:
    """The plans side by side, then each plan's streams."""
    settings = report.settings
    head = (
        f"{format_bytes(settings.gpu_memory)} of GPU memory, {settings.fps:g} fps per stream, SLA {settings.sla_ms:g} ms,"
        f" {settings.seconds:g} s, eviction {settings.policy}, swap per {settings.swap} (profiled on {report.device})"
    )
    rows = [
        [r.plan, megabytes(r.resident_bytes_needed), "yes" if r.fits else "no", percent(r.processed_fraction),
         int(r.counters["swaps"]), megabytes(r.counters["bytes_loaded"]), percent(r.loading_share), len(r.units)]
        for r in report.results
    ]
    parts = [head, "", format_table(
        ["plan", "all resident", "fits", "processed", "swaps", "loaded", "loading share", "merged groups"], rows)]
    for result in report.results:
        streams = [
            [s.model, s.frames, s.processed, s.dropped,
             "-" if s.p95_latency_ms is None else f"{s.p95_latency_ms:.1f}", percent(s.resident_share)]
            for s in result.streams
        ]
        parts += ["", format_table(["stream", "frames", "processed", "dropped", "p95 ms", "resident"], streams,
                                   title=f"plan {result.plan}:")]
    return "\n".join(parts)


# --- plans ------------------------------------------------------------------------


def _canonical(names: Sequence[str]) -> list[str]:
    """Plan names as the profile keeps them: a list of groups sorted, so that order does not matter."""
    result = []
    for name in names:
        text = name.strip()
        if text not in ("none", "all", "best"):
            text = ",".join(sorted({part.strip() for part in text.split(",") if part.strip()}))
            if not text:
                raise SearchmergeError("a plan is none, all, best or a comma-separated list of group names")
        if text not in result:
            result.append(text)
    return result


def _resolve(source: _Source, names: Sequence[str] | None, groups: Sequence[str], say: Progress) -> dict[str, SharingPlan]:
    """The plans by name; without names: none, the search's best (when there is one) and all."""
    plans: dict[str, SharingPlan] = {}
    for name in _canonical(names or DEFAULT_PLANS):
        if name == "best":
            best = _best_plan(source, required=bool(names), say=say)
            if best is not None:
                plans[name] = best.checked(groups)
        else:
            plans[name] = SharingPlan.parse(name, groups)
    return plans


def _fingerprints(source: _Source, workload: Workload, names: Sequence[str], say: Progress) -> dict[str, str]:
    """The fingerprint each named plan has for this study now (the best plan may have changed)."""
    fingerprint = workload_fingerprint(workload)
    result = {}
    for name in names:
        if name == "best":
            best = _best_plan(source, required=True, say=say)
            assert best is not None
            result[name] = plan_fingerprint(fingerprint, sorted(best.shared))
        elif name == "none":
            result[name] = plan_fingerprint(fingerprint, [])
    # "all" and lists of groups are fixed by the workload, which the profile's fingerprint checks.
    return result


def _best_plan(source: _Source, *, required: bool, say: Progress) -> SharingPlan | None:
    """The best feasible plan of the study's search, or ``None`` when there is none and it was not asked for."""
    from searchmerge.config.study import open_study_file
    from searchmerge.search.merge_search import searchmerge_studies
    from searchmerge.search.selection import select_search

    url = read_study_file(source.path, storage=source.storage).storage
    if not _may_exist(url):  # no storage yet: nothing to read, and nothing created by looking
        if required:
            raise SearchmergeError(f"{url} does not exist: 'best' needs a search (searchmerge search {source.path})")
        return None
    study = open_study_file(source.path, storage=source.storage, blob_dir=source.blob_dir)
    known = searchmerge_studies(study)
    if not required and (source.study_name not in known if source.study_name else not known):
        return None
    search = select_search(study, source.study_name, progress=say)
    say(f"reading the best plan of search {search.study_name!r} ...")
    best = search.best()
    if best is None:
        if required:
            raise SearchmergeError(
                f"search {search.study_name!r} has no feasible plan yet; 'best' needs one (run more trials)"
            )
        return None
    return best.plan


def _may_exist(url: str) -> bool:
    """Whether a storage may hold studies (an SQLite file that does not exist holds none)."""
    prefix = "sqlite:///"
    return not url.startswith(prefix) or Path(url[len(prefix):]).exists()


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
