"""Data sources by ``format`` name: image folders, YOLO and COCO detection sets, dataset
factories, video footage with teacher labels, and the digits demo.

A source is registered by name and imported on first use, so the pipeline never imports
a particular source: a model's ``data: {format: NAME, ...}`` names one. A model without
``data:`` reads the built-in digits demo (:data:`DEFAULT_FORMAT`). A new source is a
:class:`~searchmerge.sources.base.Source` subclass registered with :func:`register_source`.

Example:
    >>> from searchmerge.sources import format_names, get_source
    >>> "imagefolder" in format_names(), sorted(get_source("yolo").keys)
    (True, ['classes', 'image_size', 'root'])
"""

from __future__ import annotations

from searchmerge.registry import Registry
from searchmerge.sources.base import Source, SourceContext, SplitData, TaskData, subsample

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
    "digits": "searchmerge.sources.digits:DigitsSource",
    "imagefolder": "searchmerge.sources.imagefolder:ImageFolderSource",
    "yolo": "searchmerge.sources.yolo:YoloSource",
    "coco": "searchmerge.sources.coco:CocoSource",
    "python": "searchmerge.sources.factory:FactorySource",
    "video": "searchmerge.sources.video:VideoSource",
})

#: Register a data source: ``register_source("video", "mypkg.video:VideoSource")``.
register_source = _SOURCES.register
#: The registered data formats, sorted.
format_names = _SOURCES.names
#: The source of a data format, by name.
get_source = _SOURCES.get
