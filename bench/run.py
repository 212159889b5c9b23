"""Benchmark the gateway against its floors: direct boto3 to S3, and OpenSSH's own sftp.

One command (see bench/README.md). It starts SeaweedFS, the gateway as a subprocess
(`sftp-gateway serve`), and an OpenSSH sshd baseline, all on 127.0.0.1, then measures
uploads of generated PDFs, concurrency, small files and session set-up. Each figure is
the median of --runs runs. Results go to bench/results/<timestamp>.json and a table.
Every child process is stopped on exit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Run as a script (`python bench/run.py`), Python puts bench/ on sys.path, not the repo
# root: add the root so `bench.*` and `tests.*` import as packages. (`python -m
# bench.run` from the repo root needs nothing.)
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_SIZES, REPO, label_of, parse_size
from bench.phases.base import Bench
from bench.phases.concurrency import concurrent
from bench.phases.sessions import sessions
from bench.phases.single import single_size
from bench.phases.small import small_files
from bench.phases.workers import workers_scaling
from bench.report import describe_source, metadata, print_table, write_result
from bench.servers import (
    Children,
    GatewayLauncher,
    gateway_source,
    ssh_keygen,
    start_s3,
    start_sshd,
    terminate_on_signal,
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sftpgw-bench-"))
    children = Children()
    bench: Bench | None = None
    try:
        source = gateway_source(args, work)
        key = ssh_keygen(work / "client_ed25519")
        pub = key.with_suffix(".pub")
        print("starting SeaweedFS ...", file=sys.stderr)
        seaweed = start_s3(work, children)
        bucket = seaweed.create_bucket("sftpgw-bench")
        sshd = start_sshd(work, pub, children) if "openssh" in args.phases else None
        launcher = GatewayLauncher(
            work,
            seaweed.endpoint,
            bucket,
            args.overrides,
            pub,
            children,
            source,
            args.gateway_env,
        )
        launcher.prepare()
        bench = Bench(args, work, children, seaweed, bucket, key, sshd, launcher)
        bench.setup_clients()
        gw = launcher.restart()
        meta = metadata(args, gw, sshd, key)
        meta["gateway_code"] = describe_source(args)
        result: dict[str, Any] = {"meta": meta, "sizes": {}}
        for size in args.size_list:
            print(f"measuring {label_of(size)} ...", file=sys.stderr)
            result["sizes"][label_of(size)] = single_size(bench, size)
        phases = [
            ("concurrent", "concurrent", "concurrent uploads", concurrent),
            ("small", "small_files", "small files", small_files),
            ("sessions", "sessions", "sessions", sessions),
            ("workers", "workers", "serve --workers 1 and 2", workers_scaling),
        ]
        for phase, field, what, measure in phases:
            if bench.enabled(phase):
                print(f"measuring {what} ...", file=sys.stderr)
                result[field] = _measured(measure, bench, what)
                launcher.restart()  # each phase starts from an idle gateway
        return result
    finally:
        children.stop_all()
        if bench and bench.sshd:
            shutil.rmtree(bench.sshd.root, ignore_errors=True)
        if args.keep_workdir:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _measured(measure: Callable[[Bench], dict[str, Any]], bench: Bench, what: str) -> dict:
    """A phase's figures; a failed phase is reported, the others' figures are kept."""
    try:
        return measure(bench)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"{what} failed: {exc}", file=sys.stderr)
        return {"error": str(exc)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with terminate_on_signal():
        result = run(args)
    path = write_result(result, args)
    print_table(result)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
