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
