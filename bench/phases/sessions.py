"""Phase `sessions`: `sftp -b` with one `ls` (connect, key exchange, public-key auth, list,
disconnect), sequentially and --session-parallel at a time; server CPU per session."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.clients import run_sftp
from bench.measure import children_cpu, machine_ceiling_per_s, median
from bench.phases.base import Bench


def sessions(bench: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    gw = bench.launcher.current or bench.launcher.restart()
    total, parallel = bench.args.sessions, bench.args.session_parallel
    for target, port, user in bench.targets(gw):

        def one(p: int = port, u: str = user) -> float:
            return run_sftp(p, u, bench.key, "ls\n", bench.args.ssh_opt)[0]

        cpu0 = gw.cpu() if target == "gateway" else bench.sshd.cpu()  # type: ignore[union-attr]
        client0 = children_cpu()
        start = time.perf_counter()
        latencies = [one() for _ in range(total)]
        client_ms = (children_cpu() - client0) / total * 1000
        sequential = total / (time.perf_counter() - start)
        if target == "openssh":
            bench.sshd.settle()  # type: ignore[union-attr]
        cpu = (gw.cpu() if target == "gateway" else bench.sshd.cpu()) - cpu0  # type: ignore[union-attr]
        start = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(lambda _: one(), range(total)))
        concurrent_rate = total / (time.perf_counter() - start)
        server_ms = cpu / total * 1000
        out[target] = {
            "sequential_per_s": sequential,
            f"parallel{parallel}_per_s": concurrent_rate,
            "median_session_s": median(latencies),
            "server_cpu_ms_per_session": server_ms,
            # sftp + ssh processes; with the server's, what one session costs the machine:
            # all cores busy with nothing else would run at most this many per second.
            "client_cpu_ms_per_session": client_ms,
            "machine_ceiling_per_s": machine_ceiling_per_s(server_ms + client_ms),
        }
    return out
