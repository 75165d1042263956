"""Request builders for handler tests (the real codec, no sockets)."""

from __future__ import annotations

import struct
from pathlib import Path

from sheepdog_backend.protocol.constants import SD_INODE_SIZE, VID_BITMAP_SIZE, Flag, Opcode
from sheepdog_backend.protocol.header import (
    ObjRequest,
    Request,
    Response,
    VdiRequest,
    decode_request,
    decode_response,
)
from sheepdog_backend.protocol.inode import InodeHeader, slot_offset
from sheepdog_backend.protocol.naming import encode_name, encode_name_tag, pad_field
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.server.embedded import format_request
from sheepdog_backend.server.handler import Handler
from sheepdog_backend.server.state import ServerState

CTIME = (1_700_000_000 << 32) | 5000


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def open_handler(path: Path, *, fmt: bool = True, flags: int = 0x4) -> Handler:
    handler = Handler(ServerState(path, sync=False, clock=Clock()))
    if fmt:
        req = format_request(1, CTIME)
        body = req.body.__class__(ctime=CTIME, copies=1, flags=flags)  # type: ignore[call-arg]
        assert call(handler, Request(req.opcode, body, flags=1, data_length=6,
                                     payload=b"plain\0")).ok
    return handler


def call(handler: Handler, request: Request) -> Response:
    """Round-trip through the codec both ways, as the network loop would."""
    response = handler.handle(decode_request(request.encode()))
    return decode_response(response.encode())


def new_vdi(name: str, size: int = 1 << 30, *, base: int = 0, snapid: int = 0,
            copies: int = 0, shift: int = 0) -> Request:
    payload = encode_name(name)
    return Request(Opcode.NEW_VDI, VdiRequest(vdi_size=size, base_vdi_id=base, snapid=snapid,
                                              copies=copies, block_size_shift=shift),
                   flags=Flag.WRITE, data_length=256, payload=payload)


def vdi_op(op: int, name: str, tag: str = "", snapid: int = 0) -> Request:
    payload = encode_name_tag(name, tag)
    return Request(op, VdiRequest(snapid=snapid), flags=Flag.WRITE, data_length=512,
                   payload=payload)


def lookup(name: str, tag: str = "", snapid: int = 0) -> Request:
    return vdi_op(Opcode.GET_VDI_INFO, name, tag, snapid)


def read_obj(oid: int, length: int, offset: int = 0) -> Request:
    return Request(Opcode.READ_OBJ, ObjRequest(oid=oid, offset=offset), data_length=length)


def write_obj(oid: int, data: bytes, offset: int = 0, *, create: bool = False,
              cow: int = 0) -> Request:
    op = Opcode.CREATE_AND_WRITE_OBJ if create else Opcode.WRITE_OBJ
    flags = Flag.WRITE | (Flag.COW if cow else 0)
    return Request(op, ObjRequest(oid=oid, cow_oid=cow, offset=offset, copies=1), flags=flags,
                   data_length=len(data), payload=data)


def set_slot(vid: int, idx: int, value: int) -> Request:
    return write_obj(vid_to_vdi_oid(vid), struct.pack("<I", value), slot_offset(idx))


def write_data(handler: Handler, vid: int, idx: int, data: bytes, offset: int = 0,
               cow_vid: int = 0) -> None:
    """What dog does for one chunk: create (maybe COW) then point the slot at it."""
    cow = vid_to_data_oid(cow_vid, idx) if cow_vid else 0
    assert call(handler, write_obj(vid_to_data_oid(vid, idx), data, offset, create=True,
                                   cow=cow)).ok
    assert call(handler, set_slot(vid, idx, vid)).ok


def header(handler: Handler, vid: int) -> InodeHeader:
    rsp = call(handler, read_obj(vid_to_vdi_oid(vid), 4664))
    assert rsp.ok
    return InodeHeader.decode(rsp.payload)


def bitmap(handler: Handler, deleted: bool = False) -> bytes:
    op = Opcode.READ_DEL_VDIS if deleted else Opcode.READ_VDIS
    rsp = call(handler, Request(op, data_length=VID_BITMAP_SIZE))
    assert rsp.ok
    return rsp.payload


def whole_inode(handler: Handler, vid: int) -> bytes:
    rsp = call(handler, read_obj(vid_to_vdi_oid(vid), SD_INODE_SIZE))
    assert rsp.ok
    return rsp.payload


def tag_field(tag: str) -> bytes:
    return pad_field(tag.encode(), 256)
