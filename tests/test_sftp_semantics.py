"""What a file is after OPEN flags, renames and names that S3 alone would let collide:
the bytes a client reads back, what STAT and a listing say, and the catalog's rows.
paramiko's client against a real gateway on moto's S3 server."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import paramiko
import pytest
from paramiko.sftp import CMD_CLOSE

from tests.helpers import RunningGateway

PDF = b"%PDF-1.7\n"


@contextmanager
def sftp_session(running: RunningGateway) -> Iterator[paramiko.SFTPClient]:
    client = running.ssh_client()
    try:
        yield client.open_sftp()
    finally:
        client.close()


def put(sftp: paramiko.SFTPClient, path: str, data: bytes) -> None:
    with sftp.open(path, "wb") as handle:
        handle.write(data)


def read(sftp: paramiko.SFTPClient, path: str) -> bytes:
    buffer = io.BytesIO()
    sftp.getfo(path, buffer)
    return buffer.getvalue()


def keys(running: RunningGateway) -> list[str]:
    listed: dict[str, Any] = running.storage.client.list_objects_v2(Bucket=running.bucket)
    return sorted(obj["Key"] for obj in listed.get("Contents", []))


def test_writing_only_the_start_of_a_file_opened_without_truncation_keeps_the_file(
    gateway: RunningGateway,
) -> None:
    """`r+` (no TRUNC) and 5 bytes at offset 0: a POSIX server would patch them in
    place. S3 cannot; cutting the file to 5 bytes would lose 1004. Refused, unchanged."""
    original = PDF + b"A" * 1000
    with sftp_session(gateway) as sftp:
        put(sftp, "/keep.pdf", original)
        handle = sftp.open("/keep.pdf", "r+")
        handle.write(b"%PDF-")
        with pytest.raises(OSError, match="opened without truncating it"):
            sftp._request(CMD_CLOSE, handle.handle)  # paramiko's close() hides its status
        handle._closed = True
        assert read(sftp, "/keep.pdf") == original
        assert sftp.stat("/keep.pdf").st_size == len(original)
    rows = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("keep.pdf"))
    assert sorted(row.status for row in rows) == ["completed", "failed"]
    assert gateway.open_multipart_uploads() == []


def test_writing_over_the_whole_of_a_file_opened_without_truncation_replaces_it(
    gateway: RunningGateway,
) -> None:
    with sftp_session(gateway) as sftp:
        put(sftp, "/same.pdf", PDF + b"old" * 10)
        replacement = PDF + b"new" * 20
        with sftp.open("/same.pdf", "r+") as handle:
            handle.write(replacement)
        assert read(sftp, "/same.pdf") == replacement


def test_append_to_a_compressed_file_continues_its_original_bytes(gateway_factory: Any) -> None:
    """The object is gzip; the client sees (and appends to) the PDF it sent."""
    running = gateway_factory({"storage": {"compression": "gzip"}})
    first, tail = PDF + b"hello world " * 2000, b"TAIL" * 10
    with sftp_session(running) as sftp:
        put(sftp, "/grow.pdf", first)
        with sftp.open("/grow.pdf", "a") as handle:
            assert handle.tell() == len(first)  # paramiko asks FSTAT where the file ends
            handle.write(tail)
        assert read(sftp, "/grow.pdf") == first + tail
        assert sftp.stat("/grow.pdf").st_size == len(first + tail)
    rows = running.catalog.uploads_for_key(running.bucket, running.key_for("grow.pdf"))
    newest = max(rows, key=lambda row: row.completed_at or row.started_at)
    assert newest.status == "completed"
    assert newest.sha256 == hashlib.sha256(first + tail).hexdigest()


def test_a_file_never_takes_a_directory_s_name_nor_lives_under_a_file(
    gateway: RunningGateway,
) -> None:
    with sftp_session(gateway) as sftp:
        sftp.mkdir("/d.pdf")
        put(sftp, "/d.pdf/inner.pdf", PDF)
        put(sftp, "/f.pdf", PDF + b"file")
        with pytest.raises(OSError, match="is a directory"):
            put(sftp, "/d.pdf", PDF + b"over the directory")
        with pytest.raises(OSError, match="is a directory"):
            sftp.posix_rename("/f.pdf", "/d.pdf")
        with pytest.raises(OSError, match=r"/f\.pdf is a file, not a directory"):
            sftp.mkdir("/f.pdf/sub")
        for under_the_file in ("/f.pdf/child.pdf", "/f.pdf/sub/child.pdf"):
            with pytest.raises(OSError, match=r"/f\.pdf is a file, not a directory"):
                put(sftp, under_the_file, PDF + b"lost under a file")
        with pytest.raises(OSError, match=r"/f\.pdf is a file, not a directory"):
            sftp.posix_rename("/d.pdf/inner.pdf", "/f.pdf/inner.pdf")
        assert sorted(sftp.listdir("/")) == ["d.pdf", "f.pdf"]
    home = gateway.key_for("")
    assert keys(gateway) == [home + "d.pdf/", home + "d.pdf/inner.pdf", home + "f.pdf"]
    assert gateway.catalog.uploads_for_key(gateway.bucket, home + "f.pdf/child.pdf") == []


def test_a_temporary_suffix_alone_is_a_file_name_not_a_temporary_file(
    gateway_factory: Any,
) -> None:
    """`*.part` names `a.pdf.part` the temporary form of `a.pdf`; `.part` alone has no
    stem, so it is a file of its own, not the directory it sits in."""
    running = gateway_factory({"uploads": {"allowed_extensions": []}})
    with sftp_session(running) as sftp:
        sftp.mkdir("/docs")
        put(sftp, "/docs/.part", PDF)
        assert sftp.listdir("/docs") == [".part"]
        assert read(sftp, "/docs/.part") == PDF
    assert running.key_for("docs") not in keys(running)


def test_posix_rename_over_a_file_makes_stat_describe_the_moved_file(
    gateway_factory: Any,
) -> None:
    """STAT's size and mtime come from the catalog for compressed files: after the
    rename, the row of the file that was replaced no longer speaks for the name."""
    running = gateway_factory({"storage": {"compression": "gzip"}})
    moved = PDF + b"b" * 50_000
    with sftp_session(running) as sftp:
        put(sftp, "/b.pdf", moved)
        sftp.utime("/b.pdf", (1_500_000_000, 1_500_000_000))
        put(sftp, "/a.pdf", PDF + b"a" * 10)
        sftp.utime("/a.pdf", (1_600_000_000, 1_600_000_000))

        sftp.posix_rename("/b.pdf", "/a.pdf")

        stat = sftp.stat("/a.pdf")
        assert (stat.st_size, stat.st_mtime) == (len(moved), 1_500_000_000)
        assert read(sftp, "/a.pdf") == moved
    rows = running.catalog.uploads_for_key(running.bucket, running.key_for("a.pdf"))
    by_status = {row.status: row for row in rows}
    assert set(by_status) == {"completed", "replaced"}
    assert by_status["completed"].sha256 == hashlib.sha256(moved).hexdigest()


def test_setting_the_home_directory_s_times_is_accepted(gateway: RunningGateway) -> None:
    """`put -p` into the home sets its times too; S3 keeps none for directories."""
    with sftp_session(gateway) as sftp:
        sftp.utime("/", (1_600_000_000, 1_600_000_000))
        sftp.mkdir("/sub")
        sftp.utime("/sub", (1_600_000_000, 1_600_000_000))


def test_a_name_with_spaces_at_its_ends_keeps_them_in_the_object_s_metadata(
    gateway_factory: Any,
) -> None:
    """HTTP trims a header value's edges: `original-name` encodes those spaces."""
    gateway = gateway_factory({"uploads": {"allowed_extensions": []}})
    name = " lead and trail .pdf "
    with sftp_session(gateway) as sftp:
        put(sftp, "/" + name, PDF)
    head = gateway.storage.client.head_object(Bucket=gateway.bucket, Key=gateway.key_for(name))
    assert head["Metadata"]["original-name"] == "%20lead and trail .pdf%20"
    assert unquote(head["Metadata"]["original-name"]) == name


def test_a_file_opened_without_truncation_can_be_cut_to_its_new_length_by_setstat(
    gateway: RunningGateway,
) -> None:
    """OpenSSH's scp opens WRITE|CREAT and, after its last write, sets the size to what
    it wrote; other clients empty the file first. Both replace a longer file."""
    with sftp_session(gateway) as sftp:
        put(sftp, "/cut.pdf", PDF + b"long" * 1000)
        with sftp.open("/cut.pdf", "r+") as handle:
            handle.write(PDF + b"short")
            handle.truncate(len(PDF + b"short"))
        assert read(sftp, "/cut.pdf") == PDF + b"short"
        with sftp.open("/cut.pdf", "r+") as handle:
            handle.truncate(0)
            handle.write(PDF)
        assert read(sftp, "/cut.pdf") == PDF
        with sftp.open("/cut.pdf", "r+") as handle, pytest.raises(OSError, match="size"):
            handle.truncate(2)


def test_opening_a_missing_file_for_writing_without_create_is_no_such_file(
    gateway: RunningGateway,
) -> None:
    with sftp_session(gateway) as sftp, pytest.raises(FileNotFoundError):
        sftp.open("/missing.pdf", "r+")  # WRITE|READ, no CREAT
    assert keys(gateway) == []
