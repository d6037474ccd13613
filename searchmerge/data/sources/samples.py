"""The frames the edges sent, as the merging service labelled them: ``format: samples``.

After a drift the models must learn what the cameras see now, and be judged on it. The
merging service stores every sampled frame with the label its teacher gave it (the
``searchmerge_samples`` table of the study's database, one row per frame: the model's view
as 8-bit PNG, its label, when it arrived); this source reads one model's rows::

    data: {format: samples, storage: sqlite:///studies/digits.db, deployment: digits-edge, model: gate-digit,
           original: {format: digits}, replay: 0.5}

* **Held out**: about one row in :data:`HOLDOUT_EVERY`, chosen by a hash of its id
  (:func:`is_held_out`), is left for the service's publish gate.
* **Splits by time**: the rows in the order they arrived, cut into train, validation and test
  (``split``, default 0.6/0.2/0.2), never shuffled: neighbouring frames of a camera are near
  duplicates, so a random split would judge the models on copies of their training frames.
* ``seed``: the seed the ``original`` data is opened with (the study's, so that it is the data the
  model was trained on, not a drift scenario's new footage).
* A model with no samples (no camera of it was sampled) keeps its own data.
* **Replay**: ``replay`` (default :data:`REPLAY_SHARE`) is the share of the training split
  taken from the model's ``original`` data (its own ``data:`` section), so that a model learns
  the evening without forgetting the day. Validation and test are the samples alone: a
  re-search is judged on what the cameras see now.

The table is read with SQLAlchemy Core by name, so this source needs nothing of the service
(which sits above the data layer); ``searchmerge research STUDY --data samples:DEPLOYMENT``
builds these sections for every model (:mod:`searchmerge.search.scenarios`).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from searchmerge.core.errors import SearchmergeError
from searchmerge.core.keys import check_keys
from searchmerge.core.redact import redact
from searchmerge.data.sources.base import (
    SPLITS,
    Source,
    SourceContext,
    SplitData,
    TaskData,
    digest,
    file_identity,
    model_input,
)
from searchmerge.data.sources.images import image_files

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

__all__ = ["HOLDOUT_EVERY", "REPLAY_SHARE", "SAMPLES_TABLE", "SamplesSource", "held_out_clause", "is_held_out"]

#: The share of a re-search's training frames replayed from the original training data. Half:
#: as much of the day as of the evening, so neither is forgotten (not measured yet).
REPLAY_SHARE = 0.5
#: About one sample in this many is held out for the merging service's publish gate: the drift check
#: never reads it and this source leaves it out, so a re-searched version is judged on samples nothing
#: was trained or selected on. 4: a quarter of what the edges send. Which ones: :func:`is_held_out`.
HOLDOUT_EVERY = 4
#: Knuth's multiplicative hash (2^32 over the golden ratio) and its range: the held-out rule's hash of an id.
_HOLDOUT_HASH = 2654435761
_HOLDOUT_RANGE = 2**32


def is_held_out(sample_id: int) -> bool:
    """Whether the sample with row id ``sample_id`` is held out for the publish gate.

    Decided by a hash of the id, not by ``id % HOLDOUT_EVERY``: an edge uploads one sample of
    each of its models in turn, so with four models every id divisible by four was the same
    model's, and the gate held out all of that model's samples and none of the others'
    (measured by bench_edge_cloud). The top bits of a multiplicative hash spread every such
    stride evenly (a quarter, within a few percent, for strides 1-16), and every process,
    in Python or in SQL (:func:`held_out_clause`), agrees which samples they are.
    """
    return (sample_id * _HOLDOUT_HASH) % _HOLDOUT_RANGE < _HOLDOUT_RANGE // HOLDOUT_EVERY


def held_out_clause(id_column: ColumnElement[Any]) -> ColumnElement[bool]:
    """:func:`is_held_out` as a SQL condition on a samples table's id column (SQLite and PostgreSQL)."""
    import sqlalchemy as sa

    hashed = (sa.cast(id_column, sa.BigInteger) * sa.literal(_HOLDOUT_HASH, sa.BigInteger)) % sa.literal(
        _HOLDOUT_RANGE, sa.BigInteger)
    return hashed < _HOLDOUT_RANGE // HOLDOUT_EVERY


#: The merging service's table of labelled samples.
SAMPLES_TABLE = "searchmerge_samples"
_DEFAULT_SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}


class _Frames(Dataset[tuple[torch.Tensor, Any]]):
    """Decoded sample frames (float32, as the model takes them) and their targets."""

    def __init__(self, frames: list[np.ndarray], targets: list[Any]) -> None:
        self.frames = frames
        self.targets = targets

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        target = self.targets[index]
        if isinstance(target, dict):
            target = {"boxes": torch.tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
                      "labels": torch.tensor(target["labels"], dtype=torch.int64)}
        return torch.from_numpy(self.frames[index]), target


class _Replayed(Dataset[tuple[torch.Tensor, Any]]):
    """Some original training frames, with a class as a plain ``int`` as the samples have it (sources give
    a class as an ``int`` or a 0-d tensor, and one batch must not mix the two)."""

    def __init__(self, data: Dataset[Any], indices: list[int]) -> None:
        self.data = data
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, target = self.data[self.indices[index]]
        return image, int(target) if isinstance(target, (int, torch.Tensor)) else target


class SamplesSource(Source):
    """``format: samples``: ``storage`` and ``deployment`` (or ``root``), ``model``, ``original``, ``replay``,
    ``split``, ``seed``.

    ``root`` instead of the database: a folder of labelled frames, ``ROOT/MODEL/LABEL/NAME.png`` (LABEL a
    class number; frames in the order of their names, resized to the model's input).
    """

    keys = frozenset({"storage", "deployment", "root", "model", "original", "seed", "replay", "split"})

    def task_kind(self, task: str) -> str | None:
        """The kind of a task a source names (the digits' ``digit``): the samples are the original's task."""
        from searchmerge.data.sources import format_names, get_source

        kinds = (get_source(name).task_kind(task) for name in format_names() if name != "samples")
        return next((kind for kind in kinds if kind is not None), None)

    def check(self, options: Mapping[str, Any], task: str) -> None:
        where = "data (samples)"
        for key in ("model",) if "root" in options else ("storage", "deployment", "model"):
            if not isinstance(options.get(key), str) or not options[key]:
                raise SearchmergeError(f"{where}: needs '{key}' (text), got {options.get(key)!r}")
        if "root" in options and ("storage" in options or "deployment" in options):
            raise SearchmergeError(f"{where}: give either root (a folder of labelled frames) or storage and"
                                   " deployment (the service's database), not both")
        if not isinstance(options.get("original"), Mapping) or "format" not in options["original"]:
            raise SearchmergeError(f"{where}: needs 'original', the model's own data section (with a format)")
        _replay(options.get("replay", REPLAY_SHARE), where)
        _shares(options.get("split", _DEFAULT_SPLIT), where)

    def open(self, options: Mapping[str, Any], context: SourceContext, *, task: str) -> TaskData:
        from searchmerge.data.sources import get_source

        where = "data (samples)"
        self.check(options, task)
        original_options = dict(options["original"])
        source = get_source(str(original_options.pop("format")))
        check_keys(f"{where}, original", original_options, source.keys)
        if "seed" in options:  # the study's own seed: the original data as the model was trained on it
            context = dataclasses.replace(context, seed=int(options["seed"]))
        original = source.open(original_options, context, task=task)
        expected = tuple(original.val[0][0].shape)
        if "root" in options:
            folder = context.path(options["root"], f"{where}: root") / str(options["model"])
            ids, frames, targets = _read_folder(folder, expected, source.normalisation, where)
        else:
            ids, frames, targets = _read(options, where)
        if not ids:  # no camera of this model was sampled: it keeps its own data
            return original
        shares = _shares(options.get("split", _DEFAULT_SPLIT), where)
        cuts = np.cumsum([shares[name] for name in SPLITS])
        bounds = [0, *(round(c * len(ids)) for c in cuts)]
        rows = {name: range(bounds[i], bounds[i + 1]) for i, name in enumerate(SPLITS)}
        empty = [name for name in SPLITS if not rows[name]]
        if empty:
            raise SearchmergeError(f"{where}: {_origin(options)} has {len(ids)} labelled samples of model"
                                   f" {options['model']!r}, too few for a {empty[0]} split; let the edges send more"
                                   " first")
        if frames[0].shape != expected:
            raise SearchmergeError(f"{where}: the samples of model {options['model']!r} are {list(frames[0].shape)},"
                                   f" but its original data is {list(expected)}")
        split = {name: _Frames([frames[i] for i in r], [targets[i] for i in r]) for name, r in rows.items()}
        replay = _replay(options.get("replay", REPLAY_SHARE), where)
        wanted = min(len(original.train), round(replay / (1 - replay) * len(split["train"]))) if replay else 0
        chosen = np.sort(np.random.default_rng(context.seed).choice(len(original.train), wanted, replace=False))
        train: Dataset[Any] = ConcatDataset([split["train"], _Replayed(original.train, chosen.tolist())])
        labels: dict[str, np.ndarray] = {}
        if original.kind == "classification":
            labels = {name: np.asarray(data.targets, dtype=np.int64) for name, data in split.items()}
            replayed = original.class_labels("train")
            labels["train"] = np.concatenate([labels["train"], replayed[chosen] if replayed is not None
                                              else np.asarray([int(original.train[i][1]) for i in chosen])])
        return SplitData(
            train=train, val=split["val"], test=split["test"], kind=original.kind, num_classes=original.num_classes,
            fingerprint=digest({"format": "samples", "from": options.get("deployment", "folder"), "model": options["model"],
                                "samples": [ids[0], ids[-1], len(ids)] if "root" not in options else ids, "split": shares, "replay": replay,
                                "replayed": len(chosen), "original": original.fingerprint}),
            description=f"{len(ids)} samples of model {options['model']!r} from"
                        f" {_origin(options)}, with {len(chosen)} original training frames replayed",
            labels=labels,
            class_names=getattr(original, "class_names", ()),
        )


def _read(options: Mapping[str, Any], where: str) -> tuple[list[int], list[np.ndarray], list[Any]]:
    """The model's labelled samples, oldest first: their ids, frames (as the model takes them) and targets."""
    import sqlalchemy as sa
    from PIL import Image

    table = sa.table(SAMPLES_TABLE, *(sa.column(name) for name in (
        "id", "deployment", "model", "label", "shape_json", "frame", "encoding", "normalisation_json", "target_json")))
    try:
        engine = sa.create_engine(str(options["storage"]))
        with engine.connect() as conn:
            rows = conn.execute(sa.select(table).where(table.c.deployment == options["deployment"],
                                                       table.c.model == options["model"],
                                                       table.c.encoding == "png",
                                                       sa.not_(held_out_clause(table.c.id)))
                                .order_by(table.c.id)).all()
        engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        raise SearchmergeError(f"{where}: cannot read the samples of deployment {options['deployment']!r}:"
                               f" {redact(str(exc).splitlines()[0])}") from None
    ids, frames, targets = [], [], []
    for row in rows:
        channels, height, width = json.loads(row.shape_json)
        with Image.open(io.BytesIO(row.frame)) as image:
            pixels = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
        ids.append(int(row.id))
        frames.append(model_input(pixels, tuple(json.loads(row.normalisation_json))))
        targets.append(json.loads(row.target_json) if row.target_json else int(row.label))
    return ids, frames, targets


def _read_folder(
    folder: Path, shape: tuple[int, ...], normalisation: tuple[float, float], where: str
) -> tuple[list[Any], list[np.ndarray], list[Any]]:
    """A folder of one model's labelled frames, ``LABEL/NAME.png`` (or .jpg), in the order of their names;
    each frame's identity (path, size, modification time) stands for its id.

    Each frame is resized to the model's input (``shape``: channels, height, width) and taken as the
    model's original data takes 8-bit pixels (``normalisation``).
    """
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        return [], [], []
    files = sorted(((path.name, int(label.name), path) for label in folder.iterdir() if label.is_dir()
                    and label.name.isdigit() for path in image_files(label)), key=lambda item: item[0])
    channels, height, width = shape
    frames, targets = [], []
    for _, label, path in files:
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise SearchmergeError(f"{where}: frame {str(path)!r} does not decode: {exc}") from None
        frames.append(model_input(pixels, normalisation))
        targets.append(label)
    return file_identity([path for _, _, path in files], folder), frames, targets


def _origin(options: Mapping[str, Any]) -> str:
    return f"folder {str(options['root'])!r}" if "root" in options else f"deployment {options['deployment']!r}"


def _replay(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise SearchmergeError(f"{where}: replay must be a share in [0, 1) of the training frames, got {value!r}")
    return float(value)


def _shares(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or set(value) != set(SPLITS) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in value.values()
    ) or sum(value.values()) > 1 + 1e-9:
        raise SearchmergeError(f"{where}: split must give train, val and test shares in (0, 1) adding up to at most 1,"
                               f" got {value!r}")
    return {name: float(value[name]) for name in SPLITS}
