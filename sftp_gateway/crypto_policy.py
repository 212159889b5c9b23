"""Which SSH algorithms the gateway offers: one named policy (`server.crypto_policy`).

- `modern` (default): what ssh-audit passes, except two accepted warnings (see
  tests/test_crypto_policy.py): post-quantum ML-KEM hybrid first, then curve25519 and
  DH group 16 for clients without it; AES-GCM/CTR; SHA-2 MACs (the encrypt-and-MAC
  ones are kept for libssh2 < 1.11, i.e. curl); ed25519 and RSA-SHA2 host keys. The
  NIST curves (ecdh-sha2-nistp*, ecdsa host keys) are left out, as ssh-audit fails them.
- `fips`: FIPS 140-3 approved only: NIST-curve ECDH and DH group 16/18, AES-GCM/CTR,
  HMAC-SHA2, ECDSA and RSA-SHA2 keys (host keys and user keys); no curve25519/ed25519.
  The generated RSA 3072 host key serves it.
- `compat`: paramiko's defaults minus the broken ones (3DES, MD5 MACs, SHA-1
  signatures, 1024-bit DH): the only way to let older clients in (AES-CBC, HMAC-SHA1).

Policies are allow-lists applied as paramiko's public `disabled_algorithms`, so an
algorithm a future paramiko adds is never offered unless a policy names it. Strict KEX
(the Terrapin countermeasure) is on under every policy (see sshcompat.server_transport).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import paramiko

from sftp_gateway.sshcompat import ALGORITHM_CATEGORIES, paramiko_algorithms

PolicyName = Literal["modern", "fips", "compat"]
Algorithms = dict[str, tuple[str, ...]]

AES = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
SHA2_MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
ECDSA = ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
RSA_SHA2 = ("rsa-sha2-512", "rsa-sha2-256")

ALLOWED: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "modern": {
        "kex": (
            "mlkem768x25519-sha256",
            "sntrup761x25519-sha512",
            "sntrup761x25519-sha512@openssh.com",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "diffie-hellman-group16-sha512",
            "diffie-hellman-group18-sha512",
        ),
        "ciphers": AES,
        "macs": SHA2_MACS,
        "keys": ("ssh-ed25519", *RSA_SHA2),
        "pubkeys": ("ssh-ed25519", *ECDSA, *RSA_SHA2),
    },
    "fips": {
        "kex": (
            "ecdh-sha2-nistp256",
            "ecdh-sha2-nistp384",
            "ecdh-sha2-nistp521",
            "diffie-hellman-group16-sha512",
            "diffie-hellman-group18-sha512",
        ),
        "ciphers": AES,
        "macs": SHA2_MACS,
        "keys": (*ECDSA, *RSA_SHA2),
        "pubkeys": (*ECDSA, *RSA_SHA2),
    },
}

# Never offered, whatever paramiko's defaults become: 64-bit blocks (Sweet32), MD5,
# SHA-1 signatures (chosen-prefix collisions), 1024-bit DSA/DH, SHA-1 key exchange.
BROKEN = frozenset(
    {
        "3des-cbc",
        "blowfish-cbc",
        "cast128-cbc",
        "arcfour",
        "arcfour128",
        "arcfour256",
        "none",
        "hmac-md5",
        "hmac-md5-96",
        "ssh-rsa",
        "ssh-dss",
        "diffie-hellman-group1-sha1",
        "diffie-hellman-group14-sha1",
        "diffie-hellman-group-exchange-sha1",
    }
)


def _allows(policy: PolicyName, category: str, algorithm: str) -> bool:
    if algorithm in BROKEN:
        return False
    allowed = ALLOWED.get(policy)
    return allowed is None or algorithm in allowed[category]


def offered(policy: PolicyName) -> Algorithms:
    """What the server offers under the policy, in paramiko's preference order."""
    return {
        category: tuple(a for a in defaults if _allows(policy, category, a))
        for category, defaults in paramiko_algorithms().items()
    }


def disabled_algorithms(policy: PolicyName) -> dict[str, list[str]]:
    """The policy as paramiko's `Transport(disabled_algorithms=...)` argument."""
    return {
        category: [a for a in defaults if not _allows(policy, category, a)]
        for category, defaults in paramiko_algorithms().items()
    }


def _host_key_algorithms(key: paramiko.PKey) -> tuple[str, ...]:
    # An RSA key signs as rsa-sha2-512/256 (its name, ssh-rsa, is the SHA-1 one).
    return RSA_SHA2 if isinstance(key, paramiko.RSAKey) else (key.get_name(),)


def usable_host_keys(policy: PolicyName, keys: Iterable[paramiko.PKey]) -> list[paramiko.PKey]:
    """The host keys the policy lets the server sign with; the others are never loaded
    into a Transport, so never offered."""
    allowed = set(offered(policy)["keys"])
    return [key for key in keys if allowed.intersection(_host_key_algorithms(key))]


def describe(policy: PolicyName) -> list[str]:
    """One line per category, as `check-config` prints them."""
    algorithms = offered(policy)
    lines = [f"crypto policy: {policy}"]
    lines += [
        f"  {category}: {', '.join(algorithms[category]) or '(none)'}"
        for category in ALGORITHM_CATEGORIES
    ]
    lines.append("  strict kex (Terrapin countermeasure): on")
    return lines
