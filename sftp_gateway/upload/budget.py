"""One byte budget for all uploads of the process, shared fairly between users.

Per-upload bounds alone do not bound a process: 256 connections x 5 part buffers is
gigabytes. Like s3transfer's TaskSemaphore, every buffer an upload holds is acquired
here first and released when it is no longer needed (the part is in S3, the upload
ended). When the budget is spent the writer waits: the SFTP thread stops reading, the
SSH window closes, the client slows down. Past `wait_timeout` the write fails with a
clear message instead of allocating. A per-user share keeps one user's idle uploads
from starving everybody else; a per-upload `Lease` releases all it holds at the end,
so nothing leaks whatever way an upload ends.

The same class budgets disk for spilled out-of-order writes (no waiting there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from sftp_gateway.errors import GatewayError

log = logging.getLogger(__name__)


class ServerBusy(GatewayError):
    """A process-wide resource (upload memory, spill disk) is spent; retry later."""


@dataclass(frozen=True)
class Owner:
    """Who a lease is charged to (the user) and where they connect from (for the log)."""

    user: str
    source: str | None = None


class ByteBudget:
    """Bytes shared by all uploads: `total` at most, `per_user` for any one user."""

    def __init__(
        self, total: int, *, per_user: int | None = None, wait_timeout: float = 0.0, what: str
    ) -> None:
        self.total = total
        self.per_user = per_user if per_user is not None else total
        self.wait_timeout = wait_timeout
        self.what = what  # "upload memory", "spill disk": for messages and the log
        self._in_use = 0
        self._by_user: dict[str, int] = defaultdict(int)
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._changed:
            return self._in_use

    def in_use_by(self, user: str) -> int:
        with self._changed:
            return self._by_user.get(user, 0)

    def lease(self, owner: Owner, ceiling: int | None = None) -> Lease:
        return Lease(self, owner, ceiling)

    def try_acquire(self, n: int, owner: Owner) -> bool:
        """Take `n` bytes now if they are free; never waits."""
        with self._changed:
            if not self._fits(n, owner.user):
                return False
            self._take(n, owner.user)
            return True

    def acquire(self, n: int, owner: Owner, timeout: float | None = None) -> None:
        """Take `n` bytes, waiting up to `timeout` (default: the budget's) for them;
        ServerBusy (one WARNING line naming the source) if they never come free."""
        wait = self.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._changed:
            while not self._fits(n, owner.user):
                left = deadline - time.monotonic()
                if n > min(self.per_user, self.total) or left <= 0:
                    self._refuse(n, owner)
                self._changed.wait(left)
            self._take(n, owner.user)

    def release(self, n: int, owner: Owner) -> None:
        if n <= 0:
            return
        with self._changed:
            self._in_use -= n
            left = self._by_user[owner.user] - n
            if left > 0:
                self._by_user[owner.user] = left
            else:
                del self._by_user[owner.user]
            self._changed.notify_all()

    def _fits(self, n: int, user: str) -> bool:
        return self._in_use + n <= self.total and self._by_user.get(user, 0) + n <= self.per_user

    def _take(self, n: int, user: str) -> None:
        self._in_use += n
        self._by_user[user] += n

    def _refuse(self, n: int, owner: Owner) -> None:
        mine = self._by_user.get(owner.user, 0)
        log.warning(
            "refused %s to %s from %s: %d bytes wanted, user holds %d of %d, process %d of %d",
            self.what,
            owner.user,
            owner.source or "unknown",
            n,
            mine,
            self.per_user,
            self._in_use,
            self.total,
        )
        raise ServerBusy(f"server is busy: {self.what} exhausted, try again later")


class Lease:
    """What one upload (or one reorder buffer) holds of a budget; `close` gives it all
    back, so an upload that ends any way at all leaks nothing."""

    def __init__(self, budget: ByteBudget, owner: Owner, ceiling: int | None = None) -> None:
        self.budget = budget
        self.owner = owner
        self.ceiling = ceiling
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def raise_ceiling(self, ceiling: int) -> None:
        """An upload whose parts grow (s3limits.PartSchedule) needs more per buffer; the
        budget, not this ceiling, is what bounds the process."""
        with self._lock:
            if self.ceiling is not None and ceiling > self.ceiling:
                self.ceiling = ceiling

    def acquire(self, n: int, timeout: float | None = None) -> None:
        """Take `n` bytes (waiting as the budget does); the per-upload ceiling is what
        an upload structurally needs, so passing it is a bug, not a busy server."""
        if self.ceiling is not None and self._held + n > self.ceiling:
            raise RuntimeError(f"lease over its ceiling: {self._held} + {n} > {self.ceiling}")
        self.budget.acquire(n, self.owner, timeout)
        with self._lock:
            self._held += n

    def try_acquire(self, n: int) -> bool:
        if self.ceiling is not None and self._held + n > self.ceiling:
            return False
        if not self.budget.try_acquire(n, self.owner):
            return False
        with self._lock:
            self._held += n
        return True

    def release(self, n: int) -> None:
        with self._lock:
            n = min(n, self._held)
            self._held -= n
        self.budget.release(n, self.owner)

    def close(self) -> None:
        """Give back everything still held (idempotent)."""
        with self._lock:
            n, self._held = self._held, 0
        self.budget.release(n, self.owner)
