"""Which search a command reads when it is not told: one rule, for every command.

``export``, ``confirm``, ``drift-check``, ``serve``, ``research`` (its parent), ``report --export`` and
the ``best`` plan of ``profile`` and ``simulate`` each read the best plan of one search.
They used to default to the search named ``WORKLOAD-greedy``, so after a surrogate search
alone they failed, and beside a better surrogate search they silently read the greedy one.
:func:`select_search` decides for all of them:

- a study name given is the search;
- otherwise the search whose best feasible plan is best among the workload's searches on
  its own data (every searchmerge study of the workload in the storage, whatever its
  strategy; re-searches on a drift scenario's data are left out, since their plans were
  judged on other data and cannot be ranked against the rest);
- when that does not single one out, it fails with one line listing the searches and
  asking for a name, rather than guess.
"""

from __future__ import annotations

from collections.abc import Sequence

from searchmerge.config.study import StudyFile
from searchmerge.core.errors import SearchmergeError
from searchmerge.core.progress import Progress
from searchmerge.search.merge_search import (
    _ATTR_PREFIX,
    MergeSearch,
    _study_summaries,
    load_search,
)

__all__ = ["best_search", "select_search"]


def select_search(study: StudyFile, study_name: str | None = None, *, progress: Progress | None = None) -> MergeSearch:
    """The search a command reads: ``study_name``, or else the one with the best feasible plan.

    Args:
        study: The study file.
        study_name: The search to read; ``None`` chooses by :func:`best_search` among the
            workload's searches on its own data.
        progress: Told which search was chosen, and among which, when there was a choice.

    Raises:
        SearchmergeError: If there is no such search, or the choice is ambiguous (the
            message lists the searches and asks for ``--study-name``).
    """
    if study_name is not None:
        return load_search(study, study_name=study_name)
    names = _own_data_searches(study)
    if not names:
        raise SearchmergeError(
            f"no search of {study.workload.name!r} in {study.storage}; run one first (searchmerge search {study.path})"
        )
    chosen = best_search([load_search(study, study_name=name) for name in names])
    if len(names) > 1 and progress is not None:
        progress(f"search {chosen.study_name!r} has the best feasible plan of {len(names)} searches"
                 f" ({', '.join(names)}); --study-name reads another")
    return chosen


def _own_data_searches(study: StudyFile) -> list[str]:
    """The names of the workload's searches on its own data (no drift scenario), sorted.

    Read from the studies' attributes, so that no search is opened (and no drifted
    data made) only to be left out.
    """
    return sorted(
        summary.study_name
        for summary in _study_summaries(study.storage)
        if summary.user_attrs.get(_ATTR_PREFIX + "workload") == study.workload.name
        and summary.user_attrs.get(_ATTR_PREFIX + "scenario") is None
    )


def best_search(searches: Sequence[MergeSearch]) -> MergeSearch:
    """The search whose best feasible plan is best; one search is itself, feasible plan or not.

    Each search's best plan is its own :meth:`~searchmerge.search.MergeSearch.best`, and
    the best plans are compared by the objective value the searches maximised (bytes
    saved, or with a ``deploy:`` section the frames processed, ties by bytes saved), as
    Optuna recorded it: the ranking is the searches' own, not a second copy of it.

    Raises:
        SearchmergeError: If several searches exist and none has a feasible plan, or the
            best plans of two searches tie on the objective but differ; the message
            lists every search and asks for ``--study-name``.
    """
    if not searches:
        raise SearchmergeError("no search to choose from")
    if len(searches) == 1:
        return searches[0]
    scored = [(search, best, _objective_value(search, best.number))
              for search in searches if (best := search.best()) is not None]
    top = max((value for _, _, value in scored), default=None)
    leaders = [(search, best) for search, best, value in scored if value == top]
    if not leaders or len({best.plan for _, best in leaders}) > 1:
        why = "none has a feasible plan" if not leaders else "their best feasible plans differ but tie on the objective"
        listed = ", ".join(_described(search) for search in searches)
        raise SearchmergeError(f"{len(searches)} searches could be meant and {why}: {listed}; give --study-name NAME")
    return leaders[0][0]  # the same plan found by several searches: the first by name


def _objective_value(search: MergeSearch, number: int) -> float:
    """The objective value Optuna recorded for trial ``number`` of ``search``."""
    value = next(t.value for t in search.finished_trials() if t.number == number)
    assert value is not None, "a feasible trial is COMPLETE and has its value"
    return float(value)


def _described(search: MergeSearch) -> str:
    """``NAME (trial N, saves X MB)``, or ``NAME (no feasible plan)``: what the ambiguity error lists."""
    best = search.best()
    if best is None:
        return f"{search.study_name} (no feasible plan)"
    return f"{search.study_name} (trial {best.number}, {len(best.plan)} groups, saves {best.saved_bytes / 1e6:.3f} MB)"
