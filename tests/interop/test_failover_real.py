"""Reconciliation and failover against real sheep.

* Lost replies: tests/unit/client/loopback.py's FaultProxy in front of a real
  node forwards the decisive request of an operation and cuts the connection
  instead of delivering sheep's answer; the client's retry must reconcile with
  what sheep did, so the cluster looks exactly as after one clean call.
* A node killed mid-operation: the proxy loses the decisive reply (or cuts the
  connection before the decisive request, after the earlier steps) and the
  node behind it is SIGKILLed before the client's retry; the operation completes
  through another node of a 3-node, 2-copy cluster, exactly once.  (A node
  killed *before* it answers a snapshot's NEW_VDI can leave the name with its
  snapshot but no working VDI visible until it returns - the real dog ends the
  same way - so that in-doubt case is not claimed here; the client raises
  SnapshotInDoubt for it, tested in tests/functional/test_client_faults.py.)
* A node killed mid-stream: during a multi-object write or read the node the
  client streams through is killed; the transfer completes through another
  node and every byte is right.

Every killed node is restarted (same store) and the cluster waited for before
the next test, so tests do not depend on each other's order.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.driver.base import Volume
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.header import ObjRequest, Request
from sheepdog_backend.protocol.oid import is_vdi_obj
from sheepdog_backend.testing.backends import driver_from_config, write_backend_ini
from tests.interop.conftest import Target, unique
from tests.realsheep import SheepCluster
from tests.unit.client.loopback import FaultProxy

MiB = 1 << 20
OBJ = 4 * MiB


def retry(sleep: Callable[[float], None] = time.sleep) -> RetryPolicy:
    return RetryPolicy(attempts=8, base_backoff=0.05, max_backoff=0.5, deadline=60,
                       sleep=sleep)


def rows(target: Target, name: str) -> list[tuple[str, str, int]]:
    """(kind, tag, size) of each `dog vdi list -r NAME` line."""
    out = []
    for line in target.dog_text("vdi", "list", "-r", name).splitlines():
        fields = line.split(" ")
        out.append((fields[0], fields[9], int(fields[3])))
    return sorted(out)


def _inode_write(req: Request) -> bool:
    return (req.opcode == Opcode.WRITE_OBJ and isinstance(req.body, ObjRequest)
            and is_vdi_obj(req.body.oid))


class LoseOnce:
    """FaultProxy rule: once armed, apply ``action`` to the first request
    ``match`` accepts: "lose_reply" (forwarded; the connection is cut when
    sheep's answer arrives) or "cut_before" (cut, never forwarded)."""

    def __init__(self, match: Callable[[Request], bool], action: str = "lose_reply") -> None:
        self.match, self.action = match, action
        self.armed = False
        self.fired: list[int] = []

    def __call__(self, req: Request, n: int) -> str:
        if not self.armed or self.fired or not self.match(req):
            return "pass"
        self.fired.append(req.opcode)
        return self.action


class KillBeforeRetry:
    """A RetryPolicy ``sleep`` that kills a node before the first retry: the
    attempt whose reply was lost has ended (sheep answered, the proxy cut the
    connection), so the node dies after doing the work and before the client
    can ask it what happened."""

    def __init__(self, kill: Callable[[], None]) -> None:
        self.kill = kill
        self.killed = False

    def __call__(self, seconds: float) -> None:
        if not self.killed:
            self.killed = True
            self.kill()
        time.sleep(seconds)


# Each operation: (set-up, the call under test, the decisive request, the
# expected `dog vdi list -r` rows of the name afterwards).
Setup = Callable[[SheepdogClient, str], None]
Call = Callable[[SheepdogClient, str], object]
OPS: dict[str, tuple[Setup, Call, Callable[[Request], bool], list[tuple[str, str, int]]]] = {
    "create": (lambda c, n: None, lambda c, n: c.create_vdi(n, 8 * MiB),
               lambda r: r.opcode == Opcode.NEW_VDI, [("=", "", 8 * MiB)]),
    "snapshot": (lambda c, n: c.create_vdi(n, 8 * MiB), lambda c, n: c.snapshot_vdi(n, "t"),
                 lambda r: r.opcode == Opcode.NEW_VDI, [("=", "", 8 * MiB), ("s", "t", 8 * MiB)]),
    "clone": (lambda c, n: (c.create_vdi(n, 8 * MiB), c.snapshot_vdi(n, "t")),
              lambda c, n: c.clone_vdi(n, "t", n + "-c"),
              lambda r: r.opcode == Opcode.NEW_VDI, [("=", "", 8 * MiB), ("s", "t", 8 * MiB)]),
    "resize": (lambda c, n: c.create_vdi(n, 8 * MiB), lambda c, n: c.resize_vdi(n, 12 * MiB),
               _inode_write, [("=", "", 12 * MiB)]),
    "delete-snapshot": (lambda c, n: (c.create_vdi(n, 8 * MiB), c.snapshot_vdi(n, "t")),
                        lambda c, n: c.delete_vdi(n, "t"),
                        lambda r: r.opcode == Opcode.DEL_VDI, [("=", "", 8 * MiB)]),
    "delete": (lambda c, n: c.create_vdi(n, 8 * MiB), lambda c, n: c.delete_vdi(n),
               lambda r: r.opcode == Opcode.DEL_VDI, []),
    "set-attr": (lambda c, n: c.create_vdi(n, 8 * MiB),
                 lambda c, n: c.set_attr(n, "k", b"v", exclusive=True),
                 lambda r: r.opcode == Opcode.GET_VDI_ATTR, [("=", "", 8 * MiB)]),
}


# -- lost replies in front of one real node --------------------------------------------


@pytest.mark.parametrize("op", sorted(OPS))
def test_lost_reply_from_a_real_node_is_reconciled(real_target: Target, op: str) -> None:
    setup, call, match, expected = OPS[op]
    rule = LoseOnce(match)
    with FaultProxy((real_target.host, real_target.port), rule) as proxy, \
            SheepdogClient([proxy.address], retry=retry()) as client:
        name = unique(op)
        setup(client, name)
        rule.armed = True
        call(client, name)
        assert rule.fired, "the decisive request was never seen"
    assert rows(real_target, name) == expected
    if op == "clone":
        assert rows(real_target, name + "-c") == [("c", "", 8 * MiB)]
    if op == "set-attr":
        assert real_target.dog("vdi", "getattr", name, "k").stdout == b"v"


def test_lost_write_reply_from_a_real_node_keeps_every_byte(real_target: Target) -> None:
    data = os.urandom(2 * OBJ + MiB)
    rule = LoseOnce(lambda r: r.opcode in (Opcode.WRITE_OBJ, Opcode.CREATE_AND_WRITE_OBJ)
                    and not _inode_write(r))
    with FaultProxy((real_target.host, real_target.port), rule) as proxy, \
            SheepdogClient([proxy.address], retry=retry()) as client:
        name = unique("lw")
        client.create_vdi(name, 16 * MiB)
        rule.armed = True
        client.write(name, MiB, data)
        assert rule.fired
    assert real_target.dog("vdi", "read", name, str(MiB), str(len(data))).stdout == data


# -- a 3-node cluster, nodes killed -----------------------------------------------------


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SheepCluster]:
    with SheepCluster(tmp_path_factory.mktemp("fail3"), nodes=3, copies=2) as cluster:
        yield cluster


@pytest.fixture
def healed(cluster3: SheepCluster) -> Iterator[SheepCluster]:
    """The cluster, every node restarted and joined again after the test."""
    try:
        yield cluster3
    finally:
        for node in cluster3.nodes:
            if not node.alive():
                node.start()
        cluster3.wait_ready(30)


def target_of(cluster: SheepCluster, index: int) -> Target:
    node = cluster.nodes[index]
    return Target("real", node.host, node.port)


# A real sheep killed mid-I/O recovers on its own schedule; on a loaded 2-core
# machine this failed about 1 run in 4 (NO_OBJ / a write error during recovery).
# A rerun must pass every assertion again; reruns show as RERUN in the summary.
@pytest.mark.flaky(reruns=2, reruns_delay=1)
@pytest.mark.parametrize(("op", "action"), [
    ("create", "lose_reply"), ("snapshot", "lose_reply"), ("clone", "lose_reply"),
    ("resize", "lose_reply"),
    ("delete-snapshot", "lose_reply"), ("delete", "lose_reply"),
    # the node dies between the steps: the snapshot's tag (or the delete's
    # released slots) written, the decisive request never reaching it
    ("snapshot", "cut_before"), ("delete", "cut_before")])
def test_node_killed_mid_operation_completes_through_another(healed: SheepCluster, op: str,
                                                             action: str) -> None:
    setup, call, match, expected = OPS[op]
    victim = healed.nodes[0]
    rule = LoseOnce(match, action)
    killer = KillBeforeRetry(victim.kill)
    others = healed.gateways[1:]
    with FaultProxy((victim.host, victim.port), rule) as proxy, \
            SheepdogClient([proxy.address, *others], retry=retry(killer)) as client:
        name = unique(f"k-{op}")
        setup(client, name)
        rule.armed = True
        call(client, name)
        assert rule.fired and killer.killed and not victim.alive()
    for index in (1, 2):
        assert rows(target_of(healed, index), name) == expected
        if op == "clone":
            assert rows(target_of(healed, index), name + "-c") == [("c", "", 8 * MiB)]


class KillingReader(io.BytesIO):
    """A source file that kills a node once ``at`` bytes were read from it."""

    def __init__(self, data: bytes, at: int, kill: Callable[[], None]) -> None:
        super().__init__(data)
        self.at, self.kill, self.killed = at, kill, False

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        if not self.killed and self.tell() >= self.at:
            self.killed = True
            self.kill()
        return out


def test_node_killed_mid_write_stream_completes_through_another(healed: SheepCluster) -> None:
    victim = healed.nodes[1]
    data = os.urandom(5 * OBJ + 12345)
    with FaultProxy((victim.host, victim.port)) as proxy, \
            SheepdogClient([proxy.address, healed.gateways[2]], retry=retry()) as client:
        name = unique("ws")
        client.create_vdi(name, 24 * MiB)
        seen = proxy.seen
        source = KillingReader(data, 2 * OBJ, victim.kill)
        assert client.write_from_file(name, source, offset=MiB) == len(data)
        assert source.killed and not victim.alive()
        assert proxy.seen > seen  # the stream really started through the victim
        with SheepdogClient([healed.gateways[2]], retry=retry()) as other:
            assert other.read(name, MiB, len(data)) == data
            assert other.read(name, 0, MiB) == bytes(MiB)
    assert target_of(healed, 0).dog("vdi", "read", name, str(MiB),
                                    str(len(data))).stdout == data


class KillingSink(io.BytesIO):
    """A target file that kills a node once ``at`` bytes were written to it."""

    def __init__(self, at: int, kill: Callable[[], None]) -> None:
        super().__init__()
        self.at, self.kill, self.killed = at, kill, False

    def write(self, data: object) -> int:
        n = super().write(data)  # type: ignore[call-overload]
        if not self.killed and self.tell() >= self.at:
            self.killed = True
            self.kill()
        return int(n)


def test_node_killed_mid_read_stream_completes_through_another(healed: SheepCluster) -> None:
    data = os.urandom(6 * OBJ)
    with SheepdogClient(healed.gateways, retry=retry()) as client:
        name = unique("rs")
        client.create_vdi(name, len(data))
        client.write(name, 0, data)
    victim = healed.nodes[2]
    with FaultProxy((victim.host, victim.port)) as proxy, \
            SheepdogClient([proxy.address, healed.gateways[0]], retry=retry()) as client:
        sink = KillingSink(2 * OBJ, victim.kill)
        assert client.read_to_file(name, sink) == len(data)
        assert sink.killed and not victim.alive() and proxy.seen > 0
        assert sink.getvalue() == data


class KillOnRequest:
    """FaultProxy rule: at the ``nth`` request ``match`` accepts (once armed),
    kill the node behind the proxy there and then, and cut without forwarding."""

    def __init__(self, match: Callable[[Request], bool], nth: int,
                 kill: Callable[[], None]) -> None:
        self.match, self.nth, self.kill = match, nth, kill
        self.armed = False
        self.count = 0
        self.killed = False
        self.dead = threading.Event()  # set once kill() has returned: the node is gone

    def __call__(self, req: Request, n: int) -> str:
        if not self.armed or self.killed or not self.match(req):
            return "pass"
        self.count += 1
        if self.count < self.nth:
            return "pass"
        self.killed = True
        self.kill()
        self.dead.set()
        return "cut_before"


def test_driver_clone_of_a_volume_survives_its_node_dying_between_steps(
        healed: SheepCluster, tmp_path: Path) -> None:
    """create_cloned_volume is three steps (temporary snapshot, clone, delete
    the snapshot); the node dies as the clone is asked for, the driver finishes
    through the other nodes: the clone has the source's bytes, nothing is left
    over, and the source is untouched."""
    victim = healed.nodes[0]
    rule = KillOnRequest(lambda r: r.opcode == Opcode.NEW_VDI, 2, victim.kill)
    with FaultProxy((victim.host, victim.port), rule) as proxy:
        ini = write_backend_ini(tmp_path / "site.ini", [proxy.address, *healed.gateways[1:]],
                                backend="site")
        with driver_from_config(ini) as drv:
            src, dst = Volume(id=unique("src"), size=1), Volume(id=unique("dst"), size=1)
            drv.create_volume(src)
            data = os.urandom(MiB)
            with SheepdogClient(healed.gateways[1:], retry=retry()) as client:
                client.write(drv.vdi_name(src), 5 * MiB, data)
            rule.armed = True
            drv.create_cloned_volume(dst, src)
            # the kill runs on the proxy's thread; the client may have timed out
            # and finished through another node before it returned (loaded CI)
            assert rule.killed and rule.dead.wait(30) and not victim.alive()
            src_name, dst_name = drv.vdi_name(src), drv.vdi_name(dst)
    survivor = target_of(healed, 2)
    assert rows(survivor, src_name) == [("=", "", 1 << 30)]  # no temporary snapshot left
    assert rows(survivor, dst_name) == [("c", "", 1 << 30)]
    assert survivor.dog("vdi", "read", dst_name, str(5 * MiB), str(MiB)).stdout == data
