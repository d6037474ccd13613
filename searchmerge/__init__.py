"""searchmerge: merge the layers that edge vision models have in common.

The public API is re-exported here. Heavy modules (torch) are imported lazily, on
first use of a name, so that ``import searchmerge`` stays fast for the parts that
are plain Python (search space, strategies).
"""

from __future__ import annotations

import importlib
from typing import Any

from searchmerge.errors import SearchmergeError

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": "searchmerge.analysis",
    "AnalysisResult": "searchmerge.analysis",
    "ShareableGroup": "searchmerge.analysis",
    "LayerSignature": "searchmerge.analysis",
    "ModelSpec": "searchmerge.workload",
    "Workload": "searchmerge.workload",
    "load_study_file": "searchmerge.workload",
}

__all__ = ["SearchmergeError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'searchmerge' has no attribute {name!r}")
