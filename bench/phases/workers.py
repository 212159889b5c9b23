"""Phase `workers` (only when asked): `serve --workers 1` then `--workers 2`, concurrent
uploads and small files in one and in several sessions."""

from __future__ import annotations

import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.clients import run_sftp
from bench.common import BENCH_USER, MIB, parse_size
from bench.files import make_pdf
from bench.measure import per_gib
from bench.phases.base import Bench
from bench.servers import GatewayProc


def workers_scaling(bench: Bench) -> dict[str, Any]:
    """For 1 and 2 workers: aggregate MiB/s and gateway CPU per GiB (supervisor and
    workers) of 4 and --concurrency concurrent uploads; small files/s in one session
    and with --session-parallel sessions."""
    base = list(bench.launcher.overrides)
    size = parse_size(bench.args.concurrent_size)
    src = make_pdf(bench.work / "src-workers.pdf", size)
    small_dir = bench.work / "small-workers"
    small_dir.mkdir(exist_ok=True)
    count = max(40, bench.args.small_count // 4)
    small_size = parse_size(bench.args.small_size)
    small = [make_pdf(small_dir / f"w{i:04d}.pdf", small_size) for i in range(count)]
    out: dict[str, Any] = {"size": size, "small_files": count}
    try:
        for workers in (1, 2):
            bench.launcher.overrides = [  # every client logs in at once from 127.0.0.1
                "server.max_startups='100'",
                "server.per_source_max_startups=100",
                *base,
                f"server.workers={workers}",
            ]
            gw = bench.launcher.restart()
            time.sleep(8 if workers > 1 else 0)  # every worker up, not just the first
            row: dict[str, Any] = {}
            for uploads in sorted({4, bench.args.concurrency}):
                row[f"concurrent_{uploads}"] = _concurrent_once(bench, gw, src, uploads, workers)
            row["small_one_session"] = _small_sessions(bench, gw, small, 1, workers)
            row["small_parallel"] = _small_sessions(
                bench, gw, small, bench.args.session_parallel, workers
            )
            out[f"workers_{workers}"] = row
            print(f"  workers={workers} done: {row}", file=sys.stderr)
    finally:
        bench.launcher.overrides = base
        src.unlink(missing_ok=True)
        shutil.rmtree(small_dir, ignore_errors=True)
    return out


def _concurrent_once(bench: Bench, gw: GatewayProc, src: Path, uploads: int, workers: int) -> dict:
    size = src.stat().st_size
    folder = f"/w{workers}-c{uploads}"
    cpu0, start = gw.cpu(), time.perf_counter()
    _sessions_at_once(bench, gw, [f"put {src} {folder}-{i:02d}.pdf\n" for i in range(uploads)])
    wall = time.perf_counter() - start
    bench.delete_prefix(f"incoming/{BENCH_USER}/w{workers}-c{uploads}")
    total = uploads * size
    return {
        "aggregate_mib_s": total / MIB / wall,
        "gateway_cpu_per_gib": per_gib(gw.cpu() - cpu0, total),
    }


def _sessions_at_once(bench: Bench, gw: GatewayProc, scripts: list[str]) -> None:
    """One `sftp -b` session per script, all at once; raises if one fails."""
    with ThreadPoolExecutor(len(scripts)) as pool:
        args = bench.args.ssh_opt
        list(pool.map(lambda s: run_sftp(gw.port, BENCH_USER, bench.key, s, args), scripts))


def _small_sessions(
    bench: Bench, gw: GatewayProc, files: list[Path], sessions: int, workers: int
) -> float:
    """Files per second when `sessions` sftp sessions share the files."""
    folder = f"/w{workers}-s{sessions}"
    run_sftp(gw.port, BENCH_USER, bench.key, f"mkdir {folder}\n", bench.args.ssh_opt)
    scripts = [
        "".join(f"put {f} {folder}/{f.name}\n" for f in files[i::sessions]) for i in range(sessions)
    ]
    start = time.perf_counter()
    _sessions_at_once(bench, gw, scripts)
    rate = len(files) / (time.perf_counter() - start)
    bench.delete_prefix(f"incoming/{BENCH_USER}{folder}/")
    return rate
