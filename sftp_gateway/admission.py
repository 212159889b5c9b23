"""Admission control before login: who may start an SSH handshake, and for how long.

sshd's vocabulary: LoginGraceTime (`server.auth_timeout`), MaxStartups and
PerSourceMaxStartups (unauthenticated connections, counted apart from the
authenticated ones under `server.max_connections`), MaxAuthTries; and SFTPGo's
defender: points per address for failed logins and protocol errors, and a ban shared
through the catalog once `server.ban.threshold` points fall within `server.ban.window`.
Limits, scores and bans count a source: an IPv4 address, or an IPv6 client's
`server.ipv6_source_prefix` network (addresses.source_of).

Every decision here is made without SQL and without blocking the accept loop: bans are
read from an in-process cache refreshed every BAN_CACHE_SECONDS, scores are written by
one background thread. A second thread (the watchdog) closes connections whose login
grace ran out and notices connections that ended or authenticated, so a flood of
held-open connections costs two threads in all, not one timer per connection.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sftp_gateway import logs, metrics
from sftp_gateway.addresses import source_of
from sftp_gateway.catalog.bans import BanStore
from sftp_gateway.config import BanConfig, ServerConfig

if TYPE_CHECKING:  # bans and scores need no paramiko: the supervisor's web uploads use them
    import paramiko

log = logging.getLogger(__name__)
BAN_CACHE_SECONDS = 2.0  # a ban set by another instance (or lifted) applies within this
SWEEP_SECONDS = 0.25  # how often ended and newly authenticated connections are noticed
PURGE_SECONDS = 300.0  # how often expired bans and scores are deleted
SCORE_QUEUE = 1000  # scores waiting to be written; beyond it they are dropped
_WAKE = ("", 0, "stop")  # put by stop(): the ban worker's wait ends at once

INVALID_USER = "invalid_user"
FAILED_KEY = "failed_key"
PROTOCOL_ERROR = "protocol_error"
NO_AUTH = "no_auth"
REFUSED = "refused"
REASONS = (INVALID_USER, FAILED_KEY, PROTOCOL_ERROR, NO_AUTH, REFUSED)


def points_for(config: BanConfig, reason: str) -> int:
    """The score of one event, from `server.ban.score_<reason>`."""
    if reason not in REASONS:
        raise ValueError(f"unknown score reason {reason!r}")
    return int(getattr(config, f"score_{reason}"))


def should_drop(unauthenticated: int, startups: tuple[int, int, int], draw: float) -> bool:
    """sshd's MaxStartups random early drop; `draw` is uniform in [0, 1)."""
    start, rate, full = startups
    if unauthenticated < start:
        return False
    if unauthenticated >= full:
        return True
    percent = rate + (100 - rate) * (unauthenticated - start) / max(full - start, 1)
    return draw * 100 < percent


@dataclass(eq=False)
class Ticket:
    """One admitted connection, from accept until it ends."""

    admission: Admission
    address: str
    source: str  # what limits and scores count: the address, or its IPv6 network
    sock: socket.socket
    deadline: float
    transport: paramiko.Transport | None = None
    authenticated: bool = False
    expired: bool = False
    ended: bool = False
    failures: int = 0
    points: int = 0
    reason: str = NO_AUTH
    on_end: Callable[[], None] | None = None  # called once by the watchdog when it ends
    # called once when the transport is authenticated (the signature verified): the
    # key query before it also passes check_auth_publickey, so login is known only here
    on_authenticated: Callable[[], None] | None = None

    def attach(self, transport: paramiko.Transport) -> None:
        """The watchdog watches this transport (authenticated? still open?)."""
        self.transport = transport

    def auth_failed(self, username: str) -> str:
        """Count a failed attempt; returns what failed ('invalid user' or 'failed key')."""
        self.failures += 1
        try:
            known = self.admission.user_exists(username)
        except Exception:  # the catalog is down: score the milder of the two
            known = True
        reason = FAILED_KEY if known else INVALID_USER
        self._score(reason)
        return reason.replace("_", " ")

    def handshake_failed(self) -> None:
        """A handshake that failed after the client's version line is a protocol error."""
        if not self.expired and self.transport is not None and self.transport.remote_version:
            self._score(PROTOCOL_ERROR)

    def _score(self, reason: str) -> None:
        self.points += points_for(self.admission.ban_config, reason)
        self.reason = reason

    def abandon(self) -> None:
        """The server could not set the connection up: close it and give its place back
        now, scoring nothing against the client."""
        self.close()
        with contextlib.suppress(OSError):
            self.sock.close()  # close() leaves it to the transport, which may not exist
        self.admission._end(self, score=False)

    def close(self) -> None:
        """Close the connection at whatever stage it is (waking any reader at once)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if self.transport is not None:  # else whoever is setting it up meets EOF and closes
            self.transport.close()


@dataclass
class _Counts:
    unauthenticated: dict[str, int] = field(default_factory=dict)
    authenticated: int = 0

    @property
    def unauthenticated_total(self) -> int:
        return sum(self.unauthenticated.values())

    def add(self, address: str) -> None:
        self.unauthenticated[address] = self.unauthenticated.get(address, 0) + 1

    def remove(self, address: str) -> None:
        left = self.unauthenticated.get(address, 0) - 1
        if left > 0:
            self.unauthenticated[address] = left
        else:
            self.unauthenticated.pop(address, None)


class Admission:
    """Connection accounting, login grace and ban decisions for one gateway process."""

    name = "admission"  # as a background worker (workers.Worker)

    def __init__(
        self,
        config: ServerConfig,
        bans: BanStore | None,
        user_exists: Callable[[str], bool],
        *,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.ban_config = config.ban
        self.user_exists = user_exists
        self._bans = bans if config.ban.enabled else None
        self._ipv6_prefix = config.ipv6_source_prefix
        self._draw = draw
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._tickets: set[Ticket] = set()
        self._deadlines: list[tuple[float, int, Ticket]] = []
        self._sequence = itertools.count()
        self._banned: dict[str, datetime] = {}
        self._scores: queue.Queue[tuple[str, int, str]] = queue.Queue(SCORE_QUEUE)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._refresh_bans()
        for name, target in (
            ("admission-watchdog", self._watch),
            ("admission-bans", self._ban_worker),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        with contextlib.suppress(queue.Full):  # a full queue: the worker is not waiting
            self._scores.put_nowait(_WAKE)
        for thread in self._threads:
            thread.join(timeout=5)

    # -- decisions -------------------------------------------------------------------

    def source(self, address: str) -> str:
        """The source `address` is counted and banned as."""
        return source_of(address, self._ipv6_prefix)

    def admit(self, address: str, sock: socket.socket) -> Ticket | None:
        """A Ticket for a connection allowed to start its handshake, or None (logged)."""
        source = self.source(address)
        until = self._ban_ends(source)
        if until is not None:
            log.warning(
                "refused %s: banned until %s",
                address,
                until.isoformat(timespec="seconds"),
                extra=logs.fields("refused", addr=address, reason="banned"),
            )
            metrics.refused("banned")
            return None
        refusal = self._reserve(address, source)
        if isinstance(refusal, str):
            reason = refusal.split(" ", 1)[0]  # the limit's name starts the text
            extra = logs.fields("refused", addr=address, reason=reason)
            log.warning("refused %s: %s", address, refusal, extra=extra)
            metrics.refused(refusal.split(" ", 1)[0])  # the limit's name starts the text
            return None
        deadline = time.monotonic() + self.config.auth_timeout
        ticket = Ticket(self, address, source, sock, deadline)
        with self._lock:
            self._tickets.add(ticket)
            heapq.heappush(self._deadlines, (ticket.deadline, next(self._sequence), ticket))
        self._wake.set()
        metrics.connection_accepted()
        return ticket

    def _reserve(self, address: str, source: str) -> str | None:
        """Count a new unauthenticated connection, or say why it is refused."""
        config = self.config
        with self._lock:
            counts = self._counts
            if counts.authenticated >= config.max_connections:
                return f"max_connections ({config.max_connections}) reached"
            if counts.unauthenticated.get(source, 0) >= config.per_source_max_startups:
                refusal = f"per_source_max_startups ({config.per_source_max_startups}) reached"
            elif should_drop(counts.unauthenticated_total, config.startups, self._draw()):
                total = counts.unauthenticated_total
                return f"max_startups ({config.max_startups}) at {total} unauthenticated"
            else:
                counts.add(source)
                return None
        self.report(address, REFUSED)
        return refusal

    def banned_until(self, address: str) -> datetime | None:
        """When the ban on the address's source ends, if it is banned now (from the
        cache); `address` may be the source already."""
        return self._ban_ends(self.source(address))

    def _ban_ends(self, source: str) -> datetime | None:
        if self._bans is None:
            return None
        until = self._banned.get(source)
        if until is None or until <= datetime.now(UTC):
            return None
        return until

    def report(self, address: str, reason: str) -> None:
        """Score an event from `address` (one of REASONS), e.g. a protocol violation
        detected elsewhere; written in the background, never blocks the caller."""
        if self._bans is None or self.ban_config.allows(address):
            return
        points = points_for(self.ban_config, reason)
        if points <= 0:
            return
        try:
            self._scores.put_nowait((self.source(address), points, reason))
        except queue.Full:
            log.debug("score queue full: %s %s not recorded", address, reason)

    def counts(self) -> tuple[int, int]:
        """(unauthenticated, authenticated) connections now."""
        with self._lock:
            return self._counts.unauthenticated_total, self._counts.authenticated

    # -- the watchdog ----------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self._expire_due(time.monotonic())
                self._sweep()
            except Exception:  # one bad connection must not end login grace for all
                log.exception("admission watchdog: a round failed; going on")
            with self._lock:
                next_deadline = self._deadlines[0][0] if self._deadlines else None
            wait = SWEEP_SECONDS
            if next_deadline is not None:
                wait = max(0.0, min(wait, next_deadline - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()

    def _expire_due(self, now: float) -> None:
        due: list[Ticket] = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                ticket = heapq.heappop(self._deadlines)[2]
                if not ticket.ended and not ticket.authenticated:
                    due.append(ticket)
        for ticket in due:
            if ticket.transport is not None and ticket.transport.is_authenticated():
                self._promote(ticket)
                continue
            ticket.expired = True
            log.warning(
                "refused %s: not authenticated within %gs",
                ticket.address,
                self.config.auth_timeout,
                extra=logs.fields("refused", addr=ticket.address, reason="auth_timeout"),
            )
            metrics.refused("auth_timeout")
            ticket.close()
            self._end(ticket)

    def _sweep(self) -> None:
        with self._lock:
            tickets = [t for t in self._tickets if t.transport is not None]
        if not tickets:
            return
        from sftp_gateway import sshcompat  # only SSH connections have transports

        for ticket in tickets:
            transport = ticket.transport
            assert transport is not None
            # A session shorter than a sweep is still a login, not a failure to score.
            if not ticket.authenticated and sshcompat.was_authenticated(transport):
                self._promote(ticket)
            if not transport.is_active():
                self._end(ticket)

    def _promote(self, ticket: Ticket) -> None:
        """An authenticated connection moves from max_startups to max_connections."""
        with self._lock:
            if ticket.ended or ticket.authenticated:
                return
            over = self._counts.authenticated >= self.config.max_connections
            ticket.authenticated = True
            self._counts.remove(ticket.source)
            self._counts.authenticated += 1
        if over:
            log.warning(
                "refused %s: max_connections (%d) reached",
                ticket.address,
                self.config.max_connections,
                extra=logs.fields("refused", addr=ticket.address, reason="max_connections"),
            )
            metrics.refused("max_connections")
            ticket.close()
            self._end(ticket)
            return
        if ticket.on_authenticated is not None:
            try:
                ticket.on_authenticated()
            except Exception:
                log.exception("login bookkeeping failed for %s", ticket.address)

    def _end(self, ticket: Ticket, *, score: bool = True) -> None:
        """Release a connection's place; an unauthenticated end is scored."""
        with self._lock:
            if ticket.ended:
                return
            ticket.ended = True
            self._tickets.discard(ticket)
            if ticket.authenticated:
                self._counts.authenticated -= 1
            else:
                self._counts.remove(ticket.source)
        if score and not ticket.authenticated:
            self._score_end(ticket)
        if ticket.on_end is not None:  # the session-end log line
            ticket.on_end()

    def _score_end(self, ticket: Ticket) -> None:
        if self._bans is None or self.ban_config.allows(ticket.address):
            return
        points = ticket.points or self.ban_config.score_no_auth
        if points > 0:
            try:
                self._scores.put_nowait((ticket.source, points, ticket.reason))
            except queue.Full:
                log.debug("score queue full: %s not recorded", ticket.address)

    # -- bans --------------------------------------------------------------------------

    def _ban_worker(self) -> None:
        next_refresh = time.monotonic() + BAN_CACHE_SECONDS
        next_purge = time.monotonic()
        while not self._stopping.is_set():
            try:
                item = self._scores.get(timeout=max(0.05, next_refresh - time.monotonic()))
            except queue.Empty:
                pass
            else:
                if item is not _WAKE:
                    self._record_score(*item)
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh_bans()
                next_refresh = now + BAN_CACHE_SECONDS
            if now >= next_purge:
                self._purge()
                next_purge = now + PURGE_SECONDS

    def _record_score(self, source: str, points: int, reason: str) -> None:
        if self._bans is None or self._ban_ends(source) is not None:
            return
        config = self.ban_config
        try:
            ban = self._bans.add_score(
                source,
                points,
                reason,
                window=config.window,
                threshold=config.threshold,
                duration=config.duration,
            )
        except Exception as exc:  # the catalog being down must not stop admissions
            log.warning("could not record score for %s: %s", source, exc)
            return
        if ban is not None:
            self._banned[source] = ban.banned_until
            metrics.ban_created()
            log.warning(
                "banned %s until %s: score %d within %gs (last: %s)",
                source,
                ban.banned_until.isoformat(timespec="seconds"),
                ban.score,
                config.window,
                reason,
                extra=logs.fields("ban", addr=source, reason=reason, until=ban.banned_until),
            )

    def _refresh_bans(self) -> None:
        if self._bans is None:
            return
        try:
            bans = self._bans.active_bans()
        except Exception as exc:
            log.warning("could not read bans from the catalog: %s", exc)
            return
        self._banned = {ban.address: ban.banned_until for ban in bans}
        metrics.bans_active.set(len(self._banned))

    def _purge(self) -> None:
        if self._bans is None:
            return
        try:
            self._bans.purge_expired(self.ban_config.window)
        except Exception as exc:
            log.warning("could not purge expired bans: %s", exc)
