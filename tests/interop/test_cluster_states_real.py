"""The states a real sheep cluster goes through, as our client and driver see
them: unformatted, waiting for its nodes to rejoin, a node joining, a node
leaving.  Each maps to the typed error the code promises, and the retries
carry an operation across a state that ends while it waits.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.exception import (
    NoGatewayAvailable,
    RetryExhausted,
    WaitForFormat,
    WaitForJoin,
)
from sheepdog_backend.testing.backends import driver_from_config, write_backend_ini
from tests.interop.conftest import Target, unique
from tests.realsheep import SheepCluster

MiB = 1 << 20


def later(seconds: float, fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), fn()), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def unformatted(tmp_path: Path) -> Iterator[SheepCluster]:
    with SheepCluster(tmp_path / "unf", nodes=1, format=False) as cluster:
        yield cluster


def test_unformatted_node_gives_wait_for_format_and_changes_nothing(
        unformatted: SheepCluster, tmp_path: Path) -> None:
    gateway = unformatted.gateways[0]
    with SheepdogClient([gateway]) as client:
        start = time.monotonic()
        with pytest.raises(WaitForFormat):
            client.create_vdi("never", 4 * MiB)
        assert time.monotonic() - start < 5  # not retried by default: a clear error at once
        assert client.list_vdis() == []  # READ_VDIS is served unformatted: nothing there
    ini = write_backend_ini(tmp_path / "site.ini", [gateway], backend="site")
    with pytest.raises(WaitForFormat, match="dog cluster format"):
        with driver_from_config(ini):
            pass
    assert "Waiting for cluster to be formatted" in unformatted.run_dog("cluster", "info").stdout


def test_opt_in_retry_waits_for_a_format_by_dog(unformatted: SheepCluster) -> None:
    retry = RetryPolicy(attempts=100, base_backoff=0.1, max_backoff=0.3, deadline=30,
                        retry_wait_for_format=True)
    formatter = later(1.0, lambda: unformatted.run_dog("cluster", "format", "-c", "1"))
    with SheepdogClient(unformatted.gateways, retry=retry) as client:
        info = client.create_vdi("after-format", 4 * MiB)
    formatter.join(30)
    listed = unformatted.run_dog("vdi", "list", "-r").stdout.split()
    assert listed[1] == "after-format" and int(listed[7], 16) == info.vid


def test_our_format_on_a_real_node(unformatted: SheepCluster) -> None:
    with SheepdogClient(unformatted.gateways) as client:
        client.format_cluster(copies=1)
        assert client.cluster_info().nr_copies == 1
        client.create_vdi("ours", 4 * MiB)
    info = unformatted.run_dog("cluster", "info", "-v").stdout
    assert info.startswith("Cluster status: running")
    assert "Cluster store: plain with 1 redundancy policy" in info
    assert "ours" in unformatted.run_dog("vdi", "list").stdout


def test_cluster_waiting_for_nodes_to_rejoin(tmp_path: Path) -> None:
    with SheepCluster(tmp_path / "rejoin", nodes=2, copies=2) as cluster:
        data = os.urandom(MiB)
        with SheepdogClient(cluster.gateways) as client:
            client.create_vdi("kept", 8 * MiB)
            client.write("kept", 3 * MiB, data)
        cluster.power_cut()  # the whole cluster goes down at once; one node comes back
        first, second = cluster.nodes
        first.start()
        deadline = time.monotonic() + 10
        status = ""
        while "Waiting for other nodes to join" not in status and time.monotonic() < deadline:
            status = cluster.run_dog("cluster", "info", node=first.index).stdout
            time.sleep(0.05)
        assert "Waiting for other nodes to join" in status
        once = RetryPolicy(attempts=1)
        with SheepdogClient([first.gateway], retry=once) as client:
            with pytest.raises(RetryExhausted) as caught:
                client.read("kept", 3 * MiB, MiB)
            assert isinstance(caught.value.last_error, WaitForJoin)
        ini = write_backend_ini(tmp_path / "site.ini", [first.gateway], backend="site")
        with pytest.raises(NoGatewayAvailable, match="waiting"):
            with driver_from_config(ini):
                pass
        # The retries carry a read across the wait: the other node comes back.
        patient = RetryPolicy(attempts=100, base_backoff=0.1, max_backoff=0.3, deadline=30)
        joiner = later(1.0, second.start)
        with SheepdogClient([first.gateway], retry=patient) as client:
            assert client.read("kept", 3 * MiB, MiB) == data
        joiner.join(30)


def test_node_joining_and_leaving(tmp_path: Path) -> None:
    with SheepCluster(tmp_path / "members", nodes=2, copies=2) as cluster:
        name = unique("members")
        data = os.urandom(3 * MiB)
        with SheepdogClient(cluster.gateways) as client:
            client.create_vdi(name, 32 * MiB)
            client.write(name, 0, data)
            # a node joins while the client keeps writing
            joined = cluster.add_node()
            for i in range(1, 6):
                client.write(name, i * 4 * MiB, data)
            cluster.wait_ready(30)
            assert len(client.node_list()) == 3
        with SheepdogClient([joined.gateway]) as fresh:  # the new node serves it all
            for i in range(6):
                assert fresh.read(name, i * 4 * MiB, len(data)) == data
        assert len(Target("real", joined.host, joined.port).dog_text(
            "node", "list").splitlines()) == 4  # header + 3 nodes
        # a node leaves (dog node kill: a clean leave); the client carries on
        leaver = cluster.nodes[0]
        listed = cluster.run_dog("node", "list", node=joined.index).stdout.splitlines()[1:]
        (dog_id,) = [ln.split()[0] for ln in listed if ln.split()[1] == leaver.gateway]
        cluster.run_dog("node", "kill", dog_id, node=joined.index)
        deadline = time.monotonic() + 15
        while leaver.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not leaver.alive()
        leaver.stop()  # already gone: only forgets the pid
        retry = RetryPolicy(attempts=10, base_backoff=0.1, max_backoff=0.5, deadline=30)
        with SheepdogClient([leaver.gateway, joined.gateway], retry=retry) as client:
            client.write(name, 28 * MiB, data)
            assert client.read(name, 28 * MiB, len(data)) == data
            assert client.read(name, 0, len(data)) == data
            assert len(client.node_list()) == 2
