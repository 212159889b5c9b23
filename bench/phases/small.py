"""Phase `small`: --small-count files of --small-size in one `sftp -b` session (after a
`mkdir`), files per second through the gateway and OpenSSH."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bench.clients import run_sftp
from bench.common import BENCH_USER, parse_size
from bench.files import make_pdf
from bench.measure import cpu_seconds, machine_ceiling_per_s, median
from bench.phases.base import Bench
from bench.servers import GatewayProc


def small_files(bench: Bench) -> dict[str, Any]:
    """Files/s through the gateway, OpenSSH and direct boto3 PUTs (the floor for a server
    that acknowledges only durable files), and the gateway's CPU per file. Each run
    measures every target back to back, so each run's ratio compares like moments."""
    count, size = bench.args.small_count, parse_size(bench.args.small_size)
    folder = bench.work / "small"
    folder.mkdir(exist_ok=True)
    files = [make_pdf(folder / f"s{i:04d}.pdf", size) for i in range(count)]
    gw = bench.launcher.current or bench.launcher.restart()
    runs: dict[str, list[dict[str, float]]] = {"direct_s3": []}
    for run in range(bench.args.runs):
        runs["direct_s3"].append({"files_per_s": count / direct_puts(bench, files, run)})
        for target, port, user in bench.targets(gw):
            runs.setdefault(target, []).append(_sftp_run(bench, gw, target, port, user, files, run))
    shutil.rmtree(folder, ignore_errors=True)
    out: dict[str, Any] = {"files": count, "size": size}
    for target, measured in runs.items():
        out[target] = {key: median([m[key] for m in measured]) for key in measured[0]}
        out[target]["runs"] = [m["files_per_s"] for m in measured]
    if machine := out["gateway"].get("machine_cpu_ms_per_file"):
        # gateway + SeaweedFS + sftp client: the most files/s these cores could do
        out["gateway"]["machine_ceiling_per_s"] = machine_ceiling_per_s(machine)
    pairs = zip(runs["gateway"], runs["direct_s3"], strict=True)
    ratios = [g["files_per_s"] / d["files_per_s"] for g, d in pairs]
    out["ratio_gateway_direct"] = median(ratios)  # target >= 0.6
    out["ratio_gateway_direct_spread"] = [min(ratios), max(ratios)]
    return out


def _sftp_run(
    bench: Bench, gw: GatewayProc, target: str, port: int, user: str, files: list[Path], run: int
) -> dict[str, float]:
    """One `sftp -b` session putting every file; files/s, and CPU per file (gateway)."""
    count = len(files)
    base = f"/small-{run}" if target == "gateway" else f"{bench.sshd.root}/small-{run}"  # type: ignore[union-attr]
    lines = [f"mkdir {base}"] + [f"put {f} {base}/{f.name}" for f in files]
    cpu_before, weed_before = gw.cpu(), cpu_seconds(bench.seaweed.pid)
    wall, client = run_sftp(port, user, bench.key, "\n".join(lines) + "\n", bench.args.ssh_opt)
    out = {"files_per_s": count / wall}
    if target == "gateway":
        gateway = gw.cpu() - cpu_before
        weed = cpu_seconds(bench.seaweed.pid) - weed_before
        out["cpu_ms_per_file"] = 1000 * gateway / count
        out["machine_cpu_ms_per_file"] = 1000 * (gateway + weed + client) / count
        bench.delete_prefix(f"incoming/{BENCH_USER}/small-{run}/")
    else:
        shutil.rmtree(Path(base), ignore_errors=True)
    return out


def direct_puts(bench: Bench, files: list[Path], run: int) -> float:
    """Seconds for sequential boto3 PutObjects of the files, with metadata like the
    gateway's, on the bench's warm client."""
    start = time.perf_counter()
    for path in files:
        bench.s3.put_object(
            Bucket=bench.bucket,
            Key=f"direct-small-{run}/{path.name}",
            Body=path.read_bytes(),
            ContentType="application/pdf",
            Metadata={"uploaded-by": BENCH_USER, "original-name": path.name},
        )
    elapsed = time.perf_counter() - start
    bench.delete_prefix(f"direct-small-{run}/")
    return elapsed
