"""Profile the gateway with py-spy while it receives one upload, and summarise where CPU goes.

    python bench/profile.py --size 512MiB [--set server.window_size=16MiB] [--native]

Starts SeaweedFS and the gateway as bench/run.py does, uploads one generated PDF with
OpenSSH `sftp`, records the gateway with `py-spy record --format speedscope` during the
upload, and prints the share of samples per category (SSH packet handling, cipher, MAC,
SFTP parsing, buffer copies, hashing, S3 client, ...) and the top functions. Needs
`pip install py-spy`. `summarise FILE.json` re-reads an existing profile.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Run as a script (`python bench/profile.py`), Python puts bench/ on sys.path, not the repo
# root: add the root so `bench.*` and `tests.*` import as packages. (`python -m
# bench.profile` from the repo root needs nothing.)
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.clients import run_sftp
from bench.common import BENCH_USER, CLK_TCK, parse_size
from bench.files import make_pdf
from bench.servers import (
    Children,
    GatewayLauncher,
    gateway_source,
    ssh_keygen,
    start_s3,
    terminate_on_signal,
)

# Who asked for the work: (category, substring of "file:function"), the first Python frame
# from the leaf that matches wins.
OWNERS: list[tuple[str, str]] = [
    ("MAC (hmac)", "hmac.py"),
    ("S3 checksum (crc32_b64)", "storage/s3.py:crc32_b64"),
    ("SigV4 payload hash (botocore.auth)", "botocore/auth.py"),
    ("S3 HTTP send (http.client/urllib3)", "http/client.py"),
    ("S3 HTTP send (http.client/urllib3)", "urllib3/"),
    ("botocore/boto3 request handling", "botocore/"),
    ("botocore/boto3 request handling", "boto3/"),
    ("upload buffer copies (upload/stream.py)", "upload/stream.py"),
    ("gateway upload logic (sftp_gateway)", "sftp_gateway/"),
    ("SFTP request parsing/dispatch (paramiko.sftp*)", "paramiko/sftp"),
    ("SSH message objects (paramiko.message)", "paramiko/message.py"),
    ("SSH channel/window (paramiko.channel)", "paramiko/channel.py"),
    ("SSH channel/window (paramiko.channel)", "paramiko/buffered_pipe.py"),
    ("SSH packet read/decrypt/MAC (paramiko.packet)", "paramiko/packet.py"),
    ("SSH transport loop (paramiko.transport)", "paramiko/transport.py"),
    ("thread pools / locks", "concurrent/futures"),
    ("thread pools / locks", "threading.py"),
    ("SQL catalog", "sqlalchemy"),
]
# Threads whose samples belong to one job when no Python frame says otherwise.
THREAD_OWNERS = {"sha256": "sha256 of the file (hash thread)", "part": "S3 part upload threads"}
# What the CPU was doing at the leaf, for native (--native) samples.
NATIVE_KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("AES (cipher)", ("aes", "AES", "gcm", "GCM", "ctr128", "Cipher")),
    ("SHA-256", ("sha256", "SHA256", "sha512", "SHA512")),
    ("CRC32", ("crc32",)),
    ("memcpy/memmove (copies)", ("memcpy", "memmove")),
    ("syscalls (recv/send/futex/poll)", ("recv", "send", "futex", "poll", "select", "syscall")),
    ("allocation", ("malloc", "free", "mmap", "realloc", "PyMem", "PyObject_Malloc")),
    ("Python interpreter", ("_PyEval", "Py", "_Py")),
]


def frame_key(frame: dict[str, Any]) -> str:
    """`file:function` plus `@line` for Python frames (tells decrypt from MAC lines)."""
    line = f"@{frame['line']}" if frame.get("line") else ""
    return f"{frame.get('file') or ''}:{frame.get('name', '')}{line}"


def is_python(key: str) -> bool:
    return ".py:" in key


def owner_of(stack: list[str], thread: str) -> str:
    """The first Python frame from the leaf that names a category; else the thread's job."""
    for key in reversed(stack):
        if not is_python(key):
            continue
        for category, needle in OWNERS:
            if needle in key.partition("@")[0]:
                return category
    return THREAD_OWNERS.get(thread, "other Python")


def native_kind(stack: list[str]) -> str:
    if not stack or is_python(stack[-1]):
        return "Python frame (no native leaf)"
    leaf = stack[-1].rpartition(":")[2].partition("@")[0]
    for kind, needles in NATIVE_KINDS:
        if any(n in leaf for n in needles):
            return kind
    return "other native"


def short(key: str) -> str:
    path, _, name = key.rpartition(":")
    name, _, line = name.partition("@")
    name = f"{name}:{line}" if line else name
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def _thread_name(profile: dict[str, Any]) -> str:
    name = profile["name"].split('"')[1] if '"' in profile["name"] else profile["name"]
    return name.rstrip("0123456789_-")


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    """Shares of samples: by owner, by native leaf kind, by thread, top Python leaves."""
    data = json.loads(path.read_text())
    frames = [frame_key(f) for f in data["shared"]["frames"]]
    counters: dict[str, Counter[str]] = {
        k: Counter() for k in ("owners", "native", "threads", "owner_x_native", "top_python")
    }
    total = 0.0
    for profile in data["profiles"]:
        thread = _thread_name(profile)
        weights = profile.get("weights") or [1.0] * len(profile["samples"])
        for stack_ids, weight in zip(profile["samples"], weights, strict=False):
            stack = [frames[i] for i in stack_ids]
            owner, kind = owner_of(stack, thread), native_kind(stack)
            python = [k for k in stack if is_python(k)]
            counters["owners"][owner] += weight
            counters["native"][kind] += weight
            counters["threads"][thread] += weight
            counters["owner_x_native"][f"{owner} / {kind}"] += weight
            counters["top_python"][short(python[-1]) if python else "?"] += weight
            total += weight
    return {
        "samples_seconds": total,
        **{
            name: {k: v / total for k, v in counter.most_common(top)}
            for name, counter in counters.items()
        },
    }


class ThreadCPU(threading.Thread):
    """utime+stime of every thread of a process, read from /proc/PID/task every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.first = self._read()
        self.last = dict(self.first)
        self._stop_event = threading.Event()

    def _read(self) -> dict[int, float]:
        out = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return out

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            self.last.update(self._read())

    def stop(self) -> dict[int, float]:
        self._stop_event.set()
        self.join()
        self.last.update(self._read())
        return {tid: cpu - self.first.get(tid, 0.0) for tid, cpu in self.last.items()}


def thread_names(profile_path: Path) -> dict[int, str]:
    """py-spy names profiles 'Thread TID "name"'."""
    names = {}
    for profile in json.loads(profile_path.read_text())["profiles"]:
        parts = profile["name"].split(" ", 2)
        if len(parts) >= 2 and parts[1].isdigit():
            names[int(parts[1])] = _thread_name(profile) or "?"
    return names


def cpu_by_thread(deltas: dict[int, float], names: dict[int, str]) -> dict[str, float]:
    out: Counter[str] = Counter()
    for tid, cpu in deltas.items():
        out[names.get(tid, "unnamed (not sampled)")] += cpu
    return dict(out.most_common())


def print_summary(summary: dict[str, Any], cpu: float | None = None) -> None:
    extra = f", gateway CPU {cpu:.2f} s" if cpu is not None else ""
    print(f"\nsampled {summary['samples_seconds']:.2f} thread-seconds{extra}")
    if summary.get("thread_cpu_seconds"):
        print("\nCPU seconds by thread (/proc/PID/task):")
        for name, seconds in summary["thread_cpu_seconds"].items():
            print(f"  {seconds:6.2f}  {name}")
    for title in ("owners", "native", "threads", "owner_x_native", "top_python"):
        print(f"\n{title}:")
        for name, share in list(summary[title].items())[:15]:
            print(f"  {share * 100:5.1f}%  {name}")


def record(args: argparse.Namespace) -> int:
    """Start the services, upload once under py-spy, summarise."""
    work = Path(tempfile.mkdtemp(prefix="sftpgw-profile-"))
    children = Children()
    try:
        key = ssh_keygen(work / "client_ed25519")
        start_s3(work, children)
        bucket = children.seaweed.create_bucket("sftpgw-profile")
        source = gateway_source(args, work)
        launcher = GatewayLauncher(
            work,
            children.seaweed.endpoint,
            bucket,
            args.overrides,
            key.with_suffix(".pub"),
            children,
            source,
        )
        launcher.prepare()
        gw = launcher.restart()
        commands, what = upload_commands(args, work)
        run_sftp(gw.port, BENCH_USER, key, "ls\n", args.ssh_opt)
        out = args.output.with_suffix(".json")
        spy = [
            "py-spy", "record", "-p", str(gw.pid), "-o", str(out),
            "--format", "speedscope", "--rate", str(args.rate),
        ]  # fmt: skip
        if args.native:
            spy.append("--native")
        if args.gil:
            spy.append("--gil")
        if args.idle:  # wall time: where each thread waits as well as where it works
            spy.append("--idle")
        profiler = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        threads = ThreadCPU(gw.pid)
        threads.start()
        cpu0 = gw.cpu()
        if args.sessions:  # connection set-up: N sequential sessions that list the home
            start = time.perf_counter()
            for _ in range(args.sessions):
                run_sftp(gw.port, BENCH_USER, key, "ls\n", args.ssh_opt)
            wall, what = time.perf_counter() - start, f"{args.sessions} sessions"
        else:
            wall, _ = run_sftp(gw.port, BENCH_USER, key, commands, args.ssh_opt)
        cpu = gw.cpu() - cpu0
        deltas = threads.stop()
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=60)
        print(f"upload of {what}: {wall:.2f} s wall, gateway {cpu:.2f} CPU-s")
        summary = summarise(out)
        summary.update({"wall": wall, "gateway_cpu": cpu, "what": what})
        summary["thread_cpu_seconds"] = cpu_by_thread(deltas, thread_names(out))
        summary["overrides"] = args.overrides
        out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary, cpu)
        print(f"\nprofile: {out}")
        return 0
    finally:
        children.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def upload_commands(args: argparse.Namespace, work: Path) -> tuple[str, str]:
    """One big file, or --small N files of --small-size in one session."""
    if not args.small:
        src = make_pdf(work / "src.pdf", parse_size(args.size))
        return f"put {src} /profiled.pdf\n", args.size
    size = parse_size(args.small_size)
    lines = ["mkdir /small"]
    for i in range(args.small):
        src = make_pdf(work / f"s{i:04d}.pdf", size)
        lines.append(f"put {src} /small/{src.name}")
    return "\n".join(lines) + "\n", f"{args.small} x {args.small_size}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512MiB")
    parser.add_argument("--small", type=int, default=0, help="N small files instead")
    parser.add_argument("--small-size", default="100KB")
    parser.add_argument("--sessions", type=int, default=0, help="N sessions (ls) instead")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames")
    parser.add_argument("--gil", action="store_true", help="only the thread holding the GIL")
    parser.add_argument("--idle", action="store_true", help="idle samples too (wall time)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--ssh-opt", action="append", default=[])
    parser.add_argument("--git-ref")
    parser.add_argument("--gateway-src", type=Path)
    parser.add_argument("--output", type=Path, default=Path("/tmp/sftpgw-profile"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["summarise"]:
        print_summary(summarise(Path(argv[1])))
        return 0
    with terminate_on_signal():
        return record(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
