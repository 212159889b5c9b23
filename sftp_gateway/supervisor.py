"""`serve --workers N`: one listening socket, N worker processes, one supervisor.

One gateway process uses one core (SSH crypto and framing run in Python threads under
the GIL), so `serve` starts N workers that accept on the same socket. The supervisor:

- binds `server.listen` once and starts each worker as a fresh interpreter
  (`sftp-gateway serve --worker-of FD:INDEX:N:PPID`) that inherits the socket's fd:
  spawned, never forked, so no boto3 client, SQLAlchemy pool or thread crosses over;
- runs what must run once per host: crash recovery of identities no worker has,
  the outbox dispatcher, the periodic gc, the admin listener (admin.listen) and the
  browser upload links (WebUploads: its own pipeline, one (N+1)th of the memory budget);
- gives every process one metrics directory (prometheus_client multiprocess mode), so
  /metrics sums the workers' counters;
- replaces a worker that died (logged, with backoff), and one that is stuck: a worker's
  accept loop touches a heartbeat file at every turn, and one silent for
  server.worker_timeout has its threads' stacks logged, then is killed and replaced;
- on SIGTERM/SIGINT forwards SIGTERM to every worker, waits up to drain_timeout + a
  margin, then SIGKILLs the rest.

It never imports paramiko. Workers share only the catalog: bans, resume leases and
upload rows. Worker i records its uploads as `INSTANCE/wi`, so a replaced worker
recovers its predecessor's uploads at start and never another live worker's. Each
worker gets uploads.memory_budget / N (/ (N+1) with upload links); per-process limits
apply per worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from sftp_gateway import metrics
from sftp_gateway.backoff import Backoff
from sftp_gateway.config import ServerConfig, Settings
from sftp_gateway.errors import ConfigError

log = logging.getLogger(__name__)
DRAIN_MARGIN = 15.0  # beyond drain_timeout: for sessions to close out their uploads
STACKS_SIGNAL = signal.SIGUSR1  # a stuck worker writes its threads' stacks to stderr
STACKS_WAIT = 0.5  # seconds for it to write them before SIGKILL
RESTART_BACKOFF = Backoff(base=0.5, cap=30.0)
HEALTHY_AFTER = 60.0  # a worker that lived this long starts its backoff over
HOST_KEYS_WAIT = 60.0  # worker 0 generates missing host keys before the others start
CONFIG_EXIT = 2  # a worker that exits 2 met a config error: restarting cannot help
CLOSE_OUT_SECONDS = 10.0  # at stop: for cut browser uploads to record themselves
HEARTBEAT_EVERY = 1.0  # seconds between a worker's touches of its heartbeat file
BOOT_GRACE = 120.0  # before its first heartbeat: interpreter start, recovery of uploads
PR_SET_PDEATHSIG = 1
# hostkeys.HOST_KEYS' files (that module imports paramiko; tests/test_workers.py checks)
HOST_KEY_FILES = ("ssh_host_ed25519_key", "ssh_host_rsa_key")


def bind_listener(server: ServerConfig) -> socket.socket:
    """The SFTP listening socket on server.listen; a busy or forbidden address fails
    naming the field."""
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((server.host, server.port))
    except OSError as exc:
        listener.close()
        raise ConfigError(
            f"server.listen: cannot listen on {server.listen}: {exc.strerror}"
        ) from None
    listener.listen(128)
    return listener


# -- how many, and what each worker gets -----------------------------------------------


def worker_count(settings: Settings, requested: int | None) -> int:
    """--workers, else server.workers, else one per core as far as the memory budget
    lets each worker hold a user's share of at least one part."""
    chosen = requested or settings.server.workers
    if chosen is not None:
        _check_split(settings, chosen)
        return chosen
    affordable = settings.uploads.memory_budget // (4 * settings.storage.part_size)
    return max(1, min(os.cpu_count() or 1, affordable))


def serves_web_uploads(settings: Settings) -> bool:
    """Browser upload links are served when a listener carries them: web.listen, or
    the admin listener under /u/."""
    return bool(settings.web.listen or settings.admin.listen)


def budget_shares(settings: Settings, count: int) -> int:
    """How many equal shares uploads.memory_budget is cut into: one per worker, and
    one more for the supervisor's browser uploads when it serves upload links."""
    return count + 1 if count > 1 and serves_web_uploads(settings) else count


def _check_split(settings: Settings, count: int) -> None:
    """Each share of uploads.memory_budget must hold a user's part buffer."""
    uploads = settings.uploads
    share = uploads.memory_budget // budget_shares(settings, count)
    per_user = min(uploads.memory_per_user or share // 4, share)
    if count > 1 and per_user < settings.storage.part_size:
        raise ConfigError(
            f"server.workers: {count} workers leave each {share // 2**20} MiB of"
            f" uploads.memory_budget, too little for one storage.part_size per user;"
            " raise uploads.memory_budget or lower server.workers"
        )


def _with_share(settings: Settings, identity: str, count: int) -> Settings:
    """`settings` for one process of `count` workers: its identity in the catalog
    (INSTANCE/identity) and its share of the memory budget."""
    server = settings.server.model_copy(
        update={"instance_id": f"{settings.server.instance_id[:120]}/{identity}", "workers": 1}
    )
    uploads = settings.uploads
    share = uploads.memory_budget // budget_shares(settings, count)
    per_user = min(uploads.memory_per_user, share) if uploads.memory_per_user else None
    shared = uploads.model_copy(update={"memory_budget": share, "memory_per_user": per_user})
    return settings.model_copy(update={"server": server, "uploads": shared})


def worker_settings(settings: Settings, index: int, count: int) -> Settings:
    """Worker `index` of `count`: its own identity in the catalog and its share of
    the memory budget."""
    return _with_share(settings, f"w{index}", count)


def web_settings(settings: Settings, count: int) -> Settings:
    """The supervisor's browser uploads: identity INSTANCE/web (recovered by the next
    supervisor at start) and one share of the memory budget."""
    return _with_share(settings, "web", count)


def worker_identities(settings: Settings, count: int) -> set[str]:
    return {f"{settings.server.instance_id[:120]}/w{i}" for i in range(count)}


# -- the worker side ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor tells a worker on its command line:
    FD:INDEX:COUNT:PPID:HEARTBEAT_FILE (the path last: it may hold a colon)."""

    fd: int
    index: int
    count: int
    parent: int
    heartbeat: Path

    def text(self) -> str:
        return f"{self.fd}:{self.index}:{self.count}:{self.parent}:{self.heartbeat}"

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        try:
            *numbers, heartbeat = text.split(":", 4)
            fd, index, count, parent = (int(part) for part in numbers)
        except ValueError:
            raise ConfigError(
                f"--worker-of: {text!r} is not FD:INDEX:COUNT:PPID:HEARTBEAT_FILE"
            ) from None
        return cls(fd, index, count, parent, Path(heartbeat))


class Heartbeat:
    """A worker's sign of life: its accept loop touches a file, at most once a
    second; the supervisor watches the file's mtime change. A file, not a pipe: a stuck
    worker cannot block the supervisor, and nothing is left to read when it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = -HEARTBEAT_EVERY
        self._warned = False

    def beat(self) -> None:
        """Touch the file; never raises, since it runs in the accept loop. Its directory
        removed (a /tmp cleaner) is made again; another failure is logged once, and the
        supervisor will then see the worker as stuck and replace it."""
        now = time.monotonic()
        if now - self._last < HEARTBEAT_EVERY:
            return
        self._last = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write the heartbeat file %s: %s", self.path, exc)
                self._warned = True

    @staticmethod
    def stamp(path: Path) -> int | None:
        """The last beat's mark (the file's mtime); None before the first. Only whether
        it changed counts, never its value: a step of the wall clock (NTP, a resumed VM)
        must not make every worker look stuck at once."""
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return None


def die_with_parent(parent: int) -> None:
    """A worker must not outlive its supervisor (even one killed with -9): Linux sends
    it SIGTERM then, and it drains like any stop."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM still comes
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_worker(settings: Settings, catalog: Any, spec: WorkerSpec) -> None:
    """Serve on the inherited socket until SIGTERM, then drain (Gateway.run)."""
    from sftp_gateway.app import Gateway

    # A worker that does not stop in time shows where it is stuck before it is killed.
    faulthandler.register(STACKS_SIGNAL, all_threads=True)
    listener = socket.socket(fileno=spec.fd)
    mine = worker_settings(settings, spec.index, spec.count)
    beats = Heartbeat(spec.heartbeat).beat
    gateway = Gateway(mine, catalog=catalog, listener=listener, host_jobs=False, heartbeat=beats)

    def started(address: tuple[str, int]) -> None:
        log.info(
            "worker %d of %d (pid %d) serving on %s:%s as %s",
            spec.index,
            spec.count,
            os.getpid(),
            *address,
            mine.server.instance_id,
        )

    gateway.run(on_started=started)
    exit_after_drain(spec.index)


def exit_after_drain(index: int) -> None:
    """End a drained worker now: its uploads are closed out and its rows written, so
    nothing is left for the interpreter's teardown to wait for. A thread that is still
    not a daemon is named (a teardown would join it and hang past the supervisor's
    deadline); then logs are flushed and the process exits 0."""
    lingering = [
        thread.name
        for thread in threading.enumerate()
        if not thread.daemon and thread is not threading.main_thread() and thread.is_alive()
    ]
    if lingering:
        log.warning("worker %d: threads still running at exit: %s", index, ", ".join(lingering))
    log.info("worker %d (pid %d) stopped", index, os.getpid())
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


# -- the supervisor side -----------------------------------------------------------------


@dataclass
class WorkerProcess:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    heartbeat: Path = Path()
    last_stamp: int | None = None  # the heartbeat's mtime when last seen to change
    alive_at: float = 0.0  # monotonic: when it last changed (or the worker started)


@dataclass
class Supervisor:
    """Starts, watches, replaces and drains the workers; runs the once-per-host jobs."""

    settings: Settings
    catalog: Any
    count: int
    config_path: Path
    verbose: bool = False
    workers: list[WorkerProcess] = field(default_factory=list)
    exit_code: int = 0
    _heartbeats: Path = field(default_factory=Path, init=False)  # made by run()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the metrics of every process go to a private
        directory (prometheus_client's multiprocess mode), removed at exit."""
        listener = bind_listener(self.settings.server)
        listener.set_inheritable(True)
        metrics_dir = tempfile.mkdtemp(prefix="sftp-gateway-metrics-")
        metrics.use_multiprocess(metrics_dir)  # before any job counts; workers inherit it
        self._heartbeats = Path(tempfile.mkdtemp(prefix="sftp-gateway-heartbeats-"))
        try:
            jobs = HostJobs(self.settings, self.catalog, self.count)
            return self._supervise(listener, jobs)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            shutil.rmtree(self._heartbeats, ignore_errors=True)

    def _supervise(self, listener: socket.socket, jobs: HostJobs) -> int:
        from sftp_gateway.signals import POLL_SECONDS, capture_signals

        with capture_signals(on_force=self._force) as stop:
            try:
                jobs.start(worker_identities(self.settings, self.count))
                log.info(
                    "supervisor (pid %d) listening on %s with %d workers",
                    os.getpid(),
                    self.settings.server.listen,
                    self.count,
                )
                self._start_all(listener, stop)
                while not self.exit_code:
                    time.sleep(POLL_SECONDS)  # not stop.wait(): see sleep_until_stopped
                    if stop.is_set():
                        break
                    self._watch(listener)
            finally:
                self._drain()
                listener.close()
                jobs.stop()
        return self.exit_code

    def _start_all(self, listener: socket.socket, stop: Any) -> None:
        self.workers = [
            WorkerProcess(i, heartbeat=self._heartbeats / f"worker-{i}") for i in range(self.count)
        ]
        self._spawn(self.workers[0], listener)
        self._wait_for_host_keys(self.workers[0], stop)
        for worker in self.workers[1:]:
            self._spawn(worker, listener)

    def _wait_for_host_keys(self, first: WorkerProcess, stop: Any) -> None:
        """Worker 0 generates missing host keys; the others start once they exist, so
        two workers never write the same key file."""
        directory = self.settings.server.host_keys_dir
        deadline = time.monotonic() + HOST_KEYS_WAIT
        while time.monotonic() < deadline and not stop.is_set():
            if all((directory / name).exists() for name in HOST_KEY_FILES):
                return
            if first.process is not None and first.process.poll() is not None:
                return
            time.sleep(0.05)

    def _spawn(self, worker: WorkerProcess, listener: socket.socket) -> None:
        worker.heartbeat.unlink(missing_ok=True)  # the one before it may have left its own
        spec = WorkerSpec(
            listener.fileno(), worker.index, self.count, os.getpid(), worker.heartbeat
        )
        command = [sys.executable, "-m", "sftp_gateway"]
        command += ["-v"] if self.verbose else []
        command += ["serve", "--config", str(self.config_path), "--worker-of", spec.text()]
        worker.process = subprocess.Popen(
            command, pass_fds=(listener.fileno(),), process_group=0
        )  # its own group: a terminal's Ctrl-C reaches the supervisor, which forwards it
        worker.started_at = worker.alive_at = time.monotonic()
        worker.restart_at = None
        worker.last_stamp = None
        log.info("started worker %d (pid %d)", worker.index, worker.process.pid)

    def _watch(self, listener: socket.socket) -> None:
        """Kill stuck workers, reap dead ones and start their replacements when their
        backoff is over."""
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is None:
                self._kill_if_stuck(worker, process, now)
            if process is not None and process.poll() is not None:
                self._note_death(worker, process, now)
            if worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker, listener)

    def _kill_if_stuck(
        self, worker: WorkerProcess, process: subprocess.Popen[bytes], now: float
    ) -> None:
        """A worker whose accept loop has not turned for server.worker_timeout takes no
        connection and may hold others hung: show where it is stuck, then replace it."""
        timeout = self.settings.server.worker_timeout
        if not timeout:
            return
        stamp = Heartbeat.stamp(worker.heartbeat)
        if stamp != worker.last_stamp:
            worker.last_stamp, worker.alive_at = stamp, now
        silent = now - worker.alive_at
        # Before its first beat it is booting, or recovering its uploads: more time.
        if silent < timeout + (BOOT_GRACE if stamp is None else 0.0):
            return
        log.warning(
            "worker %d (pid %d) has not run its accept loop for %.0f s"
            " (server.worker_timeout); its threads follow, then it is killed",
            worker.index,
            process.pid,
            silent,
        )
        kill_showing_stacks(process)

    def _note_death(
        self, worker: WorkerProcess, process: subprocess.Popen[bytes], now: float
    ) -> None:
        code = process.returncode
        worker.process = None
        metrics.process_ended(process.pid)
        if code == CONFIG_EXIT:
            log.error(
                "worker %d (pid %d) stopped on a config error; stopping", worker.index, process.pid
            )
            self.exit_code = CONFIG_EXIT
            return
        if now - worker.started_at > HEALTHY_AFTER:
            worker.failures = 0
        delay = RESTART_BACKOFF.delay(worker.failures)
        worker.failures += 1
        worker.restart_at = now + delay
        how = f"signal {-code}" if code < 0 else f"status {code}"
        log.warning(
            "worker %d (pid %d) died (%s); restarting it in %.1f s",
            worker.index,
            process.pid,
            how,
            delay,
        )

    def _running(self) -> list[subprocess.Popen[bytes]]:
        return [w.process for w in self.workers if w.process and w.process.poll() is None]

    def _signal_all(self, signum: int) -> None:
        for process in self._running():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def _force(self) -> None:
        """A second Ctrl-C: the workers cut their drain short."""
        self._signal_all(signal.SIGINT)

    def _drain(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still there after drain_timeout and
        the time they need to close out their uploads."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.server.drain_timeout + DRAIN_MARGIN
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.1)
        for process in self._running():
            log.warning(
                "worker pid %d did not stop in time; its threads follow, then it is killed",
                process.pid,
            )
            kill_showing_stacks(process)
        for worker in self.workers:
            if worker.process is not None:
                worker.process.wait(timeout=10)
                metrics.process_ended(worker.process.pid)
        log.info("all workers stopped")


def kill_showing_stacks(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL, after asking faulthandler for every thread's stack (on the worker's
    stderr, the supervisor's log). A stopped process shows none, but dies all the same."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(STACKS_SIGNAL)
    time.sleep(STACKS_WAIT)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait(timeout=10)


# -- once per host -----------------------------------------------------------------------


class HostJobs:
    """Crash recovery of identities no worker will take, the outbox dispatcher, the
    periodic gc, the admin listener and the browser upload links (their pipeline and
    web.listen): in the supervisor, once, whatever N is."""

    def __init__(self, settings: Settings, catalog: Any, count: int) -> None:
        from sftp_gateway.gc import PeriodicGc
        from sftp_gateway.runtime import background_workers
        from sftp_gateway.storage.naming import storage_for
        from sftp_gateway.web.upload_page import upload_server

        self.settings = settings
        self.catalog = catalog
        self.storage = storage_for(settings.storage)
        self.background: list[Any] = [
            *background_workers(settings, catalog),
            PeriodicGc(settings, catalog, self.storage),
        ]
        self.web_uploads = (
            WebUploads(web_settings(settings, count), catalog, self.storage)
            if serves_web_uploads(settings)
            else None
        )
        self.admin = supervisor_admin(self)
        self.web = upload_server(self.web_uploads) if self.web_uploads else None
        extra = [self.web_uploads, self.admin, self.web]
        self.background += [job for job in extra if job is not None]

    def start(self, live_identities: set[str]) -> None:
        recover_other_identities(self.settings, self.storage, self.catalog, live_identities)
        for job in self.background:
            job.start()

    def stop(self) -> None:
        for job in reversed(self.background):
            job.stop()


def recover_other_identities(
    settings: Settings, storage: Any, catalog: Any, live: set[str]
) -> None:
    """Uploads left by this host's earlier lives that no worker will recover (a single
    process before, or more workers than now) become resumable or aborted now."""
    from sftp_gateway.gc import recover_after_crash
    from sftp_gateway.records import UploadStatus

    base = settings.server.instance_id[:120]
    owners = {
        record.owner
        for status in (UploadStatus.IN_PROGRESS, UploadStatus.COMPLETING)
        for record in catalog.uploads_with_status(status)
        if record.owner and record.owner not in live
    }
    for owner in sorted(owners):
        if owner != settings.server.instance_id and not owner.startswith(base + "/w"):
            continue  # another host's: it recovers its own
        as_owner = settings.model_copy(
            update={"server": settings.server.model_copy(update={"instance_id": owner})}
        )
        report = recover_after_crash(as_owner, storage, catalog)
        log.info(
            "after restart (%s): %d upload(s) resumable, %d aborted, %d completed",
            owner,
            len(report.recovered),
            len(report.aborted),
            len(report.completed),
        )


# -- the admin listener of the supervisor -------------------------------------------------


class _NoConnections:
    """Connections live in the workers; the supervisor's gauges say 0, the per-worker
    figures are in the workers' logs."""

    def counts(self) -> tuple[int, int]:
        return 0, 0


class _CatalogActive:
    """Uploads in progress on any worker, from their catalog rows (bytes so far are
    the last checkpoint's)."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog

    def all(self) -> list[Any]:
        return list(self.catalog.uploads_with_status("in_progress"))

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {
                "key": record.object_key,
                "user": record.user_name,
                "path": record.path,
                "upload_id": record.id,
                "size": record.size,
                "started_at": record.started_at.replace(tzinfo=record.started_at.tzinfo or UTC),
                "expected_size": None,
                "resumed_from": None,
                "sealed": False,
            }
            for record in self.all()
        ]


@dataclass
class _NoBudget:
    in_use: int = 0
    total: int = 0


@dataclass
class _Uploads:
    memory: _NoBudget


class SupervisorView:
    """What the admin app reads (settings, catalog, storage, uploads in progress), for
    a supervisor that has no SSH connections of its own."""

    def __init__(self, jobs: HostJobs) -> None:
        self.settings = jobs.settings
        self.catalog = jobs.catalog
        self.storage = jobs.storage
        self.admission = _NoConnections()
        self.active = _CatalogActive(jobs.catalog)
        # memory_budget_* gauges: the browser uploads' share (the workers log theirs)
        web = jobs.web_uploads
        budget = _NoBudget(0, jobs.settings.uploads.memory_budget)
        self.uploads = web.uploads if web is not None else _Uploads(budget)


def supervisor_admin(jobs: HostJobs) -> Any:
    from sftp_gateway.web import admin_server

    return admin_server(SupervisorView(jobs), uploads_via=jobs.web_uploads)


# -- browser upload links in the supervisor -------------------------------------------------


class WebUploads:
    """The pipeline behind the upload links (/u/...) with workers: the same transfer,
    storage and catalog code as a worker's SFTP sessions, without SSH (no paramiko),
    with its own share of uploads.memory_budget and identity INSTANCE/web. Bans are
    the catalog's, shared with the workers: a wrong link token scores like a failed
    SSH login."""

    name = "web-uploads"

    def __init__(self, settings: Settings, catalog: Any, storage: Any) -> None:
        from sftp_gateway.admission import Admission
        from sftp_gateway.catalog.bans import BanStore
        from sftp_gateway.transfer import ActiveUploads
        from sftp_gateway.upload.services import UploadServices

        self.settings = settings
        self.catalog = catalog
        self.storage = storage
        self.active = ActiveUploads(settings.uploads.max_concurrent_per_user)
        self.uploads = UploadServices.from_settings(settings)
        self.admission = Admission(
            settings.server,
            BanStore(catalog.engine),
            user_exists=lambda name: catalog.get_user(name) is not None,
        )

    def start(self) -> None:
        self.admission.start()

    def stop(self) -> None:
        """After the listeners stopped: requests cut mid-PATCH close out their uploads
        (interrupted, resumable) before the part senders go."""
        deadline = time.monotonic() + CLOSE_OUT_SECONDS
        while self.active.all() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.admission.stop()
        self.uploads.close()
