"""Stream sequential bytes into S3 as a multipart upload, part by part as they fill.

Memory is bounded per upload at (max_concurrency + 1) * part_size: one buffer filling,
at most max_concurrency being sent. Buffers are reused, never concatenated. When every
send slot is busy, `write` blocks, the SFTP thread stops reading the channel, the SSH
window closes, and the client slows down: a slow S3 costs time, not memory.

The SHA-256 runs on its own thread, in order, beside the part sends, off the thread
that reads the network and without holding the GIL. After each part it records the
hash state (upload/sha256.py: a SHA-256 whose state can be saved), so an interrupted
upload can continue later with a correct hash of the whole file. A file smaller than
one part is a single PUT.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from sftp_gateway.errors import StorageError
from sftp_gateway.storage.base import Part, Storage
from sftp_gateway.upload.sha256 import ResumableSha256

log = logging.getLogger(__name__)
S3_MAX_PARTS = 10_000


@dataclass(frozen=True)
class StreamResult:
    size: int
    sha256: str
    multipart: bool
    parts: tuple[Part, ...]


@dataclass(frozen=True)
class Checkpoint:
    """What is durably in S3: parts 1..n, their bytes, the SHA-256 state after them."""

    upload_id: str
    part_size: int
    parts: tuple[Part, ...]
    hash_state: bytes

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)


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
        self._max_concurrency = max_concurrency
        # Small files never allocate a part buffer: their writes are kept as they came
        # (bytes, no copy) until they reach one part, which most PDFs never do.
        self._small: list[bytes] = []
        self._small_size = 0
        self._buffer: bytearray | None = bytearray(self.part_size) if resume else None
        self._fill = 0
        self._spare: list[bytearray] = []
        self._spare_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._jobs: list[_PartJob] = []
        self._error: BaseException | None = None
        self._senders: ThreadPoolExecutor | None = None
        self._hashing: ThreadPoolExecutor | None = None
        self._resumed = resume
        self._upload_id = resume.upload_id if resume else None
        self._parts: dict[int, Part] = {p.number: p for p in resume.parts} if resume else {}
        self._base_parts = len(self._parts)
        self._size = resume.size if resume else 0
        self._hasher = ResumableSha256(resume.hash_state if resume else None)
        self._hash_states: dict[int, bytes] = {}
        self._on_checkpoint = on_checkpoint
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_lock = threading.Lock()
        self._checkpointed = self._base_parts
        self._last_checkpoint = 0.0
        if resume:
            self._start_threads()

    @property
    def size(self) -> int:
        """Bytes accepted so far (for a resumed upload, including the earlier ones)."""
        return self._size

    @property
    def upload_id(self) -> str | None:
        return self._upload_id

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes; blocks while all send slots are busy (backpressure)."""
        self._raise_if_failed()
        if self._buffer is None:
            if self._small_size + len(data) < self.part_size:
                self._small.append(bytes(data))
                self._small_size += len(data)
                self._size += len(data)
                return
            self._start_part_buffer()
        view = memoryview(data)
        while view:
            room = self.part_size - self._fill
            chunk = view[:room]
            self._buffer[self._fill : self._fill + len(chunk)] = chunk
            self._fill += len(chunk)
            self._size += len(chunk)
            view = view[len(chunk) :]
            if self._fill == self.part_size:
                self._seal_part()

    def seal(self) -> None:
        """No more bytes: send the last part and wait until every part is in S3."""
        self._raise_if_failed()
        if self._upload_id is not None:
            if self._fill:
                self._seal_part()
            self._drain()
            self._raise_if_failed()

    def complete(self) -> StreamResult:
        """Make the object visible, with its SHA-256 in its metadata. Call after seal()."""
        try:
            if self._upload_id is None:
                body = b"".join(self._small)
                self._hasher.update(body)
                digest = self._hasher.hexdigest()
                self.storage.put(self.key, body, self._final_metadata(digest), self.content_type)
                return StreamResult(self._size, digest, False, ())
            parts = tuple(self._parts[n] for n in sorted(self._parts))
            self.storage.complete_multipart(self.key, self._upload_id, list(parts))
            digest = self._hasher.hexdigest()
            # The SHA-256 is known only now; S3 takes metadata at creation, so set it in place.
            self.storage.replace_metadata(
                self.key, self._final_metadata(digest), self.content_type, self._size
            )
            return StreamResult(self._size, digest, True, parts)
        finally:
            self._shutdown_threads()

    def finish(self) -> StreamResult:
        self.seal()
        return self.complete()

    def abort(self) -> None:
        """Stop, wait for parts in flight, and abort the multipart upload (no orphan)."""
        self._drain()
        self._shutdown_threads()
        if self._upload_id is not None:
            self.storage.abort_multipart(self.key, self._upload_id)

    def interrupt(self) -> Checkpoint | None:
        """The client is gone: keep what is durably in S3 for a later resume.

        Returns the checkpoint of the longest run of parts 1..n that S3 holds, or None
        (after aborting) when nothing is durable. Bytes not yet in a part are dropped.
        """
        self._drain()
        self._shutdown_threads()
        if self._upload_id is None:
            return None
        checkpoint = self._durable_prefix()
        if checkpoint is None:
            self.storage.abort_multipart(self.key, self._upload_id)
        return checkpoint

    def _durable_prefix(self) -> Checkpoint | None:
        """The longest run of parts 1..n both stored in S3 and hashed, or None."""
        if self._upload_id is None:
            return None
        count = self._base_parts
        while count + 1 in self._parts and count + 1 in self._hash_states:
            count += 1
        if count == 0:
            return None
        if count > self._base_parts:
            state = self._hash_states[count]
        else:
            assert self._resumed is not None
            state = self._resumed.hash_state
        parts = tuple(self._parts[n] for n in range(1, count + 1))
        return Checkpoint(self._upload_id, self.part_size, parts, state)

    def _maybe_checkpoint(self) -> None:
        """Report progress (at most once per interval) so a crash can resume from it."""
        with self._checkpoint_lock:
            now = time.monotonic()
            if now - self._last_checkpoint < self._checkpoint_interval:
                return
            checkpoint = self._durable_prefix()
            if checkpoint is None or len(checkpoint.parts) <= self._checkpointed:
                return
            self._checkpointed = len(checkpoint.parts)
            self._last_checkpoint = now
            try:
                assert self._on_checkpoint is not None
                self._on_checkpoint(checkpoint)
            except Exception:
                log.warning("could not record a resume checkpoint", exc_info=True)

    # -- internals -------------------------------------------------------------------

    def _final_metadata(self, sha256: str) -> dict[str, str]:
        return {**self.metadata, "sha256": sha256}

    def _start_part_buffer(self) -> None:
        """The file outgrew the small-file path: move its first bytes into a part buffer."""
        self._buffer = self._take_spare()
        for chunk in self._small:
            self._buffer[self._fill : self._fill + len(chunk)] = chunk
            self._fill += len(chunk)
        self._small, self._small_size = [], 0

    def _seal_part(self) -> None:
        """Hand the full buffer to the senders and take a fresh one to fill."""
        if self._upload_id is None:
            self._upload_id = self.storage.create_multipart(
                self.key, self.metadata, self.content_type
            )
            self._start_threads()
            if self._on_created:
                self._on_created(self._upload_id)
        number = self._base_parts + len(self._jobs) + 1
        if number > S3_MAX_PARTS:
            raise StorageError("file too large for the configured part size")
        self._slots.acquire()  # blocks while max_concurrency parts are in flight
        if self._error is not None:
            self._slots.release()
            self._raise_if_failed()
        buffer, length = self._buffer, self._fill
        assert buffer is not None
        self._buffer, self._fill = self._take_spare(), 0
        assert self._hashing is not None and self._senders is not None
        body = buffer if length == len(buffer) else bytes(memoryview(buffer)[:length])
        job = _PartJob(partial(self._part_settled, buffer))
        self._jobs.append(job)
        self._hashing.submit(self._hash_part, number, body).add_done_callback(job.one_done)
        self._senders.submit(self._send_part, number, body).add_done_callback(job.one_done)

    def _start_threads(self) -> None:
        self._senders = ThreadPoolExecutor(self._max_concurrency, thread_name_prefix="part")
        self._hashing = ThreadPoolExecutor(1, thread_name_prefix="sha256")

    def _hash_part(self, number: int, body: bytes | bytearray) -> None:
        self._hasher.update(body)
        self._hash_states[number] = self._hasher.state()

    def _send_part(self, number: int, body: bytes | bytearray) -> None:
        if self._error is not None:
            return  # an earlier part failed: the upload will end, save the work
        assert self._upload_id is not None
        self._parts[number] = self.storage.upload_part(self.key, self._upload_id, number, body)

    def _part_settled(self, buffer: bytearray, error: BaseException | None) -> None:
        if error is not None and self._error is None:
            self._error = error
        with self._spare_lock:
            self._spare.append(buffer)
        self._slots.release()
        if error is None and self._on_checkpoint is not None:
            self._maybe_checkpoint()

    def _take_spare(self) -> bytearray:
        with self._spare_lock:
            if self._spare:
                return self._spare.pop()
        return bytearray(self.part_size)

    def _drain(self) -> None:
        for job in self._jobs:
            job.settled.wait()

    def _raise_if_failed(self) -> None:
        if self._error is None:
            return
        if isinstance(self._error, StorageError):
            raise self._error
        raise StorageError("upload to storage failed") from self._error

    def _shutdown_threads(self) -> None:
        """Stop the workers and drop the buffers and callbacks now, so nothing keeps
        this stream (and its part buffers) alive once its owner lets go of it."""
        for pool in (self._senders, self._hashing):
            if pool is not None:
                pool.shutdown(wait=True)
        self._jobs.clear()
        with self._spare_lock:
            self._spare.clear()
        self._buffer = None
        self._on_created = self._on_checkpoint = None  # bound methods of our owner


class _PartJob:
    """A part's two jobs, its SHA-256 (in order) and its upload (in parallel). The last
    to finish settles the part once, then lets go of the stream: no reference cycle
    through the futures keeps a finished upload's buffers in memory."""

    def __init__(self, on_settled: Callable[[BaseException | None], None]) -> None:
        self._on_settled: Callable[[BaseException | None], None] | None = on_settled
        self._pending = 2
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.settled = threading.Event()

    def one_done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending -= 1
            error = future.exception()
            if error is not None and self._error is None:
                self._error = error
            if self._pending:
                return
            on_settled, self._on_settled = self._on_settled, None
        assert on_settled is not None
        try:
            on_settled(self._error)
        finally:
            self.settled.set()
