"""Benchmark the gateway against its floors: direct boto3 to S3, and OpenSSH's own sftp.

One command (see bench/README.md). It starts SeaweedFS, the gateway as a subprocess
(`sftp-gateway serve`), and an OpenSSH sshd baseline, all on 127.0.0.1, then measures
uploads of generated PDFs, concurrency, small files and session set-up. Each figure is
the median of --runs runs. Results go to bench/results/<timestamp>.json and a table.
Every child process is stopped on exit.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from sftp_gateway import units  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.seaweed import SeaweedServer, start_seaweed  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB
CLK_TCK = os.sysconf("SC_CLK_TCK")
CREDENTIALS = ("bench-access-key", "bench-secret-key")
BENCH_USER = "bench"
SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
]  # fmt: skip
DEFAULT_SIZES = "50MB,512MiB,1GiB"


def parse_size(text: str) -> int:
    """`50MB` (10^6), `512MiB` (2^20), `1GiB`, `100KB` or plain bytes (the config's)."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- /proc readings -------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a process (and of its reaped children when asked)."""
    fields = _stat_fields(pid)  # fields[11..14] = utime stime cutime cstime
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- files ----------------------------------------------------------------------------


def _pdf_parts(payload: int) -> tuple[bytes, bytes]:
    """The bytes before and after a stream of `payload` bytes in a one-page PDF."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
    ]
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(head))
        head += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    offsets.append(len(head))
    head += b"4 0 obj\n<< /Length %d >>\nstream\n" % payload
    tail = b"\nendstream\nendobj\n"
    xref_at = len(head) + payload + len(tail)
    tail += b"xref\n0 5\n0000000000 65535 f \n"
    tail += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    tail += b"trailer\n<< /Size 5 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref_at
    return head, tail


def make_pdf(path: Path, size: int) -> Path:
    """A valid one-page PDF of exactly `size` bytes (random bytes in a content stream)."""
    payload = max(size - 400, 0)
    for _ in range(10):  # the digits of the lengths move the total a little: converge
        head, tail = _pdf_parts(payload)
        payload += size - (len(head) + payload + len(tail))
    head, tail = _pdf_parts(payload)
    if len(head) + payload + len(tail) != size:
        raise ValueError(f"cannot make a PDF of {size} bytes")
    with open(path, "wb") as out:
        out.write(head)
        left = payload
        while left:
            piece = os.urandom(min(left, 4 * MIB))
            out.write(piece)
            left -= len(piece)
        out.write(tail)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def label_of(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size / 1e6:g}MB"


# -- child processes ------------------------------------------------------------------


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


# -- clients --------------------------------------------------------------------------


def sftp_args(port: int, user: str, key: Path, extra: Sequence[str] = ()) -> list[str]:
    return ["sftp", *SSH_OPTS, "-i", str(key), "-P", str(port), *extra, "-b", "-"]


def run_sftp(
    port: int,
    user: str,
    key: Path,
    commands: str,
    extra: Sequence[str] = (),
) -> tuple[float, float]:
    """Run one `sftp -b -` session; (wall seconds, client CPU seconds). Raises on failure."""
    cpu0 = children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*sftp_args(port, user, key, extra), f"{user}@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate(commands.encode(), timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sftp failed ({proc.returncode}): {err.decode(errors='replace')}")
    return wall, children_cpu() - cpu0


def negotiated(port: int, user: str, key: Path, extra: Sequence[str]) -> str:
    """The cipher and MAC the OpenSSH client agrees with a server (from `ssh -v`)."""
    args = [*sftp_args(port, user, key, extra), "-v", f"{user}@127.0.0.1"]
    result = subprocess.run(args, input=b"pwd\n", capture_output=True, timeout=60)
    for line in result.stderr.decode(errors="replace").splitlines():
        if "kex: client->server cipher:" in line:
            return line.split("cipher:", 1)[1].split("compression")[0].strip()
    return "unknown"


@dataclass
class CloseTrace:
    """Moments (Unix time) read from `sftp -vvv` as its debug lines arrive."""

    last_write_sent: float | None = None
    last_ack: float | None = None
    close_sent: float | None = None
    close_reply: float | None = None


def traced_put(
    port: int, user: str, key: Path, src: Path, remote: str, extra: Sequence[str]
) -> CloseTrace:
    """Upload with `sftp -vvv`, timestamping the last WRITE, its ack, CLOSE and its reply.

    sftp logs "Sent message SSH2_FXP_WRITE" for each write, "In write loop, ack for"
    for each reply, then "Sent message SSH2_FXP_CLOSE" and the CLOSE's STATUS, which
    the gateway sends only after the object is complete and the catalog row written.
    """
    args = [*sftp_args(port, user, key, extra), "-vvv", f"{user}@127.0.0.1"]
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(f"put {src} {remote}\n".encode())
    proc.stdin.close()
    trace = CloseTrace()
    for raw in proc.stderr:
        now, line = time.time(), raw.decode(errors="replace")
        if "Sent message SSH2_FXP_WRITE" in line:
            trace.last_write_sent = now
        elif "In write loop, ack for" in line:
            trace.last_ack = now
        elif "Sent message SSH2_FXP_CLOSE" in line:
            trace.close_sent = now
        elif "SSH2_FXP_STATUS" in line and trace.close_sent and not trace.close_reply:
            trace.close_reply = now
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"traced sftp upload of {remote} failed ({proc.returncode})")
    return trace


# -- measurements ---------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def per_gib(cpu: float, size: int) -> float:
    return cpu / (size / GIB)


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    children: Children
    seaweed: SeaweedServer
    bucket: str
    key: Path
    sshd: Sshd | None
    launcher: GatewayLauncher
    s3: Any = None

    def setup_clients(self) -> None:
        self.s3 = self.seaweed.client(max_pool_connections=32)
        self.s3.put_object(Bucket=self.bucket, Key="warmup", Body=b"x")  # connect once

    def catalog_row(self, key: str) -> dict[str, Any]:
        """The newest catalog row of a key, read with plain SQL (no gateway imports)."""
        with sqlite3.connect(self.work / "catalog.db", timeout=10) as db:
            db.row_factory = sqlite3.Row
            row = db.execute(
                "SELECT status, size, sha256, completed_at FROM uploads"
                " WHERE bucket = ? AND object_key = ? ORDER BY started_at DESC LIMIT 1",
                (self.bucket, key),
            ).fetchone()
        if row is None:
            raise RuntimeError(f"no catalog row for {key}")
        return dict(row)

    def enabled(self, phase: str) -> bool:
        return phase in self.args.phases

    # -- single uploads --

    def direct_s3(self, src: Path, key: str) -> dict[str, float]:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4
        )
        weed0, cpu0, start = cpu_seconds(self.seaweed.pid), self_cpu(), time.perf_counter()
        self.s3.upload_file(str(src), self.bucket, key, Config=config)
        wall = time.perf_counter() - start
        out = {"wall": wall, "client_cpu": self_cpu() - cpu0}
        out["seaweed_cpu"] = cpu_seconds(self.seaweed.pid) - weed0
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        return out

    def openssh(self, src: Path, name: str) -> dict[str, float]:
        assert self.sshd is not None
        target = self.sshd.root / name
        self.sshd.settle()
        cpu0 = self.sshd.cpu()
        wall, client = run_sftp(
            self.sshd.port, self.sshd.user, self.key, f"put {src} {target}\n", self.args.ssh_opt
        )
        self.sshd.settle()
        out = {"wall": wall, "client_cpu": client, "server_cpu": self.sshd.cpu() - cpu0}
        target.unlink(missing_ok=True)
        return out

    def through_gateway(self, gw: GatewayProc, src: Path, remote: str, sha: str) -> dict:
        size = src.stat().st_size
        weed0, cpu0 = cpu_seconds(self.seaweed.pid), gw.cpu()
        wall, client = run_sftp(
            gw.port, BENCH_USER, self.key, f"put {src} {remote}\n", self.args.ssh_opt
        )
        out: dict[str, Any] = {
            "wall": wall,
            "client_cpu": client,
            "gateway_cpu": gw.cpu() - cpu0,
            "seaweed_cpu": cpu_seconds(self.seaweed.pid) - weed0,
        }
        self.check_and_delete(remote, size, sha)
        return out

    def check_and_delete(self, remote: str, size: int, sha: str) -> dict[str, Any]:
        """The catalog row must say completed with the right size and SHA-256."""
        key = f"incoming/{BENCH_USER}/{remote.lstrip('/')}"
        row = self.catalog_row(key)
        if row["status"] != "completed" or row["size"] != size or row["sha256"] != sha:
            raise RuntimeError(f"gateway upload of {remote} is wrong: {row}")
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        return row

    def tail_latency(self, gw: GatewayProc, src: Path, remote: str, sha: str) -> dict:
        """Last byte sent to: object complete + catalog row + event queued, and CLOSE reply."""
        trace = traced_put(gw.port, BENCH_USER, self.key, src, remote, self.args.ssh_opt)
        row = self.check_and_delete(remote, src.stat().st_size, sha)
        done = completed_timestamp(row["completed_at"])
        t = trace
        return {
            "last_byte_to_catalog_row": _gap(t.last_write_sent, done),
            "last_ack_to_catalog_row": _gap(t.last_ack, done),
            "last_byte_to_close_reply": _gap(t.last_write_sent, t.close_reply),
            "close_request_to_reply": _gap(t.close_sent, t.close_reply),
        }

    def single_size(self, size: int) -> dict[str, Any]:
        label = label_of(size)
        src = make_pdf(self.work / f"src-{label}.pdf", size)
        sha = sha256_file(src)
        runs: dict[str, list[dict[str, Any]]] = {
            "direct": [],
            "openssh": [],
            "gateway": [],
            "latency": [],
        }
        gw = self.launcher.restart()
        run_sftp(gw.port, BENCH_USER, self.key, "ls\n", self.args.ssh_opt)  # warm imports
        try:
            for i in range(self.args.runs):
                if self.enabled("direct"):
                    runs["direct"].append(self.direct_s3(src, f"direct/{label}-{i}.pdf"))
                if self.enabled("openssh"):
                    runs["openssh"].append(self.openssh(src, f"{label}-{i}.pdf"))
                if self.enabled("gateway"):
                    remote = f"/single-{label}-{i}.pdf"
                    runs["gateway"].append(self.through_gateway(gw, src, remote, sha))
                print(f"  {label} run {i + 1}/{self.args.runs} done", file=sys.stderr)
            hwm = gw.hwm_kib()
            if self.enabled("gateway"):
                for i in range(self.args.latency_runs):
                    remote = f"/tail-{label}-{i}.pdf"
                    runs["latency"].append(self.tail_latency(gw, src, remote, sha))
        finally:
            src.unlink(missing_ok=True)
        return summarise_size(size, runs, gw.idle_rss_kib, hwm)

    # -- concurrency --

    def concurrent(self) -> dict[str, Any]:
        count, size = self.args.concurrency, parse_size(self.args.concurrent_size)
        src = make_pdf(self.work / "src-concurrent.pdf", size)
        results = []
        try:
            for run in range(self.args.runs):
                gw = self.launcher.restart()
                run_sftp(gw.port, BENCH_USER, self.key, "ls\n", self.args.ssh_opt)
                cpu0 = gw.cpu()
                start = time.perf_counter()
                with ThreadPoolExecutor(count) as pool:
                    futures = [
                        pool.submit(
                            run_sftp,
                            gw.port,
                            BENCH_USER,
                            self.key,
                            f"put {src} /conc-{run}/f{i:02d}.pdf\n",
                            self.args.ssh_opt,
                        )
                        for i in range(count)
                    ]
                    walls = [f.result()[0] for f in futures]
                wall = time.perf_counter() - start
                total = count * size
                results.append(
                    {
                        "wall": wall,
                        "slowest": max(walls),
                        "aggregate_mib_s": total / MIB / wall,
                        "gateway_cpu_per_gib": per_gib(gw.cpu() - cpu0, total),
                        "idle_rss_mib": gw.idle_rss_kib / 1024,
                        "peak_above_idle_mib": (gw.hwm_kib() - gw.idle_rss_kib) / 1024,
                    }
                )
                self.delete_prefix(f"incoming/{BENCH_USER}/conc-{run}/")
                print(f"  concurrent run {run + 1}/{self.args.runs} done", file=sys.stderr)
        finally:
            src.unlink(missing_ok=True)
        return {
            "uploads": count,
            "size": size,
            "runs": results,
            **{k: median([r[k] for r in results]) for k in results[0]},
        }

    # -- small files and sessions --

    def small_files(self) -> dict[str, Any]:
        count, size = self.args.small_count, parse_size(self.args.small_size)
        folder = self.work / "small"
        folder.mkdir(exist_ok=True)
        files = [make_pdf(folder / f"s{i:04d}.pdf", size) for i in range(count)]
        out: dict[str, Any] = {"files": count, "size": size}
        gw = self.launcher.current or self.launcher.restart()
        for target, port, user in self._servers(gw):
            rates = []
            for run in range(self.args.runs):
                base = f"/small-{run}" if target == "gateway" else f"{self.sshd.root}/small-{run}"  # type: ignore[union-attr]
                lines = [f"mkdir {base}"] + [f"put {f} {base}/{f.name}" for f in files]
                wall, _ = run_sftp(port, user, self.key, "\n".join(lines) + "\n", self.args.ssh_opt)
                rates.append(count / wall)
                if target == "gateway":
                    self.delete_prefix(f"incoming/{BENCH_USER}/small-{run}/")
                else:
                    shutil.rmtree(Path(base), ignore_errors=True)
            out[target] = {"files_per_s": median(rates), "runs": rates}
        shutil.rmtree(folder, ignore_errors=True)
        return out

    # -- serve --workers N --

    def workers_scaling(self) -> dict[str, Any]:
        """For 1 and 2 workers: aggregate MiB/s and gateway CPU per GiB (supervisor and
        workers) of 4 and --concurrency concurrent uploads; small files/s in one session
        and with --session-parallel sessions."""
        base = list(self.launcher.overrides)
        size = parse_size(self.args.concurrent_size)
        src = make_pdf(self.work / "src-workers.pdf", size)
        small_dir = self.work / "small-workers"
        small_dir.mkdir(exist_ok=True)
        count = max(40, self.args.small_count // 4)
        small_size = parse_size(self.args.small_size)
        small = [make_pdf(small_dir / f"w{i:04d}.pdf", small_size) for i in range(count)]
        out: dict[str, Any] = {"size": size, "small_files": count}
        try:
            for workers in (1, 2):
                self.launcher.overrides = [  # every client logs in at once from 127.0.0.1
                    "server.max_startups='100'",
                    "server.per_source_max_startups=100",
                    *base,
                    f"server.workers={workers}",
                ]
                gw = self.launcher.restart()
                time.sleep(8 if workers > 1 else 0)  # every worker up, not just the first
                row: dict[str, Any] = {}
                for uploads in sorted({4, self.args.concurrency}):
                    row[f"concurrent_{uploads}"] = self._concurrent_once(gw, src, uploads, workers)
                row["small_one_session"] = self._small_sessions(gw, small, 1, workers)
                row["small_parallel"] = self._small_sessions(
                    gw, small, self.args.session_parallel, workers
                )
                out[f"workers_{workers}"] = row
                print(f"  workers={workers} done: {row}", file=sys.stderr)
        finally:
            self.launcher.overrides = base
            src.unlink(missing_ok=True)
            shutil.rmtree(small_dir, ignore_errors=True)
        return out

    def _concurrent_once(self, gw: GatewayProc, src: Path, uploads: int, workers: int) -> dict:
        size = src.stat().st_size
        folder = f"/w{workers}-c{uploads}"
        cpu0, start = gw.cpu(), time.perf_counter()
        self._sessions_at_once(gw, [f"put {src} {folder}-{i:02d}.pdf\n" for i in range(uploads)])
        wall = time.perf_counter() - start
        self.delete_prefix(f"incoming/{BENCH_USER}/w{workers}-c{uploads}")
        total = uploads * size
        return {
            "aggregate_mib_s": total / MIB / wall,
            "gateway_cpu_per_gib": per_gib(gw.cpu() - cpu0, total),
        }

    def _sessions_at_once(self, gw: GatewayProc, scripts: list[str]) -> None:
        """One `sftp -b` session per script, all at once; raises if one fails."""
        with ThreadPoolExecutor(len(scripts)) as pool:
            args = self.args.ssh_opt
            list(pool.map(lambda s: run_sftp(gw.port, BENCH_USER, self.key, s, args), scripts))

    def _small_sessions(
        self, gw: GatewayProc, files: list[Path], sessions: int, workers: int
    ) -> float:
        """Files per second when `sessions` sftp sessions share the files."""
        folder = f"/w{workers}-s{sessions}"
        run_sftp(gw.port, BENCH_USER, self.key, f"mkdir {folder}\n", self.args.ssh_opt)
        scripts = [
            "".join(f"put {f} {folder}/{f.name}\n" for f in files[i::sessions])
            for i in range(sessions)
        ]
        start = time.perf_counter()
        self._sessions_at_once(gw, scripts)
        rate = len(files) / (time.perf_counter() - start)
        self.delete_prefix(f"incoming/{BENCH_USER}{folder}/")
        return rate

    def sessions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        gw = self.launcher.current or self.launcher.restart()
        total, parallel = self.args.sessions, self.args.session_parallel
        for target, port, user in self._servers(gw):

            def one(p: int = port, u: str = user) -> float:
                return run_sftp(p, u, self.key, "ls\n", self.args.ssh_opt)[0]

            cpu0 = gw.cpu() if target == "gateway" else self.sshd.cpu()  # type: ignore[union-attr]
            start = time.perf_counter()
            latencies = [one() for _ in range(total)]
            sequential = total / (time.perf_counter() - start)
            if target == "openssh":
                self.sshd.settle()  # type: ignore[union-attr]
            cpu = (gw.cpu() if target == "gateway" else self.sshd.cpu()) - cpu0  # type: ignore[union-attr]
            start = time.perf_counter()
            with ThreadPoolExecutor(parallel) as pool:
                list(pool.map(lambda _: one(), range(total)))
            concurrent_rate = total / (time.perf_counter() - start)
            out[target] = {
                "sequential_per_s": sequential,
                f"parallel{parallel}_per_s": concurrent_rate,
                "median_session_s": median(latencies),
                "server_cpu_ms_per_session": cpu / total * 1000,
            }
        return out

    def _servers(self, gw: GatewayProc) -> Iterator[tuple[str, int, str]]:
        yield "gateway", gw.port, BENCH_USER
        if self.sshd is not None and self.enabled("openssh"):
            yield "openssh", self.sshd.port, self.sshd.user

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


def completed_timestamp(value: str) -> float:
    """SQLite keeps completed_at as UTC text; return it as a Unix time."""
    parsed = datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _med(runs: list[dict[str, Any]], key: str) -> float | None:
    return median([r[key] for r in runs if r.get(key) is not None])


def summarise_size(
    size: int, runs: dict[str, list[dict[str, Any]]], idle_kib: int, hwm_kib: int
) -> dict[str, Any]:
    """Medians, ratios and per-GiB CPU for one file size."""
    direct, openssh, gateway = (_med(runs[k], "wall") for k in ("direct", "openssh", "gateway"))
    boto_cpu = _med(runs["direct"], "client_cpu")
    sshd_cpu = _med(runs["openssh"], "server_cpu")
    gw_cpu = _med(runs["gateway"], "gateway_cpu")
    floor = boto_cpu + sshd_cpu if boto_cpu is not None and sshd_cpu is not None else None
    out: dict[str, Any] = {
        "size": size,
        "runs": runs,
        "direct_s3_s": direct,
        "openssh_s": openssh,
        "gateway_s": gateway,
        "ratio_gateway_direct": gateway / direct if gateway and direct else None,
        "ratio_gateway_openssh": gateway / openssh if gateway and openssh else None,
        "gateway_cpu_per_gib": per_gib(gw_cpu, size) if gw_cpu is not None else None,
        "floor_cpu_per_gib": per_gib(floor, size) if floor is not None else None,
        "boto3_cpu_per_gib": per_gib(boto_cpu, size) if boto_cpu is not None else None,
        "sshd_cpu_per_gib": per_gib(sshd_cpu, size) if sshd_cpu is not None else None,
        "seaweed_cpu_per_gib_gateway": _per_gib_med(runs["gateway"], "seaweed_cpu", size),
        "seaweed_cpu_per_gib_direct": _per_gib_med(runs["direct"], "seaweed_cpu", size),
        "sftp_client_cpu_per_gib": _per_gib_med(runs["gateway"], "client_cpu", size),
        "idle_rss_mib": idle_kib / 1024,
        "peak_rss_mib": hwm_kib / 1024,
        "peak_above_idle_mib": (hwm_kib - idle_kib) / 1024,
    }
    if gw_cpu is not None and floor:
        out["cpu_ratio"] = gw_cpu / floor
    for key in (
        "last_byte_to_catalog_row",
        "last_ack_to_catalog_row",
        "last_byte_to_close_reply",
        "close_request_to_reply",
    ):
        out[key] = _med(runs["latency"], key)
    return out


def _gap(start: float | None, end: float | None) -> float | None:
    return end - start if start is not None and end is not None else None


def _per_gib_med(runs: list[dict[str, Any]], key: str, size: int) -> float | None:
    value = _med(runs, key)
    return per_gib(value, size) if value is not None else None


# -- output ---------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict[str, Any]) -> None:
    runs = result["meta"]["runs"]
    print(f"\nsftp-gateway benchmark, medians of {runs} runs ({result['meta']['label']})")
    header = (
        f"{'size':>8} {'S3 s':>7} {'ossh s':>7} {'gw s':>7} {'gw/S3':>6} {'gw/ossh':>7} "
        f"{'gwCPU/GiB':>9} {'floor':>6} {'cpu x':>6} {'RSS+MiB':>7} {'tail s':>6}"
    )
    print(header)
    for label, row in result["sizes"].items():
        print(
            f"{label:>8} {_fmt(row['direct_s3_s']):>7} {_fmt(row['openssh_s']):>7} "
            f"{_fmt(row['gateway_s']):>7} {_fmt(row['ratio_gateway_direct']):>6} "
            f"{_fmt(row['ratio_gateway_openssh']):>7} {_fmt(row['gateway_cpu_per_gib']):>9} "
            f"{_fmt(row['floor_cpu_per_gib']):>6} {_fmt(row.get('cpu_ratio')):>6} "
            f"{_fmt(row['peak_above_idle_mib'], '.1f'):>7} "
            f"{_fmt(row['last_byte_to_catalog_row'], '.3f'):>6}"
        )
    if conc := result.get("concurrent"):
        print(
            f"{conc['uploads']} x {label_of(conc['size'])} concurrent: "
            f"{conc['aggregate_mib_s']:.1f} MiB/s aggregate, {conc['wall']:.2f} s, "
            f"peak RSS +{conc['peak_above_idle_mib']:.1f} MiB above idle, "
            f"{conc['gateway_cpu_per_gib']:.2f} CPU-s/GiB"
        )
    if small := result.get("small_files"):
        parts = [f"{k} {v['files_per_s']:.1f}/s" for k, v in small.items() if isinstance(v, dict)]
        print(
            f"small files ({small['files']} x {small['size']} B, one session): " + ", ".join(parts)
        )
    for target, row in (result.get("sessions") or {}).items():
        print(
            f"sessions {target}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.endswith("per_s"))
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated file sizes")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="50MB, 2 runs, fewer files")
    parser.add_argument(
        "--phases",
        default="direct,openssh,gateway,concurrent,small,sessions",
        help="subset of: direct, openssh, gateway, concurrent, small, sessions, workers"
        " (workers: 1 vs 2 worker processes; only when asked)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="gateway config override, e.g. server.window_size=16MiB (repeatable)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the gateway process, e.g. MALLOC_ARENA_MAX=2 (repeatable)",
    )
    parser.add_argument(
        "--ssh-opt",
        action="append",
        default=[],
        help="extra sftp client argument for every session, e.g. --ssh-opt=-caes128-ctr",
    )
    parser.add_argument(
        "--latency-runs", type=int, default=3, help="traced uploads per size (tail latency)"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--concurrent-size", default="100MB")
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--small-size", default="100KB")
    parser.add_argument("--sessions", type=int, default=40, help="sessions per mode")
    parser.add_argument("--session-parallel", type=int, default=8)
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--keep-workdir", action="store_true")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--git-ref",
        help="run the gateway from `git archive REF` (e.g. HEAD), not the working tree",
    )
    source.add_argument("--gateway-src", type=Path, help="run the gateway from this source tree")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = "50MB" if args.sizes == DEFAULT_SIZES else args.sizes
        args.runs = min(args.runs, 2)
        args.latency_runs = min(args.latency_runs, 2)
        args.concurrent_size = "20MB" if args.concurrent_size == "100MB" else args.concurrent_size
        args.small_count = min(args.small_count, 300)
        args.sessions = min(args.sessions, 20)
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    return args


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sftpgw-bench-"))
    children = Children()
    bench: Bench | None = None
    try:
        source = gateway_source(args, work)
        key = ssh_keygen(work / "client_ed25519")
        pub = key.with_suffix(".pub")
        print("starting SeaweedFS ...", file=sys.stderr)
        children.seaweed = start_seaweed(work / "seaweed", credentials=CREDENTIALS)
        bucket = children.seaweed.create_bucket("sftpgw-bench")
        sshd = start_sshd(work, pub, children) if "openssh" in args.phases else None
        launcher = GatewayLauncher(
            work,
            children.seaweed.endpoint,
            bucket,
            args.overrides,
            pub,
            children,
            source,
            args.gateway_env,
        )
        launcher.prepare()
        bench = Bench(args, work, children, children.seaweed, bucket, key, sshd, launcher)
        bench.setup_clients()
        gw = launcher.restart()
        meta = metadata(args, gw, sshd, key)
        meta["gateway_code"] = describe_source(args)
        result: dict[str, Any] = {"meta": meta, "sizes": {}}
        for size in args.size_list:
            print(f"measuring {label_of(size)} ...", file=sys.stderr)
            result["sizes"][label_of(size)] = bench.single_size(size)
        if bench.enabled("concurrent"):
            print("measuring concurrent uploads ...", file=sys.stderr)
            result["concurrent"] = bench.concurrent()
        launcher.restart()
        if bench.enabled("small"):
            print("measuring small files ...", file=sys.stderr)
            result["small_files"] = bench.small_files()
        if bench.enabled("sessions"):
            print("measuring sessions ...", file=sys.stderr)
            result["sessions"] = bench.sessions()
        if bench.enabled("workers"):
            print("measuring serve --workers 1 and 2 ...", file=sys.stderr)
            result["workers"] = bench.workers_scaling()
        return result
    finally:
        children.stop_all()
        if bench and bench.sshd:
            shutil.rmtree(bench.sshd.root, ignore_errors=True)
        if args.keep_workdir:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


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


def describe_source(args: argparse.Namespace) -> str:
    ref = args.git_ref or "HEAD"
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True
    ).stdout.strip()
    if args.gateway_src:
        return f"tree {args.gateway_src}"
    if args.git_ref:
        return f"git {args.git_ref} ({commit})"
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "sftp_gateway"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"working tree at {commit}" + (" with local changes" if dirty else "")


def metadata(args: argparse.Namespace, gw: GatewayProc, sshd: Sshd | None, key: Path) -> dict:
    out = {
        "label": args.label or ("quick" if args.quick else "full"),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "sizes": [label_of(s) for s in args.size_list],
        "overrides": args.overrides,
        "gateway_env": args.gateway_env,
        "ssh_opts": args.ssh_opt,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gateway_cipher": negotiated(gw.port, BENCH_USER, key, args.ssh_opt),
    }
    if sshd is not None:
        out["openssh_cipher"] = negotiated(sshd.port, sshd.user, key, args.ssh_opt)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with terminate_on_signal():
        result = run(args)
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"-{args.label}" if args.label else ""
    path = args.output / f"{stamp}{suffix}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
