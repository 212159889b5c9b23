"""Every paramiko internal the gateway relies on is still there, with the same shape.

sftp_gateway/sshcompat.py lists its touch points in its docstring; sftp/protocol.py
extends SFTPServer. A paramiko release that moves one fails here with a message naming
it, before anything subtler breaks. pyproject.toml pins paramiko to the range where this
file passed: run it before moving the range.
"""

from __future__ import annotations

import inspect
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import paramiko
import paramiko.auth_handler
import paramiko.packet
import paramiko.util
import pytest
from paramiko.buffered_pipe import BufferedPipe
from paramiko.packet import Packetizer
from paramiko.sftp import BaseSFTP
from paramiko.sftp_server import SFTPServer

from sftp_gateway import sshcompat
from sftp_gateway.sftp.pipe import ChunkBuffer
from sftp_gateway.sshcompat import BoundedPacketizer, ConnectionRefused, TransportLimits

SIGNATURES: list[tuple[Any, str, list[str]]] = [
    # sshcompat.BoundedPacketizer / HardenedTransport
    (Packetizer, "read_all", ["self", "n", "check_rekey"]),
    (Packetizer, "readline", ["self", "timeout"]),
    (Packetizer, "_read_timeout", ["self", "timeout"]),
    (Packetizer, "read_message", ["self"]),
    (Packetizer, "start_handshake", ["self", "timeout"]),
    (Packetizer, "handshake_timed_out", ["self"]),
    (Packetizer, "complete_handshake", ["self"]),
    (paramiko.Transport, "_check_banner", ["self"]),
    (paramiko.Transport, "is_authenticated", ["self"]),
    # sshcompat: channel data checked against the window, then fed as paramiko does
    (paramiko.Channel, "_feed", ["self", "m"]),
    (paramiko.Channel, "_feed_extended", ["self", "m"]),
    # sshcompat.install_fast_hmac
    (paramiko.packet, "compute_hmac", ["key", "message", "digest_class"]),
    (paramiko.util, "constant_time_bytes_eq", ["a", "b"]),
    # sftp/protocol.py GatewaySFTPServer
    (SFTPServer, "_process", ["self", "t", "request_number", "msg"]),
    (SFTPServer, "_send_server_version", ["self"]),
    (SFTPServer, "_send_status", ["self", "request_number", "code", "desc"]),
    (SFTPServer, "_send_packet", ["self", "t", "packet"]),
    (SFTPServer, "_read_packet", ["self"]),
    (SFTPServer, "start_subsystem", ["self", "name", "transport", "channel"]),
    (SFTPServer, "finish_subsystem", ["self"]),
]


def _name(owner: Any) -> str:
    return str(getattr(owner, "__qualname__", None) or owner.__name__)


@pytest.mark.parametrize(
    ("owner", "name", "expected"),
    SIGNATURES,
    ids=[f"{_name(owner)}.{name}" for owner, name, _ in SIGNATURES],
)
def test_paramiko_still_has_the_function_the_gateway_overrides_or_calls(
    owner: Any, name: str, expected: list[str]
) -> None:
    where = f"paramiko {_name(owner)}.{name}"
    function = getattr(owner, name, None)
    assert callable(function), f"{where} is gone: update sftp_gateway/sshcompat.py"
    parameters = list(inspect.signature(function).parameters)
    assert parameters == expected, f"{where} now takes {parameters}, the gateway passes {expected}"


def test_channel_data_handlers_are_where_the_hardened_transport_replaces_them() -> None:
    table = paramiko.Transport._channel_handler_table
    assert table[paramiko.common.MSG_CHANNEL_DATA] is paramiko.Channel._feed
    assert table[paramiko.common.MSG_CHANNEL_EXTENDED_DATA] is paramiko.Channel._feed_extended
    hardened = sshcompat.HardenedTransport._channel_handler_table
    assert set(hardened) == set(table)


def test_transport_still_takes_the_arguments_server_transport_passes() -> None:
    parameters = inspect.signature(paramiko.Transport.__init__).parameters
    for name in (
        "packetizer_class",
        "disabled_algorithms",
        "strict_kex",
        "default_window_size",
        "default_max_packet_size",
    ):
        assert name in parameters, f"paramiko Transport(...) lost its {name} argument"


@pytest.mark.parametrize("category", sshcompat.ALGORITHM_CATEGORIES)
def test_default_algorithm_lists_are_where_crypto_policy_reads_them(category: str) -> None:
    value = getattr(paramiko.Transport, f"_preferred_{category}", None)
    assert isinstance(value, tuple), f"paramiko Transport._preferred_{category} moved"
    assert value and all(isinstance(name, str) for name in value)


@pytest.mark.parametrize(
    ("function", "calls"),
    [
        (Packetizer.read_message, ["self.read_all(", "compute_hmac(", "constant_time_bytes_eq("]),
        (Packetizer.read_all, ["self.handshake_timed_out()"]),
        (paramiko.Transport.run, ["packetizer.start_handshake(", "complete_handshake()"]),
        (paramiko.Transport._check_banner, ["self.packetizer.readline("]),
        (SFTPServer.__init__, ["self.file_table", "self.folder_table"]),
        (BaseSFTP.__init__, ["self.sock"]),
        (BufferedPipe.__init__, ["self._lock", "self._buffer = array.array("]),
        # sshcompat.channel_activity, open_channel_count, server_object
        (paramiko.Channel.__init__, ["self.in_window_sofar", "self.out_window_size"]),
        (paramiko.Channel._set_window, ["self.in_window_size = window_size"]),
        (paramiko.Channel.__init__, ["self.in_stderr_buffer = BufferedPipe()"]),
        (paramiko.Channel._feed, ["isinstance(m, bytes)", "self.in_buffer.feed("]),
        (paramiko.Transport.run, ["self._channel_handler_table[ptype](chan, m)"]),
        (paramiko.Transport.__init__, ["self._channels = ChannelMap()"]),
        (paramiko.Transport.start_server, ["self.server_object = server"]),
        # sshcompat.was_authenticated
        (paramiko.auth_handler.AuthHandler.__init__, ["self.authenticated = False"]),
        (paramiko.auth_handler.AuthHandler._send_auth_result, ["self.authenticated = True"]),
        # sshcompat.read_sftp_packet and request_buffer
        (BaseSFTP._read_packet, ["self._read_all("]),
        (paramiko.Message.__init__, ["self.packet = BytesIO("]),
    ],
    ids=lambda value: getattr(value, "__qualname__", "calls"),
)
def test_paramiko_code_still_goes_through_the_points_the_gateway_replaces(
    function: Callable[..., Any], calls: list[str]
) -> None:
    source = inspect.getsource(function)
    missing = [call for call in calls if call not in source]
    assert not missing, f"paramiko {function.__qualname__} no longer uses {missing}"


def test_packetizer_keeps_bytes_read_past_the_version_line_in_its_remainder() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert isinstance(Packetizer(left)._Packetizer__remainder, bytes)  # type: ignore[attr-defined]


# -- the replacements, on paramiko's real code paths -----------------------------------


@pytest.fixture
def wire() -> Iterator[tuple[BoundedPacketizer, socket.socket]]:
    """A BoundedPacketizer reading what the test writes to the other end."""
    server, client = socket.socketpair()
    server.settimeout(0.1)  # as Transport sets it
    limits = TransportLimits(max_packet=100_000, pre_auth_packet=10_000, identification=8192)
    with server, client:
        yield BoundedPacketizer(server, limits=limits), client


def test_a_2_gib_length_is_refused_before_the_body_is_read(
    wire: tuple[BoundedPacketizer, socket.socket],
) -> None:
    packetizer, client = wire
    client.sendall(struct.pack(">I", 0x7FFFFFFC) + bytes(4))
    with pytest.raises(ConnectionRefused, match="exceeds the 10000 byte limit"):
        packetizer.read_message()


def test_a_packet_within_the_limit_is_read(wire: tuple[BoundedPacketizer, socket.socket]) -> None:
    packetizer, client = wire
    payload = bytes([94]) + bytes(5000)  # MSG_CHANNEL_DATA-sized junk
    padding = 8 - (len(payload) + 5) % 8 + 8
    client.sendall(
        struct.pack(">IB", len(payload) + padding + 1, padding) + payload + bytes(padding)
    )
    kind, _ = packetizer.read_message()
    assert kind == 94


def test_a_version_line_longer_than_8_kib_is_refused(
    wire: tuple[BoundedPacketizer, socket.socket],
) -> None:
    packetizer, client = wire
    client.sendall(b"SSH-2.0-" + b"A" * 9000)
    with pytest.raises(ConnectionRefused, match="version line longer than 8 KiB"):
        packetizer.readline(1)


def test_the_bytes_after_the_version_line_reach_the_packet_reader(
    wire: tuple[BoundedPacketizer, socket.socket],
) -> None:
    packetizer, client = wire
    client.sendall(b"a comment line\r\nSSH-2.0-client\r\nKEXINIT...")
    assert packetizer.readline(1) == "a comment line"
    assert packetizer.readline(1) == "SSH-2.0-client"
    assert packetizer.read_all(10) == b"KEXINIT..."


def test_the_handshake_deadline_replaces_paramikos_timer_thread(
    wire: tuple[BoundedPacketizer, socket.socket],
) -> None:
    packetizer, _ = wire
    packetizer.start_handshake(0)
    assert packetizer._Packetizer__timer is None  # type: ignore[attr-defined]
    assert packetizer.handshake_timed_out()
    packetizer.complete_handshake()
    assert not packetizer.handshake_timed_out()


def test_the_chunk_buffer_replaces_a_real_channel_pipe_keeping_its_bytes() -> None:
    channel = paramiko.Channel(1)
    assert isinstance(channel.in_buffer, BufferedPipe)
    channel.in_buffer.feed(b"before the swap ")
    sshcompat.use_receive_buffer(channel, ChunkBuffer)
    channel.in_buffer.feed(b"and after")
    assert isinstance(channel.in_buffer._buffer, ChunkBuffer)
    assert channel.in_buffer.read(100) == b"before the swap and after"


def test_the_fast_hmac_is_what_the_packet_layer_looks_up() -> None:
    sshcompat.install_fast_hmac()
    assert paramiko.packet.compute_hmac is sshcompat.compute_hmac
    assert paramiko.util.constant_time_bytes_eq(b"mac", b"mac")


def test_channel_activity_reads_a_real_channels_flow_counters() -> None:
    channel = paramiko.Channel(1)
    quiet = sshcompat.channel_activity(channel)
    assert quiet.unread == 0
    channel.in_buffer.feed(b"12345")
    channel.in_window_sofar += 5  # as Channel._feed counts received bytes
    moved = sshcompat.channel_activity(channel)
    assert moved.unread == 5
    assert moved.counters != quiet.counters


def test_open_channel_count_and_server_object_of_a_real_transport() -> None:
    left, right = socket.socketpair()
    with left, right:
        transport = paramiko.Transport(left)
        assert sshcompat.open_channel_count(transport) == 0
        assert sshcompat.server_object(transport) is None  # before start_server
        assert sshcompat.was_authenticated(transport) is False


def test_read_sftp_packet_reads_a_real_sftp_packet_and_refuses_a_huge_one() -> None:
    class Refused(Exception):
        pass

    left, right = socket.socketpair()
    with left, right:
        sftp = BaseSFTP()
        sftp.sock = left
        right.sendall(struct.pack(">IB", 5, 1) + b"\x00\x00\x00\x03")
        assert sshcompat.read_sftp_packet(sftp, 1000, Refused) == (1, b"\x00\x00\x00\x03")
        right.sendall(struct.pack(">I", 0x7FFFFFFF))
        with pytest.raises(Refused, match=str(0x7FFFFFFF)):
            sshcompat.read_sftp_packet(sftp, 1000, lambda size: Refused(str(size)))


def test_request_buffer_is_the_messages_bytes() -> None:
    message = paramiko.Message(b"\x00\x00\x00\x07")
    assert sshcompat.request_buffer(message).getvalue() == b"\x00\x00\x00\x07"
