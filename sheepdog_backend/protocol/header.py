"""Request and response headers (48 bytes each, sheepdog-protocol.md §3).

Bytes 0-15 are common to every message; bytes 16-47 (requests) or 20-47
(responses) are a per-opcode union.  Each union variant is a frozen dataclass
that covers *all* of its bytes, reserved ones included, so decoding then
encoding any header gives back the same 48 bytes.  Which variant applies is
decided by the opcode (``request_body_class`` / ``response_body_class``).

Pure code: bytes in, typed objects out.  No sockets, clocks or logging.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol, TypeVar, Union

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.constants import (
    HEADER_SIZE,
    Flag,
    Opcode,
    Result,
    proto_ver_for,
)

# proto_ver u8, opcode u8, flags u16, epoch u32, id u32, data_length u32
COMMON = struct.Struct("<BBHIII")
RESULT = struct.Struct("<I")

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _check_uint(name: str, value: int, limit: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ProtocolError(f"{name}={value!r} does not fit its field", remote=False)


class _Body(Protocol):
    SIZE: ClassVar[int]

    def pack(self) -> bytes: ...


B = TypeVar("B", bound="_BodyBase")


class _BodyBase:
    """Shared pack/unpack for union variants described by STRUCT and FIELDS."""

    STRUCT: ClassVar[struct.Struct]
    FIELDS: ClassVar[tuple[tuple[str, int], ...]]  # (name, max value)
    SIZE: ClassVar[int]

    def pack(self) -> bytes:
        values = []
        for name, limit in self.FIELDS:
            value = getattr(self, name)
            if isinstance(value, bytes):
                if len(value) != limit:
                    raise ProtocolError(f"{name} must be {limit} bytes", remote=False)
            else:
                _check_uint(name, value, limit)
            values.append(value)
        return self.STRUCT.pack(*values)

    @classmethod
    def unpack(cls: type[B], data: bytes | memoryview) -> B:
        return cls(*cls.STRUCT.unpack(data))


# ---------------------------------------------------------------------------
# Request union variants (32 bytes, header offsets 16..47)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjRequest(_BodyBase):
    """Object I/O: CREATE_AND_WRITE/READ/WRITE/REMOVE/DISCARD, EXIST, GET_HASH."""

    oid: int = 0
    cow_oid: int = 0
    copies: int = 0
    copy_policy: int = 0
    ec_index: int = 0
    reserved: int = 0
    tgt_epoch: int = 0
    offset: int = 0
    pad: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QQBBBBIII")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("oid", _U64), ("cow_oid", _U64), ("copies", _U8), ("copy_policy", _U8),
        ("ec_index", _U8), ("reserved", _U8), ("tgt_epoch", _U32), ("offset", _U32),
        ("pad", _U32),
    )
    SIZE: ClassVar[int] = 32


@dataclass(frozen=True, slots=True)
class VdiRequest(_BodyBase):
    """VDI ops: NEW_VDI, LOCK/RELEASE_VDI, GET_VDI_INFO, DEL_VDI, GET_VDI_ATTR."""

    vdi_size: int = 0
    base_vdi_id: int = 0
    copies: int = 0
    copy_policy: int = 0
    store_policy: int = 0
    block_size_shift: int = 0
    snapid: int = 0
    type: int = 0
    unused: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QIBBBBIIQ")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("vdi_size", _U64), ("base_vdi_id", _U32), ("copies", _U8), ("copy_policy", _U8),
        ("store_policy", _U8), ("block_size_shift", _U8), ("snapid", _U32), ("type", _U32),
        ("unused", _U64),
    )
    SIZE: ClassVar[int] = 32


@dataclass(frozen=True, slots=True)
class ClusterRequest(_BodyBase):
    """Cluster ops: MAKE_FS, STAT_CLUSTER, ALTER_CLUSTER_COPY."""

    oid: int = 0
    ctime: int = 0
    copies: int = 0
    copy_policy: int = 0
    flags: int = 0
    tag: int = 0
    nodes_nr: int = 0
    block_size_shift: int = 0
    reserved: bytes = b"\0\0\0"

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<QQBBHIIB3s")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("oid", _U64), ("ctime", _U64), ("copies", _U8), ("copy_policy", _U8),
        ("flags", _U16), ("tag", _U32), ("nodes_nr", _U32), ("block_size_shift", _U8),
        ("reserved", 3),
    )
    SIZE: ClassVar[int] = 32


@dataclass(frozen=True, slots=True)
class VdiStateRequest(_BodyBase):
    """NOTIFY_VDI_ADD / ALTER_VDI_COPY."""

    old_vid: int = 0
    new_vid: int = 0
    copies: int = 0
    set_bitmap: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    rest: bytes = bytes(20)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIBBBB20s")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("old_vid", _U32), ("new_vid", _U32), ("copies", _U8), ("set_bitmap", _U8),
        ("copy_policy", _U8), ("block_size_shift", _U8), ("rest", 20),
    )
    SIZE: ClassVar[int] = 32


@dataclass(frozen=True, slots=True)
class RawRequest(_BodyBase):
    """Opcodes whose union carries nothing we interpret: the 32 bytes as-is."""

    raw: bytes = bytes(32)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<32s")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (("raw", 32),)
    SIZE: ClassVar[int] = 32


RequestBody = Union[ObjRequest, VdiRequest, ClusterRequest, VdiStateRequest, RawRequest]

_OBJ_OPS = frozenset({
    Opcode.CREATE_AND_WRITE_OBJ, Opcode.READ_OBJ, Opcode.WRITE_OBJ, Opcode.REMOVE_OBJ,
    Opcode.DISCARD_OBJ, Opcode.FLUSH_VDI, Opcode.EXIST, Opcode.GET_HASH,
    Opcode.CREATE_AND_WRITE_PEER, Opcode.READ_PEER, Opcode.WRITE_PEER, Opcode.REMOVE_PEER,
    Opcode.DELETE_CACHE,
})
_VDI_OPS = frozenset({
    Opcode.NEW_VDI, Opcode.LOCK_VDI, Opcode.RELEASE_VDI, Opcode.GET_VDI_INFO,
    Opcode.DEL_VDI, Opcode.GET_VDI_ATTR,
})
_CLUSTER_OPS = frozenset({Opcode.MAKE_FS, Opcode.STAT_CLUSTER, Opcode.ALTER_CLUSTER_COPY})
_VDI_STATE_OPS = frozenset({Opcode.NOTIFY_VDI_ADD, Opcode.ALTER_VDI_COPY})


def request_body_class(opcode: int) -> type[RequestBody]:
    if opcode in _OBJ_OPS:
        return ObjRequest
    if opcode in _VDI_OPS:
        return VdiRequest
    if opcode in _CLUSTER_OPS:
        return ClusterRequest
    if opcode in _VDI_STATE_OPS:
        return VdiStateRequest
    return RawRequest


# ---------------------------------------------------------------------------
# Response union variants (28 bytes, header offsets 20..47)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjResponse(_BodyBase):
    copies: int = 0
    reserved: bytes = b"\0\0\0"
    offset: int = 0
    pad: bytes = bytes(16)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<B3sQ16s")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("copies", _U8), ("reserved", 3), ("offset", _U64), ("pad", 16),
    )
    SIZE: ClassVar[int] = 28


@dataclass(frozen=True, slots=True)
class VdiResponse(_BodyBase):
    rsvd: int = 0
    vdi_id: int = 0
    attr_id: int = 0
    copies: int = 0
    block_size_shift: int = 0
    reserved: int = 0
    pad: bytes = bytes(12)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIBBH12s")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("rsvd", _U32), ("vdi_id", _U32), ("attr_id", _U32), ("copies", _U8),
        ("block_size_shift", _U8), ("reserved", _U16), ("pad", 12),
    )
    SIZE: ClassVar[int] = 28


@dataclass(frozen=True, slots=True)
class NodeResponse(_BodyBase):
    nr_nodes: int = 0
    reserved0: int = 0
    reserved1: int = 0
    store_size: int = 0
    store_free: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<IIIQQ")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("nr_nodes", _U32), ("reserved0", _U32), ("reserved1", _U32),
        ("store_size", _U64), ("store_free", _U64),
    )
    SIZE: ClassVar[int] = 28


@dataclass(frozen=True, slots=True)
class HashResponse(_BodyBase):
    rsvd: int = 0
    digest: bytes = bytes(20)
    pad: int = 0

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<I20sI")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("rsvd", _U32), ("digest", 20), ("pad", _U32),
    )
    SIZE: ClassVar[int] = 28


@dataclass(frozen=True, slots=True)
class ClusterDefaultResponse(_BodyBase):
    nr_copies: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    pad: bytes = bytes(25)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<BBB25s")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("nr_copies", _U8), ("copy_policy", _U8), ("block_size_shift", _U8), ("pad", 25),
    )
    SIZE: ClassVar[int] = 28


@dataclass(frozen=True, slots=True)
class RawResponse(_BodyBase):
    raw: bytes = bytes(28)

    STRUCT: ClassVar[struct.Struct] = struct.Struct("<28s")
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (("raw", 28),)
    SIZE: ClassVar[int] = 28


ResponseBody = Union[
    ObjResponse, VdiResponse, NodeResponse, HashResponse, ClusterDefaultResponse, RawResponse
]

_NODE_RSP_OPS = frozenset({Opcode.GET_NODE_LIST, Opcode.STAT_SHEEP})


def response_body_class(opcode: int) -> type[ResponseBody]:
    if opcode in _OBJ_OPS and opcode != Opcode.GET_HASH:
        return ObjResponse
    if opcode in _VDI_OPS:
        return VdiResponse
    if opcode in _NODE_RSP_OPS:
        return NodeResponse
    if opcode == Opcode.GET_HASH:
        return HashResponse
    if opcode == Opcode.GET_CLUSTER_DEFAULT:
        return ClusterDefaultResponse
    return RawResponse


def result_response(request: Request, result: int, *, epoch: int = 0) -> Response:
    """The answer to ``request`` that carries only ``result``: an empty body of
    the opcode's kind, the request's id, no payload."""
    return Response(opcode=request.opcode, result=result,
                    body=response_body_class(request.opcode)(), id=request.id, epoch=epoch)


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A request header plus its payload (present only with Flag.WRITE).

    ``data_length`` is the payload length for WRITE requests and the size of
    the response buffer offered otherwise.
    """

    opcode: int
    body: RequestBody = field(default_factory=RawRequest)
    flags: int = 0
    id: int = 0
    data_length: int = 0
    epoch: int = 0
    proto_ver: int = -1  # -1: what dog sends for this opcode
    payload: bytes = b""

    @property
    def has_payload(self) -> bool:
        return bool(self.flags & Flag.WRITE)

    @property
    def effective_proto_ver(self) -> int:
        return proto_ver_for(self.opcode) if self.proto_ver < 0 else self.proto_ver

    def with_id(self, request_id: int) -> Request:
        return replace(self, id=request_id)

    def encode_header(self) -> bytes:
        _check_uint("opcode", self.opcode, _U8)
        _check_uint("flags", self.flags, _U16)
        _check_uint("epoch", self.epoch, _U32)
        _check_uint("id", self.id, _U32)
        _check_uint("data_length", self.data_length, _U32)
        _check_uint("proto_ver", self.effective_proto_ver, _U8)
        expected = request_body_class(self.opcode)
        if type(self.body) is not expected and not isinstance(self.body, RawRequest):
            raise ProtocolError(
                f"opcode {self.opcode:#x} takes {expected.__name__}, not "
                f"{type(self.body).__name__}", remote=False)
        if self.has_payload and len(self.payload) != self.data_length:
            raise ProtocolError("WRITE request: data_length must equal the payload length",
                                remote=False)
        if not self.has_payload and self.payload:
            raise ProtocolError("a payload needs Flag.WRITE", remote=False)
        return COMMON.pack(self.effective_proto_ver, self.opcode, self.flags, self.epoch,
                           self.id, self.data_length) + self.body.pack()

    def encode(self) -> bytes:
        return self.encode_header() + self.payload


@dataclass(frozen=True, slots=True)
class Response:
    """A response header plus exactly ``data_length`` payload bytes."""

    opcode: int
    result: int = Result.SUCCESS
    body: ResponseBody = field(default_factory=RawResponse)
    id: int = 0
    epoch: int = 0
    flags: int = 0
    proto_ver: int = 0
    payload: bytes = b""
    data_length: int = -1  # -1: len(payload)

    @property
    def effective_data_length(self) -> int:
        return len(self.payload) if self.data_length < 0 else self.data_length

    @property
    def ok(self) -> bool:
        return self.result == Result.SUCCESS

    def encode_header(self) -> bytes:
        _check_uint("opcode", self.opcode, _U8)
        _check_uint("flags", self.flags, _U16)
        _check_uint("epoch", self.epoch, _U32)
        _check_uint("id", self.id, _U32)
        _check_uint("proto_ver", self.proto_ver, _U8)
        _check_uint("result", self.result, _U32)
        length = self.effective_data_length
        _check_uint("data_length", length, _U32)
        return (COMMON.pack(self.proto_ver, self.opcode, self.flags, self.epoch, self.id,
                            length)
                + RESULT.pack(self.result) + self.body.pack())

    def encode(self) -> bytes:
        if self.effective_data_length != len(self.payload):
            raise ProtocolError("response data_length must equal the payload length",
                                remote=False)
        return self.encode_header() + self.payload


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """A decoded request header, before its payload has arrived."""

    proto_ver: int
    opcode: int
    flags: int
    epoch: int
    id: int
    data_length: int
    body: RequestBody

    def with_payload(self, payload: bytes) -> Request:
        return Request(opcode=self.opcode, body=self.body, flags=self.flags, id=self.id,
                       data_length=self.data_length, epoch=self.epoch,
                       proto_ver=self.proto_ver, payload=payload)

    @property
    def payload_length(self) -> int:
        return self.data_length if self.flags & Flag.WRITE else 0


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    proto_ver: int
    opcode: int
    flags: int
    epoch: int
    id: int
    data_length: int
    result: int
    body: ResponseBody

    def with_payload(self, payload: bytes) -> Response:
        return Response(opcode=self.opcode, result=self.result, body=self.body, id=self.id,
                        epoch=self.epoch, flags=self.flags, proto_ver=self.proto_ver,
                        payload=payload, data_length=self.data_length)

    @property
    def payload_length(self) -> int:
        return self.data_length


def _check_len(data: bytes | memoryview) -> None:
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"a header is {HEADER_SIZE} bytes, got {len(data)}")


def decode_request_header(data: bytes | memoryview) -> RequestHeader:
    _check_len(data)
    proto_ver, opcode, flags, epoch, rid, length = COMMON.unpack_from(data, 0)
    body = request_body_class(opcode).unpack(bytes(data[16:48]))
    return RequestHeader(proto_ver, opcode, flags, epoch, rid, length, body)


def decode_response_header(data: bytes | memoryview) -> ResponseHeader:
    _check_len(data)
    proto_ver, opcode, flags, epoch, rid, length = COMMON.unpack_from(data, 0)
    (result,) = RESULT.unpack_from(data, 16)
    body = response_body_class(opcode).unpack(bytes(data[20:48]))
    return ResponseHeader(proto_ver, opcode, flags, epoch, rid, length, result, body)


def decode_request(data: bytes) -> Request:
    """Decode one complete request (header plus exact payload)."""
    header = decode_request_header(data[:HEADER_SIZE])
    payload = data[HEADER_SIZE:]
    if len(payload) != header.payload_length:
        raise ProtocolError(
            f"request payload is {len(payload)} bytes, header says {header.payload_length}")
    return header.with_payload(bytes(payload))


def decode_response(data: bytes) -> Response:
    header = decode_response_header(data[:HEADER_SIZE])
    payload = data[HEADER_SIZE:]
    if len(payload) != header.data_length:
        raise ProtocolError(
            f"response payload is {len(payload)} bytes, header says {header.data_length}")
    return header.with_payload(bytes(payload))
