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
_NAMED = {
    0x0085: "a next-line control character",
    0x2028: "a line separator character",
    0x2029: "a paragraph separator character",
    0x202A: "a left-to-right embedding character",
    0x202B: "a right-to-left embedding character",
    0x202C: "a pop-directional-formatting character",
    0x202D: "a left-to-right override character",
    0x202E: "a right-to-left override character",
    0x2066: "a left-to-right isolate character",
    0x2067: "a right-to-left isolate character",
    0x2068: "a first-strong isolate character",
    0x2069: "a pop-directional-isolate character",
    0x200E: "a left-to-right mark character",
    0x200F: "a right-to-left mark character",
    0x061C: "an Arabic letter mark character",
    0x200B: "a zero-width space character",
    0x200C: "a zero-width non-joiner character",
    0x200D: "a zero-width joiner character",
    0x2060: "a word joiner character",
    0xFEFF: "a zero-width no-break space (byte order mark) character",
}


def hostile_character(ch: str) -> str | None:
    """What kind of character `ch` is, if a name must not contain it.

    Control characters break logs and emails (U+2028 cannot be in a mail header);
    bidi controls and zero-width characters make `invoice\u202efdp.exe` look like a PDF
    or two different names look the same to the people who read them.
    """
    code = ord(ch)
    if code in _NAMED:
        return _NAMED[code]
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return "a control character"
    return None


def reject_hostile_characters(path: str) -> None:
    """InvalidRequest naming the first character a file name may not hold."""
    for ch in path:
        kind = hostile_character(ch)
        if kind:
            raise InvalidRequest(f"file name contains {kind} (U+{ord(ch):04X})")


def normalize(path: str | bytes, cwd: str = "/") -> str:
    """Return the absolute, canonical virtual path for what the client sent."""
    if isinstance(path, bytes):
        try:
            path = path.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("path is not valid UTF-8") from None
    reject_hostile_characters(path)
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
        return _within_s3_limit(self._join(virtual))

    def dir_prefix(self, path: str | bytes) -> str:
        """The key prefix (ending in '/', or '' for the bucket root) of a directory."""
        virtual = normalize(path)
        base = self._join(virtual) if virtual != "/" else self.root
        return _within_s3_limit(base + "/") if base else ""

    def virtual(self, key: str) -> str:
        """The virtual path of a key inside this jail."""
        prefix = self.root + "/" if self.root else ""
        if not key.startswith(prefix):
            raise PermissionDenied("key is outside the home")
        return "/" + key[len(prefix) :].rstrip("/")

    def _join(self, virtual: str) -> str:
        relative = virtual.lstrip("/")
        return f"{self.root}/{relative}" if self.root else relative


def _within_s3_limit(key: str) -> str:
    """S3 keys are at most 1024 bytes of UTF-8: a longer path is the client's error,
    said before any request (S3 would answer a list with an HTTP 414)."""
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidRequest("path is too long for S3 (1024 bytes)")
    return key
