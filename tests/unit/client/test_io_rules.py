"""Data-path rules that need a controllable peer: dependent requests are never
pipelined, unallocated ranges cost no request, slot runs cover changed slots only."""

from __future__ import annotations

import io
import threading
import time

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.client.vdi import slot_runs
from sheepdog_backend.exception import InvalidInput
from sheepdog_backend.protocol.constants import Opcode
from sheepdog_backend.protocol.header import ObjRequest, Request, Response, VdiResponse
from sheepdog_backend.protocol.inode import InodeHeader
from sheepdog_backend.protocol.oid import is_vdi_obj, oid_to_index, vid_to_vdi_oid
from tests.unit.client.loopback import PeerConn, ScriptedPeer

VID = 0x7C2B25
SHIFT = 22


class FakeVdi:
    """Answers lookups, head/slot reads, creates (slowly) and slot writes, and
    records every moment a slot write arrived while its create was unanswered."""

    def __init__(self, slots: list[int], size: int) -> None:
        self.slots = list(slots)
        self.hdr = InodeHeader(name=b"v", vdi_size=size, nr_copies=1, block_size_shift=SHIFT,
                               snap_id=1, vdi_id=VID).encode()
        self.unanswered_creates: set[int] = set()
        self.violations: list[int] = []
        self.data_requests = 0
        self.max_inflight = 0
        self.inflight = 0
        self.lock = threading.Lock()
        self.short = False  # data reads answer one byte less than asked
        self.slot_writes: list[tuple[int, int]] = []  # (first slot, count) of each

    @staticmethod
    def content(idx: int, offset: int, n: int) -> bytes:
        """What data object ``idx`` holds at [offset, offset+n): a pattern
        that differs per object and per position."""
        period = bytes((idx * 37 + i) % 251 for i in range(251))
        rep = period * ((offset % 251 + n) // 251 + 1)
        return rep[offset % 251:offset % 251 + n]

    def __call__(self, req: Request, conn: PeerConn) -> None:
        body = req.body
        if req.opcode == Opcode.GET_VDI_INFO:
            conn.reply(Response(req.opcode, id=req.id,
                                body=VdiResponse(vdi_id=VID, copies=1, block_size_shift=SHIFT)))
            return
        assert isinstance(body, ObjRequest)
        if req.opcode == Opcode.READ_OBJ and is_vdi_obj(body.oid):
            image = self.hdr + b"".join(s.to_bytes(4, "little") for s in self.slots)
            conn.reply(Response(req.opcode, id=req.id,
                                payload=image[body.offset:body.offset + req.data_length]))
        elif req.opcode == Opcode.WRITE_OBJ and body.oid == vid_to_vdi_oid(VID):
            first = (body.offset - 4664) // 4
            with self.lock:
                self.slot_writes.append((first, len(req.payload) // 4))
                for i in range(len(req.payload) // 4):
                    if first + i in self.unanswered_creates:
                        self.violations.append(first + i)
            conn.reply(Response(req.opcode, id=req.id))
        else:
            self.data_requests += 1
            idx = oid_to_index(body.oid)
            with self.lock:
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
                if req.opcode == Opcode.CREATE_AND_WRITE_OBJ:
                    self.unanswered_creates.add(idx)

            def later() -> None:
                time.sleep(0.05 if idx % 2 else 0.01)  # answers overtake each other
                with self.lock:
                    self.unanswered_creates.discard(idx)
                    self.inflight -= 1
                payload = b""
                if req.opcode == Opcode.READ_OBJ:
                    n = req.data_length - (1 if self.short else 0)
                    payload = self.content(idx, body.offset, n)
                conn.reply(Response(req.opcode, id=req.id, payload=payload))
            threading.Thread(target=later, daemon=True).start()


def client_for(peer: ScriptedPeer, window: int = 8) -> SheepdogClient:
    return SheepdogClient([peer.address], retry=RetryPolicy(attempts=1), io_window=window)


def test_slot_write_never_overtakes_its_create() -> None:
    fake = FakeVdi([0] * 8, 8 << SHIFT)
    with ScriptedPeer(fake) as peer, client_for(peer) as client:
        client.write("v", 100, b"\1" * ((8 << SHIFT) - 200))
        assert not peer.errors
    assert fake.violations == []
    assert fake.max_inflight > 1  # the creates themselves did overlap


def test_allocating_write_maps_its_objects_in_one_slot_write() -> None:
    """An import into an empty VDI: the creates complete out of order, yet the
    slots (one run, fewer than SLOT_FLUSH) go in a single WRITE_OBJ after the
    last create, as the raw floor sends them - every slot write is a durable
    request the node syncs before it answers."""
    fake = FakeVdi([0] * 8, 8 << SHIFT)
    with ScriptedPeer(fake) as peer, client_for(peer, window=3) as client:
        client.write_from_file("v", io.BytesIO(b"\1" * (8 << SHIFT)))
        assert not peer.errors
    assert fake.slot_writes == [(0, 8)]
    assert fake.violations == []


def test_window_bounds_requests_in_flight() -> None:
    fake = FakeVdi([VID] * 16, 16 << SHIFT)
    with ScriptedPeer(fake) as peer, client_for(peer, window=3) as client:
        want = b"".join(fake.content(i, 0, 1 << SHIFT) for i in range(16))
        assert client.read("v", 0, 16 << SHIFT) == want
    assert fake.max_inflight == 3


def test_unallocated_reads_and_zero_writes_send_no_data_request() -> None:
    fake = FakeVdi([0, VID, 0, 0], 4 << SHIFT)
    with ScriptedPeer(fake) as peer, client_for(peer) as client:
        want = bytes(1 << SHIFT) + fake.content(1, 0, 1 << SHIFT) + bytes(2 << SHIFT)
        assert client.read("v", 0, 4 << SHIFT) == want
        assert fake.data_requests == 1  # only the allocated object
        client.write("v", 2 << SHIFT, bytes(2 << SHIFT))  # zeros into unallocated: thin
        assert fake.data_requests == 1
        client.write("v", 1 << SHIFT, bytes(10))  # zeros into an allocated object: written
        assert fake.data_requests == 2


def test_unaligned_reads_assemble_in_order_into_bytes_and_files() -> None:
    slots = [VID, 0, VID, VID, 0, VID]
    fake = FakeVdi(slots, 6 << SHIFT)
    obj = 1 << SHIFT

    def expected(offset: int, length: int) -> bytes:
        out = bytearray()
        pos = offset
        while pos < offset + length:
            idx, in_off = divmod(pos, obj)
            n = min(obj - in_off, offset + length - pos)
            out += fake.content(idx, in_off, n) if slots[idx] else bytes(n)
            pos += n
        return bytes(out)
    with ScriptedPeer(fake) as peer, client_for(peer, window=3) as client:
        for offset, length in [(obj - 7, 3 * obj + 11), (12345, 100), (0, 6 * obj),
                               (5 * obj + 1, obj - 1), (obj, obj), (3, 0)]:
            got = client.read("v", offset, length)
            assert type(got) is bytes and got == expected(offset, length)
        sink = io.BytesIO()
        assert client.read_to_file("v", sink) == 6 * obj
        assert sink.getvalue() == expected(0, 6 * obj)
        assert not peer.errors


def test_short_data_read_is_an_error() -> None:
    fake = FakeVdi([VID, VID], 2 << SHIFT)
    fake.short = True
    with ScriptedPeer(fake) as peer, client_for(peer) as client:
        with pytest.raises(InvalidInput, match="short read"):
            client.read("v", 0, 2 << SHIFT)
        with pytest.raises(InvalidInput, match="short read"):
            client.read_to_file("v", io.BytesIO())


def test_slot_runs() -> None:
    assert slot_runs([0, 5, 5, 0, 0, 5]) == [(1, 6)]  # 2-slot zero gap merged
    assert slot_runs([5] + [0] * 20 + [5]) == [(0, 1), (21, 22)]
    assert slot_runs([5, 7, 7], changed=[True, False, True]) == [(0, 1), (2, 3)]  # 7 kept
    assert slot_runs([0, 0]) == []
