"""The server offers exactly its crypto policy's algorithms.

ssh-audit (3.x) passes the default `modern` policy but for two warnings we accept on
purpose (ACCEPTED_WARNINGS); `fips` offers no curve25519/ed25519/chacha and real
OpenSSH and paramiko clients still log in under it with an ECDSA key.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sftp_gateway import crypto_policy
from sftp_gateway.cli import main
from sftp_gateway.hostkeys import generate_private_key, public_line, write_private_key
from sftp_gateway.sshcompat import ALGORITHM_CATEGORIES, paramiko_algorithms
from tests.helpers import make_pdf, sha256_file
from tests.serving import ServeProcess

ACCEPTED_WARNINGS = {
    # mlkem768x25519-sha256 is offered first; clients without it (OpenSSH < 9.9, PuTTY,
    # libssh2, Go) need a classical key exchange: curve25519, DH group 16.
    "does not provide protection against post-quantum attacks",
    # hmac-sha2-256/512 beside their -etm twins: libssh2 < 1.11 (curl 7.88 in the client
    # matrix) has no ETM MAC. Encrypt-and-MAC with AES-CTR is not a known break.
    "using encrypt-and-MAC mode",
}
FIPS_FORBIDDEN = ("25519", "chacha", "mlkem", "sntrup", "cbc", "sha1", "md5")


def ssh_audit(port: int) -> dict:  # type: ignore[type-arg]
    """ssh-audit's JSON report (the connection-rate test is skipped: not about crypto)."""
    result = subprocess.run(
        [sys.executable, "-m", "ssh_audit", "-j", "--skip-rate-test", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.startswith("{"), result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def server_kexinit(port: int) -> dict[str, list[str]]:
    """The name-lists of the server's (cleartext) KEXINIT, read over a raw socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-kexinit-reader\r\n")
        stream = sock.makefile("rb")
        while not stream.readline().startswith(b"SSH-"):
            pass
        length = int.from_bytes(stream.read(4), "big")
        packet = stream.read(length)
    payload = packet[1 : length - packet[0]]
    assert payload[0] == 20, "expected SSH_MSG_KEXINIT"
    message = paramiko.Message(payload[17:])  # after the type byte and the cookie
    names = ("kex", "keys", "ciphers", "ciphers_s2c", "macs", "macs_s2c", "compression")
    return {name: message.get_list() for name in names}


def make_ecdsa_key(directory: Path) -> Path:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path = directory / "id_ecdsa"
    write_private_key(path, pem)
    path.with_suffix(".pub").write_text(public_line(pem, "fips") + "\n")
    return path


# -- against a real serve process ------------------------------------------------------


def test_ssh_audit_passes_the_modern_policy_but_for_two_accepted_warnings(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory()
    report = ssh_audit(served.port)
    flagged = [
        (section, entry["algorithm"], level, note)
        for section in ("kex", "key", "enc", "mac")
        for entry in report[section]
        for level in ("fail", "warn")
        for note in entry.get("notes", {}).get(level, [])
    ]
    assert [f for f in flagged if f[2] == "fail"] == []
    assert [f for f in flagged if f[3] not in ACCEPTED_WARNINGS] == []
    assert report["cves"] == []
    kex = [entry["algorithm"] for entry in report["kex"]]
    assert kex[0] == "mlkem768x25519-sha256"
    assert "kex-strict-s-v00@openssh.com" in kex  # Terrapin countermeasure
    assert {entry["algorithm"] for entry in report["key"]} == {
        "ssh-ed25519",
        "rsa-sha2-512",
        "rsa-sha2-256",
    }
    assert served.user_can_upload()


def test_fips_policy_offers_no_curve25519_ed25519_or_chacha(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory({"server": {"crypto_policy": "fips"}})
    kexinit = server_kexinit(served.port)
    offered = [name for names in kexinit.values() for name in names]
    assert [n for n in offered if any(bad in n for bad in FIPS_FORBIDDEN)] == []
    assert kexinit["kex"] == [
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp521",
        "diffie-hellman-group16-sha512",
        "kex-strict-s-v00@openssh.com",
    ]
    assert kexinit["keys"] == ["rsa-sha2-512", "rsa-sha2-256"]  # the ed25519 key is hidden
    assert set(kexinit["ciphers"]) == set(crypto_policy.AES)
    assert set(kexinit["macs"]) == set(crypto_policy.SHA2_MACS)


def test_openssh_and_paramiko_log_in_under_fips_with_an_ecdsa_key_not_ed25519(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    served = serve_factory({"server": {"crypto_policy": "fips"}})
    ecdsa = make_ecdsa_key(served.tmp / "userkeys")
    served.cli("users", "add-key", "alice", "--key", str(ecdsa.with_suffix(".pub")))
    local = make_pdf(served.tmp / "fips.pdf", 200_000)

    uploaded = served.sftp(f"put {local} /fips.pdf\n", key=ecdsa)
    assert uploaded.returncode == 0, uploaded.stderr
    assert served.object_sha256("incoming/alice/fips.pdf") == sha256_file(local)

    refused = served.sftp("ls /\n")  # alice's ed25519 key: not a FIPS algorithm
    assert refused.returncode != 0

    with served.ssh_client(ecdsa) as client:
        transport = client.get_transport()
        assert transport is not None
        assert transport.get_remote_server_key().get_name() == "ssh-rsa"  # rsa-sha2 signed
        assert transport.host_key_type in ("rsa-sha2-512", "rsa-sha2-256")
        assert "fips.pdf" in client.open_sftp().listdir("/")


# -- the policies themselves -----------------------------------------------------------


@pytest.mark.parametrize("policy", ["modern", "fips", "compat"])
def test_every_policy_offers_each_category_and_nothing_broken(policy: str) -> None:
    offered = crypto_policy.offered(policy)  # type: ignore[arg-type]
    for category in ALGORITHM_CATEGORIES:
        assert offered[category], f"{policy} offers no {category}"
        assert not set(offered[category]) & crypto_policy.BROKEN
    disabled = crypto_policy.disabled_algorithms(policy)  # type: ignore[arg-type]
    for category, defaults in paramiko_algorithms().items():
        assert set(offered[category]) | set(disabled[category]) == set(defaults)
        assert not set(offered[category]) & set(disabled[category])


def test_compat_keeps_cbc_and_hmac_sha1_for_old_clients_but_not_3des_or_md5() -> None:
    offered = crypto_policy.offered("compat")
    assert "aes256-cbc" in offered["ciphers"] and "hmac-sha1" in offered["macs"]
    assert "3des-cbc" not in offered["ciphers"]
    assert not {"hmac-md5", "hmac-md5-96"} & set(offered["macs"])


def test_fips_drops_the_ed25519_host_key_and_keeps_rsa(tmp_path: Path) -> None:
    keys = []
    for kind, key_class in (("ed25519", paramiko.Ed25519Key), ("rsa", paramiko.RSAKey)):
        path = tmp_path / kind
        write_private_key(path, generate_private_key(kind))
        keys.append(key_class.from_private_key_file(str(path)))
    assert [k.get_name() for k in crypto_policy.usable_host_keys("fips", keys)] == ["ssh-rsa"]
    assert len(crypto_policy.usable_host_keys("modern", keys)) == 2


def test_check_config_prints_the_policy_and_its_algorithms(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("storage: {bucket: abc}\nserver: {crypto_policy: fips}\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "crypto policy: fips" in result.output
    keys_line = next(line for line in result.output.splitlines() if "  keys:" in line)
    assert "ecdsa-sha2-nistp256" in keys_line and "ed25519" not in keys_line
    assert "kex: ecdh-sha2-nistp256" in result.output


def test_an_unknown_policy_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("storage: {bucket: abc}\nserver: {crypto_policy: weak}\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 2
    assert "server.crypto_policy" in result.output
