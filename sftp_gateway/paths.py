"""Virtual SFTP paths <-> S3 object keys, jailed in the user's home.

The client sees `/` as its home. Every path is normalised here, once: NFC unicode,
no control characters, `..` clamped at the root (as a chroot does), duplicate slashes
folded. A key is then `PREFIX/HOME/relative`, and nothing can name a key outside it.
"""

from __future__ import annotations

import posixpath
import unicodedata
from dataclasses import dataclass

from sftp_gateway.errors import InvalidRequest, PermissionDenied

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255


def normalize(path: str | bytes, cwd: str = "/") -> str:
    """Return the absolute, canonical virtual path for what the client sent."""
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("path is not valid UTF-8") from None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise InvalidRequest("path contains control characters")
    path = unicodedata.normalize("NFC", path).replace("\\", "/")
    joined = posixpath.join(cwd, path) if not path.startswith("/") else path
    # normpath keeps a leading '//' (POSIX allows it); fold it: there is one root.
    canonical = posixpath.normpath("/" + joined.lstrip("/"))
    # normpath leaves '..' at the root of an absolute path out: the jail holds.
    for segment in canonical.split("/"):
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidRequest("a path segment is longer than 255 bytes")
    return canonical


@dataclass(frozen=True)
class Jail:
    """Maps one user's virtual paths to keys under `prefix/home`."""

    root: str  # the key prefix of the home, without trailing slash ("" = bucket root)

    @classmethod
    def for_home(cls, storage_prefix: str, home: str) -> Jail:
        parts = [p for p in (storage_prefix.strip("/"), home.strip("/")) if p]
        root = "/".join(parts)
        if ".." in root.split("/"):
            raise PermissionDenied("home prefix may not contain '..'")
        return cls(root=root)

    def key(self, path: str | bytes) -> str:
        """The object key for a file path; the home itself is not a file."""
        virtual = normalize(path)
        if virtual == "/":
            raise InvalidRequest("the home directory is not a file")
        key = self._join(virtual)
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidRequest("path is too long for S3 (1024 bytes)")
        return key

    def dir_prefix(self, path: str | bytes) -> str:
        """The key prefix (ending in '/', or '' for the bucket root) of a directory."""
        virtual = normalize(path)
        base = self._join(virtual) if virtual != "/" else self.root
        return base + "/" if base else ""

    def virtual(self, key: str) -> str:
        """The virtual path of a key inside this jail."""
        prefix = self.root + "/" if self.root else ""
        if not key.startswith(prefix):
            raise PermissionDenied("key is outside the home")
        return "/" + key[len(prefix) :].rstrip("/")

    def _join(self, virtual: str) -> str:
        relative = virtual.lstrip("/")
        return f"{self.root}/{relative}" if self.root else relative
