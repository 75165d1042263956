"""Incremental readers: pipelined messages, partial input, poisoning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.constants import Flag, Opcode, Result
from sheepdog_backend.protocol.framing import RequestReader, ResponseReader
from sheepdog_backend.protocol.header import (
    ObjRequest,
    ObjResponse,
    Request,
    Response,
    VdiRequest,
)

from .strategies import requests, responses


@settings(max_examples=100, deadline=None)
@given(st.lists(requests(max_payload=300), min_size=1, max_size=6), st.data())
def test_pipelined_requests_any_chunking(batch: list[Request], data: st.DataObject) -> None:
    stream = b"".join(r.encode() for r in batch)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=12)))
    reader = RequestReader()
    got: list[Request] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(memoryview(stream)[prev:cut])
        prev = cut
        got.extend(reader)
    assert got == batch and reader.at_boundary() and reader.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(responses(max_payload=300), min_size=1, max_size=6))
def test_pipelined_responses_byte_by_byte(batch: list[Response]) -> None:
    stream = b"".join(r.encode() for r in batch)
    reader = ResponseReader()
    got: list[Response] = []
    for i in range(len(stream)):
        reader.feed(bytearray(stream[i:i + 1]))
        got.extend(reader)
    assert got == batch and reader.at_boundary()


def test_out_of_order_ids_are_just_messages() -> None:
    """sheep answers in completion order; the reader does not reorder."""
    stream = b"".join(Response(Opcode.READ_OBJ, body=ObjResponse(), id=i, payload=b"x" * i)
                      .encode() for i in (200, 300, 100))
    reader = ResponseReader()
    reader.feed(stream)
    assert [m.id for m in reader] == [200, 300, 100]


def test_partial_header_and_payload_states() -> None:
    wire = Request(Opcode.GET_VDI_INFO, VdiRequest(), flags=Flag.WRITE, data_length=256,
                   payload=b"n" * 256).encode()
    reader = RequestReader()
    reader.feed(wire[:47])
    assert reader.next_message() is None and reader.pending_header is None
    assert not reader.at_boundary() and reader.buffered == 47
    reader.feed(wire[47:100])
    assert reader.next_message() is None
    assert reader.pending_header is not None and reader.pending_header.data_length == 256
    reader.feed(wire[100:])
    message = reader.next_message()
    assert message is not None and message.payload == b"n" * 256
    assert reader.at_boundary() and reader.next_message() is None
    reader.feed(b"")  # empty feeds are harmless
    assert reader.at_boundary()


def test_response_payload_consumed_regardless_of_result() -> None:
    """Clients must consume data_length bytes even on errors (§2.2)."""
    reader = ResponseReader()
    reader.feed(Response(Opcode.STAT_CLUSTER, result=Result.WAIT_FOR_JOIN,
                         payload=b"L" * 48).encode()
                + Response(Opcode.READ_OBJ, body=ObjResponse()).encode())
    first, second = list(reader)
    assert first.result == Result.WAIT_FOR_JOIN and first.payload == b"L" * 48
    assert second.opcode == Opcode.READ_OBJ and second.payload == b""


def test_non_write_request_has_no_payload() -> None:
    reader = RequestReader()
    reader.feed(Request(Opcode.READ_OBJ, ObjRequest(oid=5), data_length=4096).encode()
                + Request(Opcode.READ_VDIS, data_length=2097152).encode())
    first, second = list(reader)
    assert first.data_length == 4096 and first.payload == b""
    assert second.opcode == Opcode.READ_VDIS and reader.at_boundary()


def test_poisoned_reader_stays_poisoned() -> None:
    reader = ResponseReader(max_payload=16 << 20)
    reader.feed(Response(Opcode.READ_OBJ, data_length=(16 << 20) + 1).encode_header())
    with pytest.raises(ProtocolError):
        reader.next_message()
    for action in (lambda: reader.feed(b"x"), reader.next_message, lambda: list(reader)):
        with pytest.raises(ProtocolError):
            action()
