"""The gateway's Prometheus metrics: every metric object, and one call per event.

Other modules record an event with one line (`metrics.refused("banned")`,
`metrics.upload_ended("completed")`); they never touch prometheus_client. The metrics
live in REGISTRY, a registry of our own (not prometheus_client's global default), so
counters count whether or not the admin listener (sftp_gateway/web) is on; it serves
them at /metrics together with `GatewayCollector`, which reads gauges that only mean
something at scrape time (connections open, uploads active, memory budget in use,
outbox backlog) from the running gateway.

`serve --workers N` uses prometheus_client's multiprocess mode: the supervisor calls
`use_multiprocess(directory)` (which re-creates the metrics below with file-backed
values) and passes PROMETHEUS_MULTIPROC_DIR to its workers, whose prometheus_client
picks it up at import. `exposition()` then sums every process's files at scrape time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STARTED = "sftp_gateway_s3_started"  # key in botocore's per-request context
S3_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

REGISTRY: CollectorRegistry
connections_accepted: Counter
connections_refused: Counter
auth_attempts: Counter
bans_active: Gauge
bans_created: Counter
uploads_ended: Counter
received_bytes: Counter
s3_request_seconds: Histogram
s3_request_errors: Counter
part_queue_depth: Gauge
notifier_emails: Counter


def _define_metrics() -> None:
    """(Re)create REGISTRY and every metric with prometheus_client's current value
    class (in-process, or files under PROMETHEUS_MULTIPROC_DIR)."""
    global REGISTRY, connections_accepted, connections_refused, auth_attempts, bans_active
    global bans_created, uploads_ended, received_bytes, s3_request_seconds
    global s3_request_errors, part_queue_depth, notifier_emails
    REGISTRY = CollectorRegistry(auto_describe=True)
    connections_accepted = Counter(
        "sftp_gateway_connections_accepted",
        "TCP connections admitted to an SSH handshake.",
        registry=REGISTRY,
    )
    connections_refused = Counter(
        "sftp_gateway_connections_refused",
        "Connections refused or closed by admission control, by reason.",
        ["reason"],
        registry=REGISTRY,
    )
    auth_attempts = Counter(
        "sftp_gateway_auth_attempts",
        "SSH authentication attempts, by method and outcome.",
        ["method", "outcome"],
        registry=REGISTRY,
    )
    bans_active = Gauge(
        "sftp_gateway_bans_active",
        "Addresses banned now (from the catalog, refreshed every few seconds).",
        registry=REGISTRY,
        multiprocess_mode="livemax",  # every process reads the same catalog
    )
    bans_created = Counter(
        "sftp_gateway_bans_created",
        "Bans this process created (a score reached server.ban.threshold).",
        registry=REGISTRY,
    )
    uploads_ended = Counter(
        "sftp_gateway_uploads",
        "Uploads that ended, by outcome (completed, failed, interrupted, aborted).",
        ["outcome"],
        registry=REGISTRY,
    )
    received_bytes = Counter(
        "sftp_gateway_received_bytes",
        "File bytes received from clients into uploads.",
        registry=REGISTRY,
    )
    s3_request_seconds = Histogram(
        "sftp_gateway_s3_request_duration_seconds",
        "S3 API calls (retries included), by operation.",
        ["operation"],
        buckets=S3_BUCKETS,
        registry=REGISTRY,
    )
    s3_request_errors = Counter(
        "sftp_gateway_s3_request_errors",
        "S3 API calls that failed, by operation and error (HTTP status or exception).",
        ["operation", "error"],
        registry=REGISTRY,
    )
    part_queue_depth = Gauge(
        "sftp_gateway_part_queue_depth",
        "Parts handed to the shared sender pool and not yet in S3 (queued or sending).",
        registry=REGISTRY,
        multiprocess_mode="livesum",  # the host's depth: every live worker's queue
    )
    notifier_emails = Counter(
        "sftp_gateway_notifier_emails",
        "Notification emails, by outcome (sent, failed: retried later).",
        ["outcome"],
        registry=REGISTRY,
    )


_define_metrics()

# -- several processes (serve --workers N) ----------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory every process of this host writes its metrics to, if any."""
    return os.environ.get(MULTIPROC_ENV) or None


def use_multiprocess(directory: str) -> None:
    """From now on this process's metrics are files in `directory`, summed with those
    of every process that has PROMETHEUS_MULTIPROC_DIR=directory (its workers inherit
    it). Called by the supervisor before any thread records a metric: what this
    process counted before is dropped (nothing, at that point)."""
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _define_metrics()


def process_ended(pid: int) -> None:
    """A worker died or stopped: its live gauges (part queue, bans) no longer count;
    its counters still do."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


# -- one call per event ---------------------------------------------------------------


def connection_accepted() -> None:
    connections_accepted.inc()


def refused(reason: str) -> None:
    """A connection refused or closed before it could be used; `reason` is a short
    token: banned, max_connections, per_source_max_startups, max_startups,
    auth_timeout, max_auth_tries, no_thread."""
    connections_refused.labels(reason).inc()


def auth_result(method: str, outcome: str) -> None:
    """outcome: success, failed_key, invalid_user, not_allowed, error."""
    auth_attempts.labels(method, outcome.replace(" ", "_")).inc()


def ban_created() -> None:
    bans_created.inc()


def upload_ended(outcome: str | None) -> None:
    """Count an upload's end; a status that is not an end (in_progress) is ignored."""
    if outcome in ("completed", "failed", "interrupted", "aborted"):
        uploads_ended.labels(outcome).inc()


def bytes_received(n: int) -> None:
    received_bytes.inc(n)


def part_submitted(future: Future[Any]) -> Future[Any]:
    """A part entered the sender pool; it leaves the queue depth when its future is done."""
    part_queue_depth.inc()
    future.add_done_callback(lambda _: part_queue_depth.dec())
    return future


def email_sent(ok: bool) -> None:
    notifier_emails.labels("sent" if ok else "failed").inc()


# -- S3: botocore's own events, so every call (managed copies too) is timed ------------


def instrument_s3(client: Any) -> None:
    """Time every S3 API call of `client` and count its errors, by operation name."""
    events = client.meta.events
    events.register("before-call.s3", _s3_before)
    events.register("after-call.s3", _s3_after)
    events.register("after-call-error.s3", _s3_error)


def _s3_before(context: dict[str, Any], **_: Any) -> None:
    context[_STARTED] = time.perf_counter()


def _s3_elapsed(context: dict[str, Any]) -> float | None:
    started = context.pop(_STARTED, None)
    return None if started is None else time.perf_counter() - started


def _s3_after(
    model: Any, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
) -> None:
    elapsed = _s3_elapsed(context)
    if elapsed is not None:
        s3_request_seconds.labels(model.name).observe(elapsed)
    status = int(getattr(http_response, "status_code", 200))
    if status >= 400 and status != 404:  # 404 is how a probe says "no such key"
        code = str(parsed.get("Error", {}).get("Code") or status)
        s3_request_errors.labels(model.name, code).inc()


def _s3_error(exception: BaseException, context: dict[str, Any], **kwargs: Any) -> None:
    operation = str(kwargs.get("event_name", "")).rsplit(".", 1)[-1] or "unknown"
    elapsed = _s3_elapsed(context)
    if elapsed is not None:
        s3_request_seconds.labels(operation).observe(elapsed)
    s3_request_errors.labels(operation, type(exception).__name__).inc()


# -- scrape-time gauges from a running gateway -----------------------------------------


class GatewayView(Protocol):
    """What GatewayCollector reads (sftp_gateway.app.Gateway has all of it)."""

    admission: Any
    active: Any
    uploads: Any
    catalog: Any


class GatewayCollector:
    """Gauges read when /metrics is scraped: cheap reads of in-process state and one
    indexed catalog query for the outbox backlog."""

    def __init__(self, gateway: GatewayView) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        yield from self._connections()
        active = GaugeMetricFamily(
            "sftp_gateway_uploads_active", "Files open for writing in this process now."
        )
        active.add_metric([], len(self.gateway.active.all()))
        yield active
        yield from self._memory()
        yield from self._outbox()

    def _connections(self) -> Iterable[Metric]:
        unauthenticated, authenticated = self.gateway.admission.counts()
        family = GaugeMetricFamily(
            "sftp_gateway_connections_open", "SSH connections open now, by state.", labels=["state"]
        )
        family.add_metric(["unauthenticated"], unauthenticated)
        family.add_metric(["authenticated"], authenticated)
        yield family

    def _memory(self) -> Iterable[Metric]:
        budget = self.gateway.uploads.memory
        in_use = GaugeMetricFamily(
            "sftp_gateway_memory_budget_in_use_bytes",
            "Upload buffer bytes held now out of uploads.memory_budget.",
        )
        in_use.add_metric([], budget.in_use)
        limit = GaugeMetricFamily(
            "sftp_gateway_memory_budget_bytes", "uploads.memory_budget: the most they may hold."
        )
        limit.add_metric([], budget.total)
        return [in_use, limit]

    def _outbox(self) -> Iterable[Metric]:
        try:
            pending, oldest = self.gateway.catalog.outbox_backlog()
        except Exception as exc:  # a scrape must not fail because the catalog is down
            log.warning("metrics: outbox backlog not read: %s", exc)
            return []
        count = GaugeMetricFamily(
            "sftp_gateway_outbox_pending_events", "Upload events not yet accepted by SQS."
        )
        count.add_metric([], pending)
        age = GaugeMetricFamily(
            "sftp_gateway_outbox_oldest_pending_age_seconds",
            "Age of the oldest event not yet accepted by SQS (0 when none).",
        )
        age.add_metric([], (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0)
        return [count, age]


class _Together:
    """Several collectors exposed as one (generate_latest only calls collect())."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def exposition(*extra: Any) -> bytes:
    """The text format of REGISTRY (with workers: every process's metrics, summed from
    their files into a fresh registry, as prometheus_client's multiprocess mode wants)
    plus any scrape-time collectors."""
    directory = multiprocess_dir()
    source = REGISTRY
    if directory is not None:
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(_Together(source, *extra))  # type: ignore[arg-type]
