"""A SHA-256 whose state can be saved and restored, so a resumed upload's hash covers
the whole file; it hashes without holding the GIL and without copying buffers.

hashlib cannot export its state. This drives OpenSSL's one-shot-free SHA-256 API
(SHA256_Init/Update/Final, in the same libcrypto hashlib uses) through ctypes: the
context is a plain 112-byte struct we own, so saving it is copying those bytes, and
ctypes releases the GIL during each call, so hashing runs beside paramiko's threads.
Results are checked against hashlib in tests/test_sha256.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

CONTEXT_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len (uint32 each)


@cache
def _libcrypto() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypto")
    if name is None:
        raise RuntimeError("libcrypto (OpenSSL) not found")
    lib = ctypes.CDLL(name)
    lib.SHA256_Init.argtypes = [ctypes.c_void_p]
    lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    return lib


class ResumableSha256:
    """SHA-256 over buffers (bytes, bytearray, memoryview) with a savable state."""

    def __init__(self, state: bytes | None = None) -> None:
        self._context = ctypes.create_string_buffer(CONTEXT_SIZE)
        if state is None:
            _libcrypto().SHA256_Init(self._context)
        else:
            if len(state) != CONTEXT_SIZE:
                raise ValueError("not a SHA-256 state saved by this gateway")
            ctypes.memmove(self._context, state, CONTEXT_SIZE)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if not view.nbytes:
            return
        pointer: ctypes.c_void_p | int
        if view.readonly:  # bytes: ctypes takes its buffer without a copy
            pointer = ctypes.cast(ctypes.c_char_p(view.obj), ctypes.c_void_p)  # type: ignore[arg-type]
            if view.obj is not data or view.nbytes != len(view.obj):  # type: ignore[arg-type]
                data = bytes(view)  # a slice of bytes: copy that slice only
                pointer = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
        else:
            pointer = ctypes.addressof(ctypes.c_char.from_buffer(view))
        _libcrypto().SHA256_Update(self._context, pointer, view.nbytes)

    def state(self) -> bytes:
        """The running state, to store and later resume from."""
        return self._context.raw

    def hexdigest(self) -> str:
        """The digest so far (the running state is left untouched)."""
        final = ctypes.create_string_buffer(CONTEXT_SIZE)
        ctypes.memmove(final, self._context, CONTEXT_SIZE)
        digest = ctypes.create_string_buffer(32)
        _libcrypto().SHA256_Final(digest, final)
        return digest.raw.hex()
