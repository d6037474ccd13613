"""searchmerge: merge the layers that edge vision models have in common.

The public API is the names in ``__all__``: what the README's Python examples use. Each
is imported on first use (PEP 562), so ``import searchmerge`` loads neither torch nor
Optuna, and a part that needs only plain Python stays fast to import.

Example:
    >>> import searchmerge
    >>> study = searchmerge.open_study_file("studies/digits-edge.yaml")  # doctest: +SKIP
    >>> search = searchmerge.open_search(study, strategy="greedy")  # doctest: +SKIP
    >>> search.run(10)  # doctest: +SKIP

Everything else lives in the layer packages (``searchmerge.core``, ``config``, ``data``,
``storage``, ``analysis``, ``training``, ``runtime``, ``search``, ``service``, ``cli``;
docs/concepts.md, "The layout"); their modules' ``__all__`` name what they offer.
"""

from __future__ import annotations

import importlib
from typing import Any

from searchmerge.core.errors import SearchmergeError

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    # a study: open it, search it, evaluate a plan
    "open_study_file": "searchmerge.config.study",
    "open_search": "searchmerge.search.merge_search",
    "SharingPlan": "searchmerge.core.space",
    "Evaluator": "searchmerge.training.evaluate",
    # deployment and the runtime
    "export_deployment": "searchmerge.training.deployment",
    "load_deployment": "searchmerge.training.deployment",
    "SwapRuntime": "searchmerge.runtime.runtime",
    # layer analysis
    "analyze": "searchmerge.analysis",
    "AnalysisResult": "searchmerge.analysis",
    "ShareableGroup": "searchmerge.analysis",
    "LayerSignature": "searchmerge.analysis",
    # workloads
    "ModelSpec": "searchmerge.config.workload",
    "Workload": "searchmerge.config.workload",
    "load_study_file": "searchmerge.config.study",
}

__all__ = ["SearchmergeError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'searchmerge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
