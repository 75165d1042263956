"""Hypothesis strategies for codec values (shared by the protocol tests)."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import strategies as st

from sheepdog_backend.protocol.constants import Flag, Opcode
from sheepdog_backend.protocol.header import (
    ClusterDefaultResponse,
    ClusterRequest,
    HashResponse,
    NodeResponse,
    ObjRequest,
    ObjResponse,
    RawRequest,
    RawResponse,
    Request,
    RequestBody,
    Response,
    ResponseBody,
    VdiRequest,
    VdiResponse,
    VdiStateRequest,
    request_body_class,
    response_body_class,
)
from sheepdog_backend.protocol.structs import NodeId, SdNode

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
vids = st.integers(0, (1 << 24) - 1)

REQUEST_BODIES: list[type[RequestBody]] = [
    ObjRequest, VdiRequest, ClusterRequest, VdiStateRequest, RawRequest]
RESPONSE_BODIES: list[type[ResponseBody]] = [
    ObjResponse, VdiResponse, NodeResponse, HashResponse, ClusterDefaultResponse, RawResponse]


def body_of(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Any value of a union variant: every field, reserved bytes included."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, limit in cls.FIELDS:
        default = getattr(cls(), name)
        if isinstance(default, bytes):
            fields[name] = st.binary(min_size=limit, max_size=limit)
        else:
            fields[name] = st.integers(0, limit)
    return st.builds(cls, **fields)


def _opcodes_for(table: Any, cls: type[Any]) -> list[int]:
    return [op for op in range(256) if table(op) is cls]


REQUEST_OPCODES = {cls: _opcodes_for(request_body_class, cls) for cls in REQUEST_BODIES}
RESPONSE_OPCODES = {cls: _opcodes_for(response_body_class, cls) for cls in RESPONSE_BODIES}
assert all(REQUEST_OPCODES.values()) and all(RESPONSE_OPCODES.values())


@st.composite
def requests(draw: st.DrawFn, body_cls: type[Any] | None = None,
             max_payload: int = 600) -> Request:
    cls = body_cls or draw(st.sampled_from(REQUEST_BODIES))
    opcode = draw(st.sampled_from(REQUEST_OPCODES[cls]))
    flags = draw(u16)
    if flags & Flag.WRITE:
        payload = draw(st.binary(max_size=max_payload))
        length = len(payload)
    else:
        payload = b""
        length = draw(u32)
    return Request(opcode=opcode, body=draw(body_of(cls)), flags=flags, id=draw(u32),
                   data_length=length, epoch=draw(u32), proto_ver=draw(u8), payload=payload)


@st.composite
def responses(draw: st.DrawFn, body_cls: type[Any] | None = None,
              max_payload: int = 600) -> Response:
    cls = body_cls or draw(st.sampled_from(RESPONSE_BODIES))
    opcode = draw(st.sampled_from(RESPONSE_OPCODES[cls]))
    payload = draw(st.binary(max_size=max_payload))
    return Response(opcode=opcode, result=draw(u32), body=draw(body_of(cls)), id=draw(u32),
                    epoch=draw(u32), flags=draw(u16), proto_ver=draw(u8), payload=payload,
                    data_length=len(payload))


ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), u32)
# IPv6 addresses whose first 12 bytes are zero are indistinguishable from IPv4
# on the wire (sheep's convention, §11.1): keep them out of object round trips.
ipv6 = st.integers(1 << 96, (1 << 128) - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
addresses = st.one_of(ipv4, ipv6)

node_ids = st.builds(NodeId, addr=addresses, port=u16,
                     io_addr=st.binary(min_size=16, max_size=16), io_port=u16,
                     pad=st.binary(min_size=4, max_size=4))
sd_nodes = st.builds(SdNode, nid=node_ids, nr_vnodes=u16, zone=u32, space=u64,
                     rb=st.binary(min_size=24, max_size=24), pad=u16)

# names as sheep stores them: no NUL, at most 256 bytes (a full field has no NUL)
field_strings = st.binary(max_size=256).map(lambda b: b.replace(b"\0", b"x"))
known_opcodes = st.sampled_from(list(Opcode))
