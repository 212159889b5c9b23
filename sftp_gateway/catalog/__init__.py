"""The catalog: users, uploads, the outbox, bans. `build_catalog` opens the configured one."""

from sftp_gateway.catalog.db import build_catalog

__all__ = ["build_catalog"]
