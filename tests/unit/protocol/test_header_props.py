"""Round trips of request/response headers for every union variant."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.constants import HEADER_SIZE, Flag, Opcode
from sheepdog_backend.protocol.header import (
    ClusterRequest,
    ObjRequest,
    RawRequest,
    Request,
    Response,
    VdiRequest,
    VdiResponse,
    decode_request,
    decode_request_header,
    decode_response,
    decode_response_header,
)

from .strategies import REQUEST_BODIES, RESPONSE_BODIES, body_of, requests, responses

PROPS = settings(max_examples=150, deadline=None)


@pytest.mark.parametrize("cls", REQUEST_BODIES, ids=lambda c: c.__name__)
@PROPS
@given(data=st.data())
def test_request_round_trip_per_variant(cls: type[Any], data: st.DataObject) -> None:
    request = data.draw(requests(cls))
    wire = request.encode()
    assert len(wire) == HEADER_SIZE + len(request.payload)
    decoded = decode_request(wire)
    assert decoded == request
    assert type(decoded.body) is cls
    assert decoded.encode() == wire
    header = decode_request_header(wire[:HEADER_SIZE])
    assert header.payload_length == len(request.payload)


@pytest.mark.parametrize("cls", RESPONSE_BODIES, ids=lambda c: c.__name__)
@PROPS
@given(data=st.data())
def test_response_round_trip_per_variant(cls: type[Any], data: st.DataObject) -> None:
    response = data.draw(responses(cls))
    wire = response.encode()
    decoded = decode_response(wire)
    assert decoded == response
    assert type(decoded.body) is cls
    assert decoded.encode() == wire
    assert decode_response_header(wire[:HEADER_SIZE]).data_length == len(response.payload)


@PROPS
@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_any_48_bytes_reencode_identically(raw: bytes) -> None:
    """Every variant covers all its bytes, reserved ones included."""
    no_write = raw[:2] + bytes([raw[2] & ~Flag.WRITE & 0xFF]) + raw[3:]  # no payload needed
    assert decode_request_header(no_write).with_payload(b"").encode_header() == no_write
    assert decode_response_header(raw).with_payload(b"").encode_header() == raw


@pytest.mark.parametrize("cls", REQUEST_BODIES + RESPONSE_BODIES, ids=lambda c: c.__name__)
@PROPS
@given(data=st.data())
def test_body_pack_unpack(cls: type[Any], data: st.DataObject) -> None:
    body = data.draw(body_of(cls))
    packed = body.pack()
    assert len(packed) == cls.SIZE == cls.STRUCT.size
    assert cls.unpack(packed) == body


def test_field_offsets_of_the_spec() -> None:
    """Spot-check §3.3/§3.4 offsets with distinct marker values."""
    req = Request(Opcode.READ_OBJ, ObjRequest(oid=0x1122334455667788, cow_oid=2, copies=3,
                                              copy_policy=4, ec_index=5, reserved=6,
                                              tgt_epoch=7, offset=0x123C, pad=9),
                  flags=Flag.DIRECT, id=0xAABBCCDD, data_length=10, epoch=11)
    wire = req.encode()
    assert wire[:4] == bytes([0x02, 0x02, 0x08, 0x00])
    assert wire[4:8] == (11).to_bytes(4, "little") and wire[8:12] == bytes.fromhex("ddccbbaa")
    assert wire[16:24] == bytes.fromhex("8877665544332211")
    assert wire[32:36] == bytes([3, 4, 5, 6]) and wire[40:44] == bytes.fromhex("3c120000")
    vdi = Request(Opcode.NEW_VDI, VdiRequest(vdi_size=20 << 20, base_vdi_id=0x7C2B25,
                                             copies=1, copy_policy=2, store_policy=3,
                                             block_size_shift=22, snapid=1, type=1),
                  flags=Flag.WRITE, data_length=256, payload=bytes(256)).encode()
    assert vdi[16:24] == bytes.fromhex("0000400100000000")
    assert vdi[24:32] == bytes.fromhex("252b7c0001020316")
    assert vdi[32:40] == bytes.fromhex("0100000001000000")
    cluster = Request(Opcode.MAKE_FS, ClusterRequest(ctime=5, copies=3, flags=4, nodes_nr=6,
                                                     block_size_shift=22)).encode()
    assert cluster[0] == 0x0A and cluster[32:36] == bytes([3, 0, 4, 0])
    assert cluster[40:45] == bytes([6, 0, 0, 0, 22])
    rsp = Response(Opcode.NEW_VDI, body=VdiResponse(vdi_id=0x7C2B25, copies=3,
                                                     block_size_shift=22)).encode()
    assert rsp.hex() == ("001100000000000000000000000000000000000000000000"
                         "252b7c000000000003160000000000000000000000000000")


def test_encoding_refuses_bad_values_without_sending_anything() -> None:
    bad = [
        Request(0x100),
        Request(Opcode.READ_OBJ, ObjRequest(oid=1 << 64)),
        Request(Opcode.READ_OBJ, ObjRequest(copies=256)),
        Request(Opcode.READ_OBJ, ObjRequest(copies=-1)),
        Request(Opcode.READ_OBJ, VdiRequest()),  # wrong variant for the opcode
        Request(Opcode.NEW_VDI, VdiRequest(), flags=Flag.WRITE, data_length=3, payload=b"ab"),
        Request(Opcode.READ_OBJ, ObjRequest(), payload=b"x"),  # payload without WRITE
        Request(Opcode.READ_OBJ, ObjRequest(), data_length=1 << 32),
        Request(Opcode.MAKE_FS, ClusterRequest(reserved=b"\0")),
    ]
    for request in bad:
        with pytest.raises(ProtocolError) as info:
            request.encode()
        assert info.value.remote is False
    with pytest.raises(ProtocolError):
        Response(Opcode.READ_OBJ, payload=b"abc", data_length=2).encode()
    with pytest.raises(ProtocolError):
        Response(Opcode.READ_OBJ, result=1 << 32).encode()


def test_raw_body_is_accepted_for_any_opcode() -> None:
    raw = bytes(range(32))
    wire = Request(Opcode.READ_OBJ, RawRequest(raw)).encode()
    assert wire[16:] == raw
    assert decode_request(wire).body == ObjRequest.unpack(raw)


def test_proto_ver_defaults_to_what_dog_sends() -> None:
    assert Request(Opcode.READ_OBJ, ObjRequest()).encode()[0] == 0x02
    assert Request(Opcode.GET_NODE_LIST).encode()[0] == 0x0A
    assert Request(Opcode.READ_OBJ, ObjRequest(), proto_ver=0).encode()[0] == 0
    assert Request(Opcode.READ_OBJ, ObjRequest()).with_id(7).encode()[8:12] == b"\x07\0\0\0"
