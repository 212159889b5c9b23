"""The clients: OpenSSH `sftp -b -` sessions, and traced uploads for the tail latency."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import SSH_OPTS
from bench.measure import children_cpu


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
