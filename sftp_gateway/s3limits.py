"""S3's multipart limits, in one place, and the part size that respects them.

Like s3transfer's ChunksizeAdjuster: every module that sizes a part or an object asks
here, so no second copy of a limit can drift. The numbers are AWS's documented limits
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

MIB = 1024 * 1024
GIB = 1024 * MIB
TIB = 1024 * GIB

MIN_PART_SIZE = 5 * MIB  # every part but the last
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TIB
MAX_SINGLE_COPY = 5 * GIB  # CopyObject in one request; beyond it, UploadPartCopy


def clamp_part_size(size: int) -> int:
    """A part size S3 accepts: `size` brought into 5 MiB..5 GiB."""
    return max(MIN_PART_SIZE, min(size, MAX_PART_SIZE))


def part_size_for(configured: int, expected_size: int | None) -> int:
    """The configured part size, raised when a known size would need more than 10,000
    parts; never outside 5 MiB..5 GiB. A size beyond S3's object limit is refused
    earlier (check_object_size), so the clamp never hides it."""
    part_size = clamp_part_size(configured)
    if expected_size:
        part_size = max(part_size, -(-expected_size // MAX_PARTS))
    return clamp_part_size(part_size)


def max_size_with(part_size: int) -> int:
    """The largest object 10,000 parts of `part_size` can hold (capped at 5 TiB)."""
    return min(part_size * MAX_PARTS, MAX_OBJECT_SIZE)


def fits_in_one_object(size: int) -> bool:
    """Whether S3 can hold an object of `size` bytes at all."""
    return 0 <= size <= MAX_OBJECT_SIZE


# -- the part-size schedule of an upload whose size is not known -----------------------

FLAT_PARTS = 1_280  # parts at the configured size: 8 MiB x 1,280 = 10 GiB
LARGEST_SCHEDULED_PART = GIB  # growth stops here: 5 TiB needs no more, memory stays sane


@dataclass(frozen=True)
class PartSchedule:
    """Part sizes by part number, so that 10,000 parts reach 5 TiB without knowing the
    size in advance (SFTP never announces it).

    Parts 1..`flat_parts` have the configured size; after them the size doubles every
    `double_every` parts up to `largest`. `growing()` picks the slowest doubling that
    still reaches S3's 5 TiB in 10,000 parts. With the default 8 MiB and
    max_concurrency 4, an upload holds at most (max_concurrency + 1) x the current part:

        file size reached   part size   memory per upload
        up to 10 GiB        8 MiB       40 MiB
        up to 21 GiB        16 MiB      80 MiB
        up to 43 GiB        32 MiB      160 MiB
        up to 88 GiB        64 MiB      320 MiB
        up to 178 GiB       128 MiB     640 MiB
        up to 358 GiB       256 MiB     1.25 GiB
        up to 717 GiB       512 MiB     2.5 GiB
        up to 5 TiB         1 GiB       5 GiB

    All of it is drawn from the process's memory budget (uploads.memory_budget and
    memory_per_user), which bounds the process whatever the files: a big upload waits
    for its buffers like any other. A known size (SCP's C line) uses `constant()`.
    """

    base: int
    flat_parts: int = MAX_PARTS
    double_every: int = MAX_PARTS
    largest: int = MAX_PART_SIZE

    def size_of(self, number: int) -> int:
        """The size of part `number` (1-based); the last part of a file may be shorter."""
        if number <= self.flat_parts:
            return self.base
        doublings = min((number - self.flat_parts - 1) // self.double_every + 1, 40)
        return max(self.base, min(self.base << doublings, self.largest))

    def capacity(self, parts: int = MAX_PARTS) -> int:
        """Bytes that parts 1..`parts` hold."""
        return sum(self.size_of(n) for n in range(1, parts + 1))

    def as_dict(self) -> dict[str, int]:
        """What a checkpoint stores, so a resume continues the same schedule."""
        return {
            "part_size": self.base,
            "flat_parts": self.flat_parts,
            "double_every": self.double_every,
            "largest_part": self.largest,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> PartSchedule:
        """A stored schedule; a checkpoint with only `part_size` (older gateways) had
        constant parts."""
        base = int(state["part_size"])
        if "flat_parts" not in state:
            return cls.constant(base)
        return cls(
            base,
            int(state["flat_parts"]),
            int(state["double_every"]),
            int(state.get("largest_part", MAX_PART_SIZE)),
        )

    @classmethod
    def constant(cls, part_size: int) -> PartSchedule:
        return cls(part_size)

    @classmethod
    def growing(
        cls,
        base: int,
        *,
        flat_parts: int = FLAT_PARTS,
        largest: int = LARGEST_SCHEDULED_PART,
        target: int = MAX_OBJECT_SIZE,
    ) -> PartSchedule:
        """`base` for `flat_parts` parts, then doubling as slowly as still reaches
        `target` in 10,000 parts (tests pass small numbers to cross the steps fast)."""
        return cls(base, flat_parts, _slowest_doubling(base, flat_parts, largest, target), largest)


@cache
def _slowest_doubling(base: int, flat_parts: int, largest: int, target: int) -> int:
    """The largest `double_every` whose schedule still holds `target` (binary search:
    a larger step only shrinks the capacity)."""
    low, high = 1, MAX_PARTS
    if PartSchedule(base, flat_parts, low, largest).capacity() < target:
        raise ValueError(f"no schedule from parts of {base} bytes reaches {target} bytes")
    while low < high:
        middle = (low + high + 1) // 2
        if PartSchedule(base, flat_parts, middle, largest).capacity() >= target:
            low = middle
        else:
            high = middle - 1
    return low


def schedule_for(configured: int, expected_size: int | None) -> PartSchedule:
    """A known size (SCP) gets one constant part size that fits it in 10,000 parts;
    an unknown size (SFTP) the growing schedule from the configured size."""
    if expected_size is not None:
        return PartSchedule.constant(part_size_for(configured, expected_size))
    return PartSchedule.growing(clamp_part_size(configured))
