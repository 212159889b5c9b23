"""S3's additional checksums: a CRC32 per part, or a CRC64NVME of the whole object.

With storage.full_object_checksum the object gets S3's FULL_OBJECT CRC64NVME: each part
carries its own CRC64NVME (S3 verifies it as the part arrives) and the completion the
CRC64NVME of the whole object, which S3 checks against the bytes it assembled. A CRC
of concatenated bytes follows from the CRCs of the pieces and their lengths, so the
whole-object value is combined from the parts' values: nothing is read twice, and a
resume, another instance or recovery completing from the catalog's parts gets the
same value without any saved running state.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Sequence
from typing import Literal

from awscrt import checksums

from sftp_gateway.errors import StorageError
from sftp_gateway.storage.base import Part

log = logging.getLogger(__name__)
FullObjectMode = Literal["auto", "on", "off"]
# What stores answer to checksum parameters they do not implement.
REFUSAL_CODES = frozenset({"InvalidRequest", "NotImplemented", "InvalidArgument"})


class ChecksumRefused(StorageError):
    """The store refused the full-object checksum and `auto` goes on without it."""


def crc64nvme_b64(data: bytes | bytearray | memoryview) -> str:
    """S3's x-amz-checksum-crc64nvme: the big-endian CRC64NVME, base64."""
    return _b64(int(checksums.crc64nvme(data)))


def full_object_crc64nvme(parts: Sequence[Part]) -> str:
    """The CRC64NVME of the parts' bytes in part order, from their own CRC64NVMEs."""
    crc = 0
    for part in sorted(parts, key=lambda p: p.number):
        if part.crc64nvme is None:
            raise StorageError(f"part {part.number} has no CRC64NVME to combine")
        value = int.from_bytes(base64.b64decode(part.crc64nvme), "big")
        crc = int(checksums.combine_crc64nvme(crc, value, part.size))
    return _b64(crc)


def _b64(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(8, "big")).decode()


class FullObjectChecksum:
    """storage.full_object_checksum for one Storage: whether new objects get it.

    `on` always (a refusal is an error), `off` never, `auto` until the store first
    refuses it: from then on this process goes without (one INFO line), so only the
    first upload pays for the refusal.
    """

    def __init__(self, mode: FullObjectMode, store: str) -> None:
        self.mode = mode
        self._store = store
        self._fallen_back = False
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.mode == "on" or (self.mode == "auto" and not self._fallen_back)

    def falls_back(self, code: str) -> bool:
        """The store answered `code` to a request with the checksum: True when `auto`
        now goes on without it (that request is to be made again without it)."""
        if self.mode != "auto" or code not in REFUSAL_CODES:
            return False
        with self._lock:
            first, self._fallen_back = not self._fallen_back, True
        if first:
            log.info(
                "storage.full_object_checksum auto: %s refused the full-object CRC64NVME "
                "(%s); this process goes on without it (storage.part_checksums applies)",
                self._store,
                code,
            )
        return True
