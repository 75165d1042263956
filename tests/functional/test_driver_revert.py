"""An interrupted revert never leaves a volume empty or missing (issue 9, item 4).

The driver talks to the server through a FaultProxy; once armed, the proxy
lets ``k`` requests of the revert through, applies a fault to the next one
(its reply is lost, or the connection is cut before it is forwarded) and cuts
every request after it, so the driver's retries run out and the revert raises.
Another driver - another worker, another process, no memory of the first -
then uses the volume: it reads the snapshot's bytes (or, when the revert was
cut before it changed anything, the bytes from before), never zeros, and
``create_volume`` of the same id finds the volume, never making a blank one.
Every position of the revert's request sequence is tried (bounded; a cut
checked by reading, a lost reply by creating), on the embedded server; the two
positions the issue names (after the slot clearing, after the delete) with
both checks, on the embedded server and on a real sheep.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from sheepdog_backend.driver.base import BackendConfiguration, Snapshot, Volume
from sheepdog_backend.driver.revert import REVERT_KEY
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import InvalidInput, SheepdogError
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.realsheep import SheepCluster
from tests.unit.client.loopback import FaultProxy

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
OFFSETS = (0, 4 * MiB - 100, 700 * MiB)
MAX_STEPS = 60  # bound on the request positions tried


class Outage:
    """Proxy rule: once armed, pass ``k`` requests, apply ``action`` to the next
    and cut every later one until disarmed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.armed = False
        self.k = 0
        self.action = "pass"
        self.count = 0
        self.fired: list[int] = []
        self.opcode: int | None = None  # with it: fault the first request of that opcode

    def arm(self, k: int, action: str, opcode: int | None = None) -> None:
        with self.lock:
            self.armed, self.k, self.action, self.count = True, k, action, 0
            self.fired, self.opcode = [], opcode

    def disarm(self) -> None:
        with self.lock:
            self.armed = False

    def __call__(self, req: Request, n: int) -> str:
        with self.lock:
            if not self.armed:
                return "pass"
            if self.fired:
                return "cut_before"  # the outage goes on: retries fail too
            hit = req.opcode == self.opcode if self.opcode is not None \
                else self.count == self.k
            self.count += 1
            if not hit:
                return "pass"
            self.fired.append(req.opcode)
            return self.action


def make_driver(gateway: str, attempts: int = 2) -> SheepdogDriver:
    conf = BackendConfiguration({"sheepdog_gateways": [gateway],
                                 "sheepdog_retry_attempts": attempts,
                                 "sheepdog_retry_deadline": 10.0,
                                 "sheepdog_connect_timeout": 2.0,
                                 "sheepdog_request_timeout": 10.0,
                                 # each call takes and releases its lease: no
                                 # background requests between the counted ones
                                 "sheepdog_lease_reuse": 0.0})
    return SheepdogDriver(conf, backend_name="revert")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path_factory.mktemp("sheep") / "data", copies=1, format=True,
                         sync=False)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def write_marks(drv: SheepdogDriver, volume: Volume, seed: int) -> dict[int, bytes]:
    marks = {off: bytes((seed + off + i) % 251 + 1 for i in range(4 * KiB))
             for off in OFFSETS}
    for off, payload in marks.items():
        drv.client.write(volume.name or "", off, payload)
    return marks


def read_marks(drv: SheepdogDriver, volume: Volume) -> dict[int, bytes]:
    return {off: drv.data_access().read(volume, off, 4 * KiB) for off in OFFSETS}


class Case:
    """A volume with snapshot ``snap`` (bytes ``before``) and newer bytes ``after``."""

    def __init__(self, drv: SheepdogDriver) -> None:
        name = f"rv-{uuid.uuid4().hex[:10]}"
        self.volume = Volume(id=name, size=1, name=name)
        self.snap = Snapshot(id="s", volume=self.volume, name="s")
        drv.create_volume(self.volume)
        self.before = write_marks(drv, self.volume, 1)
        drv.create_snapshot(self.snap)
        self.after = write_marks(drv, self.volume, 2)

    def observe(self, drv: SheepdogDriver, via: str) -> None:
        """What another driver sees: the snapshot's bytes or the unchanged ones;
        and the operation settled the revert (no record left)."""
        if via == "create":
            assert drv.create_volume(self.volume) == {}  # finds it; not a blank one
        elif via == "extend":
            drv.extend_volume(self.volume, 2)
            assert drv.data_access().size_bytes(self.volume) == 2 * GiB
        elif via == "snapshot":  # a snapshot taken now holds one version, not zeros
            later = Snapshot(id="later", volume=self.volume, name="later")
            drv.create_snapshot(later)
            frozen = {off: drv.client.read(self.volume.name or "", off, 4 * KiB,
                                           tag="later") for off in OFFSETS}
            assert frozen in (self.before, self.after), "snapshot holds neither version"
            drv.delete_snapshot(later)
        else:
            assert drv.data_access().exists(self.volume)
        assert drv.client.get_attr(self.volume.name or "", REVERT_KEY) is None
        got = read_marks(drv, self.volume)
        assert got in (self.before, self.after), "volume reads neither version"

    def finish(self, drv: SheepdogDriver) -> None:
        drv.revert_to_snapshot(self.volume, self.snap)
        assert read_marks(drv, self.volume) == self.before
        assert drv.client.get_attr(self.volume.name or "", REVERT_KEY) is None
        drv.delete_snapshot(self.snap)
        drv.delete_volume(self.volume)
        assert not drv.data_access().exists(self.volume)


def sweep(gateway: tuple[str, int], action: str, via: str) -> int:
    """Cut one revert of one volume at each request position in turn (new bytes
    written before each); returns the number of positions."""
    rule = Outage()
    with FaultProxy(gateway, rule) as proxy:
        setup = make_driver(f"{gateway[0]}:{gateway[1]}", attempts=3)
        cut = make_driver(proxy.address)
        try:
            case = Case(setup)
            for k in range(MAX_STEPS):
                case.after = write_marks(setup, case.volume, 10 + k)
                # the same size: changes nothing, but leaves ``cut`` knowing the
                # volume's lease, so the revert takes it in one request (the
                # sequence cut is the revert's, not a cold lookup of the lease)
                cut.extend_volume(case.volume, 1)
                rule.arm(k, action)
                try:
                    cut.revert_to_snapshot(case.volume, case.snap)
                    reverted = True
                except SheepdogError:
                    reverted = False
                rule.disarm()
                if not rule.fired:  # ran past the revert's last request
                    assert reverted
                    assert read_marks(cut, case.volume) == case.before
                    case.finish(setup)
                    return k
                case.observe(setup, via)
            pytest.fail("revert request sequence unexpectedly long")
        finally:
            cut.close()
            setup.close()


def interrupted(gateway: tuple[str, int], via: str, action: str, *, k: int = 0,
                opcode: int | None = None) -> bool:
    """One revert cut as armed, then checked from a fresh driver; False when the
    revert needed fewer than ``k + 1`` requests (nothing was cut)."""
    rule = Outage()
    with FaultProxy(gateway, rule) as proxy:
        setup = make_driver(f"{gateway[0]}:{gateway[1]}", attempts=3)
        cut = make_driver(proxy.address)
        try:
            case = Case(setup)
            rule.arm(k, action, opcode)
            try:
                cut.revert_to_snapshot(case.volume, case.snap)
                reverted = True
            except SheepdogError:
                reverted = False
            rule.disarm()
            fired = bool(rule.fired)
            assert fired or reverted, "nothing was cut, yet the revert failed"
            case.observe(setup if fired else cut, via)
            case.finish(setup)
            return fired
        finally:
            cut.close()
            setup.close()


@pytest.mark.parametrize(("action", "via"), [("cut_before", "read"), ("lose_reply", "create")])
def test_revert_cut_at_every_step(server: EmbeddedServer, action: str, via: str) -> None:
    assert sweep(server.addresses[0], action, via) >= 5  # lookups, record, clear, delete...


# The two interruptions the issue names: right after the slot clearing (the
# DEL_VDI is never sent: the old working VDI is there with empty slots) and
# right after the delete (DEL_VDI done, its reply lost: no working VDI at all).
NAMED = [("cut_before", "read"), ("cut_before", "create"),
         ("lose_reply", "read"), ("lose_reply", "create")]


@pytest.mark.parametrize(("action", "via"), [
    *NAMED, ("cut_before", "extend"), ("lose_reply", "extend"),
    ("cut_before", "snapshot"), ("lose_reply", "snapshot")])
def test_revert_cut_around_the_delete_embedded(server: EmbeddedServer, action: str,
                                               via: str) -> None:
    assert interrupted(server.addresses[0], via, action, opcode=Opcode.DEL_VDI)


@pytest.fixture(scope="module")
def real_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with SheepCluster(tmp_path_factory.mktemp("realrv"), nodes=1) as cluster:
        host, _, port = cluster.gateways[0].rpartition(":")
        yield host, int(port)


@pytest.mark.parametrize(("action", "via"), NAMED)
def test_revert_cut_around_the_delete_real_sheep(real_gateway: tuple[str, int],
                                                 action: str, via: str) -> None:
    assert interrupted(real_gateway, via, action, opcode=Opcode.DEL_VDI)


@pytest.mark.parametrize("where", ["embedded", "real"])
def test_record_reachable_without_a_working_vdi(request: pytest.FixtureRequest,
                                                where: str) -> None:
    """The record is the name's attribute: while the working VDI is deleted it is
    reached through a snapshot of the name, and a new working VDI sees it (the
    real sheep behaves as the protocol reference says, §8.3 and §9.7)."""
    if where == "embedded":
        gateway = request.getfixturevalue("server").gateways[0]
    else:
        host, port = request.getfixturevalue("real_gateway")
        gateway = f"{host}:{port}"
    drv = make_driver(gateway)
    try:
        case = Case(drv)
        name = case.volume.name or ""
        drv.client.set_attr(name, "k", b"v1")
        snap = drv.client.get_vdi(name, "s")
        drv.client.delete_vdi(name)
        assert drv.client.find_vdi(name) is None
        assert drv.client.get_attr(name, "k", snapid=snap.snap_id) == b"v1"
        drv.client.set_attr(name, "k", b"v2", snapid=snap.snap_id)
        drv.client.rollback_vdi(name, "s", size=2 * GiB)
        assert drv.client.get_attr(name, "k") == b"v2"
        assert drv.client.get_vdi(name).size == 2 * GiB
        assert drv.client.delete_attr(name, "k")
        assert drv.client.get_attr(name, "k", snapid=snap.snap_id) is None
        drv.delete_snapshot(case.snap)
        drv.delete_volume(case.volume)
    finally:
        drv.close()


def test_client_additions_reject_bad_input(server: EmbeddedServer) -> None:
    """The snapid/size keywords the driver added to the client: typed errors,
    nothing changed."""
    drv = make_driver(server.gateways[0])
    try:
        case = Case(drv)
        name = case.volume.name or ""
        before = sorted((v.vid, v.tag, v.size) for v in drv.client.list_vdis())
        for bad in (-1, True, "1", 1 << 32):
            with pytest.raises(InvalidInput):
                drv.client.delete_vdi(name, snapid=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidInput):
                drv.client.clone_vdi(name, "", "other", snapid=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidInput):
                drv.client.get_attr(name, "k", snapid=bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidInput):
                drv.client.set_attr(name, "k", b"v", snapid=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            drv.client.clone_vdi(name, "", "other")  # neither tag nor snapid
        with pytest.raises(InvalidInput):
            drv.client.rollback_vdi(name, "s", size=0)
        assert sorted((v.vid, v.tag, v.size) for v in drv.client.list_vdis()) == before
        assert read_marks(drv, case.volume) == case.after
        drv.delete_snapshot(case.snap)
        drv.delete_volume(case.volume)
    finally:
        drv.close()


def test_revert_cut_at_every_step_real_sheep(real_gateway: tuple[str, int]) -> None:
    """The sweep once on a real sheep: a lost reply at each position, then a
    create of the same id (the harder of the two checks)."""
    assert sweep(real_gateway, "lose_reply", "create") >= 5
