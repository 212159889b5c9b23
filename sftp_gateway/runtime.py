"""The background workers `serve` runs beside the SFTP server."""

from __future__ import annotations

from typing import Any

from sftp_gateway.catalog.repository import Catalog
from sftp_gateway.config import Settings


def background_workers(settings: Settings, catalog: Catalog, *, demo: bool = False) -> list[Any]:
    """Objects with start()/stop(): the event dispatcher when a queue is configured."""
    workers: list[Any] = []
    return workers
