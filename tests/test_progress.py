"""Progress: lines always, a bar with an ETA only on a terminal (or when asked)."""

from __future__ import annotations

import io

from searchmerge.cli.progress import TerminalProgress
from searchmerge.core.progress import counted


def test_lines_stay_and_no_bar_is_drawn_when_the_output_is_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = TerminalProgress(stream)
    with counted(progress, 3, "prepare") as steps:
        steps.advance()
        progress("fine-tuned a")
        steps.grow(2)
        steps.reach(5)
    assert stream.getvalue() == "fine-tuned a\n"


def test_a_bar_counts_steps_with_an_eta_and_the_lines_go_above_it() -> None:
    stream = io.StringIO()
    progress = TerminalProgress(stream, bars=True)
    with counted(progress, 4, "search s", done=1, unit="trial") as trials:
        trials.reach(2)
        progress("trial 2: feasible")
        trials.advance()
    out = stream.getvalue()
    assert "search s" in out and "/4" in out and "trial" in out
    assert "trial 2: feasible\n" in out
    assert "2/4" in out  # redrawn at most twice a second: the last count shown may lag


def test_a_plain_callable_counts_nothing() -> None:
    lines: list[str] = []
    with counted(lines.append, 2, "x") as steps:
        steps.advance(2)
    assert lines == []
