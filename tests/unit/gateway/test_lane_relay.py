"""The gateway's compiled lane (lane.py, _lane.c) in front of scripted nodes
(tests/unit/engine/fakenode.py), one client connection doing steady-state
object I/O as tgt does: reads and writes relayed by the lane and read back,
counted per volume; and every case the lane gives back to the relay's
judgment, which must end as it does without the lane: a node-state refusal
or a closed connection answered by another node, a cut answer failed over,
a new epoch opening the replay's window (the lane pauses, the writes are
kept), a snapshot pausing the lane, a client that goes quiet, and
``lane=False``."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from sheepdog_backend.client import requests as rq
from sheepdog_backend.gateway import Gateway
from sheepdog_backend.protocol.constants import SD_INODE_INDEX_OFFSET, Opcode, Result
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from tests.unit.engine.fakenode import FakeNode, read_answers
from tests.unit.gateway.scripted import gateway_on

VID = 0x42
OID = vid_to_data_oid(VID, 3)


class Client:
    """One connection, one request at a time (tgt's store)."""

    def __init__(self, gw: Gateway) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gw.port or 0), timeout=10)
        self.next_id = 1

    def call(self, request: Request) -> Response:
        self.next_id += 1
        self.sock.sendall(request.with_id(self.next_id).encode())
        (answer,) = read_answers(self.sock, 1)
        assert answer.id == self.next_id
        return answer

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


def _wire(gw: Gateway) -> dict[str, int]:
    wire: dict[str, int] = gw.stats()["wire"]
    return wire


def _warm(client: Client, gw: Gateway, requests: int = 2) -> None:
    """Requests until the lane holds the client's pair."""
    for _ in range(requests):
        assert client.call(rq.read_obj(OID, 0, 512)).ok
    _until(lambda: _wire(gw)["lane_pairs"] == 1)


def test_steady_state_reads_and_writes_go_through_the_lane(
        nodes: tuple[FakeNode, FakeNode]) -> None:
    first, _second = nodes
    with gateway_on(first) as gw:
        with Client(gw) as client:
            for i in range(40):
                write = client.call(rq.write_obj(OID, 4096 * i, bytes([i]) * 4096))
                read = client.call(rq.read_obj(OID, 4096 * i, 4096))
                assert write.ok and read.ok and read.payload == b"\x01" * 4096
        # the lane counts a request right after its answer went out
        _until(lambda: _wire(gw)["fast_requests"] == 80)
        wire = _wire(gw)
        vdi = gw.stats()["vdis"][f"{VID:x}"]
    assert first.writes == [(Opcode.WRITE_OBJ, bytes([i]) * 4096) for i in range(40)]
    assert wire["lane_requests"] >= 70  # all but the first few, taken on the loop
    assert wire["slow_requests"] == 0
    assert (vdi["reads"], vdi["writes"], vdi["errors"]) == (40, 40, 0)
    assert vdi["read_bytes"] == vdi["write_bytes"] == 40 * 4096


def test_a_large_read_through_the_lane_arrives_whole(nodes: tuple[FakeNode, FakeNode]) -> None:
    first, _second = nodes
    with gateway_on(first) as gw:
        with Client(gw) as client:
            _warm(client, gw)
            answer = client.call(rq.read_obj(OID, 0, 4 << 20))
        wire = _wire(gw)
    assert answer.ok and answer.payload == b"\x01" * (4 << 20)
    assert wire["lane_requests"] >= 1


@pytest.mark.parametrize("refusal", [Result.SHUTDOWN, "close", "cut"])
def test_a_refused_closed_or_cut_request_in_the_lane_is_answered_by_another_node(
        nodes: tuple[FakeNode, FakeNode], refusal: int | str) -> None:
    first, second = nodes
    with gateway_on(first, second) as gw:
        with Client(gw) as client:
            _warm(client, gw)
            first.then(Opcode.READ_OBJ, refusal)
            answer = client.call(rq.read_obj(OID, 0, 4096))
            again = client.call(rq.read_obj(OID, 0, 64))  # the connection still serves
        wire = _wire(gw)
    # answered in full after the failover path (the replay's probe may find the
    # first node well again before the retry, so either node may answer it)
    assert answer.ok and answer.payload in (b"\x01" * 4096, b"\x02" * 4096)
    assert again.ok and wire["slow_requests"] >= 1  # (the next may wait for a node check)
    key = "lane_returns_answer" if refusal == Result.SHUTDOWN else "lane_returns_upstream"
    assert wire[key] == 1


def test_a_real_error_in_the_lane_reaches_the_client_as_it_is(
        nodes: tuple[FakeNode, FakeNode]) -> None:
    first, _second = nodes
    with gateway_on(first) as gw:
        with Client(gw) as client:
            _warm(client, gw)
            first.then(Opcode.WRITE_OBJ, Result.READONLY)
            answer = client.call(rq.write_obj(OID, 0, b"x" * 512))
        wire = _wire(gw)
    assert answer.result == Result.READONLY and wire["lane_returns_answer"] == 1


def test_a_new_epoch_pauses_the_lane_and_the_replay_keeps_the_writes(
        nodes: tuple[FakeNode, FakeNode]) -> None:
    first, _second = nodes
    with gateway_on(first, settle_timeout=60.0) as gw:
        with Client(gw) as client:
            _warm(client, gw)
            first.epoch = 2  # the cluster changed: answers carry a higher epoch
            writes = [client.call(rq.write_obj(OID, 512 * i, bytes([i]) * 512))
                      for i in range(1, 4)]
            # kept right after its answer went out (the relay answers first)
            _until(lambda: gw.replay.kept_writes == 3)
            wire = _wire(gw)
            window = gw.replay.window_open
    assert all(w.ok for w in writes)
    assert window  # and every write acknowledged in it was kept (above)
    assert wire["lane_paused"] == 1 and wire["lane_pairs"] == 0
    assert wire["lane_returns_answer"] >= 1


def test_a_snapshot_pauses_the_lane_until_the_guard_is_done(
        nodes: tuple[FakeNode, FakeNode]) -> None:
    first, _second = nodes
    first.then(Opcode.NEW_VDI, "hold")  # the snapshot runs until released
    with gateway_on(first) as gw:
        with Client(gw) as writer, Client(gw) as snapshotter:
            _warm(writer, gw)
            snapshotter.sock.sendall(
                rq.new_vdi("v", 1 << 30, base_vid=VID, snapshot=True).with_id(9).encode())
            _until(lambda: _wire(gw)["lane_pairs"] == 0)  # the writer's pair came back
            time.sleep(0.6)  # a tick of the loop: the running snapshot holds the lane
            during = _wire(gw)["lane_paused"]
            assert writer.call(rq.write_obj(OID, 0, b"w" * 512)).ok
            first.release()
            assert read_answers(snapshotter.sock, 1)[0].id == 9
            _until(lambda: _wire(gw)["lane_paused"] == 0)
            for _ in range(3):  # back in the lane once the guard is done
                assert writer.call(rq.read_obj(OID, 0, 512)).ok
            _until(lambda: _wire(gw)["lane_pairs"] == 1)
    assert during == 1 and first.writes == [(Opcode.WRITE_OBJ, b"w" * 512)]


def test_a_volume_exported_by_two_hosts_pauses_the_lane() -> None:
    with FakeNode(fill=b"\x00") as node, gateway_on(node) as gw, Client(gw) as client:
        assert client.call(rq.read_obj(vid_to_vdi_oid(VID), 0, SD_INODE_INDEX_OFFSET)).ok
        _warm(client, gw)  # the LU's data reads, in the lane
        node.fill = b"\x01"  # its export hosts read 0x01010101 now: a second host
        _until(lambda: gw.stats()["shared_vdis"] == 1)  # the views' poll (every second)
        # its reads must be checked from now on: the lane pauses, the pair comes back
        _until(lambda: _wire(gw)["lane_paused"] == 1, seconds=1.0)
        _until(lambda: _wire(gw)["lane_pairs"] == 0, seconds=1.0)


def test_a_quiet_client_comes_back_from_the_lane(nodes: tuple[FakeNode, FakeNode]) -> None:
    first, _second = nodes
    with gateway_on(first) as gw:
        with Client(gw) as client:
            _warm(client, gw)
            _until(lambda: _wire(gw)["lane_returns_idle"] == 1)  # PAIR_IDLE later
            assert client.call(rq.read_obj(OID, 0, 64)).ok
        _until(lambda: _wire(gw)["connections"] == 0)
        assert _wire(gw)["lane_returns_closed"] + _wire(gw)["lane_returns_idle"] >= 1


def test_without_the_lane_everything_is_relayed_on_the_loop(
        nodes: tuple[FakeNode, FakeNode]) -> None:
    first, _second = nodes
    with gateway_on(first, lane=False) as gw:
        with Client(gw) as client:
            for _ in range(10):
                assert client.call(rq.read_obj(OID, 0, 64)).ok
        wire = _wire(gw)
    assert wire["fast_requests"] == 10 and "lane_requests" not in wire
