"""The live uploads page in a real headless Chromium, against a real `serve` process.

A paramiko client writes a 30 MB PDF slowly; the page must show it in progress with its
bytes advancing (without a reload), then among the recent uploads with its SHA-256.
Skipped only when Debian's `chromium` is not installed (scripts/install-test-deps).
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.admin_support import AdminServe, http_get, serve_with_admin
from tests.helpers import MIB, make_pdf, wait_until

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install-test-deps)"
)
ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "page-test-token"
CHUNK = 512 * 1024
PAUSE = 0.12  # about 4 MiB/s: a 30 MB upload stays on the page for several seconds


def slow_upload(admin: AdminServe, source: Path, remote: str, done: threading.Event) -> None:
    """paramiko writes `source` in 512 KiB chunks with pauses, then closes the file."""
    served = admin.served
    client = served.ssh_client()
    try:
        sftp = client.open_sftp()
        with source.open("rb") as local, sftp.open(remote, "wb") as handle:
            while chunk := local.read(CHUNK):
                handle.write(chunk)
                time.sleep(PAUSE)
    finally:
        client.close()
        done.set()


def bytes_shown(page: Any, remote: str) -> int:
    """The `Received` bytes the page shows for `remote` now (0 when not listed)."""
    cell = page.locator(f'#active tr[data-upload-key$="{remote.lstrip("/")}"] td.bytes')
    if cell.count() == 0:
        return 0
    return int(cell.first.get_attribute("data-bytes") or 0)


def test_page_shows_an_upload_advancing_then_completed_with_its_sha256(
    serve_factory, monkeypatch, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("H1_PAGE_TOKEN", TOKEN)
    admin = serve_with_admin(
        serve_factory,
        # moto mislabels a multipart object's composite CRC32, which a plain GET then fails.
        {"admin": {"token_env": "H1_PAGE_TOKEN"}, "storage": {"part_checksums": False}},
    )
    served = admin.served
    assert served.user_can_upload("earlier-report.pdf", size=2 * MIB)
    not_pdf = tmp_path / "not-a-pdf.pdf"
    not_pdf.write_bytes(b"plain text, not a PDF\n" * 100)
    served.sftp(f"put {not_pdf} /not-a-pdf.pdf\n")  # refused: a failed row with its reason

    source = make_pdf(tmp_path / "scan-30MB.pdf", 30_000_000)
    expected_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    done = threading.Event()
    uploader = threading.Thread(
        target=slow_upload, args=(admin, source, "/scan-30MB.pdf", done), daemon=True
    )

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(f"{admin.url}/uploads?token={TOKEN}")  # sets the cookie, drops the token
            assert page.url == f"{admin.url}/uploads"
            page.wait_for_selector('#recent tr[data-status="failed"]')
            assert "not a PDF" in page.inner_text('#recent tr[data-status="failed"] td.reason')

            uploader.start()
            wait_until(lambda: bytes_shown(page, "scan-30MB.pdf") > 0, timeout=20)
            first = bytes_shown(page, "scan-30MB.pdf")
            wait_until(lambda: bytes_shown(page, "scan-30MB.pdf") > first, timeout=10)
            second = bytes_shown(page, "scan-30MB.pdf")
            assert first < second < 30_000_000
            row = page.locator('#active tr[data-upload-key$="scan-30MB.pdf"]')
            assert row.locator("td.user").inner_text() == "alice"
            assert "/s" in row.locator("td.rate").inner_text()
            assert row.locator("progress").count() == 1  # sftp announces no size
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "uploads-page.png"), full_page=True)

            assert done.wait(timeout=60), "the slow upload did not finish"
            completed = page.locator('#recent tr[data-status="completed"]').filter(
                has_text="scan-30MB.pdf"
            )
            completed.wait_for(timeout=15_000)
            assert completed.locator("td.sha256").inner_text().strip() == expected_sha
            wait_until(lambda: bytes_shown(page, "scan-30MB.pdf") == 0, timeout=10)
        finally:
            browser.close()
    uploader.join(timeout=10)
    assert served.object_sha256("incoming/alice/scan-30MB.pdf") == expected_sha


def test_api_lists_an_upload_found_by_part_of_its_key(serve_factory) -> None:
    admin = serve_with_admin(serve_factory)
    assert admin.served.user_can_upload("invoice-2026-11.pdf")
    assert admin.served.user_can_upload("other.pdf")

    found = http_get(f"{admin.url}/api/uploads?q=invoice-2026&status=completed")
    assert found.status == 200
    import json

    rows = json.loads(found.body)["uploads"]
    assert [r["path"] for r in rows] == ["/invoice-2026-11.pdf"]
    assert rows[0]["sha256"] and rows[0]["user_name"] == "alice"

    bad = http_get(f"{admin.url}/api/uploads?status=done")
    assert bad.status == 400
    assert json.loads(bad.body)["error"].startswith("status: must be one of")
