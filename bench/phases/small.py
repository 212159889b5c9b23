"""Phase `small`: --small-count files of --small-size in one `sftp -b` session (after a
`mkdir`), files per second through the gateway and OpenSSH."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.clients import run_sftp
from bench.common import BENCH_USER, parse_size
from bench.files import make_pdf
from bench.measure import median
from bench.phases.base import Bench


def small_files(bench: Bench) -> dict[str, Any]:
    count, size = bench.args.small_count, parse_size(bench.args.small_size)
    folder = bench.work / "small"
    folder.mkdir(exist_ok=True)
    files = [make_pdf(folder / f"s{i:04d}.pdf", size) for i in range(count)]
    out: dict[str, Any] = {"files": count, "size": size}
    gw = bench.launcher.current or bench.launcher.restart()
    for target, port, user in bench.targets(gw):
        rates = []
        for run in range(bench.args.runs):
            base = f"/small-{run}" if target == "gateway" else f"{bench.sshd.root}/small-{run}"  # type: ignore[union-attr]
            lines = [f"mkdir {base}"] + [f"put {f} {base}/{f.name}" for f in files]
            wall, _ = run_sftp(port, user, bench.key, "\n".join(lines) + "\n", bench.args.ssh_opt)
            rates.append(count / wall)
            if target == "gateway":
                bench.delete_prefix(f"incoming/{BENCH_USER}/small-{run}/")
            else:
                shutil.rmtree(Path(base), ignore_errors=True)
        out[target] = {"files_per_s": median(rates), "runs": rates}
    shutil.rmtree(folder, ignore_errors=True)
    return out
