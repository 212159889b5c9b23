"""The outbox dispatcher against SQS over real HTTP (moto's server) and real catalogs."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from sftp_gateway.catalog.models import OutboxRow
from sftp_gateway.catalog.repository import FAILED, Catalog, OutboxEvent
from sftp_gateway.config import EventsConfig
from sftp_gateway.events.dispatcher import Dispatcher, backoff_delay
from sftp_gateway.events.publisher import PublishResult, SqsPublisher
from sftp_gateway.runtime import background_workers
from tests.helpers import RunningGateway, free_port, make_pdf, sha256_file
from tests.notify_support import (
    create_queue,
    drain_queue,
    events_settings,
    new_catalog,
    record_upload,
    sqs,
    wait_until,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The outbox on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    return request.getfixturevalue("postgres_url")


def dispatch_everything(catalog: Catalog, config: EventsConfig) -> None:
    """Run a dispatcher until the outbox is empty, then stop it."""
    dispatcher = Dispatcher(catalog, config)
    dispatcher.start()
    try:
        wait_until(lambda: catalog.pending_event_count() == 0)
    finally:
        dispatcher.stop()


def outbox_rows(catalog: Catalog) -> list[OutboxRow]:
    with catalog.engine.connect() as conn:
        return list(conn.execute(select(OutboxRow).order_by(OutboxRow.id)).all())


class SlowPublisher:
    """Wraps the real publisher so two dispatchers overlap in time."""

    def __init__(self, inner: SqsPublisher, pause: float) -> None:
        self.inner = inner
        self.pause = pause
        self.calls = 0

    def publish(self, events: list[OutboxEvent]) -> PublishResult:
        self.calls += 1
        time.sleep(self.pause)
        return self.inner.publish(events)


def test_committed_event_reaches_sqs_with_type_and_user_attributes(
    tmp_path: Path, moto_endpoint: str, catalog_url: str
) -> None:
    queue = create_queue(moto_endpoint)
    settings = events_settings(tmp_path, moto_endpoint, queue, catalog_url=catalog_url)
    catalog = new_catalog(settings)
    record = record_upload(catalog, size=4096)
    failed = record_upload(catalog, path="/bad.pdf", status=FAILED, error="not a PDF")
    assert catalog.pending_event_count() == 2

    dispatch_everything(catalog, settings.events)

    messages = drain_queue(moto_endpoint, queue)
    bodies = {json.loads(m["Body"])["upload_id"]: m for m in messages}
    assert set(bodies) == {record.id, failed.id}
    ok = bodies[record.id]
    body = json.loads(ok["Body"])
    assert body["type"] == "upload.completed"
    assert body["size"] == 4096 and body["sha256"] == "ab" * 32
    assert body["email"] is None  # this catalog has no user row for alice
    assert ok["MessageAttributes"]["type"]["StringValue"] == "upload.completed"
    assert ok["MessageAttributes"]["user"]["StringValue"] == "alice"
    bad = json.loads(bodies[failed.id]["Body"])
    assert bad["type"] == "upload.failed" and bad["error"] == "not a PDF"
    assert all(row.sent_at is not None and row.attempts == 1 for row in outbox_rows(catalog))


def test_fifo_queue_gets_event_id_as_deduplication_id_and_a_group(
    tmp_path: Path, moto_endpoint: str
) -> None:
    queue = create_queue(moto_endpoint, fifo=True)
    settings = events_settings(tmp_path, moto_endpoint, queue)
    assert settings.events.is_fifo
    catalog = new_catalog(settings)
    record_upload(catalog)
    dispatcher = Dispatcher(catalog, settings.events)
    assert dispatcher.dispatch_pending() == 1

    (message,) = drain_queue(moto_endpoint, queue)
    event_id = json.loads(message["Body"])["event_id"]
    assert message["Attributes"]["MessageDeduplicationId"] == event_id
    assert message["Attributes"]["MessageGroupId"] == "alice"


def test_fifo_deduplicates_an_event_sent_twice(tmp_path: Path, moto_endpoint: str) -> None:
    queue = create_queue(moto_endpoint, fifo=True)
    settings = events_settings(
        tmp_path, moto_endpoint, queue, events={"message_group_id": "uploads"}
    )
    catalog = new_catalog(settings)
    record_upload(catalog)
    publisher = SqsPublisher(settings.events)
    with catalog.dispatch_batch() as (events, _settle):
        assert publisher.publish(events).sent == publisher.publish(events).sent == [events[0].id]
    (message,) = drain_queue(moto_endpoint, queue)
    assert message["Attributes"]["MessageGroupId"] == "uploads"


def test_fifo_forced_by_config_for_a_url_without_the_suffix() -> None:
    standard = EventsConfig(queue_url="http://127.0.0.1:1/123456789012/q")
    forced = EventsConfig(queue_url="http://127.0.0.1:1/123456789012/q", fifo=True)
    assert not standard.is_fifo and forced.is_fifo
    event = OutboxEvent(7, "e-1", "upload.completed", {"user": "bob"}, 0)
    assert "MessageGroupId" not in SqsPublisher(standard, client=object()).entry(event)
    entry = SqsPublisher(forced, client=object()).entry(event)
    assert entry["MessageGroupId"] == "bob" and entry["MessageDeduplicationId"] == "e-1"


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    delays = [backoff_delay(n, 1.0, 60.0) for n in range(10)]
    assert 0.75 <= delays[0] <= 1.0
    assert 6.0 <= delays[3] <= 8.0
    assert all(d <= 60.0 for d in delays) and delays[-1] >= 45.0


def upload_pdf(running: RunningGateway, tmp_path: Path, size: int = 200_000) -> Path:
    pdf = make_pdf(tmp_path / "report.pdf", size)
    running.sftp(f"put {pdf}\n")
    return pdf


def test_sqs_down_during_upload_event_arrives_when_it_is_back(
    tmp_path: Path, moto_endpoint: str, gateway_factory: Callable[..., RunningGateway]
) -> None:
    port = free_port()
    dead_endpoint = f"http://127.0.0.1:{port}"
    queue_name = "uploads-after-outage"
    queue_url = f"{dead_endpoint}/123456789012/{queue_name}"
    settings = events_settings(
        tmp_path,
        dead_endpoint,
        queue_url,
        events={"dispatch_interval": 0.2, "max_backoff": 0.5},
    )
    catalog = new_catalog(settings)
    dispatcher = Dispatcher(catalog, settings.events)
    running = gateway_factory(catalog_url=settings.catalog.url, background=[dispatcher])

    pdf = upload_pdf(running, tmp_path)  # the client succeeds although SQS is down
    assert running.object_exists(running.key_for("report.pdf"))
    wait_until(lambda: any(row.attempts >= 2 for row in outbox_rows(catalog)), timeout=30)
    (row,) = outbox_rows(catalog)
    assert row.sent_at is None and row.last_error

    sqs_server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    sqs_server.start()
    try:
        sqs(dead_endpoint).create_queue(QueueName=queue_name)
        wait_until(lambda: catalog.pending_event_count() == 0, timeout=30)
        (message,) = drain_queue(dead_endpoint, queue_url)
    finally:
        running.stop()
        sqs_server.stop()
    body = json.loads(message["Body"])
    assert body["file_name"] == "report.pdf" and body["sha256"] == sha256_file(pdf)


def test_event_committed_before_a_crash_is_sent_after_restart(
    tmp_path: Path, moto_endpoint: str, gateway_factory: Callable[..., RunningGateway]
) -> None:
    queue = create_queue(moto_endpoint)
    settings = events_settings(tmp_path, moto_endpoint, queue)
    running = gateway_factory(catalog_url=settings.catalog.url, background=[])
    pdf = upload_pdf(running, tmp_path)
    running.stop()  # the gateway dies with the event committed but not sent
    assert drain_queue(moto_endpoint, queue) == []

    catalog = new_catalog(settings)  # the restarted gateway
    assert catalog.pending_event_count() == 1
    dispatch_everything(catalog, settings.events)
    (message,) = drain_queue(moto_endpoint, queue)
    body = json.loads(message["Body"])
    assert body["email"] == "alice@example.com" and body["sha256"] == sha256_file(pdf)


def test_crash_after_sqs_accepted_but_before_marking_resends_same_event_id(
    tmp_path: Path, moto_endpoint: str
) -> None:
    """At least once: the event goes out again with the same event_id for the notifier."""
    queue = create_queue(moto_endpoint)
    settings = events_settings(tmp_path, moto_endpoint, queue)
    catalog = new_catalog(settings)
    record_upload(catalog)
    real = SqsPublisher(settings.events)

    class DiesAfterSending:
        def publish(self, events: list[OutboxEvent]) -> PublishResult:
            real.publish(events)
            raise RuntimeError("process killed before the catalog commit")

    with pytest.raises(RuntimeError):
        Dispatcher(catalog, settings.events, publisher=DiesAfterSending()).dispatch_pending()
    assert catalog.pending_event_count() == 1
    assert Dispatcher(catalog, settings.events).dispatch_pending() == 1
    ids = [json.loads(m["Body"])["event_id"] for m in drain_queue(moto_endpoint, queue)]
    assert len(ids) == 2 and len(set(ids)) == 1


def test_stop_finishes_the_batch_in_hand(tmp_path: Path, moto_endpoint: str) -> None:
    queue = create_queue(moto_endpoint)
    settings = events_settings(tmp_path, moto_endpoint, queue)
    catalog = new_catalog(settings)
    record_upload(catalog)
    real = SqsPublisher(settings.events)
    entered, release = threading.Event(), threading.Event()

    class Gated:
        def publish(self, events: list[OutboxEvent]) -> PublishResult:
            entered.set()
            release.wait(30)
            return real.publish(events)

    dispatcher = Dispatcher(catalog, settings.events, publisher=Gated())
    dispatcher.start()
    assert entered.wait(30)
    stopper = threading.Thread(target=dispatcher.stop)
    stopper.start()
    time.sleep(0.2)
    assert stopper.is_alive()  # stop() waits for the batch in hand
    release.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert catalog.pending_event_count() == 0
    assert len(drain_queue(moto_endpoint, queue)) == 1


@pytest.mark.postgres
def test_two_dispatchers_on_one_postgresql_send_each_event_once(
    tmp_path: Path, moto_endpoint: str, postgres_url: str
) -> None:
    queue = create_queue(moto_endpoint)
    settings = events_settings(
        tmp_path, moto_endpoint, queue, catalog_url=postgres_url, events={"batch_size": 3}
    )
    writer = new_catalog(settings)
    uploads = [record_upload(writer, path=f"/f{n}.pdf") for n in range(30)]

    dispatchers = []
    for n in range(2):  # two gateways: their own engines, one database
        catalog = new_catalog(settings)
        publisher = SlowPublisher(SqsPublisher(settings.events), pause=0.05)
        dispatchers.append(
            Dispatcher(catalog, settings.events, publisher=publisher, name=f"dispatcher-{n}")
        )
    for dispatcher in dispatchers:
        dispatcher.start()
    try:
        wait_until(lambda: writer.pending_event_count() == 0, timeout=60)
    finally:
        for dispatcher in dispatchers:
            dispatcher.stop()

    counts = Counter(json.loads(m["Body"])["upload_id"] for m in drain_queue(moto_endpoint, queue))
    assert set(counts) == {u.id for u in uploads}
    assert set(counts.values()) == {1}
    assert all(d.sent_count > 0 for d in dispatchers)  # both really took part
    assert sum(d.sent_count for d in dispatchers) == 30


def test_background_workers_build_a_dispatcher_only_with_a_queue(
    tmp_path: Path, moto_endpoint: str
) -> None:
    settings = events_settings(tmp_path, moto_endpoint, create_queue(moto_endpoint))
    catalog = new_catalog(settings)
    workers: list[Any] = background_workers(settings, catalog)
    assert [type(w).__name__ for w in workers] == ["Dispatcher"]
    demo = background_workers(settings, catalog, demo=True)
    assert [type(w).__name__ for w in demo] == ["Dispatcher", "NotifierThread"]
    no_queue = settings.model_copy(
        update={"events": settings.events.model_copy(update={"queue_url": None})}
    )
    assert background_workers(no_queue, catalog) == []
