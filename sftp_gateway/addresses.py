"""Client addresses in one spelling, whatever socket they came through.

A dual-stack listener (`[::]:2222`) reports an IPv4 client as `::ffff:192.0.2.7`. Key
`from=` patterns, bans, per-source limits and the catalog all name IPv4 clients in
dotted form, so every address is made canonical once, where it enters the process, as
sshd does: otherwise `from="!192.0.2.7,*"` would let that client in.
"""

from __future__ import annotations

import ipaddress


def canonical_ip(address: str) -> str:
    """An IPv4-mapped IPv6 address as the IPv4 address it carries; any other IP in its
    compressed form; text that is no IP address (a UNIX socket's name) unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def source_of(address: str, ipv6_prefix: int) -> str:
    """What per-source limits and bans count: an IPv4 address itself, an IPv6 address
    by its /`ipv6_prefix` network. One IPv6 subscriber holds a whole /64, so keyed by
    address an attacker would rotate through 2^64 fresh ones; 128 counts each address.
    Text that is no IP address (a network already, a UNIX socket's name) is unchanged."""
    try:
        ip = ipaddress.ip_address(canonical_ip(address))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv4Address) or ipv6_prefix >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))


def ban_key(text: str, ipv6_prefix: int) -> str | None:
    """An operator's address or network as the key its ban is stored under (None: not
    an IP address or network). `2001:db8::7` and `2001:db8::/64` name one /64 ban."""
    text = text.strip()
    try:
        return source_of(str(ipaddress.ip_address(text)), ipv6_prefix)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)
