"""Soak: two gateways on one PostgreSQL catalog, SeaweedFS as S3, many sessions for minutes.

Not part of the test suite. N concurrent sessions (real OpenSSH `sftp`), each its own
user, loop until the time is up over a mix of: uploads of 1-100 MB, bursts of small
files, listings, and uploads killed mid-way then resumed with `reput` (on either
instance). At the end every file a session saw succeed is checked against S3 (SHA-256
of the bytes) and the catalog (exactly one `completed` row with that SHA-256); no object
without a row; every event sent to SQS. RSS and threads of each instance are sampled
every few seconds into bench/results/soak-<time>.csv.

    python bench/soak.py --sessions 8 --minutes 1     # quick
    python bench/soak.py                               # 50 sessions x 10 minutes

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "soak")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "soak-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import boto3  # noqa: E402
import sqlalchemy  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from sftp_gateway.auth import DEFAULT_PERMISSIONS, parse_public_key  # noqa: E402
from sftp_gateway.catalog.db import build_catalog  # noqa: E402
from sftp_gateway.catalog.repository import COMPLETED, Catalog  # noqa: E402
from sftp_gateway.config import settings_from_dict  # noqa: E402
from tests.helpers import (  # noqa: E402
    SSH_OPTIONS,
    free_port,
    make_pdf,
    make_user_key,
    serve_subprocess,
    sha256_file,
    wait_port,
    write_serve_config,
)
from tests.seaweed import start_seaweed  # noqa: E402

PG_ADMIN_URL = os.environ.get(
    "TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
RESULTS = REPO / "bench" / "results"
BIG_SIZES_MB = (1, 5, 12, 30, 60, 100)
SAMPLE_EVERY = 3.0


@dataclass
class Instance:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def status(self, field_name: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        return 0


@dataclass
class Tally:
    """What the sessions did, and what they expect to find at the end."""

    expected: dict[str, str] = field(default_factory=dict)  # object key -> sha256
    rewritten: set[str] = field(default_factory=set)  # keys put twice (two completed rows)
    actions: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, action: str, key: str | None = None, sha: str | None = None) -> None:
        with self.lock:
            self.actions[action] += 1
            if key and sha:
                self.expected[key] = sha

    def failed(self, action: str, detail: str) -> None:
        with self.lock:
            self.actions[action + " failed"] += 1
            self.failures.append(f"{action}: {detail.strip()[:300]}")


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.tally = Tally()
        self.stop_at = 0.0
        self.instances: list[Instance] = []
        self.samples: list[tuple[float, str, float, int]] = []
        self.files: list[tuple[Path, str]] = []
        self.small: list[tuple[Path, str]] = []

    # -- set-up ----------------------------------------------------------------------------

    def start(self) -> None:
        credentials = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
        self.seaweed = start_seaweed(self.work / "weed", credentials=credentials)
        self.bucket = f"soak-{uuid.uuid4().hex[:8]}"
        self.s3 = self.seaweed.client()
        self.s3.create_bucket(Bucket=self.bucket)
        self.sqs_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.sqs_port, verbose=False)
        self.moto.start()
        sqs_endpoint = f"http://127.0.0.1:{self.sqs_port}"
        sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")
        self.queue = sqs.create_queue(QueueName="soak")["QueueUrl"]
        self.catalog_url = self._create_database()
        extra = {
            "storage": {"max_attempts": 8},
            "uploads": {"max_file_size": "1GiB", "memory_budget": "2GiB"},
            "events": {
                "queue_url": self.queue,
                "endpoint_url": sqs_endpoint,
                "region": "us-east-1",
            },
            "server": {"max_connections": 1024, "max_startups": "200:30:400"},
        }
        self.key = make_user_key(self.work / "keys")
        for n in range(2):
            folder = self.work / f"gw{n}"
            folder.mkdir(parents=True, exist_ok=True)
            instance_extra = {**extra, "server": {**extra["server"], "instance_id": f"gw{n}"}}
            config, port = write_serve_config(
                folder, self.seaweed.endpoint, self.bucket, self.catalog_url, instance_extra
            )
            if n == 0:
                self._add_users(config)
            log = folder / "serve.log"
            self.instances.append(Instance(f"gw{n}", port, serve_subprocess(config, log), log))
        for instance in self.instances:
            wait_port(instance.port, timeout=60)

    def _create_database(self) -> str:
        name = f"soak_{uuid.uuid4().hex[:8]}"
        admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        self.database = name
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    def _add_users(self, config: Path) -> None:
        import yaml

        settings = settings_from_dict(yaml.safe_load(config.read_text()), environ={})
        self.catalog: Catalog = build_catalog(settings)
        public = parse_public_key(self.key.with_suffix(".pub").read_text())
        for n in range(self.args.sessions):
            self.catalog.add_user(
                f"s{n}", public, home=f"s{n}", permissions=DEFAULT_PERMISSIONS, email=None
            )

    def make_files(self) -> None:
        folder = self.work / "files"
        folder.mkdir(exist_ok=True)
        for size in BIG_SIZES_MB:
            if size <= self.args.max_mb:
                path = make_pdf(folder / f"big-{size}.pdf", size * 1_000_000)
                self.files.append((path, sha256_file(path)))
        for n in range(8):
            path = make_pdf(folder / f"small-{n}.pdf", random.randint(2_000, 200_000))
            self.small.append((path, sha256_file(path)))

    # -- sessions ----------------------------------------------------------------------------

    def sftp_args(self, user: str, instance: Instance) -> list[str]:
        return [
            "sftp",
            *SSH_OPTIONS,
            "-o",
            "ConnectTimeout=30",
            "-i",
            str(self.key),
            "-P",
            str(instance.port),
            "-b",
            "-",
            f"{user}@127.0.0.1",
        ]

    def run_sftp(self, user: str, commands: str, instance: Instance | None = None) -> Any:
        instance = instance or random.choice(self.instances)
        return subprocess.run(
            self.sftp_args(user, instance),
            input=commands,
            text=True,
            capture_output=True,
            timeout=self.args.client_timeout,  # a hung transfer is reported, not waited on
        )

    def session(self, n: int) -> None:
        user = f"s{n}"
        rng = random.Random(n)
        serial = 0
        while time.monotonic() < self.stop_at:
            serial += 1
            action = rng.choices(["big", "small", "list", "kill"], weights=[3, 3, 2, 2])[0]
            try:
                getattr(self, f"do_{action}")(user, serial, rng)
            except Exception as exc:  # a bench keeps going, and reports it
                self.tally.failed(action, f"{type(exc).__name__}: {exc}")

    def do_big(self, user: str, serial: int, rng: random.Random) -> None:
        path, sha = rng.choice(self.files)
        name = f"big-{serial}.pdf"
        result = self.run_sftp(user, f"put {path} {name}\n")
        if result.returncode == 0:
            self.tally.ok("upload 1-100 MB", f"incoming/{user}/{name}", sha)
        else:
            self.tally.failed("upload 1-100 MB", result.stderr)

    def do_small(self, user: str, serial: int, rng: random.Random) -> None:
        picks = rng.sample(self.small, 4)
        commands = "".join(f"put {p} small-{serial}-{i}.pdf\n" for i, (p, _) in enumerate(picks))
        result = self.run_sftp(user, commands)
        if result.returncode != 0:
            self.tally.failed("small files", result.stderr)
            return
        for i, (_, sha) in enumerate(picks):
            self.tally.ok("small file", f"incoming/{user}/small-{serial}-{i}.pdf", sha)

    def do_list(self, user: str, serial: int, rng: random.Random) -> None:
        result = self.run_sftp(user, "ls -l\n")
        if result.returncode == 0:
            self.tally.ok("listing")
        else:
            self.tally.failed("listing", result.stderr)

    def do_kill(self, user: str, serial: int, rng: random.Random) -> None:
        """Start an upload, kill -9 the client mid-way, resume it with reput anywhere."""
        candidates = [f for f in self.files if f[0].stat().st_size >= 12_000_000] or self.files
        path, sha = rng.choice(candidates)
        name = f"resumed-{serial}.pdf"
        proc = subprocess.Popen(
            self.sftp_args(user, rng.choice(self.instances)),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(f"put {path} {name}\n")
        proc.stdin.flush()
        time.sleep(rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        key = f"incoming/{user}/{name}"
        for _ in range(20):  # the server notices the dead channel within moments
            result = self.run_sftp(user, f"reput {path} {name}\n", rng.choice(self.instances))
            if result.returncode == 0:
                self.tally.ok("kill + resume", key, sha)
                return
            # Nothing to resume: killed before a whole part was kept, or every byte was
            # sent (maybe not closed): `reput` refuses, a fresh `put` starts over.
            if "No such file" in result.stderr or "same size or larger" in result.stderr:
                result = self.run_sftp(user, f"put {path} {name}\n")
                if result.returncode == 0:
                    self.tally.ok("kill + upload again", key, sha)
                    self.tally.rewritten.add(key)  # the killed put may have completed too
                    return
            time.sleep(0.5)
        self.tally.failed("kill + resume", result.stderr)

    # -- sampling and checks -------------------------------------------------------------------

    def sample(self, started: float) -> None:
        while not self.sampling_done.wait(SAMPLE_EVERY):
            for instance in self.instances:
                if instance.process.poll() is None:
                    rss = instance.status("VmRSS") / 1024
                    threads = instance.status("Threads")
                    self.samples.append((time.monotonic() - started, instance.name, rss, threads))

    def run(self) -> None:
        started = time.monotonic()
        self.stop_at = started + self.args.minutes * 60
        self.sampling_done = threading.Event()
        sampler = threading.Thread(target=self.sample, args=(started,), daemon=True)
        sampler.start()
        workers = [
            threading.Thread(target=self.session, args=(n,), daemon=True)
            for n in range(self.args.sessions)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(max(1.0, self.stop_at - time.monotonic()) + 25 * self.args.client_timeout)
        self.elapsed = time.monotonic() - started
        self.sampling_done.set()
        sampler.join(10)

    def check(self) -> list[str]:
        """Every file against S3 and the catalog; no stray objects; every event sent."""
        problems: list[str] = []
        deadline = time.monotonic() + 120
        while self.catalog.pending_event_count() and time.monotonic() < deadline:
            time.sleep(1)
        if self.catalog.pending_event_count() or self.catalog.parked_event_count():
            problems.append(
                f"events not sent: {self.catalog.pending_event_count()} pending, "
                f"{self.catalog.parked_event_count()} parked"
            )
        for key, sha in sorted(self.tally.expected.items()):
            digest = hashlib.sha256()
            try:
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
            except self.s3.exceptions.NoSuchKey:
                history = [
                    (r.status, r.size, r.owner, r.error)
                    for r in self.catalog.uploads_for_key(self.bucket, key)
                ]
                problems.append(f"{key}: reported stored but not in S3; rows {history}")
                continue
            for chunk in body.iter_chunks(1 << 20):
                digest.update(chunk)
            if digest.hexdigest() != sha:
                head = self.s3.head_object(Bucket=self.bucket, Key=key)
                history = [
                    (r.status, r.size, r.owner, (r.sha256 or "-")[:12], r.error)
                    for r in self.catalog.uploads_for_key(self.bucket, key)
                ]
                problems.append(
                    f"{key}: S3 bytes differ from the file sent (sha {sha[:12]}); object "
                    f"{head['ContentLength']} bytes, sha {digest.hexdigest()[:12]}, metadata "
                    f"{head.get('Metadata')}; rows {history}"
                )
            rows = [
                r for r in self.catalog.uploads_for_key(self.bucket, key) if r.status == COMPLETED
            ]
            allowed = 2 if key in self.tally.rewritten else 1
            if not 1 <= len(rows) <= allowed or rows[0].sha256 != sha:  # rows: newest first
                problems.append(f"{key}: {len(rows)} completed rows, sha {rows and rows[0].sha256}")
        objects = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix="incoming/"
        ):
            objects.update(o["Key"] for o in page.get("Contents", []))
        completed = {
            r.object_key for r in self.catalog.list_uploads(status=COMPLETED, limit=1_000_000)
        }
        for key in sorted(objects - completed):
            problems.append(f"{key}: object without a completed row")
        for key in sorted(completed - objects):
            problems.append(f"{key}: completed row without its object")
        return problems

    # -- report ----------------------------------------------------------------------------------

    def write_csv(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"soak-{stamp}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["seconds", "instance", "rss_mib", "threads"])
            for seconds, name, rss, threads in self.samples:
                writer.writerow([f"{seconds:.1f}", name, f"{rss:.1f}", threads])
        return path

    def report(self, problems: list[str], csv_path: Path) -> None:
        print(
            f"soak: {self.args.sessions} sessions x {self.args.minutes} min "
            f"({self.elapsed:.0f} s), two gateways, SeaweedFS, PostgreSQL"
        )
        for action, count in sorted(self.tally.actions.items()):
            print(f"  {action:24} {count}")
        print(f"  files checked            {len(self.tally.expected)}")
        for instance in self.instances:
            rss = [s[2] for s in self.samples if s[1] == instance.name]
            if rss:
                print(
                    f"  {instance.name} RSS MiB: start {rss[0]:.0f}, max {max(rss):.0f}, "
                    f"end {rss[-1]:.0f}; threads max "
                    f"{max(s[3] for s in self.samples if s[1] == instance.name)}"
                )
        print(f"  RSS samples: {csv_path.relative_to(REPO)}")
        for failure in self.tally.failures[:20]:
            print(f"  client failure: {failure}")
        for problem in problems[:50]:
            print(f"  PROBLEM: {problem}")
        print("soak: OK" if not problems else f"soak: {len(problems)} problem(s)")

    def close(self) -> None:
        for instance in self.instances:
            if instance.process.poll() is None:
                instance.process.terminate()
                try:
                    instance.process.wait(30)
                except subprocess.TimeoutExpired:
                    instance.process.kill()
        if hasattr(self, "catalog"):
            self.catalog.engine.dispose()
        if hasattr(self, "moto"):
            self.moto.stop()
        if hasattr(self, "seaweed"):
            self.seaweed.stop()
        if hasattr(self, "database"):
            admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{self.database}'"
                )
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}"')
            admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-mb", type=int, default=100, help="largest upload (MB)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder")
    parser.add_argument(
        "--client-timeout", type=float, default=300.0, help="seconds one sftp run may take"
    )
    args = parser.parse_args()
    import tempfile

    # SIGTERM (timeout, Ctrl-C in a pipeline) still stops the servers and drops the DB.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="soak-", dir=args.work) as scratch:
        soak = Soak(args, Path(scratch))
        try:
            soak.make_files()
            soak.start()
            soak.run()
            problems = soak.check()
            csv_path = soak.write_csv()
            soak.report(problems, csv_path)
            if problems:  # keep the servers' logs next to the samples
                for instance in soak.instances:
                    target = csv_path.with_name(f"{csv_path.stem}-{instance.name}.log")
                    target.write_bytes(instance.log.read_bytes())
        finally:
            soak.close()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
