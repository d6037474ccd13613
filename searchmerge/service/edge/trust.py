"""What an edge trusts: versions signed by the operator's key, naming code it was allowed to run.

Loading a version builds its models: an architecture a manifest names as
``package.module:factory`` is imported and called, and so is a dataset factory its models'
data name. The checksums of a version come over the same connection as its files, so a
manifest alone must never decide what code runs on an edge. Before anything of a
downloaded version is loaded, :meth:`TrustPolicy.check`

1. checks the manifest's bytes against the version's SHA-256;
2. checks the version's signature with the public key the operator gave the edge
   (``--trust``; see :mod:`searchmerge.service.signing`), unless the operator chose
   ``--allow-unsigned``;
3. checks that every architecture and factory the manifest names is in the edge's allowlist:
   torchvision architecture names (built without downloading weights), the factories of
   :mod:`searchmerge.zoo`, and the factories its operator listed (``--allow-factory
   package.module:function``). Nothing else is imported.

Any failure is a :class:`UntrustedVersion` (or :class:`~searchmerge.service.signing.BadSignature`),
and the agent refuses the version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from searchmerge.core.errors import SearchmergeError
from searchmerge.service.protocol import VersionInfo
from searchmerge.service.signing import Verifier
from searchmerge.training.deployment import MANIFEST_FILE

__all__ = ["ZOO_FACTORIES", "TrustPolicy", "UntrustedVersion", "named_code"]

#: The model factories of searchmerge's own catalogue, which every edge may build.
ZOO_FACTORIES = frozenset({
    "searchmerge.zoo:small_resnet",
    "searchmerge.zoo:small_vgg",
    "searchmerge.zoo:person_detector",
})


class UntrustedVersion(SearchmergeError):
    """A version names code outside the edge's allowlist, or its manifest is not the version's."""


def named_code(manifest: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Every (model, path) a manifest would make the edge build: each model's ``arch`` and every
    ``factory`` its options name (a ``format: python`` data source's, at any depth)."""
    for model in manifest.get("workload", {}).get("models", []):
        name = str(model.get("name"))
        yield name, str(model.get("arch"))
        yield from ((name, path) for path in _factories(model.get("options", {})))


def _factories(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "factory":
                yield str(item)
            else:
                yield from _factories(item)
    elif isinstance(value, list):
        for item in value:
            yield from _factories(item)


class TrustPolicy:
    """The edge's rules for a version it is about to load.

    Args:
        verifier: The operator's public key (``None``: versions are not signature-checked,
            which only ``allow_unsigned`` permits).
        allow_unsigned: Accept versions without checking a signature.
        factories: ``package.module:function`` paths the operator allows besides the zoo's.

    Raises:
        SearchmergeError: If there is neither a key nor ``allow_unsigned``, or a factory
            path is malformed.
    """

    def __init__(self, verifier: Verifier | None, *, allow_unsigned: bool = False,
                 factories: Iterable[str] = ()) -> None:
        if verifier is None and not allow_unsigned:
            raise SearchmergeError("give the edge the service's public key (--trust searchmerge-signing.pub, made by"
                                   " 'searchmerge keys init'), or --allow-unsigned to run versions nobody signed")
        extra = frozenset(factories)
        malformed = sorted(path for path in extra if path.count(":") != 1 or not all(path.split(":")))
        if malformed:
            raise SearchmergeError(f"--allow-factory takes package.module:function, got {', '.join(malformed)}")
        self.verifier = verifier
        self.allow_unsigned = allow_unsigned
        self.factories = ZOO_FACTORIES | extra

    def check(self, info: VersionInfo, folder: Path) -> None:
        """Refuse version ``info`` in ``folder`` unless its manifest is the version's, its signature
        verifies and it names only allowed code.

        Raises:
            UntrustedVersion, BadSignature: Saying which rule the version breaks.
        """
        try:
            data = (folder / MANIFEST_FILE).read_bytes()
        except OSError as exc:
            raise UntrustedVersion(f"version {info.version}: cannot read its manifest: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.manifest_sha256:
            raise UntrustedVersion(f"version {info.version}: the manifest is not the version's (SHA-256 differs)")
        if self.verifier is not None:
            self.verifier.verify(info.version, digest, info.signature, info.signed_by)
        try:
            manifest = json.loads(data)
        except ValueError:
            raise UntrustedVersion(f"version {info.version}: the manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise UntrustedVersion(f"version {info.version}: the manifest is not a JSON object")
        refused = [f"{model}: {path}" for model, path in named_code(manifest) if not self.allows(path)]
        if refused:
            raise UntrustedVersion(
                f"version {info.version} names code outside this edge's allowlist ({'; '.join(refused)}); an operator"
                " who trusts it adds --allow-factory package.module:function"
            )

    def allows(self, path: str) -> bool:
        """Whether the edge may build ``path``: a torchvision architecture name or an allowed factory."""
        if ":" in path:
            return path in self.factories
        from torchvision.models import list_models

        return path in list_models()

