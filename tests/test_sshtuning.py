"""The C HMAC gives exactly paramiko's MACs, for every digest paramiko negotiates."""

from __future__ import annotations

import hashlib
import os

import paramiko.packet
import pytest

from sftp_gateway import sshcompat


@pytest.mark.parametrize("digest", [hashlib.md5, hashlib.sha1, hashlib.sha256, hashlib.sha512])
def test_compute_hmac_matches_paramiko(digest) -> None:  # type: ignore[no-untyped-def]
    key, message = os.urandom(64), os.urandom(300_000)
    original = paramiko.packet.HMAC(key, message, digest).digest()
    assert sshcompat.compute_hmac(key, message, digest) == original
