"""`sftp-gateway demo`: the whole system in one process on a fresh machine.

S3 and SQS are moto's server on loopback, the catalog is SQLite, host keys and a demo
user's key pair are generated under the data dir, and emails land in DATA_DIR/mail.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import click
import yaml

from sftp_gateway.auth import DEFAULT_PERMISSIONS, parse_public_key
from sftp_gateway.config import settings_from_dict
from sftp_gateway.errors import GatewayError
from sftp_gateway.hostkeys import generate_private_key, public_line, write_private_key
from sftp_gateway.samplepdf import write_sample_pdf

log = logging.getLogger(__name__)
DEMO_BUCKET = "sftp-gateway-demo"
DEMO_QUEUE = "sftp-gateway-uploads"
DEMO_USER = "demo"
LARGE_SAMPLE_SIZE = 50_000_000  # a realistic scanned-document size
MOTO_MISSING = "the demo needs: pip install 'sftp-gateway[demo]'"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_config(data_dir: Path, port: int, endpoint: str, queue_url: str) -> dict[str, Any]:
    """The demo's config, also written to DATA_DIR/gateway.yaml for the other commands."""
    return {
        "server": {"listen": f"127.0.0.1:{port}", "host_keys_dir": str(data_dir / "keys")},
        "storage": {
            "bucket": DEMO_BUCKET,
            "prefix": "incoming",
            "endpoint_url": endpoint,
            # moto stores a multipart object's composite CRC32 as if it were a whole-object
            # one, so a plain boto3 read of it would fail its checksum check.
            "part_checksums": False,
        },
        "catalog": {"url": f"sqlite:///{data_dir / 'catalog.db'}"},
        "events": {"queue_url": queue_url, "endpoint_url": endpoint, "region": "us-east-1"},
        "notifier": {
            "maildir": str(data_dir / "mail"),
            "recipients": ["ops@example.com"],
            "wait_seconds": 1,
        },
    }


def ensure_demo_key(data_dir: Path) -> Path:
    """The demo user's private key (ed25519), created once and kept."""
    key_path = data_dir / "demo_ed25519"
    if not key_path.exists():
        pem = generate_private_key("ed25519")
        write_private_key(key_path, pem)
        key_path.with_suffix(".pub").write_text(public_line(pem, "demo@sftp-gateway") + "\n")
    return key_path


def ensure_samples(data_dir: Path) -> tuple[Path, Path]:
    """A tiny PDF and a 50 MB one (text pages and a photo), created once and kept."""
    small = data_dir / "sample.pdf"
    if not small.exists():
        small.write_bytes(b"%PDF-1.4\n% sftp-gateway demo file\n%%EOF\n")
    large = data_dir / "sample-50MB.pdf"
    if not large.exists():
        write_sample_pdf(large, LARGE_SAMPLE_SIZE)
    return small, large


def run_demo(port: int, data_dir: Path) -> None:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # the production install (and image) leaves moto out
        raise GatewayError(MOTO_MISSING) from None

    from sftp_gateway.app import Gateway
    from sftp_gateway.catalog import build_catalog
    from sftp_gateway.runtime import background_workers

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # moto accepts any credentials; set them only for this process.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    moto_port = _free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto_port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=DEMO_BUCKET
    )
    queue_url = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1").create_queue(
        QueueName=DEMO_QUEUE
    )["QueueUrl"]

    config = demo_config(data_dir, port, endpoint, queue_url)
    config["admin"] = {"listen": f"127.0.0.1:{_free_port()}"}  # live uploads page, /metrics
    config_path = data_dir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    settings = settings_from_dict(config, environ={})
    catalog = build_catalog(settings)
    key_path = ensure_demo_key(data_dir)
    public = parse_public_key(key_path.with_suffix(".pub").read_text())
    user = catalog.get_user(DEMO_USER)
    if user is None:
        catalog.add_user(
            DEMO_USER,
            public,
            home=DEMO_USER,
            permissions=DEFAULT_PERMISSIONS,
            email="demo@example.com",
        )
    elif public.fingerprint not in {k.fingerprint for k in user.keys}:
        catalog.add_key(DEMO_USER, public)

    gateway = Gateway(
        settings, catalog=catalog, background=background_workers(settings, catalog, demo=True)
    )
    sample, large_sample = ensure_samples(data_dir)

    def announce(address: tuple[str, int]) -> None:
        host, bound_port = address
        click.echo(
            "\nsftp-gateway demo is running. Try:\n\n"
            f"  sftp -i {key_path} -P {bound_port} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null {DEMO_USER}@{host}\n\n"
            f"  then, at the sftp> prompt: put {sample}\n"
            f"  or a realistic 50 MB document: put {large_sample}\n\n"
            f"Objects land in s3://{DEMO_BUCKET}/incoming/{DEMO_USER}/ (moto at {endpoint}).\n"
            f"Who uploaded what: sftp-gateway uploads list --config {config_path}\n"
            f"Watch uploads live: {gateway.admin.url if gateway.admin else '-'}/uploads"
            " (also /metrics, /readyz)\n"
            f"Emails are written to {data_dir / 'mail'}/. Ctrl-C stops.\n",
            err=False,
        )

    try:
        gateway.run(on_started=announce)
    finally:
        moto.stop()
