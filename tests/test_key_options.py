"""authorized_keys options against a real `serve` process and the real OpenSSH client."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sftp_gateway.addresses import canonical_ip
from sftp_gateway.auth import parse_public_key
from sftp_gateway.keyoptions import KeyOptionError, parse_options
from tests.helpers import make_user_key
from tests.serving import ServeProcess


def add_key_with_options(served: ServeProcess, name: str, options: str) -> tuple[Path, str]:
    """A new key for alice, added with `users add-key` from an options-prefixed line."""
    key = make_user_key(served.tmp / "optkeys", name)
    line = f"{options} {key.with_suffix('.pub').read_text().strip()}\n"
    line_file = served.tmp / f"{name}.authorized_keys"
    line_file.write_text(line)
    served.cli("users", "add-key", "alice", "--key", str(line_file))
    return key, parse_public_key(line).fingerprint


def logs_in(served: ServeProcess, key: Path, source: str | None = None) -> bool:
    """OpenSSH sftp logs in with this key and lists the home."""
    result = served.sftp("ls -la /\n", key=key, source=source)
    return result.returncode == 0


def test_from_option_allows_only_matching_addresses_and_logs_refusals(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    far, far_fp = add_key_with_options(served, "far", 'from="10.9.9.9"')
    near, _ = add_key_with_options(served, "near", 'from="127.0.0.1"')
    not_two, not_two_fp = add_key_with_options(
        served, "not_two", 'from="127.0.0.0/8,!127.0.0.2",no-pty,restrict'
    )

    assert not logs_in(served, far)
    assert logs_in(served, near)
    assert logs_in(served, not_two)  # from 127.0.0.1
    assert not logs_in(served, not_two, source="127.0.0.2")
    assert logs_in(served, served.key_path, source="127.0.0.2")  # alice's plain key

    log = served.log_text()
    assert (
        f"auth failed for alice from 127.0.0.1: key {far_fp} not allowed from this address" in log
    )
    assert f"auth failed for alice from 127.0.0.2: key {not_two_fp} not allowed from this" in log
    keys = {
        k["fingerprint"]: k
        for k in json.loads(served.cli("users", "list", "--json").stdout)[0]["keys"]
    }
    assert keys[not_two_fp]["options"] == 'from="127.0.0.0/8,!127.0.0.2",no-pty,restrict'
    assert 'from="10.9.9.9"' in served.cli("users", "list").stdout


def test_from_option_sees_ipv4_clients_of_a_dual_stack_listener_as_ipv4(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    """On `[::]` the socket names an IPv4 client `::ffff:127.0.0.1`; sshd matches it as
    127.0.0.1, and so must the gateway, or `!127.0.0.1` would not keep it out."""
    served = serve_factory(listen_host="[::]")
    not_local, not_local_fp = add_key_with_options(served, "notlocal", 'from="!127.0.0.1,*"')
    only_local, _ = add_key_with_options(served, "onlylocal", 'from="127.0.0.0/8"')

    assert not logs_in(served, not_local)
    assert logs_in(served, only_local)
    log = served.log_text()
    assert f"auth failed for alice from 127.0.0.1: key {not_local_fp} not allowed" in log
    assert "::ffff:" not in log


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::FFFF:c000:0207", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:DB8::0001", "2001:db8::1"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_client_addresses_take_one_spelling(raw: str, canonical: str) -> None:
    assert canonical_ip(raw) == canonical


def test_expired_key_is_refused_and_unsupported_options_are_refused_at_add_key(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    old, old_fp = add_key_with_options(served, "old", 'expiry-time="20200101"')
    fresh, _ = add_key_with_options(served, "fresh", 'expiry-time="29991231235959Z"')
    assert not logs_in(served, old)
    assert logs_in(served, fresh)
    assert f"auth failed for alice from 127.0.0.1: key {old_fp} expired" in served.log_text()

    key = make_user_key(served.tmp / "optkeys", "cmd")
    line_file = served.tmp / "cmd.authorized_keys"
    pub = key.with_suffix(".pub").read_text().strip()
    line_file.write_text(f'command="/bin/sh -c \\"rm, -rf\\"",no-pty {pub}\n')
    result = served.cli("users", "add-key", "alice", "--key", str(line_file), check=False)
    assert result.returncode == 2
    assert "option command is not supported" in result.stderr
    assert "Traceback" not in result.stderr
    line_file.write_text(f'from="gw.example.com" {pub}\n')
    result = served.cli("users", "add-key", "alice", "--key", str(line_file), check=False)
    assert result.returncode == 2 and "no DNS" in result.stderr
    assert not logs_in(served, key)  # neither attempt added the key


@pytest.mark.parametrize(
    "text",
    [
        'command="ls"',
        'permitopen="127.0.0.1:22"',
        'environment="A=b"',
        "cert-authority",
        'principals="x"',
        'tunnel="0"',
        'permitlisten="8080"',
        "from=127.0.0.1",  # unquoted value
        'from="127.0.0.1',  # no closing quote
        'expiry-time="2026"',
    ],
)
def test_option_the_gateway_cannot_honour_is_refused_naming_it(text: str) -> None:
    with pytest.raises(KeyOptionError) as raised:
        parse_options(text)
    assert text.split("=")[0].split('"')[0] in str(raised.value)


def test_quoted_commas_stay_inside_one_option() -> None:
    options = parse_options('from="10.0.0.0/8,192.168.*,!10.9.9.9",no-agent-forwarding')
    assert options.from_patterns == ("10.0.0.0/8", "192.168.*", "!10.9.9.9")
    assert options.refusal("192.168.4.5") is None
    assert options.refusal("10.9.9.9") == "not allowed from this address"
    assert options.refusal("172.16.0.1") == "not allowed from this address"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'from="10.9.9.9",from="*"',
            'option from is given twice: give it once (list every pattern in one from="...")',
        ),
        ('from="10.0.0.0/8",no-pty,from="10.9.9.9"', "option from is given twice"),
        ('expiry-time="20200101",expiry-time="20991231"', "option expiry-time is given twice"),
    ],
)
def test_a_repeated_from_or_expiry_time_is_refused_rather_than_the_last_one_winning(
    text: str, message: str
) -> None:
    """sshd refuses a key with two from= options; taking the last would let
    `from="10.9.9.9",from="*"` in from anywhere. A stored key so written is refused at
    login too (its options no longer parse)."""
    with pytest.raises(KeyOptionError) as raised:
        parse_options(text)
    assert str(raised.value).startswith(message)
    assert parse_options("no-pty,restrict,no-pty").text  # a repeated flag stays harmless


@pytest.fixture
def local_zone(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Callable[[str], None]:
    """Set the server's local time zone (TZ) for the test; the old one comes back after."""
    import time

    def use(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    def restore() -> None:
        monkeypatch.undo()
        time.tzset()

    request.addfinalizer(restore)
    return use


@pytest.mark.parametrize(
    ("zone", "stamp"),
    [
        ("America/New_York", "99991231235959"),  # 10000-01-01T04:59:59Z
        ("America/New_York", "99991231200000"),  # 10000-01-01T01:00:00Z
        ("Asia/Tokyo", "00010101"),  # 0000-12-31T15:00:00Z
    ],
)
def test_an_expiry_time_that_utc_cannot_hold_is_an_option_error_not_an_overflow(
    local_zone: Callable[[str], None], zone: str, stamp: str
) -> None:
    """expiry-time without Z is the server's local time (as sshd reads it): at the end of
    9999 west of UTC, or the start of year 1 east of it, it is outside datetime's range."""
    local_zone(zone)
    with pytest.raises(KeyOptionError) as raised:
        parse_options(f'expiry-time="{stamp}"')
    assert str(raised.value) == (
        f"option expiry-time: {stamp!r} is out of range in UTC (years 1 to 9999)"
    )
