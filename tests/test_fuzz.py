"""The fuzz harness runs, reaches the real handlers, and reports what it must report."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz import scp_lines, sftp_frames
from tests.fuzz.harness import HOME_PREFIX, Finding, FuzzGateway
from tests.fuzz.seeds import MIB, ScpSeed, SftpSeed, write_seeds

ROOT = Path(__file__).resolve().parent.parent
SHORT_RUNS = 200
STATUS = 101


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzGateway]:
    gateway = FuzzGateway(tmp_path_factory.mktemp("fuzz"))
    yield gateway
    gateway.close()


@pytest.mark.parametrize("module", ["tests.fuzz.sftp_frames", "tests.fuzz.scp_lines"])
def test_a_short_fuzz_run_finds_no_crash_escape_or_orphan_upload(
    module: str, tmp_path: Path
) -> None:
    write_seeds(tmp_path / "seeds")
    target = "sftp" if module.endswith("sftp_frames") else "scp"
    command = [
        sys.executable,
        "-m",
        module,
        str(tmp_path / "seeds" / target),
        f"-runs={SHORT_RUNS}",
        "-seed=1",
        "-max_total_time=60",
        "-timeout=60",
        f"-artifact_prefix={tmp_path}/",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {SHORT_RUNS} runs" in result.stderr


def test_a_seed_upload_goes_through_the_real_handlers_into_storage(
    fuzz_gateway: FuzzGateway,
) -> None:
    seed = SftpSeed().open(b"/a.pdf", 0x1A).write_big(1, 6 * MIB).close(1)
    replies = sftp_frames.run(fuzz_gateway, seed.bytes())
    assert replies[0][0] == 2  # VERSION
    data = fuzz_gateway.storage.read_bytes(HOME_PREFIX + "a.pdf")
    assert len(data) == 6 * MIB and data.startswith(b"%PDF-")
    [row] = fuzz_gateway.catalog.uploads_for_key("fuzz", HOME_PREFIX + "a.pdf")[:1]
    assert row.status == "completed"


def test_a_name_that_is_not_utf8_gets_a_status_not_an_internal_error(
    fuzz_gateway: FuzzGateway,
) -> None:
    seed = SftpSeed().op(16).path(b"\xff\xfe.pdf")  # STAT
    replies = sftp_frames.run(fuzz_gateway, seed.bytes())
    statuses = [payload for kind, payload in replies if kind == STATUS]
    assert any(b"file names must be valid UTF-8" in payload for payload in statuses)


def test_an_scp_upload_lands_in_the_home(fuzz_gateway: FuzzGateway) -> None:
    seed = ScpSeed().command(b"scp -t /").file(b"b.pdf", 400)
    received = scp_lines.run(fuzz_gateway, seed.bytes())
    assert received.startswith(b"\0")
    assert len(fuzz_gateway.storage.read_bytes(HOME_PREFIX + "b.pdf")) == 400


def test_the_harness_reports_a_key_outside_the_home(fuzz_gateway: FuzzGateway) -> None:
    fuzz_gateway.storage.put("incoming/bob/stolen.pdf", b"x", {}, "application/pdf")
    try:
        with pytest.raises(Finding, match=r"key outside the home: incoming/bob/stolen\.pdf"):
            fuzz_gateway.check_invariants("planted")
    finally:
        fuzz_gateway.storage.delete("incoming/bob/stolen.pdf")


def test_the_harness_reports_an_open_upload_that_is_not_resumable(
    fuzz_gateway: FuzzGateway,
) -> None:
    key = HOME_PREFIX + "orphan.pdf"
    upload_id = fuzz_gateway.storage.create_multipart(key, {}, "application/pdf")
    try:
        with pytest.raises(Finding, match=r"orphan multipart upload: .*orphan\.pdf"):
            fuzz_gateway.check_invariants("planted")
    finally:
        fuzz_gateway.storage.abort_multipart(key, upload_id)


def test_the_harness_reports_an_error_the_gateway_logged(fuzz_gateway: FuzzGateway) -> None:
    logging.getLogger("sftp_gateway.sftp.errors").error("unexpected error in an SFTP request")
    with pytest.raises(Finding, match="unexpected error in an SFTP request"):
        fuzz_gateway.check_invariants("planted")


def test_a_temporary_upload_closed_but_never_renamed_is_not_left_open(
    fuzz_gateway: FuzzGateway,
) -> None:
    seed = SftpSeed().open(b"b.pdf.filepart", 0x1A).write_big(1, 6 * MIB).close(1)
    try:
        sftp_frames.run(fuzz_gateway, seed.bytes())
        # closed cleanly, never renamed: published under its final name when the session ended
        assert len(fuzz_gateway.storage.read_bytes(HOME_PREFIX + "b.pdf")) == 6 * MIB
    finally:  # leave the shared gateway clean for the other tests
        for key, upload_id, _ in fuzz_gateway.storage.list_multipart_uploads(""):
            fuzz_gateway.storage.abort_multipart(key, upload_id)


def test_frames_are_length_prefixed_sftp_packets() -> None:
    packets = sftp_frames.program(b"")
    assert [p[4] for p in packets] == [1, 16]  # INIT, then the REALPATH sentinel
    assert all(struct.unpack(">I", p[:4])[0] == len(p) - 4 for p in packets)
