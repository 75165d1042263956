"""Fixtures of the interoperability tier: real Sheepdog 1.0 nodes, the embedded
server, the real ``dog`` pointed at either, and QEMU 5.2's tools.

Clusters are module-scoped (one per test module, tests in a module use names of
their own so they do not interfere); every process is stopped by its pid in the
fixture's ``finally`` (``SheepCluster.stop``).  Everything skips, saying what is
missing, when the real programs are not provided (``tests/realsheep.py``).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.server.embedded import EmbeddedServer
from tests.realsheep import SheepCluster, require


@dataclass(frozen=True)
class Target:
    """One Sheepdog-speaking server at host:port, with the real dog pointed at it."""

    kind: str  # "real" or "embedded"
    host: str
    port: int

    @property
    def gateway(self) -> str:
        return f"{self.host}:{self.port}"

    def dog(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        cmd = [require("dog"), *args, "-a", self.host, "-p", str(self.port)]
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                                 f"{proc.stdout!r} {proc.stderr!r}")
        return proc

    def dog_text(self, *args: str) -> str:
        return self.dog(*args).stdout.decode()

    def client(self, **kwargs: object) -> SheepdogClient:
        kwargs.setdefault("retry", RetryPolicy(attempts=3, deadline=30))
        return SheepdogClient([self.gateway], **kwargs)  # type: ignore[arg-type]


def unique(prefix: str) -> str:
    """A VDI name no other test of the module uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SheepCluster]:
    """One real, formatted (1 copy) sheep node for the whole module."""
    with SheepCluster(tmp_path_factory.mktemp("real1"), nodes=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def real_target(real_node: SheepCluster) -> Target:
    node = real_node.nodes[0]
    return Target("real", node.host, node.port)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One embedded server, formatted like `dog cluster format -c 1`, for the module."""
    require("dog")
    server = EmbeddedServer(tmp_path_factory.mktemp("emb") / "sheep", copies=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def embedded_target(embedded: EmbeddedServer) -> Target:
    host, port = embedded.addresses[0]
    return Target("embedded", host, port)


@pytest.fixture(scope="module", params=["real", "embedded"])
def target(request: pytest.FixtureRequest) -> Target:
    """Each server kind in turn (a test runs once on each)."""
    name = "real_target" if request.param == "real" else "embedded_target"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]
