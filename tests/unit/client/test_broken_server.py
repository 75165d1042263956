"""The client against a broken server (issue 9, item 7).

A scripted loopback peer serves one small VDI the way sheep does, except for
one corrupted field or payload per case.  Every public call must then end
within its deadline (the retry policy's) with a SheepdogError subclass: never
a bare ValueError, never a run of requests that outlasts the deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.exception import SheepdogError
from sheepdog_backend.protocol.constants import SD_INODE_DATA_INDEX, Opcode, Result
from sheepdog_backend.protocol.header import ObjRequest, Request, Response, VdiResponse
from sheepdog_backend.protocol.inode import InodeHeader, slot_offset
from sheepdog_backend.protocol.oid import is_vdi_obj, oid_to_vid
from tests.unit.client.loopback import PeerConn, ScriptedPeer

VID = 0x7C2B25
SHIFT = 22
SIZE = 16 << 20
DEADLINE = 2.0
MARGIN = 8.0  # the machine is loaded: generous, yet far below the minutes seen before


def _header(**changes: object) -> bytes:
    hdr = InodeHeader(name=b"v", vdi_size=SIZE, nr_copies=1, block_size_shift=SHIFT,
                      vdi_id=VID, create_time=1)
    return hdr.evolve(**changes).encode()  # type: ignore[arg-type]


class BrokenSheep:
    """Answers like sheep for VDI 'v' (vid VID, objects 0 and 1 allocated)
    unless a corruption hook changes the answer."""

    def __init__(self, corrupt: Callable[[Request, Response], Response] | None = None
                 ) -> None:
        self.corrupt = corrupt or (lambda req, rsp: rsp)

    def answer(self, req: Request) -> Response:
        body = req.body
        if req.opcode in (Opcode.GET_VDI_INFO, Opcode.LOCK_VDI):
            return Response(req.opcode, body=VdiResponse(vdi_id=VID, copies=1,
                                                         block_size_shift=SHIFT))
        if req.opcode == Opcode.READ_OBJ and isinstance(body, ObjRequest):
            n = req.data_length
            if is_vdi_obj(body.oid) and oid_to_vid(body.oid) == VID:
                image = bytearray(_header())
                image += bytes(max(0, slot_offset(SD_INODE_DATA_INDEX - 1) + 4 - len(image)))
                image[slot_offset(0):slot_offset(2)] = VID.to_bytes(4, "little") * 2
                return Response(req.opcode, payload=bytes(image[body.offset:body.offset + n]))
            if is_vdi_obj(body.oid):
                return Response(req.opcode, result=Result.NO_OBJ)
            return Response(req.opcode, payload=bytes([7]) * n)
        if req.opcode in (Opcode.READ_VDIS, Opcode.READ_DEL_VDIS):
            bitmap = bytearray(1 << 21)
            if req.opcode == Opcode.READ_VDIS:
                bitmap[VID >> 3] |= 1 << (VID & 7)
            return Response(req.opcode, payload=bytes(bitmap))
        if req.opcode == Opcode.STAT_CLUSTER:
            return Response(req.opcode, payload=b"")
        return Response(req.opcode, result=Result.SUCCESS)

    def __call__(self, req: Request, conn: PeerConn) -> None:
        rsp = self.corrupt(req, self.answer(req))
        conn.reply(Response(rsp.opcode, rsp.result, rsp.body, id=req.id,
                            payload=rsp.payload))


def _ends_typed(handler: BrokenSheep, call: Callable[[SheepdogClient], object], *,
               may_succeed: bool = False) -> None:
    """Run ``call`` in a thread (the old code could run for many minutes):
    it must end within the deadline plus a margin with a SheepdogError (or,
    with ``may_succeed``, a result: garbage that decodes is still data)."""
    outcome: list[BaseException | object] = []
    with ScriptedPeer(handler) as peer:
        client = SheepdogClient([peer.address], request_timeout=1.0,
                                retry=RetryPolicy(attempts=3, deadline=DEADLINE,
                                                  base_backoff=0.01, max_backoff=0.05))

        def run() -> None:
            try:
                outcome.append(call(client))
            except BaseException as exc:
                outcome.append(exc)
        start = time.monotonic()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(DEADLINE + MARGIN)
        took = time.monotonic() - start
        client.close()
    t.join(10)  # the peer is gone: a call still running fails now
    assert took < DEADLINE + MARGIN, f"the call ran {took:.1f}s past its deadline"
    assert outcome, "the call did not end"
    if may_succeed and not isinstance(outcome[0], BaseException):
        return
    assert isinstance(outcome[0], SheepdogError), repr(outcome[0])


def _payload(make: Callable[[Request, Response], bytes], opcode: int,
             vdi_obj: bool | None = None) -> Callable[[Request, Response], Response]:
    def corrupt(req: Request, rsp: Response) -> Response:
        if req.opcode != opcode:
            return rsp
        if vdi_obj is not None and isinstance(req.body, ObjRequest) \
                and is_vdi_obj(req.body.oid) != vdi_obj:
            return rsp
        return Response(rsp.opcode, rsp.result, rsp.body, payload=make(req, rsp))
    return corrupt


def test_the_healthy_peer_serves_a_read() -> None:
    """The scripted sheep itself is sound: without corruption a read works."""
    with ScriptedPeer(BrokenSheep()) as peer, \
            SheepdogClient([peer.address], request_timeout=1.0) as client:
        assert client.read("v", (4 << 20) - 2, 4) == bytes([7]) * 4
        assert [v.vid for v in client.list_vdis()] == [VID]


READ_CORRUPTIONS = {
    "short data payload": _payload(lambda req, rsp: rsp.payload[:-1], Opcode.READ_OBJ,
                                   vdi_obj=False),
    "long data payload": _payload(lambda req, rsp: rsp.payload + b"x", Opcode.READ_OBJ,
                                  vdi_obj=False),
    "short header": _payload(lambda req, rsp: rsp.payload[:100], Opcode.READ_OBJ,
                             vdi_obj=True),
    "odd slot bytes": _payload(lambda req, rsp: rsp.payload[:-1]
                               if rsp.payload and len(rsp.payload) % 4 == 0
                               and len(rsp.payload) < 568 else rsp.payload,
                               Opcode.READ_OBJ, vdi_obj=True),
    "object size 0 in the header": _payload(
        lambda req, rsp: _header(block_size_shift=0)[:req.data_length]
        if isinstance(req.body, ObjRequest) and req.body.offset == 0 else rsp.payload,
        Opcode.READ_OBJ, vdi_obj=True),
    "object size 2^63": _payload(
        lambda req, rsp: _header(block_size_shift=63)[:req.data_length]
        if isinstance(req.body, ObjRequest) and req.body.offset == 0 else rsp.payload,
        Opcode.READ_OBJ, vdi_obj=True),
    "lookup says 2^200-byte objects": lambda req, rsp: Response(
        rsp.opcode, rsp.result, VdiResponse(vdi_id=VID, copies=1, block_size_shift=200))
    if req.opcode == Opcode.GET_VDI_INFO else rsp,
    "slot names a 32-bit vid": _payload(
        lambda req, rsp: b"\xff" * len(rsp.payload)
        if isinstance(req.body, ObjRequest) and req.body.offset >= slot_offset(0)
        else rsp.payload, Opcode.READ_OBJ, vdi_obj=True),
    "lookup names a 32-bit vid": lambda req, rsp: Response(
        rsp.opcode, rsp.result, VdiResponse(vdi_id=0xFFFFFFFF, copies=1,
                                            block_size_shift=SHIFT))
    if req.opcode == Opcode.GET_VDI_INFO else rsp,
    "lookup answers a foreign body": lambda req, rsp: Response(rsp.opcode, rsp.result)
    if req.opcode == Opcode.GET_VDI_INFO else rsp,
}


@pytest.mark.parametrize("case", sorted(READ_CORRUPTIONS))
def test_corrupted_reply_to_read_is_typed(case: str) -> None:
    _ends_typed(BrokenSheep(READ_CORRUPTIONS[case]),
                lambda c: c.read("v", (4 << 20) - 2, 4))


def _all_set(req: Request, rsp: Response) -> bytes:
    return b"\xff" * len(rsp.payload)


def _bitmap_all_set(req: Request, rsp: Response) -> Response:
    if req.opcode == Opcode.READ_VDIS:
        return Response(rsp.opcode, rsp.result, rsp.body, payload=b"\xff" * (1 << 21))
    return rsp


@pytest.mark.parametrize("call", ["list_vdis", "list_vdis_usage", "list_snapshots",
                                  "get_vdi"])
@pytest.mark.parametrize("garbage", ["bitmap of 2^24 VDIs", "inode headers"])
def test_garbage_payload_listing_ends_within_the_deadline(call: str, garbage: str) -> None:
    corrupt = _bitmap_all_set if garbage.startswith("bitmap") else _payload(
        _all_set, Opcode.READ_OBJ, vdi_obj=True)
    calls: dict[str, Callable[[SheepdogClient], object]] = {
        "list_vdis": lambda c: c.list_vdis(),
        "list_vdis_usage": lambda c: c.list_vdis(with_usage=True),
        "list_snapshots": lambda c: c.list_snapshots("v"),
        "get_vdi": lambda c: c.get_vdi("v"),
    }
    handler = BrokenSheep(corrupt)
    if garbage.startswith("bitmap"):
        # every probed inode answers, so the call never runs out of work by itself
        base = handler.answer

        def answer(req: Request) -> Response:
            body = req.body
            if req.opcode == Opcode.READ_OBJ and isinstance(body, ObjRequest) \
                    and is_vdi_obj(body.oid):
                return Response(req.opcode, payload=_header(
                    vdi_id=oid_to_vid(body.oid))[body.offset:body.offset + req.data_length])
            return base(req)
        handler.answer = answer  # type: ignore[method-assign]
    _ends_typed(handler, calls[call], may_succeed=True)
