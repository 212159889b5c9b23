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

import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import partial

from sftp_gateway import metrics
from sftp_gateway.config import StorageConfig
from sftp_gateway.errors import QuotaExceeded, StorageError
from sftp_gateway.s3limits import MAX_PARTS, PartSchedule, schedule_for
from sftp_gateway.storage.base import Part, Storage
from sftp_gateway.storage.checksums import ChecksumRefused, full_object_crc64nvme
from sftp_gateway.upload.budget import Lease
from sftp_gateway.upload.checkpoint import Checkpoint, DurableParts
from sftp_gateway.upload.compress import PartCompressor, compressor_for
from sftp_gateway.upload.sender import PartJob, PartSender
from sftp_gateway.upload.sha256 import ResumableSha256
from sftp_gateway.upload.small import SmallBody

__all__ = ["Checkpoint", "StreamOptions", "StreamResult", "UploadStream", "attach_sha256"]

log = logging.getLogger(__name__)
# S3 tag values: letters, digits, spaces and + - = . _ : / @, at most 256 characters.
TAG_VALUE = re.compile(r"^[\w +\-=.:/@]{0,256}$")
COMPRESSION_SLACK = 1024 * 1024  # a compressed part may pass its size by a member's end


@dataclass(frozen=True)
class StreamResult:
    size: int
    sha256: str
    multipart: bool
    parts: tuple[Part, ...]
    stored_size: int | None = None  # bytes in S3, when stored compressed
    compression: str | None = None


@dataclass(frozen=True)
class StreamOptions:
    """How an upload's object is made, from storage.* (a resume keeps its checkpoint's)."""

    schedule: PartSchedule
    compression: str | None = None
    compression_level: int | None = None
    sha256_in_metadata: bool = False

    @classmethod
    def for_upload(
        cls, config: StorageConfig, expected_size: int | None, compression: str | None = None
    ) -> StreamOptions:
        """`compression`: the uploader's own (users.compression: none | gzip | zstd),
        None for storage.compression. compression_level goes with the configured
        algorithm only; another one gets its default level."""
        chosen = compression or config.compression
        return cls(
            schedule=schedule_for(config.part_size, expected_size),
            compression=None if chosen == "none" else chosen,
            compression_level=config.compression_level if chosen == config.compression else None,
            sha256_in_metadata=config.sha256_in_metadata,
        )


def sha256_tags(metadata: dict[str, str], sha256: str, size: int) -> dict[str, str]:
    """The object's tags: its SHA-256 and original size, and who/which upload when the
    value fits S3's tag charset (a user name with other characters is left out)."""
    tags = {"sha256": sha256, "size": str(size)}
    for name in ("upload-id", "uploaded-by", "compression"):
        value = metadata.get(name)
        if value and TAG_VALUE.match(value):
            tags[name] = value
    return tags


def attach_sha256(
    storage: Storage,
    key: str,
    *,
    metadata: dict[str, str],
    sha256: str,
    size: int,
    content_type: str,
    stored_size: int,
    in_metadata: bool = False,
    content_encoding: str | None = None,
) -> None:
    """Give a completed multipart object its SHA-256: a tag (PutObjectTagging: the
    object is not rewritten, one version, one ObjectCreated), and with
    storage.sha256_in_metadata also its metadata through an in-place copy first."""
    if in_metadata:
        storage.replace_metadata(
            key,
            {**metadata, "sha256": sha256},
            content_type,
            stored_size,
            content_encoding=content_encoding,
        )
    storage.set_tags(key, sha256_tags(metadata, sha256, size))


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
        options: StreamOptions | None = None,
    ) -> None:
        options = options or StreamOptions(PartSchedule.constant(part_size))
        if resume is not None:  # continue as the upload started, whatever the config now
            options = replace(
                options, schedule=resume.part_schedule, compression=resume.compression
            )
        self.storage = storage
        self.key = key
        self.schedule = options.schedule
        self.compression = options.compression
        self._sha256_in_metadata = options.sha256_in_metadata
        self._compressor: PartCompressor | None = compressor_for(
            options.compression, options.compression_level
        )
        self.metadata = (
            {**metadata, "compression": options.compression} if options.compression else metadata
        )
        self.content_type = content_type
        self._on_created = on_multipart_created
        self._sender = sender
        self._hashing = sender.lane()
        self._lease = lease
        self._concurrency = max_concurrency
        self._small = SmallBody(lease, self.schedule.size_of(1))
        self._buffer: bytearray | None = None
        self._fill = 0
        self._buffer_size = 0  # the size of the part filling now
        self._charged = 0  # what its buffer was charged to the lease
        self._part_source = 0  # bytes of the file in the part filling now (compressed)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._jobs: list[PartJob] = []
        self._error: BaseException | None = None
        self._durable = DurableParts(
            self.schedule, resume, on_checkpoint, checkpoint_interval, self.compression
        )
        self._size = resume.size if resume else 0
        self._hasher = ResumableSha256(resume.hash_state if resume else None)

    @property
    def part_size(self) -> int:
        """The size of the part filling now (it grows with the part number)."""
        return self.schedule.size_of(self._durable.base_parts + len(self._jobs) + 1)

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
        metrics.bytes_received(len(data))
        if self._compressor is not None:
            self._write_compressed(data)
            return
        if self.upload_id is None and self._buffer is None and self._small.fits(len(data)):
            self._small.add(data)
            self._size += len(data)
            return
        view = memoryview(data)
        while view:
            if self._buffer is None:
                self._buffer = self._new_buffer()
            chunk = view[: self._buffer_size - self._fill]
            self._buffer[self._fill : self._fill + len(chunk)] = chunk
            self._fill += len(chunk)
            self._size += len(chunk)
            view = view[len(chunk) :]
            if self._fill == self._buffer_size:
                self._seal_part()

    def _write_compressed(self, data: bytes | memoryview) -> None:
        """Hash the file's bytes here (the parts hold compressed ones), compress them,
        and end the member and the part once the compressed bytes fill a part."""
        self._hasher.update(data)
        self._size += len(data)
        self._part_source += len(data)
        assert self._compressor is not None
        self._store(self._compressor.compress(data))
        if self._buffer is not None and self._fill >= self._buffer_size:
            self._end_compressed_part()

    def _store(self, out: bytes) -> None:
        """Compressed bytes: kept as a small body while the file fits in one PUT, else
        appended to the part buffer (which may grow past its size by a member's end)."""
        if not out:
            return
        if self.upload_id is None and self._buffer is None and self._small.fits(len(out)):
            self._small.add(out)
            return
        if self._buffer is None:
            self._buffer = self._new_buffer()
        self._buffer[self._fill : self._fill + len(out)] = out
        self._fill += len(out)

    def _end_compressed_part(self) -> None:
        assert self._compressor is not None
        self._store(self._compressor.end_member())
        source, self._part_source = self._part_source, 0
        self._seal_part(hash_state=self._hasher.state(), source_size=source)

    def seal(self) -> None:
        """No more bytes: send the last part and wait until every part is in S3."""
        self._raise_if_failed()
        if self._compressor is not None:
            self._store(self._compressor.end_member())
            if self._buffer is not None and self._fill:
                source, self._part_source = self._part_source, 0
                self._seal_part(hash_state=self._hasher.state(), source_size=source)
        if self.upload_id is not None:
            if self._fill:
                self._seal_part()
            self._drain()
            self._raise_if_failed()

    def complete(
        self, before_publish: Callable[[StreamResult], None] | None = None
    ) -> StreamResult:
        """Make the object visible, with its SHA-256 in its metadata. Call after seal().
        `before_publish` gets the result first (the catalog's `completing` row): if it
        raises, nothing is published and the parts stay for interrupt()."""
        try:
            if self.upload_id is None:
                return self._put_small(before_publish)
            parts = self._durable.parts
            digest = self._hasher.hexdigest()
            result = self._result(digest, True, parts, sum(p.size for p in parts))
            if before_publish is not None:
                before_publish(result)
            whole = full_object_crc64nvme(parts) if self._durable.full_object_checksum else None
            self.storage.complete_multipart(
                self.key, self.upload_id, list(parts), full_object_crc64nvme=whole
            )
            self.tag_published(result)
            return result
        finally:
            self._let_go()

    def tag_published(self, result: StreamResult) -> None:
        """A completed multipart object's SHA-256: known only now, and S3 takes metadata
        at creation, so a tag. A single PUT carried its own."""
        if not result.multipart:
            return
        attach_sha256(
            self.storage,
            self.key,
            metadata=self.metadata,
            sha256=result.sha256,
            size=self._size,
            content_type=self.content_type,
            stored_size=result.stored_size or self._size,
            in_metadata=self._sha256_in_metadata,
            content_encoding=self.compression,
        )

    def _put_small(self, before_publish: Callable[[StreamResult], None] | None) -> StreamResult:
        """One PutObject: SHA-256 in the metadata and, like every object, in the tags."""
        body = self._small.body()
        if self._compressor is None:
            self._hasher.update(body)  # compressed: hashed as the bytes came
        digest = self._hasher.hexdigest()
        result = self._result(digest, False, (), len(body))
        if before_publish is not None:
            before_publish(result)
        self.storage.put(
            self.key,
            body,
            self._final_metadata(digest),
            self.content_type,
            tags=sha256_tags(self.metadata, digest, self._size),
            content_encoding=self.compression,
        )
        return result

    def _result(
        self, digest: str, multipart: bool, parts: tuple[Part, ...], stored: int
    ) -> StreamResult:
        if self.compression is None:
            return StreamResult(self._size, digest, multipart, parts)
        return StreamResult(self._size, digest, multipart, parts, stored, self.compression)

    def finish(self) -> StreamResult:
        self.seal()
        return self.complete()

    def abort(self) -> None:
        """Stop, wait for parts in flight, and abort the multipart upload (no orphan)."""
        self._drain()
        self._let_go()
        if self.upload_id is not None:
            self.storage.abort_multipart(self.key, self.upload_id)

    def interrupt(self, keep_last_part: bool = True) -> Checkpoint | None:
        """The client is gone: keep what is durably in S3 for a later resume.

        Returns the checkpoint of the longest run of parts 1..n that S3 holds, or None
        (after aborting) when nothing is durable. Bytes not yet in a part are dropped.
        keep_last_part=False (a sealed stream whose completion failed) resumes before the
        last part, which may be short and so cannot be followed by more parts.
        """
        self._drain()
        self._let_go()
        if self.upload_id is None:
            return None
        limit = None if keep_last_part else len(self._durable.parts) - 1
        checkpoint = self._durable.prefix(limit)
        if checkpoint is None:
            self.storage.abort_multipart(self.key, self.upload_id)
        return checkpoint

    # -- internals -------------------------------------------------------------------

    def _final_metadata(self, sha256: str) -> dict[str, str]:
        return {**self.metadata, "sha256": sha256}

    def _new_buffer(self) -> bytearray:
        """A part buffer from the budget (waits, or ServerBusy); the small-file bytes,
        if any, move into it with their charge. Its size follows the schedule, and the
        lease's ceiling grows with it: (max_concurrency + 1) buffers of this size."""
        size = self.part_size
        charge = size + (COMPRESSION_SLACK if self._compressor is not None else 0)
        self._refuse_beyond_budget(charge)
        self._lease.raise_ceiling((self._concurrency + 1) * charge)
        self._lease.acquire(charge - self._small.charged)
        buffer = bytearray(size)
        self._fill = self._small.move_into(buffer)
        self._buffer_size = size
        self._charged = charge
        return buffer

    def _refuse_beyond_budget(self, charge: int) -> None:
        """A part no budget can ever hold: say so, instead of waiting then "busy"."""
        budget = self._lease.budget
        if charge <= min(budget.per_user, budget.total):
            return
        owner = self._lease.owner
        text = (
            f"file too large for this server: its next part needs {charge} bytes of "
            "upload memory, more than uploads.memory_per_user allows"
        )
        log.warning("upload refused for %s from %s: %s", owner.user, owner.source, text)
        raise QuotaExceeded(text)

    def _seal_part(self, hash_state: bytes | None = None, source_size: int | None = None) -> None:
        """Hand the full buffer to the senders; the next write takes a fresh one.
        A compressed part comes hashed already (`hash_state` after its bytes)."""
        if self.upload_id is None:
            self._durable.upload_id = self._create_multipart()
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
        if length != len(buffer):
            del buffer[length:]  # in place: no copy of the part
        body = buffer
        job = PartJob(partial(self._part_settled, self._charged))
        self._jobs.append(job)
        if hash_state is None:
            self._hashing.submit(self._hash_part, number, body).add_done_callback(job.one_done)
        else:
            self._durable.hashed(number, hash_state)
            hashed: Future[None] = Future()
            hashed.set_result(None)
            hashed.add_done_callback(job.one_done)
        send = self._sender.send(self._send_part, number, body, source_size)
        send.add_done_callback(job.one_done)

    def _create_multipart(self) -> str:
        """The multipart upload, made for the full-object CRC64NVME while the storage
        uses it; a store refusing it (ChecksumRefused, `auto`) gets one without."""
        create = partial(
            self.storage.create_multipart,
            self.key,
            self.metadata,
            self.content_type,
            content_encoding=self.compression,
        )
        if self.storage.full_object_checksum:
            try:
                upload_id = create(full_object_checksum=True)
            except ChecksumRefused:
                pass
            else:
                self._durable.full_object_checksum = True
                return upload_id
        return create()

    def _hash_part(self, number: int, body: bytes | bytearray) -> None:
        self._hasher.update(body)
        self._durable.hashed(number, self._hasher.state())

    def _send_part(self, number: int, body: bytes | bytearray, source_size: int | None) -> None:
        if self._error is not None:
            return  # an earlier part failed: the upload will end, save the work
        assert self.upload_id is not None
        part = self.storage.upload_part(
            self.key,
            self.upload_id,
            number,
            body,
            full_object_checksum=self._durable.full_object_checksum,
        )
        if source_size is not None:
            part = replace(part, source_size=source_size)
        self._durable.stored(part)

    def _part_settled(self, charged: int, error: BaseException | None) -> None:
        """S3 acknowledged (or refused) the part and it is hashed: its buffer goes back."""
        if error is not None and self._error is None:
            self._error = error
        self._lease.release(charged)
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
