"""The results: run metadata, the JSON file in bench/results and the printed table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.clients import negotiated
from bench.common import BENCH_USER, REPO, label_of
from bench.servers import GatewayProc, Sshd


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


def write_result(result: dict[str, Any], args: argparse.Namespace) -> Path:
    """bench/results/<UTC timestamp>[-label].json (or under --output)."""
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"-{args.label}" if args.label else ""
    path = args.output / f"{stamp}{suffix}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


SESSIONS_TARGET = " (target >= 100 on 2 workers)"


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
        if spread := row.get("ratio_gateway_direct_spread"):
            print(f"{'':>8} gw/S3 per run: {spread[0]:.2f} .. {spread[1]:.2f}")
        if (warm := row.get("peak_above_warm_mib")) is not None:
            print(f"{'':>8} peak RSS above the RSS after a warm-up upload: {warm:.1f} MiB")
    for phase in ("concurrent", "small_files", "sessions", "workers"):
        if "error" in (result.get(phase) or {}):
            print(f"{phase}: failed: {result[phase]['error']}")
            result = {k: v for k, v in result.items() if k != phase}
    if conc := result.get("concurrent"):
        print(
            f"{conc['uploads']} x {label_of(conc['size'])} concurrent: "
            f"{conc['aggregate_mib_s']:.1f} MiB/s aggregate, {conc['wall']:.2f} s, "
            f"peak RSS +{conc['peak_above_idle_mib']:.1f} MiB above idle, "
            f"{conc['gateway_cpu_per_gib']:.2f} CPU-s/GiB"
        )
    if small := result.get("small_files"):
        parts = [f"{k} {v['files_per_s']:.1f}/s" for k, v in small.items() if isinstance(v, dict)]
        if "ratio_gateway_direct" in small:
            spread = small.get("ratio_gateway_direct_spread") or [0, 0]
            parts.append(
                f"gateway/direct {small['ratio_gateway_direct']:.2f} per run "
                f"{spread[0]:.2f}..{spread[1]:.2f} (target >= 0.6)"
            )
        if cpu := small.get("gateway", {}).get("cpu_ms_per_file"):
            parts.append(f"gateway CPU {cpu:.1f} ms/file")
        if ceiling := small.get("gateway", {}).get("machine_ceiling_per_s"):
            parts.append(f"machine ceiling {ceiling:.0f}/s (gateway+S3+client CPU)")
        print(
            f"small files ({small['files']} x {small['size']} B, one session): " + ", ".join(parts)
        )
    for target, row in (result.get("sessions") or {}).items():
        rates = [
            f"{k} {v:.2f}"
            + (SESSIONS_TARGET if target == "gateway" and k == "parallel8_per_s" else "")
            for k, v in row.items()
            if k.endswith("per_s")
        ]
        costs = [
            f"{label} {row[k] * scale:.1f} ms"
            for label, k, scale in (
                ("one session", "median_session_s", 1000),
                ("server CPU", "server_cpu_ms_per_session", 1),
                ("client CPU", "client_cpu_ms_per_session", 1),
            )
            if k in row
        ]
        print(f"sessions {target}: " + ", ".join(rates + costs))
