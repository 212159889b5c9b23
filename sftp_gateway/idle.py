"""Idle timeout and keepalives for authenticated connections.

sshd's ClientAliveInterval finds dead peers, not idle ones: a client that holds a
connection open and sends nothing keeps a slot forever. `IdleWatcher` closes an
authenticated connection whose channels moved no data for `server.idle_timeout`
seconds (SFTPGo's idle_timeout, sshd's ChannelTimeout), and turns on paramiko's
keepalive (`server.keepalive_interval`) for each connection once it has logged in
(an SSH global request before authentication would break OpenSSH clients).

What counts as traffic is channel data, both ways; SSH keepalives and rekeys do not.
It is polled, not hooked, so no code runs per packet: each tick compares every
channel's flow-control counters with the last tick's. Time the server is the one
holding things up is never the client's idle time: a channel with unread input (the
server is behind, e.g. a write waits for a slow S3) or an SFTP request being handled
keeps the connection busy. A client that stops reading a download is idle, and so is
one that queues requests and never reads their replies (the server, out of send window,
stops reading its input: that unread input is the client's doing).

The paramiko internals this reads (flow-control counters, the transport's server
object) are read through sshcompat.py, where each is named and tested.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

import paramiko

from sftp_gateway import logs, sshcompat
from sftp_gateway.config import ServerConfig
from sftp_gateway.sessions import SessionRegistry
from sftp_gateway.workers import PeriodicWorker

log = logging.getLogger(__name__)
MAX_TICK = 1.0


class ConnectionActivity:
    """When one connection last moved channel data, as its watcher sees it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._channels: list[paramiko.Channel] = []
        self._counters: dict[int, tuple[int, int]] = {}
        self._working: set[int] = set()
        self._lock = threading.Lock()

    def watch(self, channel: paramiko.Channel) -> None:
        """Count this channel's traffic (a session channel once it runs SFTP or SCP)."""
        with self._lock:
            self._channels.append(channel)
        self.touch()

    def touch(self) -> None:
        self._last = self._clock()

    def start_work(self, worker: object) -> None:
        """The server is handling a request for `worker`: not the client's idle time."""
        self._working.add(id(worker))

    def end_work(self, worker: object) -> None:
        if id(worker) in self._working:
            self._working.discard(id(worker))
            self.touch()

    def idle_seconds(self) -> float:
        """Seconds since channel data last moved, 0 while the server is busy."""
        now = self._clock()
        if self._working or self._channels_moved():
            self._last = now
        return now - self._last

    def _channels_moved(self) -> bool:
        moved = False
        with self._lock:
            self._channels = [channel for channel in self._channels if not channel.closed]
            for channel in self._channels:
                flow = sshcompat.channel_activity(channel)
                # Unread input is the server's delay, unless the server stopped reading
                # because the client does not read its replies (no send window left).
                server_behind = flow.unread and flow.send_window > 0
                if server_behind or self._counters.get(channel.chanid) != flow.counters:
                    moved = True
                self._counters[channel.chanid] = flow.counters
        return moved


class IdleWatcher(PeriodicWorker):
    """One thread for the process: keepalives on, idle connections closed."""

    name = "idle"

    def __init__(self, sessions: SessionRegistry, config: ServerConfig) -> None:
        self.sessions = sessions
        self.idle_timeout = config.idle_timeout
        self.keepalive_interval = config.keepalive_interval
        super().__init__(min(MAX_TICK, self.idle_timeout / 4) if self.idle_timeout else MAX_TICK)
        self._seen: weakref.WeakSet[paramiko.Transport] = weakref.WeakSet()

    def start(self) -> None:
        if self.idle_timeout or self.keepalive_interval:
            super().start()

    def run_once(self) -> int:
        return self.check_once()

    def check_once(self) -> int:
        """Start keepalives on new sessions, close the idle ones; returns how many."""
        closed = 0
        for session in self.sessions.live():
            transport = session.transport
            if transport not in self._seen:
                self._seen.add(transport)
                if self.keepalive_interval:
                    transport.set_keepalive(self.keepalive_interval)
            activity = getattr(sshcompat.server_object(transport), "activity", None)
            if not self.idle_timeout or not isinstance(activity, ConnectionActivity):
                continue
            if activity.idle_seconds() >= self.idle_timeout:
                log.warning(
                    "session of %s from %s closed: idle for %ss",
                    session.principal.name,
                    session.client_ip,
                    f"{self.idle_timeout:g}",
                    extra=logs.fields(
                        "session.closed",
                        user=session.principal.name,
                        addr=session.client_ip,
                        reason="idle_timeout",
                    ),
                )
                transport.close()
                closed += 1
        return closed
