"""Data sources by ``format`` name: image folders, YOLO and COCO detection sets, dataset
factories, video footage with teacher labels, the samples the edges sent (labelled by the
merging service), and the digits demo.

A source is registered by name and imported on first use, so the pipeline never imports
a particular source: a model's ``data: {format: NAME, ...}`` names one. A model without
``data:`` reads the built-in digits demo (:data:`DEFAULT_FORMAT`). A new source is a
:class:`~searchmerge.data.sources.base.Source` subclass registered with :func:`register_source`.

Example:
    >>> from searchmerge.data.sources import format_names, get_source
    >>> "imagefolder" in format_names(), sorted(get_source("yolo").keys)
    (True, ['classes', 'image_size', 'root'])
"""

from __future__ import annotations

from searchmerge.core.registry import Registry
from searchmerge.data.sources.base import (
    Source,
    SourceContext,
    SplitData,
    TaskData,
    subsample,
)

__all__ = [
    "DEFAULT_FORMAT",
    "Source",
    "SourceContext",
    "SplitData",
    "TaskData",
    "format_names",
    "get_source",
    "register_source",
    "subsample",
]

#: The format of a model whose study-file entry has no ``data:`` section: the built-in demo.
DEFAULT_FORMAT = "digits"

_SOURCES: Registry[Source] = Registry("data format", Source, {
    "digits": "searchmerge.data.sources.digits:DigitsSource",
    "imagefolder": "searchmerge.data.sources.imagefolder:ImageFolderSource",
    "yolo": "searchmerge.data.sources.yolo:YoloSource",
    "coco": "searchmerge.data.sources.coco:CocoSource",
    "python": "searchmerge.data.sources.factory:FactorySource",
    "video": "searchmerge.data.sources.video:VideoSource",
    "samples": "searchmerge.data.sources.samples:SamplesSource",
})

#: Register a data source: ``register_source("video", "mypkg.video:VideoSource")``.
register_source = _SOURCES.register
#: The registered data formats, sorted.
format_names = _SOURCES.names
#: The source of a data format, by name.
get_source = _SOURCES.get
