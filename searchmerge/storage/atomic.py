"""Atomic file writes: a file's final name only ever holds complete bytes.

The checkpoint store and merged deployments both promise that a crash mid-write
leaves the previous state readable; this is the one place that keeps the promise.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename.

    A crash leaves either the old file or the complete new one (and at worst a
    ``.NAME.*.part`` temporary file beside it, safe to delete).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            if os.name == "posix":
                # mkstemp makes the file private (0600); weights are meant to be read by other users too.
                os.fchmod(file.fileno(), 0o644)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX needs the directory synced; Windows cannot)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
