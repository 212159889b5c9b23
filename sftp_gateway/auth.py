"""Who is connecting: authorized_keys parsing, fingerprints and the Principal.

No paramiko server types here: the SSH layer asks `Authenticator` whether a key
belongs to a user and gets a Principal (or None) back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paramiko

if TYPE_CHECKING:
    from sftp_gateway.catalog.repository import Catalog

PERMISSIONS = ("list", "read", "write", "overwrite", "delete", "rename", "mkdir")
DEFAULT_PERMISSIONS = frozenset(PERMISSIONS)
ACCEPTED_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class PublicKey:
    """One key from an authorized_keys line."""

    key_type: str
    blob: bytes
    comment: str | None

    @property
    def fingerprint(self) -> str:
        """OpenSSH's `SHA256:...` form, as `ssh-keygen -lf` prints it."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"


@dataclass(frozen=True)
class Principal:
    """An authenticated user: what the rest of the gateway knows about who is there."""

    name: str
    home: str
    permissions: frozenset[str]
    email: str | None = None
    key_fingerprint: str | None = None

    def may(self, permission: str) -> bool:
        return permission in self.permissions


def parse_permissions(text: str) -> frozenset[str]:
    """`read,write` -> a set; an unknown name is an error that names it."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = names - set(PERMISSIONS)
    if unknown:
        raise ValueError(
            f"unknown permission {', '.join(sorted(unknown))} (known: {', '.join(PERMISSIONS)})"
        )
    return frozenset(names)


def parse_public_key(line: str) -> PublicKey:
    """Parse one authorized_keys or .pub line; options before the type are skipped."""
    fields = line.strip().split()
    looks_like_type = ("ssh-", "ecdsa-", "sk-")
    index = next((i for i, f in enumerate(fields) if f.startswith(looks_like_type)), None)
    if index is None:
        raise ValueError("no key type found (expected e.g. ssh-ed25519 AAAA...)")
    key_type = fields[index]
    if key_type not in ACCEPTED_KEY_TYPES:
        raise ValueError(f"key type {key_type} is not accepted")
    if index + 1 >= len(fields):
        raise ValueError("the key's base64 data is missing")
    try:
        blob = base64.b64decode(fields[index + 1], validate=True)
        key = paramiko.PKey.from_type_string(key_type, blob)
    except (binascii.Error, paramiko.SSHException, ValueError) as exc:
        raise ValueError(f"the key data is not a valid {key_type} key") from exc
    if key_type == "ssh-rsa" and key.get_bits() < MIN_RSA_BITS:
        raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
    comment = " ".join(fields[index + 2 :]) or None
    return PublicKey(key_type=key_type, blob=blob, comment=comment)


def fingerprint_of(key: paramiko.PKey) -> str:
    """The SHA256 fingerprint of a key a client presented."""
    return PublicKey(key.get_name(), key.asbytes(), None).fingerprint


class Authenticator:
    """Answers 'may this key log in as this user?' from the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def authenticate(self, username: str, key: paramiko.PKey) -> Principal | None:
        return self._catalog.principal_for_key(username, fingerprint_of(key))
