"""Legacy SCP (`scp -O`): the real OpenSSH client against the gateway's sink and source."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest

from sftp_gateway.filesystem import FileStat, UserFilesystem
from sftp_gateway.scp import parse_command
from sftp_gateway.sftp.handler import attributes
from tests.helpers import (
    MIB,
    SSH_OPTIONS,
    RunningGateway,
    make_pdf,
    sha256_file,
    tagged_sha256,
)

SIZE = 20 * MIB
MTIME = 1_600_000_000  # 2020-09-13, far from "now", so a kept time is visibly kept


def scp(
    running: RunningGateway, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH scp in legacy mode (-O) against the gateway."""
    cmd = ["scp", "-O", *SSH_OPTIONS, "-i", str(running.key_path), "-P", str(running.port)]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"scp {args} failed ({result.returncode}): {result.stderr}")
    return result


def remote(path: str = "") -> str:
    return f"alice@127.0.0.1:{path}"


def assert_landed(running: RunningGateway, path: str, source: Path) -> None:
    """The object is the file, carries our metadata, and has one completed catalog row."""
    key = running.key_for(path)
    expected = sha256_file(source)
    assert running.object_sha256(key) == expected
    meta = running.storage.client.head_object(Bucket=running.bucket, Key=key)["Metadata"]
    assert meta["uploaded-by"] == "alice"
    assert tagged_sha256(running.storage.client, running.bucket, key) == expected
    assert meta["original-name"] == os.path.basename(path)
    rows = running.catalog.uploads_for_key(running.bucket, key)
    assert rows and rows[0].status == "completed"
    assert rows[0].sha256 == expected and rows[0].size == source.stat().st_size


# -- the exec command line --------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "sink", "paths", "recursive", "preserve"),
    [
        (b"scp -t .", True, ["."], False, False),
        (b"scp -r -p -t -- dir", True, ["dir"], True, True),
        (b"scp -v -d -t 'my dir'", True, ["my dir"], False, False),
        (b"scp -t my file.pdf", True, ["my file.pdf"], False, False),
        (b"scp -pf a.pdf b.pdf", False, ["a.pdf", "b.pdf"], False, True),
        (b"/usr/bin/scp -r -f d", False, ["d"], True, False),
    ],
)
def test_scp_commands_are_parsed(
    command: bytes, sink: bool, paths: list[str], recursive: bool, preserve: bool
) -> None:
    request = parse_command(command)
    assert request is not None
    assert (request.sink, request.paths, request.recursive, request.preserve) == (
        sink,
        paths,
        recursive,
        preserve,
    )


@pytest.mark.parametrize(
    "command",
    [b"md5sum x", b"echo hi", b"scp x", b"scp -t", b"scp -t -f x", b"scp -x -t x", b"scp 'x"],
)
def test_other_commands_are_not_scp(command: bytes) -> None:
    assert parse_command(command) is None


# -- uploads ------------------------------------------------------------------------------


def test_scp_legacy_uploads_a_20mb_pdf_and_an_empty_one(gateway, tmp_path: Path) -> None:
    big = make_pdf(tmp_path / "big.pdf", SIZE)
    empty = make_pdf(tmp_path / "empty.pdf", 0)

    scp(gateway, str(big), str(empty), remote())

    assert_landed(gateway, "big.pdf", big)
    assert_landed(gateway, "empty.pdf", empty)
    [row] = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("big.pdf"))
    assert row.client_version and row.client_version.startswith("SSH-2.0-OpenSSH")
    assert gateway.open_multipart_uploads() == []


def test_scp_legacy_renames_on_the_way_in(gateway, tmp_path: Path) -> None:
    source = make_pdf(tmp_path / "local.pdf", 1000)
    scp(gateway, str(source), remote("renamed.pdf"))
    assert_landed(gateway, "renamed.pdf", source)


def test_scp_legacy_recursive_directory_keeps_times(gateway, tmp_path: Path) -> None:
    tree = tmp_path / "batch"
    (tree / "sub").mkdir(parents=True)
    files = {
        "batch/a.pdf": make_pdf(tree / "a.pdf", 6 * MIB),
        "batch/empty.pdf": make_pdf(tree / "empty.pdf", 0),
        "batch/sub/b.pdf": make_pdf(tree / "sub" / "b.pdf", 2000),
    }
    for source in files.values():
        os.utime(source, (MTIME, MTIME))

    scp(gateway, "-r", "-p", str(tree), remote())
    scp(gateway, "-r", "-p", str(tree), remote())  # again: the directories exist now

    for path, source in files.items():
        assert_landed(gateway, path, source)
        rows = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for(path))
        assert [(r.status, r.mtime) for r in rows] == [("completed", MTIME)] * 2
    assert gateway.object_exists(gateway.key_for("batch/"))
    assert gateway.object_exists(gateway.key_for("batch/sub/"))
    listing = gateway.sftp("ls -l batch\n").stdout
    assert "a.pdf" in listing and "sub" in listing


def test_scp_legacy_into_an_existing_directory(gateway, tmp_path: Path) -> None:
    gateway.sftp("mkdir inbox\n")
    source = make_pdf(tmp_path / "c.pdf", 3000)
    scp(gateway, str(source), remote("inbox"))
    assert_landed(gateway, "inbox/c.pdf", source)


def test_scp_legacy_second_copy_overwrites_cleanly(gateway, tmp_path: Path) -> None:
    first = make_pdf(tmp_path / "first.pdf", 7 * MIB)
    second = make_pdf(tmp_path / "second.pdf", 2 * MIB)
    scp(gateway, str(first), remote("same.pdf"))
    scp(gateway, str(second), remote("same.pdf"))

    assert_landed(gateway, "same.pdf", second)
    rows = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("same.pdf"))
    assert [r.status for r in rows] == ["completed", "completed"]
    assert gateway.open_multipart_uploads() == []


# -- policy and failures --------------------------------------------------------------------


def test_scp_legacy_refused_file_is_reported_and_the_rest_goes_on(gateway, tmp_path: Path) -> None:
    not_pdf = tmp_path / "fake.pdf"
    not_pdf.write_bytes(b"hello, not a pdf" * 1000)
    wrong_name = make_pdf(tmp_path / "notes.txt", 100)
    good = make_pdf(tmp_path / "good.pdf", 100)

    result = scp(gateway, str(not_pdf), str(wrong_name), str(good), remote(), check=False)

    assert result.returncode == 1
    assert "not a PDF" in result.stderr
    assert "only .pdf files may be uploaded here" in result.stderr
    assert not gateway.object_exists(gateway.key_for("fake.pdf"))
    assert not gateway.object_exists(gateway.key_for("notes.txt"))
    assert_landed(gateway, "good.pdf", good)
    [row] = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("fake.pdf"))
    assert row.status == "failed"


def test_scp_legacy_downloads_what_a_remote_glob_matches(gateway, tmp_path: Path) -> None:
    """OpenSSH leaves `host:*.pdf` for the remote shell to expand; the gateway does it."""
    up = tmp_path / "up"
    up.mkdir()
    sources = [make_pdf(up / name, 1000 + i) for i, name in enumerate(["a.pdf", "b.pdf"])]
    scp(gateway, *map(str, sources), remote())
    gateway.sftp("mkdir sub\n")

    back = tmp_path / "back"
    back.mkdir()
    scp(gateway, remote("*.pdf"), str(back))

    assert sorted(p.name for p in back.iterdir()) == ["a.pdf", "b.pdf"]
    assert all(sha256_file(back / s.name) == sha256_file(s) for s in sources)
    missing = scp(gateway, remote("*.txt"), str(back), check=False)
    assert missing.returncode == 1 and "no match for *.txt" in missing.stderr


def test_scp_legacy_download_of_a_missing_file_says_so(gateway, tmp_path: Path) -> None:
    result = scp(gateway, remote("nope.pdf"), str(tmp_path / "x.pdf"), check=False)
    assert result.returncode == 1
    assert "no such file" in result.stderr
    assert not (tmp_path / "x.pdf").exists()


@pytest.mark.parametrize("command", ["md5sum missing.pdf", "echo ok", "sh -c true"])
def test_other_exec_commands_are_refused_with_a_message(gateway, command: str) -> None:
    result = subprocess.run(
        [
            "ssh",
            *SSH_OPTIONS,
            "-i",
            str(gateway.key_path),
            "-p",
            str(gateway.port),
            "alice@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "is not available" in result.stderr
    assert "only SFTP and scp" in result.stderr
    assert result.stdout == ""


def test_the_c_line_size_is_passed_as_the_expected_size(gateway, tmp_path, monkeypatch) -> None:
    """The sink knows the size before the first byte: the pipeline picks its part size."""
    seen: list[int | None] = []
    real_open = UserFilesystem.open_upload

    def spy(self: UserFilesystem, path: str, **kwargs: Any) -> Any:
        seen.append(kwargs.get("expected_size"))
        return real_open(self, path, **kwargs)

    monkeypatch.setattr(UserFilesystem, "open_upload", spy)
    source = make_pdf(tmp_path / "sized.pdf", 6 * MIB + 7)
    scp(gateway, str(source), remote())
    assert seen == [6 * MIB + 7]
    assert_landed(gateway, "sized.pdf", source)


def test_a_broken_control_line_is_a_fatal_error(gateway) -> None:
    client, channel = exec_channel(gateway, "scp -t /")
    with client:
        assert channel.recv(1) == b"\0"
        channel.sendall(b"Xnonsense\n")
        reply = channel.recv(200)
        assert reply.startswith(b"\2") and b"protocol error" in reply
        assert channel.recv_exit_status() == 1


def exec_channel(
    running: RunningGateway, command: str
) -> tuple[paramiko.SSHClient, paramiko.Channel]:
    """An exec channel as alice, for speaking the protocol byte by byte."""
    client = running.ssh_client()
    transport = client.get_transport()
    assert transport is not None
    channel = transport.open_session()
    channel.exec_command(command)
    channel.settimeout(30)
    return client, channel


def test_client_dying_mid_file_abandons_the_upload(gateway) -> None:
    """A short read (the client vanished) must never complete the object."""
    client, channel = exec_channel(gateway, "scp -t /dying.pdf")
    assert channel.recv(1) == b"\0"
    channel.sendall(b"C0644 20000000 dying.pdf\n")
    assert channel.recv(1) == b"\0"
    channel.sendall(b"%PDF-1.7\n" + os.urandom(6 * MIB))  # more than one 5 MiB part
    client.close()

    key = gateway.key_for("dying.pdf")
    deadline = time.monotonic() + 30
    rows: list = []
    while time.monotonic() < deadline:
        rows = gateway.catalog.uploads_for_key(gateway.bucket, key)
        if rows and rows[0].status != "in_progress":
            break
        time.sleep(0.1)
    # Never completed: aborted, or kept as `interrupted` (its parts stay for a resume).
    assert rows and rows[0].status in ("aborted", "interrupted")
    assert not gateway.object_exists(key)
    open_uploads = {u["UploadId"] for u in gateway.open_multipart_uploads()}
    if rows[0].status == "aborted":
        assert open_uploads == set()
    else:
        assert open_uploads <= {rows[0].s3_upload_id}


# -- downloads ------------------------------------------------------------------------------


def test_scp_legacy_downloads_a_file_and_a_tree(gateway, tmp_path: Path) -> None:
    big = make_pdf(tmp_path / "big.pdf", SIZE)
    tree = tmp_path / "up"
    tree.mkdir()
    small = make_pdf(tree / "s.pdf", 1234)
    empty = make_pdf(tree / "e.pdf", 0)
    os.utime(small, (MTIME, MTIME))
    scp(gateway, "-p", str(big), remote())
    scp(gateway, "-r", "-p", str(tree), remote())

    back = tmp_path / "back"
    back.mkdir()
    scp(gateway, remote("big.pdf"), str(back / "big.pdf"))
    scp(gateway, "-r", "-p", remote("up"), str(back))

    assert sha256_file(back / "big.pdf") == sha256_file(big)
    assert sha256_file(back / "up" / "s.pdf") == sha256_file(small)
    assert (back / "up" / "e.pdf").stat().st_size == 0
    assert int((back / "up" / "s.pdf").stat().st_mtime) == MTIME
    assert sha256_file(back / "up" / "e.pdf") == sha256_file(empty)


# -- hostile control lines and targets ------------------------------------------------------

AFTER_2106 = 7_258_118_400  # 2200-01-01: past SFTP v3's uint32 times (2106-02-07)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The gateway's errors and tracebacks (not paramiko's line about a client's reset)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("sftp_gateway") and (r.levelno >= logging.ERROR or r.exc_info)
    ]


def assert_nothing_stored(running: RunningGateway, path: str) -> None:
    key = running.key_for(path)
    assert not running.object_exists(key)
    assert running.catalog.uploads_for_key(running.bucket, key) == []
    assert running.open_multipart_uploads() == []


def test_scp_p_of_a_file_dated_after_2106_is_refused_and_listings_still_work(
    gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    future = make_pdf(tmp_path / "future.pdf", 1000)
    os.utime(future, (AFTER_2106, AFTER_2106))

    result = scp(gateway, "-p", str(future), remote(), check=False)

    assert result.returncode == 1
    assert "bad times line" in result.stderr and "after 2106-02-07" in result.stderr
    assert_nothing_stored(gateway, "future.pdf")
    assert gateway.sftp("ls -l /\n").returncode == 0

    # The last second SFTP can carry (2106-02-07 06:28:15 UTC) is kept as it is.
    edge = make_pdf(tmp_path / "edge.pdf", 1000)
    os.utime(edge, (2**32 - 1, 2**32 - 1))
    scp(gateway, "-p", str(edge), remote())
    [row] = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("edge.pdf"))
    assert (row.status, row.mtime) == ("completed", 2**32 - 1)
    assert "edge.pdf" in gateway.sftp("ls -l /\n").stdout
    assert "scp: protocol error: bad times line" in caplog.text
    assert errors_logged(caplog) == []


def test_a_listing_shows_a_stored_time_sftp_cannot_carry_clamped_to_uint32(
    gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row stored before times were checked must not break every listing of its folder."""
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    scp(gateway, str(make_pdf(tmp_path / "old.pdf", 1000)), remote())
    [row] = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("old.pdf"))
    gateway.catalog.update_upload(row.id, mtime=AFTER_2106)

    client = gateway.ssh_client()
    with client:
        sftp = client.open_sftp()
        [listed] = sftp.listdir_attr("/")
        assert (listed.filename, listed.st_mtime, listed.st_atime) == (
            "old.pdf",
            2**32 - 1,
            2**32 - 1,
        )
        assert sftp.stat("/old.pdf").st_mtime == 2**32 - 1
    assert "old.pdf" in gateway.sftp("ls -l /\n").stdout
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("seconds", [-1, 2**32, AFTER_2106, 10**20])
def test_sftp_attributes_clamp_any_time_into_uint32(seconds: int) -> None:
    attr = attributes(FileStat("x.pdf", False, 1, seconds))
    assert attr.st_mtime == attr.st_atime == min(max(seconds, 0), 2**32 - 1)
    attr._pack(paramiko.Message())  # what paramiko does for every STAT and READDIR entry


@pytest.mark.parametrize(
    "line",
    [
        "T1\u00b2 0 1 0\n".encode(),  # "²".isdigit() is true, int() refuses it
        "T\u0661 0 1 0\n".encode(),  # an Arabic-Indic digit one: int() would take it
        b"T" + b"9" * 5000 + b" 0 1 0\n",  # int() refuses more than 4300 digits
        b"T" + b"9" * 20 + b" 0 1 0\n",  # beyond the catalog's BIGINT
        b"T4294967296 0 1 0\n",  # one past SFTP's uint32
        b"T1 0 4294967296 0\n",
    ],
    ids=[
        "superscript-digit",
        "arabic-digit",
        "5000-digits",
        "20-digits",
        "mtime-2^32",
        "atime-2^32",
    ],
)
def test_a_times_line_the_server_cannot_hold_is_a_protocol_error_without_a_traceback(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture, line: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="sftp_gateway")
    client, channel = exec_channel(gateway, "scp -p -t /")
    with client:
        assert channel.recv(1) == b"\0"
        channel.sendall(line)
        reply = channel.recv(300)
        assert reply.startswith(b"\2scp: protocol error: bad times line"), reply
        assert channel.recv_exit_status() == 1
    assert "scp: protocol error: bad times line" in caplog.text
    assert "scp session failed" not in caplog.text
    assert errors_logged(caplog) == []


def test_a_file_name_with_a_backslash_is_refused_and_cannot_leave_the_target(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    """paths.normalize reads `\\` as `/`: `..\\outside.pdf` sent into /inbox would be
    /outside.pdf. OpenSSH on Linux sends such a local name as it is."""
    gateway.sftp("mkdir inbox\n")
    hostile = make_pdf(tmp_path / "..\\outside.pdf", 1000)

    result = scp(gateway, str(hostile), remote("/inbox"), check=False)

    assert result.returncode == 1
    assert "a name may not contain a backslash" in result.stderr
    assert_nothing_stored(gateway, "outside.pdf")
    assert_nothing_stored(gateway, "inbox/..\\outside.pdf")


def test_a_directory_name_with_a_backslash_is_refused(gateway: RunningGateway) -> None:
    gateway.sftp("mkdir inbox\n")
    client, channel = exec_channel(gateway, "scp -r -t /inbox")
    with client:
        assert channel.recv(1) == b"\0"
        channel.sendall(b"D0755 0 ..\\escaped\n")
        reply = channel.recv(300)
        assert reply.startswith(b"\2") and b"a name may not contain a backslash" in reply, reply
        assert channel.recv_exit_status() == 1
    assert not gateway.object_exists(gateway.key_for("escaped/"))
    assert not gateway.object_exists(gateway.key_for("inbox/..\\escaped/"))


def test_scp_to_a_missing_directory_with_a_trailing_slash_stores_nothing(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    """As OpenSSH's own sink: `host:new.pdf/` names a directory, never the file new.pdf."""
    source = make_pdf(tmp_path / "a.pdf", 1000)

    result = scp(gateway, str(source), remote("/newdir.pdf/"), check=False)

    assert result.returncode == 1
    assert "/newdir.pdf/: No such directory" in result.stderr
    assert_nothing_stored(gateway, "newdir.pdf")
    assert_nothing_stored(gateway, "newdir.pdf/a.pdf")

    # With -r the directory itself arrives (a D line) and is made, as OpenSSH does.
    tree = tmp_path / "tree"
    tree.mkdir()
    inside = make_pdf(tree / "b.pdf", 1000)
    scp(gateway, "-r", str(tree), remote("/made/"))
    assert_landed(gateway, "made/b.pdf", inside)


def test_scp_to_an_existing_file_with_a_trailing_slash_leaves_it_alone(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    first = make_pdf(tmp_path / "first.pdf", 1000)
    scp(gateway, str(first), remote("/kept.pdf"))
    second = make_pdf(tmp_path / "second.pdf", 2000)

    result = scp(gateway, str(second), remote("/kept.pdf/"), check=False)

    assert result.returncode == 1
    assert "/kept.pdf/: Not a directory" in result.stderr
    assert_landed(gateway, "kept.pdf", first)
    rows = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("kept.pdf"))
    assert [r.status for r in rows] == ["completed"]
