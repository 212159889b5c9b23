"""Where emails go: an SMTP server (STARTTLS or implicit TLS), or a folder of .eml files.

A sender's send() returns only once the message is accepted (by the SMTP server, or
written and renamed into place); any exception means "not delivered, retry later".
"""

from __future__ import annotations

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


class Sender(Protocol):
    def send(self, message: EmailMessage, recipients: list[str]) -> None: ...


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
            client.starttls(context=self._tls_context())
        return client

    def send(self, message: EmailMessage, recipients: list[str]) -> None:
        """Deliver or raise; refused recipients count as a failure so the event is retried."""
        with self._connect() as client:
            if self.config.username:
                client.login(self.config.username, self.password or "")
            refused = client.send_message(message, to_addrs=recipients)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)


class FolderSender:
    """Writes each email as an .eml file (the demo's stand-in for SMTP).

    The file is written under a temporary name and renamed, so a reader never sees half.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def send(self, message: EmailMessage, recipients: list[str]) -> None:
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
