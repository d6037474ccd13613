"""The edge's own copy of the versions: complete, verified, or absent; never half of one.

A version is downloaded into a hidden ``.N.part-*`` folder, each file verified against
the version's SHA-256 as it arrives, and only then renamed to ``versions/N``: a
folder with a version's number is always complete and verified. ``current.json``
(written atomically) names the version the agent serves, with its checksums, and only
ever names such a folder. An agent killed at any moment (mid-download, mid-switch)
therefore restarts on a complete version, and its load checks the weights again.

Old versions are pruned (:meth:`LocalVersions.prune`): the agent keeps the ones it serves
or names in ``current.json`` and the newest few it installed, so a rollback to a recent
version needs no download while the disk stays bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from searchmerge.service.edge.client import ServiceClient
from searchmerge.service.protocol import VersionInfo
from searchmerge.storage.atomic import fsync_dir, write_atomic
from searchmerge.training.deployment import MANIFEST_FILE, WEIGHTS_FILE

__all__ = ["LocalVersions"]

_CURRENT = "current.json"


class LocalVersions:
    """The versions an edge holds in ``root`` (``versions/N`` folders and ``current.json``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / "versions"
        self.folder.mkdir(parents=True, exist_ok=True)
        for partial in self.folder.glob(".*.part-*"):  # left by a kill mid-download: never used
            shutil.rmtree(partial, ignore_errors=True)

    def path(self, version: int) -> Path:
        return self.folder / str(version)

    def current(self) -> VersionInfo | None:
        """The version the agent served last (``None`` on a first start)."""
        try:
            return VersionInfo.model_validate_json((self.root / _CURRENT).read_text())
        except (OSError, ValueError):
            return None

    def set_current(self, info: VersionInfo) -> None:
        write_atomic(self.root / _CURRENT, info.model_dump_json().encode())

    def installed(self) -> list[int]:
        """The complete versions held, most recently installed (or used) first."""
        found = [p for p in self.folder.iterdir() if p.is_dir() and p.name.isdigit()]
        found.sort(key=lambda p: (p.stat().st_mtime, int(p.name)), reverse=True)
        return [int(p.name) for p in found]

    def prune(self, keep: int, *, protect: frozenset[int] | set[int] = frozenset()) -> list[int]:
        """Remove all but the ``keep`` most recently installed versions (never one in ``protect``,
        nor the one ``current.json`` names); the versions removed."""
        current = self.current()
        protected = set(protect) | ({current.version} if current is not None else set())
        removed = []
        for number in self.installed()[keep:]:
            if number not in protected:
                self.discard(number)
                removed.append(number)
        return removed

    def discard(self, version: int) -> None:
        """Remove a version's folder (one that failed to load is downloaded again next time)."""
        shutil.rmtree(self.path(version), ignore_errors=True)

    def install(self, client: ServiceClient, info: VersionInfo) -> Path:
        """The folder of version ``info``, downloaded and verified unless it is here already.

        Raises:
            TamperedArtifact: If a downloaded file does not match the version (nothing is kept).
            ServiceUnreachable: If the download broke off (nothing is kept).
        """
        final = self.path(info.version)
        if final.is_dir():
            if self._matches(final, info):
                os.utime(final)  # used again: the newest for pruning
                return final
            shutil.rmtree(final)  # not this version's bytes (a rollback renumbered, or a disk error)
        partial = Path(tempfile.mkdtemp(prefix=f".{info.version}.part-", dir=self.folder))
        try:
            for name in (MANIFEST_FILE, WEIGHTS_FILE):
                client.download(info, name, partial / name)
            os.replace(partial, final)
            fsync_dir(self.folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return final

    def _matches(self, folder: Path, info: VersionInfo) -> bool:
        try:
            manifest = (folder / MANIFEST_FILE).read_bytes()
        except OSError:
            return False
        if hashlib.sha256(manifest).hexdigest() != info.manifest_sha256:
            return False
        weights = json.loads(manifest).get("weights", {})
        return weights.get("sha256") == info.weights_sha256  # the load checks the weights file against it
