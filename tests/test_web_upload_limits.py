"""What one client may hold on the upload listener: stalled PATCH bodies, PATCHes per
link, half-sent request heads, and a smuggling-shaped request. The upload app runs in
this process (on a real uvicorn listener, over a gateway on moto's S3) so that the
timeouts can be shortened."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import requests

from sftp_gateway.catalog.links import LinkStore
from sftp_gateway.web import server as server_module
from sftp_gateway.web import upload_tus
from sftp_gateway.web.server import AdminServer
from sftp_gateway.web.upload_page import build_upload_app
from tests.helpers import RunningGateway, free_port, wait_until

TUS = {"Tus-Resumable": "1.0.0"}
MIB = 1 << 20


@pytest.fixture
def listener(
    gateway_factory: Callable[..., RunningGateway], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningGateway, str]]:
    """(gateway, the URL of a new link) with 2 s body and head timeouts."""
    monkeypatch.setattr(upload_tus, "BODY_IDLE_TIMEOUT", 2.0)
    monkeypatch.setattr(server_module, "HEADER_TIMEOUT", 2.0)
    running = gateway_factory()
    server = AdminServer("127.0.0.1", free_port(), build_upload_app(running.gateway))
    server.start()
    _, token = LinkStore(running.catalog.engine).create("alice", expires_in=timedelta(hours=1))
    try:
        yield running, f"{server.url}/u/{token}"
    finally:
        server.stop()


def create(url: str, name: str, length: int) -> str:
    meta = "filename " + base64.b64encode(name.encode()).decode()
    answer = requests.post(
        url + "/files",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": meta},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return url.split("/u/", 1)[0] + answer.headers["Location"]


def stalled_patch(location: str, length: int, first: bytes) -> socket.socket:
    """A PATCH that sends its head and `first`, then nothing."""
    host, port = location.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + location.split("//", 1)[1].split("/", 1)[1]
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
            "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
        + first
    )
    return sock


def read_all(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def test_a_stalled_patch_is_ended_with_408_and_stays_resumable(
    listener: tuple[RunningGateway, str],
) -> None:
    running, url = listener
    body = b"%PDF-1.7\n" + bytes(12 * MIB - 9)
    location = create(url, "stalled.pdf", len(body))
    sock = stalled_patch(location, len(body), body[: 6 * MIB])
    started = time.monotonic()
    answer = read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"sent nothing for 2 seconds" in answer
    assert time.monotonic() - started < 20
    assert running.gateway.active.snapshot() == []  # the name is free again
    head = requests.head(location, headers=TUS, timeout=10)
    assert head.headers["Upload-Offset"] == str(5 * MIB)  # the durable part, kept
    last = requests.patch(
        location,
        data=body[5 * MIB :],
        headers={
            **TUS,
            "Upload-Offset": str(5 * MIB),
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=60,
    )
    assert last.status_code == 204, last.text
    key = running.key_for("stalled.pdf")
    reader = running.storage.open_read(key, 0)
    got = reader.read()
    reader.close()
    assert got == body


def test_one_link_streams_at_most_four_patches_at_once(
    listener: tuple[RunningGateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, url = listener
    monkeypatch.setattr(upload_tus, "BODY_IDLE_TIMEOUT", 30.0)
    sockets = []
    try:
        for i in range(6):
            location = create(url, f"slow{i}.pdf", MIB)
            sockets.append(stalled_patch(location, MIB, b"%PDF-1.7\n"))
        wait_until(lambda: len(running.gateway.active.snapshot()) == 4, timeout=10)
        answers = []
        for sock in sockets:
            sock.settimeout(3)
            try:
                answers.append(sock.recv(12, socket.MSG_PEEK))
            except TimeoutError:
                answers.append(b"")
        assert sorted(answers) == [b""] * 4 + [b"HTTP/1.1 429"] * 2
        assert len(running.gateway.active.snapshot()) == 4  # the account's cap is 16
    finally:
        for sock in sockets:
            sock.close()


def test_a_half_sent_request_head_is_closed_after_the_header_timeout(
    listener: tuple[RunningGateway, str],
) -> None:
    _, url = listener
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /u/x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        started = time.monotonic()
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 10
    with socket.create_connection((host, int(port)), timeout=30) as silent:
        started = time.monotonic()
        assert read_all(silent).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 10


def test_content_length_with_transfer_encoding_is_refused_and_closed(
    listener: tuple[RunningGateway, str],
) -> None:
    _, url = listener
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    request = (
        f"POST {path}/files HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
        "Upload-Length: 10\r\nUpload-Metadata: filename YS5wZGY=\r\n"
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\nGET /u/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = read_all(sock)
    statuses = [line for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1")]
    assert statuses == [b"HTTP/1.1 400 Bad Request"]
    assert b"Transfer-Encoding" in answer
