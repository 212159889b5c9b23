"""Load and validate the gateway's configuration: YAML, then env overrides.

This is the only module that reads configuration files or `SFTP_GATEWAY__*` variables.
Everything is checked at start-up, so a typo fails fast with a line naming the field.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sftp_gateway.errors import ConfigError

ENV_PREFIX = "SFTP_GATEWAY__"
DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
MIB = 1024 * 1024
S3_MIN_PART = 5 * MIB
S3_MAX_PART = 5 * 1024 * MIB

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int:
    """Turn `8MiB`, `1GiB`, `500 KB` or a plain integer into bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8MiB or 1GiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size such as 8MiB or 1GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


Size = Annotated[int, BeforeValidator(parse_size)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ServerConfig(_Section):
    listen: str = "0.0.0.0:2222"
    host_keys_dir: Path = Path("keys")
    max_connections: int = Field(default=256, ge=1)
    auth_timeout: float = Field(default=30.0, gt=0)
    # SSH flow control: the window bounds the bytes a client may have in flight per
    # channel, so it bounds memory per upload; larger packets cut per-packet overhead.
    window_size: Size = Field(default=8 * MIB, ge=64 * 1024)
    max_packet_size: Size = Field(default=256 * 1024, ge=32 * 1024, le=1024 * 1024)
    drain_timeout: float = Field(default=30.0, ge=0)
    # Names this process in the catalog, so a restart recovers only its own uploads.
    instance_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


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
    # A CRC32 on every part and PUT, verified by S3 (and instead of SHA-256 signing
    # every body). Off only for stores that mishandle composite checksums (moto).
    part_checksums: bool = True

    @field_validator("prefix")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("part_size")
    @classmethod
    def _check_part_size(cls, value: int) -> int:
        if not S3_MIN_PART <= value <= S3_MAX_PART:
            raise ValueError("must be between 5MiB and 5GiB (S3's multipart limits)")
        return value

    @model_validator(mode="after")
    def _kms_needs_key(self) -> StorageConfig:
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("kms_key_id is set but sse is not aws:kms")
        return self


class CatalogConfig(_Section):
    url: str = "sqlite:///catalog.db"
    auto_migrate: bool = True


class EventsConfig(_Section):
    queue_url: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    dispatch_interval: float = Field(default=1.0, gt=0)
    max_backoff: float = Field(default=60.0, gt=0)
    # None: a queue whose URL ends in .fifo is FIFO; set it when the URL does not say.
    fifo: bool | None = None
    # FIFO only: the MessageGroupId; None groups by uploader (ordered per user).
    message_group_id: str | None = Field(default=None, min_length=1, max_length=128)
    batch_size: int = Field(default=10, ge=1, le=10)

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
    visibility_timeout: int = Field(default=60, ge=0)
    # A CA bundle to verify the SMTP server's certificate (default: the system's).
    ca_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _tls_choice(self) -> NotifierConfig:
        if self.ssl and self.starttls:
            raise ValueError("choose one of ssl (implicit TLS) and starttls")
        return self

    def password(self) -> str | None:
        """The SMTP password, read from the env var the config names."""
        if not self.password_env:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"notifier.password_env: env var {self.password_env} is not set")
        return value


class UploadsConfig(_Section):
    max_file_size: Size = 1024 * MIB
    allowed_extensions: list[str] = Field(default_factory=lambda: [".pdf"])
    require_pdf_signature: bool = True
    temp_name_patterns: list[str] = Field(
        default_factory=lambda: ["*.filepart", "*.part", "*.tmp", ".~*"]
    )
    resume_ttl: float = Field(default=24 * 3600.0, gt=0)
    gc_interval: float = Field(default=3600.0, gt=0)
    # Out-of-order writes wait in memory up to reorder_memory, then in a temporary file.
    reorder_memory: Size = 4 * MIB
    reorder_spill: Size = 256 * MIB

    @field_validator("allowed_extensions")
    @classmethod
    def _normalise_extensions(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            ext = value.strip().lower()
            if not ext:
                raise ValueError("an extension cannot be empty")
            out.append(ext if ext.startswith(".") else "." + ext)
        return out


class Settings(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    storage: StorageConfig
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    notifier: NotifierConfig = Field(default_factory=NotifierConfig)
    uploads: UploadsConfig = Field(default_factory=UploadsConfig)


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
        message = message.removeprefix("Value error, ")
        lines.append(f"{field}: {message}")
    return "; ".join(lines)


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
            node[path[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not a valid value ({exc.problem})") from exc


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
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {config_path} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {config_path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{config_path}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: the top level must be a mapping of sections")
    return settings_from_dict(data)
