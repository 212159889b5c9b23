"""S3's multipart limits, in one place, and the part size that respects them.

Like s3transfer's ChunksizeAdjuster: every module that sizes a part or an object asks
here, so no second copy of a limit can drift. The numbers are AWS's documented limits
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
"""

from __future__ import annotations

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
