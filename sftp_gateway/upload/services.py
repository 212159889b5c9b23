"""What all uploads of one process share: the memory budget, the spill-disk budget and
the part sender. The Gateway builds one set at start and hands it down to every
upload, so no bound is per upload only."""

from __future__ import annotations

from dataclasses import dataclass

from sftp_gateway.config import Settings
from sftp_gateway.upload.budget import ByteBudget, Lease, Owner
from sftp_gateway.upload.sender import PartSender


@dataclass(frozen=True)
class UploadServices:
    memory: ByteBudget
    spill: ByteBudget
    sender: PartSender

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadServices:
        uploads = settings.uploads
        return cls(
            memory=ByteBudget(
                uploads.memory_budget,
                per_user=uploads.per_user_memory,
                wait_timeout=uploads.memory_wait_timeout,
                what="upload memory",
            ),
            spill=ByteBudget(uploads.spill_budget, what="disk for out-of-order writes"),
            sender=PartSender(uploads.sender_threads),
        )

    def upload_lease(self, owner: Owner, part_size: int, max_concurrency: int) -> Lease:
        """An upload's share: at most one buffer filling and max_concurrency in flight."""
        return self.memory.lease(owner, ceiling=(max_concurrency + 1) * part_size)

    def close(self) -> None:
        self.sender.close()
