"""The conformance suite against a three-gateway embedded server whose first
gateway is killed (listener and open connections closed) after the first
test: every later test runs with the driver failing over to the other two.
The driver's ini file lists all three gateways."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sheepdog_backend.driver.base import VolumeDriver
from sheepdog_backend.server.embedded import EmbeddedServer
from sheepdog_backend.testing.backends import (
    driver_from_config,
    embedded_backend,
    leftover_volumes,
)
from sheepdog_backend.testing.conformance import DriverConformanceTests

KILLED = 0  # index of the gateway taken down


def refuses_connections(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True


class TestThreeGatewaysOneKilledConformance(DriverConformanceTests):
    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[EmbeddedServer, Path, dict[str, Any]]]:
        workdir = tmp_path_factory.mktemp("conformance-gateways")
        with embedded_backend(workdir, ports=(0, 0, 0)) as (server, ini):
            assert len(server.gateways) == 3
            assert f"sheepdog_gateways = {','.join(server.gateways)}" in ini.read_text()
            state: dict[str, Any] = {"tests": 0, "killed_after": None}
            yield server, ini, state
            if state["tests"] > 1:  # a -k run of one test has no "later" tests
                assert state["killed_after"] == 1, "the gateway was not killed"

    @pytest.fixture(scope="class")
    @classmethod
    def driver(cls, cluster: tuple[EmbeddedServer, Path, dict[str, Any]]
               ) -> Iterator[VolumeDriver]:
        with driver_from_config(cluster[1]) as drv:
            yield drv
            assert leftover_volumes(drv) == [], "the suite left VDIs behind"

    @pytest.fixture(autouse=True)
    def _kill_one_gateway_after_the_first_test(
            self, cluster: tuple[EmbeddedServer, Path, dict[str, Any]],
            driver: VolumeDriver) -> Iterator[None]:
        server, _, state = cluster
        yield  # teardown runs after the test's own cleanup
        state["tests"] += 1
        if state["killed_after"] is None:
            address = server.addresses[KILLED]
            server.stop_listener(KILLED)
            assert refuses_connections(address), f"gateway {address} still accepts"
            state["killed_after"] = state["tests"]
