"""Hostile names and banners: refused or made safe before they reach S3 or the catalog."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable

import paramiko
import pytest

from sftp_gateway.errors import InvalidRequest
from sftp_gateway.paths import normalize
from tests.helpers import make_pdf
from tests.serving import ServeProcess

RTL_NAME = "invoice\u202efdp.exe.pdf"  # shows as invoice.exe.pdf... reversed: a disguise


@pytest.mark.parametrize(
    ("char", "kind"),
    [
        ("\u202e", "a right-to-left override character (U+202E)"),
        ("\u2028", "a line separator character (U+2028)"),
        ("\u2029", "a paragraph separator character (U+2029)"),
        ("\u0085", "a next-line control character (U+0085)"),
        ("\u009b", "a control character (U+009B)"),
        ("\x1b", "a control character (U+001B)"),
        ("\x7f", "a control character (U+007F)"),
        ("\u2066", "a left-to-right isolate character (U+2066)"),
        ("\u200f", "a right-to-left mark character (U+200F)"),
        ("\u061c", "an Arabic letter mark character (U+061C)"),
        ("\u200b", "a zero-width space character (U+200B)"),
        ("\ufeff", "(U+FEFF)"),
    ],
)
def test_name_with_a_hostile_character_is_refused_naming_its_kind(char: str, kind: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        normalize(f"/reports/q3{char}.pdf")
    assert kind in str(raised.value)
    assert str(raised.value).startswith("file name contains ")


def test_ordinary_unicode_names_are_still_accepted() -> None:
    assert normalize("/Rapports/été 2026/naïve — 東京.pdf") == "/Rapports/été 2026/naïve — 東京.pdf"


def paramiko_sftp(served: ServeProcess) -> paramiko.SSHClient:
    client = served.ssh_client()
    return client


def stored_keys(served: ServeProcess) -> list[str]:
    listing = served.s3().list_objects_v2(Bucket=served.bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_upload_with_rtl_override_or_line_separator_is_refused_with_its_reason(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    local = make_pdf(served.tmp / "local.pdf", 5000)
    result = served.sftp(f'put {local} "/{RTL_NAME}"\n')
    assert result.returncode != 0  # OpenSSH shows only "Failure"; paramiko shows the text
    client = paramiko_sftp(served)
    try:
        sftp = client.open_sftp()
        for name, kind in [
            (RTL_NAME, "file name contains a right-to-left override character (U+202E)"),
            ("q3\u2028.pdf", "file name contains a line separator character (U+2028)"),
            ("q3\u0085.pdf", "file name contains a next-line control character (U+0085)"),
        ]:
            with pytest.raises(OSError, match=re.escape(kind)):
                sftp.put(str(local), "/" + name)
    finally:
        client.close()
    assert stored_keys(served) == []
    assert served.user_can_upload("plain-name.pdf")


def test_overlong_client_banner_is_stored_truncated_to_printable_ascii(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=20)
    transport = paramiko.Transport(sock)
    transport.local_version = "SSH-2.0-" + "x" * 300 + "\u00e9\u2028" + "y" * 400
    try:
        transport.connect(username="alice", pkey=paramiko.PKey.from_path(served.key_path))
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        sftp.put(str(make_pdf(served.tmp / "banner.pdf", 3000)), "/banner.pdf")
    finally:
        transport.close()
    (upload,) = json.loads(served.cli("uploads", "list", "--json").stdout)
    assert upload["status"] == "completed"
    version = upload["client_version"]
    assert len(version) == 255 and version.startswith("SSH-2.0-xxx") and version.isascii()
