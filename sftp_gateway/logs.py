"""Log lines an operator can search: one event per line, with its connection's context.

`configure()` installs one handler on stderr, in `json` (one object per line: what
CloudWatch, Loki or `jq` read as is) or `text` (today's line plus `key=value` context).
A line about a connection carries `conn` (an id for every line of that connection),
`addr` (the client's real address, after a PROXY header), and `user` once known; an
event line also carries `event` (a short stable name such as `auth.failed`) and its
figures (`upload_id`, `key`, `bytes`, `duration`, ...).

The model is asyncssh's `logger.get_child(context=...)` and SFTPGo's
`logger.Log(level, protocol, connID, ...)`: each connection gets a `ConnectionLog`
(a `logging.LoggerAdapter`) and every module logs through it or through `event()`.
The message text stays what it always was, so fail2ban filters keep matching.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

Format = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY_LOGGERS = ("paramiko", "botocore", "boto3", "urllib3", "werkzeug", "alembic")
# The context and event fields, in the order a line shows them.
FIELDS = (
    "event",
    "conn",
    "user",
    "addr",
    "upload_id",
    "key",
    "bytes",
    "duration",
)
_installed: logging.Handler | None = None  # configure()'s handler, replaced on a new call
_connections: weakref.WeakValueDictionary[str, ConnectionLog] = weakref.WeakValueDictionary()
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def new_connection_id() -> str:
    """A short id that tells one connection's lines apart from the others'."""
    return secrets.token_hex(6)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The context and event fields a record carries (from `extra=`), known ones first."""
    extra = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRIBUTES}
    ordered = {name: extra.pop(name) for name in FIELDS if name in extra}
    ordered.update(sorted(extra.items()))
    return {k: v for k, v in ordered.items() if v is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601 UTC, ms), level, event, message, fields.

    ASCII-only output, so no character of a file name can split a line."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(record_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Today's line, then the context as `key=value` (values with spaces quoted)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = [f"{k}={_text_value(v)}" for k, v in record_fields(record).items()]
        return " ".join([line, *pairs]) if pairs else line


def _text_value(value: Any) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if not text or any(ch.isspace() or ch in '"=' for ch in text):
        return json.dumps(text)
    return text


def configure(
    format: Format = "text", level: str | int = "INFO", stream: TextIO | None = None
) -> bool:
    """Send every log line to stderr (or `stream`) in `format`, from `level` up.

    Called again, it replaces its own handler. Like `logging.basicConfig`, it leaves
    alone a process whose host set up logging already (the Lambda runtime, pytest):
    returns False then."""
    global _installed
    root = logging.getLogger()
    if any(handler is not _installed for handler in root.handlers):
        return False
    if _installed is not None:
        root.removeHandler(_installed)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    _installed = handler
    threading.excepthook = log_thread_crash
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    transport_log = logging.getLogger("paramiko.transport")
    if not any(isinstance(f, PeerWentAway) for f in transport_log.filters):
        transport_log.addFilter(PeerWentAway())
    return True


class PeerWentAway(logging.Filter):
    """paramiko logs a client's reset or closed socket as an ERROR 'Socket exception'.
    A client that goes away (Ctrl-C, a dropped line) is not a server error: INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith("Socket exception"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def log_thread_crash(args: threading.ExceptHookArgs) -> None:
    """A thread ended by an exception nothing caught: one ERROR line in the log's own
    format (JSON stays JSON), instead of Python's bare traceback on stderr."""
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("sftp_gateway").error(
        "thread %s ended by an uncaught %s",
        name,
        args.exc_type.__name__,
        exc_info=args.exc_value,
        extra=fields("thread.crashed", thread_name=name),
    )


class ConnectionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose every line carries one connection's context (conn, addr, user).

    `child()` gives another module's logger, or an upload's, the same context plus its
    own fields; counters for the session-end line live on the root of the family."""

    def __init__(
        self,
        logger: logging.Logger,
        context: Mapping[str, Any],
        *,
        root: ConnectionLog | None = None,
    ) -> None:
        super().__init__(logger, dict(context))
        self.root = root or self
        self.started = time.monotonic()
        self.uploads = 0

    def bind(self, **fields: Any) -> None:
        """Add fields to this logger's context (e.g. `user` once authenticated); a
        child's fields stay its own."""
        assert self.extra is not None
        self.extra.update(fields)  # type: ignore[attr-defined]

    def on(self, logger: logging.Logger) -> ConnectionLog:
        """This context on another module's logger, shared: a later `bind` shows in both."""
        view = ConnectionLog(logger, {}, root=self.root)
        view.extra = self.extra
        return view

    def child(self, logger: logging.Logger | None = None, **fields: Any) -> ConnectionLog:
        """The same connection's context (as it is now) plus `fields`, on `logger`."""
        context = {**self.root.context, **fields}
        return ConnectionLog(logger or self.logger, context, root=self.root)

    @property
    def context(self) -> dict[str, Any]:
        return dict(self.extra or {})

    def count_upload(self) -> None:
        """One more completed upload in this connection's session-end line."""
        self.root.uploads += 1

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        """Context first, then the call's own `extra=` (which wins)."""
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def connection_logger(
    conn_id: str, addr: str | None, logger: logging.Logger | None = None
) -> ConnectionLog:
    """The logger for one new connection from `addr`; found again by `for_connection`
    while the connection's objects hold it."""
    base = logger or logging.getLogger("sftp_gateway.connection")
    connection = ConnectionLog(base, {"conn": conn_id, "addr": addr})
    _connections[conn_id] = connection
    return connection


def for_connection(conn_id: str | None, logger: logging.Logger, **fields: Any) -> ConnectionLog:
    """`logger` with connection `conn_id`'s context plus `fields` (records carry only the
    id, so layers below the SSH one need not know about loggers)."""
    parent = _connections.get(conn_id) if conn_id else None
    if parent is None:
        return ConnectionLog(logger, {"conn": conn_id, **fields})
    return parent.child(logger, **fields)


def event(
    logger: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
    name: str,
    message: str,
    *args: Any,
    level: int = logging.INFO,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """Log one event line: `message % args` as the text, `name` and `fields` as data."""
    logger.log(level, message, *args, exc_info=exc_info, extra={"event": name, **fields})


def fields(event: str, **values: Any) -> dict[str, Any]:
    """`extra=` for a plain logger call: an event name and its fields."""
    return {"event": event, **values}
