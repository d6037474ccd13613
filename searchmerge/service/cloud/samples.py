"""Sampled frames: labelled by the service, stored whole or not at all.

Every sample of an upload is labelled first, by the study's teacher
(:mod:`searchmerge.service.cloud.labelling`: a detector for camera footage, the generator,
by provenance, for the digits) and the
upload is refused, before anything is stored, when one cannot be. The frame is stored as
the model sees it, in 8-bit PNG, with its label, in the same row (one transaction for
the upload).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from searchmerge.data.sources.base import model_input
from searchmerge.data.sources.samples import HOLDOUT_EVERY as SAMPLES_HOLDOUT_EVERY
from searchmerge.data.sources.samples import held_out_clause, is_held_out
from searchmerge.service.cloud.db import now, samples
from searchmerge.service.cloud.labelling import Labeller, target_json
from searchmerge.service.protocol import SampleBatch

__all__ = ["HOLDOUT_EVERY", "EncodedFrame", "LabelledSample", "count_samples", "held_out_clause", "is_held_out", "prune_samples",
           "recent_samples", "store_samples", "stored_frame"]


@dataclass(frozen=True)
class EncodedFrame:
    """A stored frame as the database holds it: decoded only when a model must see it.

    The drift check reads each model's whole window at every check, but scores only the
    samples it has not scored before (:func:`~searchmerge.service.cloud.monitor.check_samples`):
    decoding the others would cost the service most of its time under load.
    """

    data: bytes
    encoding: str | None
    shape: tuple[int, int, int]
    #: The source's (mean, std), which :func:`~searchmerge.data.sources.base.model_input` applies.
    normalisation: tuple[float, float]

    @classmethod
    def of(cls, row: Any) -> EncodedFrame:
        """The frame of a ``samples`` row."""
        channels, height, width = json.loads(row.shape_json)
        # A raw frame (stored by an older version) is stored normalised and names none.
        mean, std = json.loads(row.normalisation_json) if row.normalisation_json else (0.0, 1.0)
        return cls(row.frame, row.encoding, (channels, height, width), (mean, std))

    def decode(self) -> np.ndarray:
        """The frame as its model takes it (float32, C x H x W)."""
        if self.encoding is None:  # stored raw by an older version
            return np.frombuffer(self.data, dtype="<f4").reshape(self.shape)
        from PIL import Image

        channels, height, width = self.shape
        with Image.open(io.BytesIO(self.data)) as image:
            pixels = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
        return model_input(pixels, self.normalisation)


@dataclass(frozen=True)
class LabelledSample:
    """A stored sample: its frame, its label and where it came from."""

    id: int
    model: str
    scenario: str | None
    label: int
    #: The frame, decoded, or as stored (then decoded the first time :attr:`frame` is read).
    stored: np.ndarray | EncodedFrame
    received_at: datetime
    #: The edge that sent it (the drift check weighs how many edges saw a drift).
    edge: str = ""

    @functools.cached_property
    def frame(self) -> np.ndarray:
        """The frame as its model takes it (float32, C x H x W)."""
        return self.stored if isinstance(self.stored, np.ndarray) else self.stored.decode()


def store_samples(engine: Engine, deployment: str, edge: str, batch: SampleBatch, labeller: Labeller, *,
                  runs: Collection[str] | None = None) -> int:
    """Label every sample of ``batch`` and store frames and labels in one transaction; the number stored.

    Args:
        runs: The models the edge runs (``None``: any of the deployment's); see :meth:`Labeller.label`.

    Raises:
        SearchmergeError: If any sample cannot be labelled (then none is stored).
    """
    received = now()
    rows = []
    for sample, labelled in zip(batch.samples, labeller.label(batch, runs=runs)):
        view = labelled.view
        rows.append({
            "deployment": deployment, "edge": edge, "model": sample.model, "edge_version": sample.version,
            "scenario": labelled.scenario, "split": labelled.split, "frame_index": labelled.index,
            "label": labelled.label, "shape_json": json.dumps([view.shape[2], view.shape[0], view.shape[1]]),
            "frame": labelled.png, "encoding": "png", "target_json": target_json(labelled.target),
            "normalisation_json": json.dumps(list(labeller.normalisation(sample.model))), "received_at": received,
        })
    with engine.begin() as conn:
        conn.execute(sa.insert(samples), rows)
    return len(rows)


def stored_frame(row: Any) -> np.ndarray:
    """A stored sample's frame as its model takes it (float32, C x H x W)."""
    return EncodedFrame.of(row).decode()


#: About one sample in this many (by a hash of its id, see :func:`is_held_out`) is held out for the publish gate
#: (:mod:`searchmerge.service.cloud.gate`): neither the drift check nor the re-search on the samples (``format: samples``) reads it. Defined with
#: the samples data source, which must leave the same samples out.
HOLDOUT_EVERY = SAMPLES_HOLDOUT_EVERY


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
                reserved = held_out_clause(samples.c.id)
                query = query.where(reserved if held_out else sa.not_(reserved))
            rows = conn.execute(query.order_by(samples.c.id.desc()).limit(window)).all()
            found[model] = [LabelledSample(row.id, row.model, row.scenario, row.label, EncodedFrame.of(row),
                                           row.received_at, row.edge) for row in reversed(rows)]
    return found


def count_samples(engine: Engine, deployment: str, *, since: datetime) -> dict[str, int]:
    """Per model, its samples received at or after ``since`` that a re-search on them reads (not held out)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(samples.c.model, sa.func.count()).where(
            samples.c.deployment == deployment, samples.c.received_at >= since,
            sa.not_(held_out_clause(samples.c.id))).group_by(samples.c.model)).all()
    return {model: int(count) for model, count in rows}


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
