"""A real `sftp-gateway serve` process for attack and fault tests.

Tests that attack the gateway must hit what an operator runs: its own process, its
own config file, over loopback. `ServeProcess` starts it with one user `alice`, and
offers what those tests assert: the server's RSS and thread count, its log, and whether
a real user can still log in and upload beside the attack.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import paramiko
import yaml

from tests.helpers import (
    SSH_OPTIONS,
    add_user_cli,
    base_config,
    deep_merge,
    free_port,
    make_pdf,
    make_user_key,
    ssh_login,
    wait_port,
)


@dataclass
class ServeProcess:
    """`sftp-gateway serve` on a free loopback port, with user `alice`."""

    tmp: Path
    config_path: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    key_path: Path
    endpoint: str
    bucket: str
    user: str = "alice"

    # -- what attack tests assert ------------------------------------------------------

    def status_field(self, name: str) -> int:
        """A numeric field of /proc/PID/status (VmRSS, VmHWM in KiB; Threads)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        raise KeyError(name)

    def rss_mib(self) -> float:
        return self.status_field("VmRSS") / 1024

    def threads(self) -> int:
        return self.status_field("Threads")

    def settled_threads(self, quiet: float = 1.0, timeout: float = 20) -> int:
        """The thread count once it has not changed for `quiet` seconds: a baseline taken
        while a busy machine still starts the background threads would be too low."""
        deadline = time.monotonic() + timeout
        count, since = self.threads(), time.monotonic()
        while time.monotonic() - since < quiet and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.threads()
            if now != count:
                count, since = now, time.monotonic()
        return count

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def sftp(
        self,
        commands: str,
        *,
        key: Path | None = None,
        user: str | None = None,
        source: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """The real OpenSSH sftp client in batch mode (optionally from another address)."""
        extra = ["-o", f"BindAddress={source}"] if source else []
        args = [
            "sftp",
            *SSH_OPTIONS,
            "-o",
            "ConnectTimeout=20",
            *extra,
            "-i",
            str(key or self.key_path),
            "-P",
            str(self.port),
            "-b",
            "-",
            f"{user or self.user}@127.0.0.1",
        ]
        return subprocess.run(args, input=commands, text=True, capture_output=True, timeout=timeout)

    def ssh_client(self, key: Path | None = None) -> paramiko.SSHClient:
        """paramiko's SSH client logged in as alice (with her key unless another)."""
        return ssh_login(self.port, self.user, key or self.key_path)

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def object_sha256(self, key: str) -> str:
        body = self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return hashlib.sha256(body).hexdigest()

    def user_can_upload(self, name: str = "probe.pdf", size: int = 300_000) -> bool:
        """A real user logs in with OpenSSH and uploads a PDF whose bytes arrive intact."""
        local = make_pdf(self.tmp / f"local-{name}", size)
        result = self.sftp(f"put {local} /{name}\n")
        if result.returncode != 0:
            return False
        key = f"incoming/{self.user}/{name}"
        expected = hashlib.sha256(local.read_bytes()).hexdigest()
        return self.object_sha256(key) == expected

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an `sftp-gateway` command against this server's config."""
        return subprocess.run(
            [sys.executable, "-m", "sftp_gateway", *args, "--config", str(self.config_path)],
            text=True,
            capture_output=True,
            check=check,
            timeout=60,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_serve(
    tmp: Path,
    endpoint: str,
    bucket: str,
    extra: dict[str, Any] | None = None,
    *,
    listen_host: str = "127.0.0.1",
) -> ServeProcess:
    """Write a config, create the bucket, add alice, start `serve`, wait for its port
    (`listen_host="[::]"`: a dual-stack listener, still reached on 127.0.0.1)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = deep_merge(base_config(tmp, endpoint, bucket), extra or {})
    config["server"]["listen"] = f"{listen_host}:{port}"
    config_path = tmp / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    key_path = make_user_key(tmp / "userkeys")
    add_user_cli(config_path, "alice", key_path)
    log_path = tmp / "serve.log"
    env = {**os.environ, "SFTP_GATEWAY_CONFIG": str(config_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "sftp_gateway", "serve", "--config", str(config_path)],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    served = ServeProcess(tmp, config_path, port, process, log_path, key_path, endpoint, bucket)
    try:
        for listening in (port, *http_ports(config)):
            wait_port(listening, timeout=60)
    except AssertionError:
        served.stop()
        raise AssertionError(f"serve did not start:\n{served.log_text()}") from None
    time.sleep(0.2)
    return served


def http_ports(config: dict[str, Any]) -> list[int]:
    """The ports of the admin and upload-link listeners the config asks for: their
    servers start after the SSH port opens, later still when the machine is busy."""
    listens = [config.get(section, {}).get("listen") for section in ("admin", "web")]
    return [int(str(listen).rsplit(":", 1)[1]) for listen in listens if listen]
