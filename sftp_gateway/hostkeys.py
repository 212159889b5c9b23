"""Host keys: load them from host_keys_dir, generating ed25519 and RSA 3072 if absent.

A key that cannot be written or read (an empty or damaged file, a passphrase, the
other algorithm's key, a folder that is a file or not writable) is a ConfigError naming
server.host_keys_dir and the file: the process exits 2, and the supervisor of
`serve --workers N` stops instead of restarting workers that would fail the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from sftp_gateway.errors import ConfigError

log = logging.getLogger(__name__)

HOST_KEYS = (("ssh_host_ed25519_key", "ed25519"), ("ssh_host_rsa_key", "rsa"))
FIELD = "server.host_keys_dir"


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
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    except OSError:  # a disk full: no truncated key for the next start to trip on
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def _generate(path: Path, kind: str) -> None:
    """Write a new key pair, or fail naming the field and the file."""
    log.info("generating %s host key %s", kind, path)
    try:
        pem = generate_private_key(kind)
        write_private_key(path, pem)
        path.with_suffix(".pub").write_text(public_line(pem) + "\n")
    except OSError as exc:
        raise ConfigError(
            f"{FIELD}: cannot create the {kind} host key {path}: {exc.strerror or exc}"
        ) from None


def _load(path: Path, kind: str) -> paramiko.PKey:
    """The key in `path`, or a ConfigError saying what is wrong with the file."""
    key_class = paramiko.Ed25519Key if kind == "ed25519" else paramiko.RSAKey
    try:
        return key_class.from_private_key_file(str(path))
    except paramiko.PasswordRequiredException:
        reason = "it is protected by a passphrase (a host key must not be)"
    except OSError as exc:
        reason = f"cannot read it: {exc.strerror or exc}"
    except Exception:  # SSHException, UnicodeDecodeError, paramiko's own asserts...
        reason = _unusable_reason(path, kind)
    raise ConfigError(
        f"{FIELD}: host key {path} is unusable: {reason}; replace it, or delete it"
        " (and its .pub) to have a new one generated"
    )


def _unusable_reason(path: Path, kind: str) -> str:
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            return "the file is empty"
    return f"not an {kind} private key (OpenSSH or PEM format)"


def load_host_keys(directory: Path) -> list[paramiko.PKey]:
    """Every host key in the folder, generating the missing ones on first start."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"{FIELD}: {directory} is not a directory")
    keys: list[paramiko.PKey] = []
    for filename, kind in HOST_KEYS:
        path = directory / filename
        if not os.path.lexists(path):  # a dangling link is read (and named) below
            _generate(path, kind)
        keys.append(_load(path, kind))
    return keys
