"""The edge's predictions file: JSON lines, rotated by size, and never a reason to stop serving.

``predictions.jsonl`` grows by one line per frame and stream (a few MB an hour per stream).
When the next line would take it past ``max_bytes`` it is renamed ``predictions.jsonl.1``
(the older ``.1`` becomes ``.2``, and so on; the one past ``backups`` is deleted) and a new
file is started, so the edge's disk holds at most ``(backups + 1) * max_bytes`` of them.

A line that cannot be written (a full disk, a removed folder) is counted and reported,
not raised: the serving loop serves on, and the file is opened again at the next line
(at most once a second) once the disk has room.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

__all__ = ["PredictionLog"]


class PredictionLog:
    """Append JSON lines to ``path``, rotating it by size.

    Args:
        path: The file (its folder must exist).
        max_bytes: Rotate before a line would take the file past this size.
        backups: Rotated files kept (``path.1`` ... ``path.N``); 0 keeps none.
        on_error: Told of a line that could not be written (with the error); the caller decides
            how often to say so.

    Example:
        >>> import tempfile
        >>> log = PredictionLog(Path(tempfile.mkdtemp()) / "p.jsonl", max_bytes=1000, backups=2)
        >>> log.write({"stream": "gate", "prediction": 3})
        >>> log.close()
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int,
                 on_error: Callable[[OSError], None] | None = None) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be positive and backups at least 0")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.errors = 0  # lines lost
        self.rotations = 0
        self._on_error = on_error
        self._file: TextIO | None = None
        self._size = 0
        self._retry_at = 0.0
        self._open()

    def _open(self) -> None:
        try:
            self._file = open(self.path, "a", buffering=1)
            self._size = self._file.tell()
        except OSError as exc:
            self._file = None
            self._retry_at = time.monotonic() + 1.0
            if self._on_error is not None:
                self._on_error(exc)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line (rotating first when it would not fit)."""
        line = json.dumps(record) + "\n"
        if self._file is None:
            if time.monotonic() < self._retry_at:
                self.errors += 1
                return
            self._open()
            if self._file is None:
                self.errors += 1
                return
        try:
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(line)
            self._size += len(line)
        except OSError as exc:
            self._close_quietly()
            self._failed(exc)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._file = open(self.path, "a", buffering=1)
        self._size = 0

    def _failed(self, exc: OSError) -> None:
        self.errors += 1
        self._retry_at = time.monotonic() + 1.0
        if self._on_error is not None:
            self._on_error(exc)

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        self._file = None

    def close(self) -> None:
        self._close_quietly()
