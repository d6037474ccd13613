"""How much original training data to replay when models retrain on the edges' samples.

A re-search on ``samples:DEPLOYMENT`` trains each model on the frames its edges sent (the
evening) with a share of its original training frames mixed in (the day,
``data.sources.samples.REPLAY_SHARE``). Too little replay and a model forgets the day; too much
and it learns the evening slowly. This measures both: each original model fine-tuned on the
service's labelled samples of a drift scenario with each replay share, then scored on the
samples' test split (the evening, later in time than what it trained on) and on its original
validation data (the day).

    python benchmarks/bench_replay.py --study studies/digits-edge.yaml --scenario night --samples 128 \\
        --replay 0,0.25,0.5,0.75 --epochs 3

Prints one line per share: each model's accuracy on the evening and the day, and their means.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
from pathlib import Path

from searchmerge.config.data_request import model_request
from searchmerge.config.settings import TrainSettings
from searchmerge.config.study import open_study_file
from searchmerge.data.sources.base import pixels_of
from searchmerge.data.sources.samples import SamplesSource
from searchmerge.service.cloud.db import open_engine
from searchmerge.service.cloud.labelling import Labeller
from searchmerge.service.cloud.samples import store_samples
from searchmerge.service.protocol import DigitsSource, Sample, SampleBatch, encode_frame
from searchmerge.training.prepare import prepare_study, source_context
from searchmerge.training.train import default_device, score, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/digits-edge.yaml", help="a digits study file")
    parser.add_argument("--scenario", default="night", help="the drift the edges' cameras see")
    parser.add_argument("--samples", type=int, default=128, help="samples per model the edges sent")
    parser.add_argument("--replay", default="0,0.25,0.5,0.75", help="replay shares to compare")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.003)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    shutil.copy(args.study, work / "study.yaml")
    study = open_study_file(work / "study.yaml", storage=f"sqlite:///{work / 'study.db'}")
    prepared = prepare_study(study)
    labeller = Labeller(study)
    engine = open_engine(study.storage)
    for spec in study.workload.models:
        test = labeller.footage.data(args.scenario)[spec.name].test
        normalisation = labeller.normalisation(spec.name)
        store_samples(engine, study.workload.name, "bench", SampleBatch(samples=[
            Sample(model=spec.name, frame=encode_frame(pixels_of(test[i][0].numpy(), normalisation)),
                   source=DigitsSource(kind="digits", scenario=args.scenario, index=i))
            for i in range(min(args.samples, len(test)))]), labeller)
    context = source_context(study.settings, study_path=study.path)
    device = default_device()
    settings = TrainSettings(epochs=args.epochs, lr=args.lr)
    rows = []
    for share in (None, *(float(v) for v in args.replay.split(","))):
        scores = {}
        for spec in study.workload.models:
            request = model_request(spec)
            data = SamplesSource().open({"storage": study.storage, "deployment": study.workload.name,
                                         "model": spec.name, "original": {"format": request.format, **request.options},
                                         "seed": study.settings.seed, "replay": share or 0.0}, context,
                                        task=request.task)
            model = copy.deepcopy(prepared.models[spec.name])
            if share is not None:  # None: the original as it is
                train_model(model, data.train, request.adapter, settings, seed=study.settings.seed, device=device)
            kind = prepared.kinds[spec.name]
            scores[spec.name] = (score(model, data.test, kind, device=device),
                                 score(model, prepared.data[spec.name].val, kind, device=device))
        rows.append(("original" if share is None else f"replay {share:g}", scores))
    for label, scores in rows:
        evening = sum(s[0] for s in scores.values()) / len(scores)
        day = sum(s[1] for s in scores.values()) / len(scores)
        per_model = ", ".join(f"{n} {s[0]:.3f}/{s[1]:.3f}" for n, s in scores.items())
        print(f"{label:12s} evening {evening:.3f} day {day:.3f}  ({per_model}; evening/day per model)")


if __name__ == "__main__":
    main()
