"""The background workers `serve` runs beside the SFTP server."""

from __future__ import annotations

from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings
from sftp_gateway.workers import Worker


def background_workers(settings: Settings, catalog: Catalog, *, demo: bool = False) -> list[Worker]:
    """The event dispatcher when a queue is configured.

    In the demo the notifier runs in-process too, writing each email as an .eml file
    under notifier.maildir (DATA_DIR/mail) instead of talking to an SMTP server.
    """
    from sftp_gateway.events.dispatcher import Dispatcher

    workers: list[Worker] = []
    if not settings.events.queue_url:
        return workers
    workers.append(Dispatcher(catalog, settings.events))
    if demo:
        from sftp_gateway.notifier.senders import FolderSender
        from sftp_gateway.notifier.worker import NotifierThread

        maildir = settings.notifier.maildir or settings.server.host_keys_dir.parent / "mail"
        workers.append(NotifierThread(settings, catalog, sender=FolderSender(maildir)))
    return workers
