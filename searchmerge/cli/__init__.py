"""The command line: thin commands over the library, the human-readable report, and the
edge-box tools behind ``profile`` and ``simulate``.

``searchmerge`` (the console script) is :func:`main`; ``python -m searchmerge.cli`` runs it too.
"""

from searchmerge.cli.commands import main

__all__ = ["main"]
