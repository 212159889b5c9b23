"""Who is connecting: authorized_keys parsing, fingerprints and the Principal.

No paramiko here (keys are checked with `cryptography`, as the CLI adds them): the SSH
layer asks `Authenticator` whether a key belongs to a user and gets a Principal (or
None) back. Principal and PublicKey are shared records (records.py).
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from sftp_gateway.keyoptions import KeyOptionError, parse_options, split_options
from sftp_gateway.records import Principal, PublicKey

if TYPE_CHECKING:  # the CLI adds users without loading paramiko
    import paramiko

    from sftp_gateway.catalog.repository import Catalog

__all__ = [
    "DEFAULT_PERMISSIONS",
    "PERMISSIONS",
    "Authenticator",
    "Principal",
    "PublicKey",
    "fingerprint_of",
    "key_file_lines",
    "parse_permissions",
    "parse_public_key",
]

log = logging.getLogger(__name__)
LOOKS_LIKE_TYPE = ("ssh-", "ecdsa-", "sk-")
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


def parse_permissions(text: str) -> frozenset[str]:
    """`read,write` -> a set; an unknown name is an error that names it."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = names - set(PERMISSIONS)
    if unknown:
        raise ValueError(
            f"unknown permission {', '.join(sorted(unknown))} (known: {', '.join(PERMISSIONS)})"
        )
    return frozenset(names)


def key_file_lines(text: str, name: str = "FILE") -> list[str]:
    """The key lines of a .pub or authorized_keys file's text: without a byte-order mark,
    blank lines and comments (`#` after any indentation, as sshd reads them).

    ValueError says what a file of another kind is (a private key, RFC 4716, PEM,
    PuTTY) and how to get the OpenSSH public key line from it (`name`: the file).
    """
    lines = [line.strip() for line in text.removeprefix("\ufeff").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if lines:
        other = _other_format(lines[0], name)
        if other:
            raise ValueError(other)
    return lines


def _other_format(line: str, name: str) -> str | None:
    """What a key file whose first line is `line` is, when not OpenSSH's public key."""
    if line.startswith("PuTTY-User-Key-File-"):
        return (
            f"{name} is a PuTTY private key (.ppk): give its public key in OpenSSH format"
            f" (puttygen {name} -O public-openssh)"
        )
    if line.startswith(("---- BEGIN SSH2 PUBLIC KEY", "-----BEGIN SSH2 PUBLIC KEY")):
        return (
            f"{name} is an RFC 4716 public key (as PuTTYgen and ssh-keygen -e write it):"
            f" convert it with ssh-keygen -i -f {name}"
        )
    if not line.startswith("-----BEGIN "):
        return None
    label = line.removeprefix("-----BEGIN ").split("-----")[0].strip()
    if "PRIVATE KEY" in label:
        return (
            f"{name} is a private key: give its public key, the .pub file"
            f" (ssh-keygen -y -f {name} prints it)"
        )
    if label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
        form = "PKCS8" if label == "PUBLIC KEY" else "PEM"
        return f"{name} is a PEM public key: convert it with ssh-keygen -i -m {form} -f {name}"
    return f"{name} is a PEM file ({label}), not an SSH public key"


def parse_public_key(line: str) -> PublicKey:
    """Parse one authorized_keys or .pub line, with its options (validated, kept)."""
    text = line.strip()
    options = ""
    if not text.startswith(LOOKS_LIKE_TYPE):
        options, text = split_options(text)
        parse_options(options)  # KeyOptionError (a ValueError) names the refused option
    fields = text.split()
    if not fields or not fields[0].startswith(LOOKS_LIKE_TYPE):
        raise ValueError("no key type found (expected e.g. ssh-ed25519 AAAA...)")
    key_type = fields[0]
    if key_type not in ACCEPTED_KEY_TYPES:
        raise ValueError(f"key type {key_type} is not accepted")
    if len(fields) < 2:
        raise ValueError("the key's base64 data is missing")
    try:
        blob = base64.b64decode(fields[1], validate=True)
        key = load_ssh_public_key(f"{key_type} {fields[1]}".encode())
    except (binascii.Error, UnsupportedAlgorithm, ValueError) as exc:
        raise ValueError(f"the key data is not a valid {key_type} key") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits")
    comment = " ".join(fields[2:]) or None
    return PublicKey(key_type=key_type, blob=blob, comment=comment, options=options or None)


def fingerprint_of(key: paramiko.PKey) -> str:
    """The SHA256 fingerprint of a key a client presented."""
    return PublicKey(key.get_name(), key.asbytes(), None).fingerprint


class Authenticator:
    """Answers 'may this key log in as this user, from here, now?' from the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def authenticate(
        self, username: str, key: paramiko.PKey, client_ip: str | None = None
    ) -> Principal | None:
        """The Principal, or None; a known key refused by its options logs why."""
        fingerprint = fingerprint_of(key)
        principal = self._catalog.principal_for_key(username, fingerprint)
        if principal is None:
            return None
        refusal = options_refusal(principal, client_ip)
        if refusal:
            log.warning(
                "auth failed for %s from %s: key %s %s", username, client_ip, fingerprint, refusal
            )
            return None
        return principal

    def revocation_reason(self, principal: Principal, client_ip: str | None) -> str | None:
        """Why a logged-in principal may no longer be there (None: it still may)."""
        current = self._catalog.principal_for_key(principal.name, principal.key_fingerprint or "")
        if current is None:
            if self._catalog.get_user(principal.name) is None:
                return "user removed"
            return f"key {principal.key_fingerprint} removed"
        refusal = options_refusal(current, client_ip)
        return f"key {principal.key_fingerprint} {refusal}" if refusal else None


def options_refusal(principal: Principal, client_ip: str | None) -> str | None:
    """Why the key's stored options refuse this login; an unreadable option refuses too."""
    try:
        return parse_options(principal.key_options).refusal(client_ip)
    except KeyOptionError as exc:
        return f"has options the gateway cannot read ({exc})"
