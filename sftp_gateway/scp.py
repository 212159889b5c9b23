"""Legacy SCP (`scp -O`): the sink (`scp -t`, uploads) and source (`scp -f`, downloads).

OpenSSH's old protocol runs over an exec channel. Each side sends control lines
(`C<mode> <size> <name>`, `D<mode> 0 <name>`, `E`, `T<mtime> 0 <atime> 0`) and the
other answers with one byte: `\\0` ok, `\\1` + message + `\\n` a warning (this file is
skipped, the session goes on), `\\2` + message a fatal error. This module only
translates: every byte of a file goes to the user's `UserFilesystem` and its upload
pipeline as it arrives, so SCP gets the same paths, limits, metadata and catalog as SFTP.

Every exec command other than `scp -t`/`scp -f` is refused with a message on stderr and
exit status 1 (rclone probes with `md5sum` and `echo`; there is no shell here).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import posixpath
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import paramiko

from sftp_gateway import logs
from sftp_gateway.errors import GatewayError, NotFound
from sftp_gateway.filesystem import Download, FileStat, UserFilesystem
from sftp_gateway.transfer import FileWriter, SessionUploads, check_declared_size

log = logging.getLogger(__name__)

OK = b"\x00"
WARNING = b"\x01"
FATAL = b"\x02"
CHUNK = 256 * 1024
MAX_LINE = 64 * 1024
MAX_SIZE_DIGITS = 20  # a C line's size: 2**64 has 20 digits
# A T line's times: SFTP v3 carries times as uint32 (to 2106-02-07), so a time it
# cannot show is refused here, before it reaches the catalog or any listing.
MAX_TIME = 2**32 - 1
MAX_TIME_DIGITS = 20  # leading zeros allowed, but not thousands of digits
# paramiko sends its reply to the exec request only after our handler returns; a
# refusal waits this long so that the reply precedes our exit status and close.
REPLY_GRACE_SECONDS = 0.05
FILE_MODE_TEXT = "0644"
DIR_MODE_TEXT = "0755"
CHANNEL_ERRORS = (OSError, EOFError, paramiko.SSHException)
GLOB_CHARS = set("*?[")


class ServerLike(Protocol):
    """What SCP needs from the SSH side (sftp_gateway.ssh.GatewayServer)."""

    def filesystem(self) -> UserFilesystem: ...


class ProtocolError(Exception):
    """The peer broke the protocol or went away: the session ends."""


class PeerGone(ProtocolError):
    """The channel closed early (the client died or gave up)."""


@dataclass
class ScpRequest:
    """A parsed `scp -t`/`scp -f` command line."""

    sink: bool
    paths: list[str]
    recursive: bool = False
    preserve: bool = False
    target_must_be_dir: bool = False


@dataclass
class Times:
    """A `T` line's times, applied to the next file or directory."""

    mtime: int
    atime: int


def parse_command(command: bytes) -> ScpRequest | None:
    """The SCP request in an exec command, or None if it is not one we serve."""
    try:
        argv = shlex.split(command.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not argv or posixpath.basename(argv[0]) != "scp":
        return None
    flags: set[str] = set()
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] != "-":
        option = args.pop(0)
        if option == "--":
            break
        if not set(option[1:]) <= set("tfrpdv"):
            return None
        flags.update(option[1:])
    if ("t" in flags) == ("f" in flags) or not args:
        return None
    sink = "t" in flags
    # The sink takes one target; a path with unquoted spaces arrives split: rejoin it.
    paths = [" ".join(args)] if sink else args
    return ScpRequest(
        sink=sink,
        paths=paths,
        recursive="r" in flags,
        preserve="p" in flags,
        target_must_be_dir="d" in flags,
    )


def handle_exec(server: ServerLike, channel: paramiko.Channel, command: bytes) -> bool:
    """GatewayServer's exec hook: serve SCP in its own thread, refuse anything else."""
    request = parse_command(command)
    if request is None:
        target: Callable[..., None] = _refuse
        args: tuple[object, ...] = (channel, command)
    else:
        target = _serve
        args = (server, channel, request)
    threading.Thread(target=target, args=args, name="scp", daemon=True).start()
    return True


def _refuse(channel: paramiko.Channel, command: bytes) -> None:
    """Say why on stderr, exit 1: this server runs no commands but scp."""
    time.sleep(REPLY_GRACE_SECONDS)
    name = command.decode("utf-8", "replace").split(" ", 1)[0][:80]
    shown = "".join(ch if ch.isprintable() else "?" for ch in name)  # no terminal escapes
    message = (
        f"sftp-gateway: command '{shown}' is not available; this server offers only SFTP and scp\n"
    )
    with contextlib.suppress(*CHANNEL_ERRORS):
        channel.send_stderr(message.encode("utf-8"))
        channel.send_exit_status(1)
    _close(channel)


def _serve(server: ServerLike, channel: paramiko.Channel, request: ScpRequest) -> None:
    """Run one SCP session to its end and report its exit status."""
    status = 1
    try:
        session = ScpSession(server.filesystem(), channel, request)
        status = session.run()
    except PeerGone:
        log.info("scp: the client closed the channel early")
    except ProtocolError as exc:
        log.info("scp: protocol error: %s", exc)
        _try_send(channel, FATAL + _line(f"scp: protocol error: {exc}"))
    except Exception:
        log.exception("scp session failed")
        _try_send(channel, FATAL + _line("scp: internal error on the server"))
    with contextlib.suppress(*CHANNEL_ERRORS):
        channel.send_exit_status(status)
    _close(channel)


def _close(channel: paramiko.Channel) -> None:
    """Close; the transport may already be gone (the client died), which is fine."""
    with contextlib.suppress(*CHANNEL_ERRORS):
        channel.close()


def _try_send(channel: paramiko.Channel, data: bytes) -> None:
    with contextlib.suppress(*CHANNEL_ERRORS):
        channel.sendall(data)


def _about(path: str, error: Exception) -> str:
    """`path: reason`, unless the reason already names the path."""
    text = str(error)
    return text if path.strip("/") in text else f"{path}: {text}"


def _line(message: str) -> bytes:
    """A one-line message for a `\\1`/`\\2` reply (newlines inside would end it early)."""
    return message.replace("\n", " ").encode("utf-8", "replace") + b"\n"


class ChannelReader:
    """Buffered reads of lines and exact byte counts from a channel."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel
        self._buffer = b""

    def _fill(self, limit: int = CHUNK) -> bytes:
        data: bytes = self._channel.recv(limit)
        if not data:
            raise PeerGone("channel closed")
        return data

    def byte(self) -> bytes:
        if not self._buffer:
            self._buffer = self._fill()
        value, self._buffer = self._buffer[:1], self._buffer[1:]
        return value

    def line(self) -> bytes:
        """One line without its newline; bounded, since a line is a few names long."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError("control line too long")
            self._buffer += self._fill()
        value, _, self._buffer = self._buffer.partition(b"\n")
        return value

    def chunks(self, size: int) -> ChunkIterator:
        return ChunkIterator(self, size)

    def take(self, limit: int) -> bytes:
        """Up to `limit` bytes: what is buffered first, then one channel read."""
        if self._buffer:
            value, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return value
        return self._fill(min(limit, CHUNK))


@dataclass
class ChunkIterator:
    """Exactly `size` bytes, in the chunks they arrive in; never the whole file at once."""

    reader: ChannelReader
    size: int
    received: int = field(default=0)

    def __iter__(self) -> ChunkIterator:
        return self

    def __next__(self) -> bytes:
        if self.received >= self.size:
            raise StopIteration
        data = self.reader.take(self.size - self.received)
        self.received += len(data)
        return data


class ScpSession:
    """One `scp -t` or `scp -f` run over one channel."""

    def __init__(self, fs: UserFilesystem, channel: paramiko.Channel, request: ScpRequest) -> None:
        self.fs = fs
        self.channel = channel
        self.request = request
        self.reader = ChannelReader(channel)
        self.errors = 0
        self.uploads = SessionUploads()  # this run's files open for writing

    def run(self) -> int:
        try:
            if self.request.sink:
                self.sink(self.request.paths[0])
            else:
                self.source(self.request.paths)
        finally:  # however the run ends, no file it opened stays open
            self.uploads.close_out("scp session ended before the whole file arrived")
        return 1 if self.errors else 0

    # -- replies -----------------------------------------------------------------------

    def ok(self) -> None:
        self.channel.sendall(OK)

    def warn(self, message: str) -> None:
        """A `\\1` reply: this item failed, the client goes on with the next."""
        self.errors += 1
        self.channel.sendall(WARNING + _line(f"scp: {message}"))

    def response(self) -> bool:
        """Read the peer's acknowledgement: True for ok, False for a warning."""
        code = self.reader.byte()
        if code == OK:
            return True
        if code in (WARNING, FATAL):
            message = self.reader.line().decode("utf-8", "replace")
            if code == FATAL:
                raise ProtocolError(f"client reported a fatal error: {message}")
            log.info("scp: client warning: %s", message)
            self.errors += 1
            return False
        raise ProtocolError(f"unexpected acknowledgement byte {code!r}")

    # -- sink: the client uploads ---------------------------------------------------------

    def sink(self, target: str) -> None:
        """Receive files and directories into `target`, until the client is done."""
        target_is_dir = self._is_dir(target)
        if self.request.target_must_be_dir and not target_is_dir:
            self.warn(f"{target}: Not a directory")
            return
        self.ok()
        directories: list[str] = []  # the D..E nesting, innermost last
        times: Times | None = None
        while True:
            try:
                line = self.reader.line()
            except PeerGone:
                if directories:
                    raise
                return  # a clean end: the source closes after its last file
            if not line:
                raise ProtocolError("empty control line")
            kind, rest = line[:1], line[1:].decode("utf-8", "replace")
            here = directories[-1] if directories else target
            here_is_dir = True if directories else target_is_dir
            if kind in (WARNING, FATAL):
                log.info("scp: client error: %s", rest)
                if kind == FATAL:
                    self.errors += 1
                    return
                continue
            if kind == b"T":
                times = _parse_times(rest)
                self.ok()
            elif kind == b"E":
                if not directories:
                    raise ProtocolError("E line outside a directory")
                directories.pop()
                self.ok()
            elif kind == b"D":
                entered = self._sink_directory(rest, here, here_is_dir, times)
                if entered is not None:
                    directories.append(entered)
                times = None
            elif kind == b"C":
                self._sink_file(rest, here, here_is_dir, times)
                times = None
            else:
                raise ProtocolError(f"unexpected control line {line[:40]!r}")

    def _sink_directory(
        self, rest: str, here: str, here_is_dir: bool, times: Times | None
    ) -> str | None:
        """A `D` line: make the directory (a marker object) and step into it."""
        if not self.request.recursive:
            self.warn("received directory without -r")
            return None
        _, _, name = _parse_entry(rest)
        path = posixpath.join(here, name) if here_is_dir else here
        try:
            if not self._is_dir(path):
                self.fs.mkdir(path)
            if times is not None and self.request.preserve:
                self._set_mtime(path, times.mtime)
        except GatewayError as exc:
            self.warn(_about(path, exc))
            return None
        self.ok()
        return path

    def _sink_file(self, rest: str, here: str, here_is_dir: bool, times: Times | None) -> None:
        """A `C` line: stream exactly `size` bytes into a new upload, then commit."""
        _, size, name = _parse_entry(rest)
        path = posixpath.join(here, name) if here_is_dir else here
        if not here_is_dir and here.endswith("/"):
            # `scp f host:new/` names a directory, as OpenSSH's sink reads it: never
            # store the file as `new` when there is no such directory.
            self.warn(self._not_a_directory(here))
            return
        try:
            self._check_announced_size(path, size)
            upload = self.fs.open_upload(path, expected_size=size, session=self.uploads)
        except GatewayError as exc:
            self.warn(_about(path, exc))  # the client skips the file's bytes
            return
        try:
            self.ok()
            failure = self._receive(upload, size)
            if self.response() is False and failure is None:
                failure = "the client could not read the whole file"
            if failure is None and times is not None and self.request.preserve:
                self.fs.set_mtime(path, times.mtime)
            if failure is None:
                upload.commit()
        except PeerGone:
            upload.abandon("scp connection lost before the whole file arrived")
            raise
        except GatewayError as exc:
            failure = str(exc)
        except BaseException:
            upload.abandon("scp session failed")
            raise
        if failure is not None:
            upload.abandon(failure)
            self.warn(f"{path}: {failure}")
        else:
            self.ok()

    def _not_a_directory(self, path: str) -> str:
        """Why a file cannot go into `path`: it is missing, or it is a file."""
        try:
            self.fs.stat(path)
        except NotFound:
            return f"{path}: No such directory"
        except GatewayError as exc:
            return _about(path, exc)
        return f"{path}: Not a directory"

    def _check_announced_size(self, path: str, size: int) -> None:
        """The C line names the size before any byte: refuse a file that may not be
        that big now, before anything exists in S3 or the catalog."""
        try:
            check_declared_size(size, self.fs.settings.uploads.max_file_size)
        except GatewayError as exc:
            log.warning(
                "refused scp upload of %s by %s from %s: %s (announced %d bytes)",
                path,
                self.fs.principal.name,
                self.fs.client.ip or "unknown",
                exc,
                size,
                extra=logs.fields(
                    "refused",
                    conn=self.fs.client.conn,
                    user=self.fs.principal.name,
                    addr=self.fs.client.ip,
                    reason="max_file_size",
                    bytes=size,
                ),
            )
            raise

    def _receive(self, upload: FileWriter, size: int) -> str | None:
        """Feed the bytes to the upload as they come; after a refusal, drain the rest
        so the protocol stays in step (as OpenSSH's sink does)."""
        failure: str | None = None
        offset = 0
        for chunk in self.reader.chunks(size):
            if failure is None:
                try:
                    upload.write(offset, chunk)
                except GatewayError as exc:
                    failure = str(exc)
            offset += len(chunk)
        return failure

    def _set_mtime(self, path: str, mtime: int) -> None:
        # A directory without a marker object has nowhere to keep its time.
        with contextlib.suppress(NotFound):
            self.fs.set_mtime(path, mtime)

    # -- source: the client downloads -------------------------------------------------------

    def source(self, paths: list[str]) -> None:
        """Send each path (recursively with -r), after the client's first `\\0`."""
        if not self.response():
            return
        for pattern in paths:
            try:
                matches = self._expand(pattern)
            except GatewayError as exc:
                self.warn(_about(pattern, exc))
                continue
            for path, entry in matches:
                self._send_entry(path, entry)

    def _expand(self, pattern: str) -> list[tuple[str, FileStat]]:
        """What a remote shell would glob (`scp host:'*.pdf' .`), in the last segment
        only; a name that exists as written is taken as it is."""
        try:
            return [(pattern, self.fs.stat(pattern))]
        except NotFound:
            if not GLOB_CHARS & set(posixpath.basename(pattern)):
                raise
        parent, name = posixpath.split(pattern)
        found = [
            (posixpath.join(parent, entry.name), entry)
            for entry in self.fs.list_dir(parent or ".")
            if fnmatch.fnmatchcase(entry.name, name)
        ]
        if not found:
            raise NotFound(f"no match for {pattern}")
        return sorted(found, key=lambda item: item[0])

    def _send_entry(self, path: str, entry: FileStat) -> None:
        if entry.is_dir:
            if not self.request.recursive:
                self.warn(f"{path}: not a regular file")
                return
            self._send_directory(path, entry)
        else:
            self._send_file(path, entry)

    def _send_times(self, mtime: int | None) -> bool:
        if not self.request.preserve:
            return True
        stamp = mtime if mtime is not None else int(time.time())
        self.channel.sendall(f"T{stamp} 0 {stamp} 0\n".encode())
        return self.response()

    def _send_directory(self, path: str, entry: FileStat) -> None:
        try:
            self.fs.require("list")
            children = list(self.fs.list_dir(path))
        except GatewayError as exc:
            self.warn(_about(path, exc))
            return
        if not self._send_times(entry.mtime):
            return
        name = _entry_name(path)
        self.channel.sendall(f"D{DIR_MODE_TEXT} 0 {name}\n".encode())
        if not self.response():
            return
        for child in children:
            self._send_entry(posixpath.join(path, child.name), child)
        self.channel.sendall(b"E\n")
        self.response()

    def _send_file(self, path: str, entry: FileStat) -> None:
        try:
            download = self.fs.open_download(path)
        except GatewayError as exc:
            self.warn(_about(path, exc))
            return
        try:
            if not self._send_times(entry.mtime):
                return
            line = f"C{FILE_MODE_TEXT} {download.size} {_entry_name(path)}\n"
            self.channel.sendall(line.encode())
            if not self.response():
                return
            error = self._send_bytes(download)
            if error is None:
                self.ok()
            else:
                self.warn(f"{path}: {error}")
            self.response()
        finally:
            download.close()

    def _send_bytes(self, download: Download) -> str | None:
        """Stream the object; if the store fails midway, pad to the announced size
        (the client counts bytes) and report the error instead of `\\0`."""
        offset = 0
        error: str | None = None
        while offset < download.size:
            want = min(CHUNK, download.size - offset)
            data = b""
            if error is None:
                try:
                    data = download.read(offset, want)
                    if not data:
                        error = "the object ended before its announced size"
                except GatewayError as exc:
                    error = str(exc)
            if error is not None:
                data = bytes(want)
            self.channel.sendall(data)
            offset += len(data)
        return error

    # -- helpers -------------------------------------------------------------------------

    def _is_dir(self, path: str) -> bool:
        try:
            return self.fs.stat(path).is_dir
        except GatewayError:
            return False


def _parse_times(rest: str) -> Times:
    """`T<mtime> <usec> <atime> <usec>`, each in ASCII digits, the times at most 2**32-1."""
    fields = rest.split()
    # ASCII digits only, and few of them: int() of thousands of digits is an error
    # (and "²".isdigit() is true), both would end the session as an internal error.
    if len(fields) != 4 or not all(
        f.isascii() and f.isdigit() and len(f) <= MAX_TIME_DIGITS for f in fields
    ):
        raise ProtocolError(f"bad times line: T{rest[:60]}")
    mtime, atime = int(fields[0]), int(fields[2])
    if mtime > MAX_TIME or atime > MAX_TIME:
        raise ProtocolError(
            f"bad times line: a time after 2106-02-07 ({MAX_TIME}) is not supported: T{rest[:60]}"
        )
    return Times(mtime=mtime, atime=atime)


def _parse_entry(rest: str) -> tuple[int, int, str]:
    """`<mode> <size> <name>` of a C or D line; the name must be one plain segment."""
    parts = rest.split(" ", 2)
    # ASCII digits only, and few of them: int() of thousands of digits is an error
    # (and "²".isdigit() is true), both would end the session as an internal error.
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
        raise ProtocolError(f"bad file line: {rest[:60]}")
    if len(parts[1]) > MAX_SIZE_DIGITS:
        raise ProtocolError(f"file size out of range in: {rest[:60]}")
    try:
        mode = int(parts[0], 8)
    except ValueError:
        raise ProtocolError(f"bad mode in: {rest[:60]}") from None
    name = parts[2]
    if not name or "/" in name or name in (".", ".."):
        raise ProtocolError(f"unexpected file name {name[:60]!r}")
    # paths.normalize reads `\` as `/`: `..\x.pdf` would climb out of the target.
    if "\\" in name:
        raise ProtocolError(
            f"unexpected file name {name[:60]!r}: a name may not contain a backslash"
        )
    return mode, int(parts[1]), name


def _entry_name(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) or "home"
