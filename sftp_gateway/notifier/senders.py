"""Where emails go: an SMTP server (STARTTLS or implicit TLS), or a folder of .eml files.

A sender's send() returns only once the message is accepted (by the SMTP server, or
written and renamed into place), with the recipients the server refused while it
accepted the others (those have the email: it must not be sent again). Undeliverable
means the server refused every recipient for good (5xx): no retry will help. Any
other exception means "not delivered, retry later".
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from sftp_gateway.config import NotifierConfig

log = logging.getLogger(__name__)

Refusals = dict[str, tuple[int, bytes]]  # address -> the SMTP reply refusing it


def _reply_text(reply: bytes) -> str:
    """An SMTP reply's text on one line, for the log."""
    return " ".join(reply.decode("utf-8", "replace").split())


def describe_refusals(refused: Refusals) -> str:
    """`a@x (550 5.1.1 no such user), ...` for the log."""
    return ", ".join(
        f"{address} ({code} {_reply_text(reply)})" for address, (code, reply) in refused.items()
    )


class Undeliverable(Exception):
    """The SMTP server refused every recipient permanently (5xx): nobody got the email
    and retrying will not change that."""

    def __init__(self, refused: Refusals) -> None:
        self.refused = refused
        super().__init__(f"SMTP refused every recipient: {describe_refusals(refused)}")


class Sender(Protocol):
    def send(self, message: EmailMessage, recipients: list[str]) -> Refusals | None:
        """Deliver, returning the recipients refused while the others were accepted
        (None or empty: none); raise Undeliverable or, to retry later, anything else."""
        ...


class SmtpSender:
    """One SMTP session per email: simple, and nothing half-open between long polls."""

    def __init__(self, config: NotifierConfig) -> None:
        self.config = config
        self.password = config.password()  # fails at start if the env var is missing

    def _tls_context(self) -> ssl.SSLContext:
        cafile = str(self.config.ca_file) if self.config.ca_file else None
        return ssl.create_default_context(cafile=cafile)

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        if cfg.ssl:
            return smtplib.SMTP_SSL(
                cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout, context=self._tls_context()
            )
        client = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout)
        if cfg.starttls:
            try:
                client.starttls(context=self._tls_context())
            except BaseException:
                client.close()
                raise
        return client

    def send(self, message: EmailMessage, recipients: list[str]) -> Refusals:
        """Deliver, or raise (Undeliverable if every recipient is refused for good).

        Once the server accepted the DATA, the email is out: the recipients it refused
        are returned (not raised, or the others would get it again at each retry), and
        how the server answers QUIT no longer matters.
        """
        client = self._connect()
        try:
            if self.config.username:
                client.login(self.config.username, self.password or "")
            try:
                refused = client.send_message(message, to_addrs=recipients)
            except smtplib.SMTPRecipientsRefused as exc:
                every = exc.recipients
                if set(every) >= set(recipients) and all(c >= 500 for c, _ in every.values()):
                    raise Undeliverable(dict(every)) from exc
                raise  # a temporary (4xx) refusal, or the server closing: retry later
        finally:
            _quit(client)
        return dict(refused)


def _quit(client: smtplib.SMTP) -> None:
    """End the session; whatever happened is already decided, so a failure here only
    gets a line at INFO or DEBUG (SMTP.__exit__ would raise on a reply other than 221)."""
    try:
        code, reply = client.quit()
        if code != 221:
            log.info("SMTP server answered QUIT with %d %s (ignored)", code, _reply_text(reply))
    except Exception as exc:
        log.debug("SMTP QUIT failed (ignored): %s", exc)
    finally:
        client.close()


class FolderSender:
    """Writes each email as an .eml file (the demo's stand-in for SMTP).

    The file is written under a temporary name and renamed, so a reader never sees half.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def send(self, message: EmailMessage, recipients: list[str]) -> None:
        """Write the email for every recipient (a folder refuses nobody)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        message_id = str(message.get("Message-ID", "")).strip("<>").split("@")[0]
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", message_id) or os.urandom(8).hex()
        name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{safe_id}.eml"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(message.as_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def make_sender(config: NotifierConfig) -> Sender:
    """A folder sender when notifier.maildir is set, else SMTP."""
    if config.maildir is not None:
        return FolderSender(config.maildir)
    return SmtpSender(config)
