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
from searchmerge.training.labelling import label

ROOT = Path(__file__).resolve().parents[1]


def person_counts(path: Path, footage: Footage, frames: list[int]) -> np.ndarray:
    """How many person boxes each of ``frames`` has in the labels file ``path``."""
    labels = read_frame_labels(path, footage.frame_count, (footage.height, footage.width))
    person = labels.classes.index("person")
    return np.asarray([int((labels.classes_of[frame] == person).sum()) for frame in frames])


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
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "boxes.json"
            run = label(args.source, args.study, out, stride=args.stride, threshold=args.threshold,
                        progress=None if args.json else lambda line: print(line, file=sys.stderr))
            footage = Footage.probe(args.source)
            frames = list(range(0, footage.frame_count, args.stride))
            ours = person_counts(out, footage, frames)
            shipped = person_counts(args.shipped, footage, frames)
    except SearchmergeError as exc:
        sys.exit(f"bench_label: error: {exc}")
    result = {
        "source": str(args.source.relative_to(ROOT) if args.source.is_relative_to(ROOT) else args.source),
        "frames": run.frames, "stride": args.stride, "threshold": args.threshold, "seconds": round(run.seconds, 1),
        "frames_per_second": round(run.frames_per_second, 2), "cpus": os.cpu_count(),
        "boxes": run.boxes, "shipped_boxes": int(shipped.sum()),
        "pearson": round(float(np.corrcoef(ours, shipped)[0, 1]), 4),
        "mean_abs_difference": round(float(np.abs(ours - shipped).mean()), 4),
        "exact_share": round(float((ours == shipped).mean()), 4),
        "mean_count": round(float(ours.mean()), 3), "shipped_mean_count": round(float(shipped.mean()), 3),
        "fewer_share": round(float((ours < shipped).mean()), 4), "more_share": round(float((ours > shipped).mean()), 4),
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
