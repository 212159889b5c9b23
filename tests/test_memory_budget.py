"""One memory budget for all uploads of a process: writers wait, then fail with a clear
status; one user cannot starve the others; nothing is ever leaked."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from sftp_gateway.upload.budget import ByteBudget, Owner, ServerBusy
from tests.helpers import MIB, make_pdf, make_user_key, sha256_file
from tests.serving import ServeProcess

ALICE = Owner("alice", "127.0.0.2")
BOB = Owner("bob", "127.0.0.3")
BUSY = "server is busy: upload memory exhausted, try again later"


def budget(total: int = 100, per_user: int | None = None, wait: float = 0.2) -> ByteBudget:
    return ByteBudget(total, per_user=per_user, wait_timeout=wait, what="upload memory")


# -- the budget itself -------------------------------------------------------------------


def test_acquire_and_release_move_the_in_use_gauge() -> None:
    shared = budget()
    shared.acquire(60, ALICE)
    shared.acquire(40, BOB)
    assert shared.in_use == 100 and shared.in_use_by("alice") == 60
    shared.release(60, ALICE)
    shared.release(40, BOB)
    assert shared.in_use == 0 and shared.in_use_by("alice") == 0


def test_a_spent_budget_waits_then_refuses_with_a_logged_line(caplog) -> None:
    shared = budget(wait=0.3)
    shared.acquire(100, BOB)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(ServerBusy, match=BUSY):
        shared.acquire(1, ALICE)
    assert 0.25 <= time.monotonic() - started < 5
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line.startswith("refused upload memory to alice from 127.0.0.2:")
    assert shared.in_use == 100


def test_a_waiting_writer_proceeds_as_soon_as_memory_is_released() -> None:
    shared = budget(wait=10)
    shared.acquire(100, BOB)
    threading.Timer(0.2, shared.release, args=(50, BOB)).start()
    started = time.monotonic()
    shared.acquire(50, ALICE)  # backpressure: blocks, then goes on
    assert 0.15 <= time.monotonic() - started < 5
    assert shared.in_use == 100


def test_one_user_holding_their_share_leaves_room_for_another() -> None:
    shared = budget(total=100, per_user=25, wait=0.1)
    for _ in range(5):
        shared.acquire(5, ALICE)
    with pytest.raises(ServerBusy):
        shared.acquire(1, ALICE)
    shared.acquire(25, BOB)  # no wait: alice's idle uploads do not starve bob
    assert shared.in_use_by("alice") == 25 and shared.in_use_by("bob") == 25


def test_a_request_larger_than_a_share_fails_at_once() -> None:
    shared = budget(total=100, per_user=25, wait=30)
    started = time.monotonic()
    with pytest.raises(ServerBusy):
        shared.acquire(26, ALICE)
    assert time.monotonic() - started < 1


def test_a_lease_gives_everything_back_on_close_and_keeps_its_ceiling() -> None:
    shared = budget()
    lease = shared.lease(ALICE, ceiling=30)
    lease.acquire(10)
    assert lease.try_acquire(20)
    assert not lease.try_acquire(1)  # over what one upload can ever need
    with pytest.raises(RuntimeError):
        lease.acquire(1)
    lease.release(5)
    assert shared.in_use == 25
    lease.close()
    lease.close()
    assert shared.in_use == 0 and lease.held == 0


# -- against a real serve process --------------------------------------------------------

HANDLES = 40
WRITES_PER_HANDLE = 7
SESSIONS = 4
BUDGET_MIB = 128
OVERHEAD_MIB = 60


def _ssh(served: ServeProcess) -> paramiko.SSHClient:
    client = served.ssh_client()
    return client


def _hold_handles(
    sftp: paramiko.SFTPClient, names: list[str], failures: list[str], held: list[object]
) -> None:
    """Open each file and write 7 x 1 MiB without closing; a refused handle is left.
    Not pipelined: paramiko drops the error status of a pipelined WRITE."""
    chunk = b"%PDF-1.7\n" + bytes(MIB - 9)
    for name in names:
        handle = sftp.open(name, "wb")
        handle.set_pipelined(False)
        held.append(handle)
        try:
            for _ in range(WRITES_PER_HANDLE):
                handle.write(chunk)
        except OSError as exc:
            failures.append(str(exc))


def _sample_rss(served: ServeProcess, stop: threading.Event, peak: list[float]) -> None:
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        peak[0] = max(peak[0], served.rss_mib())
        time.sleep(0.1)


def test_many_open_uploads_stay_within_the_budget_and_another_user_still_uploads(
    serve_factory: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    served = serve_factory(
        {
            # moto returns a wrong composite CRC32 for multipart objects on GET
            "storage": {"part_checksums": False},
            "uploads": {
                "memory_budget": f"{BUDGET_MIB}MiB",
                "memory_wait_timeout": 0.5,
                "max_concurrent_per_user": 64,
            },
        }
    )
    bob_key = make_user_key(tmp_path / "bobkeys")
    served.cli("users", "add", "bob", "--key", f"{bob_key}.pub")
    baseline = served.rss_mib()
    peak = [baseline]
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(served, stop, peak), daemon=True)
    sampler.start()
    failures: list[str] = []
    held: list[object] = []
    client = _ssh(served)
    try:
        sessions = [client.open_sftp() for _ in range(SESSIONS)]
        names = [f"/held{n}.pdf" for n in range(HANDLES)]
        workers = [
            threading.Thread(target=_hold_handles, args=(sftp, names[i::SESSIONS], failures, held))
            for i, sftp in enumerate(sessions)
        ]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert not any(w.is_alive() for w in workers), "writers did not finish in time"
        attack_seconds = time.monotonic() - started

        pdf = make_pdf(tmp_path / "bob.pdf", 20 * 1000 * 1000)
        result = served.sftp(f"put {pdf} /bob.pdf\n", key=bob_key, user="bob")
        assert result.returncode == 0, result.stderr
        assert served.object_sha256("incoming/bob/bob.pdf") == sha256_file(pdf)
        stop.set()
        sampler.join(timeout=5)
    finally:
        stop.set()
        client.close()

    assert len(held) == HANDLES
    # alice's share (a quarter of 128 MiB) holds about six 5 MiB part buffers: the
    # other handles' writes waited, then failed with the status text.
    assert failures, served.log_text()[-3000:]
    assert all(BUSY in text for text in failures), failures[:3]
    assert len(failures) >= HANDLES // 2
    assert peak[0] - baseline < BUDGET_MIB + OVERHEAD_MIB, (baseline, peak[0])
    assert attack_seconds < 60
    print(f"attack {attack_seconds:.1f}s, rss {baseline:.0f} -> {peak[0]:.0f} MiB")
    log = served.log_text()
    assert "refused upload memory to alice from 127.0.0.1:" in log
    assert served.alive()
