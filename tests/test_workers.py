"""`serve --workers N`: a supervisor and N worker processes on one listening socket.

Real processes only: `sftp-gateway serve` with two workers on moto's S3 (and SQS),
driven by OpenSSH sftp; what an operator checks: uploads land from both workers (the
catalog's owner column), a killed worker is replaced, SIGTERM drains and exits 0, and
each upload is announced once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sftp_gateway import hostkeys, supervisor
from sftp_gateway.config import settings_from_dict
from sftp_gateway.errors import ConfigError
from tests.admin_support import scrape, value
from tests.helpers import SSH_OPTIONS, free_port, make_pdf, sha256_file, wait_until
from tests.notify_support import create_queue, drain_queue
from tests.serving import ServeProcess
from tests.test_host_keys import keys_dir_with, serve, serve_config
from tests.test_web_upload import (
    absolute,
    base_url,
    catalog_rows,
    create_link,
    tus_create,
    tus_patch,
)

TWO_WORKERS = {"server": {"workers": 2, "drain_timeout": 10}}
# Generous: a worker is a fresh interpreter (about 3 s here), slower on a busy machine.
STARTUP = 120.0
STARTED = re.compile(r"started worker (\d+) \(pid (\d+)\)")


def worker_pids(served: ServeProcess) -> dict[int, list[int]]:
    """Every pid each worker index had, oldest first, from the supervisor's log."""
    pids: dict[int, list[int]] = {}
    for index, pid in STARTED.findall(served.log_text()):
        pids.setdefault(int(index), []).append(int(pid))
    return pids


def serve_two_workers(
    serve_factory: Callable[..., ServeProcess], extra: dict[str, Any] | None = None
) -> ServeProcess:
    served = serve_factory({**TWO_WORKERS, **(extra or {})})
    wait_until(lambda: len(worker_pids(served)) == 2, timeout=STARTUP)
    wait_until(lambda: served.log_text().count("serving on") >= 2, timeout=STARTUP)
    return served


def upload_owners(served: ServeProcess) -> dict[str, str]:
    """object key -> the catalog's owner (INSTANCE/wi) of each completed upload."""
    out = served.cli("uploads", "list", "--status", "completed", "--json").stdout
    return {row["object_key"]: row["owner"] for row in json.loads(out)}


def upload_in_parallel(served: ServeProcess, names: list[str]) -> list[bool]:
    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(lambda name: served.user_can_upload(name, 200_000), names))


def test_uploads_land_through_both_workers(serve_factory: Callable[..., ServeProcess]) -> None:
    served = serve_two_workers(serve_factory)
    owners: set[str] = set()
    for batch in range(3):  # the kernel picks the worker; three batches of 6 suffice
        names = [f"b{batch}-{n}.pdf" for n in range(6)]
        assert all(upload_in_parallel(served, names)), served.log_text()[-3000:]
        owners = set(upload_owners(served).values())
        if len(owners) == 2:
            break
    assert {owner.rsplit("/", 1)[1] for owner in owners} == {"w0", "w1"}
    assert len({pid for pids in worker_pids(served).values() for pid in pids}) == 2


def test_killed_worker_is_replaced_and_uploads_keep_working(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_two_workers(serve_factory)
    victim = worker_pids(served)[1][0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(served).get(1, [])) == 2, timeout=STARTUP)
    replacement = worker_pids(served)[1][1]
    assert replacement != victim
    assert f"worker 1 (pid {victim}) died (signal 9)" in served.log_text()
    wait_until(lambda: served.log_text().count("serving on") >= 3, timeout=STARTUP)
    assert served.alive()
    assert all(upload_in_parallel(served, [f"after-{n}.pdf" for n in range(4)]))


def slow_upload(served: ServeProcess, local: Path, remote: str) -> subprocess.Popen[str]:
    """OpenSSH sftp limited to about 4 MB/s, so the upload is in progress for seconds."""
    args = ["sftp", *SSH_OPTIONS, "-l", "32000", "-i", str(served.key_path)]
    args += ["-P", str(served.port), "-b", "-", f"{served.user}@127.0.0.1"]
    process = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdin is not None
    process.stdin.write(f"put {local} {remote}\n")
    process.stdin.close()
    return process


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_drains_both_workers_and_exits_zero(
    serve_factory: Callable[..., ServeProcess], stop: signal.Signals
) -> None:
    served = serve_two_workers(serve_factory)
    local = make_pdf(served.tmp / "big.pdf", 16 * 2**20)
    client = slow_upload(served, local, "/big.pdf")

    def in_progress() -> bool:  # its first part is in S3: a multipart upload is open
        listing = served.s3().list_multipart_uploads(Bucket=served.bucket)
        return bool(listing.get("Uploads"))

    wait_until(in_progress, timeout=60)
    began = time.monotonic()
    served.process.send_signal(stop)
    code = served.process.wait(timeout=10 + supervisor.DRAIN_MARGIN + 5)
    took = time.monotonic() - began
    client.wait(timeout=30)
    assert code == 0, served.log_text()[-3000:]
    assert took < 10 + supervisor.DRAIN_MARGIN, served.log_text()[-6000:]
    assert "all workers stopped" in served.log_text()
    if client.returncode == 0:  # finished within drain_timeout: the whole file is there
        assert served.object_sha256("incoming/alice/big.pdf") == sha256_file(local)
    else:  # cut at the end of the drain: resumable, never half-completed
        rows = json.loads(served.cli("uploads", "list", "--json").stdout)
        assert [row["status"] for row in rows] == ["interrupted"]
    for pids in worker_pids(served).values():
        assert not Path(f"/proc/{pids[-1]}").exists()


def test_each_upload_is_announced_once_with_two_workers(
    serve_factory: Callable[..., ServeProcess], moto_endpoint: str
) -> None:
    queue = create_queue(moto_endpoint)
    events = {"events": {"queue_url": queue, "endpoint_url": moto_endpoint}}
    served = serve_two_workers(serve_factory, {**events, "server": TWO_WORKERS["server"]})
    names = [f"ev-{n}.pdf" for n in range(6)]
    assert all(upload_in_parallel(served, names))
    messages: list[dict[str, Any]] = []

    def all_sent() -> bool:
        messages.extend(drain_queue(moto_endpoint, queue))
        return len(messages) >= len(names)

    wait_until(all_sent, timeout=60)
    time.sleep(2)  # a second dispatcher would send its copies meanwhile
    messages.extend(drain_queue(moto_endpoint, queue))
    bodies = [json.loads(message["Body"]) for message in messages]
    assert len(bodies) == len(names)
    assert len({body["event_id"] for body in bodies}) == len(names)


# -- what the supervisor decides, without processes -------------------------------------


def settings(**server: Any) -> Any:
    return settings_from_dict(
        {"storage": {"bucket": "b-test"}, "server": server, "uploads": {"memory_budget": "512MiB"}},
        environ={},
    )


def test_each_worker_gets_its_share_of_the_memory_budget_and_its_own_identity() -> None:
    base = settings(instance_id="gw-1")
    mine = supervisor.worker_settings(base, 1, 4)
    assert mine.uploads.memory_budget == 128 * 2**20
    assert mine.uploads.per_user_memory == 32 * 2**20
    assert mine.server.instance_id == "gw-1/w1"


def test_too_many_workers_for_the_budget_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"server\.workers"):
        supervisor.worker_count(settings(), 64)
    assert supervisor.worker_count(settings(workers=3), None) == 3
    assert supervisor.worker_count(settings(workers=3), 2) == 2
    assert 1 <= supervisor.worker_count(settings(), None) <= (os.cpu_count() or 1)


def test_supervisor_waits_for_the_same_host_key_files_the_workers_write() -> None:
    assert tuple(name for name, _ in hostkeys.HOST_KEYS) == supervisor.HOST_KEY_FILES


def test_a_damaged_host_key_stops_the_supervisor_with_exit_2_instead_of_restarting(
    tmp_path: Path,
) -> None:
    keys = keys_dir_with(tmp_path, b"")  # every worker would fail alike: no restart loop
    result = serve(serve_config(tmp_path, keys, workers=2))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "config error: server.host_keys_dir: host key" in result.stderr
    assert "stopped on a config error; stopping" in result.stderr
    assert "restarting it" not in result.stderr


def test_browser_uploads_get_one_share_of_the_budget_beside_the_workers() -> None:
    base = settings_from_dict(
        {
            "storage": {"bucket": "b-test"},
            "server": {"instance_id": "gw-1"},
            "uploads": {"memory_budget": "480MiB"},
            "admin": {"listen": "127.0.0.1:8080"},
        },
        environ={},
    )
    assert supervisor.worker_settings(base, 0, 2).uploads.memory_budget == 160 * 2**20
    web = supervisor.web_settings(base, 2)
    assert web.uploads.memory_budget == 160 * 2**20
    assert web.server.instance_id == "gw-1/web"


# -- the HTTP side: upload links and /metrics with workers ---------------------------------


def serve_two_workers_with_admin(serve_factory: Callable[..., ServeProcess]) -> ServeProcess:
    served = serve_two_workers(serve_factory, {"admin": {"listen": f"127.0.0.1:{free_port()}"}})
    wait_until(lambda: "admin listener on" in served.log_text(), timeout=STARTUP)
    return served


def test_tus_upload_through_a_link_completes_with_two_workers(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_two_workers_with_admin(serve_factory)
    url, link_id = create_link(served, "--note", "workers")
    body = make_pdf(served.tmp / "linked.pdf", 7 * 2**20).read_bytes()
    created = tus_create(url, "linked.pdf", len(body))
    assert created.status_code == 201, created.text
    location = absolute(url, created.headers["Location"])
    done = tus_patch(location, 0, body)
    assert done.status_code == 204, done.text + served.log_text()[-3000:]
    sha = hashlib.sha256(body).hexdigest()
    assert done.headers["Upload-Sha256"] == sha
    assert served.object_sha256("incoming/alice/linked.pdf") == sha
    row = catalog_rows(
        served, "select status, link_id, owner from uploads where path like '%linked.pdf'"
    )
    assert [(status, link) for status, link, _ in row] == [("completed", link_id)]
    assert str(row[0][2]).endswith("/web")  # the supervisor's own pipeline took it
    assert served.user_can_upload("beside.pdf")  # SSH on the workers still serves


def completed_uploads(url: str) -> float:
    return value(scrape(url), "sftp_gateway_uploads_total", outcome="completed")


def test_metrics_count_uploads_of_every_worker(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_two_workers_with_admin(serve_factory)
    url = base_url(served)
    before = completed_uploads(url)
    assert upload_in_parallel(served, ["m-1.pdf", "m-2.pdf"]) == [True, True]
    wait_until(lambda: completed_uploads(url) >= before + 2, timeout=20)
    assert completed_uploads(url) == before + 2
    samples = scrape(url)
    assert value(samples, "sftp_gateway_received_bytes_total") >= 2 * 200_000
    assert "sftp_gateway_outbox_pending_events" in {name for name, _ in samples}


def test_stuck_worker_is_killed_and_replaced(serve_factory: Callable[..., ServeProcess]) -> None:
    served = serve_two_workers(
        serve_factory, {"server": {**TWO_WORKERS["server"], "worker_timeout": 6}}
    )
    victim = worker_pids(served)[1][0]
    os.kill(victim, signal.SIGSTOP)  # alive, holding its socket, never turning its loop
    try:
        wait_until(lambda: len(worker_pids(served).get(1, [])) == 2, timeout=STARTUP)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
    log = served.log_text()
    assert f"worker 1 (pid {victim}) has not run its accept loop for" in log
    assert f"worker 1 (pid {victim}) died (signal 9)" in log
    assert not Path(f"/proc/{victim}").exists()
    wait_until(lambda: served.log_text().count("serving on") >= 3, timeout=STARTUP)
    assert all(upload_in_parallel(served, [f"after-{n}.pdf" for n in range(4)]))
    assert len(worker_pids(served)[0]) == 1  # the live one was left alone


def test_worker_spec_carries_a_heartbeat_path_even_with_a_colon(tmp_path: Path) -> None:
    spec = supervisor.WorkerSpec(5, 1, 2, 4242, tmp_path / "a:b" / "worker-1")
    assert supervisor.WorkerSpec.parse(spec.text()) == spec
    with pytest.raises(ConfigError, match="--worker-of"):
        supervisor.WorkerSpec.parse("5:1:2:4242")


def test_heartbeat_marks_change_with_each_beat_and_not_between(tmp_path: Path) -> None:
    path = tmp_path / "worker-0"
    assert supervisor.Heartbeat.stamp(path) is None
    heart = supervisor.Heartbeat(path)
    heart.beat()
    first = supervisor.Heartbeat.stamp(path)
    heart.beat()  # within the second: not written again
    assert first is not None and supervisor.Heartbeat.stamp(path) == first
    time.sleep(supervisor.HEARTBEAT_EVERY + 0.05)
    heart.beat()
    assert supervisor.Heartbeat.stamp(path) != first


def test_a_heartbeat_whose_directory_was_removed_makes_it_again(tmp_path: Path) -> None:
    path = tmp_path / "heartbeats" / "worker-0"
    heart = supervisor.Heartbeat(path)
    heart.beat()
    shutil.rmtree(path.parent)  # a /tmp cleaner
    time.sleep(supervisor.HEARTBEAT_EVERY + 0.05)
    heart.beat()  # in the accept loop: must not raise
    assert supervisor.Heartbeat.stamp(path) is not None


def test_a_heartbeat_that_cannot_be_written_does_not_raise_in_the_accept_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    heart = supervisor.Heartbeat(tmp_path / "a-file" / "worker-0")
    heart.beat()
    assert supervisor.Heartbeat.stamp(heart.path) is None
    assert "cannot write the heartbeat file" in caplog.text
