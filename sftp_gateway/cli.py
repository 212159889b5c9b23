"""The `sftp-gateway` command: builds Settings, starts things, prints results. No logic.

Exit status: 0 success, 2 bad usage or config, 1 any other failure; errors are one
line on stderr that names the problem.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from sftp_gateway.auth import DEFAULT_PERMISSIONS, PERMISSIONS, parse_permissions, parse_public_key
from sftp_gateway.catalog.repository import STATUSES, CatalogError, UploadRecord
from sftp_gateway.config import Settings, load_settings
from sftp_gateway.errors import ConfigError, GatewayError

F = TypeVar("F", bound=Callable[..., Any])
USER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"sftp-gateway: {message}", err=True)
    sys.exit(code)


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


def _settings(config_path: Path | None) -> Settings:
    return load_settings(config_path)


def _catalog(settings: Settings):  # type: ignore[no-untyped-def]
    from sftp_gateway.app import build_catalog

    return build_catalog(settings)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.version_option(package_name="sftp-gateway")
def main(verbose: bool) -> None:
    """An SFTP server that streams uploads into S3, records them and announces them."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("paramiko", "botocore", "boto3", "urllib3", "werkzeug", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@config_option
@reports_errors
def serve(config_path: Path | None) -> None:
    """Run the SFTP server (and the event dispatcher when a queue is configured)."""
    from sftp_gateway.app import Gateway
    from sftp_gateway.runtime import background_workers

    settings = _settings(config_path)
    catalog = _catalog(settings)
    Gateway(settings, catalog=catalog, background=background_workers(settings, catalog)).run()


@main.command("check-config")
@config_option
@reports_errors
def check_config(config_path: Path | None) -> None:
    """Validate the config file and say so, with the SSH algorithms it offers."""
    from sftp_gateway.crypto_policy import describe

    settings = _settings(config_path)
    settings.notifier.password()
    click.echo(f"config OK: listen {settings.server.listen}, bucket {settings.storage.bucket}")
    for line in describe(settings.server.crypto_policy):
        click.echo(line)


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

    run_demo(port=port, data_dir=data_dir)


@main.command()
@config_option
@click.option("--once", is_flag=True, help="Handle what is queued now, then exit.")
@reports_errors
def notifier(config_path: Path | None, once: bool) -> None:
    """Read upload events from SQS and email the people concerned."""
    from sftp_gateway.notifier.worker import run_worker

    settings = _settings(config_path)
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


def _read_key(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {path}: {exc.strerror}", param_hint="--key"
        ) from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise click.BadParameter(f"{path} holds no public key", param_hint="--key")
    try:
        return parse_public_key(lines[0])
    except ValueError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--key") from None


def _check_name(name: str) -> str:
    if not name or len(name) > 64 or set(name) - USER_NAME_CHARS:
        raise click.BadParameter(
            "use 1-64 letters, digits, '.', '_', '-' or '@'", param_hint="NAME"
        )
    return name


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
@config_option
@reports_errors
def users_add(
    name: str,
    key_path: Path,
    email: str | None,
    home: str | None,
    permissions: str,
    config_path: Path | None,
) -> None:
    """Create a user with one public key."""
    _check_name(name)
    key = _read_key(key_path)
    try:
        perms = parse_permissions(permissions)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--permissions") from None
    if email is not None and "@" not in email:
        raise click.BadParameter(f"{email!r} is not an email address", param_hint="--email")
    home = (home or name).strip("/")
    if not home or ".." in home.split("/"):
        raise click.BadParameter("must be a relative prefix without '..'", param_hint="--home")
    catalog = _catalog(_settings(config_path))
    catalog.add_user(name, key, home=home, permissions=perms or DEFAULT_PERMISSIONS, email=email)
    click.echo(f"added user {name} (home {home}/, key {key.fingerprint})")


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
    for u in records:
        keys = ", ".join(
            f"{k.options} {k.fingerprint}" if k.options else k.fingerprint for k in u.keys
        )
        perms = ",".join(sorted(u.permissions))
        click.echo(f"{u.name}\t{u.email or '-'}\t{u.home}/\t{perms}\t{keys}")


# -- uploads -------------------------------------------------------------------------


@main.group()
def uploads() -> None:
    """Who uploaded what, when, from where."""


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date", param_hint="--since"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _upload_line(u: UploadRecord) -> str:
    return "\t".join(
        [
            u.id,
            u.started_at.isoformat(timespec="seconds"),
            u.user_name,
            u.status,
            str(u.size),
            u.sha256 or "-",
            u.client_ip or "-",
            f"s3://{u.bucket}/{u.object_key}",
        ]
    )


@uploads.command("list")
@click.option("--user", default=None)
@click.option("--since", default=None, help="ISO 8601 date or time (UTC unless stated).")
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
    """List uploads, newest first."""
    since_at = _parse_since(since)
    records = _catalog(_settings(config_path)).list_uploads(
        user=user, since=since_at, status=status, limit=limit
    )
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    for record in records:
        click.echo(_upload_line(record))


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
    upgrade(make_engine(settings.catalog.url))
    click.echo("catalog schema is up to date")


# -- bans ----------------------------------------------------------------------------


@main.group()
def bans() -> None:
    """Addresses banned after failed logins (shared by every instance on the catalog)."""


def _ban_store(config_path: Path | None):  # type: ignore[no-untyped-def]
    from sftp_gateway.catalog.bans import BanStore

    return BanStore(_catalog(_settings(config_path)).engine)


@bans.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
@reports_errors
def bans_list(as_json: bool, config_path: Path | None) -> None:
    """List active bans: address, until, score, reason."""
    records = _ban_store(config_path).active_bans()
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    for r in records:
        until = r.banned_until.isoformat(timespec="seconds")
        click.echo(f"{r.address}\t{until}\t{r.score}\t{r.reason or '-'}")


@bans.command("remove")
@click.argument("address")
@config_option
@reports_errors
def bans_remove(address: str, config_path: Path | None) -> None:
    """Lift the ban on ADDRESS (and forget its scores)."""
    import ipaddress

    try:
        normalised = str(ipaddress.ip_address(address.strip()))
    except ValueError:
        raise click.BadParameter(
            f"{address!r} is not an IP address", param_hint="ADDRESS"
        ) from None
    if not _ban_store(config_path).remove_ban(normalised):
        fail(f"{normalised} is not banned", 1)
    click.echo(f"removed ban on {normalised}")
