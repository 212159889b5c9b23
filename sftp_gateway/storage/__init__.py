"""Object storage: the Storage protocol the gateway needs, and its S3 implementation."""

from sftp_gateway.storage.base import Entry, ObjectInfo, Part, Probe, Storage

__all__ = ["Entry", "ObjectInfo", "Part", "Probe", "Storage"]
