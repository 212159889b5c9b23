"""Stream sequential bytes into S3 as a multipart upload, part by part as they fill.

This module only assembles parts and settles them; the memory comes from the process's
budget (upload/budget.py), the threads from the process's sender (upload/sender.py),
the resume point from upload/checkpoint.py, and a file smaller than one part stays a
list of writes (upload/small.py) sent as one PUT.

Memory per upload is at most (max_concurrency + 1) * part_size: one buffer filling, at
most max_concurrency queued or in flight. A buffer is taken from the budget when the
first byte needs it and given back when S3 acknowledged its part. When every slot is
busy, or the budget is spent, `write` blocks: the SFTP thread stops reading the
channel, the SSH window closes, and the client slows down. A slow S3 costs time, not
memory; a budget still spent after `uploads.memory_wait_timeout` fails the write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from sftp_gateway.errors import StorageError
from sftp_gateway.s3limits import MAX_PARTS
from sftp_gateway.storage.base import Part, Storage
from sftp_gateway.upload.budget import Lease
from sftp_gateway.upload.checkpoint import Checkpoint, DurableParts
from sftp_gateway.upload.sender import PartJob, PartSender
from sftp_gateway.upload.sha256 import ResumableSha256
from sftp_gateway.upload.small import SmallBody

__all__ = ["Checkpoint", "StreamResult", "UploadStream"]


@dataclass(frozen=True)
class StreamResult:
    size: int
    sha256: str
    multipart: bool
    parts: tuple[Part, ...]


class UploadStream:
    """One object being written. Not thread-safe: one writer thread, as SFTP gives us."""

    def __init__(
        self,
        storage: Storage,
        key: str,
        *,
        part_size: int,
        max_concurrency: int,
        metadata: dict[str, str],
        content_type: str,
        sender: PartSender,
        lease: Lease,
        on_multipart_created: Callable[[str], None] | None = None,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
        checkpoint_interval: float = 1.0,
        resume: Checkpoint | None = None,
    ) -> None:
        self.storage = storage
        self.key = key
        self.part_size = resume.part_size if resume else part_size
        self.metadata = metadata
        self.content_type = content_type
        self._on_created = on_multipart_created
        self._sender = sender
        self._hashing = sender.lane()
        self._lease = lease
        self._small = SmallBody(lease, self.part_size)
        self._buffer: bytearray | None = None
        self._fill = 0
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._jobs: list[PartJob] = []
        self._error: BaseException | None = None
        self._durable = DurableParts(self.part_size, resume, on_checkpoint, checkpoint_interval)
        self._size = resume.size if resume else 0
        self._hasher = ResumableSha256(resume.hash_state if resume else None)

    @property
    def size(self) -> int:
        """Bytes accepted so far (for a resumed upload, including the earlier ones)."""
        return self._size

    @property
    def upload_id(self) -> str | None:
        return self._durable.upload_id

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes; blocks while all send slots are busy or the budget is spent."""
        self._raise_if_failed()
        if self.upload_id is None and self._buffer is None and self._small.fits(len(data)):
            self._small.add(data)
            self._size += len(data)
            return
        view = memoryview(data)
        while view:
            if self._buffer is None:
                self._buffer = self._new_buffer()
            chunk = view[: self.part_size - self._fill]
            self._buffer[self._fill : self._fill + len(chunk)] = chunk
            self._fill += len(chunk)
            self._size += len(chunk)
            view = view[len(chunk) :]
            if self._fill == self.part_size:
                self._seal_part()

    def seal(self) -> None:
        """No more bytes: send the last part and wait until every part is in S3."""
        self._raise_if_failed()
        if self.upload_id is not None:
            if self._fill:
                self._seal_part()
            self._drain()
            self._raise_if_failed()

    def complete(self) -> StreamResult:
        """Make the object visible, with its SHA-256 in its metadata. Call after seal()."""
        try:
            if self.upload_id is None:
                body = self._small.body()
                self._hasher.update(body)
                digest = self._hasher.hexdigest()
                self.storage.put(self.key, body, self._final_metadata(digest), self.content_type)
                return StreamResult(self._size, digest, False, ())
            parts = self._durable.parts
            self.storage.complete_multipart(self.key, self.upload_id, list(parts))
            digest = self._hasher.hexdigest()
            # The SHA-256 is known only now; S3 takes metadata at creation, so set it in place.
            self.storage.replace_metadata(
                self.key, self._final_metadata(digest), self.content_type, self._size
            )
            return StreamResult(self._size, digest, True, parts)
        finally:
            self._let_go()

    def finish(self) -> StreamResult:
        self.seal()
        return self.complete()

    def abort(self) -> None:
        """Stop, wait for parts in flight, and abort the multipart upload (no orphan)."""
        self._drain()
        self._let_go()
        if self.upload_id is not None:
            self.storage.abort_multipart(self.key, self.upload_id)

    def interrupt(self) -> Checkpoint | None:
        """The client is gone: keep what is durably in S3 for a later resume.

        Returns the checkpoint of the longest run of parts 1..n that S3 holds, or None
        (after aborting) when nothing is durable. Bytes not yet in a part are dropped.
        """
        self._drain()
        self._let_go()
        if self.upload_id is None:
            return None
        checkpoint = self._durable.prefix()
        if checkpoint is None:
            self.storage.abort_multipart(self.key, self.upload_id)
        return checkpoint

    # -- internals -------------------------------------------------------------------

    def _final_metadata(self, sha256: str) -> dict[str, str]:
        return {**self.metadata, "sha256": sha256}

    def _new_buffer(self) -> bytearray:
        """A part buffer from the budget (waits, or ServerBusy); the small-file bytes,
        if any, move into it with their charge."""
        self._lease.acquire(self.part_size - self._small.charged)
        buffer = bytearray(self.part_size)
        self._fill = self._small.move_into(buffer)
        return buffer

    def _seal_part(self) -> None:
        """Hand the full buffer to the senders; the next write takes a fresh one."""
        if self.upload_id is None:
            self._durable.upload_id = self.storage.create_multipart(
                self.key, self.metadata, self.content_type
            )
            if self._on_created:
                self._on_created(self._durable.upload_id)
        number = self._durable.base_parts + len(self._jobs) + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"file too large: S3 takes at most {MAX_PARTS} parts of {self.part_size} bytes"
            )
        self._slots.acquire()  # blocks while max_concurrency parts are queued or in flight
        if self._error is not None:
            self._slots.release()
            self._raise_if_failed()
        buffer, length = self._buffer, self._fill
        assert buffer is not None
        self._buffer, self._fill = None, 0
        body = buffer if length == len(buffer) else bytes(memoryview(buffer)[:length])
        job = PartJob(self._part_settled)
        self._jobs.append(job)
        self._hashing.submit(self._hash_part, number, body).add_done_callback(job.one_done)
        self._sender.send(self._send_part, number, body).add_done_callback(job.one_done)

    def _hash_part(self, number: int, body: bytes | bytearray) -> None:
        self._hasher.update(body)
        self._durable.hashed(number, self._hasher.state())

    def _send_part(self, number: int, body: bytes | bytearray) -> None:
        if self._error is not None:
            return  # an earlier part failed: the upload will end, save the work
        assert self.upload_id is not None
        self._durable.stored(self.storage.upload_part(self.key, self.upload_id, number, body))

    def _part_settled(self, error: BaseException | None) -> None:
        """S3 acknowledged (or refused) the part and it is hashed: its buffer goes back."""
        if error is not None and self._error is None:
            self._error = error
        self._lease.release(self.part_size)
        self._slots.release()
        if error is None:
            self._durable.maybe_report()

    def _drain(self) -> None:
        for job in self._jobs:
            job.settled.wait()

    def _raise_if_failed(self) -> None:
        if self._error is None:
            return
        if isinstance(self._error, StorageError):
            raise self._error
        raise StorageError("upload to storage failed") from self._error

    def _let_go(self) -> None:
        """After the last part settled: give every byte back to the budget and drop the
        buffers and callbacks, so nothing keeps this stream's memory alive."""
        self._jobs.clear()
        self._buffer, self._fill = None, 0
        self._small.drop()
        self._lease.close()
        self._durable.stop_reporting()
        self._on_created = None  # a bound method of our owner
