"""Turn an upload event into an email: plain text and HTML alternatives, one per event.

The Message-ID derives from the event_id, so a mail system that sees the same event
twice (after a crash between sending and recording) can fold the copies together.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterable, Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from sftp_gateway.events.schema import UPLOAD_COMPLETED, UPLOAD_FAILED
from sftp_gateway.paths import hostile_character
from sftp_gateway.units import human_size

__all__ = [
    "MalformedEvent",
    "human_size",
    "parse_event",
    "recipients_for",
    "render_email",
    "valid_address",
]
log = logging.getLogger(__name__)
REQUIRED_FIELDS = ("type", "event_id", "user")
MAX_HEADER_VALUE = 200
_EVENT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")  # it becomes the Message-ID


class MalformedEvent(ValueError):
    """The message body is not an upload event we can announce."""


def parse_event(body: str | bytes) -> dict[str, Any]:
    """The event from an SQS message body, or MalformedEvent saying what is wrong."""
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise MalformedEvent("not a JSON object")
    missing = [name for name in REQUIRED_FIELDS if not event.get(name)]
    if missing:
        raise MalformedEvent(f"missing {', '.join(missing)}")
    if event["type"] not in (UPLOAD_COMPLETED, UPLOAD_FAILED):
        raise MalformedEvent(f"unknown event type {event['type']!r}")
    if not isinstance(event["event_id"], str) or not _EVENT_ID.match(event["event_id"]):
        raise MalformedEvent("event_id is not a short string of letters, digits and '-'")
    return event


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def valid_address(value: object) -> str | None:
    """The address if `value` is exactly one addr-spec (`local@domain`, UTF-8 allowed as
    RFC 6532 does), else None: no display name, comment, list, comma or control character.
    """
    if not isinstance(value, str):
        return None
    address = value.strip(" ")
    if not address or "," in address or any(hostile_character(ch) for ch in address):
        return None
    # RFC 6532 lets any non-ASCII character stand where an ASCII letter may: check the
    # ASCII skeleton with the standard library's RFC 5322 parser.
    skeleton = _NON_ASCII.sub("a", address)
    try:
        parsed = Address(addr_spec=skeleton)
    except Exception:  # the parser raises ValueError, HeaderParseError, IndexError...
        return None
    return address if parsed.addr_spec == skeleton and parsed.domain else None


def recipients_for(
    event: Mapping[str, Any], configured: Iterable[str], per_user: Mapping[str, list[str]]
) -> list[str]:
    """The uploader (if known), the configured list and the user's extras, no duplicates.

    A value that is not one usable address (a line break, two addresses in one) is
    skipped with a WARNING, so the others still get the email.
    """
    user = str(event.get("user"))
    candidates = [
        ("the uploader's email", event.get("email")),
        *(("notifier.recipients", address) for address in configured),
        *((f"notifier.user_recipients[{user}]", address) for address in per_user.get(user, [])),
    ]
    seen: set[str] = set()
    out = []
    for source, value in candidates:
        if value is None or value == "":
            continue
        address = valid_address(value)
        if address is None:
            log.warning(
                "event %s: not emailing %s %a: not one valid email address",
                header_safe(event.get("event_id"), 64),
                source,
                value,
            )
            continue
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(address)
    return out


def _facts(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The label/value lines both the text and the HTML parts show."""
    size = event.get("size")
    size_text = "unknown"
    if isinstance(size, int):
        size_text = human_size(size) if size < 1024 else f"{human_size(size)} ({size:,} bytes)"
    where = event.get("client_ip") or "unknown"
    if event.get("client"):
        where = f"{where} ({event['client']})"
    location = f"s3://{event['bucket']}/{event['key']}" if event.get("bucket") else "-"
    facts = [
        ("Uploaded by", str(event.get("user"))),
        ("File", str(event.get("file_name") or "-")),
        ("Path", str(event.get("path") or "-")),
        ("Size", size_text),
        ("SHA-256", str(event.get("sha256") or "-")),
        ("When", str(event.get("completed_at") or event.get("started_at") or "-")),
        ("From", where),
        ("Sent with", _channel(event)),
        ("Stored at", location),
        ("Upload id", str(event.get("upload_id") or "-")),
    ]
    if event["type"] == UPLOAD_FAILED:
        facts.insert(0, ("Why it failed", str(event.get("error") or "unknown reason")))
    return facts


def _channel(event: Mapping[str, Any]) -> str:
    """How the file came in: a browser upload link, or SFTP/SCP with a key."""
    if event.get("link_id"):
        return f"a browser, via upload link {event['link_id']}"
    fingerprint = event.get("key_fingerprint")
    return f"SFTP/SCP, key {fingerprint}" if fingerprint else "SFTP/SCP"


def header_safe(value: object, limit: int = MAX_HEADER_VALUE) -> str:
    """A header value that cannot raise or inject: every control, line or paragraph
    separator, bidi or zero-width character becomes U+FFFD, and it is shortened."""
    text = "".join("\ufffd" if hostile_character(ch) else ch for ch in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _subject(event: Mapping[str, Any]) -> str:
    name = event.get("file_name") or event.get("path") or "a file"
    if event["type"] == UPLOAD_FAILED:
        return header_safe(f"Upload failed: {name} from {event['user']}")
    return header_safe(f"New upload: {name} from {event['user']}")


def _text_body(event: Mapping[str, Any], facts: list[tuple[str, str]]) -> str:
    intro = (
        f"An upload by {event['user']} failed."
        if event["type"] == UPLOAD_FAILED
        else f"{event['user']} uploaded a file."
    )
    width = max(len(label) for label, _ in facts) + 1
    lines = [intro, ""] + [f"{label + ':':<{width}} {value}" for label, value in facts]
    return "\n".join(lines) + "\n"


def _html_body(event: Mapping[str, Any], facts: list[tuple[str, str]]) -> str:
    rows = "\n".join(
        f"<tr><th align='left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        for label, value in facts
    )
    title = html.escape(_subject(event))
    return (
        f"<html><body><h2>{title}</h2>\n<table cellpadding='4'>\n{rows}\n</table>\n</body></html>\n"
    )


def render_email(
    event: Mapping[str, Any], *, from_address: str, recipients: list[str]
) -> EmailMessage:
    """The email announcing one event, to the given recipients."""
    facts = _facts(event)
    message = EmailMessage()
    message["Subject"] = _subject(event)
    message["From"] = from_address
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = f"<{event['event_id']}@sftp-gateway>"
    message["X-SFTP-Gateway-Event"] = header_safe(event["type"])
    message.set_content(_text_body(event, facts))
    message.add_alternative(_html_body(event, facts), subtype="html")
    return message
