"""`sftp-gateway links create|list|revoke` against a real catalog (the CLI subprocess)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from tests.helpers import add_user_cli, base_config, make_user_key


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sftp_gateway", *args, "--config", str(config)],
        text=True,
        capture_output=True,
        timeout=60,
    )


def config_with_alice(tmp_path: Path, **web: str) -> Path:
    config = base_config(tmp_path, "http://127.0.0.1:1", "bucket")
    config["web"] = {"listen": "127.0.0.1:8443", **web}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    add_user_cli(path, "alice", make_user_key(tmp_path / "keys"))
    return path


def test_links_create_prints_a_url_whose_token_is_stored_hashed(tmp_path: Path) -> None:
    config = config_with_alice(tmp_path, public_url="https://upload.example.com/")
    created = run(
        config,
        "links",
        "create",
        "alice",
        "--expires",
        "2d",
        "--max-uploads",
        "3",
        "--max-size",
        "2GiB",
        "--folder",
        "reports/q3",
        "--note",
        "Q3 reports",
    )
    assert created.returncode == 0, created.stderr
    url = created.stdout.strip()
    assert url.startswith("https://upload.example.com/u/")
    token = url.rsplit("/", 1)[1]
    assert len(token) >= 43
    with sqlite3.connect(tmp_path / "catalog.db") as db:
        stored = db.execute("select token_sha256 from upload_links").fetchall()
    assert stored == [(hashlib.sha256(token.encode()).hexdigest(),)]
    assert token not in (tmp_path / "catalog.db").read_bytes().decode("latin-1")

    listed = json.loads(run(config, "links", "list", "--json").stdout)
    assert len(listed) == 1
    link = listed[0]
    assert (link["user"], link["folder"], link["max_uploads"], link["uploads_used"]) == (
        "alice",
        "/reports/q3",
        3,
        0,
    )
    assert link["max_size"] == 2 << 30 and link["note"] == "Q3 reports" and not link["revoked"]

    assert run(config, "links", "revoke", link["id"]).returncode == 0
    assert json.loads(run(config, "links", "list", "--json").stdout)[0]["revoked"] is True
    tsv = run(config, "links", "list").stdout
    assert "\tyes\t" in tsv


def test_links_cli_errors_name_the_problem(tmp_path: Path) -> None:
    config = config_with_alice(tmp_path)
    default = run(config, "links", "create", "alice")
    assert default.stdout.startswith("http://127.0.0.1:8443/u/")
    bad = run(config, "links", "create", "alice", "--expires", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    escape = run(config, "links", "create", "alice", "--folder", "../bob")
    assert escape.returncode == 2 and "--folder" in escape.stderr
    nobody = run(config, "links", "create", "bob")
    assert nobody.returncode == 1 and "no such user: bob" in nobody.stderr
    missing = run(config, "links", "revoke", "no-such-id")
    assert missing.returncode == 1 and "no upload link with id no-such-id" in missing.stderr
    assert "Traceback" not in bad.stderr + escape.stderr + nobody.stderr + missing.stderr


def no_links(config: Path) -> bool:
    return json.loads(run(config, "links", "list", "--json").stdout) == []


def test_expires_takes_a_future_date_or_time_and_refuses_a_past_one_naming_the_option(
    tmp_path: Path,
) -> None:
    config = config_with_alice(tmp_path)
    past = run(config, "links", "create", "alice", "--expires", "2020-01-01")
    assert past.returncode == 2 and past.stdout == ""
    assert "Error: Invalid value for --expires: '2020-01-01' is in the past (it is now " in (
        past.stderr
    )
    assert "give a future date or time, or a duration such as 7d" in past.stderr
    assert no_links(config)

    soon = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    for value in (soon.strftime("%Y-%m-%dT%H:%M:%SZ"), soon.isoformat()):
        created = run(config, "links", "create", "alice", "--expires", value)
        assert created.returncode == 0, created.stderr
        assert created.stderr.strip().endswith(f"expires {soon.isoformat()}")
    in_a_week = datetime.now(UTC) + timedelta(days=7)
    day = in_a_week.date().isoformat()  # a date alone: 00:00 UTC that day
    created = run(config, "links", "create", "alice", "--expires", day)
    assert created.returncode == 0, created.stderr
    assert created.stderr.strip().endswith(f"expires {day}T00:00:00+00:00")
    assert len(json.loads(run(config, "links", "list", "--json").stdout)) == 3


EXPIRES_REFUSED = [
    ("9999999d", "'9999999d' is too far ahead: at most 3650d from now"),
    ("99999999999d", "'99999999999d' is too far ahead: at most 3650d from now"),
    ("9999-12-31", "'9999-12-31' is too far ahead: at most 3650d from now"),
    ("0d", "'0d' is no time at all: use 30m, 12h, 7d or 2w"),
    ("today", "'today' is not a duration or a date: use 30m, 12h, 7d, 2w or an ISO 8601"),
]
MAX_SIZE_REFUSED = [
    ("0", "'0' allows no file at all: give 1 byte or more"),
    ("0KiB", "'0KiB' allows no file at all: give 1 byte or more"),
    ("6TiB", "'6TiB' is more than S3's largest object, 5 TiB"),
    ("0.5", "'0.5'"),
]


def test_expires_and_max_size_that_make_no_sense_are_usage_errors_naming_the_option(
    tmp_path: Path,
) -> None:
    """A --max-size of 0 would be stored and then read as "no link limit" by the upload
    page. One catalog for all the cases: each CLI run is a process start."""
    config = config_with_alice(tmp_path)
    cases = [("--expires", value, text) for value, text in EXPIRES_REFUSED]
    cases += [("--max-size", value, text) for value, text in MAX_SIZE_REFUSED]
    for option, value, message in cases:
        result = run(config, "links", "create", "alice", option, value)
        assert (result.returncode, result.stdout) == (2, ""), (option, value)
        assert f"Error: Invalid value for {option}: {message}" in result.stderr
        assert "Traceback" not in result.stderr
    assert no_links(config)


def test_a_note_with_a_control_character_is_refused(tmp_path: Path) -> None:
    """`links list` prints one tab-separated line per link: a newline would split it."""
    config = config_with_alice(tmp_path)
    result = run(config, "links", "create", "alice", "--note", "Q3\nreports")
    assert (result.returncode, result.stdout) == (2, "")
    assert (
        "Error: Invalid value for --note: contains the control character \\n (one line of text)"
    ) in result.stderr
    assert no_links(config)
