"""Signed versions: the service signs what it publishes, the edge checks it with the public key.

A version's checksums travel over the same connection as its files, so they prove nothing
against whoever controls that connection (or the blob store, or the service's database).
The operator therefore makes an Ed25519 key pair once (``searchmerge keys init``): the
service signs every version it publishes with the private key, and each edge is given the
public key (``searchmerge edge --trust KEYFILE``) and refuses a version whose signature does
not verify before it loads anything from it.

What is signed is a short statement binding the version's number to its manifest's SHA-256:
``searchmerge-version:1:<number>:<manifest sha256>``. The manifest holds the weights file's
SHA-256 (and its size), which the edge checks as it loads, so the signature covers every
byte the edge runs. Keys are PEM files (PKCS#8 private key, written readable by its owner
only; SubjectPublicKeyInfo public key); signatures are base64. Ed25519 comes from the
maintained ``cryptography`` package.

Example:
    >>> import tempfile
    >>> private, public = init_keys(Path(tempfile.mkdtemp()))
    >>> signer = Signer.load(private)
    >>> signature = signer.sign(3, "ab" * 32)
    >>> Verifier.load(public).verify(3, "ab" * 32, signature, signer.key_id)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from searchmerge.core.errors import SearchmergeError

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "BadSignature",
    "Signer",
    "Verifier",
    "init_keys",
    "key_id",
    "statement",
]

PRIVATE_KEY_FILE = "searchmerge-signing.key"
PUBLIC_KEY_FILE = "searchmerge-signing.pub"


class BadSignature(SearchmergeError):
    """A version is unsigned, signed by another key, or its signature does not verify."""


def statement(number: int, manifest_sha256: str) -> bytes:
    """The bytes signed for version ``number`` whose manifest has this SHA-256."""
    return f"searchmerge-version:1:{int(number)}:{manifest_sha256.lower()}".encode()


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def init_keys(folder: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Make a new key pair in ``folder``: the private key (mode 0600) and the public key.

    Raises:
        SearchmergeError: If a key is there already (unless ``overwrite``): replacing it
            would make every edge refuse the versions signed from then on.
    """
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise SearchmergeError(f"{private_path} or {public_path} exists already; a new key would make every edge"
                               " refuse the versions signed with it until given the new public key (--overwrite)")
    private = Ed25519PrivateKey.generate()
    private_bytes = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    public_bytes = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.unlink(missing_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(private_bytes)
    public_path.write_bytes(public_bytes)
    return private_path, public_path


@dataclass(frozen=True)
class Signer:
    """Signs versions with the operator's private key (the merging service holds it)."""

    private: Ed25519PrivateKey
    key_id: str

    @classmethod
    def load(cls, path: Path) -> Signer:
        """The private key of a PEM file ``searchmerge keys init`` wrote.

        Raises:
            SearchmergeError: If the file cannot be read or holds no Ed25519 private key.
        """
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except OSError as exc:
            raise SearchmergeError(f"cannot read the signing key {str(path)!r}: {exc.strerror or exc}") from None
        except (ValueError, TypeError) as exc:
            raise SearchmergeError(f"{str(path)!r} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SearchmergeError(f"{str(path)!r} is not an Ed25519 key (make one with 'searchmerge keys init')")
        return cls(key, key_id(key.public_key()))

    def sign(self, number: int, manifest_sha256: str) -> str:
        """The base64 signature of version ``number`` with this manifest."""
        return base64.b64encode(self.private.sign(statement(number, manifest_sha256))).decode()


@dataclass(frozen=True)
class Verifier:
    """Checks versions against the public key an edge was given."""

    public: Ed25519PublicKey
    key_id: str

    @classmethod
    def load(cls, path: Path) -> Verifier:
        """The public key of a PEM file (``searchmerge-signing.pub``).

        Raises:
            SearchmergeError: If the file cannot be read or holds no Ed25519 public key.
        """
        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except OSError as exc:
            raise SearchmergeError(f"cannot read the trusted key {str(path)!r}: {exc.strerror or exc}") from None
        except (ValueError, TypeError) as exc:
            raise SearchmergeError(f"{str(path)!r} is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SearchmergeError(f"{str(path)!r} is not an Ed25519 public key (searchmerge keys init makes one)")
        return cls(key, key_id(key))

    def verify(self, number: int, manifest_sha256: str, signature: str | None, signed_by: str | None) -> None:
        """Check the signature of version ``number`` with this manifest.

        Raises:
            BadSignature: If the version is unsigned, signed by another key, or the signature
                does not verify.
        """
        if not signature:
            raise BadSignature(f"version {number} is not signed; this edge trusts only versions signed by key"
                               f" {self.key_id}")
        try:
            raw = base64.b64decode(signature, validate=True)
            self.public.verify(raw, statement(number, manifest_sha256))
        except (InvalidSignature, binascii.Error, ValueError):
            other = f" (it names key {signed_by})" if signed_by and signed_by != self.key_id else ""
            raise BadSignature(f"version {number}'s signature does not verify with the trusted key"
                               f" {self.key_id}{other}") from None
