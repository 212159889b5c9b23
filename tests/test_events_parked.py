"""Events SQS will never take are parked, not retried forever; an operator un-parks them.

Real SQS over HTTP (moto's server), real catalogs, the real `sftp-gateway events` CLI.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings
from sftp_gateway.events.dispatcher import Dispatcher
from tests.helpers import free_port
from tests.notify_support import (
    create_queue,
    drain_queue,
    events_settings,
    new_catalog,
    record_upload,
    sqs,
    wait_until,
)

LONG_PATH = "/" + "/".join(["a-very-long-folder-name-" + "x" * 40] * 16) + "/q3.pdf"


def write_config(tmp_path: Path, settings: Settings) -> Path:
    """The settings as a config file, for the CLI."""
    path = tmp_path / "gateway.yaml"
    data = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    path.write_text(yaml.safe_dump(data))
    return path


def events_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftp_gateway", "events", *args, "--config", str(config)],
        text=True,
        capture_output=True,
        timeout=60,
    )


def listed(config: Path, *flags: str) -> list[dict[str, Any]]:
    result = events_cli(config, "list", "--json", *flags)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def small_queue(endpoint: str) -> str:
    """A queue that takes messages of at most 1 KiB, SQS's smallest limit."""
    url = create_queue(endpoint)
    sqs(endpoint).set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "1024"})
    return url


def test_event_too_large_for_the_queue_is_parked_and_the_rest_of_its_batch_is_sent(
    tmp_path: Path, moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = small_queue(moto_endpoint)
    settings = events_settings(tmp_path, moto_endpoint, queue)
    catalog = new_catalog(settings)
    first = record_upload(catalog, path="/a.pdf")
    huge = record_upload(catalog, path=LONG_PATH)
    last = record_upload(catalog, path="/b.pdf")
    dispatcher = Dispatcher(catalog, settings.events)

    with caplog.at_level(logging.WARNING, logger="sftp_gateway.events.dispatcher"):
        assert dispatcher.dispatch_pending() == 2
        assert dispatcher.dispatch_pending() == 0  # not retried

    bodies = [json.loads(m["Body"]) for m in drain_queue(moto_endpoint, queue)]
    assert sorted(b["upload_id"] for b in bodies) == sorted([first.id, last.id])
    assert catalog.pending_event_count() == 0 and catalog.parked_event_count() == 1
    [parked_line] = [r.getMessage() for r in caplog.records if "parked" in r.getMessage()]
    assert huge.id in parked_line and "InvalidParameterValue" in parked_line

    config = write_config(tmp_path, settings)
    [row] = listed(config, "--failed")
    assert row["upload_id"] == huge.id and row["state"] == "parked"
    assert row["attempts"] == 1 and "shorter than 1024 bytes" in row["last_error"]
    text = events_cli(config, "list").stdout
    assert "\tparked\tupload.completed\t" + huge.id in text


def test_parked_event_is_sent_after_the_queue_is_fixed_and_events_retry_all(
    tmp_path: Path, moto_endpoint: str
) -> None:
    queue = small_queue(moto_endpoint)
    settings = events_settings(tmp_path, moto_endpoint, queue)
    catalog = new_catalog(settings)
    huge = record_upload(catalog, path=LONG_PATH)
    Dispatcher(catalog, settings.events).dispatch_pending()
    assert catalog.parked_event_count() == 1

    sqs(moto_endpoint).set_queue_attributes(
        QueueUrl=queue, Attributes={"MaximumMessageSize": "262144"}
    )
    config = write_config(tmp_path, settings)
    result = events_cli(config, "retry", "--all")
    assert result.returncode == 0 and "1 event(s) due now" in result.stdout

    assert Dispatcher(catalog, settings.events).dispatch_pending() == 1
    [message] = drain_queue(moto_endpoint, queue)
    assert json.loads(message["Body"])["upload_id"] == huge.id
    assert listed(config) == []


def test_missing_queue_parks_events_at_once_and_retry_by_event_id_sends_them(
    tmp_path: Path, moto_endpoint: str
) -> None:
    name = f"not-yet-{free_port()}"
    queue = f"{moto_endpoint}/123456789012/{name}"
    settings = events_settings(tmp_path, moto_endpoint, queue)
    catalog = new_catalog(settings)
    record = record_upload(catalog)
    Dispatcher(catalog, settings.events).dispatch_pending()

    config = write_config(tmp_path, settings)
    [row] = listed(config, "--failed")
    assert row["state"] == "parked" and row["attempts"] == 1
    assert "NonExistentQueue" in row["last_error"]

    sqs(moto_endpoint).create_queue(QueueName=name)
    assert events_cli(config, "retry", row["event_id"]).returncode == 0
    assert Dispatcher(catalog, settings.events).dispatch_pending() == 1
    [message] = drain_queue(moto_endpoint, queue)
    assert json.loads(message["Body"])["upload_id"] == record.id


def parked_after_outage(catalog: Catalog) -> bool:
    return catalog.parked_event_count() == 1


def test_sqs_down_is_retried_with_backoff_then_parked_after_max_attempts(
    tmp_path: Path,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = events_settings(
        tmp_path,
        dead,
        f"{dead}/123456789012/q",
        events={"dispatch_interval": 0.05, "max_backoff": 0.1, "max_attempts": 4},
    )
    catalog = new_catalog(settings)
    record_upload(catalog)
    dispatcher = Dispatcher(catalog, settings.events)
    assert dispatcher.dispatch_pending() == 0
    config = write_config(tmp_path, settings)
    [retrying] = listed(config, "--failed")
    assert retrying["state"] == "retrying" and retrying["parked_at"] is None

    dispatcher.start()
    try:
        wait_until(lambda: parked_after_outage(catalog), timeout=30)
    finally:
        dispatcher.stop()
    [row] = listed(config, "--failed")
    assert row["state"] == "parked" and row["attempts"] == 4
    assert "Could not connect" in row["last_error"] or "Connect" in row["last_error"]


def test_events_retry_names_an_unknown_event_and_needs_ids_or_all(tmp_path: Path) -> None:
    queue = "http://127.0.0.1:9/123456789012/q"
    settings = events_settings(tmp_path, "http://127.0.0.1:9", queue)
    new_catalog(settings)
    config = write_config(tmp_path, settings)

    unknown = events_cli(config, "retry", "4242")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "sftp-gateway: no event 4242"
    assert events_cli(config, "retry").returncode == 2
    assert events_cli(config, "retry", "1", "--all").returncode == 2


def test_max_attempts_must_be_positive_and_names_the_field(tmp_path: Path) -> None:
    from sftp_gateway.errors import ConfigError

    with pytest.raises(ConfigError, match=r"events\.max_attempts"):
        events_settings(tmp_path, "http://127.0.0.1:9", "q", events={"max_attempts": 0})


def test_sent_event_cannot_be_retried(tmp_path: Path, moto_endpoint: str) -> None:
    queue = create_queue(moto_endpoint)
    settings = events_settings(tmp_path, moto_endpoint, queue)
    catalog = new_catalog(settings)
    record_upload(catalog)
    assert Dispatcher(catalog, settings.events).dispatch_pending() == 1
    config = write_config(tmp_path, settings)
    result = events_cli(config, "retry", "1")
    assert result.returncode == 1 and "already sent" in result.stderr
