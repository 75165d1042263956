"""Gateway addresses: ``host``, ``host:port``, ``[v6]:port`` <-> (host, port).

Layer-neutral: the options (``opts``), the driver and the CLI all use it, and
it depends only on the client's transport parser and protocol constants, so
``opts`` need not import ``driver/``.

Parsing and validation are the client's (``client.transport.parse_address``,
``check_host``, ``check_port``): one parser for every place that takes an
address from a user (ini options, backing references, the CLI, the client's
own gateway list), so they all accept and reject the same strings.  This
module adapts it to (host, port) pairs and adds endpoint comparison.
"""

from __future__ import annotations

import ipaddress

from sheepdog_backend.client.transport import Address, check_host, check_port, parse_address
from sheepdog_backend.protocol.constants import SD_LISTEN_PORT

DEFAULT_PORT = SD_LISTEN_PORT


def validate_host(host: str) -> str:
    """The canonical host (IPv6 without brackets); InvalidInput when it is
    neither an IP address nor a DNS name."""
    return check_host(host)


def validate_port(port: int | str) -> int:
    return check_port(port)


def parse_gateway(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address
    -> (host, port)."""
    address = parse_address(text, default_port)
    return address.host, address.port


def format_gateway(host: str, port: int) -> str:
    """``host:port`` with IPv6 hosts in brackets."""
    return str(Address(host, port))


def same_endpoint(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """True when two (host, port) pairs name the same gateway; ``localhost``
    and the loopback addresses are treated as one host."""
    return a[1] == b[1] and _canonical(a[0]) == _canonical(b[0])


def _canonical(host: str) -> str:
    if host.lower() in ("localhost", "localhost."):
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower().rstrip(".")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)
