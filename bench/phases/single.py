"""Phases `direct`, `openssh` and `gateway`: one file per size, timed against the floors,
then the traced uploads for the tail latency."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.clients import run_sftp, traced_put
from bench.common import BENCH_USER, MIB, label_of
from bench.files import make_pdf, sha256_file
from bench.measure import cpu_seconds, gap, self_cpu, status_kib, summarise_size
from bench.phases.base import Bench
from bench.servers import GatewayProc


def direct_s3(bench: Bench, src: Path, key: str) -> dict[str, float]:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4
    )
    weed0, cpu0, start = cpu_seconds(bench.seaweed.pid), self_cpu(), time.perf_counter()
    bench.s3.upload_file(str(src), bench.bucket, key, Config=config)
    wall = time.perf_counter() - start
    out = {"wall": wall, "client_cpu": self_cpu() - cpu0}
    out["seaweed_cpu"] = cpu_seconds(bench.seaweed.pid) - weed0
    bench.s3.delete_object(Bucket=bench.bucket, Key=key)
    return out


def openssh(bench: Bench, src: Path, name: str) -> dict[str, float]:
    assert bench.sshd is not None
    target = bench.sshd.root / name
    bench.sshd.settle()
    cpu0 = bench.sshd.cpu()
    wall, client = run_sftp(
        bench.sshd.port, bench.sshd.user, bench.key, f"put {src} {target}\n", bench.args.ssh_opt
    )
    bench.sshd.settle()
    out = {"wall": wall, "client_cpu": client, "server_cpu": bench.sshd.cpu() - cpu0}
    target.unlink(missing_ok=True)
    return out


def through_gateway(bench: Bench, gw: GatewayProc, src: Path, remote: str, sha: str) -> dict:
    size = src.stat().st_size
    weed0, cpu0 = cpu_seconds(bench.seaweed.pid), gw.cpu()
    wall, client = run_sftp(
        gw.port, BENCH_USER, bench.key, f"put {src} {remote}\n", bench.args.ssh_opt
    )
    out: dict[str, Any] = {
        "wall": wall,
        "client_cpu": client,
        "gateway_cpu": gw.cpu() - cpu0,
        "seaweed_cpu": cpu_seconds(bench.seaweed.pid) - weed0,
    }
    bench.check_and_delete(remote, size, sha)
    return out


def completed_timestamp(value: str) -> float:
    """SQLite keeps completed_at as UTC text; return it as a Unix time."""
    parsed = datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def tail_latency(bench: Bench, gw: GatewayProc, src: Path, remote: str, sha: str) -> dict:
    """Last byte sent to: object complete + catalog row + event queued, and CLOSE reply."""
    trace = traced_put(gw.port, BENCH_USER, bench.key, src, remote, bench.args.ssh_opt)
    row = bench.check_and_delete(remote, src.stat().st_size, sha)
    done = completed_timestamp(row["completed_at"])
    t = trace
    return {
        "last_byte_to_catalog_row": gap(t.last_write_sent, done),
        "last_ack_to_catalog_row": gap(t.last_ack, done),
        "last_byte_to_close_reply": gap(t.last_write_sent, t.close_reply),
        "close_request_to_reply": gap(t.close_sent, t.close_reply),
    }


def single_size(bench: Bench, size: int) -> dict[str, Any]:
    label = label_of(size)
    src = make_pdf(bench.work / f"src-{label}.pdf", size)
    sha = sha256_file(src)
    runs: dict[str, list[dict[str, Any]]] = {
        "direct": [],
        "openssh": [],
        "gateway": [],
        "latency": [],
    }
    gw = bench.launcher.restart()
    run_sftp(gw.port, BENCH_USER, bench.key, "ls\n", bench.args.ssh_opt)  # warm imports
    warm_kib = warm_up(bench, gw) if bench.enabled("gateway") else None
    try:
        for i in range(bench.args.runs):
            if bench.enabled("direct"):
                runs["direct"].append(direct_s3(bench, src, f"direct/{label}-{i}.pdf"))
            if bench.enabled("openssh"):
                runs["openssh"].append(openssh(bench, src, f"{label}-{i}.pdf"))
            if bench.enabled("gateway"):
                remote = f"/single-{label}-{i}.pdf"
                runs["gateway"].append(through_gateway(bench, gw, src, remote, sha))
            print(f"  {label} run {i + 1}/{bench.args.runs} done", file=sys.stderr)
        hwm = gw.hwm_kib()
        if bench.enabled("gateway"):
            for i in range(bench.args.latency_runs):
                remote = f"/tail-{label}-{i}.pdf"
                runs["latency"].append(tail_latency(bench, gw, src, remote, sha))
    finally:
        src.unlink(missing_ok=True)
    summary = summarise_size(size, runs, gw.idle_rss_kib, hwm)
    if warm_kib is not None:
        summary["warm_rss_mib"] = warm_kib / 1024
        summary["peak_above_warm_mib"] = (hwm - warm_kib) / 1024
    return summary


def warm_up(bench: Bench, gw: GatewayProc) -> int:
    """One 20 MB upload (3 parts: the sender's threads, the S3 connections, lazy imports
    made once per process), then the RSS from which an upload's own memory counts."""
    src = make_pdf(bench.work / "warm-up.pdf", 20_000_000)
    try:
        through_gateway(bench, gw, src, "/warm-up.pdf", sha256_file(src))
    finally:
        src.unlink(missing_ok=True)
    return status_kib(gw.pid, "VmRSS")
