"""The server ACKs a client's handshake packets at once, so Nagle cannot stall a login.

OpenSSH's sftp and scp leave Nagle on: a small packet sent right after another waits for
the first one's ACK, which Linux delays by up to 40 ms when the server has nothing to
answer. Linux tells whether a socket is in that delayed-ACK ("pingpong") mode through
getsockopt(TCP_QUICKACK); these tests put the server's socket in it and check that a
packet read before authentication takes it out again, and one read after does not.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sftp_gateway.sshcompat import QUICKACK, BoundedPacketizer, TransportLimits

pytestmark = pytest.mark.skipif(QUICKACK is None, reason="TCP_QUICKACK is Linux only")


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        server.settimeout(5)
        yield client, server


def delays_acks(sock: socket.socket) -> bool:
    assert QUICKACK is not None
    return sock.getsockopt(socket.IPPROTO_TCP, QUICKACK) == 0


def packetizer_in_pingpong_mode(server: socket.socket) -> BoundedPacketizer:
    assert QUICKACK is not None
    packetizer = BoundedPacketizer(server, limits=TransportLimits.for_channel_packets(32768))
    server.setsockopt(socket.IPPROTO_TCP, QUICKACK, 0)
    assert delays_acks(server)
    return packetizer


def test_a_packet_read_before_authentication_is_acked_at_once(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tcp_pair
    packetizer = packetizer_in_pingpong_mode(server)
    client.sendall(b"k" * 64)

    assert packetizer.read_all(64) == b"k" * 64

    assert not delays_acks(server)


def test_after_authentication_the_kernel_decides_again(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tcp_pair
    packetizer = packetizer_in_pingpong_mode(server)
    packetizer.is_authenticated = lambda: True
    client.sendall(b"d" * 64)

    assert packetizer.read_all(64) == b"d" * 64

    assert delays_acks(server)
