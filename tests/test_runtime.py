"""The runtime under a GPU budget: layout, residency, the swap-aware runtime on the simulated device,
the stream simulator, profiles, and the profile/simulate commands. Tiny models, CPU only."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from searchmerge.analysis import analyze, unique_tensor_bytes
from searchmerge.analysis.memory import model_tensors
from searchmerge.cli.commands import main
from searchmerge.config.deploy import DeploySettings, parse_bytes
from searchmerge.config.settings import StudySettings
from searchmerge.config.workload import ModelSpec, Workload
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.space import SharingPlan
from searchmerge.runtime.layout import TensorLayout
from searchmerge.runtime.measure import layout_of, measure_profile
from searchmerge.runtime.profile import Profile
from searchmerge.runtime.residency import Residency
from searchmerge.runtime.runtime import RuntimeExecutor, SwapRuntime
from searchmerge.runtime.simulator import Step, simulate
from searchmerge.training.merge import merge_models
from tests.conftest import TinyNet

SHAPE = (3, 16, 16)

TINY_BOX = """
name: tiny-box
models:
  - {name: a, factory: "tests.conftest:tiny_net", input_shape: [3, 16, 16]}
  - {name: b, factory: "tests.conftest:tiny_net", input_shape: [3, 16, 16]}
  - {name: c, factory: "tests.conftest:tiny_net", kwargs: {classes: 2}, input_shape: [3, 16, 16]}
"""


@pytest.fixture(scope="module")
def workload() -> Workload:
    torch.manual_seed(0)
    models = {"a": TinyNet(), "b": TinyNet(), "c": TinyNet(classes=2)}
    return Workload(models=tuple(ModelSpec(name=n, module=m, input_shape=SHAPE) for n, m in models.items()), name="tiny")


@pytest.fixture(scope="module")
def originals(workload: Workload) -> dict[str, torch.nn.Module]:
    return {spec.name: spec.module for spec in workload.models}


@pytest.fixture(scope="module")
def groups(workload: Workload, originals: dict[str, torch.nn.Module]):  # type: ignore[no-untyped-def]
    return analyze(workload, built=originals).groups


@pytest.fixture(scope="module")
def merged(originals, groups):  # type: ignore[no-untyped-def]
    """Every group shared: stem, body, head_conv of all three, fc of a and b."""
    return merge_models(originals, groups, SharingPlan.of(g.name for g in groups), init="first")


@pytest.fixture(scope="module")
def profile(workload: Workload, originals, groups) -> Profile:  # type: ignore[no-untyped-def]
    plans = {"none": SharingPlan.of([]), "all": SharingPlan.of(g.name for g in groups)}
    return measure_profile(workload, plans, models=originals, groups=groups, repeats=1)


def inputs(batch: int = 2) -> torch.Tensor:
    return torch.rand((batch, *SHAPE), generator=torch.Generator().manual_seed(batch))


#: The runtime's devices here: the simulated one always, CUDA when present (run by benchmarks/gpu_check.sh).
DEVICES = ["simulated", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal outputs, up to the rounding of a GPU kernel chosen anew (cuDNN may pick another algorithm)."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def reference(model: torch.nn.Module, x: torch.Tensor, device: str) -> torch.Tensor:
    """The model's own output, computed where the runtime computes (so rounding matches)."""
    target = "cpu" if device == "simulated" else device
    with torch.inference_mode():
        return copy.deepcopy(model).to(target)(x.to(target))


# --------------------------------------------------------------------------- layout


def test_layout_counts_shared_tensors_once_like_the_analysis(merged, originals) -> None:  # type: ignore[no-untyped-def]
    layout = layout_of(merged)
    assert layout.resident_bytes == unique_tensor_bytes(model_tensors(merged.values()))
    assert layout_of(originals).resident_bytes == unique_tensor_bytes(model_tensors(originals.values()))
    assert layout.resident_bytes < layout_of(originals).resident_bytes
    # A switch from a to b moves what the pair holds beyond a: b's private tensors only.
    pair = unique_tensor_bytes(model_tensors([merged["a"], merged["b"]]))
    assert layout.switch_bytes("a", "b") == pair - layout.model_bytes("a")
    assert layout.units == (("a", "b", "c"),)
    assert layout_of(originals).units == (("a",), ("b",), ("c",))
    # Blocks partition the tensors: every tensor once, owned by exactly the models that use it.
    assert sorted(t for block in layout.blocks for t in block.tensors) == list(range(len(layout.keys)))
    for block in layout.blocks:
        assert all(set(block.tensors) <= layout.tensors(m) for m in block.owners)


def test_layout_json_round_trip(merged) -> None:  # type: ignore[no-untyped-def]
    layout = layout_of(merged)
    assert TensorLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


# ------------------------------------------------------------------------ residency


def _three_separate(size: int = 10) -> TensorLayout:
    return TensorLayout(keys=("a", "b", "c"), sizes=(size, size, size),
                        layers={"a": (("l", (0,)),), "b": (("l", (1,)),), "c": (("l", (2,)),)})


@pytest.mark.parametrize(("policy", "loads", "evictions"), [("lru", 9, 7), ("lookahead", 6, 4)])
def test_lru_and_lookahead_on_a_hand_checked_schedule(policy: str, loads: int, evictions: int) -> None:
    """Three models, room for two, schedule a b c a b c a b c.

    LRU always evicts the model needed next: every run loads (9), evicting from the third on (7).
    Look-ahead (Belady) evicts the one needed last: at c it evicts b (a comes first), at b
    it evicts a, at a it evicts c, at the last c it evicts a: loads a b c b a c (6), evictions 4.
    """
    residency = Residency(_three_separate(), budget=20, policy=policy)
    schedule = list("abcabcabc")
    for i, model in enumerate(schedule):
        residency.acquire(model, upcoming=schedule[i + 1:])
        assert residency.used <= 20
    assert (residency.counters.swaps, residency.counters.evictions) == (loads, evictions)


def test_residency_never_exceeds_the_budget(merged) -> None:  # type: ignore[no-untyped-def]
    layout = layout_of(merged)
    budget = max(layout.model_bytes(m) for m in layout.models) + 500
    rng = random.Random(0)
    for policy in ("lru", "lookahead"):
        for swap in ("model", "unit"):
            residency = Residency(layout, budget, policy=policy, swap=swap)
            schedule = [rng.choice(layout.models) for _ in range(60)]
            for i, model in enumerate(schedule):
                residency.acquire(model, extra=rng.randrange(0, 500), upcoming=schedule[i + 1:])
                assert residency.used <= budget
                assert residency.layout.model_blocks(model) <= residency.resident
            assert residency.counters.peak_bytes <= budget


def test_unit_swapping_loads_the_whole_merged_group() -> None:
    layout = TensorLayout(keys=("s", "a", "b", "c"), sizes=(10, 5, 5, 5),
                          layers={"a": (("l", (0, 1)),), "b": (("l", (0, 2)),), "c": (("l", (3,)),)})
    assert layout.units == (("a", "b"), ("c",))
    by_unit = Residency(layout, 100, swap="unit")
    assert by_unit.acquire("a").bytes_loaded == 20  # a, and b's private tensor with it
    assert by_unit.acquire("b").bytes_loaded == 0
    by_model = Residency(layout, 100, swap="model")
    assert by_model.acquire("a").bytes_loaded == 15
    assert by_model.acquire("b").bytes_loaded == 5


# -------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("device", DEVICES)
def test_runtime_runs_the_merged_models_and_never_copies_a_shared_tensor_twice(merged, device: str) -> None:  # type: ignore[no-untyped-def]
    layout = layout_of(merged)
    runtime = SwapRuntime(merged, gpu_memory=layout.resident_bytes, device=device)
    x = inputs()
    expected = {name: reference(model, x, device) for name, model in merged.items()}
    assert_same(runtime.run("a", x), expected["a"])
    after_a = runtime.counters.bytes_loaded
    assert after_a == layout.model_bytes("a")
    assert_same(runtime.run("b", x), expected["b"])
    assert runtime.counters.bytes_loaded - after_a == layout.switch_bytes("a", "b")
    assert_same(runtime.run("c", x), expected["c"])
    runtime.run("a", x)
    assert max(runtime.copies.values()) == 1  # everything fits: each tensor copied once
    assert sum(layout.sizes[t] * n for t, n in runtime.copies.items()) == runtime.counters.bytes_loaded
    assert runtime.counters.bytes_loaded == layout.resident_bytes
    assert runtime.resident_models() == {"a", "b", "c"}


@pytest.mark.parametrize("device", DEVICES)
def test_runtime_swaps_within_the_budget(originals, profile: Profile, device: str) -> None:  # type: ignore[no-untyped-def]
    layout = layout_of(originals)
    activations = profile.model("a").activation_bytes[2]  # what a batch of 2 reserves
    budget = 2 * max(layout.model_bytes(m) for m in layout.models) + activations  # two of three models
    runtime = SwapRuntime(originals, gpu_memory=budget, device=device, profile=profile)
    x = inputs()
    for model in "abcabcab":
        assert_same(runtime.run(model, x), reference(originals[model], x, device))
        assert runtime.resident_bytes() <= budget
    assert runtime.peak_bytes <= budget
    assert runtime.counters.evictions > 0
    assert sum(layout.sizes[t] * n for t, n in runtime.copies.items()) == runtime.counters.bytes_loaded


@pytest.mark.parametrize("device", DEVICES)
def test_a_model_larger_than_the_budget_runs_layer_by_layer(merged, device: str) -> None:  # type: ignore[no-untyped-def]
    layout = layout_of(merged)
    layer_bytes = [sum(layout.sizes[t] for t in ids) for _, ids in layout.layers["a"]]
    pairs = max(x + y for x, y in zip(layer_bytes, layer_bytes[1:]))
    x = inputs()
    expected = reference(merged["a"], x, device)
    for budget, prefetch in ((pairs, True), (max(layer_bytes), False)):
        assert budget < layout.model_bytes("a")
        runtime = SwapRuntime(merged, gpu_memory=budget, device=device)
        assert_same(runtime.run("a", x), expected)
        assert runtime.counters.streamed_runs == 1
        assert runtime.counters.bytes_loaded == layout.model_bytes("a")
        assert runtime.peak_bytes <= budget
        assert runtime.resident_bytes() == 0  # streamed layers leave nothing behind
        assert runtime.last_load_s > 0 and runtime.last_compute_s > 0
        plan = Residency(layout, budget).stream("a")
        assert plan.prefetch is prefetch


def test_a_budget_below_the_largest_layer_is_refused(merged) -> None:  # type: ignore[no-untyped-def]
    layout = layout_of(merged)
    runtime = SwapRuntime(merged, gpu_memory=layout.largest_layer()[2] - 1, device="simulated")
    with pytest.raises(SearchmergeError, match="below what the largest single layer needs"):
        runtime.run("a", inputs())


# ------------------------------------------------------------------------ simulator


def _settings(profile: Profile, plan: str, models: float, **changes: object) -> DeploySettings:
    """A budget that holds ``models`` of the plan's models (by the largest) and one frame's run memory."""
    layout = profile.plan(plan).layout
    largest = max(layout.model_bytes(m) for m in layout.models)
    run = max(m.activation_bytes[1] for m in profile.models)
    values = {"gpu_memory": int(models * largest) + run, "fps": 10, "sla_ms": 1000, "seconds": 5, **changes}
    return DeploySettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["lru", "lookahead"])
@pytest.mark.parametrize("held", [1.5, 2.5, 10])
def test_every_frame_is_processed_or_dropped(profile: Profile, policy: str, held: float) -> None:
    for plan in ("none", "all"):
        for sla_ms in (1, 1000):
            result = simulate(profile, plan, _settings(profile, plan, held, policy=policy, sla_ms=sla_ms))
            for stream in result.streams:
                assert stream.frames == 50
                assert stream.processed + stream.dropped == stream.frames
            assert result.counters["peak_bytes"] <= result.settings.gpu_memory


def test_swapping_costs_frames_and_sharing_avoids_it(profile: Profile) -> None:
    """A budget that holds one model and a half: unmerged models swap at every turn, merged ones fit."""
    none_layout, all_layout = profile.plan("none").layout, profile.plan("all").layout
    settings = _settings(profile, "none", 1.5, fps=5)
    assert all_layout.resident_bytes <= 1.5 * max(none_layout.model_bytes(m) for m in none_layout.models)
    unmerged = simulate(profile, "none", settings)
    shared = simulate(profile, "all", settings)
    assert unmerged.counters["swaps"] > 3 * len(unmerged.runs) / 4  # a load at nearly every turn
    assert shared.counters["swaps"] == 3  # each model's first run, then everything stays resident
    assert shared.counters["evictions"] == 0
    assert unmerged.loading_share > shared.loading_share
    assert unmerged.counters["bytes_loaded"] > shared.counters["bytes_loaded"]
    assert shared.processed_fraction >= unmerged.processed_fraction


def test_a_too_small_budget_is_refused_by_the_simulator(profile: Profile) -> None:
    with pytest.raises(SearchmergeError, match="largest single layer"):
        simulate(profile, "none", DeploySettings(gpu_memory=1000))


class _PredictedClock(RuntimeExecutor):
    """Runs every batch on the real runtime, but advances the scheduler's clock by the
    profile's prediction instead of the measured time, so which frames are in time does not
    depend on how loaded the machine running the test is."""

    ran = 0

    def run(self, model: str, batch: int, upcoming: Sequence[str]) -> Step:
        predicted = self.cost(model, batch)  # before the run changes the residency
        measured = super().run(model, batch, upcoming)
        self.ran += 1
        assert measured == Step(load_s=self.runtime.last_load_s, compute_s=self.runtime.last_compute_s)
        assert measured.compute_s > 0
        assert predicted is not None
        return Step(load_s=0.0, compute_s=predicted)


def test_the_scheduler_drives_the_real_runtime(originals, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    """The same scheduler with every batch really run: frames conserved, the budget kept, copies as accounted."""
    steady = dataclasses.replace(profile, models=tuple(  # 10 ms a batch, whatever the fixture measured
        dataclasses.replace(m, batch_seconds=dict.fromkeys(m.batch_seconds, 0.01)) for m in profile.models))
    settings = _settings(steady, "none", 1.5, seconds=1, fps=5, sla_ms=5000)
    runtime = SwapRuntime(originals, gpu_memory=settings.gpu_memory, device="simulated", profile=steady)
    executor = _PredictedClock(runtime, steady, steady.plan("none"), {name: SHAPE for name in originals})
    result = simulate(steady, "none", settings, executor=executor)
    assert all(s.processed + s.dropped == s.frames == 5 for s in result.streams)
    assert result.processed == 15  # batches of 10 ms and a 5 s latency target: nothing is late
    assert len(result.runs) >= 3 and executor.ran == len(result.runs)  # every batch really ran
    assert runtime.peak_bytes <= settings.gpu_memory
    assert result.counters["swaps"] >= 3
    layout = runtime.layout
    assert sum(layout.sizes[t] * n for t, n in runtime.copies.items()) == result.counters["bytes_loaded"]


def test_an_executor_for_another_deployment_is_refused(merged, profile: Profile) -> None:  # type: ignore[no-untyped-def]
    runtime = SwapRuntime(merged, gpu_memory="1MiB", device="simulated")
    with pytest.raises(SearchmergeError, match="does not describe the runtime's deployment"):
        RuntimeExecutor(runtime, profile, profile.plan("none"), {})


# -------------------------------------------------------------------------- profile


def test_profile_measures_per_batch_size_and_round_trips(profile: Profile, tmp_path: Path) -> None:
    assert profile.device == "cpu" and not profile.link_measured
    assert profile.batch_sizes == (1, 2, 4, 8)
    for model in profile.models:
        assert set(model.batch_seconds) == set(model.activation_bytes) == {1, 2, 4, 8}
        assert all(seconds > 0 for seconds in model.batch_seconds.values())
        assert model.activation_bytes[8] > 0
        assert len(model.layer_shares) == len(profile.plan("none").layout.layers[model.name])
        assert sum(model.layer_shares) == pytest.approx(1.0)
        loaded = profile.plan("none").layout.model_bytes(model.name) / profile.link_bytes_per_s  # PCIe 3 x16 here
        assert model.load_seconds == pytest.approx(loaded)
    loaded = Profile.load(profile.save(tmp_path / "profile.json"))
    assert loaded == profile


def test_a_profile_of_another_workload_or_plan_is_refused(profile: Profile) -> None:
    with pytest.raises(SearchmergeError, match="measured for workload"):
        profile.check_for("0" * 20, "other")
    with pytest.raises(SearchmergeError, match="not for 'best'"):
        profile.plan("best")
    with pytest.raises(SearchmergeError, match="shares other groups"):
        profile.check_for(profile.workload_fingerprint, "tiny", {"none": "f" * 20})


def test_memory_sizes_and_deploy_settings() -> None:
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("1.5 GB") == 1_500_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes(1024) == 1024
    for bad, message in (("4XB", "unknown unit"), ("lots", "size such as"), ("0GiB", "positive"), (True, "size")):
        with pytest.raises(SearchmergeError, match=message):
            parse_bytes(bad)  # type: ignore[arg-type]
    settings = StudySettings.from_document({"deploy": {"gpu_memory": "4GiB", "fps": 15, "sla_ms": 200}}).deploy
    assert settings == DeploySettings(gpu_memory=4 * 2**30, fps=15, sla_ms=200)
    for section, message in (
        ({"fps": 15}, "needs gpu_memory"),
        ({"gpu_memory": "1GiB", "fps": 0}, "fps must be a positive"),
        ({"gpu_memory": "1GiB", "sla_ms": -1}, "sla-ms must be a positive"),
        ({"gpu_memory": "1GiB", "speed": 1}, "unknown setting"),
        ({"gpu_memory": "1GiB", "policy": "fifo"}, "policy must be"),
        ("4GiB", "must be a mapping"),
    ):
        with pytest.raises(SearchmergeError, match=message):
            StudySettings.from_document({"deploy": section})


# ------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny study file and its profile, written by the CLI."""
    folder = tmp_path_factory.mktemp("box")
    (folder / "box.yaml").write_text(TINY_BOX)
    assert main(["profile", str(folder / "box.yaml"), "--out", str(folder / "profile.json"), "--repeats", "1"]) == 0
    return folder


def test_models_of_one_architecture_are_measured_once(box: Path) -> None:
    profile = Profile.load(box / "profile.json")
    assert [m.measured_as for m in profile.models] == ["a", "a", "c"]  # c has another head: measured itself
    assert [p.name for p in profile.plans] == ["none", "all"]  # no search: no best plan


def test_simulate_prints_the_documented_json(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = main(["simulate", str(box / "box.yaml"), "--profile", str(box / "profile.json"), "--gpu-memory", "2MiB",
                 "--fps", "5", "--sla-ms", "2000", "--seconds", "2", "--json", "--out", str(box / "figures")])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert {"gpu_memory_bytes": 2 * 2**20, "fps": 5, "sla_ms": 2000, "seconds": 2}.items() <= document.items()
    assert [plan["plan"] for plan in document["plans"]] == ["none", "all"]
    for plan in document["plans"]:
        assert {"plan", "resident_bytes_needed", "fits", "streams", "processed_fraction", "swaps", "bytes_loaded",
                "loading_share"} <= set(plan)
        for stream in plan["streams"]:
            assert {"model", "frames", "processed", "dropped", "p95_latency_ms"} <= set(stream)
            assert stream["frames"] == stream["processed"] + stream["dropped"] == 10
    assert (box / "figures" / "timeline.png").stat().st_size > 0
    assert (box / "figures" / "processed-vs-memory.png").stat().st_size > 0


def test_simulate_reads_the_deploy_section(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = box / "deployed.yaml"
    study.write_text(TINY_BOX + "deploy: {gpu_memory: 3MiB, fps: 4, sla_ms: 900, seconds: 1}\n")
    capsys.readouterr()
    assert main(["simulate", str(study), "--profile", str(box / "profile.json"), "--plan", "none", "--json",
                 "--out", str(box / "figures")]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["gpu_memory_bytes"], document["fps"], document["sla_ms"]) == (3 * 2**20, 4, 900)
    assert document["plans"][0]["streams"][0]["frames"] == 4


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--gpu-memory", "4XB"], "unknown unit 'XB'"),
        (["--gpu-memory", "1MiB", "--fps", "0"], "fps must be a positive number"),
        (["--gpu-memory", "1MiB", "--sla-ms", "-5"], "sla-ms must be a positive number"),
        (["--gpu-memory", "2KiB"], "below what the largest single layer needs"),
        (["--gpu-memory", "1MiB", "--plan", "no-such-group"], "not for 'no-such-group'"),
        (["--gpu-memory", "1MiB", "--plan", "best"], "not for 'best'"),
        (["--fps", "5"], "give the GPU memory budget"),
    ],
)
def test_simulate_bad_input_is_one_line_and_exit_2(
    box: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    capsys.readouterr()
    code = main(["simulate", str(box / "box.yaml"), "--profile", str(box / "profile.json"), *arguments,
                 "--out", str(box / "figures")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("searchmerge: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_profile_of_another_study_is_refused(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = box / "other.yaml"
    other.write_text(TINY_BOX.replace("classes: 2", "classes: 3"))
    capsys.readouterr()
    code = main(["simulate", str(other), "--profile", str(box / "profile.json"), "--gpu-memory", "1MiB"])
    assert code == 2
    assert "the profile was measured for workload 'tiny-box'" in capsys.readouterr().err


def test_a_plan_that_is_not_the_studys_is_refused_when_profiling(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = main(["profile", str(box / "box.yaml"), "--plan", "stem,not-a-group", "--out", str(box / "x.json")])
    assert code == 2
    assert "do not exist: not-a-group" in capsys.readouterr().err
    assert not (box / "x.json").exists()


def test_best_without_a_search_is_refused_without_creating_a_storage(
    box: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["profile", str(box / "box.yaml"), "--plan", "best", "--out", "p.json"]) == 2
    assert "'best' needs a search" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------- memory-aware search


def test_objective_orders_by_frames_then_bytes(profile: Profile) -> None:
    from searchmerge.runtime.objective import objective_value

    result = simulate(profile, "none", _settings(profile, "none", 10))
    fewer_frames = dataclasses.replace(
        result, streams=(dataclasses.replace(result.streams[0], processed=result.streams[0].processed - 1,
                                             dropped=result.streams[0].dropped + 1), *result.streams[1:]))
    assert objective_value(fewer_frames, 100, 100) < objective_value(result, 0, 100)
    assert objective_value(result, 10, 100) < objective_value(result, 20, 100)


def test_deploy_objective_prefers_the_plan_that_fits(workload: Workload, originals, groups, profile) -> None:  # type: ignore[no-untyped-def]
    from searchmerge.runtime.objective import DeployObjective

    settings = _settings(profile, "none", 1.5, fps=5)
    objective = DeployObjective(settings, workload, originals, groups)
    everything = SharingPlan.of(g.name for g in groups)
    shared_value, attrs = objective.score(everything, 1, 1)
    alone_value, alone = objective.score(SharingPlan.of([]), 0, 1)
    assert attrs["swap_units"] == 1 and alone["swap_units"] == 3
    assert attrs["swaps"] < alone["swaps"]
    assert shared_value > alone_value


def test_memory_aware_search_scores_plans_by_frames_processed(prepared_tiny: Path, tmp_path: Path) -> None:
    """With deploy:, trials are worth their simulated frames (then bytes), best() follows, and the settings are the study's."""
    from searchmerge.config.study import open_study_file
    from searchmerge.runtime.objective import objective_value
    from searchmerge.search.merge_search import open_search
    from tests.conftest import TINY_STUDY, copy_prepared

    shaped = TINY_STUDY.replace("in_channels: 1},", "in_channels: 1}, input_shape: [1, 16, 16],")
    deploy = "deploy: {gpu_memory: 200KiB, fps: 5, sla_ms: 2000, seconds: 2}\n"
    path, storage = copy_prepared(prepared_tiny, tmp_path, shaped + deploy)
    search = open_search(open_study_file(path, storage=storage), strategy="greedy")
    search.run(2)
    trials = search.finished_trials()
    for trial in trials:
        assert 0.0 <= trial.user_attrs["processed_fraction"] <= 1.0
        assert {"swaps", "loading_share", "swap_units"} <= set(trial.user_attrs)
        frames = 3 * 10  # three streams, 2 s at 5 fps: the tie-break adds less than one frame's worth
        assert trial.value is not None
        assert trial.user_attrs["processed_fraction"] <= trial.value < trial.user_attrs["processed_fraction"] + 1 / frames
    first = search.deploy_objective.simulate(search.space.plan_from_params(trials[0].params))
    assert trials[0].value == pytest.approx(
        objective_value(first, int(trials[0].user_attrs["saved_bytes"]), search.space.max_saved_bytes))
    best = search.best()
    feasible = [t for t in trials if t.user_attrs.get("constraint", 1.0) <= 0]
    assert best is not None and best.number in {t.number for t in feasible}
    top = max(t.user_attrs["processed_fraction"] for t in feasible)
    assert next(t for t in trials if t.number == best.number).user_attrs["processed_fraction"] == top
    # Another edge box is another objective: resuming the study with it is refused.
    path.write_text(shaped + deploy.replace("fps: 5", "fps: 6"))
    with pytest.raises(SearchmergeError, match="deploy differs"):
        open_search(open_study_file(path, storage=storage), strategy="greedy")
