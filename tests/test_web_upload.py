"""Browser upload links on a real `serve`: the tus protocol (requests) and the page in a
real headless Chromium, each upload checked in S3, the catalog and the outbox."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import free_port, make_pdf, tagged_sha256, wait_until
from tests.serving import ServeProcess

ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS = Path(__file__).parent.parent / "docs"
TUS = {"Tus-Resumable": "1.0.0"}
MIB = 1 << 20


@pytest.fixture
def web(serve_factory: Callable[..., ServeProcess]) -> ServeProcess:
    """`serve` with its admin listener (upload pages under /u/), 5 MiB parts."""
    served = serve_factory({"admin": {"listen": f"127.0.0.1:{free_port()}"}})
    wait_until(lambda: "admin listener on" in served.log_text(), timeout=20)
    return served


def base_url(served: ServeProcess) -> str:
    text = served.config_path.read_text()
    listen = text.split("admin:", 1)[1].split("listen:", 1)[1].split()[0].strip("'\"")
    return f"http://{listen}"


def create_link(served: ServeProcess, *args: str) -> tuple[str, str]:
    """(URL, link id) from `links create alice ...`."""
    result = served.cli("links", "create", "alice", *args)
    url = result.stdout.strip()
    link_id = result.stderr.split("link ", 1)[1].split()[0]
    return url, link_id


def catalog_rows(served: ServeProcess, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(served.tmp / "catalog.db") as db:
        return db.execute(sql).fetchall()


def open_multipart(served: ServeProcess) -> list[Any]:
    return served.s3().list_multipart_uploads(Bucket=served.bucket).get("Uploads", [])


def tus_create(url: str, name: str, length: int) -> requests.Response:
    meta = "filename " + base64.b64encode(name.encode()).decode()
    headers = {**TUS, "Upload-Length": str(length), "Upload-Metadata": meta}
    return requests.post(url + "/files", headers=headers, timeout=10)


def tus_patch(location: str, offset: int, data: bytes) -> requests.Response:
    headers = {
        **TUS,
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    return requests.patch(location, data=data, headers=headers, timeout=60)


def absolute(url: str, location: str) -> str:
    return url.split("/u/", 1)[0] + location


# -- the protocol ------------------------------------------------------------------------


def test_tus_upload_resumes_at_head_offset_and_refuses_a_wrong_offset(web: ServeProcess) -> None:
    url, link_id = create_link(web, "--note", "protocol")
    body = make_pdf(web.tmp / "proto.pdf", 12 * MIB).read_bytes()
    options = requests.options(url + "/files", headers=TUS, timeout=10)
    assert options.status_code == 204
    assert "creation" in options.headers["Tus-Extension"]
    created = tus_create(url, "proto.pdf", len(body))
    assert created.status_code == 201, created.text
    location = absolute(url, created.headers["Location"])
    assert requests.head(location, headers=TUS, timeout=10).headers["Upload-Offset"] == "0"

    first = tus_patch(location, 0, body[: 7 * MIB])  # one 5 MiB part durable, 2 MiB not
    assert first.status_code == 204, first.text
    assert first.headers["Upload-Offset"] == str(5 * MIB)
    head = requests.head(location, headers=TUS, timeout=10)
    assert head.headers["Upload-Offset"] == str(5 * MIB)

    wrong = tus_patch(location, 7 * MIB, body[7 * MIB :])
    assert wrong.status_code == 409
    assert "does not match" in wrong.text

    last = tus_patch(location, 5 * MIB, body[5 * MIB :])
    assert last.status_code == 204, last.text
    sha = hashlib.sha256(body).hexdigest()
    assert last.headers["Upload-Sha256"] == sha
    assert tagged_sha256(web.s3(), web.bucket, "incoming/alice/proto.pdf") == sha
    assert "PATCH at offset 5242880" in web.log_text()
    row = catalog_rows(
        web,
        "select status, link_id, key_fingerprint, client_version from uploads "
        "where object_key='incoming/alice/proto.pdf'",
    )
    assert row == [("completed", link_id, None, requests.utils.default_user_agent())]
    payloads = [json.loads(p) for (p,) in catalog_rows(web, "select payload from outbox")]
    assert [p["link_id"] for p in payloads if p["key"] == "incoming/alice/proto.pdf"] == [link_id]
    listed = json.loads(web.cli("links", "list", "--json").stdout)
    assert listed[0]["uploads_used"] == 1


def test_tus_delete_aborts_the_multipart_upload(web: ServeProcess) -> None:
    url, _ = create_link(web)
    body = make_pdf(web.tmp / "gone.pdf", 11 * MIB).read_bytes()
    location = absolute(url, tus_create(url, "gone.pdf", len(body)).headers["Location"])
    assert tus_patch(location, 0, body[: 6 * MIB]).headers["Upload-Offset"] == str(5 * MIB)
    assert open_multipart(web)
    assert requests.delete(location, headers=TUS, timeout=10).status_code == 204
    assert open_multipart(web) == []
    assert requests.head(location, headers=TUS, timeout=10).headers["Upload-Offset"] == "0"


def test_tus_refusals_leave_nothing_in_s3(web: ServeProcess) -> None:
    url, link_id = create_link(web, "--max-size", "1MiB")
    too_big = tus_create(url, "big.pdf", 2 * MIB)
    assert too_big.status_code == 413 and "maximum size" in too_big.text
    fake = b"hello, not a pdf" * 20_000
    location = absolute(url, tus_create(url, "fake.pdf", len(fake)).headers["Location"])
    not_pdf = tus_patch(location, 0, fake)
    assert not_pdf.status_code == 415 and "not a PDF" in not_pdf.text
    wrong = requests.post(url + "x/files", headers=TUS, timeout=10)
    assert wrong.status_code == 404
    assert "refused 127.0.0.1: unknown upload link token" in web.log_text()
    web.cli("links", "revoke", link_id)
    revoked = tus_create(url, "late.pdf", 1000)
    assert revoked.status_code == 410 and "revoked" in revoked.text
    assert web.s3().list_objects_v2(Bucket=web.bucket).get("KeyCount", 0) == 0
    assert open_multipart(web) == []
    assert web.user_can_upload()  # SFTP still serves beside it


def random_pdf(size: int) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size - 9)


def stored(served: ServeProcess, name: str) -> bytes:
    key = f"incoming/alice/{name}"
    body: bytes = served.s3().get_object(Bucket=served.bucket, Key=key)["Body"].read()
    return body


def test_a_corrected_file_of_the_same_name_never_continues_the_interrupted_one(
    web: ServeProcess,
) -> None:
    url, _ = create_link(web)
    old, new = random_pdf(12 * MIB), random_pdf(10 * MIB)
    old_location = absolute(url, tus_create(url, "report.pdf", len(old)).headers["Location"])
    assert tus_patch(old_location, 0, old[: 7 * MIB]).headers["Upload-Offset"] == str(5 * MIB)

    location = absolute(url, tus_create(url, "report.pdf", len(new)).headers["Location"])
    head = requests.head(location, headers=TUS, timeout=10)
    assert head.headers["Upload-Offset"] == "0"
    wrong = tus_patch(location, 5 * MIB, new[5 * MIB :])
    assert wrong.status_code == 409
    done = tus_patch(location, 0, new)
    assert done.status_code == 204, done.text
    sha = hashlib.sha256(new).hexdigest()
    assert done.headers["Upload-Sha256"] == sha
    assert stored(web, "report.pdf") == new
    rows = catalog_rows(web, "select status, size, sha256 from uploads order by started_at")
    assert rows == [("aborted", 5 * MIB, None), ("completed", len(new), sha)]
    assert open_multipart(web) == []
    # the old URL does not pick up the new file either
    assert requests.head(old_location, headers=TUS, timeout=10).headers["Upload-Offset"] == "0"


def test_a_link_never_continues_an_interrupted_sftp_upload_of_the_same_name(
    web: ServeProcess,
) -> None:
    url, _ = create_link(web)
    body = random_pdf(11 * MIB)
    sftp = web.ssh_client().open_sftp()
    handle = sftp.open("/shared.pdf", "wb")
    handle.write(body[: 6 * MIB])
    handle.flush()
    sftp.get_channel().get_transport().close()  # the SFTP client is cut mid-file
    wait_until(
        lambda: catalog_rows(web, "select status from uploads") == [("interrupted",)], timeout=20
    )
    other = random_pdf(11 * MIB)
    location = absolute(url, tus_create(url, "shared.pdf", len(other)).headers["Location"])
    assert requests.head(location, headers=TUS, timeout=10).headers["Upload-Offset"] == "0"
    assert tus_patch(location, 0, other).status_code == 204
    assert stored(web, "shared.pdf") == other


def test_the_same_name_and_size_again_is_a_new_upload_not_a_done_one(web: ServeProcess) -> None:
    url, _ = create_link(web)
    first, second = random_pdf(MIB), random_pdf(MIB)
    location = absolute(url, tus_create(url, "invoice.pdf", MIB).headers["Location"])
    assert tus_patch(location, 0, first).status_code == 204
    again = absolute(url, tus_create(url, "invoice.pdf", MIB).headers["Location"])
    assert again != location
    assert requests.head(again, headers=TUS, timeout=10).headers["Upload-Offset"] == "0"
    done = tus_patch(again, 0, second)
    assert done.status_code == 204
    assert done.headers["Upload-Sha256"] == hashlib.sha256(second).hexdigest()
    assert stored(web, "invoice.pdf") == second
    # the first URL, asked again (its answer lost), is done with its own SHA-256
    head = requests.head(location, headers=TUS, timeout=10)
    assert head.headers["Upload-Offset"] == str(MIB)
    assert head.headers["Upload-Sha256"] == hashlib.sha256(first).hexdigest()
    listed = json.loads(web.cli("links", "list", "--json").stdout)
    assert listed[0]["uploads_used"] == 2


def test_a_link_for_one_upload_publishes_one_of_three_overlapping_uploads(
    web: ServeProcess,
) -> None:
    url, _ = create_link(web, "--max-uploads", "1")
    size = 200_000
    bodies = [random_pdf(size) for _ in range(3)]
    locations = [
        absolute(url, tus_create(url, f"f{i}.pdf", size).headers["Location"]) for i in range(3)
    ]
    barrier = threading.Barrier(3, timeout=30)
    answers: list[Any] = [None] * 3

    def body(i: int) -> Any:
        yield bodies[i][:1000]
        barrier.wait()  # every PATCH has passed the link check when the first ends
        yield bodies[i][1000:]

    def send(i: int) -> None:
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        answers[i] = requests.patch(locations[i], data=body(i), headers=headers, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(a.status_code for a in answers) == [204, 410, 410]
    refused = [a for a in answers if a.status_code == 410]
    assert all("used for its 1 uploads" in a.text for a in refused)
    objects = web.s3().list_objects_v2(Bucket=web.bucket).get("Contents", [])
    assert len(objects) == 1
    assert open_multipart(web) == []
    assert json.loads(web.cli("links", "list", "--json").stdout)[0]["uploads_used"] == 1


def test_a_patch_that_spans_a_revocation_stores_nothing(web: ServeProcess) -> None:
    url, link_id = create_link(web)
    body = random_pdf(12 * MIB)
    location = absolute(url, tus_create(url, "during.pdf", len(body)).headers["Location"])
    revoked = threading.Event()

    def stream() -> Any:
        yield body[: 6 * MIB]
        revoked.wait(60)
        yield body[6 * MIB :]

    answer: dict[str, Any] = {}
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    thread = threading.Thread(
        target=lambda: answer.setdefault(
            "r", requests.patch(location, data=stream(), headers=headers, timeout=120)
        )
    )
    thread.start()
    time.sleep(2)
    web.cli("links", "revoke", link_id)
    revoked.set()
    thread.join(120)
    assert answer["r"].status_code == 410 and "revoked" in answer["r"].text
    assert web.s3().list_objects_v2(Bucket=web.bucket).get("KeyCount", 0) == 0
    assert open_multipart(web) == []
    assert catalog_rows(web, "select status from uploads") == [("aborted",)]
    assert json.loads(web.cli("links", "list", "--json").stdout)[0]["uploads_used"] == 0


def test_a_temporary_file_name_is_refused_before_any_byte(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory(
        {
            "admin": {"listen": f"127.0.0.1:{free_port()}"},
            "uploads": {"allowed_extensions": [], "require_pdf_signature": False},
        }
    )
    wait_until(lambda: "admin listener on" in served.log_text(), timeout=20)
    url, _ = create_link(served)
    refused = tus_create(url, "backup.tar.part", 6 * MIB)
    assert refused.status_code == 400
    assert "temporary files" in refused.text
    assert catalog_rows(served, "select * from uploads") == []


def test_a_chunk_smaller_than_a_part_is_refused_before_any_row(web: ServeProcess) -> None:
    url, _ = create_link(web)
    body = random_pdf(8 * MIB)
    location = absolute(url, tus_create(url, "small.pdf", len(body)).headers["Location"])
    small = tus_patch(location, 0, body[: 2 * MIB])
    assert small.status_code == 400
    assert "at least 5242880 bytes" in small.text
    assert catalog_rows(web, "select * from uploads") == []
    assert catalog_rows(web, "select * from outbox") == []
    assert tus_patch(location, 0, body).status_code == 204  # the whole file in one request


def test_bad_numbers_and_unknown_uploads_are_client_errors(web: ServeProcess) -> None:
    url, _ = create_link(web)
    for value in ("\u00b2", "9" * 5000, "-1", "1e3"):
        answer = requests.post(
            url + "/files",
            headers={**TUS, "Upload-Length": value, "Upload-Metadata": "filename YS5wZGY="},
            timeout=10,
        )
        assert answer.status_code == 400 and "Upload-Length" in answer.text
    location = absolute(url, tus_create(url, "a.pdf", 100).headers["Location"])
    odd = requests.patch(
        location,
        data=b"x",
        headers={
            **TUS,
            "Upload-Offset": "\u00b3",
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=10,
    )
    assert odd.status_code == 400 and "Upload-Offset" in odd.text
    name = base64.urlsafe_b64encode(b"a.pdf").decode().rstrip("=")
    issued = location.rsplit("/", 1)[1]
    forged = issued[:-1] + ("1" if issued.endswith("0") else "0")
    never = [f"{name}.100", f"{name}.%C2%B2", forged]
    for ref in never:
        missing = url + "/files/" + ref
        assert requests.head(missing, headers=TUS, timeout=10).status_code == 404
        assert tus_patch(missing, 0, b"%PDF-1.7\n").status_code == 404
    assert " ERROR " not in web.log_text() and "Traceback" not in web.log_text()


# -- the page, in a real browser -----------------------------------------------------------


@pytest.fixture
def browser() -> Any:
    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's chromium is not installed")
    with playwright_api.sync_playwright() as play:
        chrome = play.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chrome
        chrome.close()


def test_browser_uploads_50mb_pdf_resumes_after_closed_page(
    web: ServeProcess, browser: Any
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    url, link_id = create_link(web, "--note", "Quarterly report")
    local = make_pdf(web.tmp / "report.pdf", 50 * 1000 * 1000)
    expected = hashlib.sha256(local.read_bytes()).hexdigest()

    context = browser.new_context()  # one browser profile: its localStorage keeps the upload
    first = context.new_page()
    first.goto(url)
    first.set_input_files("#file", str(local))
    first.click("#start")
    wait_until(lambda: first.eval_on_selector("#bar", "el => el.value") >= 40, timeout=30)
    first.close()  # the lid closes mid-upload
    wait_until(
        lambda: catalog_rows(web, "select status from uploads") == [("interrupted",)], timeout=15
    )

    page = context.new_page()
    page.goto(url)
    page.set_input_files("#file", str(local))
    page.click("#start")
    page.wait_for_selector("#done:not([hidden])", timeout=45_000)
    page.screenshot(path=str(ARTIFACTS / "upload-page.png"))
    shutil.copy(ARTIFACTS / "upload-page.png", DOCS / "upload-page.png")
    assert page.eval_on_selector("#bar", "el => el.value") == 100
    assert expected in page.inner_text("#done")

    resumed_at = [
        int(line.split("PATCH at offset ", 1)[1].split()[0])
        for line in web.log_text().splitlines()
        if "PATCH at offset" in line
    ]
    assert resumed_at[0] == 0 and any(offset > 0 for offset in resumed_at[1:])
    assert "resuming upload" in web.log_text()
    key = "incoming/alice/report.pdf"
    assert tagged_sha256(web.s3(), web.bucket, key) == expected
    head = web.s3().head_object(Bucket=web.bucket, Key=key)
    assert head["Metadata"]["uploaded-by"] == "alice"
    ua = page.evaluate("navigator.userAgent")
    rows = catalog_rows(web, "select status, link_id, client_version, sha256 from uploads")
    assert rows == [("completed", link_id, ua, expected)]
    events = [json.loads(p) for (p,) in catalog_rows(web, "select payload from outbox")]
    assert [(e["type"], e["link_id"], e["client"]) for e in events] == [
        ("upload.completed", link_id, ua)
    ]


def test_browser_shows_why_a_file_is_refused(web: ServeProcess, browser: Any) -> None:
    url, link_id = create_link(web, "--max-size", "2MiB")
    page = browser.new_page()
    not_pdf = web.tmp / "notes.pdf"
    not_pdf.write_bytes(b"just text, not a pdf\n" * 1000)
    page.goto(url)
    page.set_input_files("#file", str(not_pdf))
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert "not a PDF" in page.inner_text("#error")

    big = make_pdf(web.tmp / "big.pdf", 3 * MIB)
    page.goto(url)
    page.set_input_files("#file", str(big))
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert "maximum size" in page.inner_text("#error")

    page.goto(url + "wrong")
    assert "not valid" in page.inner_text("#refused")
    web.cli("links", "revoke", link_id)
    page.goto(url)
    assert "revoked" in page.inner_text("#refused")
    page.screenshot(path=str(ARTIFACTS / "upload-page-revoked.png"))
    time.sleep(0.5)
    assert web.s3().list_objects_v2(Bucket=web.bucket).get("KeyCount", 0) == 0
    assert open_multipart(web) == []


def test_the_page_of_a_removed_users_link_is_the_refused_page(web: ServeProcess) -> None:
    url, _ = create_link(web)
    web.cli("users", "remove", "alice")
    page = requests.get(url, timeout=10)
    assert page.status_code == 410
    assert page.headers["content-type"].startswith("text/html")
    assert "no longer exists" in page.text and 'id="refused"' in page.text
