"""What each driver operation sends (issue 13): the questions an operation
asks about a volume ride one pipelined survey, so no operation of the
lifecycle reads the 2 MiB vid bitmaps or looks a VDI up twice, and the only
GET_VDI_ATTR (a cluster operation sheep serialises with NEW_VDI and DEL_VDI)
is the take of a volume's lease (issue 26), once per volume: the driver keeps
the lease for the next operations on it.  Counted on the embedded server
through the real codec, the requests the calling thread sends (the lease
thread's releases are off its path): the counts are the same on any server,
the times are benchmarks/bench_sheep.py's."""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sheepdog_backend.client.transport import Connection
from sheepdog_backend.driver.base import BackendConfiguration, Snapshot, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import InvalidInput
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.testing.fixtures import EmbeddedServer

SLOW = {"READ_VDIS", "READ_DEL_VDIS"}


@dataclass
class Sent:
    ops: Counter[str] = field(default_factory=Counter)
    trips: int = 0


@contextlib.contextmanager
def sent() -> Iterator[Sent]:
    """Requests by opcode and serial round trips (a request sent with nothing
    in flight on its connection starts one)."""
    out = Sent()
    send = Connection.send
    caller = threading.get_ident()

    def counted(self: Connection, request: Any, **kw: Any) -> int:
        if threading.get_ident() == caller:
            if self.inflight == 0:
                out.trips += 1
            out.ops[Opcode(request.opcode).name] += 1
        return send(self, request, **kw)

    Connection.send = counted  # type: ignore[method-assign]
    try:
        yield out
    finally:
        Connection.send = send  # type: ignore[method-assign]


@pytest.fixture
def driver(embedded_server: EmbeddedServer) -> Iterator[SheepdogDriver]:
    # a reuse window no slow machine outlasts: each volume's lease is taken once
    drv = SheepdogDriver(BackendConfiguration(
        {"sheepdog_gateways": list(embedded_server.gateways), "sheepdog_lease_reuse": 15.0}),
        backend_name="count")
    drv.do_setup()
    drv.create_volume(Volume(id="w", size=1, name="warm-up"))  # the leases' VDI exists
    drv.delete_volume(Volume(id="w", size=1, name="warm-up"))
    try:
        yield drv
    finally:
        drv.close()


def test_lifecycle_sends_no_slow_request_and_no_repeated_lookup(
        driver: SheepdogDriver) -> None:
    vol = Volume(id="v", size=1, name="counted")
    snap = Snapshot(id="s", volume=vol, name="s")
    clone = Volume(id="c", size=1, name="counted-clone")
    steps = [  # (operation, GET_VDI_INFO sent, leases taken, most round trips)
        # a lease never held here: read its first generation, then take it
        ("create", lambda: driver.create_volume(vol), 0, 1, 5),
        # its record now names the tag (one object write)
        ("snapshot", lambda: driver.create_snapshot(snap), 2, 0, 7),
        ("clone", lambda: driver.create_volume_from_snapshot(clone, snap), 1, 1, 6),
        ("extend", lambda: driver.extend_volume(clone, 2), 1, 0, 3),
        ("show", lambda: driver.describe_volume(vol), 1, 0, 2),
        ("delete clone", lambda: driver.delete_volume(clone), 1, 0, 4),
        ("delete snapshot", lambda: driver.delete_snapshot(snap), 1, 0, 4),
        ("delete volume", lambda: driver.delete_volume(vol), 1, 0, 4),
    ]
    for what, step, lookups, takes, trips in steps:
        with sent() as counts:
            step()
        assert not SLOW & set(counts.ops), (what, counts.ops)
        assert counts.ops["GET_VDI_INFO"] == lookups, (what, counts.ops)
        assert counts.ops["GET_VDI_ATTR"] == takes, (what, counts.ops)
        assert counts.trips <= trips, (what, counts.trips, counts.ops)
    assert driver.client.find_vdi("counted") is None
    assert driver.client.find_vdi("counted-clone") is None
    assert driver.client.list_snapshots("counted") == []


def test_describe_lists_what_was_made(driver: SheepdogDriver) -> None:
    vol = Volume(id="v", size=1, name="described")
    driver.create_volume(vol)
    for tag in ("a", "b"):
        driver.create_snapshot(Snapshot(id=tag, volume=vol, name=tag))
    driver.extend_volume(vol, 3)
    out = driver.describe_volume(vol)
    assert out["size_bytes"] == 3 << 30
    assert [s["tag"] for s in out["snapshots"]] == ["a", "b"]


def test_a_known_inode_of_something_else_is_refused(driver: SheepdogDriver,
                                                    tmp_path: pathlib.Path) -> None:
    """known= skips a lookup, so a VdiInfo of another VDI must never be acted
    on: deleting snapshot 's' with the working VDI's inode would clear the
    working VDI's slots."""
    client = driver.client
    client.create_vdi("k", 8 << 20)
    client.write("k", 0, b"kept" * 1024)
    client.snapshot_vdi("k", "s")
    working, snap = client.find_vdi("k"), client.find_vdi("k", "s")
    assert working is not None and snap is not None
    for call in (lambda: client.delete_vdi("k", "s", known=working),
                 lambda: client.delete_vdi("k", known=snap),
                 lambda: client.resize_vdi("k", 16 << 20, known=snap),
                 lambda: client.snapshot_vdi("k", "t", known=snap),
                 lambda: client.delete_vdi("other", known=working)):
        with pytest.raises(InvalidInput):
            call()
    assert client.read("k", 0, 4096) == b"kept" * 1024
    assert client.find_vdi("k", "s") == snap
    assert [s.tag for s in client.list_snapshots("k")] == ["s"]
    assert client.delete_vdi("k", "s", known=snap)
    assert client.find_vdi("k", "s") is None
