"""The search: an Optuna study over sharing plans, its strategies, drift and the re-search.

* :mod:`~searchmerge.search.merge_search`: the search as an Optuna study
  (:func:`~searchmerge.search.merge_search.open_search`), its best plan and export;
* :mod:`~searchmerge.search.strategies`: the samplers that propose plans;
* :mod:`~searchmerge.search.scenarios`: named drift scenarios (simulated drift) and drifted data;
* :mod:`~searchmerge.search.drift_check`: does a deployed plan hold on drifted data;
* :mod:`~searchmerge.search.research`: the incremental re-search from a deployed plan.
"""
