"""The gateway reaching a node on its own host through the node's unix socket
(``--node-socket``, gateway/nodesock.py), against real Sheepdog 1.0 nodes:
object I/O goes through the socket and reads back what was written; a socket
of another cluster, or of a node that is not in the cluster, stops the start
with the reason; a malformed entry is refused by the command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.exception import InvalidInput
from sheepdog_backend.gateway import Gateway
from tests.realsheep import SheepCluster, free_port

MiB = 1 << 20


def _socket(cluster: SheepCluster) -> str:
    return str(cluster.nodes[0].store / "sock")


def test_object_io_goes_through_the_node_socket_and_reads_back(real_sheep: SheepCluster
                                                                ) -> None:
    node = real_sheep.gateways[0]
    with Gateway([node], port=free_port(), node_sockets=[f"{node}={_socket(real_sheep)}"]
                 ) as gateway, SheepdogClient([f"127.0.0.1:{gateway.port}"]) as client:
        client.create_vdi("socketed", 64 * MiB)
        first, second = os.urandom(MiB), os.urandom(MiB)
        client.write("socketed", 3 * MiB, first)  # allocates (the blocking path)
        client.write("socketed", 3 * MiB, second)  # relayed: an allocated object
        assert client.read("socketed", 3 * MiB, MiB) == second
        wire = gateway.stats()["wire"]
        assert wire["fast_requests"] > 0
        assert wire["socket_upstreams"] >= 1
        assert wire["socket_upstreams"] == wire["upstreams"]
    with SheepdogClient([node]) as direct:  # what the node holds, over TCP
        assert direct.read("socketed", 3 * MiB, MiB) == second


def test_a_socket_of_another_cluster_stops_the_start(real_sheep: SheepCluster,
                                                     tmp_path: Path) -> None:
    node = real_sheep.gateways[0]
    with SheepCluster(tmp_path / "other", nodes=1) as other:
        gateway = Gateway([node], port=free_port(),
                          node_sockets=[f"{node}={_socket(other)}"])
        with pytest.raises(InvalidInput, match=re.escape(
                f"does not belong to the cluster of node {node}")):
            gateway.start()
        assert not gateway.running
        gateway.stop()
        listed = other.run_dog("vdi", "list", "-r").stdout
        assert listed.strip() == ""


def test_a_socket_of_a_node_outside_the_cluster_stops_the_start(real_sheep: SheepCluster
                                                                ) -> None:
    gateway = Gateway([real_sheep.gateways[0]], port=free_port(),
                      node_sockets=[f"127.0.0.1:1={_socket(real_sheep)}"])
    with pytest.raises(InvalidInput, match=re.escape(
            "names 127.0.0.1:1, which is not a node of the cluster")):
        gateway.start()
    gateway.stop()


@pytest.mark.parametrize(("entry", "message"), [
    ("127.0.0.1:7000", "node socket '127.0.0.1:7000' is not HOST:PORT=PATH"),
    ("127.0.0.1:7000=/" + "d" * 120, "longer than 107 bytes"),
])
def test_the_command_refuses_a_bad_node_socket(entry: str, message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "sheepdog_backend", "gateway", "--cluster",
                           "127.0.0.1:7000", "--port", "7001", "--node-socket", entry],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
