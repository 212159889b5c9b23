"""paramiko's SFTPServer with what it lacks for an object store behind it.

- Every request's errors go through one mapper, with the user's message as status text.
- CLOSE of an upload commits it and reports a failure to the client (paramiko's own
  CLOSE always answers OK); a session that ends with uploads open abandons them.
- OpenSSH extensions: posix-rename, statvfs, fsync, and limits, which tells clients
  they may send 255 KiB writes instead of 32 KiB ones.
"""

from __future__ import annotations

import contextlib
import logging
import struct

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_INIT,
    CMD_VERSION,
    SFTP_BAD_MESSAGE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTPError,
)

from sftp_gateway.sftp.errors import status_for
from sftp_gateway.sftp.handler import GatewaySFTPInterface, UploadHandle
from sftp_gateway.sftp.pipe import use_chunk_buffer

log = logging.getLogger(__name__)

SFTP_VERSION = 3
MAX_MESSAGE = 256 * 1024
MAX_IO = MAX_MESSAGE - 1024  # what OpenSSH's own server offers
EXTENSIONS = (
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fsync@openssh.com", "1"),
    ("limits@openssh.com", "1"),
)


class GatewaySFTPServer(paramiko.SFTPServer):
    server: GatewaySFTPInterface

    def start_subsystem(self, name: str, transport: paramiko.Transport, channel) -> None:  # type: ignore[no-untyped-def]
        use_chunk_buffer(channel)  # paramiko's buffer costs O(buffered) per read
        super().start_subsystem(name, transport, channel)

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
        try:
            if t == CMD_CLOSE:
                self._close(request_number, msg)
            elif t == CMD_EXTENDED:
                self._extended(request_number, msg)
            else:
                super()._process(t, request_number, msg)
        except Exception as exc:
            code, text = status_for(exc)
            self._send_status(request_number, code, text)

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
        """The channel is gone: uploads still open were not closed by the client."""
        for handle in list(self.file_table.values()):
            if isinstance(handle, UploadHandle):
                try:
                    handle.writer.abandon()
                except Exception:
                    log.exception("abandoning an upload failed")
        # OpenSSH's scp (SFTP mode) reports failure when the channel ends without one.
        with contextlib.suppress(Exception):
            if not self.sock.closed:
                self.sock.send_exit_status(0)
        super().finish_subsystem()
