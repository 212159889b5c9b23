"""The admin HTTP listener of a real `serve` process: /metrics, /healthz, /readyz, the token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftp_gateway.config import settings_from_dict
from sftp_gateway.errors import ConfigError
from tests.admin_support import (
    SwitchableProxy,
    http_get,
    scrape,
    serve_with_admin,
    total,
    value,
)
from tests.helpers import free_port, make_user_key, wait_until, write_serve_config

TOKEN = "s3cret-admin-token-for-tests"


def connect_and_read(port: int, source: str, timeout: float = 5) -> bytes:
    """Open a TCP connection from `source` and read what the server sends first."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        try:
            return sock.recv(256)
        except (ConnectionResetError, TimeoutError):
            return b""


def test_metrics_count_an_upload_a_failed_login_and_a_ban(serve_factory, tmp_path: Path) -> None:
    admin = serve_with_admin(
        serve_factory, {"server": {"ban": {"threshold": 1, "score_failed_key": 1}}}
    )
    served = admin.served
    before = scrape(admin.url)

    assert served.user_can_upload("counted.pdf", size=300_000)
    stranger_key = make_user_key(tmp_path / "stranger")
    refused = served.sftp("ls\n", key=stranger_key, source="127.0.0.2")
    assert refused.returncode != 0
    # The failed login scores 127.0.0.2 past the threshold; once the ban is seen, its
    # next connection is refused before any SSH byte.
    wait_until(lambda: value(scrape(admin.url), "sftp_gateway_bans_active") >= 1, timeout=20)
    assert connect_and_read(served.port, "127.0.0.2") == b""

    after = scrape(admin.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sftp_gateway_uploads_total", outcome="completed") == 1
    assert moved("sftp_gateway_received_bytes_total") == 300_000
    assert moved("sftp_gateway_auth_attempts_total", method="publickey", outcome="success") == 1
    assert moved("sftp_gateway_auth_attempts_total", method="publickey", outcome="failed_key") == 1
    assert moved("sftp_gateway_connections_accepted_total") == 2
    assert moved("sftp_gateway_connections_refused_total", reason="banned") == 1
    assert moved("sftp_gateway_bans_created_total") == 1
    s3_calls = total(after, "sftp_gateway_s3_request_duration_seconds_count") - total(
        before, "sftp_gateway_s3_request_duration_seconds_count"
    )
    assert s3_calls >= 1
    puts = value(after, "sftp_gateway_s3_request_duration_seconds_count", operation="PutObject")
    assert puts >= 1
    assert value(after, "sftp_gateway_memory_budget_bytes") == 512 * 1024 * 1024
    assert ("sftp_gateway_outbox_pending_events", frozenset()) in after
    assert value(after, "sftp_gateway_part_queue_depth") == 0
    assert "refused 127.0.0.2: banned until" in served.log_text()


def test_healthz_and_readyz_answer_when_all_is_well(serve_factory) -> None:
    admin = serve_with_admin(serve_factory)
    health = http_get(admin.url + "/healthz")
    assert (health.status, health.body) == (200, "ok\n")
    ready = http_get(admin.url + "/readyz")
    assert ready.status == 200
    assert json.loads(ready.body) == {"catalog": "ok", "s3": "ok"}


def test_readyz_names_s3_while_it_does_not_answer_then_recovers(
    serve_factory, moto_endpoint: str
) -> None:
    proxy = SwitchableProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    try:
        admin = serve_with_admin(serve_factory, endpoint=proxy.endpoint)
        assert http_get(admin.url + "/readyz").status == 200

        proxy.down()
        started = time.monotonic()
        down = http_get(admin.url + "/readyz")
        took = time.monotonic() - started
        assert down.status == 503, down.body
        body = json.loads(down.body)
        assert body["catalog"] == "ok"
        assert body["s3"] != "ok" and body["s3"]  # the error, e.g. ReadTimeoutError: ...
        assert took < 8, f"/readyz took {took:.1f}s with S3 hung"
        assert http_get(admin.url + "/healthz").status == 200  # alive, just not ready

        proxy.up()
        wait_until(lambda: http_get(admin.url + "/readyz").status == 200, timeout=20)
        log = admin.served.log_text()
        assert "not ready: s3:" in log
        assert admin.served.user_can_upload("after-outage.pdf")
    finally:
        proxy.close()


def test_token_guards_every_page_but_healthz(serve_factory, monkeypatch) -> None:
    monkeypatch.setenv("H1_ADMIN_TOKEN", TOKEN)
    admin = serve_with_admin(serve_factory, {"admin": {"token_env": "H1_ADMIN_TOKEN"}})
    url = admin.url

    assert http_get(url + "/healthz").status == 200
    for path in ("/metrics", "/readyz", "/uploads", "/api/uploads/active", "/api/uploads"):
        refused = http_get(url + path)
        assert refused.status == 401, path
        assert refused.headers.get("www-authenticate", "").startswith("Bearer")
        assert "admin token required" in refused.body
    assert http_get(url + "/metrics", {"Authorization": "Bearer wrong"}).status == 401
    assert http_get(url + "/metrics", {"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert http_get(url + f"/api/uploads?token={TOKEN}").status == 200  # scripts: at once

    # A browser: ?token= sets a cookie and redirects to the page without the token.
    opened = http_get(url + f"/uploads?token={TOKEN}", {"Accept": "text/html"})
    assert opened.status == 303
    assert opened.headers["location"].endswith("/uploads")
    cookie = opened.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    with_cookie = {"Cookie": cookie.split(";", 1)[0]}
    assert http_get(url + "/api/uploads/active", with_cookie).status == 200

    assert "refused 127.0.0.1: admin request GET /metrics without a valid token" in (
        admin.served.log_text()
    )


def test_a_non_loopback_listener_without_a_token_is_a_config_error() -> None:
    base = {"storage": {"bucket": "some-bucket"}}
    with pytest.raises(ConfigError, match=r"admin\.token_env: required when admin\.listen"):
        settings_from_dict({**base, "admin": {"listen": "0.0.0.0:9100"}}, environ={})
    loopback = settings_from_dict({**base, "admin": {"listen": "127.0.0.1:9100"}}, environ={})
    assert loopback.admin.token_env is None


def test_serve_refuses_to_start_when_the_token_variable_is_unset(
    tmp_path: Path, moto_endpoint: str
) -> None:
    admin = {"admin": {"listen": f"127.0.0.1:{free_port()}", "token_env": "H1_TOKEN_NOT_SET"}}
    config_path, _ = write_serve_config(
        tmp_path, moto_endpoint, "unused-bucket", f"sqlite:///{tmp_path / 'c.db'}", admin
    )
    env = dict(os.environ)
    env.pop("H1_TOKEN_NOT_SET", None)
    result = subprocess.run(
        [sys.executable, "-m", "sftp_gateway", "serve", "--config", str(config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "admin.token_env: env var H1_TOKEN_NOT_SET is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_limit_that_is_not_ascii_digits_is_a_400_not_a_500(serve_factory) -> None:
    admin = serve_with_admin(serve_factory)
    for path in (
        "/api/uploads?limit=%C2%B2",
        "/uploads?limit=%C2%B2",
        "/api/uploads?limit=" + "9" * 50,
    ):
        answer = http_get(admin.url + path)
        assert answer.status == 400, (path, answer.status)
        assert "limit: must be a whole number" in answer.body
    assert "Traceback" not in admin.served.log_text()
