"""SnapshotGuard's bookkeeping without a network: which writes are slot
writes, a snapshot gating new creates of its VDI until it is answered, and
creates held by nobody once the snapshot is done."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

from sheepdog_backend.client import requests as rq
from sheepdog_backend.gateway.snapshots import (
    SnapshotGuard,
    Ticket,
    slot_values,
    snapshot_base,
)
from sheepdog_backend.protocol.constants import (
    SD_INODE_GREF_OFFSET,
    SD_INODE_INDEX_OFFSET,
    Result,
)
from sheepdog_backend.protocol.header import (
    Request,
    Response,
    VdiResponse,
    decode_request,
    decode_response,
)
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid

V, W = 0xABC, 0xABD


def _never(request: Request) -> Response:
    raise AssertionError("no forwarding expected")


class EnteredClock:
    """The guard's clock, which also tells when the thread named ``thread``
    first read it: the guard reads its clock as a call begins, so the test
    knows the call has begun (a fixed sleep is too short on a loaded machine,
    where the thread may not have run yet)."""

    def __init__(self, thread: str, read: Callable[[], float] = time.monotonic) -> None:
        self.thread = thread
        self.read = read
        self.entered = threading.Event()

    def __call__(self) -> float:
        value = self.read()  # before telling: the caller holds this reading
        if threading.current_thread().name == self.thread:
            self.entered.set()
        return value


def test_slot_values_reads_only_the_data_vdi_id_array() -> None:
    oid = vid_to_vdi_oid(V)
    one = rq.write_obj(oid, SD_INODE_INDEX_OFFSET + 4 * 7, struct.pack("<I", V))
    assert slot_values(one) == (7, (V,))
    several = rq.write_obj(oid, SD_INODE_INDEX_OFFSET + 8, struct.pack("<3I", 0, V, V))
    assert slot_values(several) == (2, (0, V, V))
    header = rq.write_obj(oid, 0, bytes(SD_INODE_INDEX_OFFSET))
    assert slot_values(header) is None
    straddle = rq.write_obj(oid, SD_INODE_INDEX_OFFSET - 2, b"\0\0" + struct.pack("<I", V))
    assert slot_values(straddle) == (0, (V,))
    gref = rq.write_obj(oid, SD_INODE_GREF_OFFSET, bytes(8))
    assert slot_values(gref) is None
    assert slot_values(rq.write_obj(vid_to_data_oid(V, 1), 0, bytes(8))) is None


def test_snapshot_base_needs_a_snapid_and_a_base() -> None:
    assert snapshot_base(rq.new_vdi("v", 1 << 20, base_vid=V, snapshot=True)) == V
    assert snapshot_base(rq.new_vdi("v", 1 << 20, base_vid=V)) is None  # a clone
    assert snapshot_base(rq.new_vdi("v", 1 << 20)) is None


def test_a_snapshot_gates_new_creates_until_it_is_answered() -> None:
    clock = EnteredClock("create")
    guard = SnapshotGuard(_never, drain_timeout=5.0, gate_timeout=5.0, clock=clock)
    snap_req = rq.new_vdi("v", 1 << 20, base_vid=V, snapshot=True)
    snap = guard.before(snap_req)
    assert snap is not None and snap.first == 1  # nothing pending: drained at once
    admitted: list[float] = []
    create = rq.create_and_write_obj(vid_to_data_oid(V, 4), 0, b"x")
    other = rq.create_and_write_obj(vid_to_data_oid(W, 4), 0, b"x")
    assert guard.before(other) is not None  # another VDI is not held
    thread = threading.Thread(target=lambda: (guard.before(create),
                                              admitted.append(time.monotonic())),
                              name="create")
    thread.start()
    assert clock.entered.wait(10)  # the create is in the guard
    time.sleep(0.3)
    assert not admitted
    answered = time.monotonic()
    guard.after(snap, snap_req, Response(snap_req.opcode, body=VdiResponse(vdi_id=W)))
    thread.join(5)
    assert admitted and admitted[0] >= answered
    assert guard.working(V) == W and guard.working(W) == W


def test_a_failed_create_is_not_waited_for() -> None:
    guard = SnapshotGuard(_never, drain_timeout=5.0)
    create = rq.create_and_write_obj(vid_to_data_oid(V, 1), 0, b"x")
    ticket = guard.before(create)
    assert ticket is not None
    guard.after(ticket, create, Response(create.opcode, result=0x03))  # NO_OBJ
    start = time.monotonic()
    snap = guard.before(rq.new_vdi("v", 1 << 20, base_vid=V, snapshot=True))
    assert snap is not None and snap.first == 1 and time.monotonic() - start < 1.0


def test_a_snapshot_event_times_the_clusters_call_without_its_drain() -> None:
    now = [100.0]
    clock = EnteredClock("snapshot", lambda: now[0])
    guard = SnapshotGuard(_never, drain_timeout=5.0, clock=clock)
    create = rq.create_and_write_obj(vid_to_data_oid(V, 2), 0, b"x")
    pending = guard.before(create)
    assert pending is not None
    snap_req = rq.new_vdi("v", 1 << 20, base_vid=V, snapshot=True)
    snapped: list[Ticket | None] = []
    thread = threading.Thread(target=lambda: snapped.append(guard.before(snap_req)),
                              name="snapshot")
    thread.start()
    assert clock.entered.wait(10)  # the snapshot's drain began at 100.0
    time.sleep(0.2)
    assert thread.is_alive()  # it waits for the create's slot write
    now[0] = 100.5  # the create's slot write comes half a second later
    slot = rq.write_obj(vid_to_vdi_oid(V), SD_INODE_INDEX_OFFSET + 8, struct.pack("<I", V))
    slot_ticket = guard.before(slot)
    assert slot_ticket is not None
    guard.after(slot_ticket, slot, Response(slot.opcode))
    thread.join(5)
    ticket = snapped[0]
    assert ticket is not None
    now[0] = 100.8  # the cluster took 0.3 s
    guard.after(ticket, snap_req, Response(snap_req.opcode, body=VdiResponse(vdi_id=W)))
    (event,) = guard.events
    assert event.drained and event.drain_wait == 0.5 and abs(event.duration - 0.3) < 1e-9


def _wire(request: Request) -> Request:
    """``request`` as the gateway's wire loop gets it: encoded, then decoded."""
    return decode_request(request.encode())


def test_data_writes_of_a_vdi_just_snapshotted_are_refused_readonly_by_the_guard() -> None:
    now = [10.0]
    guard = SnapshotGuard(_never, readonly_window=30.0, clock=lambda: now[0])
    snap_req = _wire(rq.new_vdi("v", 1 << 20, base_vid=V, snapshot=True))
    snap = guard.before(snap_req)
    assert snap is not None
    answer = decode_response(Response(snap_req.opcode, body=VdiResponse(vdi_id=W),
                                      id=snap_req.id).encode())
    guard.after(snap, snap_req, answer)
    for request in (rq.create_and_write_obj(vid_to_data_oid(V, 4), 0, b"x" * 512),
                    rq.write_obj(vid_to_data_oid(V, 5), 4096, b"y" * 512)):
        wired = _wire(request.with_id(77))
        ticket = guard.before(wired)
        assert ticket is not None
        local = guard.local_answer(ticket, wired)
        assert local is not None
        refused = decode_response(guard.after(ticket, wired, local).encode())
        assert (refused.opcode, refused.result, refused.id) == \
            (wired.opcode, Result.READONLY, 77)
    assert guard.refused == 2
    # Still forwarded: the frozen inode's slot writes (re-applied to W), W's
    # own objects, and V's objects once the window is over.
    slot = _wire(rq.write_obj(vid_to_vdi_oid(V), SD_INODE_INDEX_OFFSET + 16,
                              struct.pack("<I", V)))
    create_w = _wire(rq.create_and_write_obj(vid_to_data_oid(W, 4), 0, b"x"))
    for request in (slot, create_w):
        ticket = guard.before(request)
        assert ticket is not None and guard.local_answer(ticket, request) is None
    now[0] = 40.5
    late = _wire(rq.create_and_write_obj(vid_to_data_oid(V, 6), 0, b"x"))
    ticket = guard.before(late)
    assert ticket is not None and guard.local_answer(ticket, late) is None
    assert guard.before(_wire(rq.write_obj(vid_to_data_oid(V, 5), 0, b"y"))) is None


def test_a_create_held_by_the_gate_is_refused_once_the_snapshot_is_answered() -> None:
    clock = EnteredClock("create")
    guard = SnapshotGuard(_never, gate_timeout=5.0, clock=clock)
    snap_req = rq.new_vdi("v", 1 << 20, base_vid=V, snapshot=True)
    snap = guard.before(snap_req)
    assert snap is not None
    create = _wire(rq.create_and_write_obj(vid_to_data_oid(V, 9), 0, b"x"))
    tickets: list[Ticket | None] = []
    thread = threading.Thread(target=lambda: tickets.append(guard.before(create)),
                              name="create")
    thread.start()
    assert clock.entered.wait(10)  # the create's wait began: it waits 0.2 s at least
    time.sleep(0.2)
    guard.after(snap, snap_req, Response(snap_req.opcode, body=VdiResponse(vdi_id=W)))
    thread.join(5)
    (ticket,) = tickets
    assert ticket is not None and ticket.waited >= 0.15
    local = guard.local_answer(ticket, create)
    assert local is not None and local.result == Result.READONLY
    # it never became pending: the next snapshot (of W) and one of V drain at once
    again = guard.before(rq.new_vdi("v", 1 << 20, base_vid=V, snapshot=True))
    assert again is not None and again.first == 1 and again.waited < 0.1
