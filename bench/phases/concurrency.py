"""Phase `concurrent`: --concurrency `sftp` processes each uploading --concurrent-size
at once, on a fresh gateway per run: wall, aggregate MiB/s, CPU, peak RSS above idle."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.clients import run_sftp
from bench.common import BENCH_USER, MIB, parse_size
from bench.files import make_pdf
from bench.measure import median, per_gib
from bench.phases.base import Bench


def concurrent(bench: Bench) -> dict[str, Any]:
    count, size = bench.args.concurrency, parse_size(bench.args.concurrent_size)
    src = make_pdf(bench.work / "src-concurrent.pdf", size)
    results = []
    try:
        for run in range(bench.args.runs):
            gw = bench.launcher.restart()
            run_sftp(gw.port, BENCH_USER, bench.key, "ls\n", bench.args.ssh_opt)
            cpu0 = gw.cpu()
            start = time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                futures = [
                    pool.submit(
                        run_sftp,
                        gw.port,
                        BENCH_USER,
                        bench.key,
                        f"put {src} /conc-{run}/f{i:02d}.pdf\n",
                        bench.args.ssh_opt,
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
            bench.delete_prefix(f"incoming/{BENCH_USER}/conc-{run}/")
            print(f"  concurrent run {run + 1}/{bench.args.runs} done", file=sys.stderr)
    finally:
        src.unlink(missing_ok=True)
    return {
        "uploads": count,
        "size": size,
        "runs": results,
        **{k: median([r[k] for r in results]) for k in results[0]},
    }
