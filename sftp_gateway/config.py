"""Load and validate the gateway's configuration: YAML, then env overrides.

This is the only module that reads configuration files or `SFTP_GATEWAY__*` variables.
Everything is checked at start-up, so a typo fails fast with a line naming the field.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import socket
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sftp_gateway.errors import ConfigError
from sftp_gateway.s3limits import MAX_PART_SIZE, MIN_PART_SIZE
from sftp_gateway.units import MIB, parse_size

ENV_PREFIX = "SFTP_GATEWAY__"
DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
Size = Annotated[int, BeforeValidator(parse_size)]
# SSH's window and packet sizes are uint32 on the wire (RFC 4254).
MAX_SSH_WINDOW = 2**32 - 1

# Every duration is finite and at most ten years: far below threading.TIMEOUT_MAX and
# what a datetime can add, so no thread meets an OverflowError hours after start.
MAX_SECONDS = 10 * 365 * 24 * 3600


def _within_max_seconds(value: float) -> float:
    if value > MAX_SECONDS:
        raise ValueError(f"at most {MAX_SECONDS} seconds (10 years)")
    return value


Seconds = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_within_max_seconds)]

_TEXT_TYPES = (str, Path)


def _is_text(annotation: Any) -> bool:
    """str or Path, or either | None: a field whose value is text as written."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return bool(members) and all(arg in _TEXT_TYPES for arg in members)
    return annotation in _TEXT_TYPES


def _is_text_list(annotation: Any) -> bool:
    return get_origin(annotation) is list and _is_text(get_args(annotation)[0])


def _not_text(value: Any, name: str) -> str | None:
    """Why a YAML scalar in a text field is refused, telling the operator to quote it."""
    if isinstance(value, bool):
        word = "yes" if value else "no"
        return (
            "YAML reads an unquoted yes/no/on/off/true/false as a boolean (here"
            f' {str(value).lower()}): put the value in quotes, e.g. {name}: "{word}"'
        )
    if isinstance(value, int | float):
        return f"expected text, got the number {value!r}: put the value in quotes"
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _text_as_written(cls, value: Any, info: ValidationInfo) -> Any:
        """A text field given a YAML boolean (`region: no`) or a number (from a Python
        mapping: YAML's own plain numbers stay text there, see _keep_text) is refused
        with a hint to quote it, not pydantic's "Input should be a valid string"."""
        name = info.field_name or ""
        field = cls.model_fields.get(name)
        if field is None:
            return value
        name = field.alias or name
        if _is_text(field.annotation):
            problem = _not_text(value, name)
        elif _is_text_list(field.annotation) and isinstance(value, list):
            problem = next(filter(None, (_not_text(item, name) for item in value)), None)
        else:
            problem = None
        if problem:
            raise ValueError(problem)
        return value


class BanConfig(_Section):
    """Brute-force ban (SFTPGo's defender): scores per address, shared in the catalog."""

    enabled: bool = True
    threshold: int = Field(default=15, ge=1)  # points within `window` that ban an address
    window: Seconds = Field(default=1800.0, gt=0)
    duration: Seconds = Field(default=1800.0, gt=0)
    allow_list: list[str] = Field(default_factory=list)  # CIDR networks never banned
    score_invalid_user: int = Field(default=2, ge=0)
    score_failed_key: int = Field(default=1, ge=0)
    score_protocol_error: int = Field(default=3, ge=0)
    score_no_auth: int = Field(default=0, ge=0)
    score_refused: int = Field(default=1, ge=0)

    @field_validator("allow_list")
    @classmethod
    def _check_networks(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            try:
                out.append(str(ipaddress.ip_network(str(value).strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{value!r} is not a network such as 10.0.0.0/8") from None
        return out

    def allows(self, address: str) -> bool:
        """True when `address` is in the allow list (never scored, never banned)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(net) for net in self.allow_list)


def parse_max_startups(value: Any) -> tuple[int, int, int]:
    """sshd's MaxStartups: `start:rate:full`, or `n` alone (refuse beyond n)."""
    parts = str(value).strip().split(":")
    if len(parts) == 1:
        parts = [parts[0], "100", parts[0]]
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{value!r} is not start:rate:full such as 10:30:100")
    start, rate, full = (int(p) for p in parts)
    if not 1 <= start <= full or not 1 <= rate <= 100:
        raise ValueError(f"{value!r}: need 1 <= start <= full and rate in 1..100")
    return start, rate, full


class ServerConfig(_Section):
    listen: str = "0.0.0.0:2222"
    host_keys_dir: Path = Path("keys")
    # Authenticated connections; unauthenticated ones are limited by max_startups.
    max_connections: int = Field(default=256, ge=1)
    # Login grace time: a connection not authenticated within it is closed.
    auth_timeout: Seconds = Field(default=30.0, gt=0)
    # Unauthenticated connections (sshd MaxStartups): beyond `start`, refuse new ones
    # with probability rate% rising linearly to 100% at `full`.
    max_startups: str = "10:30:100"
    per_source_max_startups: int = Field(default=10, ge=1)
    # IPv6 clients are counted (per_source_max_startups) and banned by this network
    # prefix: one subscriber holds a /64 of addresses. 128: each address on its own.
    ipv6_source_prefix: int = Field(default=64, ge=16, le=128)
    max_auth_tries: int = Field(default=6, ge=1, le=100)
    ban: BanConfig = Field(default_factory=BanConfig)
    # SSH flow control: the window bounds the bytes a client may have in flight per
    # channel, so it bounds memory per upload; larger packets cut per-packet overhead.
    window_size: Size = Field(default=8 * MIB, ge=64 * 1024)  # <= MAX_SSH_WINDOW
    max_packet_size: Size = Field(default=256 * 1024, ge=32 * 1024, le=1024 * 1024)
    # The SSH algorithms offered (crypto_policy.py): modern, fips, or compat (old clients).
    crypto_policy: Literal["modern", "fips", "compat"] = "modern"
    drain_timeout: Seconds = Field(default=30.0, ge=0)
    # Worker processes accepting on the one listening socket (`serve --workers N`
    # overrides it); None: one per core (os.cpu_count()); 1: a single process, no
    # supervisor. Each worker gets uploads.memory_budget / workers.
    workers: int | None = Field(default=None, ge=1, le=256)
    # With workers: one whose accept loop has not turned for this long is stuck (a
    # deadlock, a call that never returns, SIGSTOP); the supervisor logs its threads'
    # stacks, kills it and starts another. 0: never.
    worker_timeout: Seconds = Field(default=60.0, ge=0)
    # Names this process in the catalog, so a restart recovers only its own uploads.
    instance_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    # Seconds between re-checks of open sessions: a removed user or key, or a key whose
    # from=/expiry-time= no longer pass, has its sessions closed.
    revocation_check_interval: Seconds = Field(default=5.0, gt=0, le=3600)
    # Limits after login (sshd MaxSessions; OpenSSH sftp-server's open-handle cap).
    max_sessions: int = Field(default=10, ge=1, le=1000)  # session channels per connection
    max_handles_per_session: int = Field(default=64, ge=1, le=10_000)  # files + dirs
    # An authenticated connection with no channel traffic for this long is closed
    # (SFTPGo idle_timeout, sshd ChannelTimeout); 0 disables.
    idle_timeout: Seconds = Field(default=900.0, ge=0)
    # SSH keepalive sent after this many quiet seconds (sshd ClientAliveInterval); 0: off.
    keepalive_interval: Seconds = Field(default=30.0, ge=0)
    # PROXY protocol v1/v2 (AWS NLB, HAProxy): the client's real address comes in a header
    # before SSH. off | optional (a header may come) | required (it must); a header is
    # read only from proxy_trusted_networks (CIDR), the balancers' own addresses.
    proxy_protocol: Literal["off", "optional", "required"] = "off"
    proxy_trusted_networks: list[str] = Field(default_factory=list)

    @field_validator("proxy_protocol", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare `off` as false."""
        return "off" if value is False else value

    @field_validator("proxy_trusted_networks")
    @classmethod
    def _check_proxy_networks(cls, values: list[str]) -> list[str]:
        return BanConfig._check_networks(values)

    @model_validator(mode="after")
    def _proxy_needs_trusted_networks(self) -> ServerConfig:
        if self.proxy_protocol != "off" and not self.proxy_trusted_networks:
            raise ValueError(
                "proxy_trusted_networks: list the load balancers' networks when"
                f" proxy_protocol is {self.proxy_protocol}"
            )
        return self

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port")
        return value

    @field_validator("window_size")
    @classmethod
    def _window_fits_ssh(cls, value: int) -> int:
        if value > MAX_SSH_WINDOW:
            raise ValueError("at most 4GiB minus one byte (SSH sends it as a 32-bit number)")
        return value

    @field_validator("max_startups", mode="before")
    @classmethod
    def _check_max_startups(cls, value: Any) -> str:
        """`max_startups: 100` (an int in YAML) means "100"; `10:30:100` unquoted is the
        three-part form too (the config's YAML has no base-60 numbers: _ConfigLoader)."""
        if isinstance(value, bool):
            raise ValueError("expected start:rate:full such as 10:30:100")
        parse_max_startups(value)
        return str(value).strip()

    @property
    def startups(self) -> tuple[int, int, int]:
        """max_startups as (start, rate, full)."""
        return parse_max_startups(self.max_startups)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")
_IPV4_RE = re.compile(r"\d+\.\d+\.\d+\.\d+")


def check_bucket_name(value: str) -> str:
    """S3's bucket naming rules (those every S3-compatible store keeps too)."""
    if not _BUCKET_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an S3 bucket name: lowercase letters, digits, dots and"
            " hyphens, beginning and ending with a letter or digit"
        )
    if ".." in value:
        raise ValueError(f"{value!r} is not an S3 bucket name: two dots in a row")
    if _IPV4_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an S3 bucket name: it is an IP address")
    return value


def check_http_url(value: str | None) -> str | None:
    """An endpoint or queue URL: http(s)://host[:port][/path]; blank means unset."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{value!r} is not an http:// or https:// URL (such as http://localhost:9000)"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"{value!r}: the port is not a number in 0..65535") from None
    return value


class StorageConfig(_Section):
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    region: str = "us-east-1"
    endpoint_url: str | None = None
    part_size: Size = 8 * MIB
    max_concurrency: int = Field(default=4, ge=1, le=64)
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    max_attempts: int = Field(default=5, ge=1, le=20)
    copy_part_size: Size = 64 * MIB
    # A session STATing several names of one directory within this many seconds gets
    # answers from one listing of it (not a request per name) until it is this old:
    # other sessions' changes may show that late; its own never do. 0: always ask S3.
    stat_cache_seconds: Seconds = Field(default=2.0, ge=0, le=300)
    # A CRC32 on every part and PUT, verified by S3 (and instead of SHA-256 signing
    # every body). Off only for stores that mishandle composite checksums (moto).
    part_checksums: bool = True
    # S3's full-object CRC64NVME (ChecksumType FULL_OBJECT): every part, PUT and
    # completion carries a CRC64NVME, so S3 verifies the whole object and readers see
    # one checksum of its bytes. auto: used until the store refuses it (then this
    # process goes on with part_checksums); on: required; off: never.
    full_object_checksum: Literal["auto", "on", "off"] = "auto"
    # Who sends a small file's one PutObject and listings: botocore, or awscrt's native
    # S3 client (a third of the CPU per request; the rest, multipart included, stays
    # botocore).
    # auto: crt, unless an HTTP(S) proxy is set in the environment (crt would bypass it).
    put_client: Literal["auto", "botocore", "crt"] = "auto"
    # Seconds to open a connection to S3, and to wait for each read of a response (a
    # stalled S3 fails the request after it; the SDK then retries up to max_attempts).
    connect_timeout: Seconds = Field(default=10.0, gt=0, le=600)
    read_timeout: Seconds = Field(default=120.0, gt=0, le=3600)
    # How the bucket is named in requests: auto lets botocore choose (virtual-hosted on
    # AWS), except with endpoint_url, where auto means path (what S3-compatible stores
    # expect); path or virtual forces one.
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # AWS endpoints reachable over IPv6 (s3.dualstack.REGION.amazonaws.com).
    use_dualstack_endpoint: bool = False
    # S3 Transfer Acceleration (BUCKET.s3-accelerate.amazonaws.com); the bucket must have
    # it enabled; AWS only (not with endpoint_url or path addressing).
    use_accelerate_endpoint: bool = False
    # The SHA-256 of a multipart object goes on it as the tag `sha256` (PutObjectTagging:
    # no rewrite). true also copies the object onto itself to put it in its metadata:
    # a copy as long as the upload, billed, a second ObjectCreated, a noncurrent version.
    sha256_in_metadata: bool = False
    # Objects stored compressed (each part its own gzip member / zstd frame, so resume
    # works); the SFTP view, the catalog's size and the SHA-256 stay the file's own.
    compression: Literal["none", "gzip", "zstd"] = "none"
    compression_level: int | None = None  # None: gzip 6, zstd 3
    # How S3 readers learn it: content-encoding, the Content-Encoding header (the key
    # keeps its name); suffix, the key gets .gz / .zst and no Content-Encoding, so S3
    # tools download the compressed file (SFTP users still see the name they sent).
    compression_naming: Literal["content-encoding", "suffix"] = "content-encoding"

    @field_validator("prefix")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        return check_bucket_name(value)

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return check_http_url(value)

    @field_validator("copy_part_size")
    @classmethod
    def _check_copy_part_size(cls, value: int) -> int:
        if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
            raise ValueError("must be between 5MiB and 5GiB (S3's multipart limits)")
        return value

    @field_validator("full_object_checksum", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads a bare `on` as true and `off` as false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("part_size")
    @classmethod
    def _check_part_size(cls, value: int) -> int:
        if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
            raise ValueError("must be between 5MiB and 5GiB (S3's multipart limits)")
        return value

    @model_validator(mode="after")
    def _kms_needs_key(self) -> StorageConfig:
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("kms_key_id is set but sse is not aws:kms")
        return self

    @model_validator(mode="after")
    def _accelerate_needs_aws(self) -> StorageConfig:
        """Acceleration is an AWS host name per bucket: botocore would fail every call."""
        if self.use_accelerate_endpoint and self.endpoint_url:
            raise ValueError("use_accelerate_endpoint works only on AWS: unset endpoint_url")
        if self.use_accelerate_endpoint and self.addressing_style == "path":
            raise ValueError("use_accelerate_endpoint needs addressing_style auto or virtual")
        return self

    @model_validator(mode="after")
    def _level_in_range(self) -> StorageConfig:
        ranges = {"gzip": (1, 9), "zstd": (1, 22)}
        level = self.compression_level
        if level is not None and self.compression in ranges:
            low, high = ranges[self.compression]
            if not low <= level <= high:
                raise ValueError(
                    f"compression_level {level} is outside {low}..{high} for {self.compression}"
                )
        return self


CATALOG_URL_EXAMPLE = (
    "sqlite:////var/lib/sftp-gateway/catalog.db or postgresql+psycopg://user@host/db"
)
# The catalog's databases, with the drivers SQLAlchemy may use for them (pyproject.toml
# installs psycopg 3; psycopg2 is SQLAlchemy's default for postgresql://).
CATALOG_DRIVERS = {"sqlite": ("pysqlite",), "postgresql": ("psycopg", "psycopg2")}
DEFAULT_DRIVERS = {"sqlite": "pysqlite", "postgresql": "psycopg2"}


def check_catalog_url(value: str) -> str:
    """A URL SQLAlchemy parses, for SQLite or PostgreSQL with an installed driver. The
    messages never repeat the URL: it may hold a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL such as {CATALOG_URL_EXAMPLE}") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in CATALOG_DRIVERS:
        raise ValueError(f"{backend}:// is not supported: use {CATALOG_URL_EXAMPLE}")
    driver = driver or DEFAULT_DRIVERS[backend]
    if driver not in CATALOG_DRIVERS[backend]:
        raise ValueError(f"{url.drivername}:// is not supported: use {CATALOG_URL_EXAMPLE}")
    if driver == "psycopg2" and importlib.util.find_spec("psycopg2") is None:
        raise ValueError(
            f"{url.drivername}:// needs the psycopg2 driver, which is not installed:"
            " write postgresql+psycopg://user@host/db (psycopg 3)"
        )
    if backend == "sqlite" and (url.host or url.port):
        raise ValueError(
            "a SQLite URL names no host: sqlite:////absolute/path.db (four slashes)"
            " or sqlite:///relative/path.db"
        )
    return value


class CatalogConfig(_Section):
    url: str = "sqlite:///catalog.db"
    auto_migrate: bool = True

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_catalog_url(value)


def region_from_queue_url(queue_url: str | None) -> str | None:
    """`https://sqs.eu-west-1.amazonaws.com/...` names its region; other URLs do not."""
    if not queue_url:
        return None
    host = queue_url.split("://", 1)[-1].split("/", 1)[0]
    parts = host.split(".")
    if len(parts) > 2 and parts[0] == "sqs":
        return parts[1]
    return None


def _default_aws_region() -> str | None:
    """boto3's own default region (AWS_DEFAULT_REGION, ~/.aws/config), if any."""
    try:
        import botocore.session

        region = botocore.session.Session().get_config_variable("region")
    except Exception:  # a malformed ~/.aws/config: no default region to count on
        return None
    return str(region) if region else None


class EventsConfig(_Section):
    queue_url: str | None = None
    endpoint_url: str | None = None
    # None: taken from a queue URL sqs.REGION.amazonaws.com, else boto3's default region.
    region: str | None = Field(default=None, validate_default=True)
    dispatch_interval: Seconds = Field(default=1.0, gt=0)
    max_backoff: Seconds = Field(default=60.0, gt=0)
    # None: a queue whose URL ends in .fifo is FIFO; set it when the URL does not say.
    fifo: bool | None = None
    # FIFO only: the MessageGroupId; None groups by uploader (ordered per user).
    message_group_id: str | None = Field(default=None, min_length=1, max_length=128)
    batch_size: int = Field(default=10, ge=1, le=10)
    # Tries of one event before it is parked (kept, not retried, until `sftp-gateway
    # events retry`); SQS refusals no retry changes park it at once.
    max_attempts: int = Field(default=1000, ge=1, le=1_000_000)

    @field_validator("queue_url", "endpoint_url")
    @classmethod
    def _check_urls(cls, value: str | None) -> str | None:
        return check_http_url(value)

    @field_validator("region")
    @classmethod
    def _region_known(cls, value: str | None, info: ValidationInfo) -> str | None:
        """SQS needs a region to sign with: say so now, not with a NoRegionError later."""
        queue_url = info.data.get("queue_url")
        if value or not queue_url or region_from_queue_url(queue_url):
            return value or None
        if _default_aws_region() is None:
            raise ValueError(
                "required: events.queue_url does not name its region"
                " (https://sqs.REGION.amazonaws.com/...) and no default region is set"
                " (AWS_DEFAULT_REGION, ~/.aws/config)"
            )
        return None

    @property
    def sqs_region(self) -> str | None:
        """The region SQS requests are signed for: `region`, else the queue URL's, else
        None (boto3's default region)."""
        return self.region or region_from_queue_url(self.queue_url)

    @property
    def is_fifo(self) -> bool:
        """FIFO queues need a group id and take the event_id as deduplication id."""
        if self.fifo is not None:
            return self.fifo
        return bool(self.queue_url and self.queue_url.rstrip("/").endswith(".fifo"))


class NotifierConfig(_Section):
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password_env: str | None = None
    from_address: str = Field(default="SFTP Gateway <noreply@localhost>", alias="from")
    recipients: list[str] = Field(default_factory=list)
    user_recipients: dict[str, list[str]] = Field(default_factory=dict)
    maildir: Path | None = None
    wait_seconds: int = Field(default=20, ge=0, le=20)
    batch_size: int = Field(default=10, ge=1, le=10)
    visibility_timeout: int = Field(default=60, ge=0, le=43200)  # SQS's own maximum
    # A CA bundle to verify the SMTP server's certificate (default: the system's).
    ca_file: Path | None = None
    timeout: Seconds = Field(default=30.0, gt=0)
    # A message that cannot be parsed or rendered, or whose every recipient SMTP refused
    # for good (5xx), is deleted (one ERROR line) once SQS has delivered it this many
    # times; 0 leaves it to the queue's dead-letter redrive.
    max_receives: int = Field(default=5, ge=0, le=1000)
    # upload.failed emails per uploading user per hour (per notifier process); beyond
    # it the event is logged and deleted without an email. 0: no limit.
    failure_email_limit: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _tls_choice(self) -> NotifierConfig:
        if self.ssl and self.starttls:
            raise ValueError("choose one of ssl (implicit TLS) and starttls")
        return self

    @field_validator("recipients")
    @classmethod
    def _plain_recipients(cls, value: list[str]) -> list[str]:
        return [_plain_address(address) for address in value]

    @field_validator("user_recipients")
    @classmethod
    def _plain_user_recipients(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {user: [_plain_address(a) for a in addresses] for user, addresses in value.items()}

    def password(self) -> str | None:
        """The SMTP password, read from the env var the config names."""
        if not self.password_env:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"notifier.password_env: env var {self.password_env} is not set")
        return value


def _plain_address(value: str) -> str:
    """A recipient the notifier can use: one `local@domain`, no display name or list
    (the notifier would skip it at every email, so nobody would ever get one)."""
    # The notifier's own rule, so the two never disagree; imported here, so loading
    # the config does not load the notifier.
    from sftp_gateway.notifier.render import valid_address

    if valid_address(value) is None:
        raise ValueError(f"{value!r} is not one plain email address (local@domain)")
    return value


_NOT_IN_EXTENSIONS = frozenset("*?[]/\\")


class UploadsConfig(_Section):
    max_file_size: Size = 1024 * MIB
    allowed_extensions: list[str] = Field(default_factory=lambda: [".pdf"])
    require_pdf_signature: bool = True
    temp_name_patterns: list[str] = Field(
        default_factory=lambda: ["*.filepart", "*.part", "*.tmp", ".~*"]
    )
    resume_ttl: Seconds = Field(default=24 * 3600.0, gt=0)
    gc_interval: Seconds = Field(default=3600.0, gt=0)
    # A resume holds a lease in the catalog for this long, renewed while bytes flow, so
    # two sessions (on any instance) never continue one upload; a dead one's expires.
    resume_lease: Seconds = Field(default=60.0, gt=0)
    # How long CLOSE retries an unavailable catalog before it fails (nothing published).
    catalog_retry: Seconds = Field(default=30.0, ge=0)
    # Out-of-order writes wait in memory up to reorder_memory, then in a temporary file.
    reorder_memory: Size = 4 * MIB
    reorder_spill: Size = 256 * MIB
    # Files one user may have open for writing at once, SFTP and SCP, in this process
    # (fairness; SFTPGo's per-user max_sessions). Parallel clients use 2-10.
    max_concurrent_per_user: int = Field(default=16, ge=1, le=10_000)
    # One memory budget for the buffers of all uploads of the process (part buffers,
    # small files before their first part, in-memory reordered writes). When it is
    # spent, writers wait (backpressure) up to memory_wait_timeout, then the WRITE fails.
    memory_budget: Size = Field(default=512 * MIB, ge=16 * MIB)
    # The most of it one user's uploads may hold; None: a quarter of memory_budget.
    memory_per_user: Size | None = None
    memory_wait_timeout: Seconds = Field(default=60.0, ge=0)
    # Disk for out-of-order writes spilled to temporary files, across all uploads; one
    # user's uploads may hold at most a quarter of it. (reorder_spill bounds one file:
    # bytes waiting on disk at once, given back as the gap before them fills.)
    spill_budget: Size = 2048 * MIB
    # Threads sending parts to S3 for all uploads of the process (one shared pool).
    sender_threads: int = Field(default=32, ge=1, le=1024)

    @property
    def per_user_memory(self) -> int:
        return self.memory_per_user or self.memory_budget // 4

    @model_validator(mode="after")
    def _share_within_budget(self) -> UploadsConfig:
        if self.memory_per_user is not None and self.memory_per_user > self.memory_budget:
            raise ValueError("memory_per_user cannot exceed memory_budget")
        return self

    @field_validator("allowed_extensions")
    @classmethod
    def _normalise_extensions(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            ext = value.strip().lower()
            if not ext:
                raise ValueError("an extension cannot be empty")
            if any(char in ext for char in _NOT_IN_EXTENSIONS):
                raise ValueError(
                    f"{value!r} is not an extension: list the ending itself, such as .pdf"
                    " (no wildcards *?[], no / or \\)"
                )
            out.append(ext if ext.startswith(".") else "." + ext)
        return out


class LoggingConfig(_Section):
    # json: one object per line (CloudWatch, Loki, jq); text: classic lines plus
    # key=value. None: json for `serve` and `notifier`, text for the demo and commands.
    format: Literal["json", "text"] | None = None
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def format_for(self, default: Literal["json", "text"]) -> Literal["json", "text"]:
        """The configured format, else the command's own default."""
        return self.format or default


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _OptionalListener(_Section):
    """A section with an HTTP listener that is off (None) unless given as host:port."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return ServerConfig._check_listen(value)

    @property
    def host(self) -> str:
        return (self.listen or "").rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int((self.listen or ":0").rpartition(":")[2])


class AdminConfig(_OptionalListener):
    # The HTTP listener (sftp_gateway/web): /metrics, /healthz, /readyz, /uploads.
    # listen: None is off; "127.0.0.1:8080"-style host:port.
    # The env var holding a bearer token; required when listen is not a loopback address.
    token_env: str | None = Field(default=None, validate_default=True)

    @field_validator("token_env")
    @classmethod
    def _token_off_loopback(cls, value: str | None, info: Any) -> str | None:
        listen = info.data.get("listen")
        if listen and not value and not is_loopback_host(listen.rpartition(":")[0]):
            raise ValueError(f"required when admin.listen ({listen}) is not a loopback address")
        return value or None

    def token(self) -> str | None:
        """The bearer token, read from the env var the config names."""
        if not self.token_env:
            return None
        value = os.environ.get(self.token_env)
        if not value:
            raise ConfigError(f"admin.token_env: env var {self.token_env} is not set")
        return value


class WebConfig(_OptionalListener):
    # Browser upload links (sftp_gateway/web/upload_*.py). listen None: the pages share
    # the admin listener under /u/ (without the admin token: a link's token is the
    # credential); "0.0.0.0:8443"-style host:port: their own listener, upload pages only.
    # The base of the URLs `links create` prints, e.g. "https://upload.example.com".
    # None: http:// + web.listen (else admin.listen).
    public_url: str | None = None
    # Bytes per PATCH the page sends; rounded up to a multiple of storage.part_size so
    # every request ends on a part S3 holds (what a resume continues from).
    chunk_size: Size = 16 * MIB

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("chunk_size")
    @classmethod
    def _check_chunk_size(cls, value: int) -> int:
        if value < MIN_PART_SIZE or value > MAX_PART_SIZE:
            raise ValueError("must be between 5MiB and 5GiB")
        return value


class Settings(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    storage: StorageConfig
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    notifier: NotifierConfig = Field(default_factory=NotifierConfig)
    uploads: UploadsConfig = Field(default_factory=UploadsConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    web: WebConfig = Field(default_factory=WebConfig)

    @model_validator(mode="after")
    def _share_holds_a_part(self) -> Settings:
        """An upload needs at least one part buffer from its user's share."""
        if self.uploads.per_user_memory < self.storage.part_size:
            raise ValueError(
                "uploads.memory_per_user (default: a quarter of uploads.memory_budget) "
                "must hold at least one storage.part_size"
            )
        return self


def _format_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the dotted field, as operators grep for them."""
    lines = []
    for problem in err.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        elif problem["type"] == "missing":
            message = "required but missing"
        elif problem["type"] == "finite_number":
            message = "must be a finite number (not .inf or .nan)"
        elif problem["type"] == "model_type" and problem.get("input") is None:
            message = "the section is empty: give it keys or remove it"
        message = message.removeprefix("Value error, ")
        lines.append(f"{field}: {message}")
    return "; ".join(lines)


# -- YAML ------------------------------------------------------------------------------

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Plain scalars YAML reads as numbers or dates, kept as written in a text field.
_TEXT_KEPT_TAGS = frozenset({_INT_TAG, _FLOAT_TAG, "tag:yaml.org,2002:timestamp"})
# PyYAML's YAML 1.1 int and float patterns without their base-60 forms (`1:30`).
_INT_RE = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that YAML 1.1's base-60 numbers are text:
    `max_startups: 10:30:50` is sshd's start:rate:full, not the number 37850."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [
        (tag, {_INT_TAG: _INT_RE, _FLOAT_TAG: _FLOAT_RE}.get(tag, regexp))
        for tag, regexp in resolvers
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names a key twice: YAML would keep the last one without a word."""

    def __init__(self, dotted: str, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(
            problem=f"{dotted} is given twice (lines {first.line + 1} and {again.line + 1})",
            problem_mark=again,
        )
        self.dotted = dotted


def _check_duplicate_keys(node: yaml.Node, path: tuple[str, ...] = ()) -> None:
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(node, path)]
    while stack:
        current, where = stack.pop()
        if id(current) in seen:  # an alias: checked where its anchor is
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            keys: dict[str, yaml.Mark] = {}
            for key_node, value_node in current.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base`: its keys may be overridden
                    stack.append((value_node, where))
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a complex key: PyYAML refuses it as unhashable
                dotted = ".".join((*where, str(key_node.value)))
                if key_node.value in keys:
                    raise DuplicateKeyError(dotted, keys[key_node.value], key_node.start_mark)
                keys[key_node.value] = key_node.start_mark
                stack.append((value_node, (*where, str(key_node.value))))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, (*where, str(i))) for i, item in enumerate(current.value))


def _field_annotations(model: type[BaseModel]) -> dict[str, Any]:
    """Each field's annotation by its name and its alias (`from`)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        out[name] = field.annotation
        if field.alias:
            out[field.alias] = field.annotation
    return out


def _keep_text(node: yaml.Node, annotation: Any) -> None:
    """Where the config expects text, an unquoted `prefix: 2024` or `instance_id: 007`
    means the text as written ("2024", "007"): its node is retagged as a string before
    YAML turns it into a number. Booleans are not: `region: no` is refused (quote it)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(node, yaml.MappingNode):
            fields = _field_annotations(annotation)
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value in fields:
                    _keep_text(value_node, fields[key_node.value])
    elif _is_text(annotation):
        plain = isinstance(node, yaml.ScalarNode) and node.style is None
        if plain and node.tag in _TEXT_KEPT_TAGS:
            node.tag = _STR_TAG
    elif get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            _keep_text(node, members[0])
    elif get_origin(annotation) is list and isinstance(node, yaml.SequenceNode):
        (item,) = get_args(annotation)
        for item_node in node.value:
            _keep_text(item_node, item)
    elif get_origin(annotation) is dict and isinstance(node, yaml.MappingNode):
        key_type, value_type = get_args(annotation)
        for key_node, value_node in node.value:
            _keep_text(key_node, key_type)
            _keep_text(value_node, value_type)


def parse_yaml(text: str, shape: Any = None) -> Any:
    """One YAML document with _ConfigLoader: DuplicateKeyError for a key given twice;
    with `shape` (Settings, or a field's annotation), text fields keep plain scalars
    as written (_keep_text)."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node)
        if shape is not None:
            _keep_text(node, shape)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _annotation_at(path: list[str]) -> Any:
    """The annotation of the field at `path` (section, key), None if there is none."""
    annotation: Any = Settings
    for part in path:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        annotation = _field_annotations(annotation).get(part)
    return annotation


def _apply_env_overrides(data: dict[str, Any], environ: dict[str, str]) -> None:
    """`SFTP_GATEWAY__STORAGE__BUCKET=x` sets storage.bucket; values are YAML scalars."""
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {'.'.join(path[:-1])} is not a section")
            node = child
        try:
            node[path[-1]] = parse_yaml(raw, _annotation_at(path)) if raw != "" else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc  # only MarkedYAMLError has one
            raise ConfigError(f"{name}: not a valid value ({problem})") from exc


def settings_from_dict(data: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    """Validate a config mapping (env overrides applied) or raise ConfigError."""
    merged = dict(data)
    _apply_env_overrides(merged, dict(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def resolve_config_path(path: str | Path | None) -> Path:
    """--config, then $SFTP_GATEWAY_CONFIG, then config/gateway.yaml."""
    if path:
        return Path(path)
    if os.environ.get("SFTP_GATEWAY_CONFIG"):
        return Path(os.environ["SFTP_GATEWAY_CONFIG"])
    return DEFAULT_CONFIG_PATH


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, merge and validate the config file; ConfigError names what is wrong."""
    config_path = resolve_config_path(path)
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {config_path} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {config_path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {config_path} line {line}: not UTF-8 text"
            " (save it as UTF-8; YAML config is text)"
        ) from None
    try:
        data = parse_yaml(text, Settings) or {}
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"{config_path}: {exc.problem}: remove one (YAML would silently keep the last)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{config_path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping of sections")
    return settings_from_dict(data)
