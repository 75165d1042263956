"""Constants and helpers shared by the conformance suite's test groups."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sheepdog_backend.driver.base import (
    ALL_CAPABILITIES,
    Connector,
    Volume,
    VolumeDriver,
)
from sheepdog_backend.testing.plugin import CAPABILITY_MARKER, GAP_PROPERTY
from sheepdog_backend.testing.resources import (
    MIB,
    new_run_id,
)

GAP_REASON_PREFIX = "declared unsupported: "
MAX_NAME_BYTES = 255
CONNECTOR = Connector(host="conformance-host", ip="127.0.0.1",
                      initiator="iqn.2024-01.org.example:conformance")
REQUIRED_STATS_KEYS = (
    "volume_backend_name", "vendor_name", "driver_version", "storage_protocol",
    "total_capacity_gb", "free_capacity_gb", "provisioned_capacity_gb", "total_volumes",
)
# Address no cluster under test lives at (loopback, so nothing leaves the machine).
FOREIGN_HOST = "127.0.0.254"
IMAGE_SIZE = 24 * MIB
# Unique per process: every name the suite makes starts with sdconf-<RUN_ID>-.
RUN_ID = new_run_id()


def requires(*capabilities: str) -> pytest.MarkDecorator:
    """Mark a test as needing driver capabilities (a missing one is a GAP)."""
    unknown = set(capabilities) - ALL_CAPABILITIES
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}")
    marker: pytest.MarkDecorator = getattr(pytest.mark, CAPABILITY_MARKER)
    return marker(*capabilities)


def declare_gap(node: pytest.Item, missing: list[str]) -> None:
    """Skip the running test as a declared gap (reported as GAP, not pass)."""
    names = ", ".join(sorted(missing))
    node.user_properties.append((GAP_PROPERTY, names))
    pytest.skip(GAP_REASON_PREFIX + names)


def expect_ok(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def free_loopback_port(exclude: set[str]) -> int:
    """A port nothing listens on right now and that is not in ``exclude``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if str(port) not in exclude:
            return port


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextmanager
def refused(expected: type[BaseException] | tuple[type[BaseException], ...],
            action: str) -> Iterator[None]:
    """Fail clearly unless the block raises ``expected`` (naming what it did)."""
    names = (expected.__name__ if isinstance(expected, type)
             else " or ".join(e.__name__ for e in expected))
    try:
        yield
    except expected:
        return
    except Exception as exc:
        pytest.fail(f"{action} raised {type(exc).__name__} ({exc}), expected {names}",
                    pytrace=False)
    pytest.fail(f"{action} did not raise {names}", pytrace=False)


def cluster_address(driver: VolumeDriver, volume: Volume) -> tuple[str, str, set[str]]:
    """(host, port) of the first gateway the driver names, and all its ports."""
    info = driver.initialize_connection(volume, CONNECTOR)
    hosts, ports = info["data"]["hosts"], info["data"]["ports"]
    return str(hosts[0]), str(ports[0]), {str(p) for p in ports}
