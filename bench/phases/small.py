"""Phase `small`: --small-count files of --small-size in one `sftp -b` session (after a
`mkdir`), files per second through the gateway and OpenSSH."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.clients import run_sftp
from bench.common import BENCH_USER, parse_size
from bench.files import make_pdf
from bench.measure import cpu_seconds, median
from bench.phases.base import Bench


def small_files(bench: Bench) -> dict[str, Any]:
    """Files/s through the gateway, OpenSSH and direct boto3 PUTs (the floor for a server
    that acknowledges only durable files), and the gateway's CPU per file."""
    count, size = bench.args.small_count, parse_size(bench.args.small_size)
    folder = bench.work / "small"
    folder.mkdir(exist_ok=True)
    files = [make_pdf(folder / f"s{i:04d}.pdf", size) for i in range(count)]
    out: dict[str, Any] = {"files": count, "size": size}
    gw = bench.launcher.current or bench.launcher.restart()
    direct = [count / direct_puts(bench, files, run) for run in range(bench.args.runs)]
    out["direct_s3"] = {"files_per_s": median(direct), "runs": direct}
    for target, port, user in bench.targets(gw):
        rates, cpu_ms, machine_ms = [], [], []
        for run in range(bench.args.runs):
            base = f"/small-{run}" if target == "gateway" else f"{bench.sshd.root}/small-{run}"  # type: ignore[union-attr]
            lines = [f"mkdir {base}"] + [f"put {f} {base}/{f.name}" for f in files]
            cpu_before, weed_before = gw.cpu(), cpu_seconds(bench.seaweed.pid)
            script = "\n".join(lines) + "\n"
            wall, client = run_sftp(port, user, bench.key, script, bench.args.ssh_opt)
            rates.append(count / wall)
            if target == "gateway":
                gateway = gw.cpu() - cpu_before
                weed = cpu_seconds(bench.seaweed.pid) - weed_before
                cpu_ms.append(1000 * gateway / count)
                machine_ms.append(1000 * (gateway + weed + client) / count)
                bench.delete_prefix(f"incoming/{BENCH_USER}/small-{run}/")
            else:
                shutil.rmtree(Path(base), ignore_errors=True)
        out[target] = {"files_per_s": median(rates), "runs": rates}
        if cpu_ms:
            out[target]["cpu_ms_per_file"] = median(cpu_ms)
            # gateway + SeaweedFS + sftp client: the most files/s these cores could do
            machine = median(machine_ms) or 1e-9
            out[target]["machine_cpu_ms_per_file"] = machine
            out[target]["machine_ceiling_per_s"] = (os.cpu_count() or 1) * 1000 / machine
    gateway_rate, direct_rate = out["gateway"]["files_per_s"], out["direct_s3"]["files_per_s"]
    if gateway_rate and direct_rate:
        out["ratio_gateway_direct"] = gateway_rate / direct_rate  # target >= 0.6
    shutil.rmtree(folder, ignore_errors=True)
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
