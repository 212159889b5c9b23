"""paramiko's SFTPServer with what it lacks for an object store behind it.

- Every request's errors go through one mapper, with the user's message as status text.
- CLOSE of an upload commits it and reports a failure to the client (paramiko's own
  CLOSE always answers OK); a session that ends with uploads open abandons them.
- OpenSSH extensions: posix-rename, statvfs, fsync, and limits, which tells clients
  they may send 255 KiB writes instead of 32 KiB ones.
- Limits, as OpenSSH's sftp-server has them: a packet longer than MAX_PACKET closes
  the channel before its body is read; a READ is answered with at most MAX_IO bytes;
  a WRITE of more than MAX_IO bytes is refused (and its file is never published);
  at most `server.max_handles_per_session` handles are open; request types the
  server does not know, names that are not UTF-8 and requests that end before their
  fields get a status and one WARNING line, never a traceback.

paramiko internals: this subclass overrides SFTPServer's `_process`,
`_send_server_version`, `_read_packet` and `_send_packet`, calls `_send_status` and
`_response`, and looks handles up in `file_table`/`folder_table`; everything else
(reading a packet through `_read_all`, `Message.packet`, the handle count, the
channel's receive buffer) goes through sshcompat.py, which lists and tests each one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSETSTAT,
    CMD_FSTAT,
    CMD_INIT,
    CMD_LSTAT,
    CMD_MKDIR,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_READLINK,
    CMD_REALPATH,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_RMDIR,
    CMD_SETSTAT,
    CMD_STAT,
    CMD_SYMLINK,
    CMD_VERSION,
    CMD_WRITE,
    SFTP_BAD_MESSAGE,
    SFTP_EOF,
    SFTP_FAILURE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTPError,
)
from paramiko.sftp import CMD_NAMES as CMD_NAMES

from sftp_gateway import logs, sshcompat
from sftp_gateway.idle import ConnectionActivity
from sftp_gateway.sftp.errors import status_for
from sftp_gateway.sftp.handler import GatewaySFTPInterface, UploadHandle
from sftp_gateway.sftp.pipe import ChunkBuffer

log = logging.getLogger(__name__)

SFTP_VERSION = 3
MAX_MESSAGE = 256 * 1024
MAX_IO = MAX_MESSAGE - 1024  # what OpenSSH's own server offers
# OpenSSH drops packets over 256 KiB. The margin lets a client that ignores
# limits@openssh.com and writes 256 KiB blocks get a status that says why, not a drop.
MAX_PACKET = MAX_MESSAGE + 16 * 1024
MAX_READS_PAST_END = 16  # paramiko pads a short request with zeros; this many, no more
REQUEST_TYPES = frozenset(
    {
        *(CMD_OPEN, CMD_CLOSE, CMD_READ, CMD_WRITE, CMD_LSTAT, CMD_FSTAT, CMD_SETSTAT),
        *(CMD_FSETSTAT, CMD_OPENDIR, CMD_READDIR, CMD_REMOVE, CMD_MKDIR, CMD_RMDIR),
        *(CMD_REALPATH, CMD_STAT, CMD_RENAME, CMD_READLINK, CMD_SYMLINK, CMD_EXTENDED),
    }
)
EXTENSIONS = (
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fsync@openssh.com", "1"),
    ("limits@openssh.com", "1"),
)


class Refused(Exception):
    """A request refused by a protocol limit: (SFTP status, text for the client)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class OversizePacket(SFTPError):  # type: ignore[misc]
    """A packet longer than MAX_PACKET: its body is never read, the channel closes."""


class BoundedMessage(Message):  # type: ignore[misc]
    """A request that may be read past its end only a few times. paramiko pads a short
    request with zeros, so a crafted attribute count (OPEN, MKDIR, SETSTAT) would make
    it loop up to 2**32 times on an empty buffer; this stops it after a few reads."""

    def __init__(self, packet: io.BytesIO) -> None:
        super().__init__()
        self.packet = packet
        with packet.getbuffer() as view:
            self._size = view.nbytes
        self._reads_past_end = 0

    def get_bytes(self, n: int) -> bytes:
        if self.packet.tell() + n > self._size:
            self._reads_past_end += 1
            if self._reads_past_end > MAX_READS_PAST_END:
                raise Refused(SFTP_BAD_MESSAGE, "malformed request: it ends before its fields")
        return bytes(super().get_bytes(n))


class GatewaySFTPServer(paramiko.SFTPServer):  # type: ignore[misc]
    server: GatewaySFTPInterface

    def start_subsystem(self, name: str, transport: paramiko.Transport, channel) -> None:  # type: ignore[no-untyped-def]
        sshcompat.use_receive_buffer(channel, ChunkBuffer)  # paramiko's: O(buffered) a read
        try:
            super().start_subsystem(name, transport, channel)
        except (SFTPError, EOFError, OSError) as exc:  # before INIT: paramiko would log
            log.info("SFTP session of %s ended before it started: %s", self._who(), exc)

    def _who(self) -> str:
        """`alice from 127.0.0.1`, as every refusal line names the client."""
        server = self.get_server()
        principal = getattr(server, "principal", None)
        name = principal.name if principal is not None else "-"
        return f"{name} from {getattr(server, 'client_ip', None)}"

    def _activity(self) -> ConnectionActivity | None:
        activity = getattr(self.get_server(), "activity", None)
        return activity if isinstance(activity, ConnectionActivity) else None

    def _read_packet(self) -> tuple[int, bytes]:
        """paramiko's, with the length checked before the body is read or allocated.
        Once the channel is closed (the client went away), the requests still buffered
        are not served: nobody would read their replies (EOFError ends the session)."""
        if self.sock.closed:
            raise EOFError("the channel is closed")
        return sshcompat.read_sftp_packet(self, MAX_PACKET, self._oversize)

    def _oversize(self, size: int) -> OversizePacket:
        text = f"packet of {size} bytes exceeds the {MAX_PACKET}-byte limit"
        extra = self._refusal_fields("packet_size")
        who = self._who()
        log.warning("SFTP packet refused for %s: %s; channel closed", who, text, extra=extra)
        return OversizePacket(text)

    def _refusal_fields(self, reason: str) -> dict[str, object]:
        """The connection's log context (conn, user, addr) for a `refused` event line."""
        return {**self._connection_context(), **logs.fields("refused", reason=reason)}

    def _connection_context(self) -> dict[str, object]:
        """conn, user and addr of this session's connection, for its log lines."""
        conn_log = getattr(self.get_server(), "log", None)
        return conn_log.context if isinstance(conn_log, logs.ConnectionLog) else {}

    def _send_packet(self, t: int, packet: Message) -> None:
        """The reply is ready: from here on, a slow client is the client's idle time."""
        activity = self._activity()
        if activity is not None:
            activity.end_work(self)
        super()._send_packet(t, packet)

    def _send_server_version(self) -> int:
        kind, data = self._read_packet()
        if kind != CMD_INIT:
            raise SFTPError("Incompatible sftp protocol")
        version = struct.unpack(">I", data[:4])[0]
        msg = Message()
        msg.add_int(SFTP_VERSION)
        for name, value in EXTENSIONS:
            msg.add_string(name)
            msg.add_string(value)
        self._send_packet(CMD_VERSION, msg)
        return int(version)

    def _process(self, t: int, request_number: int, msg: Message) -> None:
        activity = self._activity()
        if activity is not None:
            activity.start_work(self)  # until the reply is sent (S3 may be slow)
        try:
            self._dispatch(t, request_number, BoundedMessage(sshcompat.request_buffer(msg)))
        except Refused as refusal:
            self._refuse(request_number, t, refusal.code, str(refusal))
        except UnicodeDecodeError:  # paramiko decodes every name strictly as UTF-8
            self._refuse(request_number, t, SFTP_FAILURE, "file names must be valid UTF-8")
        except Exception as exc:
            if self._client_gone(exc):  # mid-request (Ctrl-C): nobody to answer
                log.info("SFTP session of %s ended during a request", self._who())
                raise EOFError("the channel is closed") from None
            code, text = status_for(exc, self._connection_context())
            self._send_status(request_number, code, text)
        finally:
            if activity is not None:
                activity.end_work(self)

    def _client_gone(self, exc: Exception) -> bool:
        """The request failed because the client went away: its channel is closed, or
        sending the reply met a dead connection (paramiko raises EOFError there)."""
        transport = self.sock.get_transport()
        alive = transport is not None and transport.is_active()
        return bool(self.sock.closed) or not alive or isinstance(exc, EOFError)

    def _refuse(self, request_number: int, t: int, code: int, text: str) -> None:
        """One WARNING line naming user and address, and the status the client sees."""
        kind = CMD_NAMES.get(t, str(t)).upper()
        extra = self._refusal_fields(f"sftp_{kind.lower()}")
        log.warning("SFTP %s refused for %s: %s", kind, self._who(), text, extra=extra)
        self._send_status(request_number, code, text)

    def _dispatch(self, t: int, request_number: int, msg: Message) -> None:
        if t not in REQUEST_TYPES:
            raise Refused(SFTP_OP_UNSUPPORTED, f"unsupported request type {t}")
        if t == CMD_CLOSE:
            self._close(request_number, msg)
        elif t == CMD_EXTENDED:
            self._extended(request_number, msg)
        elif t == CMD_READ:
            self._read(request_number, msg)
        elif t == CMD_WRITE:
            self._write(request_number, msg)
        else:
            if t in (CMD_OPEN, CMD_OPENDIR):
                self._check_handle_limit()
            super()._process(t, request_number, msg)

    def _check_handle_limit(self) -> None:
        """OpenSSH's sftp-server caps handles too: each holds buffers or a listing."""
        limit = self.server.fs.settings.server.max_handles_per_session
        if sshcompat.open_handle_count(self) >= limit:
            raise Refused(SFTP_FAILURE, f"too many open files (limit {limit})")

    def _read(self, request_number: int, msg: Message) -> None:
        """READ, with the length clamped to MAX_IO as OpenSSH does (a short read is
        valid SFTP; the client asks again for the rest)."""
        handle_id, offset, length = msg.get_binary(), msg.get_int64(), msg.get_int()
        handle = self.file_table.get(handle_id)
        if handle is None:
            self._send_status(request_number, SFTP_BAD_MESSAGE, "Invalid handle")
            return
        data = handle.read(offset, min(length, MAX_IO))
        if not isinstance(data, bytes | str):
            self._send_status(request_number, data)
        elif not data:
            self._send_status(request_number, SFTP_EOF)
        else:
            self._response(request_number, CMD_DATA, data)

    def _write(self, request_number: int, msg: Message) -> None:
        """WRITE; more than MAX_IO bytes is refused and writes nothing, and the file
        (which now has a hole) is never published."""
        handle_id, offset, data = msg.get_binary(), msg.get_int64(), msg.get_binary()
        handle = self.file_table.get(handle_id)
        if handle is None:
            self._send_status(request_number, SFTP_BAD_MESSAGE, "Invalid handle")
            return
        if len(data) > MAX_IO:
            text = f"write of {len(data)} bytes exceeds the {MAX_IO}-byte limit"
            if isinstance(handle, UploadHandle):
                handle.refuse(text)
            raise Refused(SFTP_FAILURE, text)
        self._send_status(request_number, handle.write(offset, data))

    def _close(self, request_number: int, msg: Message) -> None:
        handle_id = msg.get_binary()
        if handle_id in self.folder_table:
            del self.folder_table[handle_id]
        elif handle_id in self.file_table:
            handle = self.file_table.pop(handle_id)
            if isinstance(handle, UploadHandle):
                handle.commit()
            else:
                handle.close()
        else:
            self._send_status(request_number, SFTP_BAD_MESSAGE, "Invalid handle")
            return
        self._send_status(request_number, SFTP_OK)

    def _extended(self, request_number: int, msg: Message) -> None:
        tag = msg.get_text()
        if tag == "posix-rename@openssh.com":
            old, new = msg.get_text(), msg.get_text()
            self._send_status(request_number, self.server.posix_rename(old, new))
        elif tag == "limits@openssh.com":
            self._reply(request_number, MAX_MESSAGE, MAX_IO, MAX_IO, 1024)
        elif tag == "statvfs@openssh.com":
            msg.get_text()
            self._reply(request_number, *self._statvfs())
        elif tag == "fsync@openssh.com":
            # Parts are written to S3 as they fill; the file is durable only at CLOSE,
            # which is when we report errors. There is nothing to flush earlier.
            msg.get_binary()
            self._send_status(request_number, SFTP_OK)
        else:
            self._send_status(request_number, SFTP_OP_UNSUPPORTED, f"{tag} is not supported")

    def _statvfs(self) -> tuple[int, ...]:
        """A synthetic filesystem: the free space a client sees is the per-file limit."""
        block = 4096
        limit = self.server.fs.settings.uploads.max_file_size // block
        total = max(limit * 1024, 1)
        return (block, block, total, limit, limit, 1 << 20, 1 << 20, 1 << 20, 0, 0, 255)

    def _reply(self, request_number: int, *values: int) -> None:
        msg = Message()
        msg.add_int(request_number)
        for value in values:
            msg.add_int64(value)
        self._send_packet(CMD_EXTENDED_REPLY, msg)

    def finish_subsystem(self) -> None:
        """The channel is gone: the session closes out every upload it still owns, open
        (abandoned: interrupted, resumable) or CLOSEd under a temporary name and never
        renamed (published under its final name)."""
        uploads = getattr(self.server, "uploads", None)
        if uploads is not None:
            uploads.close_out()
        # OpenSSH's scp (SFTP mode) reports failure when the channel ends without one.
        with contextlib.suppress(Exception):
            if not self.sock.closed:
                self.sock.send_exit_status(0)
        super().finish_subsystem()
