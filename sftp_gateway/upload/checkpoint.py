"""What of an upload is durable: the parts S3 acknowledged and the hash state after
each, so an interrupted upload can continue later with a correct SHA-256 of the whole."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sftp_gateway.storage.base import Part

log = logging.getLogger(__name__)


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


class DurableParts:
    """Parts stored and parts hashed, as they settle (from the sender threads); the
    longest run 1..n of both is the resume point, reported at most once per interval."""

    def __init__(
        self,
        part_size: int,
        resume: Checkpoint | None,
        on_checkpoint: Callable[[Checkpoint], None] | None,
        interval: float,
    ) -> None:
        self.part_size = part_size
        self.upload_id = resume.upload_id if resume else None
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

    def prefix(self) -> Checkpoint | None:
        """The longest run of parts 1..n both stored in S3 and hashed, or None."""
        if self.upload_id is None:
            return None
        count = self.base_parts
        while count + 1 in self._stored and count + 1 in self._hash_states:
            count += 1
        if count == 0:
            return None
        if count > self.base_parts:
            state = self._hash_states[count]
        else:
            assert self._resumed is not None
            state = self._resumed.hash_state
        parts = tuple(self._stored[n] for n in range(1, count + 1))
        return Checkpoint(self.upload_id, self.part_size, parts, state)

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
