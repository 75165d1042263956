"""Requests pipelined on one connection run concurrently and are answered in
completion order, matched by id (sheepdog-protocol.md §2.4); VDI/cluster ops
stay serialised in arrival order; a connection's requests in flight are capped.

Delays are injected by a Handler subclass that parks chosen requests on an
Event; every assertion is about the order of responses, never about time."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.protocol.constants import Flag, Opcode, Result
from sheepdog_backend.protocol.header import ObjRequest, Request, Response, VdiRequest
from sheepdog_backend.protocol.naming import encode_name, encode_name_tag
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.embedded import format_request
from sheepdog_backend.server.handler import Handler
from sheepdog_backend.server.server import SheepServer
from sheepdog_backend.server.state import ServerState
from sheepdog_backend.server.wire import RawConnection

WAIT = 10.0  # generous bound so a broken server fails instead of hanging


class GatedHandler(Handler):
    """Parks requests whose id is in ``gated`` until ``release`` is set."""

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self.gated: set[int] = set()
        self.release = threading.Event()
        self.entered: list[int] = []
        self.cond = threading.Condition()
        self.running = 0
        self.max_running = 0

    def handle(self, request: Request) -> Response:
        with self.cond:
            self.entered.append(request.id)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.cond.notify_all()
        try:
            if request.id in self.gated:
                assert self.release.wait(WAIT), "test never released the gate"
            return super().handle(request)
        finally:
            with self.cond:
                self.running -= 1

    def wait_entered(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.entered) >= count, WAIT)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[GatedHandler, SheepServer]]:
    handler = GatedHandler(ServerState(tmp_path / "sheep", sync=False))
    assert handler.handle(format_request(1, handler.state.now())).ok
    server = SheepServer(handler, ports=(0,), workers=4, max_inflight=3)
    server.start()
    try:
        yield handler, server
    finally:
        handler.release.set()
        server.stop()


def _new_vdi(name: str, rid: int) -> Request:
    return Request(Opcode.NEW_VDI, VdiRequest(vdi_size=1 << 30), flags=Flag.WRITE, id=rid,
                   data_length=256, payload=encode_name(name))


def _create(oid: int, data: bytes, rid: int) -> Request:
    return Request(Opcode.CREATE_AND_WRITE_OBJ, ObjRequest(oid=oid), flags=Flag.WRITE, id=rid,
                   data_length=len(data), payload=data)


def _read(oid: int, length: int, rid: int) -> Request:
    return Request(Opcode.READ_OBJ, ObjRequest(oid=oid), id=rid, data_length=length)


def _setup_objects(conn: RawConnection) -> tuple[int, dict[int, bytes]]:
    rsp = conn.call(_new_vdi("conc", 1))
    assert rsp.ok
    vid: int = rsp.body.vdi_id  # type: ignore[union-attr]
    blocks = {idx: os.urandom(4096) for idx in range(2)}
    for idx, data in blocks.items():
        assert conn.call(_create(vid_to_data_oid(vid, idx), data, 2)).ok
    return vid, blocks


def test_a_fast_request_overtakes_a_slow_one_on_the_same_connection(
        gated: tuple[GatedHandler, SheepServer]) -> None:
    handler, server = gated
    host, port = server.addresses[0]
    with RawConnection(host, port, timeout=WAIT) as conn:
        vid, blocks = _setup_objects(conn)
        handler.gated.add(100)
        conn.send(_read(vid_to_data_oid(vid, 0), 4096, 100))  # parked until released
        conn.send(_read(vid_to_data_oid(vid, 1), 4096, 200))
        first = conn.recv()  # a server answering in order would time out here
        assert first.id == 200 and first.payload == blocks[1]
        handler.release.set()
        second = conn.recv()
        assert second.id == 100 and second.payload == blocks[0]


def test_cluster_ops_stay_serialised_in_arrival_order(
        gated: tuple[GatedHandler, SheepServer]) -> None:
    handler, server = gated
    host, port = server.addresses[0]
    with RawConnection(host, port, timeout=WAIT) as conn:
        vid, blocks = _setup_objects(conn)
        handler.gated.add(10)
        entered = len(handler.entered)
        conn.send(Request(Opcode.GET_VDI_INFO, VdiRequest(), flags=Flag.WRITE, id=10,
                          data_length=512, payload=encode_name_tag("conc")))
        handler.wait_entered(entered + 1)  # the lookup is parked in the handler
        conn.send(_new_vdi("second", 20))  # queued behind the lookup
        conn.send(_read(vid_to_data_oid(vid, 0), 4096, 30))  # object I/O runs alongside
        first = conn.recv()
        assert first.id == 30 and first.payload == blocks[0]
        assert 20 not in handler.entered  # NEW_VDI did not start while the lookup runs
        handler.release.set()
        lookup, create = conn.recv(), conn.recv()
        assert (lookup.id, lookup.result) == (10, Result.SUCCESS)
        assert lookup.body.vdi_id == vid  # type: ignore[union-attr]
        assert (create.id, create.result) == (20, Result.SUCCESS)


def test_requests_in_flight_per_connection_are_capped(
        gated: tuple[GatedHandler, SheepServer]) -> None:
    handler, server = gated  # max_inflight=3, 4 workers
    host, port = server.addresses[0]
    with RawConnection(host, port, timeout=WAIT) as conn:
        vid, blocks = _setup_objects(conn)
        handler.max_running = 0
        base = len(handler.entered)
        handler.gated.update(range(100, 108))
        for i in range(8):
            conn.send(_read(vid_to_data_oid(vid, i % 2), 4096, 100 + i))
        handler.wait_entered(base + 3)
        # three are parked in the handler; the other five wait unread
        with handler.cond:
            assert handler.running == 3
        handler.release.set()
        got = {}
        for _ in range(8):
            rsp = conn.recv()
            got[rsp.id] = rsp.payload
        assert got == {100 + i: blocks[i % 2] for i in range(8)}
        assert handler.max_running == 3


def test_a_malformed_frame_closes_only_its_connection_after_answering(
        gated: tuple[GatedHandler, SheepServer]) -> None:
    handler, server = gated
    host, port = server.addresses[0]
    with RawConnection(host, port, timeout=WAIT) as other, \
            RawConnection(host, port, timeout=WAIT) as conn:
        vid, blocks = _setup_objects(conn)
        handler.gated.add(7)
        conn.send(_read(vid_to_data_oid(vid, 0), 4096, 7))
        conn.send_raw(b"\x02\x03\x01\x00" + b"\xff" * 44)  # announces a 4 GiB payload
        conn.sock.shutdown(socket.SHUT_WR)
        # the other connection is served while the bad one's request is parked
        assert other.call(_read(vid_to_data_oid(vid, 1), 4096, 8)).payload == blocks[1]
        handler.release.set()
        rsp = conn.recv()  # the request read before the bad frame is still answered
        assert rsp.id == 7 and rsp.payload == blocks[0]
        with pytest.raises(Exception):  # noqa: B017 - closed: ConnectionClosed or OSError
            conn.recv()
        assert other.call(_read(vid_to_data_oid(vid, 0), 4096, 9)).payload == blocks[0]


def test_stop_joins_every_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    handler = Handler(ServerState(tmp_path / "sheep", sync=False))
    assert handler.handle(format_request(1, handler.state.now())).ok
    server = SheepServer(handler, ports=(0, 0), workers=3)
    server.start()
    conns = [RawConnection(*server.addresses[i % 2], timeout=WAIT) for i in range(4)]
    try:
        for i, conn in enumerate(conns):
            assert conn.call(_new_vdi(f"v{i}", 1)).ok
            rsp = conn.call(_new_vdi(f"v{i}", 1))
            assert rsp.result == Result.VDI_EXIST
    finally:
        server.stop()
        for conn in conns:
            conn.close()
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []
