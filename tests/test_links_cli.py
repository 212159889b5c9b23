"""`sftp-gateway links create|list|revoke` against a real catalog (the CLI subprocess)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
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
