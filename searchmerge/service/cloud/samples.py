"""Sampled frames: labelled from their provenance, stored whole or not at all.

The digits camera generator is deterministic, so the frame a sample names (the
model's stream, its drift scenario, split and index) has a known label: the
generator's own. The service labels every sample that way when it arrives and
refuses, before storing anything, an upload whose frames do not fit the models or
name a frame the generator never made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from searchmerge.core.errors import SearchmergeError
from searchmerge.service.cloud.db import now, samples
from searchmerge.service.footage import Footage
from searchmerge.service.protocol import SampleBatch

__all__ = ["HOLDOUT_EVERY", "LabelledSample", "prune_samples", "recent_samples", "store_samples"]


@dataclass(frozen=True)
class LabelledSample:
    """A stored sample: its frame, its label and where it came from."""

    id: int
    model: str
    scenario: str | None
    label: int
    frame: np.ndarray
    received_at: datetime
    #: The edge that sent it (the drift check weighs how many edges saw a drift).
    edge: str = ""


def store_samples(engine: Engine, deployment: str, edge: str, batch: SampleBatch, footage: Footage) -> int:
    """Label every sample of ``batch`` and store them in one transaction; the number stored.

    Raises:
        SearchmergeError: If any sample cannot be labelled (then none is stored).
    """
    received = now()
    rows = []
    for position, sample in enumerate(batch.samples):
        try:
            label = footage.label(sample)
        except SearchmergeError as exc:
            raise SearchmergeError(f"sample {position}: {exc}") from None
        rows.append(dict(
            deployment=deployment, edge=edge, model=sample.model, edge_version=sample.version,
            scenario=sample.source.scenario, split=sample.source.split, frame_index=sample.source.index,
            label=label, shape_json=json.dumps(sample.frame.shape), frame=sample.frame.array().tobytes(),
            received_at=received,
        ))
    with engine.begin() as conn:
        conn.execute(sa.insert(samples), rows)
    return len(rows)


#: One sample in this many (by id: every process agrees which) is held out for the publish gate
#: (:mod:`searchmerge.service.cloud.gate`): the drift check, and with it the choice of what to
#: re-search on, never reads it, so a re-searched version is judged on samples nothing was
#: trained or selected on. 4: a quarter of what the edges send.
HOLDOUT_EVERY = 4


def recent_samples(
    engine: Engine, deployment: str, *, since: datetime, window: int, held_out: bool | None = None
) -> Mapping[str, list[LabelledSample]]:
    """Per model, its newest ``window`` samples received at or after ``since``, oldest first.

    ``held_out``: only the samples held out for the publish gate (``True``), only the others
    (``False``: what the drift check reads), or all of them (``None``); see :data:`HOLDOUT_EVERY`.
    """
    found: dict[str, list[LabelledSample]] = {}
    with engine.connect() as conn:
        models = conn.execute(sa.select(samples.c.model).where(samples.c.deployment == deployment)
                              .distinct()).scalars().all()
        for model in models:
            query = sa.select(samples).where(samples.c.deployment == deployment, samples.c.model == model,
                                             samples.c.received_at >= since)
            if held_out is not None:
                reserved = samples.c.id % HOLDOUT_EVERY == 0
                query = query.where(reserved if held_out else sa.not_(reserved))
            rows = conn.execute(query.order_by(samples.c.id.desc()).limit(window)).all()
            found[model] = [
                LabelledSample(row.id, row.model, row.scenario, row.label,
                               np.frombuffer(row.frame, dtype="<f4").reshape(json.loads(row.shape_json)),
                               row.received_at, row.edge)
                for row in reversed(rows)
            ]
    return found


def prune_samples(engine: Engine, deployment: str, *, keep: int) -> None:
    """Delete all but the newest ``keep`` samples of each model (the check reads only recent ones)."""
    with engine.begin() as conn:
        models = conn.execute(sa.select(samples.c.model).where(samples.c.deployment == deployment)
                              .distinct()).scalars().all()
        for model in models:
            oldest_kept = conn.execute(
                sa.select(samples.c.id).where(samples.c.deployment == deployment, samples.c.model == model)
                .order_by(samples.c.id.desc()).offset(keep - 1).limit(1)
            ).scalar()
            if oldest_kept is not None:
                conn.execute(sa.delete(samples).where(samples.c.deployment == deployment, samples.c.model == model,
                                                      samples.c.id < oldest_kept))
