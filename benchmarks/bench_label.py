"""searchmerge label on the campus footage: frames per second, and agreement with the shipped labels.

Run by hand: ``python benchmarks/bench_label.py [--study studies/campus.yaml] [--stride 1] [--threshold T] [--threads N] [--json]``.

It labels ``studies/campus/campus.mp4`` with the study's shipped teacher
(``studies/campus/ssdlite-person.onnx``, run by onnxruntime) through the same library call
as ``searchmerge label``, into a temporary folder, and reports the frames labelled per second
(decoding included) and, per frame, how the person count it finds agrees with the shipped
``campus-boxes.json``: Pearson correlation, mean absolute difference and the share of frames
with exactly the same count. The shipped labels were made by the same detector on the
original 768x576 frames; the committed video is a 384x288 H.264 re-encoding, so the teacher
sees other pixels (the graph resizes both to 300x300) and the counts need not agree exactly.

``--tune`` chooses the teacher's score threshold without grading it on the frames it was
chosen on: it labels once at the lowest candidate (the labels keep every box's score), picks
the candidate whose per-frame counts differ least from the shipped ones (mean absolute
difference) on the first half of the video (the tuning frames), and reports every candidate's
agreement on the second half (held out), which played no part in the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from searchmerge.core.errors import SearchmergeError
from searchmerge.data.sources.frame_labels import read_frame_labels
from searchmerge.data.sources.frames import Footage
from searchmerge.training.labelling import LabelRun, label

ROOT = Path(__file__).resolve().parents[1]


def person_counts(path: Path, footage: Footage, frames: list[int]) -> np.ndarray:
    """How many person boxes each of ``frames`` has in the labels file ``path``."""
    labels = read_frame_labels(path, footage.frame_count, (footage.height, footage.width))
    person = labels.classes.index("person")
    return np.asarray([int((labels.classes_of[frame] == person).sum()) for frame in frames])


def label_source(args: argparse.Namespace, out: Path, threshold: float | None) -> tuple[LabelRun, Footage, list[int]]:
    """Label ``args.source`` into ``out`` as ``searchmerge label`` does; the run, the footage and the frames labelled."""
    run = label(args.source, args.study, out, stride=args.stride, threshold=threshold,
                progress=None if args.json else lambda line: print(line, file=sys.stderr))
    footage = Footage.probe(args.source)
    return run, footage, list(range(0, footage.frame_count, args.stride))


def counts_by_threshold(path: Path, frames: list[int], thresholds: list[float]) -> dict[float, np.ndarray]:
    """Per threshold, how many person boxes scored at or above it each of ``frames`` has in ``path``."""
    document = json.loads(path.read_text())
    frame_of = {image["id"]: image["frame_index"] for image in document["images"]}
    person = next(c["id"] for c in document["categories"] if c["name"] == "person")
    scores: dict[int, list[float]] = {}
    for box in document["annotations"]:
        if box["category_id"] == person:
            scores.setdefault(frame_of[box["image_id"]], []).append(float(box["score"]))
    return {t: np.asarray([sum(s >= t for s in scores.get(f, [])) for f in frames]) for t in thresholds}


def agreement(ours: np.ndarray, shipped: np.ndarray) -> dict[str, float]:
    """How per-frame counts agree: correlation, mean absolute difference, shares equal, fewer, more."""
    return {
        "pearson": round(float(np.corrcoef(ours, shipped)[0, 1]), 4),
        "mean_abs_difference": round(float(np.abs(ours - shipped).mean()), 4),
        "exact_share": round(float((ours == shipped).mean()), 4),
        "mean_count": round(float(ours.mean()), 3), "shipped_mean_count": round(float(shipped.mean()), 3),
        "fewer_share": round(float((ours < shipped).mean()), 4), "more_share": round(float((ours > shipped).mean()), 4),
    }


TUNING_THRESHOLDS = [0.30, 0.35, 0.40, 0.45, 0.50]


def tune(args: argparse.Namespace) -> None:
    """Choose the threshold on the first half of the frames, report every candidate on the second."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "boxes.json"
        _, footage, frames = label_source(args, out, min(TUNING_THRESHOLDS))
        ours = counts_by_threshold(out, frames, TUNING_THRESHOLDS)
        shipped = person_counts(args.shipped, footage, frames)
    half = len(frames) // 2
    tuning = {t: agreement(c[:half], shipped[:half]) for t, c in ours.items()}
    chosen = min(TUNING_THRESHOLDS, key=lambda t: tuning[t]["mean_abs_difference"])
    held_out = {t: agreement(c[half:], shipped[half:]) for t, c in ours.items()}
    result = {"tuning_frames": f"{frames[0]}-{frames[half - 1]}", "held_out_frames": f"{frames[half]}-{frames[-1]}",
              "chosen": chosen, "tuning": tuning, "held_out": held_out}
    if args.json:
        print(json.dumps(result))
        return
    print(f"threshold chosen on frames {result['tuning_frames']} (lowest mean |difference|): {chosen}")
    print(f"agreement on the held-out frames {result['held_out_frames']}:")
    print("threshold  tuning MAD  held-out: people/frame (shipped)  Pearson  MAD   equal  fewer/more")
    for t in TUNING_THRESHOLDS:
        h = held_out[t]
        mark = " <- chosen" if t == chosen else ""
        print(f"{t:9.2f}  {tuning[t]['mean_abs_difference']:10.3f}  {h['mean_count']:6.2f} ({h['shipped_mean_count']:.2f})"
              f"{'':17}{h['pearson']:7.3f}  {h['mean_abs_difference']:.3f}  {h['exact_share']:.1%}"
              f"  {h['fewer_share']:.1%}/{h['more_share']:.1%}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", type=Path, default=ROOT / "studies" / "campus.yaml")
    parser.add_argument("--source", type=Path, default=ROOT / "studies" / "campus" / "campus.mp4")
    parser.add_argument("--shipped", type=Path, default=ROOT / "studies" / "campus" / "campus-boxes.json")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=None, help="instead of the teacher's (0.5 for campus)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime's intra-op threads (OMP_NUM_THREADS; default: its own choice)")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of text")
    parser.add_argument("--tune", action="store_true",
                        help="choose the threshold on the first half of the video, report on the second")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.tune:
        try:
            tune(args)
        except SearchmergeError as exc:
            sys.exit(f"bench_label: error: {exc}")
        return
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "boxes.json"
            run, footage, frames = label_source(args, out, args.threshold)
            ours = person_counts(out, footage, frames)
            shipped = person_counts(args.shipped, footage, frames)
    except SearchmergeError as exc:
        sys.exit(f"bench_label: error: {exc}")
    result = {
        "source": str(args.source.relative_to(ROOT) if args.source.is_relative_to(ROOT) else args.source),
        "frames": run.frames, "stride": args.stride, "threshold": args.threshold, "seconds": round(run.seconds, 1),
        "frames_per_second": round(run.frames_per_second, 2), "cpus": os.cpu_count(),
        "boxes": run.boxes, "shipped_boxes": int(shipped.sum()), **agreement(ours, shipped),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['frames']} frames labelled in {result['seconds']} s: {result['frames_per_second']} frames/s"
          f" ({result['cpus']} CPUs)")
    print(f"person counts against the shipped labels: Pearson {result['pearson']}, mean |difference|"
          f" {result['mean_abs_difference']}, exactly equal on {result['exact_share']:.1%} of frames"
          f" (fewer on {result['fewer_share']:.1%}, more on {result['more_share']:.1%});"
          f" {result['boxes']} boxes against {result['shipped_boxes']}")


if __name__ == "__main__":
    main()
