"""The one mapping from gateway errors to SFTP v3 status codes."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from paramiko.sftp import (
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
)
from sqlalchemy.exc import OperationalError

from sftp_gateway import errors

log = logging.getLogger(__name__)
CATALOG_UNAVAILABLE = "the server's catalog is unavailable; try again in a moment"

_STATUS = (
    (errors.NotFound, SFTP_NO_SUCH_FILE),
    (errors.PermissionDenied, SFTP_PERMISSION_DENIED),
    (errors.UploadRejected, SFTP_PERMISSION_DENIED),
    (errors.NotSupported, SFTP_OP_UNSUPPORTED),
    (errors.QuotaExceeded, SFTP_FAILURE),
    (errors.AlreadyExists, SFTP_FAILURE),
    (errors.InvalidRequest, SFTP_FAILURE),
    (errors.StorageError, SFTP_FAILURE),
)


def status_for(exc: BaseException, context: Mapping[str, object] | None = None) -> tuple[int, str]:
    """(SFTP status, message for the user). Unexpected errors hide their details.
    `context`: the connection's log fields (conn, user, addr), so the line says who."""
    extra = dict(context or {})
    if isinstance(exc, errors.GatewayError):
        # A missing name is an answer, not a refusal: clients STAT every name they are
        # about to upload, and a line per file would bury the refusals that matter.
        level = logging.DEBUG if isinstance(exc, errors.NotFound) else logging.INFO
        log.log(level, "request refused: %s", exc, extra=extra)
        for kind, code in _STATUS:
            if isinstance(exc, kind):
                return code, str(exc)
        return SFTP_FAILURE, str(exc)
    if isinstance(exc, OperationalError):  # the database is down or the connection lost
        reason = str(exc.orig or exc).splitlines()[0]
        log.warning("catalog unavailable during an SFTP request: %s", reason, extra=extra)
        return SFTP_FAILURE, CATALOG_UNAVAILABLE
    if isinstance(exc, UnicodeDecodeError):  # paramiko decodes names strictly as UTF-8
        log.info("request refused: a name in the request is not valid UTF-8", extra=extra)
        return SFTP_FAILURE, "file names must be valid UTF-8"
    log.error("unexpected error in an SFTP request", exc_info=exc, extra=extra)
    return SFTP_FAILURE, "internal server error"
