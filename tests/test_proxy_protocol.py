"""PROXY protocol v1/v2: the parser (with hypothesis), and a real `serve` behind a
"balancer" on 127.0.0.1 whose headers set the client address that the catalog, the
logs and `from=` key options see."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftp_gateway import proxyproto
from sftp_gateway.proxyproto import ProxyProtocolError, build_v1, build_v2, parse
from tests.helpers import make_pdf, sha256_file
from tests.serving import ServeProcess
from tests.test_key_options import add_key_with_options

BEHIND_NLB = {"server": {"proxy_protocol": "required", "proxy_trusted_networks": ["127.0.0.1/32"]}}
CLIENT = "203.0.113.9"

ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
ports = st.integers(0, 65535)


# -- the parser ------------------------------------------------------------------------


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, st.binary(max_size=64)
)
def test_v1_and_v2_headers_give_back_their_addresses_and_exact_length(
    addresses: tuple[str, str], sport: int, dport: int, after: bytes
) -> None:
    (src, dst) = addresses
    for header in (build_v1((src, sport), (dst, dport)), build_v2((src, sport), (dst, dport))):
        parsed, length = parse(header + after)
        assert length == len(header)
        assert parsed.source == (src, sport) and parsed.destination == (dst, dport)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_any_bytes_parse_or_fail_with_a_protocol_error_only(data: bytes) -> None:
    try:
        _header, length = parse(data)
    except ProxyProtocolError:
        return
    assert 0 < length <= len(data)


@given(st.sampled_from([0, 1, 2]), ipv4, ports, st.data())
def test_every_truncated_or_mutated_header_is_refused_or_still_well_formed(
    kind: int, src: str, sport: int, data: st.DataObject
) -> None:
    header = [
        build_v1((src, sport), ("10.0.0.1", 22)),
        build_v2((src, sport), ("10.0.0.1", 22)),
        build_v2((src, sport), ("10.0.0.1", 22), tlvs=b"\xea\x00\x03vpc"),
    ][kind]
    cut = data.draw(st.integers(0, len(header) - 1))
    with pytest.raises(ProxyProtocolError):
        parse(header[:cut])
    position = data.draw(st.integers(0, len(header) - 1))
    mutated = bytearray(header)
    mutated[position] ^= data.draw(st.integers(1, 255))
    try:
        parsed, length = parse(bytes(mutated))
    except ProxyProtocolError:
        return
    assert length <= len(mutated) and parsed.version in (1, 2)


def test_v1_rejects_what_the_spec_forbids() -> None:
    for bad in (
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # no CR
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
    ):
        with pytest.raises(ProxyProtocolError):
            parse(bad)
    assert parse(b"PROXY UNKNOWN\r\nSSH-2.0-x\r\n")[0].source is None


def test_read_header_leaves_the_ssh_bytes_and_treats_local_as_a_health_check() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(build_v2((CLIENT, 50000), ("10.0.0.1", 22)) + b"SSH-2.0-client\r\n")
        header = proxyproto.read_header(right, required=True, timeout=2)
        assert header is not None and header.source == (CLIENT, 50000)
        assert right.recv(100) == b"SSH-2.0-client\r\n"
        left.sendall(build_v2(None, local=True))
        with pytest.raises(proxyproto.HealthCheck):
            proxyproto.read_header(right, required=True, timeout=2)


# -- a real server behind a balancer ---------------------------------------------------


def upload_via_balancer(
    served: ServeProcess, header: bytes, name: str, *, key: Path | None = None
) -> Path:
    """What a client behind an NLB does: the balancer's header, then SSH (paramiko)."""
    local = make_pdf(served.tmp / name, 200_000)
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=20)
    sock.sendall(header)
    transport = paramiko.Transport(sock)
    try:
        pkey = paramiko.Ed25519Key.from_private_key_file(str(key or served.key_path))
        transport.connect(username=served.user, pkey=pkey)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        sftp.put(str(local), f"/{name}")
    finally:
        transport.close()
    return local


def closed_without_a_version(served: ServeProcess, data: bytes, source: str = "127.0.0.1") -> bool:
    """Send `data`; True when the server closes without ever sending its SSH version."""
    address = ("127.0.0.1", served.port)
    with socket.create_connection(address, timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:  # closed with our bytes unread
            pass
        return not received.startswith(b"SSH-")


def wait_for_log(served: ServeProcess, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in served.log_text().splitlines():
            if text in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log:\n{served.log_text()[-3000:]}")


def test_v2_header_from_the_balancer_is_the_address_of_record_for_catalog_logs_and_from_keys(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory(BEHIND_NLB)
    local = upload_via_balancer(served, build_v2((CLIENT, 41000), ("10.0.0.5", 22)), "a.pdf")

    [row] = json.loads(served.cli("uploads", "list", "--json").stdout)
    assert row["client_ip"] == CLIENT
    assert row["sha256"] == sha256_file(local)
    auth = json.loads(wait_for_log(served, '"event":"auth.ok"'))
    assert auth["addr"] == CLIENT
    connect = json.loads(wait_for_log(served, '"event":"connect"'))
    assert (connect["addr"], connect["via"]) == (CLIENT, "127.0.0.1")

    only_there, _ = add_key_with_options(served, "only_there", f'from="{CLIENT}"')
    upload_via_balancer(served, build_v2((CLIENT, 41001)), "b.pdf", key=only_there)
    with pytest.raises(paramiko.AuthenticationException):
        upload_via_balancer(served, build_v2(("198.51.100.7", 41002)), "c.pdf", key=only_there)
    assert "auth failed for alice from 198.51.100.7: key " in served.log_text()


def test_v1_header_from_the_balancer_sets_the_client_address(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory(BEHIND_NLB)
    upload_via_balancer(served, build_v1(("2001:db8::7", 41000), ("2001:db8::1", 22)), "v1.pdf")
    [row] = json.loads(served.cli("uploads", "list", "--json").stdout)
    assert row["client_ip"] == "2001:db8::7"


def test_headers_from_untrusted_peers_and_malformed_headers_are_refused_with_a_log_line(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory(BEHIND_NLB)
    spoofed = build_v2(("198.51.100.1", 40000)) + b"SSH-2.0-OpenSSH_9.2\r\n"
    assert closed_without_a_version(served, spoofed, source="127.0.0.2")
    line = json.loads(wait_for_log(served, "refused 127.0.0.2: not a trusted PROXY protocol peer"))
    assert (line["event"], line["addr"]) == ("refused", "127.0.0.2")

    assert closed_without_a_version(served, b"PROXY TCP4 999.0.0.1 10.0.0.1 1 22\r\nSSH-2.0-x\r\n")
    line = json.loads(wait_for_log(served, "PROXY header from 127.0.0.1 refused: "))
    assert line["level"] == "WARNING" and "999.0.0.1" in line["message"]
    assert closed_without_a_version(served, b"SSH-2.0-OpenSSH_9.2\r\n")  # no header at all
    assert closed_without_a_version(served, build_v2(None, local=True))  # health check
    assert "banned" not in served.log_text()

    upload_via_balancer(served, build_v1((CLIENT, 1234), ("10.0.0.1", 22)), "after.pdf")
