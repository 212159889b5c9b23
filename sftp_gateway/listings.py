"""A session's short-lived view of the directories it STATs in bursts.

Clients that upload many files (OpenSSH `put` with a target name, WinSCP, FileZilla)
STAT each name before they open it. Asking S3 each time costs a ListObjectsV2 per file:
about a third of the gateway's CPU for a 100 KB file. When a session STATs several
names of one directory within `ttl` seconds, one listing of that directory answers
the following STATs until it is `ttl` old.

The view also holds the directory's resumable uploads (the catalog's, read with the
listing), which a STAT shows at their resumable size: one query per listing, not one
per name.

What it may get wrong, and why that is bounded: another session's change to a name in
that directory (an object or a resumable upload) can be seen up to `ttl` seconds late
by this session's STAT. This session's own changes never are: every name it writes,
removes or renames bypasses the view from then on. An OPEN always asks the catalog
itself. Directories larger than one listing page are never cached.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sftp_gateway.errors import StorageError
from sftp_gateway.storage.base import ObjectInfo, Probe, Storage

R = TypeVar("R")  # what the catalog says of a resumable upload
UNSEEN = Probe(None, False)  # what a probe that storage could not answer leaves known

BURST = 3  # misses in one directory within ttl before it is listed once
MAX_ENTRIES = 1000  # one ListObjectsV2 page; a larger directory is always asked per name
MAX_TOUCHED = 50_000  # names this session changed; past this, the view turns itself off
LARGE_DIRECTORY_SECONDS = 60.0  # how long a too-large directory is not listed again


def _split(key: str) -> tuple[str, str]:
    """(the key's directory prefix, its name); "" for a user whose home is the root."""
    parent, _, name = key.rpartition("/")
    return (parent + "/" if parent else ""), name


@dataclass
class _View(Generic[R]):
    """One directory's entries as listed until `expires_at`, or its recent misses."""

    expires_at: float = 0.0
    files: dict[str, ObjectInfo] | None = None  # None: not listed (too large, or not yet)
    dirs: frozenset[str] = frozenset()
    resumable: dict[str, R] = field(default_factory=dict)  # key -> its resumable upload
    misses: list[float] = field(default_factory=list)


class RecentListings(Generic[R]):
    """Answers `probe(key)` and `resumable(key)` from a recent listing of the key's
    directory when the session is STATing that directory in a burst, else from S3 and
    the catalog (`resumable_one(key)`, `resumable_under(prefix)`)."""

    def __init__(
        self,
        storage: Storage,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        resumable_one: Callable[[str], R | None] = lambda _key: None,
        resumable_under: Callable[[str], dict[str, R]] = lambda _prefix: {},
    ) -> None:
        self._storage = storage
        self._ttl = ttl
        self._clock = clock
        self._resumable_one = resumable_one
        self._resumable_under = resumable_under
        self._views: dict[str, _View[R]] = {}
        self._touched: set[str] = set()
        self._enabled = ttl > 0
        self._last: tuple[str, Probe, float] | None = None  # the last name probed
        self._not_files: dict[str, float] = {}  # key -> until when S3's "no object" holds

    def probe(self, key: str) -> Probe:
        """File, directory or nothing, as S3 says now or said less than `ttl` ago."""
        if not self._enabled:
            return self._storage.probe(key)
        try:
            found = self._probe(key)
        except StorageError:  # S3 could not say: an OPEN next goes ahead without asking
            self._last = (key, UNSEEN, self._clock())
            raise
        self._last = (key, found, self._clock())
        return found

    def last_probe(self, key: str) -> Probe | None:
        """What the STAT just before said of `key` (OpenSSH STATs a name, then opens
        it), if that was this session's last probe, less than `ttl` ago; else None.
        A STAT that storage could not answer gives UNSEEN (nothing known there): the
        OPEN does not wait on S3 a second time, its upload meets the outage itself."""
        if self._last is None or self._last[0] != key:
            return None
        _, found, at = self._last
        return found if self._clock() - at < self._ttl else None

    def _probe(self, key: str) -> Probe:
        if key in self._touched:
            return self._storage.probe(key)
        prefix, name = _split(key)
        now = self._clock()
        view = self._views.get(prefix)
        if view is None or now >= view.expires_at:
            view = self._refresh(prefix, view, now)
        if view.files is None:
            return self._storage.probe(key)
        return Probe(view.files.get(name), name in view.dirs)

    def is_file(self, key: str) -> bool:
        """Whether an object is stored at `key`. S3's "no" is believed for `ttl`: a burst
        of uploads into one directory asks whether that directory is a file once."""
        now = self._clock()
        if self._not_files.get(key, 0.0) > now:
            return False
        found = self._storage.head(key) is not None
        if not found and self._enabled:
            if len(self._not_files) >= MAX_ENTRIES:
                self._not_files.clear()
            self._not_files[key] = now + self._ttl
        return found

    def resumable(self, key: str) -> R | None:
        """The key's resumable upload, from the directory's fresh listing if it has one
        (call before `probe`, which is what lists a directory)."""
        if self._enabled and key not in self._touched:
            view = self._views.get(_split(key)[0])
            if view is not None and view.files is not None and self._clock() < view.expires_at:
                return view.resumable.get(key)
        return self._resumable_one(key)

    def touched(self, key: str) -> None:
        """This session changed `key` (wrote, removed, renamed): always ask S3 for it,
        and for the directories above it (a write into `a/b/` makes `a/b` exist)."""
        if not self._enabled:
            return
        if self._last is not None and self._last[0] == key:
            self._last = None
        self._not_files.pop(key, None)
        self._views.pop(key + "/", None)  # it may have been a directory
        path = key
        while path:  # a directory's own listing stays: its touched names bypass it
            self._touched.add(path)
            path = path.rpartition("/")[0]
        if len(self._touched) > MAX_TOUCHED:
            self._enabled = False
            self._views.clear()
            self._touched.clear()

    def _refresh(self, prefix: str, view: _View[R] | None, now: float) -> _View[R]:
        """Count a miss; list the directory once misses come in a burst."""
        misses = [t for t in (view.misses if view else []) if now - t < self._ttl]
        misses.append(now)
        fresh = self._list(prefix, now) if len(misses) >= BURST else _View(misses=misses)
        self._views[prefix] = fresh
        return fresh

    def _list(self, prefix: str, now: float) -> _View[R]:
        entries = list(itertools.islice(self._storage.list_dir(prefix), MAX_ENTRIES + 1))
        if len(entries) > MAX_ENTRIES:
            return _View(expires_at=now + max(self._ttl, LARGE_DIRECTORY_SECONDS))
        files = {
            e.name: ObjectInfo(prefix + e.name, e.size, e.modified) for e in entries if not e.is_dir
        }
        dirs = frozenset(e.name for e in entries if e.is_dir)
        resumable = self._resumable_under(prefix)
        return _View(expires_at=now + self._ttl, files=files, dirs=dirs, resumable=resumable)
