"""What a login costs the catalog (in-process gateway, the real OpenSSH client)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.helpers import RunningGateway


def test_an_openssh_login_looks_its_key_up_once(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSH offers the key unsigned, then signs it: the signed request reuses the
    first answer instead of asking the catalog again."""
    lookups: list[tuple[str, str]] = []
    lookup = gateway.catalog.principal_for_key

    def counted(name: str, fingerprint: str) -> Any:
        if threading.current_thread().name != "revocation":  # its own periodic check
            lookups.append((name, fingerprint))
        return lookup(name, fingerprint)

    monkeypatch.setattr(gateway.catalog, "principal_for_key", counted)
    listing = gateway.sftp("ls -l /\n")
    assert listing.returncode == 0
    assert len(lookups) == 1 and lookups[0][0] == "alice"

    refused = gateway.sftp("ls /\n", user="mallory", check=False)  # alice's key, wrong user
    assert refused.returncode != 0
    assert [name for name, _ in lookups[1:]] == ["mallory"]
