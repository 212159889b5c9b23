"""authorized_keys options (`man authorized_keys`): parsed once at `users add`, checked
at every login and again by the revocation watcher.

Only what a file gateway can honour is accepted: `from=` (matched against the client's
address: no DNS, so host names are refused), `expiry-time=`, and the restrictions the
gateway always applies anyway (`restrict`, `no-pty`, `no-*-forwarding`, `no-user-rc`).
Anything else (`command=`, `permitopen=`, `environment=`, `cert-authority`, ...) would
silently mean something other than what the operator wrote, so it is refused.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase

NO_OP_FLAGS = (
    "restrict",
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-pty",
    "no-user-rc",
)
VALUED = ("from", "expiry-time")
_NAME = re.compile(r"[A-Za-z0-9-]+")
_IPV4_WILDCARD = re.compile(r"^[0-9.*?]+$")
_IPV6_WILDCARD = re.compile(r"^[0-9a-fA-F:.*?]+$")
_EXPIRY = re.compile(r"^(\d{8})(\d{4})?(\d{2})?(Z)?$", re.IGNORECASE)


class KeyOptionError(ValueError):
    """An option the gateway cannot honour, or one written wrongly (names the option)."""


@dataclass(frozen=True)
class KeyOptions:
    """The options of one key; `text` is what is stored and shown."""

    text: str
    from_patterns: tuple[str, ...] = ()
    expires_at: datetime | None = None

    def refusal(self, client_ip: str | None, now: datetime | None = None) -> str | None:
        """Why this key may not log in now from client_ip, or None if it may."""
        if self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at:
            return "expired"
        if self.from_patterns and not address_matches(client_ip, self.from_patterns):
            return "not allowed from this address"
        return None


NO_OPTIONS = KeyOptions(text="")


def split_options(line: str) -> tuple[str, str]:
    """(options text, rest of the line): options run up to the first unquoted blank."""
    in_quotes = False
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\" and in_quotes and index + 1 < len(line):
            index += 2
            continue
        if char == '"':
            in_quotes = not in_quotes
        elif char in " \t" and not in_quotes:
            return line[:index], line[index:].strip()
        index += 1
    if in_quotes:
        raise KeyOptionError("an option value has no closing quote")
    return line, ""


def tokenize(text: str) -> list[tuple[str, str | None]]:
    """`a,b="x,y"` -> [("a", None), ("b", "x,y")]; values must be double-quoted."""
    tokens: list[tuple[str, str | None]] = []
    index = 0
    while index < len(text):
        match = _NAME.match(text, index)
        if match is None:
            raise KeyOptionError(f"cannot read the options at {text[index : index + 20]!r}")
        name, index = match.group().lower(), match.end()
        value: str | None = None
        if index < len(text) and text[index] == "=":
            value, index = _quoted(text, index + 1, name)
        tokens.append((name, value))
        if index < len(text):
            if text[index] != ",":
                raise KeyOptionError(f"option {name}: expected ',' after it")
            index += 1
    return tokens


def _quoted(text: str, index: int, name: str) -> tuple[str, int]:
    if index >= len(text) or text[index] != '"':
        raise KeyOptionError(f'option {name}: the value must be in double quotes ({name}="...")')
    out: list[str] = []
    index += 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] == '"':
            out.append('"')
            index += 2
            continue
        if char == '"':
            return "".join(out), index + 1
        out.append(char)
        index += 1
    raise KeyOptionError(f"option {name}: the value has no closing quote")


def parse_options(text: str | None) -> KeyOptions:
    """Validate an options text; KeyOptionError names the first option refused."""
    if not text:
        return NO_OPTIONS
    patterns: tuple[str, ...] = ()
    expires_at: datetime | None = None
    seen: set[str] = set()
    for name, value in tokenize(text):
        if name in NO_OP_FLAGS and value is None:
            continue
        if name not in VALUED or value is None:
            raise KeyOptionError(
                f"option {name} is not supported by the gateway"
                f" (accepted: from=, expiry-time=, {', '.join(NO_OP_FLAGS)})"
            )
        if name in seen:  # which one would hold? sshd itself refuses two from= options
            raise KeyOptionError(
                f"option {name} is given twice: give it once"
                + (' (list every pattern in one from="...")' if name == "from" else "")
            )
        seen.add(name)
        if name == "from":
            patterns = parse_from(value)
        else:
            expires_at = parse_expiry(value)
    return KeyOptions(text=text, from_patterns=patterns, expires_at=expires_at)


def parse_from(value: str) -> tuple[str, ...]:
    """Address patterns: `1.2.3.4`, `10.0.0.0/8`, `192.168.*`, `!10.9.9.9`."""
    patterns = tuple(p.strip() for p in value.split(",") if p.strip())
    if not patterns:
        raise KeyOptionError("option from: the pattern list is empty")
    for pattern in patterns:
        body = pattern.removeprefix("!")
        if not _is_address_pattern(body):
            raise KeyOptionError(
                f"option from: {body!r} is not an address, wildcard or CIDR"
                " (host names cannot be matched: the gateway does no DNS lookups)"
            )
    return patterns


def _is_address_pattern(body: str) -> bool:
    if "/" in body:
        try:
            ipaddress.ip_network(body, strict=True)
        except ValueError:
            return False
        return True
    if _IPV4_WILDCARD.match(body):
        return True
    return ":" in body and bool(_IPV6_WILDCARD.match(body))


def parse_expiry(value: str) -> datetime:
    """`YYYYMMDD[HHMM[SS]][Z]`: UTC with Z, else the server's local time (as sshd)."""
    match = _EXPIRY.match(value.strip())
    if match is None:
        raise KeyOptionError(f"option expiry-time: {value!r} is not YYYYMMDD[HHMM[SS]][Z]")
    date, hhmm, seconds, zulu = match.groups()
    try:
        naive = datetime.strptime(date + (hhmm or "0000") + (seconds or "00"), "%Y%m%d%H%M%S")
    except ValueError:
        raise KeyOptionError(f"option expiry-time: {value!r} is not a valid date") from None
    try:
        return naive.replace(tzinfo=UTC) if zulu else naive.astimezone(UTC)
    except (OverflowError, ValueError):  # local time past 9999 (or before year 1) in UTC
        raise KeyOptionError(
            f"option expiry-time: {value!r} is out of range in UTC (years 1 to 9999)"
        ) from None


def address_matches(client_ip: str | None, patterns: tuple[str, ...]) -> bool:
    """OpenSSH's rule: a matching negated pattern refuses; else any positive match allows."""
    if not client_ip:
        return False
    allowed = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _matches(client_ip, pattern.removeprefix("!")):
            if negated:
                return False
            allowed = True
    return allowed


def _matches(client_ip: str, pattern: str) -> bool:
    if "/" in pattern:
        try:
            return ipaddress.ip_address(client_ip) in ipaddress.ip_network(pattern)
        except ValueError:
            return False
    return fnmatchcase(client_ip.lower(), pattern.lower())
