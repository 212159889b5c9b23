"""Brute-force bans shared through the catalog, against a real `serve` process.

Failed logins from 127.0.0.2 (OpenSSH sftp bound there) earn points; at the threshold
the address is refused before the key exchange while 127.0.0.1 still works; the
operator sees the ban with `bans list` and lifts it with `bans remove`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import paramiko
import pytest

from sftp_gateway.addresses import ban_key, source_of
from sftp_gateway.proxyproto import build_v2
from tests.helpers import make_user_key, wait_until
from tests.serving import ServeProcess

ATTACKER = "127.0.0.2"


def ban_config(**ban: object) -> dict[str, object]:
    return {"server": {"ban": {"threshold": 3, "window": 600, "duration": 600, **ban}}}


def failed_logins(served: ServeProcess, count: int, source: str = ATTACKER) -> None:
    """`count` OpenSSH logins with a key alice does not have (one point each)."""
    wrong = make_user_key(served.tmp / "wrongkeys")
    for _ in range(count):
        result = served.sftp("ls\n", key=wrong, source=source, timeout=30)
        assert result.returncode != 0


def banned_addresses(served: ServeProcess) -> dict[str, dict[str, object]]:
    listed = json.loads(served.cli("bans", "list", "--json").stdout)
    return {entry["address"]: entry for entry in listed}


def can_list(served: ServeProcess, source: str) -> bool:
    return served.sftp("ls\n", source=source, timeout=30).returncode == 0


def test_failed_logins_ban_the_address_until_an_operator_lifts_it(serve_factory) -> None:
    served = serve_factory(ban_config())
    assert can_list(served, ATTACKER)
    failed_logins(served, 3)
    wait_until(lambda: ATTACKER in banned_addresses(served), timeout=10)
    entry = banned_addresses(served)[ATTACKER]
    assert entry["score"] == 3 and entry["reason"] == "failed_key" and entry["until"]

    time.sleep(0.3)
    assert not can_list(served, ATTACKER), "a banned address still logged in"
    log = served.log_text()
    assert f"banned {ATTACKER} until " in log
    assert f"refused {ATTACKER}: banned until " in log
    assert served.user_can_upload()  # 127.0.0.1 is not concerned

    removed = served.cli("bans", "remove", ATTACKER)
    assert f"removed ban on {ATTACKER}" in removed.stdout
    wait_until(lambda: can_list(served, ATTACKER), timeout=15)
    assert ATTACKER not in banned_addresses(served)


def test_bans_remove_names_an_address_that_is_not_banned(serve_factory) -> None:
    served = serve_factory()
    missing = served.cli("bans", "remove", "127.0.0.9", check=False)
    assert missing.returncode == 1
    assert "127.0.0.9 is not banned" in missing.stderr
    invalid = served.cli("bans", "remove", "not-an-address", check=False)
    assert invalid.returncode == 2
    assert "'not-an-address' is not an IP address" in invalid.stderr
    assert "Traceback" not in missing.stderr + invalid.stderr


def test_allow_listed_address_is_never_banned(serve_factory) -> None:
    served = serve_factory(ban_config(allow_list=["127.0.0.0/30"]))
    failed_logins(served, 5)
    time.sleep(2.5)  # longer than the ban cache refresh
    assert banned_addresses(served) == {}
    assert can_list(served, ATTACKER)
    assert "banned" not in served.log_text()


def test_invalid_user_scores_more_than_a_failed_key(serve_factory) -> None:
    served = serve_factory(ban_config(threshold=4))
    for _ in range(2):
        result = served.sftp("ls\n", user="mallory", source=ATTACKER, timeout=30)
        assert result.returncode != 0
    wait_until(lambda: ATTACKER in banned_addresses(served), timeout=10)
    assert banned_addresses(served)[ATTACKER]["reason"] == "invalid_user"
    assert f"auth failed for mallory from {ATTACKER}: invalid user" in served.log_text()


def garbage_handshake(served: ServeProcess, source: str = ATTACKER) -> None:
    """A valid version line, then bytes that are no SSH packet (a 2 GiB length)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", served.port))
        sock.recv(256)  # the server's version line
        sock.sendall(b"SSH-2.0-fuzzer\r\n" + b"\x7f\xff\xff\xff" + b"\x00" * 60)
        with contextlib.suppress(OSError):
            while sock.recv(4096):  # until the server closes
                pass


def test_a_broken_handshake_scores_a_protocol_error(serve_factory) -> None:
    served = serve_factory(ban_config(threshold=6))
    garbage_handshake(served)
    assert ATTACKER not in banned_addresses(served)  # 3 points of 6
    garbage_handshake(served)
    wait_until(lambda: ATTACKER in banned_addresses(served), timeout=10)
    entry = banned_addresses(served)[ATTACKER]
    assert entry["score"] == 6 and entry["reason"] == "protocol_error"
    assert f"SSH handshake with {ATTACKER} failed" in served.log_text()
    assert served.user_can_upload()  # 127.0.0.1 is not concerned


def forged_signatures(served: ServeProcess, count: int, source: str = ATTACKER) -> bool:
    """Log in as alice with her public key and a signature of zeros, `count` times on
    one connection (no private key needed); True if the server closed it."""
    public = paramiko.Ed25519Key.from_private_key_file(str(served.key_path))
    sock = socket.create_connection(("127.0.0.1", served.port), source_address=(source, 0))
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=10)
        for _ in range(count):
            if not transport.is_active():
                return True
            request = paramiko.Message()
            request.add_byte(paramiko.common.cMSG_USERAUTH_REQUEST)
            for text in ("alice", "ssh-connection", "publickey"):
                request.add_string(text)
            request.add_boolean(True)
            request.add_string("ssh-ed25519")
            request.add_string(public.asbytes())
            signature = paramiko.Message()
            signature.add_string("ssh-ed25519")
            signature.add_string(bytes(64))
            request.add_string(signature.asbytes())
            with contextlib.suppress(EOFError, OSError):
                transport._send_message(request)
            time.sleep(0.05)
        return not transport.is_active()
    finally:
        transport.close()


def test_a_signature_that_does_not_verify_counts_as_a_failed_login(serve_factory) -> None:
    """paramiko refuses a bad signature itself, after the gateway accepted the key:
    those attempts were never counted, scored nor logged, so they could go on."""
    served = serve_factory(ban_config(threshold=8))
    assert forged_signatures(served, 20), "the connection outlived max_auth_tries"
    log = served.log_text()
    assert f"auth failed for alice from {ATTACKER}: failed key (invalid signature)" in log
    assert "(attempt 6 of 6)" in log
    assert f"refused {ATTACKER}: too many authentication failures (6)" in log
    forged_signatures(served, 20)
    wait_until(lambda: ATTACKER in banned_addresses(served), timeout=10)
    assert served.user_can_upload()  # 127.0.0.1 is not concerned


# -- IPv6: a source is the client's /64 ----------------------------------------------

BEHIND_BALANCER = {"proxy_protocol": "required", "proxy_trusted_networks": ["127.0.0.1/32"]}


@pytest.mark.parametrize(
    ("address", "prefix", "source"),
    [
        ("203.0.113.7", 64, "203.0.113.7"),
        ("::ffff:203.0.113.7", 64, "203.0.113.7"),
        ("2001:db8:0:7::beef", 64, "2001:db8:0:7::/64"),
        ("2001:DB8:0:7:1:2:3:4", 48, "2001:db8::/48"),
        ("2001:db8:0:7::beef", 128, "2001:db8:0:7::beef"),
        ("2001:db8:0:7::/64", 64, "2001:db8:0:7::/64"),  # a source already
    ],
)
def test_an_ipv6_client_counts_as_its_network_and_ipv4_as_itself(
    address: str, prefix: int, source: str
) -> None:
    assert source_of(address, prefix) == source


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("2001:db8:0:7::42", "2001:db8:0:7::/64"),
        ("2001:db8:0:7::/64", "2001:db8:0:7::/64"),
        ("2001:db8:0:7:ffff::/64", "2001:db8:0:7::/64"),
        ("203.0.113.7/32", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("not-an-address", None),
    ],
)
def test_an_operator_names_a_ban_by_any_address_in_it_or_by_its_network(
    text: str, key: str | None
) -> None:
    assert ban_key(text, 64) == key


def logs_in_from(served: ServeProcess, client: str, key: Path) -> bool:
    """paramiko behind a balancer whose PROXY header names `client`: logged in?"""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=20)
    sock.sendall(build_v2((client, 40000), ("2001:db8::1", 22)))
    transport = paramiko.Transport(sock)
    try:
        pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
        transport.connect(username=served.user, pkey=pkey)
        return transport.is_authenticated()
    except (paramiko.SSHException, OSError, EOFError):
        return False
    finally:
        transport.close()


def test_an_ipv6_client_rotating_addresses_within_its_64_is_banned_as_the_64(
    serve_factory,
) -> None:
    served = serve_factory({"server": {**BEHIND_BALANCER, **ban_config()["server"]}})
    wrong = make_user_key(served.tmp / "wrongkeys")
    for host in (1, 2, 3):  # a fresh address for each try, one failed key each
        assert not logs_in_from(served, f"2001:db8:0:7::{host}", wrong)
    wait_until(lambda: "2001:db8:0:7::/64" in banned_addresses(served), timeout=10)
    assert banned_addresses(served)["2001:db8:0:7::/64"]["score"] == 3

    assert not logs_in_from(served, "2001:db8:0:7::beef", served.key_path), "rotated past the ban"
    assert "refused 2001:db8:0:7::beef: banned until " in served.log_text()
    assert logs_in_from(served, "2001:db8:0:8::1", served.key_path)  # the next /64 is not
    removed = served.cli("bans", "remove", "2001:db8:0:7::42")
    assert "removed ban on 2001:db8:0:7::/64" in removed.stdout
    wait_until(lambda: logs_in_from(served, "2001:db8:0:7::beef", served.key_path), timeout=15)


def test_per_source_max_startups_counts_an_ipv6_64_as_one_source(serve_factory) -> None:
    limits = {"per_source_max_startups": 2, "ban": {"enabled": False}}
    served = serve_factory({"server": {**BEHIND_BALANCER, **limits}})
    held = []
    try:
        for host in (1, 2):  # two unauthenticated connections, each from its own address
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            sock.sendall(build_v2((f"2001:db8:0:7::{host}", 40000)))
            assert sock.recv(64).startswith(b"SSH-2.0-")
            held.append(sock)
        assert not logs_in_from(served, "2001:db8:0:7::3", served.key_path)
        assert "refused 2001:db8:0:7::3: per_source_max_startups (2) reached" in served.log_text()
        assert logs_in_from(served, "2001:db8:0:8::3", served.key_path)
    finally:
        for sock in held:
            sock.close()
