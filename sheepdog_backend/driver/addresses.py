"""Gateway addresses: ``host``, ``host:port``, ``[v6]:port`` <-> (host, port).

One parser for every place that takes an address from a user (ini options,
backing references, the CLI), so they all accept and reject the same strings.
"""

from __future__ import annotations

import ipaddress
import re

from sheepdog_backend.exception import InvalidInput

DEFAULT_PORT = 7000

# A DNS name: labels of letters, digits and hyphens (no leading/trailing hyphen).
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def validate_host(host: str) -> str:
    """The host as given (IPv6 without brackets); InvalidInput when it is neither
    an IP address nor a DNS name."""
    if not isinstance(host, str) or not host:
        raise InvalidInput("a gateway host must be a non-empty string")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _HOSTNAME.match(host):
        return host.rstrip(".").lower()
    raise InvalidInput(f"{host!r} is not an IP address or host name")


def validate_port(port: int | str) -> int:
    try:
        value = int(port)
    except (TypeError, ValueError):
        raise InvalidInput(f"port {port!r} is not a number") from None
    if isinstance(port, str) and not port.isdigit():
        raise InvalidInput(f"port {port!r} is not a number")
    if not 1 <= value <= 65535:
        raise InvalidInput(f"port {value} is outside 1-65535")
    return value


def parse_gateway(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``v4:port``, ``[v6]``, ``[v6]:port`` or a bare
    IPv6 address -> (host, port)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("a gateway address must be a non-empty string")
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidInput(f"{text!r}: unclosed '[' in IPv6 address")
        host, rest = text[1:end], text[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidInput(f"{text!r}: {host!r} is not an IPv6 address") from None
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise InvalidInput(f"{text!r}: expected ':port' after ']'")
        return str(ipaddress.IPv6Address(host)), validate_port(rest[1:])
    if text.count(":") > 1:  # a bare IPv6 address, no port
        try:
            return str(ipaddress.IPv6Address(text)), default_port
        except ValueError:
            raise InvalidInput(f"{text!r} is not host:port or an IPv6 address") from None
    if ":" in text:
        host, port = text.split(":", 1)
        return validate_host(host), validate_port(port)
    return validate_host(text), default_port


def format_gateway(host: str, port: int) -> str:
    """``host:port`` with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
