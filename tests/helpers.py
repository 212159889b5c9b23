"""Test helpers: a real gateway on a free port, real clients, real S3 over HTTP."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import yaml

from sftp_gateway.app import Gateway, build_catalog
from sftp_gateway.auth import DEFAULT_PERMISSIONS, parse_public_key
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings, settings_from_dict
from sftp_gateway.hostkeys import generate_private_key, public_line, write_private_key
from sftp_gateway.storage.s3 import S3Storage

MIB = 1024 * 1024
SSH_OPTIONS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssh_login(
    port: int, user: str, key_path: Path | str, *, timeout: float = 20
) -> paramiko.SSHClient:
    """paramiko's SSH client logged in with one key only (no agent, no ~/.ssh keys)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=port,
        username=user,
        key_filename=str(key_path),
        look_for_keys=False,
        allow_agent=False,
        timeout=timeout,
    )
    return client


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tagged_sha256(client: Any, bucket: str, key: str) -> str | None:
    """The SHA-256 an object carries as its `sha256` tag (every object the gateway
    writes has it; a single PUT also has it in its metadata)."""
    tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    return next((tag["Value"] for tag in tags if tag["Key"] == "sha256"), None)


def make_pdf(path: Path, size: int) -> Path:
    """A file of exactly `size` bytes that starts like a PDF, with a random body."""
    head = b"%PDF-1.7\n"[:size]
    with open(path, "wb") as handle:
        handle.write(head)
        remaining = size - len(head)
        while remaining > 0:
            piece = os.urandom(min(remaining, MIB))
            handle.write(piece)
            remaining -= len(piece)
    return path


def make_user_key(directory: Path, name: str = "id_ed25519") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if not path.exists():
        pem = generate_private_key("ed25519")
        write_private_key(path, pem)
        path.with_suffix(".pub").write_text(public_line(pem, "test") + "\n")
    return path


def base_config(
    tmp: Path, endpoint: str, bucket: str, catalog_url: str | None = None
) -> dict[str, Any]:
    return {
        # One process, as the tests that measure it (RSS, threads, kill -9) expect;
        # tests/test_workers.py asks for more.
        "server": {
            "listen": "127.0.0.1:0",
            "host_keys_dir": str(tmp / "hostkeys"),
            "workers": 1,
        },
        "storage": {
            "bucket": bucket,
            "prefix": "incoming",
            "endpoint_url": endpoint,
            "part_size": "5MiB",
        },
        "catalog": {"url": catalog_url or f"sqlite:///{tmp / 'catalog.db'}"},
    }


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class RunningGateway:
    """A gateway serving on a free loopback port, with one user `alice`."""

    settings: Settings
    gateway: Gateway
    catalog: Catalog
    storage: S3Storage
    port: int
    key_path: Path
    user: str = "alice"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        return self.settings.storage.bucket

    def key_for(self, path: str, user: str | None = None) -> str:
        return f"incoming/{user or self.user}/{path.lstrip('/')}"

    def sftp(
        self,
        commands: str,
        *,
        check: bool = True,
        user: str | None = None,
        key: Path | None = None,
        extra_args: list[str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real OpenSSH sftp client in batch mode."""
        args = [
            "sftp",
            *SSH_OPTIONS,
            "-i",
            str(key or self.key_path),
            "-P",
            str(self.port),
            *(extra_args or []),
            "-b",
            "-",
            f"{user or self.user}@127.0.0.1",
        ]
        result = subprocess.run(
            args, input=commands, text=True, capture_output=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"sftp failed ({result.returncode}): {result.stderr}")
        return result

    def ssh_client(self) -> paramiko.SSHClient:
        """paramiko's SSH client, logged in as this gateway's user."""
        return ssh_login(self.port, self.user, self.key_path)

    def object_sha256(self, key: str) -> str:
        body = self.storage.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        digest = hashlib.sha256()
        for chunk in body.iter_chunks(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()

    def open_multipart_uploads(self) -> list[dict[str, Any]]:
        resp = self.storage.client.list_multipart_uploads(Bucket=self.bucket)
        return list(resp.get("Uploads", []))

    def object_exists(self, key: str) -> bool:
        return self.storage.head(key) is not None

    def stop(self) -> None:
        self.gateway.stop()


def start_gateway(
    tmp: Path,
    endpoint: str,
    bucket: str,
    *,
    config: dict[str, Any] | None = None,
    catalog_url: str | None = None,
    permissions: frozenset[str] = DEFAULT_PERMISSIONS,
    background: list[Any] | None = None,
    add_user: bool = True,
    storage_class: type[S3Storage] = S3Storage,
) -> RunningGateway:
    settings = settings_from_dict(
        deep_merge(base_config(tmp, endpoint, bucket, catalog_url), config or {}), environ={}
    )
    storage = storage_class(settings.storage)
    storage.client.create_bucket(Bucket=bucket)
    catalog = build_catalog(settings)
    key_path = make_user_key(tmp / "userkeys")
    public = parse_public_key(key_path.with_suffix(".pub").read_text())
    if add_user:
        catalog.add_user(
            "alice", public, home="alice", permissions=permissions, email="alice@example.com"
        )
    gateway = Gateway(settings, storage=storage, catalog=catalog, background=background)
    _, port = gateway.start()
    return RunningGateway(settings, gateway, catalog, storage, port, key_path)


def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def wait_port(port: int, timeout: float = 30) -> None:
    def is_open() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(is_open, timeout)


def serve_subprocess(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`sftp-gateway serve` as its own process, as an operator runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "sftp_gateway", "serve", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def write_serve_config(
    tmp: Path, endpoint: str, bucket: str, catalog_url: str, extra: dict[str, Any] | None = None
) -> tuple[Path, int]:
    """A config file for a gateway subprocess on a free port; returns (path, port)."""
    port = free_port()
    config = deep_merge(base_config(tmp, endpoint, bucket, catalog_url), extra or {})
    config["server"]["listen"] = f"127.0.0.1:{port}"
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def add_user_cli(config: Path, name: str, key_path: Path) -> None:
    cli = [sys.executable, "-m", "sftp_gateway", "users", "add", name]
    subprocess.run(
        [*cli, "--key", f"{key_path}.pub", "--config", str(config)],
        check=True,
        capture_output=True,
    )
