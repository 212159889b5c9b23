"""The real SSH, SFTP and SCP handlers on a socketpair, over MemoryStorage, for fuzzing.

One `FuzzGateway` per process: a `Gateway` (the production wiring, through its own
`_handshake`) serves one end of a socketpair; a paramiko client on the other end logs
in once as `alice`. Each input gets a fresh channel; after the channel closes and the
server's handler thread ends, `check_invariants` raises `Finding` when:

- the gateway or paramiko logged at ERROR (a traceback, or the SFTP error mapper's
  'unexpected error in an SFTP request'), or a thread died with an exception;
- a key (object or multipart upload) lies outside alice's home;
- a multipart upload is still open without a catalog row that keeps it `interrupted`
  (resumable, by design); anything else is an orphan that costs money in S3.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko

from sftp_gateway.app import Gateway, build_catalog
from sftp_gateway.auth import DEFAULT_PERMISSIONS, parse_public_key
from sftp_gateway.catalog.repository import INTERRUPTED
from sftp_gateway.config import Settings, settings_from_dict
from sftp_gateway.storage.memory import MemoryStorage
from tests.helpers import make_user_key

USER = "alice"
HOME_PREFIX = f"incoming/{USER}/"
REPLY_TIMEOUT = 20.0
THREAD_END_TIMEOUT = 20.0
WATCHED_LOGGERS = ("sftp_gateway", "paramiko")
CLIENT_LOG_CHANNEL = "fuzzclient"


class Finding(AssertionError):
    """An invariant broke: atheris reports it as a crash, with this message."""


class ErrorLog(logging.Handler):
    """Collects ERROR records of the server's loggers and uncaught thread exceptions."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.findings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(WATCHED_LOGGERS):
            text = f"{record.name}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.findings.append(text)

    def thread_died(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        self.findings.append(f"thread {name} died: {args.exc_type.__name__}: {args.exc_value}")

    def take(self) -> list[str]:
        found, self.findings = self.findings, []
        return found


def _settings(workdir: Path) -> Settings:
    return settings_from_dict(
        {
            "server": {"listen": "127.0.0.1:0", "host_keys_dir": str(workdir / "hostkeys")},
            "storage": {"bucket": "fuzz", "prefix": "incoming", "part_size": "5MiB"},
            # A file: make_engine('sqlite://') gives every connection its own empty DB.
            "catalog": {"url": f"sqlite:///{workdir / 'catalog.db'}"},
            "uploads": {"max_file_size": "64MiB", "reorder_memory": "1MiB"},
        },
        environ={},
    )


class FuzzGateway:
    """The production handlers, one authenticated connection, fresh channels per input."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sftp-fuzz-"))
        self.settings = _settings(self.workdir)
        self.storage = MemoryStorage("fuzz")  # S3's 5 MiB minimum part, as the gateway's
        self.catalog = build_catalog(self.settings)
        key_path = make_user_key(self.workdir / "userkeys")
        public = parse_public_key(key_path.with_suffix(".pub").read_text())
        self.catalog.add_user(USER, public, home=USER, permissions=DEFAULT_PERMISSIONS)
        self.errors = ErrorLog()
        logging.getLogger().addHandler(self.errors)
        threading.excepthook = self.errors.thread_died
        self.gateway = Gateway(self.settings, storage=self.storage, catalog=self.catalog)
        # Through the real listener: accept, admission and handshake as in production.
        self.address = self.gateway.start()
        self.client = self._connect(paramiko.Ed25519Key.from_private_key_file(str(key_path)))

    def _connect(self, key: paramiko.PKey) -> paramiko.Transport:
        client = paramiko.Transport(socket.create_connection(self.address, timeout=30))
        client.set_log_channel(CLIENT_LOG_CHANNEL)
        client.start_client(timeout=30)
        client.auth_publickey(USER, key)
        return client

    def close(self) -> None:
        self.client.close()
        self.gateway.stop()
        logging.getLogger().removeHandler(self.errors)
        threading.excepthook = threading.__excepthook__

    # -- one input -----------------------------------------------------------------

    def open_channel(self) -> paramiko.Channel:
        if not self.client.is_active():
            raise Finding(f"the server closed the connection: {self.errors.take()}")
        channel = self.client.open_session(timeout=10)
        channel.settimeout(REPLY_TIMEOUT)
        return channel

    def end_channel(self, channel: paramiko.Channel) -> None:
        """Close our side and wait for the server's handler threads to finish."""
        channel.close()
        deadline = time.monotonic() + THREAD_END_TIMEOUT
        for thread in self._handler_threads():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise Finding(f"server thread {thread.name} still running after the channel closed")

    def _handler_threads(self) -> Iterator[threading.Thread]:
        for thread in threading.enumerate():
            if thread is threading.current_thread():
                continue
            if isinstance(thread, paramiko.SFTPServer) or thread.name == "scp":
                yield thread

    def check_invariants(self, context: str) -> None:
        problems = self.errors.take()
        problems += [f"key outside the home: {key}" for key in self._keys_outside_home()]
        problems += [f"orphan multipart upload: {orphan}" for orphan in self._orphan_uploads()]
        if problems:
            raise Finding(f"{context}:\n" + "\n".join(problems))

    def _keys_outside_home(self) -> list[str]:
        keys = self.storage.keys() + [k for k, _, _ in self.storage.list_multipart_uploads("")]
        return [key for key in keys if not key.startswith(HOME_PREFIX)]

    def _orphan_uploads(self) -> list[str]:
        """Open multipart uploads no catalog row keeps as interrupted (resumable)."""
        orphans = []
        for key, upload_id, _ in self.storage.list_multipart_uploads(""):
            rows = self.catalog.uploads_for_key(self.storage.bucket, key)
            if not any(r.s3_upload_id == upload_id and r.status == INTERRUPTED for r in rows):
                statuses = [(r.status, r.s3_upload_id == upload_id) for r in rows]
                orphans.append(f"{key} ({upload_id}); catalog rows: {statuses}")
        return orphans


# -- SFTP framing ----------------------------------------------------------------------


def frame(kind: int, payload: bytes) -> bytes:
    """One SFTP packet: uint32 length, byte type, payload."""
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def send_in_background(
    channel: paramiko.Channel, chunks: list[bytes], *, eof: bool = False
) -> threading.Thread:
    """Send while the caller reads replies, so neither side's window can fill up."""

    def send_all() -> None:
        try:
            for chunk in chunks:
                channel.sendall(chunk)
            if eof:
                channel.shutdown_write()
        except OSError:
            pass  # the server closed the channel; the reader sees it

    sender = threading.Thread(target=send_all, name="fuzz-sender", daemon=True)
    sender.start()
    return sender


def read_frames(channel: paramiko.Channel) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each reply until the channel closes or times out."""
    buffer = b""
    while True:
        while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
            size = struct.unpack(">I", buffer[:4])[0]
            packet, buffer = buffer[4 : 4 + size], buffer[4 + size :]
            if packet:
                yield packet[0], packet[1:]
        chunk = channel.recv(1 << 16)
        if not chunk:
            return
        buffer += chunk


_EXIT_HOOKS: list[object] = []  # ctypes callbacks must outlive their registration


def end_without_c_cleanup_on_exit() -> None:
    """libFuzzer ends a finished run with C's exit(): its static destructors and
    OpenSSL's cleanup then run while the gateway's threads still execute instrumented
    code or encrypt, which now and then crashes a clean run ("deadly signal"). Hooked
    last, this runs first among C's exit handlers and ends the process there, stdio
    flushed. Crashes and findings leave through _Exit, which skips the hook."""

    def end_here(_argument: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    hook = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(end_here)
    _EXIT_HOOKS.append(hook)
    # glibc exports atexit only as __cxa_atexit(function, argument, dso_handle).
    ctypes.CDLL(None).__cxa_atexit(hook, None, None)


def fuzz_main(run: Callable[[FuzzGateway, bytes], object]) -> None:
    """atheris over one target's `run`, with one gateway for the whole run, built on the
    first input (each input then opens its own channel on it)."""
    import atheris

    gateways: list[FuzzGateway] = []

    def test_one_input(data: bytes) -> None:
        if not gateways:
            gateways.append(FuzzGateway())
        run(gateways[0], data)

    atheris.Setup(sys.argv, test_one_input)
    end_without_c_cleanup_on_exit()
    atheris.Fuzz()
