"""What of an upload is durable: the parts S3 acknowledged and the hash state after
each, so an interrupted upload can continue later with a correct SHA-256 of the whole."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sftp_gateway.s3limits import PartSchedule
from sftp_gateway.storage.base import Part

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """What is durably in S3: parts 1..n, their bytes, the SHA-256 state after them,
    and how the next parts are made (the part-size schedule, the compression, the
    checksum the upload was made for), so a resume continues exactly as the upload
    would have. The running CRC64NVME needs no state of its own: each part keeps its
    CRC64NVME, and the object's is combined from them at completion."""

    upload_id: str
    part_size: int
    parts: tuple[Part, ...]
    hash_state: bytes
    schedule: PartSchedule | None = None  # None: constant part_size (older checkpoints)
    compression: str | None = None
    full_object_checksum: bool = False  # made for S3's FULL_OBJECT CRC64NVME

    @property
    def size(self) -> int:
        """Bytes of the file the parts hold (before compression): the resume offset."""
        return sum(p.size if p.source_size is None else p.source_size for p in self.parts)

    @property
    def stored_size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def part_schedule(self) -> PartSchedule:
        return self.schedule or PartSchedule.constant(self.part_size)

    def state(self) -> dict[str, Any]:
        """The catalog's `resume_state` (JSON) for this checkpoint."""
        return {
            **self.part_schedule.as_dict(),
            "sha256_state": self.hash_state.hex(),
            **({"compression": self.compression} if self.compression else {}),
            **({"full_object_checksum": True} if self.full_object_checksum else {}),
        }

    @classmethod
    def from_state(
        cls, upload_id: str, parts: tuple[Part, ...], state: dict[str, Any]
    ) -> Checkpoint:
        """Read `resume_state`, also as older gateways wrote it (`part_size` only)."""
        schedule = PartSchedule.from_dict(state)
        return cls(
            upload_id=upload_id,
            part_size=schedule.base,
            parts=parts,
            hash_state=bytes.fromhex(state["sha256_state"]),
            schedule=schedule,
            compression=state.get("compression"),
            full_object_checksum=bool(state.get("full_object_checksum", False)),
        )


class DurableParts:
    """Parts stored and parts hashed, as they settle (from the sender threads); the
    longest run 1..n of both is the resume point, reported at most once per interval."""

    def __init__(
        self,
        schedule: PartSchedule,
        resume: Checkpoint | None,
        on_checkpoint: Callable[[Checkpoint], None] | None,
        interval: float,
        compression: str | None = None,
    ) -> None:
        self.schedule = schedule
        self.compression = compression
        self.upload_id = resume.upload_id if resume else None
        # Set with upload_id when the multipart upload is made (a resume: as it was).
        self.full_object_checksum = resume.full_object_checksum if resume else False
        self._resumed = resume
        self._stored: dict[int, Part] = {p.number: p for p in resume.parts} if resume else {}
        self._hash_states: dict[int, bytes] = {}
        self.base_parts = len(self._stored)
        self._on_checkpoint = on_checkpoint
        self._interval = interval
        self._lock = threading.Lock()
        self._reported = self.base_parts
        self._last_report = 0.0

    @property
    def parts(self) -> tuple[Part, ...]:
        return tuple(self._stored[n] for n in sorted(self._stored))

    def stored(self, part: Part) -> None:
        self._stored[part.number] = part

    def hashed(self, number: int, state: bytes) -> None:
        self._hash_states[number] = state

    def prefix(self, max_parts: int | None = None) -> Checkpoint | None:
        """The longest run of parts 1..n both stored in S3 and hashed (n at most
        max_parts, beyond the parts a resume started with), or None."""
        if self.upload_id is None:
            return None
        count = self.base_parts
        limit = max(max_parts, count) if max_parts is not None else len(self._stored)
        while count < limit and count + 1 in self._stored and count + 1 in self._hash_states:
            count += 1
        if count == 0:
            return None
        if count > self.base_parts:
            state = self._hash_states[count]
        else:
            assert self._resumed is not None
            state = self._resumed.hash_state
        parts = tuple(self._stored[n] for n in range(1, count + 1))
        return Checkpoint(
            self.upload_id,
            self.schedule.base,
            parts,
            state,
            self.schedule,
            self.compression,
            self.full_object_checksum,
        )

    def maybe_report(self) -> None:
        """Report progress (at most once per interval) so a crash can resume from it."""
        with self._lock:
            if self._on_checkpoint is None:
                return
            now = time.monotonic()
            if now - self._last_report < self._interval:
                return
            checkpoint = self.prefix()
            if checkpoint is None or len(checkpoint.parts) <= self._reported:
                return
            self._reported = len(checkpoint.parts)
            self._last_report = now
            try:
                self._on_checkpoint(checkpoint)
            except Exception:
                log.warning("could not record a resume checkpoint", exc_info=True)

    def stop_reporting(self) -> None:
        """Drop the callback (a bound method of our owner): nothing keeps it alive."""
        with self._lock:
            self._on_checkpoint = None
