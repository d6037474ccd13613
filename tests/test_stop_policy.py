"""The evaluator's stop policy: when a plan's retraining stops, and why (no training needed)."""

from __future__ import annotations

from searchmerge.training.evaluate import StopPolicy


def test_early_exit_stops_at_the_first_pass_and_full_retraining_at_the_end() -> None:
    early = StopPolicy(early_exit=True, last_check=3)
    assert [early.checks_at(c) for c in range(4)] == [True] * 4
    assert early.decide(0, 0.5, passed=False) is None
    assert early.decide(1, 0.97, passed=True) == "success"
    assert early.decide(3, 0.5, passed=False) == "budget"
    full = StopPolicy(early_exit=False, last_check=3)
    assert [full.checks_at(c) for c in range(4)] == [False, False, False, True]
    assert full.decide(1, 0.97, passed=True) is None  # judged at the end only
    assert full.decide(3, 0.97, passed=True) == "success"
    assert full.decide(3, 0.5, passed=False) == "budget"
    assert StopPolicy(early_exit=False, last_check=3, watched=True).checks_at(1)


def test_a_pruner_stops_only_a_failing_check_and_hopeless_needs_early_exit() -> None:
    seen: list[tuple[int, float]] = []

    def report(check: int, worst: float) -> bool:
        seen.append((check, worst))
        return True

    pruned = StopPolicy(early_exit=True, last_check=5, report=report)
    assert pruned.checks_at(2) and StopPolicy(early_exit=False, last_check=5, report=report).checks_at(2)
    assert pruned.decide(1, 0.5, passed=False) == "pruned"
    assert pruned.decide(2, 0.99, passed=True) == "success"  # a pass is never pruned
    assert seen == [(1, 0.5), (2, 0.99)]  # the deciding check is reported too: the curve ends at the pass
    hopeless = StopPolicy(early_exit=True, last_check=5, hopeless=lambda check: check >= 2)
    assert hopeless.decide(1, 0.5, passed=False) is None
    assert hopeless.decide(2, 0.5, passed=False) == "hopeless"
    assert StopPolicy(early_exit=False, last_check=5, hopeless=lambda _c: True).decide(2, 0.5, passed=False) is None
    assert StopPolicy(early_exit=True, last_check=0).decide(0, 0.5, passed=False) == "budget"  # nothing trains
