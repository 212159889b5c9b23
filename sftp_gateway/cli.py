"""The `sftp-gateway` command: builds Settings, starts things, prints results. No logic.

Exit status: 0 success, 2 bad usage or config, 1 any other failure; errors are one
line on stderr that names the problem.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar


def _say(line: str) -> None:
    """One line on stderr, also from a signal handler (unbuffered: never re-entered)."""
    os.write(2, f"sftp-gateway: {line}\n".encode())


def _catch_sigterm(started: threading.Event, quiet: bool) -> Any:
    """Until `started` is set, SIGTERM says `terminated during start-up` (unless `quiet`)
    and then kills as it would anyway (143 in a shell). Only on the main thread, and
    only where nothing else handles SIGTERM (a program embedding the CLI keeps its own).
    Returns the handler to put back (None: none was replaced)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        if not started.is_set() and not quiet:
            _say("terminated during start-up")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return signal.signal(signal.SIGTERM, on_sigterm)


def _release_sigterm(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _interrupted_starting(quiet: bool) -> NoReturn:
    """A Ctrl-C before the command is ready: one line (unless `quiet`), exit 130."""
    if not quiet:
        _say("interrupted during start-up")
    raise SystemExit(128 + signal.SIGINT)


@contextmanager
def startup_signals(quiet: bool = False) -> Iterator[threading.Event]:
    """Until the event it yields is set (`serve` listens and handles signals itself),
    Ctrl-C (SIGINT) ends the command with `interrupted during start-up`, exit 130, and
    SIGTERM with `terminated during start-up` before it dies of the signal: one line, no
    traceback, no `Aborted!`, no silent death. `quiet`: no line (a worker of `serve
    --workers`, whose supervisor speaks for it)."""
    started = threading.Event()
    previous = _catch_sigterm(started, quiet)
    try:
        yield started
    except KeyboardInterrupt:
        if started.is_set():
            raise
        _interrupted_starting(quiet)
    finally:
        _release_sigterm(previous)


# Loading the modules below takes a while (a second on a slow disk): a Ctrl-C or SIGTERM
# then is one line too.
_IS_WORKER = "--worker-of" in sys.argv  # a worker of `serve --workers`: stops quietly
_previous_sigterm = _catch_sigterm(threading.Event(), _IS_WORKER)
try:
    import click
    import sqlalchemy.engine
    import sqlalchemy.exc

    from sftp_gateway import logs, tables
    from sftp_gateway.auth import (
        PERMISSIONS,
        key_file_lines,
        parse_permissions,
        parse_public_key,
    )
    from sftp_gateway.catalog import build_catalog
    from sftp_gateway.catalog.repository import (
        IN_PROGRESS,
        STATUSES,
        Catalog,
        CatalogError,
        UploadRecord,
    )
    from sftp_gateway.config import Settings, load_settings, resolve_config_path
    from sftp_gateway.errors import ConfigError, GatewayError
    from sftp_gateway.units import human_size
except KeyboardInterrupt:
    _interrupted_starting(_IS_WORKER)
finally:
    _release_sigterm(_previous_sigterm)

F = TypeVar("F", bound=Callable[..., Any])
CATALOG_URL_META = "sftp_gateway.catalog_url"  # click context meta: for error lines
USER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"sftp-gateway: {message}", err=True)
    sys.exit(code)


def describe_database(url: str) -> str:
    """`postgresql database sftp on db.internal:5432`: where, never the password."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return "the catalog database (catalog.url is not a database URL)"
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return f"sqlite database {parsed.database or ':memory:'}"
    where = parsed.host or "localhost"
    if parsed.port:
        where += f":{parsed.port}"
    return f"{backend} database {parsed.database or '-'} on {where}"


def _catalog_unreachable(exc: Exception) -> str:
    """One line for a catalog that is down, missing or refusing us (no SQL, no trace)."""
    ctx = click.get_current_context(silent=True)
    catalog_url = ctx.meta.get(CATALOG_URL_META) if ctx is not None else None
    where = describe_database(catalog_url) if catalog_url else "the catalog database"
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"cannot use {where}: {reason[0] if reason else type(exc).__name__}"


def reports_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and the right exit status."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise  # usage errors: click prints them and exits 2
        except ConfigError as exc:
            fail(f"config error: {exc}", 2)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            fail(_catalog_unreachable(exc), 1)
        except (CatalogError, GatewayError) as exc:
            fail(str(exc), 1)
        except Exception as exc:  # the last resort: no traceback for the operator
            logging.getLogger("sftp_gateway").debug("failure", exc_info=True)
            fail(f"{type(exc).__name__}: {exc}", 1)

    return wrapper  # type: ignore[return-value]


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $SFTP_GATEWAY_CONFIG, then config/gateway.yaml).",
)


def _settings(config_path: Path | None, log_format: logs.Format = "text") -> Settings:
    """The validated config; logging follows its `logging` section from here on."""
    settings = load_settings(config_path)
    _configure_logging(settings, log_format)
    return settings


def _remember_catalog_url(url: str) -> None:
    """So an unreachable catalog is reported by host and database (reports_errors)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[CATALOG_URL_META] = url


def _catalog(settings: Settings) -> Catalog:
    _remember_catalog_url(settings.catalog.url)
    return build_catalog(settings)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.version_option(package_name="sftp-gateway")
def main(verbose: bool) -> None:
    """An SFTP server that streams uploads into S3, records them and announces them."""
    logs.configure("text", logging.DEBUG if verbose else logging.INFO)  # until the config is read


def _configure_logging(settings: Settings, default_format: logs.Format) -> None:
    """`logging.format` (else the command's default) and `logging.level` (-v: DEBUG)."""
    context = click.get_current_context(silent=True)
    verbose = bool(context and context.find_root().params.get("verbose"))
    level = logging.DEBUG if verbose else settings.logging.level
    logs.configure(settings.logging.format_for(default_format), level)


@main.command()
@config_option
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes on the one listening socket (default: server.workers, else"
    " one per core); 1: a single process.",
)
@click.option("--worker-of", "worker_of", default=None, hidden=True)  # set by the supervisor
@reports_errors
def serve(config_path: Path | None, workers: int | None, worker_of: str | None) -> None:
    """Run the SFTP server (and the event dispatcher when a queue is configured)."""
    # Until it listens (and handles signals itself): Ctrl-C is one line and exit 130.
    with startup_signals(quiet=worker_of is not None) as started:
        _serve(config_path, workers, worker_of, started)


def _serve(
    config_path: Path | None,
    workers: int | None,
    worker_of: str | None,
    started: threading.Event,
) -> None:
    from sftp_gateway import supervisor

    spec = supervisor.WorkerSpec.parse(worker_of) if worker_of is not None else None
    if spec is not None:  # first: a worker never outlives its supervisor, even booting
        supervisor.die_with_parent(spec.parent)
    settings = _settings(config_path, "json")
    catalog = _catalog(settings)
    if spec is not None:
        supervisor.run_worker(settings, catalog, spec)  # signals are its own once it runs
        return
    try:
        count = supervisor.worker_count(settings, workers)
    except ConfigError as exc:
        if workers is None:
            raise
        raise _option_error(exc, "server.workers", "--workers") from None
    if count > 1:
        verbose = bool(click.get_current_context().find_root().params.get("verbose"))
        path = resolve_config_path(config_path).resolve()
        boss = supervisor.Supervisor(settings, catalog, count, path, verbose)
        try:
            code = boss.run()
        finally:
            if boss.workers:  # it got as far as listening (and starting workers)
                started.set()
        sys.exit(code)
    from sftp_gateway.app import Gateway
    from sftp_gateway.runtime import background_workers

    gateway = Gateway(settings, catalog=catalog, background=background_workers(settings, catalog))
    gateway.run(on_started=lambda _address: started.set())


def _option_error(exc: ConfigError, field: str, option: str) -> click.BadParameter:
    """A config error about `field` whose value came from `option`: said of the option."""
    text = str(exc).removeprefix(f"{field}: ").replace(field, option)
    return click.BadParameter(text, param_hint=option)


@main.command("check-config")
@config_option
@click.option(
    "--live",
    is_flag=True,
    help="Also prove each S3/SQS permission the config needs (leaves nothing behind).",
)
@click.option(
    "--send-test-event",
    is_flag=True,
    help="With --live: send one test upload event to the queue (the notifier emails it).",
)
@reports_errors
def check_config(config_path: Path | None, live: bool, send_test_event: bool) -> None:
    """Validate the config file and say so, with the SSH algorithms it offers."""
    from sftp_gateway.crypto_policy import describe

    if send_test_event and not live:
        raise click.UsageError("--send-test-event needs --live")
    settings = _settings(config_path)
    _check_environment(settings)
    click.echo(f"config OK: listen {settings.server.listen}, bucket {settings.storage.bucket}")
    for line in describe(settings.server.crypto_policy):
        click.echo(line)
    if live:
        _live_check(settings, send_test_event)


def _check_environment(settings: Settings) -> None:
    """What `serve` and the notifier read from the environment at start, read now: the
    secrets the config names by variable (ConfigError naming the field), and a proxy
    `storage.put_client: crt` would not follow."""
    settings.notifier.password()
    if settings.admin.listen:  # serve reads admin.token_env only for its listener
        settings.admin.token()
    if settings.storage.put_client == "crt":
        from sftp_gateway.storage.crt import refuse_what_crt_ignores

        refuse_what_crt_ignores(os.environ)


def _live_check(settings: Settings, send_test_event: bool) -> None:
    """One line per permission: ok, DENIED (code) or FAILED (code); exit 1 on any miss."""
    from sftp_gateway.livecheck import LiveCheck

    results = LiveCheck(settings, send_test_event=send_test_event).run()
    width = max(len(r.name) for r in results)
    for result in results:
        click.echo(result.line(width))
    failed = [r.name for r in results if not r.ok]
    if failed:
        fail(f"{len(failed)} of {len(results)} live checks failed", 1)


@main.command("iam-policy")
@config_option
@click.option(
    "--role",
    type=click.Choice(["gateway", "notifier"]),
    default="gateway",
    show_default=True,
    help="The process the policy is for: serve (gateway) or the notifier.",
)
@click.option(
    "--bucket-policy",
    "for_bucket",
    is_flag=True,
    help="Print the recommended bucket policy instead (TLS only, the configured encryption).",
)
@reports_errors
def iam_policy(config_path: Path | None, role: str, for_bucket: bool) -> None:
    """Print the least-privilege IAM policy (JSON) for the configured bucket, prefix and queue.

    Notes that go with it (Block Public Access, what cannot be narrowed) go to stderr,
    so stdout stays valid JSON for `> policy.json`.
    """
    from sftp_gateway import iam

    settings = _settings(config_path)
    chosen: iam.Role = "notifier" if role == "notifier" else "gateway"
    policy = iam.bucket_policy(settings) if for_bucket else iam.identity_policy(settings, chosen)
    click.echo(json.dumps(policy, indent=2))
    for note in iam.policy_notes(settings, chosen, for_bucket):
        click.echo(f"note: {note}", err=True)


@main.command()
@click.option("--port", default=2222, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data-dir",
    default=Path("demo-data"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@reports_errors
def demo(port: int, data_dir: Path) -> None:
    """Run everything in one process on embedded S3, SQS and SQLite."""
    from sftp_gateway.demo import run_demo

    try:
        run_demo(port=port, data_dir=data_dir)
    except ConfigError as exc:
        if not str(exc).startswith("server.listen: "):
            raise
        raise _option_error(exc, "server.listen", "--port") from None


@main.command()
@config_option
@click.option("--once", is_flag=True, help="Handle what is queued now, then exit.")
@reports_errors
def notifier(config_path: Path | None, once: bool) -> None:
    """Read upload events from SQS and email the people concerned."""
    from sftp_gateway.notifier.worker import run_worker

    settings = _settings(config_path, "json")
    run_worker(settings, _catalog(settings), once=once)


@main.command()
@config_option
@reports_errors
def gc(config_path: Path | None) -> None:
    """Abort stale interrupted and orphan multipart uploads; mark them in the catalog."""
    from sftp_gateway.gc import collect_garbage

    settings = _settings(config_path)
    report = collect_garbage(settings, _catalog(settings))
    click.echo(report.summary())


# -- users ---------------------------------------------------------------------------


@main.group()
def users() -> None:
    """Manage users and their SSH keys."""


KEY_FILE_LIMIT = 64 * 1024  # a public key line is a few KiB at most (RSA 16384: 2.8)


def _read_key(path: Path) -> Any:
    """The one public key in a .pub or authorized_keys-style file (BadParameter on --key
    saying what is wrong with the file: its kind, its encoding, its number of keys)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(KEY_FILE_LIMIT + 1)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--key"
        ) from None
    if len(data) > KEY_FILE_LIMIT:
        raise click.BadParameter(
            f"{path} is larger than {KEY_FILE_LIMIT // 1024} KiB: not a public key file",
            param_hint="--key",
        )
    try:
        lines = key_file_lines(data.decode("utf-8"), str(path))
    except UnicodeDecodeError:
        raise click.BadParameter(
            f"{path} is not a text file (not UTF-8): give the public key, one line such as"
            " ssh-ed25519 AAAA... (the .pub file)",
            param_hint="--key",
        ) from None
    except ValueError as exc:  # a private key, RFC 4716, PEM: says how to convert it
        raise click.BadParameter(str(exc), param_hint="--key") from None
    if not lines:
        raise click.BadParameter(f"{path} holds no public key", param_hint="--key")
    if len(lines) > 1:
        raise click.BadParameter(
            f"{path} holds {len(lines)} keys: give a file with one key"
            " (users add-key adds each further key)",
            param_hint="--key",
        )
    try:
        return parse_public_key(lines[0])
    except ValueError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--key") from None


def _check_name(name: str) -> str:
    if not name or len(name) > 64 or set(name) - USER_NAME_CHARS:
        raise click.BadParameter(
            "use 1-64 letters, digits, '.', '_', '-' or '@'", param_hint="NAME"
        )
    if name in (".", ".."):
        raise click.BadParameter(f"{name!r} cannot be a user name", param_hint="NAME")
    return name


def _unprintable(text: str) -> str | None:
    """The first character of `text` that has no place in a name, address or path:
    a control or format character, a line or paragraph separator (as \\x01, \\u2028)."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return repr(char)[1:-1]
    return None


def _check_email(email: str) -> str:
    """Exactly one plain address, `name@domain`: no display name, no list, no control
    character (the notifier puts it in an email header)."""
    from email.errors import HeaderParseError
    from email.headerregistry import Address

    def refuse(why: str) -> NoReturn:
        raise click.BadParameter(f"{email!r} is not an email address: {why}", param_hint="--email")

    if len(email) > 254:
        refuse("longer than 254 characters")
    bad = _unprintable(email)
    if bad:
        refuse(f"it contains the control character {bad}")
    if "," in email or ";" in email:
        refuse("give one address only")
    if any(char.isspace() for char in email):
        refuse("it contains a space")
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        refuse("it needs a name and a domain, as in name@example.com")
    try:
        address = Address(addr_spec=email)
    except (ValueError, IndexError, HeaderParseError):
        address = None
    if address is None or address.addr_spec != email:
        refuse("write it as name@example.com")
    return email


def _check_home(home: str | None, name: str) -> str:
    """The user's home prefix under storage.prefix: `--home` without its outer slashes,
    else NAME. Every segment a plain name: no empty, `.` or `..` segment, no control
    character, no space at either end of a segment."""
    if home is None:
        return name

    def refuse(why: str) -> NoReturn:
        raise click.BadParameter(f"{home!r}: {why}", param_hint="--home")

    bad = _unprintable(home)
    if bad:
        refuse(f"contains the control character {bad}")
    prefix = home.strip("/")
    if not prefix:
        refuse("give a relative prefix such as partners/acme")
    for segment in prefix.split("/"):
        if not segment:
            refuse("has an empty segment ('//')")
        if segment in (".", ".."):
            refuse("must be a relative prefix without '.' or '..' segments")
        if segment != segment.strip():
            refuse(f"the segment {segment!r} begins or ends with a space")
    return prefix


COMPRESSIONS = ("none", "gzip", "zstd")  # users.compression; NULL: storage.compression


@users.command("add")
@click.argument("name")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path))
@click.option("--email", default=None)
@click.option("--home", default=None, help="Home prefix under storage.prefix (default: NAME).")
@click.option(
    "--permissions",
    default=",".join(PERMISSIONS),
    show_default=True,
    help="Comma-separated: " + ", ".join(PERMISSIONS),
)
@click.option(
    "--compression",
    type=click.Choice(COMPRESSIONS),
    default=None,
    help="How this user's uploads are stored (default: storage.compression).",
)
@config_option
@reports_errors
def users_add(
    name: str,
    key_path: Path,
    email: str | None,
    home: str | None,
    permissions: str,
    compression: str | None,
    config_path: Path | None,
) -> None:
    """Create a user with one public key."""
    _check_name(name)
    key = _read_key(key_path)
    try:
        perms = parse_permissions(permissions)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--permissions") from None
    if not perms:  # never "none given, so all": a blank value is a mistake
        raise click.BadParameter(
            f"{permissions!r} names no permission: give one or more of {', '.join(PERMISSIONS)}",
            param_hint="--permissions",
        )
    if email is not None:
        _check_email(email)
    home = _check_home(home, name)
    catalog = _catalog(_settings(config_path))
    catalog.add_user(
        name,
        key,
        home=home,
        permissions=perms,
        email=email,
        compression=compression,
    )
    click.echo(f"added user {name} (home {home}/, key {key.fingerprint})")


@users.command("set")
@click.argument("name")
@click.option(
    "--compression",
    type=click.Choice([*COMPRESSIONS, "default"]),
    required=True,
    help="How this user's uploads are stored from now on; default: storage.compression.",
)
@config_option
@reports_errors
def users_set(name: str, compression: str, config_path: Path | None) -> None:
    """Change a user's settings (uploads already stored or begun keep theirs)."""
    value = None if compression == "default" else compression
    _catalog(_settings(config_path)).set_user_compression(name, value)
    click.echo(f"user {name}: compression {compression}")


@users.command("add-key")
@click.argument("name")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path))
@config_option
@reports_errors
def users_add_key(name: str, key_path: Path, config_path: Path | None) -> None:
    """Give a user another public key."""
    key = _read_key(key_path)
    _catalog(_settings(config_path)).add_key(name, key)
    options = f" with options {key.options}" if key.options else ""
    click.echo(f"added key {key.fingerprint} to {name}{options}")


@users.command("remove-key")
@click.argument("name")
@click.argument("fingerprint")
@config_option
@reports_errors
def users_remove_key(name: str, fingerprint: str, config_path: Path | None) -> None:
    """Remove one key (by its SHA256:... fingerprint) from a user."""
    _catalog(_settings(config_path)).remove_key(name, fingerprint)
    click.echo(f"removed key {fingerprint} from {name}")


@users.command("remove")
@click.argument("name")
@config_option
@reports_errors
def users_remove(name: str, config_path: Path | None) -> None:
    """Delete a user and its keys (its files and upload history stay)."""
    _catalog(_settings(config_path)).remove_user(name)
    click.echo(f"removed user {name}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
@reports_errors
def users_list(as_json: bool, config_path: Path | None) -> None:
    """List users, their homes, permissions and keys."""
    records = _catalog(_settings(config_path)).list_users()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": u.name,
                        "email": u.email,
                        "home": u.home,
                        "permissions": sorted(u.permissions),
                        "compression": u.compression,  # null: storage.compression
                        "created_at": u.created_at.isoformat(),
                        "keys": [
                            {
                                "type": k.key_type,
                                "fingerprint": k.fingerprint,
                                "comment": k.comment,
                                "options": k.options,
                            }
                            for k in u.keys
                        ],
                    }
                    for u in records
                ],
                indent=2,
            )
        )
        return
    if tables.stdout_is_terminal():
        _echo_table(USER_COLUMNS, [row for u in records for row in _user_rows(u)])
        return
    for u in records:
        keys = ", ".join(_key_label(k) for k in u.keys)
        perms = ",".join(sorted(u.permissions))
        click.echo(f"{u.name}\t{u.email or '-'}\t{u.home}/\t{perms}\t{keys}")


USER_COLUMNS = [
    tables.Column("NAME"),
    tables.Column("EMAIL"),
    tables.Column("HOME"),
    tables.Column("PERMISSIONS"),
    tables.Column("CREATED"),
    tables.Column("KEYS"),
]


def _key_label(key: Any) -> str:
    return f"{key.options} {key.fingerprint}" if key.options else key.fingerprint


def _user_rows(user: Any) -> list[list[str]]:
    """The user on one row with its first key; each further key on a row of its own."""
    labels = [_key_label(k) for k in user.keys] or ["-"]
    first = [
        user.name,
        user.email or "-",
        user.home + "/",
        ",".join(sorted(user.permissions)),
        tables.local_time(user.created_at),
        labels[0],
    ]
    return [first, *([""] * 5 + [label] for label in labels[1:])]


def _echo_table(columns: list[tables.Column], rows: list[list[str]]) -> None:
    """An aligned table with a header, or a line saying there is nothing to show."""
    click.echo(tables.render_table(columns, rows) if rows else "(none)")


# -- uploads -------------------------------------------------------------------------


@main.group()
def uploads() -> None:
    """Who uploaded what, when, from where."""


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return tables.parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _upload_fields(u: UploadRecord, with_rate: bool, now: datetime) -> list[str]:
    """TSV fields: stable columns for scripts; bytes/s last when listing in_progress."""
    fields = [
        u.id,
        u.started_at.isoformat(timespec="seconds"),
        u.user_name,
        u.status,
        str(u.size),
        u.sha256 or "-",
        u.client_ip or "-",
        f"s3://{u.bucket}/{u.object_key}",
    ]
    if with_rate:
        fields.append(str(int(tables.upload_rate(u.size, u.started_at, now))))
    return fields


def _upload_columns(with_rate: bool) -> list[tables.Column]:
    columns = [
        tables.Column("STARTED"),
        tables.Column("USER"),
        tables.Column("STATUS"),
        tables.Column("SIZE", right=True),
    ]
    if with_rate:
        columns.append(tables.Column("RATE", right=True))
    return [*columns, tables.Column("FROM"), tables.Column("OBJECT"), tables.Column("ID")]


def _upload_row(u: UploadRecord, with_rate: bool, now: datetime) -> list[str]:
    """A row for people: local time, 1.5 MiB, the average rate so far of a running upload."""
    row = [tables.local_time(u.started_at), u.user_name, u.status, human_size(u.size)]
    if with_rate:
        row.append(tables.human_rate(tables.upload_rate(u.size, u.started_at, now)))
    return [*row, u.client_ip or "-", f"s3://{u.bucket}/{u.object_key}", u.id]


def _upload_json(u: UploadRecord, with_rate: bool, now: datetime) -> dict[str, Any]:
    out = u.as_dict()
    if with_rate:
        out["bytes_per_second"] = round(tables.upload_rate(u.size, u.started_at, now), 1)
    return out


@uploads.command("list")
@click.option("--user", default=None)
@click.option("--since", default=None, help=tables.SINCE_HELP)
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
@config_option
@reports_errors
def uploads_list(
    user: str | None,
    since: str | None,
    status: str | None,
    limit: int,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """List uploads, newest first (with the rate so far for --status in_progress)."""
    since_at = _parse_since(since)
    records = _catalog(_settings(config_path)).list_uploads(
        user=user, since=since_at, status=status, limit=limit
    )
    with_rate, now = status == IN_PROGRESS, datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([_upload_json(r, with_rate, now) for r in records], indent=2))
    elif tables.stdout_is_terminal():
        _echo_table(_upload_columns(with_rate), [_upload_row(r, with_rate, now) for r in records])
    elif records:
        click.echo(tables.render_tsv([_upload_fields(r, with_rate, now) for r in records]))


@uploads.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@config_option
@reports_errors
def uploads_show(ref: str, as_json: bool, config_path: Path | None) -> None:
    """Show one upload by id, or every upload of an S3 key (KEY or s3://BUCKET/KEY)."""
    settings = _settings(config_path)
    catalog = _catalog(settings)
    record = catalog.get_upload(ref)
    if record is not None:
        records = [record]
    else:
        bucket, key = settings.storage.bucket, ref
        if ref.startswith("s3://"):
            bucket, _, key = ref[5:].partition("/")
        records = catalog.uploads_for_key(bucket, key)
    if not records:
        fail(f"no upload with id or key {ref}", 1)
    if as_json:
        payload = [r.as_dict() for r in records]
        click.echo(json.dumps(payload[0] if record is not None else payload, indent=2))
        return
    for r in records:
        for name, value in r.as_dict().items():
            click.echo(f"{name:16} {value if value is not None else '-'}")
        click.echo("")


# -- operations ----------------------------------------------------------------------


@main.group()
def db() -> None:
    """Catalog schema."""


@db.command("upgrade")
@config_option
@reports_errors
def db_upgrade(config_path: Path | None) -> None:
    """Apply the catalog's migrations (Alembic) up to the latest."""
    from sftp_gateway.catalog.db import make_engine, upgrade

    settings = _settings(config_path)
    _remember_catalog_url(settings.catalog.url)
    upgrade(make_engine(settings.catalog.url))
    click.echo("catalog schema is up to date")


# -- bans ----------------------------------------------------------------------------


@main.group()
def bans() -> None:
    """Addresses banned after failed logins (shared by every instance on the catalog)."""


def _ban_store(settings: Settings):  # type: ignore[no-untyped-def]
    from sftp_gateway.catalog.bans import BanStore

    return BanStore(_catalog(settings).engine)


@bans.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
@reports_errors
def bans_list(as_json: bool, config_path: Path | None) -> None:
    """List active bans: address, until, score, reason."""
    records = _ban_store(_settings(config_path)).active_bans()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    if tables.stdout_is_terminal():
        columns = ["ADDRESS", "BANNED UNTIL", "SCORE", "REASON"]
        rows = [
            [r.address, tables.local_time(r.banned_until), str(r.score), r.reason or "-"]
            for r in records
        ]
        _echo_table([tables.Column(c, right=c == "SCORE") for c in columns], rows)
        return
    for r in records:
        until = r.banned_until.isoformat(timespec="seconds")
        click.echo(f"{r.address}\t{until}\t{r.score}\t{r.reason or '-'}")


@bans.command("remove")
@click.argument("address")
@config_option
@reports_errors
def bans_remove(address: str, config_path: Path | None) -> None:
    """Lift the ban on ADDRESS, or on the network an IPv6 ADDRESS is banned as (its
    server.ipv6_source_prefix), and forget its scores."""
    from sftp_gateway.addresses import ban_key

    settings = _settings(config_path)
    key = ban_key(address, settings.server.ipv6_source_prefix)
    if key is None:
        raise click.BadParameter(
            f"{address!r} is not an IP address or network", param_hint="ADDRESS"
        )
    if not _ban_store(settings).remove_ban(key):
        fail(f"{key} is not banned", 1)
    click.echo(f"removed ban on {key}")


# -- events --------------------------------------------------------------------------


@main.group()
def events() -> None:
    """Upload events not yet accepted by SQS: pending, retrying, parked."""


def _age(seconds: float) -> str:
    """3d4h, 2h5m, 4m10s, 12s: the age of an event at a glance."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@events.command("list")
@click.option("--failed", is_flag=True, help="Only events that failed (retrying or parked).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
@config_option
@reports_errors
def events_list(failed: bool, limit: int, as_json: bool, config_path: Path | None) -> None:
    """List unsent events, oldest first: id, state, type, upload, attempts, age, error."""
    records = _catalog(_settings(config_path)).unsent_events(failed_only=failed, limit=limit)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    for r in records:
        error = (r.last_error or "-").replace("\n", " ")[:200]
        fields = [str(r.id), r.state, r.event_type, r.upload_id, str(r.attempts)]
        click.echo("\t".join([*fields, _age(r.age_seconds()), error]))


@events.command("retry")
@click.argument("event_ids", nargs=-1)
@click.option("--all", "every_parked", is_flag=True, help="Every parked event.")
@config_option
@reports_errors
def events_retry(event_ids: tuple[str, ...], every_parked: bool, config_path: Path | None) -> None:
    """Un-park events (outbox id or event_id): sent at the dispatcher's next tick."""
    if bool(event_ids) == every_parked:
        raise click.UsageError("give EVENT_ID... or --all (not both)")
    count = _catalog(_settings(config_path)).retry_events(event_ids, every_parked=every_parked)
    click.echo(f"{count} event(s) due now")


# -- upload links ----------------------------------------------------------------------


@main.group()
def links() -> None:
    """Browser upload links: a URL that lets its holder upload as a user, until it expires."""


def _link_store(settings: Settings):  # type: ignore[no-untyped-def]
    from sftp_gateway.catalog.links import LinkStore

    return LinkStore(_catalog(settings).engine)


LINK_LIFETIME_MAX = timedelta(days=3650)  # ten years: a longer one is a typo


def _link_expiry(value: str) -> datetime:
    """`7d`, `12h`, `30m`, `2w` from now, or a future ISO 8601 date or time (UTC unless
    stated): when a link stops working."""
    try:
        return tables.parse_until(value, LINK_LIFETIME_MAX)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None


def _link_size(value: str | None) -> int | None:
    """--max-size: a whole number of bytes from 1 to S3's 5 TiB (None: no link limit)."""
    from sftp_gateway.s3limits import MAX_OBJECT_SIZE
    from sftp_gateway.units import parse_size

    if value is None:
        return None
    try:
        size = parse_size(value)  # refuses a fraction of a byte (0.5) itself
    except (ValueError, TypeError, OverflowError) as exc:
        raise click.BadParameter(str(exc), param_hint="--max-size") from None
    if size < 1:  # 0 would read as "no link limit" where the limit is checked
        raise click.BadParameter(
            f"{value!r} allows no file at all: give 1 byte or more"
            " (without --max-size, uploads.max_file_size is the limit)",
            param_hint="--max-size",
        )
    if size > MAX_OBJECT_SIZE:
        raise click.BadParameter(
            f"{value!r} is more than S3's largest object, {human_size(MAX_OBJECT_SIZE)}",
            param_hint="--max-size",
        )
    return size


def _link_note(value: str | None) -> str | None:
    if value is not None:
        bad = _unprintable(value)
        if bad:
            raise click.BadParameter(
                f"contains the control character {bad} (one line of text)", param_hint="--note"
            )
    return value


def _link_folder(value: str | None) -> str | None:
    from sftp_gateway.paths import normalize

    if value is None:
        return None
    if ".." in value.replace("\\", "/").split("/"):
        raise click.BadParameter(
            "must stay inside the user's home (no '..')", param_hint="--folder"
        )
    try:
        folder = normalize(value)
    except GatewayError as exc:
        raise click.BadParameter(str(exc), param_hint="--folder") from None
    return None if folder == "/" else folder


def link_base_url(settings: Settings) -> str:
    """web.public_url, else http:// + the listener that serves the upload pages."""
    if settings.web.public_url:
        return settings.web.public_url
    listen = settings.web.listen or settings.admin.listen
    if not listen:
        raise ConfigError("web.listen: set web.listen or admin.listen to serve upload links")
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        raise ConfigError("web.public_url: required when the upload listener is on every address")
    return f"http://{host}:{port}"


@links.command("create")
@click.argument("user")
@click.option(
    "--expires",
    default="7d",
    show_default=True,
    help="Lifetime (30m, 12h, 7d, 2w) or a future ISO 8601 date or time (UTC unless stated),"
    " at most 10 years ahead.",
)
@click.option("--max-uploads", type=click.IntRange(1), default=None, help="Uploads allowed.")
@click.option(
    "--max-size", default=None, help="Largest file, e.g. 2GiB (and uploads.max_file_size)."
)
@click.option("--folder", default=None, help="Sub-folder of the user's home the files land in.")
@click.option("--note", default=None, help="Shown on the page and in `links list`.")
@config_option
@reports_errors
def links_create(
    user: str,
    expires: str,
    max_uploads: int | None,
    max_size: str | None,
    folder: str | None,
    note: str | None,
    config_path: Path | None,
) -> None:
    """Create an upload link for USER and print its URL (the token is shown only once)."""
    until = _link_expiry(expires)
    size, sub_folder, note = _link_size(max_size), _link_folder(folder), _link_note(note)
    settings = _settings(config_path)
    base = link_base_url(settings)
    if _catalog(settings).get_user(user) is None:
        fail(f"no such user: {user}", 1)
    lifetime = until - datetime.now(UTC)
    if lifetime <= timedelta(0):
        raise click.BadParameter(f"{expires!r} has passed meanwhile", param_hint="--expires")
    link, token = _link_store(settings).create(
        user,
        expires_in=lifetime,
        max_uploads=max_uploads,
        max_size=size,
        folder=sub_folder,
        note=note,
    )
    click.echo(f"{base}/u/{token}")
    click.echo(
        f"link {link.id} for {user}, expires {link.expires_at.isoformat(timespec='seconds')}",
        err=True,
    )


@links.command("list")
@click.option("--user", default=None, help="Only this user's links.")
@click.option("--json", "as_json", is_flag=True)
@config_option
@reports_errors
def links_list(user: str | None, as_json: bool, config_path: Path | None) -> None:
    """List links: id, user, folder, expires, uploads used/max, note, revoked."""
    records = _link_store(_settings(config_path)).list(user)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    rows = [
        [
            r.id,
            r.user_name,
            r.folder or "/",
            tables.local_time(r.expires_at),
            f"{r.uploads_used}/{r.max_uploads if r.max_uploads is not None else '-'}",
            "yes" if r.revoked_at else "no",
            r.note or "-",
        ]
        for r in records
    ]
    if tables.stdout_is_terminal():
        headers = ["ID", "USER", "FOLDER", "EXPIRES", "UPLOADS", "REVOKED", "NOTE"]
        _echo_table([tables.Column(h) for h in headers], rows)
        return
    for row in rows:
        click.echo("\t".join(row))


@links.command("revoke")
@click.argument("link_id")
@config_option
@reports_errors
def links_revoke(link_id: str, config_path: Path | None) -> None:
    """Revoke link LINK_ID: its page and uploads in progress are refused from now on."""
    if not _link_store(_settings(config_path)).revoke(link_id):
        fail(f"no upload link with id {link_id}", 1)
    click.echo(f"revoked link {link_id}")
