"""Shared fixtures: moto's S3/SQS server over real HTTP, a running gateway, PostgreSQL."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RunningGateway, free_port, start_gateway
from tests.seaweed import SeaweedServer, start_seaweed
from tests.serving import ServeProcess, start_serve

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
logging.getLogger("werkzeug").setLevel(logging.ERROR)
PG_ADMIN_URL = os.environ.get(
    "TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server (S3 and SQS) on a loopback port, for the whole test session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def gateway_factory(
    tmp_path: Path, moto_endpoint: str, bucket_name: str
) -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways (config overrides as a nested dict); all are stopped after the test."""
    started: list[RunningGateway] = []

    def factory(config: dict[str, Any] | None = None, **kwargs: Any) -> RunningGateway:
        running = start_gateway(
            tmp_path / f"gw{len(started)}",
            kwargs.pop("endpoint", moto_endpoint),
            kwargs.pop("bucket", bucket_name),
            config=config,
            **kwargs,
        )
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    """A gateway with the default upload policy (.pdf only, PDF signature required)."""
    return gateway_factory()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    name = f"sftpgw_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # pragma: no cover - the machine always has PostgreSQL
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """One SeaweedFS server (master, volume, filer, S3) on loopback for the session.

    It enforces the credentials the gateway uses (conftest sets them in the env), so
    the gateway's SigV4 signatures are really checked.
    """
    credentials = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    server = start_seaweed(credentials=credentials)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed_endpoint(seaweed: SeaweedServer) -> str:
    return seaweed.endpoint


@pytest.fixture
def serve_factory(
    tmp_path: Path, moto_endpoint: str, bucket_name: str
) -> Iterator[Callable[..., ServeProcess]]:
    """Start real `sftp-gateway serve` processes (config overrides as a nested dict)."""
    started: list[ServeProcess] = []

    def factory(config: dict[str, Any] | None = None, **kwargs: Any) -> ServeProcess:
        served = start_serve(
            tmp_path / f"serve{len(started)}",
            kwargs.pop("endpoint", moto_endpoint),
            kwargs.pop("bucket", bucket_name),
            config,
            **kwargs,
        )
        started.append(served)
        return served

    yield factory
    for served in started:
        served.stop()
