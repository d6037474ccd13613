"""Task kinds by name: how a model of each kind is batched, trained, scored and recalibrated.

Kinds are registered by name and imported on first use, so that a classification study
never imports what detection needs (torchmetrics). A study file's ``task:`` names a kind
(``classification``, ``detection``) or a task of a data source that implies one (the
digits demo's ``digit``, ``parity``, ...).

Example:
    >>> from searchmerge.data.tasks import get_kind
    >>> get_kind("classification").metric_name
    'top-1 accuracy'
"""

from __future__ import annotations

from searchmerge.core.registry import Registry
from searchmerge.data.tasks.base import Batch, TaskKind

__all__ = ["Batch", "TaskKind", "get_kind", "kind_names", "register_kind"]

_KINDS: Registry[TaskKind] = Registry("task kind", TaskKind, {
    "classification": "searchmerge.data.tasks.classification:Classification",
    "detection": "searchmerge.data.tasks.detection:Detection",
})

#: Register a task kind: ``register_kind("segmentation", "mypkg.seg:Segmentation")``.
register_kind = _KINDS.register
#: The registered task kinds, sorted.
kind_names = _KINDS.names
#: The adapter of a task kind, by name.
get_kind = _KINDS.get
