"""Data: where images and labels come from, and what a task does with them.

* :mod:`~searchmerge.data.sources`: data sources by ``format:`` (image folder, YOLO, COCO,
  video with teacher labels, a Python factory, the digits demo), plugged in by name;
* :mod:`~searchmerge.data.tasks`: task kinds (classification, detection) as adapters for
  batches, loss, metric and batch-norm statistics;
* :mod:`~searchmerge.data.loading`: reading a dataset as batches, in order or shuffled;
* :mod:`~searchmerge.data.teacher`: teachers, the detectors that label frames (ONNX, torchvision),
  and the COCO-style labels they write.

Imports only :mod:`searchmerge.core`.
"""
