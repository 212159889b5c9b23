"""Structured logs of a real `serve` process: JSON lines with connection context, text too."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sftp_gateway import logs
from tests.helpers import make_pdf, make_user_key, sha256_file
from tests.serving import ServeProcess

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# docs/security.md: "A fail2ban filter can match `auth failed for .* from <HOST>:`"
FAIL2BAN_AUTH = "auth failed for .* from <HOST>:"


def fail2ban_regex(filter_line: str) -> re.Pattern[str]:
    """A fail2ban failregex as Python sees it (<HOST> is an IPv4/IPv6 address)."""
    return re.compile(filter_line.replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)"))


def json_lines(served: ServeProcess) -> list[dict[str, Any]]:
    """Every line of the server's log, each parsed as one JSON object (or the test fails)."""
    lines = [line for line in served.log_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


def wait_for_event(served: ServeProcess, event: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in json_lines(served) if line.get("event") == event]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {event} line in:\n{served.log_text()[-3000:]}")


def test_every_line_of_a_session_is_json_with_its_connection_context(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    local = make_pdf(served.tmp / "report.pdf", 700_000)
    assert served.sftp(f"put {local} /report.pdf\n").returncode == 0

    end = wait_for_event(served, "session.end")
    lines = json_lines(served)
    for line in lines:
        assert TIME.match(line["time"]), line
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert isinstance(line["message"], str)
    session = [line for line in lines if line.get("conn") == end["conn"]]
    by_event = {line["event"]: line for line in session if "event" in line}
    assert {"connect", "auth.ok", "upload.completed", "session.end"} <= set(by_event)
    for line in session:
        assert line["addr"] == "127.0.0.1", line

    connect, auth = by_event["connect"], by_event["auth.ok"]
    assert "user" not in connect
    assert auth["user"] == "alice"
    assert auth["fingerprint"].startswith("SHA256:")
    assert auth["client"].startswith("SSH-2.0-OpenSSH")

    done = by_event["upload.completed"]
    assert done["user"] == "alice"
    assert done["key"] == "incoming/alice/report.pdf"
    assert done["bytes"] == 700_000
    assert done["sha256"] == sha256_file(local)
    assert done["duration"] > 0 and done["rate"] > 0
    [row] = json.loads(served.cli("uploads", "list", "--json").stdout)
    assert done["upload_id"] == row["id"]

    assert end["user"] == "alice"
    assert end["uploads"] == 1
    assert end["duration"] >= done["duration"]
    assert end["bytes_in"] > 700_000 and end["bytes_out"] > 0


def test_auth_failure_line_names_the_address_and_matches_the_fail2ban_filter(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    stranger = make_user_key(served.tmp / "stranger")
    assert served.sftp("ls\n", key=stranger, source="127.0.0.2").returncode != 0

    failed = wait_for_event(served, "auth.failed")
    assert failed["level"] == "WARNING"
    assert failed["addr"] == "127.0.0.2"
    assert failed["user"] == "alice"
    raw = next(line for line in served.log_text().splitlines() if '"event":"auth.failed"' in line)
    match = fail2ban_regex(FAIL2BAN_AUTH).search(raw)
    assert match is not None and match["host"] == "127.0.0.2", raw
    assert "auth failed for alice from 127.0.0.2: failed key" in failed["message"]


def test_text_format_reads_as_before_with_key_value_context(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory({"logging": {"format": "text"}})
    stranger = make_user_key(served.tmp / "stranger")
    assert served.sftp("ls\n", key=stranger, source="127.0.0.2").returncode != 0
    assert served.user_can_upload()

    deadline = time.monotonic() + 10
    while "event=session.end" not in served.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = served.log_text()
    assert not any(line.startswith("{") for line in text.splitlines())
    failed = next(line for line in text.splitlines() if "event=auth.failed" in line)
    assert re.search(
        r" WARNING sftp_gateway\.ssh: auth failed for alice from 127\.0\.0\.2: failed key, key "
        r"SHA256:\S+ \(attempt 1 of 6\) event=auth\.failed conn=[0-9a-f]{12} user=alice "
        r"addr=127\.0\.0\.2 ",
        failed,
    ), failed
    assert fail2ban_regex(FAIL2BAN_AUTH).search(failed)["host"] == "127.0.0.2"  # type: ignore[index]
    completed = next(line for line in text.splitlines() if "event=upload.completed" in line)
    assert "user=alice addr=127.0.0.1 upload_id=" in completed
    assert "key=incoming/alice/probe.pdf bytes=300000" in completed


def test_the_json_formatter_keeps_one_line_whatever_the_message_holds(tmp_path: Path) -> None:
    record = logging.LogRecord(
        "sftp_gateway.x", logging.WARNING, __file__, 1, "name %s", ("a\nb\u2028c\u0085",), None
    )
    record.__dict__.update(logs.fields("refused", addr="192.0.2.1", bytes=5))
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line and line.isascii()
    parsed = json.loads(line)
    assert parsed["message"] == "name a\nb\u2028c\u0085"
    assert (parsed["event"], parsed["addr"], parsed["bytes"]) == ("refused", "192.0.2.1", 5)


def test_a_refused_request_is_logged_with_who_and_from_where(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    client = served.ssh_client()
    sftp = client.open_sftp()
    with pytest.raises(OSError, match="right-to-left override"):
        sftp.open("/invoice\u202efdp.exe.pdf", "wb").close()
    sftp.close()
    client.close()

    wait_for_event(served, "session.end")
    refused = [
        line
        for line in json_lines(served)
        if line["message"].startswith("request refused:") and "U+202E" in line["message"]
    ]
    assert refused, served.log_text()[-3000:]
    auth = wait_for_event(served, "auth.ok")
    assert refused[0]["addr"] == "127.0.0.1"
    assert refused[0]["conn"] == auth["conn"]  # the session of alice's key


def test_a_thread_that_crashes_is_one_json_line_not_a_bare_traceback() -> None:
    """Anything a thread does not catch reaches the log in its format, with the thread's
    name and the traceback in the line's `exception` field."""
    program = (
        "import threading\n"
        "from sftp_gateway import logs\n"
        "logs.configure('json')\n"
        "def broken(): raise ZeroDivisionError('boom')\n"
        "thread = threading.Thread(target=broken, name='uploads-sender')\n"
        "thread.start(); thread.join()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    [line] = [json.loads(text) for text in result.stderr.splitlines()]
    assert line["event"] == "thread.crashed" and line["thread_name"] == "uploads-sender"
    assert line["level"] == "ERROR"
    assert line["message"] == "thread uploads-sender ended by an uncaught ZeroDivisionError"
    assert "ZeroDivisionError: boom" in line["exception"]
