"""Config is validated at start: each mistake is one line naming the field, exit 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from sftp_gateway.cli import main
from sftp_gateway.config import ConfigError, load_settings, parse_size, settings_from_dict


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("storage: {bucket: abc, colour: blue}", "storage.colour: unknown key"),
        ("storage: {bucket: abc, part_size: 8 potatoes}", "storage.part_size"),
        ("storage: {bucket: abc, part_size: 1MiB}", "storage.part_size: must be between 5MiB"),
        ("server: {listen: nowhere}", "storage: required but missing"),
        ("storage: {bucket: abc}\nserver: {listen: nowhere}", "server.listen"),
        ("storage: [unclosed", "not valid YAML"),
        ("- a\n- list", "top level must be a mapping"),
    ],
)
def test_check_config_names_the_bad_field_and_exits_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    result = CliRunner().invoke(main, ["check-config", "--config", str(write(tmp_path, text))])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["check-config", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "not found" in result.output


def test_valid_config_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "storage: {bucket: acme-inbound, part_size: 8MiB}\n")
    monkeypatch.setenv("SFTP_GATEWAY__STORAGE__PART_SIZE", "16MiB")
    monkeypatch.setenv("SFTP_GATEWAY__UPLOADS__ALLOWED_EXTENSIONS", "[pdf, .TIFF]")
    settings = load_settings(path)
    assert settings.storage.part_size == 16 * 1024 * 1024
    assert settings.uploads.allowed_extensions == [".pdf", ".tiff"]


def test_env_var_for_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"storage\.bukket: unknown key"):
        settings_from_dict({"storage": {"bucket": "abc"}}, {"SFTP_GATEWAY__STORAGE__BUKKET": "x"})


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "storage: {bucket: from-env}\n")
    monkeypatch.setenv("SFTP_GATEWAY_CONFIG", str(path))
    assert load_settings(None).storage.bucket == "from-env"


@pytest.mark.parametrize(
    ("text", "size"),
    [("8MiB", 8 * 1024**2), ("1GiB", 1024**3), ("500 KB", 500_000), (1234, 1234)],
)
def test_sizes_accept_units(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config" / "gateway.example.yaml"
    if not example.exists():
        pytest.skip("example config not written yet")
    settings = load_settings(example)
    assert settings.storage.bucket


# -- values that used to pass the check and fail later (or never) -------------------------

HUGE_SIZE = "1" + "0" * 400 + "KiB"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # SSH sends the window as a uint32: 8GiB killed every connection at open
        (
            "storage: {bucket: abc}\nserver: {window_size: 8GiB}",
            "server.window_size: at most 4GiB minus one byte",
        ),
        (
            "storage: {bucket: abc, copy_part_size: 1MiB}",
            "storage.copy_part_size: must be between 5MiB and 5GiB",
        ),
        # durations: finite and at most ten years (threads sleep on them, dates add them)
        (
            "storage: {bucket: abc}\nuploads: {gc_interval: .inf}",
            "uploads.gc_interval: must be a finite number (not .inf or .nan)",
        ),
        (
            "storage: {bucket: abc}\nevents: {dispatch_interval: .inf}",
            "events.dispatch_interval: must be a finite number",
        ),
        (
            "storage: {bucket: abc}\nuploads: {resume_lease: .nan}",
            "uploads.resume_lease: must be a finite number",
        ),
        (
            "storage: {bucket: abc}\nserver: {idle_timeout: .inf}",
            "server.idle_timeout: must be a finite number",
        ),
        (
            "storage: {bucket: abc}\nuploads: {resume_ttl: 100000000000000.0}",
            "uploads.resume_ttl: at most 315360000 seconds (10 years)",
        ),
        (
            "storage: {bucket: abc}\nserver: {ban: {window: 100000000000000.0}}",
            "server.ban.window: at most 315360000 seconds (10 years)",
        ),
        (
            "storage: {bucket: abc}\nnotifier: {visibility_timeout: 50000}",
            "notifier.visibility_timeout: Input should be less than or equal to 43200",
        ),
        # sizes: exact whole bytes, within reason
        (
            "storage: {bucket: abc}\nuploads: {max_file_size: 1.5}",
            "uploads.max_file_size: 1.5 is not a whole number of bytes",
        ),
        (
            "storage: {bucket: abc}\nuploads: {max_file_size: 0.4}",
            "uploads.max_file_size: 0.4 is not a whole number of bytes",
        ),
        (
            "storage: {bucket: abc}\nuploads: {max_file_size: 1.1KiB}",
            "uploads.max_file_size: '1.1KiB' is not a whole number of bytes",
        ),
        (
            f"storage: {{bucket: abc}}\nuploads: {{max_file_size: {HUGE_SIZE}}}",
            "uploads.max_file_size: '10000000000000000000000...0000KiB' is too large",
        ),
        # an extension is an ending, not a pattern ("*.pdf" became ".*.pdf": nothing matched)
        (
            "storage: {bucket: abc}\nuploads: {allowed_extensions: ['*.pdf']}",
            "uploads.allowed_extensions: '*.pdf' is not an extension: list the ending itself",
        ),
        (
            "storage: {bucket: abc}\nuploads: {allowed_extensions: [pdf/x]}",
            "uploads.allowed_extensions: 'pdf/x' is not an extension",
        ),
        # the catalog, S3 and SQS: what serve would only find out later
        (
            "storage: {bucket: abc}\ncatalog: {url: notaurl}",
            "catalog.url: not a database URL such as sqlite:////var/lib/sftp-gateway/catalog.db",
        ),
        (
            "storage: {bucket: abc}\ncatalog: {url: 'mysql://u@127.0.0.1/x'}",
            "catalog.url: mysql:// is not supported: use sqlite:////",
        ),
        (
            "storage: {bucket: abc}\ncatalog: {url: 'sqlite://somehost/catalog.db'}",
            "catalog.url: a SQLite URL names no host",
        ),
        (
            "storage: {bucket: abc, endpoint_url: 'localhost:9000'}",
            "storage.endpoint_url: 'localhost:9000' is not an http:// or https:// URL",
        ),
        (
            "storage: {bucket: abc}\nevents: {endpoint_url: 'sqs.local'}",
            "events.endpoint_url: 'sqs.local' is not an http:// or https:// URL",
        ),
        (
            "storage: {bucket: Bad_Bucket}",
            "storage.bucket: 'Bad_Bucket' is not an S3 bucket name: lowercase letters",
        ),
        ("storage: {bucket: 192.168.0.1}", "storage.bucket: '192.168.0.1' is not an S3 bucket"),
        ("storage: {bucket: acme..inbound}", "storage.bucket: 'acme..inbound' is not an S3"),
        # YAML would silently keep the last of two
        (
            "storage: {bucket: abc}\nstorage: {bucket: zzz-other}",
            "storage is given twice (lines 1 and 2): remove one",
        ),
        (
            "storage:\n  bucket: abc\n  part_size: 8MiB\n  part_size: 5GiB\n",
            "storage.part_size is given twice (lines 3 and 4): remove one",
        ),
        # a YAML boolean where text is expected: quote it (False is no region)
        (
            "storage: {bucket: abc, region: no}",
            "storage.region: YAML reads an unquoted yes/no/on/off/true/false as a boolean"
            ' (here false): put the value in quotes, e.g. region: "no"',
        ),
        ("server:\nstorage: {bucket: abc}", "server: the section is empty"),
        # the notifier would skip it at every email: nobody would ever get one
        (
            "storage: {bucket: abc}\nnotifier: {recipients: ['Ops <ops@example.com>']}",
            "notifier.recipients: 'Ops <ops@example.com>' is not one plain email address",
        ),
        (
            "storage: {bucket: abc}\nnotifier: {user_recipients: {alice: ['a@x.com, b@x.com']}}",
            "notifier.user_recipients: 'a@x.com, b@x.com' is not one plain email address",
        ),
    ],
)
def test_values_that_would_fail_later_are_refused_naming_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    result = CliRunner().invoke(main, ["check-config", "--config", str(write(tmp_path, text))])
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unquoted_max_startups_is_start_rate_full_not_a_base_60_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "storage: {bucket: abc}\nserver: {max_startups: 10:30:50}\n")
    assert load_settings(path).server.startups == (10, 30, 50)
    monkeypatch.setenv("SFTP_GATEWAY__SERVER__MAX_STARTUPS", "5:20:40")
    assert load_settings(path).server.startups == (5, 20, 40)


def test_sizes_are_exact_whole_bytes() -> None:
    assert parse_size("9007199254740993") == 9007199254740993
    assert parse_size("1.5KiB") == 1536
    assert parse_size(1.0) == 1
    for bad in (1.5, 0.4, "0.5", "1.1KiB", HUGE_SIZE, 10**400, float("inf")):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_text_fields_keep_unquoted_numbers_and_dates_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "storage: {bucket: abc, prefix: 2024_01}\n"
        "server: {instance_id: 007}\n"
        "notifier: {username: 1.10, user_recipients: {007: [a@b.c]}}\n",
    )
    settings = load_settings(path)
    assert settings.storage.prefix == "2024_01"  # not YAML 1.1's 202401
    assert settings.server.instance_id == "007"  # not 7
    assert settings.notifier.username == "1.10"
    assert settings.notifier.user_recipients == {"007": ["a@b.c"]}
    monkeypatch.setenv("SFTP_GATEWAY__STORAGE__PREFIX", "2024-01-01")
    assert load_settings(path).storage.prefix == "2024-01-01"


def test_a_boolean_from_an_env_override_for_a_text_field_says_to_quote_it() -> None:
    with pytest.raises(ConfigError, match=r'^storage\.region: .* e\.g\. region: "no"$'):
        settings_from_dict({"storage": {"bucket": "abc"}}, {"SFTP_GATEWAY__STORAGE__REGION": "no"})


def test_a_config_file_that_is_not_utf8_is_a_config_error_naming_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"storage:\n  bucket: abc\n  prefix: caf\xe9\n")  # Latin-1
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert f"config error: config file {path} line 3: not UTF-8 text" in result.output
    assert "UnicodeDecodeError" not in result.output


def test_a_queue_url_that_names_no_region_needs_events_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    custom = {"storage": {"bucket": "abc"}, "events": {"queue_url": "http://127.0.0.1:9/1/q"}}
    with pytest.raises(ConfigError, match=r"^events\.region: required: events\.queue_url"):
        settings_from_dict(custom, {})
    custom["events"]["region"] = "eu-west-1"
    assert settings_from_dict(custom, {}).events.region == "eu-west-1"
    aws = {
        "storage": {"bucket": "abc"},
        "events": {"queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q"},
    }
    assert settings_from_dict(aws, {}).events.region is None  # the URL names it
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-2")
    del custom["events"]["region"]
    assert settings_from_dict(custom, {}).events.region is None  # boto3's default


def test_postgresql_url_without_an_installed_driver_is_refused_without_the_password(
    tmp_path: Path,
) -> None:
    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed: postgresql:// works")
    text = "storage: {bucket: abc}\ncatalog: {url: 'postgresql://gw:s3cret@db/sftp'}"
    result = CliRunner().invoke(main, ["check-config", "--config", str(write(tmp_path, text))])
    assert result.exit_code == 2
    assert "catalog.url: postgresql:// needs the psycopg2 driver" in result.output
    assert "postgresql+psycopg://" in result.output
    assert "s3cret" not in result.output


def test_example_config_keeps_the_catalog_at_an_absolute_path() -> None:
    example = Path(__file__).parent.parent / "config" / "gateway.example.yaml"
    url = load_settings(example).catalog.url
    assert url == "sqlite:////var/lib/sftp-gateway/catalog.db"
    assert make_url(url).database == "/var/lib/sftp-gateway/catalog.db"
