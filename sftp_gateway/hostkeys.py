"""Host keys: load them from host_keys_dir, generating ed25519 and RSA 3072 if absent."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

log = logging.getLogger(__name__)

HOST_KEYS = (("ssh_host_ed25519_key", "ed25519"), ("ssh_host_rsa_key", "rsa"))


def generate_private_key(kind: str) -> bytes:
    """An OpenSSH-format private key, as ssh-keygen writes it."""
    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=3072)
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def public_line(private_pem: bytes, comment: str = "") -> str:
    """The authorized_keys line of a private key."""
    key = serialization.load_ssh_private_key(private_pem, password=None)
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{line} {comment}".strip()


def write_private_key(path: Path, pem: bytes) -> None:
    """Create the file with mode 0600 from the start: the key is never world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def load_host_keys(directory: Path) -> list[paramiko.PKey]:
    """Every host key in the folder, generating the missing ones on first start."""
    keys: list[paramiko.PKey] = []
    for filename, kind in HOST_KEYS:
        path = directory / filename
        if not path.exists():
            log.info("generating %s host key %s", kind, path)
            pem = generate_private_key(kind)
            write_private_key(path, pem)
            path.with_suffix(".pub").write_text(public_line(pem) + "\n")
        key_class = paramiko.Ed25519Key if kind == "ed25519" else paramiko.RSAKey
        keys.append(key_class.from_private_key_file(str(path)))
    return keys
