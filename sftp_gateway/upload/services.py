"""What all uploads of one process share: the memory budget, the spill-disk budget and
the part sender. The Gateway builds one set at start and hands it down to every
upload, so no bound is per upload only."""

from __future__ import annotations

import ctypes
import logging
import platform
from dataclasses import dataclass

from sftp_gateway.config import Settings
from sftp_gateway.s3limits import schedule_for
from sftp_gateway.upload.budget import ByteBudget, Lease, Owner
from sftp_gateway.upload.sender import PartSender

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
PART_BUFFER_MMAP_THRESHOLD = 1024 * 1024


def return_part_buffers_to_the_os() -> None:
    """Make glibc serve every allocation of 1 MiB or more (each part buffer) with its own
    mmap, unmapped when freed. Its default threshold rises after the first large free,
    after which freed part buffers stay in per-thread heaps: every SSH connection thread
    keeps its own ~40 MiB and RSS grows with the connections served, not with what is in
    flight. The cost is the page faults of a fresh buffer (~0.2 CPU-s per GiB)."""
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        if not libc.mallopt(M_MMAP_THRESHOLD, PART_BUFFER_MMAP_THRESHOLD):
            log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    except (OSError, AttributeError):
        log.debug("mallopt is not available", exc_info=True)


@dataclass(frozen=True)
class UploadServices:
    memory: ByteBudget
    spill: ByteBudget
    sender: PartSender

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadServices:
        return_part_buffers_to_the_os()
        # Work out the part-size schedule now (a search, ~50 ms), not in the first upload.
        schedule_for(settings.storage.part_size, None)
        uploads = settings.uploads
        return cls(
            memory=ByteBudget(
                uploads.memory_budget,
                per_user=uploads.per_user_memory,
                wait_timeout=uploads.memory_wait_timeout,
                what="upload memory",
            ),
            spill=ByteBudget(
                uploads.spill_budget,
                per_user=uploads.spill_budget // 4,
                what="disk for out-of-order writes",
            ),
            sender=PartSender(uploads.sender_threads),
        )

    def upload_lease(self, owner: Owner, part_size: int, max_concurrency: int) -> Lease:
        """An upload's share: at most one buffer filling and max_concurrency in flight."""
        return self.memory.lease(owner, ceiling=(max_concurrency + 1) * part_size)

    def close(self) -> None:
        self.sender.close()
