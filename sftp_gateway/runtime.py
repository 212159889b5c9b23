"""The background workers `serve` runs beside the SFTP server."""

from __future__ import annotations

from typing import Any

from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings


def background_workers(settings: Settings, catalog: Catalog, *, demo: bool = False) -> list[Any]:
    """Objects with start()/stop(): the event dispatcher when a queue is configured.

    In the demo the notifier runs in-process too, writing each email as an .eml file
    under notifier.maildir (DATA_DIR/mail) instead of talking to an SMTP server.
    """
    from sftp_gateway.events.dispatcher import Dispatcher

    workers: list[Any] = []
    if not settings.events.queue_url:
        return workers
    workers.append(Dispatcher(catalog, settings.events))
    if demo:
        from sftp_gateway.notifier.senders import FolderSender
        from sftp_gateway.notifier.worker import NotifierThread

        maildir = settings.notifier.maildir or settings.server.host_keys_dir.parent / "mail"
        workers.append(NotifierThread(settings, catalog, sender=FolderSender(maildir)))
    return workers
