"""What every phase works with: the arguments, the servers, the S3 client, the catalog."""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BENCH_USER
from bench.servers import Children, GatewayLauncher, GatewayProc, Sshd
from tests.seaweed import SeaweedServer


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    children: Children
    seaweed: SeaweedServer
    bucket: str
    key: Path
    sshd: Sshd | None
    launcher: GatewayLauncher
    s3: Any = None

    def setup_clients(self) -> None:
        self.s3 = self.seaweed.client(max_pool_connections=32)
        self.s3.put_object(Bucket=self.bucket, Key="warmup", Body=b"x")  # connect once

    def catalog_row(self, key: str) -> dict[str, Any]:
        """The newest catalog row of a key, read with plain SQL (no gateway imports)."""
        with sqlite3.connect(self.work / "catalog.db", timeout=10) as db:
            db.row_factory = sqlite3.Row
            row = db.execute(
                "SELECT status, size, sha256, completed_at FROM uploads"
                " WHERE bucket = ? AND object_key = ? ORDER BY started_at DESC LIMIT 1",
                (self.bucket, key),
            ).fetchone()
        if row is None:
            raise RuntimeError(f"no catalog row for {key}")
        return dict(row)

    def enabled(self, phase: str) -> bool:
        return phase in self.args.phases

    def check_and_delete(self, remote: str, size: int, sha: str) -> dict[str, Any]:
        """The catalog row must say completed with the right size and SHA-256."""
        key = f"incoming/{BENCH_USER}/{remote.lstrip('/')}"
        row = self.catalog_row(key)
        if row["status"] != "completed" or row["size"] != size or row["sha256"] != sha:
            raise RuntimeError(f"gateway upload of {remote} is wrong: {row}")
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        return row

    def targets(self, gw: GatewayProc) -> Iterator[tuple[str, int, str]]:
        """(name, port, user) of the gateway and, when measured, OpenSSH's sshd."""
        yield "gateway", gw.port, BENCH_USER
        if self.sshd is not None and self.enabled("openssh"):
            yield "openssh", self.sshd.port, self.sshd.user

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
