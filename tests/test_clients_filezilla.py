"""FileZilla: its real SFTP engine, `fzsftp`, driven the way the FileZilla GUI drives it.

fzsftp (PuTTY's psftp, patched) reads commands on stdin and writes events on stdout, one
per line, the first character being the event type ('0' + sftpEvent in FileZilla's
engine/sftp/event.h, protocol 11). Three kinds of event need an answer from us, as the
engine gives it:
- rate-limit quota requests: a bare '@' (download) or 'A' (upload) with no newline,
  answered "-0-" / "-1-" (no limit);
- a new host key ('9' host, then the port on a raw line): "n" (trust once);
- file I/O: fzsftp does not read local files itself. On 'K' (io_open) it is given a
  shared-memory fd; on each 'L' (io_nextbuf) the next slice of the file placed there
  ("-offset length", "-0" at the end); 'J' (io_size) asks the size.
A command ends with a Done event ('1' + result) or, for cd/pwd/mtime, with its Reply
('0'); a directory entry ('8') is followed by two raw lines (its mtime, its name).
The upload sequence is FileZilla's (engine/sftp/filetransfer.cpp): cd, ls, put, then
`chmtime` with the local mtime (its "preserve timestamps" option).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.helpers import RunningGateway, make_pdf, sha256_file
from tests.test_clients import MTIME, SIZE, putty_key, remote_mtime
from tests.test_scp import assert_landed

BUFFER = 256 * 1024
TIMEOUT = 120
PROTOCOL = b"fzSftp started, protocol_version=11"
REPLY, DONE, ERROR, LISTENTRY, ASK_HOSTKEY, ASK_CHANGED, ASK_BETTERALG = 0, 1, 2, 8, 9, 10, 11
IO_SIZE, IO_OPEN, IO_NEXTBUF, IO_FINALIZE = 26, 27, 28, 29


def quote(name: str) -> str:
    """FileZilla's QuoteFilename: double quotes, inner quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


class FzSftp:
    """One fzsftp process, answering its questions as FileZilla's engine does."""

    def __init__(self, workdir: Path) -> None:
        self.memfd = os.memfd_create("fzsftp-buffer")
        os.ftruncate(self.memfd, BUFFER)
        self.log: list[str] = []
        self.done: queue.Queue[tuple[bool, list[str]]] = queue.Queue()
        self._errors: list[str] = []
        self._pending = True  # the banner, a Reply, answers our start
        self._source: BinaryIO | None = None  # the local file of an upload
        self._sink: BinaryIO | None = None  # the local file of a download
        self._write_lock = threading.Lock()
        self.process = subprocess.Popen(
            ["fzsftp", "-v"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=(self.memfd,),
            cwd=workdir,
            bufsize=0,
        )
        self._reader = threading.Thread(target=self._read_events, daemon=True)
        self._reader.start()
        _, _ = self.done.get(timeout=TIMEOUT)
        if not any(PROTOCOL.decode() in line for line in self.log):
            raise AssertionError(f"fzsftp speaks another protocol: {self.log[:1]}")

    # -- commands -----------------------------------------------------------------------

    def command(self, line: str) -> list[str]:
        """Send one command and wait for its Done event; fail with fzsftp's errors."""
        self._errors = []
        self._pending = True
        self._send(line)
        ok, errors = self.done.get(timeout=TIMEOUT)
        if not ok:
            raise AssertionError(f"fzsftp {line!r} failed: {errors}\nlog: {self.log[-30:]}")
        return errors

    def upload(self, source: Path, remote: str, mtime: int | None = None) -> None:
        """FileZilla's upload: cd, ls, put (bytes through shared memory), chmtime."""
        self.command('cd "/"')
        self.command("ls")
        with open(source, "rb") as self._source:
            self.command(f"put {quote(str(source))} {quote(remote)}")
        self._source = None
        if mtime is not None:
            self.command(f"chmtime {mtime} {quote(remote)}")

    def download(self, remote: str, target: Path) -> None:
        """FileZilla's download: cd, ls, get (fzsftp fills the shared memory, we write)."""
        self.command('cd "/"')
        self.command("ls")
        with open(target, "wb") as self._sink:
            self.command(f"get {quote(remote)} {quote(str(target))}")
        self._sink = None

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self._send("quit")
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        os.close(self.memfd)

    # -- the event stream ------------------------------------------------------------------

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        with self._write_lock:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()

    def _read_events(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while first := stdout.read(1):
                if first in b"@A":  # quota request: no newline follows
                    self._send("-0-" if first == b"@" else "-1-")
                    continue
                rest = b"" if first == b"\n" else self._read_line(stdout)
                self._on_event(first[0] - ord("0"), rest.decode("utf-8", "replace"), stdout)
        except (OSError, ValueError):
            pass

    @staticmethod
    def _read_line(stdout: BinaryIO) -> bytes:
        chunks = []
        while (char := stdout.read(1)) not in (b"\n", b""):
            chunks.append(char)
        return b"".join(chunks)

    def _on_event(self, kind: int, text: str, stdout: BinaryIO) -> None:
        self.log.append(f"{kind}:{text}")
        if kind in (DONE, REPLY) and self._pending:
            # A command ends with Done (its result) or, for cd/pwd/mtime, its Reply.
            self._pending = False
            self.done.put((kind == REPLY or text.strip() == "1", self._errors))
        elif kind == ERROR:
            self._errors.append(text)
        elif kind == LISTENTRY:
            self._read_line(stdout)  # its mtime and its name, on raw lines
            self._read_line(stdout)
        elif kind in (ASK_HOSTKEY, ASK_CHANGED, ASK_BETTERALG):
            self._read_line(stdout)  # the port, on a raw line
            self._send("n")  # trust once, store nothing
        elif kind == IO_OPEN and self._sink is not None:
            self._send(f"-{self.memfd} {BUFFER} 0")
        elif kind == IO_OPEN:
            self._open_source(int(text or 0))
        elif kind == IO_NEXTBUF and self._sink is not None:
            self._take_written(int(text or 0))
            self._send(f"-0 {BUFFER}")
        elif kind == IO_NEXTBUF:
            self._next_buffer()
        elif kind == IO_FINALIZE:
            self._take_written(int(text or 0))
            self._send("-1")
        elif kind == IO_SIZE:
            self._send(f"-{self._source_size()}" if self._source else "--1")

    def _open_source(self, offset: int) -> None:
        if self._source is None:
            self._send("--")
            return
        self._source.seek(offset)
        self._send(f"-{self.memfd} {BUFFER} {offset}")

    def _next_buffer(self) -> None:
        if self._source is None:
            self._send("--1")
            return
        data = self._source.read(BUFFER)
        if not data:
            self._send("-0")
            return
        os.pwrite(self.memfd, data, 0)
        self._send(f"-0 {len(data)}")

    def _take_written(self, length: int) -> None:
        """fzsftp wrote `length` bytes of the download at the start of the buffer."""
        if self._sink is not None and length > 0:
            self._sink.write(os.pread(self.memfd, length, 0))

    def _source_size(self) -> int:
        assert self._source is not None
        return os.fstat(self._source.fileno()).st_size


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 20 MB PDF and an empty .pdf, both with the test mtime."""
    base = tmp_path_factory.mktemp("fz-sources")
    made = {"big": make_pdf(base / "big.pdf", SIZE), "empty": make_pdf(base / "empty.pdf", 0)}
    for path in made.values():
        os.utime(path, (MTIME, MTIME))
    return made


@pytest.fixture
def filezilla(gateway: RunningGateway, tmp_path: Path):  # type: ignore[no-untyped-def]
    """fzsftp connected to the gateway as alice with her key (converted to .ppk)."""
    if shutil.which("fzsftp") is None:
        pytest.skip("fzsftp (Debian package filezilla) is not installed")
    client = FzSftp(tmp_path)
    try:
        client.command(f"keyfile {quote(str(putty_key(gateway)))}")
        client.command(f'open "alice@127.0.0.1" {gateway.port}')
        yield client
    finally:
        client.close()


def test_filezilla_uploads_pdf_and_empty_file_with_times(gateway, filezilla, sources) -> None:
    filezilla.upload(sources["big"], "fz.pdf", mtime=MTIME)
    filezilla.upload(sources["empty"], "fz-empty.pdf", mtime=MTIME)

    assert_landed(gateway, "fz.pdf", sources["big"])
    assert_landed(gateway, "fz-empty.pdf", sources["empty"])
    assert remote_mtime(gateway, "fz.pdf") == MTIME
    assert gateway.open_multipart_uploads() == []


def test_filezilla_overwrites_an_existing_file(gateway, filezilla, sources, tmp_path) -> None:
    filezilla.upload(sources["big"], "again.pdf")
    smaller = make_pdf(tmp_path / "smaller.pdf", 1024 * 1024)
    filezilla.upload(smaller, "again.pdf")
    assert_landed(gateway, "again.pdf", smaller)
    rows = gateway.catalog.uploads_for_key(gateway.bucket, gateway.key_for("again.pdf"))
    assert [r.status for r in rows] == ["completed", "completed"]


def test_filezilla_downloads(gateway, filezilla, sources, tmp_path) -> None:
    gateway.sftp(f"put {sources['big']} down.pdf\n")
    filezilla.download("down.pdf", tmp_path / "back.pdf")
    assert sha256_file(tmp_path / "back.pdf") == sha256_file(sources["big"])
