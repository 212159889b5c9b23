"""Measurements: CPU and memory from /proc and getrusage, medians and per-GiB figures,
and the summary of one file size's runs."""

from __future__ import annotations

import os
import resource
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import CLK_TCK, GIB

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


# -- medians and summaries ------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def machine_ceiling_per_s(cpu_ms_each: float) -> float:
    """How many of something costing `cpu_ms_each` of CPU (server, S3, clients together)
    this machine's cores could do per second, busy with nothing else."""
    return (os.cpu_count() or 1) * 1000 / cpu_ms_each


def per_gib(cpu: float, size: int) -> float:
    return cpu / (size / GIB)


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    """The median of one field over runs, skipping runs without it."""
    return median([r[key] for r in runs if r.get(key) is not None])


def summarise_size(
    size: int, runs: dict[str, list[dict[str, Any]]], idle_kib: int, hwm_kib: int
) -> dict[str, Any]:
    """Medians, ratios and per-GiB CPU for one file size."""
    direct, openssh, gateway = (
        median_of(runs[k], "wall") for k in ("direct", "openssh", "gateway")
    )
    boto_cpu = median_of(runs["direct"], "client_cpu")
    sshd_cpu = median_of(runs["openssh"], "server_cpu")
    gw_cpu = median_of(runs["gateway"], "gateway_cpu")
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
        "seaweed_cpu_per_gib_gateway": per_gib_median(runs["gateway"], "seaweed_cpu", size),
        "seaweed_cpu_per_gib_direct": per_gib_median(runs["direct"], "seaweed_cpu", size),
        "sftp_client_cpu_per_gib": per_gib_median(runs["gateway"], "client_cpu", size),
        "idle_rss_mib": idle_kib / 1024,
        "peak_rss_mib": hwm_kib / 1024,
        "peak_above_idle_mib": (hwm_kib - idle_kib) / 1024,
    }
    if gw_cpu is not None and floor:
        out["cpu_ratio"] = gw_cpu / floor
    out["ratio_gateway_direct_spread"] = paired_ratio_spread(runs["gateway"], runs["direct"])
    for key in (
        "last_byte_to_catalog_row",
        "last_ack_to_catalog_row",
        "last_byte_to_close_reply",
        "close_request_to_reply",
    ):
        out[key] = median_of(runs["latency"], key)
    return out


def paired_ratio_spread(
    runs: list[dict[str, Any]], baselines: list[dict[str, Any]]
) -> list[float] | None:
    """[lowest, highest] of gateway/baseline wall for runs made side by side (run i of
    each), the spread around the ratio of medians."""
    ratios = [r["wall"] / b["wall"] for r, b in zip(runs, baselines, strict=False) if b["wall"]]
    return [min(ratios), max(ratios)] if ratios else None


def gap(start: float | None, end: float | None) -> float | None:
    """end - start, or None when either moment was not seen."""
    return end - start if start is not None and end is not None else None


def per_gib_median(runs: list[dict[str, Any]], key: str, size: int) -> float | None:
    """The median of a CPU field over runs, per GiB of a file of `size` bytes."""
    value = median_of(runs, key)
    return per_gib(value, size) if value is not None else None


# -- output ---------------------------------------------------------------------------
