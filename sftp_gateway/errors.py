"""The errors the gateway's core raises; front ends map them to protocol statuses.

Each carries a sentence meant for the person at the client, so the SFTP status text
and the SCP error line can show it as it is.
"""


class GatewayError(Exception):
    """Base class: a failure with a message fit for the user."""


class NotFound(GatewayError):
    """The path does not exist."""


class PermissionDenied(GatewayError):
    """The user may not do this, or the path is outside the user's home."""


class NotSupported(GatewayError):
    """The operation exists in the protocol but the gateway does not offer it."""


class InvalidRequest(GatewayError):
    """The request is malformed or conflicts with the file's state (a bad offset)."""


class AlreadyExists(GatewayError):
    """The target exists and the request asked for it not to."""


class QuotaExceeded(GatewayError):
    """A size limit was reached."""


class UploadRejected(GatewayError):
    """The content or name of an upload is refused by policy (extension, signature)."""


class StorageError(GatewayError):
    """The object store failed; the user sees a short reason, the log the details."""


class ConfigError(Exception):
    """The configuration is invalid; the message names the field."""
