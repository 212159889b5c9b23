"""The processes the benchmark starts and stops: SeaweedFS, OpenSSH's sshd, the gateway.

All listen on 127.0.0.1; `Children` stops each by pid on exit, and `terminate_on_signal`
turns SIGTERM/SIGHUP into KeyboardInterrupt so that happens on a signal too.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import BENCH_USER, CREDENTIALS, REPO
from bench.measure import child_pids, cpu_seconds, status_kib
from tests.helpers import free_port
from tests.seaweed import SeaweedServer, start_seaweed


class Children:
    """Every long-running process we start, stopped by pid on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seaweed: SeaweedServer | None = None

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)
        if self.seaweed is not None:
            self.seaweed.stop()
            self.seaweed = None


def start_s3(work: Path, children: Children) -> SeaweedServer:
    """SeaweedFS (`weed server -s3`) with credentials it enforces, stopped with `children`."""
    children.seaweed = start_seaweed(work / "seaweed", credentials=CREDENTIALS)
    return children.seaweed


def wait_for_banner(port: int, timeout: float = 30.0) -> None:
    """Wait until an SSH server on the port sends its version line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no SSH server on 127.0.0.1:{port} after {timeout:.0f}s")


def ssh_keygen(path: Path, kind: str = "ed25519") -> Path:
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "bench", "-f", str(path)],
            check=True,
        )
    return path


# -- the OpenSSH baseline -------------------------------------------------------------


@dataclass
class Sshd:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    user: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """The daemon plus its finished per-connection children (reaped into cutime)."""
        return cpu_seconds(self.pid, children=True)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every per-connection child has exited (so its CPU is counted)."""
        deadline = time.monotonic() + timeout
        while child_pids(self.pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def start_sshd(work: Path, client_pub: Path, children: Children) -> Sshd:
    """OpenSSH's sshd on a high loopback port, its own host key, internal-sftp to tmpfs."""
    sshd_bin = Path("/usr/sbin/sshd")
    if not sshd_bin.exists():
        raise RuntimeError("/usr/sbin/sshd missing: apt-get install -y openssh-server")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    conf_dir = work / "sshd"
    conf_dir.mkdir(parents=True, exist_ok=True)
    host_key = ssh_keygen(conf_dir / "host_ed25519")
    authorized = conf_dir / "authorized_keys"
    shutil.copyfile(client_pub, authorized)
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="bench-sshd-", dir=shm if shm.is_dir() else None))
    port = free_port()
    user = getpass.getuser()
    config = conf_dir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {conf_dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                f"AllowUsers {user}",
                "UseDNS no",
                "MaxStartups 200:30:400",
                "MaxSessions 200",
                "LogLevel ERROR",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    subprocess.run([str(sshd_bin), "-t", "-f", str(config)], check=True)
    proc = children.add(
        subprocess.Popen(
            [str(sshd_bin), "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(conf_dir / "sshd.log", "wb"),  # noqa: SIM115 - lives with sshd
            stdin=subprocess.DEVNULL,
        )
    )
    wait_for_banner(port)
    return Sshd(proc, port, root, user)


# -- the gateway ----------------------------------------------------------------------


def gateway_command() -> list[str]:
    """The `sftp-gateway` console script of this interpreter (its pid is Python's)."""
    script = Path(sys.executable).parent / "sftp-gateway"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "sftp_gateway"]


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *path, last = dotted.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def gateway_config(work: Path, endpoint: str, bucket: str, overrides: Sequence[str]) -> dict:
    config: dict[str, Any] = {
        "server": {
            "listen": "127.0.0.1:0",
            "host_keys_dir": str(work / "gw-hostkeys"),
            "drain_timeout": 1,
            "workers": 1,  # one process, so its /proc figures are the gateway's
            # Every client of the bench logs in from 127.0.0.1, up to 16 at once.
            "max_startups": "100",
            "per_source_max_startups": 100,
        },
        "storage": {
            "bucket": bucket,
            "prefix": "incoming",
            "region": "us-east-1",
            "endpoint_url": endpoint,
        },
        "catalog": {"url": f"sqlite:///{work / 'catalog.db'}"},
        "uploads": {"max_file_size": "2GiB"},
    }
    for item in overrides:
        dotted, _, raw = item.partition("=")
        set_dotted(config, dotted.strip(), yaml.safe_load(raw))
    return config


@dataclass
class GatewayProc:
    proc: subprocess.Popen[bytes]
    port: int
    idle_rss_kib: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """The process and its live children (the workers of `--workers N`)."""
        return cpu_seconds(self.pid) + sum(cpu_seconds(child) for child in child_pids(self.pid))

    def hwm_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")


@dataclass
class GatewayLauncher:
    """Writes the config, creates the user once, (re)starts `sftp-gateway serve`."""

    work: Path
    endpoint: str
    bucket: str
    overrides: Sequence[str]
    client_pub: Path
    children: Children
    source: Path | None = None
    extra_env: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    current: GatewayProc | None = None
    config_path: Path | None = None

    def prepare(self) -> None:
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": CREDENTIALS[0],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        if self.source is not None:  # a snapshot of the code wins over the editable install
            self.env["PYTHONPATH"] = str(self.source)
        for item in self.extra_env:  # e.g. MALLOC_ARENA_MAX=2
            name, _, value = item.partition("=")
            self.env[name] = value
        self.config_path = self.work / "gateway.yaml"
        self.write_config(free_port())
        subprocess.run(
            [
                *gateway_command(),
                "users",
                "add",
                BENCH_USER,
                "--key",
                str(self.client_pub),
                "--config",
                str(self.config_path),
            ],
            check=True,
            env=self.env,
            capture_output=True,
        )

    def write_config(self, port: int) -> None:
        assert self.config_path is not None
        config = gateway_config(self.work, self.endpoint, self.bucket, self.overrides)
        config["server"]["listen"] = f"127.0.0.1:{port}"
        self.config_path.write_text(yaml.safe_dump(config))

    def restart(self) -> GatewayProc:
        """A fresh process, so VmHWM measures only what follows; idle RSS recorded."""
        self.stop()
        port = free_port()
        self.write_config(port)
        log = open(self.work / "gateway.log", "ab")  # noqa: SIM115 - lives with the process
        proc = self.children.add(
            subprocess.Popen(
                [*gateway_command(), "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.work,
            )
        )
        wait_for_banner(port)
        time.sleep(0.5)
        self.current = GatewayProc(proc, port, status_kib(proc.pid, "VmRSS"))
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.children.stop(self.current.proc)
            self.current = None


# -- process lifetime -----------------------------------------------------------------


@contextmanager
def terminate_on_signal() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so `finally` blocks stop children."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def gateway_source(args: argparse.Namespace, work: Path) -> Path | None:
    """Where the gateway's code comes from: a git snapshot, a tree, or the install."""
    if args.gateway_src:
        return Path(args.gateway_src).resolve()
    if not args.git_ref:
        return None
    target = work / "gateway-src"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", args.git_ref, "sftp_gateway"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target
