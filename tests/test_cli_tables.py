"""The CLI for people: tables on a terminal, TSV in a pipe, JSON; `--since 2h`; one-line
catalog errors; the demo's realistic sample and its missing-moto message."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from sftp_gateway.app import build_catalog
from sftp_gateway.auth import parse_public_key
from sftp_gateway.catalog.repository import COMPLETED, IN_PROGRESS, UploadRecord
from sftp_gateway.cli import main
from sftp_gateway.config import load_settings
from sftp_gateway.samplepdf import write_sample_pdf
from tests.helpers import free_port, make_user_key

MIB = 1024 * 1024
CLI = [sys.executable, "-m", "sftp_gateway"]
# POSIX TZ: "XYZ-02" is two hours east of UTC, so local times differ visibly from UTC.
TERMINAL_TZ = "XYZ-02"
FINISHED_AT = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def run_in_terminal(args: list[str], timeout: float = 30) -> str:
    """Run a command with stdout on a pseudo-terminal, as at an operator's shell."""
    master, slave = pty.openpty()
    env = {**os.environ, "TZ": TERMINAL_TZ, "COLUMNS": "200"}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode().replace("\r\n", "\n")


def run_piped(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ}
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    path.write_text(
        f"storage: {{bucket: acme-inbound, prefix: incoming}}\ncatalog: {{url: '{url}'}}\n"
    )
    return path


def add_upload(
    config: Path, name: str, *, started: datetime, size: int, status: str = COMPLETED
) -> UploadRecord:
    catalog = build_catalog(load_settings(config))
    record = UploadRecord(
        id=f"{abs(hash(name)) % 10**8:08d}-0000-4000-8000-000000000000",
        user_name="alice",
        path=f"/{name}",
        bucket="acme-inbound",
        object_key=f"incoming/alice/{name}",
        status=IN_PROGRESS,
        started_at=started,
        client_ip="192.0.2.7",
    )
    catalog.start_upload(record)
    if status == COMPLETED:
        catalog.finish_upload(record.id, status=COMPLETED, size=size, sha256="ab" * 32)
    else:
        catalog.update_upload(record.id, size=size)
    return record


def column_starts(header: str) -> list[int]:
    return [m.start() for m in re.finditer(r"\S+(?: \S+)?", header)]


def test_uploads_list_on_a_terminal_is_an_aligned_table_in_local_time(config: Path) -> None:
    add_upload(config, "report.pdf", started=FINISHED_AT, size=3 * MIB + MIB // 2)
    add_upload(config, "tiny.pdf", started=FINISHED_AT - timedelta(hours=1), size=42)
    out = run_in_terminal([*CLI, "uploads", "list", "--config", str(config)])
    header, *rows = out.strip().splitlines()
    assert header.split() == ["STARTED", "USER", "STATUS", "SIZE", "FROM", "OBJECT", "ID"]
    assert len(rows) == 2
    # 12:00 UTC shown at TZ=UTC+2 as the operator's wall clock.
    assert rows[0].startswith("2026-03-01 14:00:00  alice")
    assert rows[1].startswith("2026-03-01 13:00:00  alice")
    # Sizes for people, right-aligned under SIZE (their last characters line up).
    size_end = header.index("SIZE") + len("SIZE")
    assert rows[0][:size_end].endswith("3.5 MiB")
    assert rows[1][:size_end].endswith("42 bytes")
    # Every other column starts where its header does.
    for name in ("USER", "STATUS", "FROM", "OBJECT"):
        at = header.index(name)
        assert all(row[at - 2 : at] == "  " and row[at] != " " for row in rows), name


def test_uploads_list_piped_is_tab_separated_without_header(config: Path) -> None:
    record = add_upload(config, "report.pdf", started=FINISHED_AT, size=123_456)
    result = run_piped("uploads", "list", "--config", str(config))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    fields = line.split("\t")
    assert fields[0] == record.id
    assert fields[1] == "2026-03-01T12:00:00+00:00"  # exact UTC for scripts
    assert fields[3:5] == ["completed", "123456"]  # exact bytes for scripts
    assert fields[-1] == "s3://acme-inbound/incoming/alice/report.pdf"


def test_in_progress_uploads_show_bytes_so_far_and_rate(config: Path) -> None:
    started = datetime.now(UTC) - timedelta(seconds=100)
    add_upload(config, "big.pdf", started=started, size=100 * MIB, status=IN_PROGRESS)
    args = ["uploads", "list", "--status", "in_progress", "--config", str(config)]
    out = run_in_terminal([*CLI, *args])
    header, row = out.strip().splitlines()
    assert "RATE" in header.split()
    assert "100 MiB" in row
    assert re.search(r"\b(1(\.0)? MiB|\d{3,4}(\.\d)? KiB)/s\b", row), row
    result = CliRunner().invoke(main, [*args, "--json"])
    [entry] = json.loads(result.output)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    assert entry["size"] == 100 * MIB
    assert 100 * MIB / elapsed <= entry["bytes_per_second"] <= 100 * MIB / 100
    piped = run_piped(*args)
    rate = int(piped.stdout.split("\t")[-1])
    assert 0.9 * MIB < rate <= MIB


@pytest.mark.parametrize(
    ("since", "expected"),
    [("2h", {"recent.pdf"}), ("90m", {"recent.pdf"}), ("3d", {"recent.pdf", "old.pdf"})],
)
def test_since_takes_relative_forms(config: Path, since: str, expected: set[str]) -> None:
    now = datetime.now(UTC)
    add_upload(config, "recent.pdf", started=now - timedelta(minutes=30), size=1)
    add_upload(config, "old.pdf", started=now - timedelta(hours=30), size=1)
    result = CliRunner().invoke(
        main, ["uploads", "list", "--since", since, "--json", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert {row["path"].lstrip("/") for row in json.loads(result.output)} == expected


def test_since_today_and_yesterday_are_local_midnights(config: Path) -> None:
    local_midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    add_upload(config, "today.pdf", started=local_midnight + timedelta(seconds=1), size=1)
    add_upload(config, "yesterday.pdf", started=local_midnight - timedelta(hours=1), size=1)
    add_upload(config, "older.pdf", started=local_midnight - timedelta(hours=30), size=1)

    def listed(since: str) -> set[str]:
        result = CliRunner().invoke(
            main, ["uploads", "list", "--since", since, "--json", "--config", str(config)]
        )
        assert result.exit_code == 0, result.output
        return {row["path"].lstrip("/") for row in json.loads(result.output)}

    assert listed("today") == {"today.pdf"}
    assert listed("yesterday") == {"today.pdf", "yesterday.pdf"}


def test_since_that_is_no_time_is_a_usage_error_naming_the_option(config: Path) -> None:
    result = CliRunner().invoke(
        main, ["uploads", "list", "--since", "last-tuesday", "--config", str(config)]
    )
    assert result.exit_code == 2
    assert "--since" in result.output and "2h" in result.output


def test_users_list_on_a_terminal_puts_each_key_on_its_own_row(
    config: Path, tmp_path: Path
) -> None:
    catalog = build_catalog(load_settings(config))
    keys = [
        parse_public_key(make_user_key(tmp_path / f"k{i}").with_suffix(".pub").read_text())
        for i in range(2)
    ]
    catalog.add_user(
        "bob", keys[0], home="bob", permissions=frozenset({"list", "write"}), email="b@x.org"
    )
    catalog.add_key("bob", keys[1])
    out = run_in_terminal([*CLI, "users", "list", "--config", str(config)])
    header, first, second = out.strip().splitlines()
    assert header.split() == ["NAME", "EMAIL", "HOME", "PERMISSIONS", "CREATED", "KEYS"]
    assert first.split()[:4] == ["bob", "b@x.org", "bob/", "list,write"]
    at = header.index("KEYS")
    assert {first[at:].strip(), second[at:].strip()} == {k.fingerprint for k in keys}
    assert second[:at].strip() == ""
    piped = run_piped("users", "list", "--config", str(config))
    assert piped.stdout.count("\n") == 1 and piped.stdout.startswith("bob\tb@x.org\tbob/\t")


def test_unreachable_catalog_is_one_line_naming_host_and_database(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    path = tmp_path / "gateway.yaml"
    url = f"postgresql+psycopg://gw:s3cret-pw@127.0.0.1:{port}/sftpcatalog"
    path.write_text(f"storage: {{bucket: acme-inbound}}\ncatalog: {{url: '{url}'}}\n")
    result = run_piped("uploads", "list", "--config", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"sftp-gateway: cannot use postgresql database sftpcatalog on 127.0.0.1:{port}"
    )
    assert "s3cret" not in line and "Traceback" not in line and "sqlalche.me" not in line


@pytest.mark.postgres
def test_missing_catalog_database_is_one_line(tmp_path: Path) -> None:
    from tests.conftest import PG_ADMIN_URL

    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/no_such_catalog_db"
    path = tmp_path / "gateway.yaml"
    path.write_text(f"storage: {{bucket: acme-inbound}}\ncatalog: {{url: '{url}'}}\n")
    result = run_piped("users", "list", "--config", str(path))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "postgresql database no_such_catalog_db on 127.0.0.1:5432" in line
    assert "does not exist" in line


def test_demo_without_moto_says_which_extra_to_install(tmp_path: Path) -> None:
    # The production install has no moto: hide it from this interpreter.
    code = "import sys; sys.modules['moto'] = None; from sftp_gateway.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "demo", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "sftp-gateway: the demo needs: pip install 'sftp-gateway[demo]'"
    )


def test_sample_pdf_is_a_valid_pdf_of_the_size_asked(tmp_path: Path) -> None:
    path = write_sample_pdf(tmp_path / "sample.pdf", 3_000_000)
    data = path.read_bytes()
    assert 2_990_000 <= len(data) <= 3_000_000
    assert data.startswith(b"%PDF-1.4\n") and data.endswith(b"%%EOF\n")
    # The xref table points at each object exactly, as viewers rely on.
    xref_at = int(data.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert data[xref_at:].startswith(b"xref\n")
    lines = data[xref_at:].split(b"\n")
    count = int(lines[1].split()[1])
    for number, entry in enumerate(lines[3 : 2 + count], start=1):
        offset = int(entry.split()[0])
        assert data[offset:].startswith(b"%d 0 obj\n" % number)
    assert b"/Type /Pages" in data and b"/Count 4" in data
    assert b"/Subtype /Image" in data and b"(sftp-gateway demo document, page 1 of 4) Tj" in data
    # Stream lengths are exact: each /Length N is followed by N bytes and endstream.
    for match in re.finditer(rb"/Length (\d+) >>\nstream\n", data):
        end = match.end() + int(match.group(1))
        assert data[end : end + 10] == b"\nendstream"


@pytest.mark.parametrize("since", ["3000000d", "99999999999d"])
def test_since_reaching_back_before_the_year_1_is_a_usage_error_naming_the_option(
    config: Path, since: str
) -> None:
    result = CliRunner().invoke(
        main, ["uploads", "list", "--since", since, "--config", str(config)]
    )
    assert result.exit_code == 2
    assert (
        f"Error: Invalid value for --since: {since!r} reaches back before the year 1:"
        " use a shorter span or a date"
    ) in result.output


def test_check_config_fails_as_serve_would_when_the_admin_token_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"storage: {{bucket: acme-inbound}}\ncatalog: {{url: 'sqlite:///{tmp_path / 'c.db'}'}}\n"
        f"admin: {{listen: '127.0.0.1:{free_port()}', token_env: SFTPGW_TEST_ADMIN_TOKEN}}\n"
    )
    monkeypatch.delenv("SFTPGW_TEST_ADMIN_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "sftp-gateway: config error: admin.token_env: env var SFTPGW_TEST_ADMIN_TOKEN is not set"
    )
    monkeypatch.setenv("SFTPGW_TEST_ADMIN_TOKEN", "s3cret-token")
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0 and result.output.startswith("config OK"), result.output


def test_too_many_workers_for_the_budget_are_blamed_on_the_option_given(config: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--workers", "200", "--config", str(config)])
    assert result.exit_code == 2
    assert "Error: Invalid value for --workers: 200 workers leave each " in result.output
    assert "; raise uploads.memory_budget or lower --workers" in result.output
    assert "server.workers" not in result.output


def test_demo_on_a_busy_port_is_blamed_on_the_port_option(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_piped("demo", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert (
        f"Error: Invalid value for --port: cannot listen on 127.0.0.1:{port}:"
        " Address already in use"
    ) in result.stderr
    assert "server.listen" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("signum", "status", "line"),
    [
        (signal.SIGINT, 130, "sftp-gateway: interrupted during start-up"),
        (signal.SIGTERM, -signal.SIGTERM, "sftp-gateway: terminated during start-up"),
    ],
)
def test_serve_stopped_during_start_up_says_so_in_one_line(
    tmp_path: Path, signum: int, status: int, line: str
) -> None:
    """Before it listens, `serve` has no drain to do: Ctrl-C ends it with exit 130 and
    SIGTERM kills it as usual (143 in a shell), each with one line, no traceback and no
    click `Aborted!`. The signal is sent while it generates its RSA host key."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "storage: {bucket: acme-inbound, endpoint_url: 'http://127.0.0.1:1'}\n"
        f"catalog: {{url: 'sqlite:///{tmp_path / 'c.db'}'}}\n"
        f"server: {{listen: '127.0.0.1:{free_port()}', host_keys_dir: '{tmp_path / 'hk'}',"
        " workers: 1}\n"
    )
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for text in proc.stderr:  # JSON log lines
        seen.append(text)
        if "generating rsa host key" in text:
            proc.send_signal(signum)
            break
    _, rest = proc.communicate(timeout=60)
    err = "".join(seen) + rest
    assert proc.returncode == status, err
    assert [t for t in err.splitlines() if not t.startswith("{")] == [line]
    assert "listening on" not in err
