"""S3's limits live in one module; a size announced before any byte (SCP's C line) is
checked against them and against uploads.max_file_size before anything is created."""

from __future__ import annotations

from collections.abc import Callable

import paramiko
import pytest

from sftp_gateway.catalog.db import make_engine
from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import load_settings
from sftp_gateway.errors import ConfigError, QuotaExceeded
from sftp_gateway.s3limits import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    TIB,
    clamp_part_size,
    max_size_with,
    part_size_for,
)
from sftp_gateway.transfer import check_declared_size
from tests.helpers import RunningGateway, ssh_login
from tests.serving import ServeProcess

GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("configured", "expected", "part_size"),
    [
        (8 * MIB, None, 8 * MIB),  # unknown size: the configured part size
        (8 * MIB, 1 * GIB, 8 * MIB),  # fits in 10,000 parts of 8 MiB
        (8 * MIB, 100 * GIB, -(-100 * GIB // MAX_PARTS)),  # raised to fit
        (8 * MIB, MAX_OBJECT_SIZE, -(-MAX_OBJECT_SIZE // MAX_PARTS)),  # 5 TiB: ~525 MiB
        (1 * MIB, None, MIN_PART_SIZE),  # never below S3's minimum
        (10 * GIB, None, MAX_PART_SIZE),  # never above S3's maximum
        (8 * MIB, 10_000 * TIB, MAX_PART_SIZE),  # absurd sizes are clamped, refused elsewhere
    ],
)
def test_part_size_for_a_known_size_stays_within_s3_limits(
    configured: int, expected: int | None, part_size: int
) -> None:
    chosen = part_size_for(configured, expected)
    assert chosen == part_size
    assert MIN_PART_SIZE <= chosen <= MAX_PART_SIZE
    if expected is not None and expected <= MAX_OBJECT_SIZE:
        assert max_size_with(chosen) >= expected


def test_clamp_and_capacity() -> None:
    assert clamp_part_size(0) == MIN_PART_SIZE
    assert clamp_part_size(6 * GIB) == MAX_PART_SIZE
    assert max_size_with(5 * MIB) == 5 * MIB * MAX_PARTS
    assert max_size_with(MAX_PART_SIZE) == MAX_OBJECT_SIZE


def test_config_part_size_is_checked_against_the_same_limits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "gateway.yaml"
    path.write_text("storage: {bucket: abc, part_size: 4MiB}\n")
    with pytest.raises(ConfigError, match=r"storage\.part_size: must be between 5MiB and 5GiB"):
        load_settings(path)


def test_announced_size_is_checked_against_the_limit_and_s3() -> None:
    check_declared_size(GIB, GIB)  # exactly the limit is fine
    with pytest.raises(QuotaExceeded, match="file exceeds the maximum size of 1 GiB"):
        check_declared_size(GIB + 1, GIB)
    with pytest.raises(QuotaExceeded, match="maximum size of 5 TiB"):
        check_declared_size(MAX_OBJECT_SIZE + 1, 100 * TIB)


def _scp_sink(port: int, key_path: str) -> tuple[paramiko.SSHClient, paramiko.Channel]:
    """`scp -t /` as alice over a paramiko exec channel, to speak the protocol by hand."""
    client = ssh_login(port, "alice", key_path)
    transport = client.get_transport()
    assert transport is not None
    channel = transport.open_session()
    channel.settimeout(20)
    channel.exec_command("scp -t /")
    return client, channel


def test_a_10_tb_scp_c_line_is_refused_before_anything_is_created(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    client, channel = _scp_sink(served.port, str(served.key_path))
    with client:
        assert channel.recv(1) == b"\0"
        channel.sendall(b"C0644 10000000000000 huge.pdf\n")
        reply = channel.recv(500)
        assert reply.startswith(b"\1"), reply  # a warning: this file is skipped
        assert b"file exceeds the maximum size of 1 GiB" in reply
        channel.shutdown_write()
        assert channel.recv_exit_status() == 1
    s3 = served.s3()
    assert s3.list_multipart_uploads(Bucket=served.bucket).get("Uploads", []) == []
    assert s3.list_objects_v2(Bucket=served.bucket).get("KeyCount", 0) == 0
    settings = load_settings(served.config_path)
    rows = Catalog(make_engine(settings.catalog.url)).uploads_for_key(
        served.bucket, "incoming/alice/huge.pdf"
    )
    assert rows == []
    assert "refused scp upload of /huge.pdf by alice from 127.0.0.1: file exceeds" in (
        served.log_text()
    )
    assert served.user_can_upload()


def test_a_c_line_size_with_thousands_of_digits_is_a_protocol_error(
    gateway: RunningGateway,
) -> None:
    client, channel = _scp_sink(gateway.port, str(gateway.key_path))
    with client:
        assert channel.recv(1) == b"\0"
        channel.sendall(b"C0644 " + b"9" * 5000 + b" big.pdf\n")
        reply = channel.recv(500)
        assert reply.startswith(b"\2") and b"protocol error" in reply, reply
        assert b"internal error" not in reply
        assert channel.recv_exit_status() == 1
