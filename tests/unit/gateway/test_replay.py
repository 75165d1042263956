"""The writes acknowledged while the cluster recovered are sent again once it
has (gateway/replay.py).  The cluster here keeps two copies of each object and
does what a real sheep 1.0 did when a node died under tgt's writes: a second,
late recovery of an object on the node taking it over renames the copy it read
before over writes that node had already acknowledged."""

from __future__ import annotations

import threading
import time

from sheepdog_backend.client import requests as rq
from sheepdog_backend.gateway.replay import NodeRecovery, RecoveryReplay
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import ObjRequest, Request, Response
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid

OBJ = vid_to_data_oid(0x4E3A5A, 1)
INODE = vid_to_vdi_oid(0x4E3A5A)
SIZE = 1 << 20


class TwoCopies:
    """Object bytes on two nodes; every acknowledged write lands on both."""

    def __init__(self) -> None:
        self.copies: list[dict[int, bytearray]] = [{}, {}]
        self.sent: list[Request] = []
        self.states = [NodeRecovery(1, False), NodeRecovery(1, False)]

    def forward(self, request: Request) -> Response:
        self.sent.append(request)
        body = request.body
        assert isinstance(body, ObjRequest)
        for copy in self.copies:
            if request.opcode == Opcode.CREATE_AND_WRITE_OBJ:
                copy[body.oid] = bytearray(SIZE)
            elif body.oid not in copy:
                return Response(opcode=request.opcode, result=Result.NO_OBJ)
            copy[body.oid][body.offset:body.offset + len(request.payload)] = request.payload
        return Response(opcode=request.opcode, result=Result.SUCCESS, epoch=2)

    def probe(self) -> list[NodeRecovery]:
        return list(self.states)

    def late_second_recovery(self, oid: int, stale: bytes) -> None:
        self.copies[1][oid] = bytearray(stale)


def through(replay: RecoveryReplay, cluster: TwoCopies, request: Request) -> Response:
    kept = replay.admit(request)
    response = cluster.forward(request)
    if kept:
        replay.settle(request, response)
    return response


def test_a_write_a_late_recovery_took_from_one_copy_is_on_both_after_the_recovery() -> None:
    # Fails on the code before (no replay): node 1's copy keeps the old bytes.
    cluster = TwoCopies()
    replay = RecoveryReplay(cluster.forward, cluster.probe)
    assert through(replay, cluster, rq.create_and_write_obj(INODE, 0, b"v" * 512)).ok
    assert through(replay, cluster, rq.create_and_write_obj(OBJ, 0, b"\x01" * 4096)).ok
    stale = bytes(cluster.copies[0][OBJ])
    replay.open(1)  # a node died under a request; epoch 1 before
    cluster.states = [NodeRecovery(2, True), NodeRecovery(2, True)]
    assert through(replay, cluster, rq.write_obj(OBJ, 4096, b"\x02" * 4096)).ok
    assert through(replay, cluster, rq.write_obj(INODE, 4668, b"\x5a\x3a\x4e\x00")).ok
    cluster.late_second_recovery(OBJ, stale)
    assert replay.poll() is False  # still recovering: nothing sent yet
    assert cluster.copies[1][OBJ][4096:8192] == bytes(4096)
    cluster.states = [NodeRecovery(2, False), NodeRecovery(2, False)]
    assert replay.poll() is True
    for copy in cluster.copies:
        assert copy[OBJ][:4096] == b"\x01" * 4096 and copy[OBJ][4096:8192] == b"\x02" * 4096
        assert copy[INODE][4668:4672] == b"\x5a\x3a\x4e\x00"
    assert replay.replays == 1 and replay.replayed == 2 and not replay.window_open


def test_a_create_is_sent_again_as_a_write_of_its_bytes_and_only_the_latest_bytes() -> None:
    cluster = TwoCopies()
    replay = RecoveryReplay(cluster.forward, cluster.probe)
    replay.open(1)
    through(replay, cluster, rq.create_and_write_obj(OBJ, 0, b"\x01" * 4096))
    through(replay, cluster, rq.write_obj(OBJ, 8192, b"\x03" * 4096))
    through(replay, cluster, rq.write_obj(OBJ, 0, b"\x04" * 4096))  # same range, newer
    cluster.sent.clear()
    cluster.states = [NodeRecovery(2, False), NodeRecovery(2, False)]
    assert replay.poll()
    assert [(r.opcode, r.body.offset, r.payload[:1]) for r in cluster.sent] == [  # type: ignore[union-attr]
        (Opcode.WRITE_OBJ, 8192, b"\x03"), (Opcode.WRITE_OBJ, 0, b"\x04")]
    assert cluster.copies[1][OBJ][8192:12288] == b"\x03" * 4096  # not zeroed by a create


def test_no_higher_epoch_in_time_is_a_connection_failure_and_nothing_is_sent() -> None:
    now = [100.0]
    cluster = TwoCopies()
    replay = RecoveryReplay(cluster.forward, cluster.probe, settle_timeout=10.0,
                            clock=lambda: now[0])
    replay.open(1)
    cluster.copies[0][OBJ] = cluster.copies[1][OBJ] = bytearray(SIZE)
    through(replay, cluster, rq.write_obj(OBJ, 0, b"\x07" * 512))
    sent = len(cluster.sent)
    assert replay.poll() is False and replay.window_open  # epoch 1 still: wait
    now[0] += 11
    assert replay.poll() is False and not replay.window_open
    assert len(cluster.sent) == sent and replay.dropped_windows == 1


def test_writes_wait_for_a_replay_and_a_replay_for_the_writes_in_flight() -> None:
    cluster = TwoCopies()
    cluster.copies[0][OBJ] = bytearray(SIZE)
    cluster.copies[1][OBJ] = bytearray(SIZE)
    replay = RecoveryReplay(cluster.forward, cluster.probe)
    replay.open(1)
    through(replay, cluster, rq.write_obj(OBJ, 0, b"\x01" * 512))
    in_flight = rq.write_obj(OBJ, 512, b"\x02" * 512)
    assert replay.admit(in_flight)  # sent, not yet answered
    cluster.states = [NodeRecovery(2, False), NodeRecovery(2, False)]
    poller = threading.Thread(target=replay.poll)
    poller.start()
    time.sleep(0.2)
    assert poller.is_alive()  # waits for the write in flight
    late = rq.write_obj(OBJ, 0, b"\x09" * 512)
    waiter = threading.Thread(target=through, args=(replay, cluster, late))
    waiter.start()
    time.sleep(0.1)
    replay.settle(in_flight, cluster.forward(in_flight))
    poller.join(5)
    waiter.join(5)
    assert not poller.is_alive() and not waiter.is_alive()
    # The newer write came after the replay, so the replay did not undo it.
    assert cluster.copies[1][OBJ][:512] == b"\x09" * 512
    assert cluster.copies[1][OBJ][512:1024] == b"\x02" * 512


def test_a_zero_budget_keeps_nothing() -> None:
    cluster = TwoCopies()
    replay = RecoveryReplay(cluster.forward, cluster.probe, budget=0)
    replay.open(1)
    assert not replay.window_open
    assert replay.admit(rq.write_obj(OBJ, 0, b"x")) is False
