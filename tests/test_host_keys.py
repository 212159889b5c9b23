"""Host keys an operator damaged: a config error naming server.host_keys_dir and the file.

Each case fails at start with exit 2 (never a paramiko exception, never a restart loop
under `serve --workers N`), saying which file is wrong and why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sftp_gateway.errors import ConfigError
from sftp_gateway.hostkeys import generate_private_key, load_host_keys
from tests.helpers import base_config

ED25519 = "ssh_host_ed25519_key"


def encrypted_ed25519() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(b"secret"),
    )


DAMAGED = {
    "empty": (b"", "the file is empty"),
    "garbage": (bytes(range(256)) * 2, "not an ed25519 private key (OpenSSH or PEM format)"),
    "passphrase": (encrypted_ed25519(), "it is protected by a passphrase"),
    "rsa in the ed25519 file": (
        generate_private_key("rsa"),
        "not an ed25519 private key (OpenSSH or PEM format)",
    ),
}


def keys_dir_with(tmp_path: Path, content: bytes) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / ED25519).write_bytes(content)
    return directory


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_host_key_is_a_config_error_naming_the_field_the_file_and_why(
    tmp_path: Path, case: str
) -> None:
    content, reason = DAMAGED[case]
    directory = keys_dir_with(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_host_keys(directory)
    message = str(caught.value)
    assert message.startswith(f"server.host_keys_dir: host key {directory / ED25519} is unusable")
    assert reason in message


def test_host_keys_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "keys"
    not_a_dir.write_text("x\n")
    with pytest.raises(
        ConfigError, match=rf"^server\.host_keys_dir: {not_a_dir} is not a directory"
    ):
        load_host_keys(not_a_dir)


def test_host_keys_dir_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x\n")
    directory = tmp_path / "file" / "keys"  # its parent is a file: mkdir fails as root too
    with pytest.raises(ConfigError) as caught:
        load_host_keys(directory)
    assert str(caught.value).startswith(
        f"server.host_keys_dir: cannot create the ed25519 host key {directory / ED25519}: "
    )


def serve_config(tmp_path: Path, keys: Path, **server: Any) -> Path:
    config = base_config(tmp_path, "http://127.0.0.1:9", "acme-inbound")
    config["server"].update({"host_keys_dir": str(keys), **server})
    config["storage"]["part_checksums"] = False
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def serve(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sftp_gateway", "serve", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_serve_with_an_empty_host_key_exits_2_naming_the_field_and_the_file(
    tmp_path: Path,
) -> None:
    keys = keys_dir_with(tmp_path, b"")
    result = serve(serve_config(tmp_path, keys))
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        f"sftp-gateway: config error: server.host_keys_dir: host key {keys / ED25519}"
        " is unusable: the file is empty" in result.stderr
    )
    assert "Traceback" not in result.stderr
