"""Readers receiving payloads in place (payload_buffer/commit) and the
chunk queue under feeds that are not drained between them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sheepdog_backend.exception import MessageTooLarge, ProtocolError
from sheepdog_backend.protocol.constants import SD_INODE_SIZE, Flag, Opcode
from sheepdog_backend.protocol.framing import RequestReader, ResponseReader
from sheepdog_backend.protocol.header import ObjResponse, Request, Response

from .strategies import requests, responses

Reader = RequestReader | ResponseReader


def _drive(reader: Reader, stream: bytes, data: st.DataObject
           ) -> list[tuple[Request | Response, bytearray | None]]:
    """Deliver ``stream`` in random pieces, by feed() or in place (own buffer
    or a caller's target, chosen per message), draining at random moments.
    Returns each message with the target its payload went to, if any."""
    out: list[tuple[Request | Response, bytearray | None]] = []
    target: bytearray | None = None
    mode: str | None = None  # per pending message: "feed", "own" or "target"
    pos = 0
    while True:
        if pos == len(stream) or data.draw(st.booleans(), label="drain"):
            while (message := reader.next_message()) is not None:
                out.append((message, target))
                target, mode = None, None
            if pos == len(stream):
                return out
        n = min(data.draw(st.integers(1, 700), label="piece"), len(stream) - pos)
        if reader.payload_missing and mode is None:
            mode = data.draw(st.sampled_from(["feed", "own", "target"]), label="mode")
            if mode == "target":
                header = reader.pending_header
                assert header is not None
                target = bytearray(header.payload_length)
        if reader.payload_missing and mode in ("own", "target"):
            view = reader.payload_buffer(target)
            k = min(n, len(view))
            view[:k] = stream[pos:pos + k]
            reader.commit(k)
            pos += k
        else:
            reader.feed(memoryview(stream)[pos:pos + n])
            pos += n


def _check(batch: list[Request] | list[Response], got: list[tuple[Request | Response,
                                                                    bytearray | None]]) -> None:
    assert len(got) == len(batch)
    for want, (message, target) in zip(batch, got, strict=True):
        if target is None:
            assert message == want
        else:  # the payload stayed in the caller's buffer
            assert bytes(target) == want.payload and message.payload == b""
            assert message.data_length == want.data_length
            assert message == type(want)(**{**_fields(want), "payload": b""})  # type: ignore[arg-type]


def _fields(message: Request | Response) -> dict[str, object]:
    return {name: getattr(message, name) for name in message.__dataclass_fields__}


@settings(max_examples=150, deadline=None)
@given(st.lists(responses(max_payload=2000), min_size=1, max_size=6), st.data())
def test_responses_in_place_any_chunking(batch: list[Response], data: st.DataObject) -> None:
    stream = b"".join(r.encode() for r in batch)
    reader = ResponseReader()
    _check(batch, _drive(reader, stream, data))
    assert reader.at_boundary() and reader.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(requests(max_payload=2000), min_size=1, max_size=6), st.data())
def test_requests_in_place_any_chunking(batch: list[Request], data: st.DataObject) -> None:
    stream = b"".join(r.encode() for r in batch)
    reader = RequestReader()
    _check(batch, _drive(reader, stream, data))
    assert reader.at_boundary() and reader.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(responses(max_payload=300), min_size=1, max_size=6), st.data())
def test_feeds_without_draining_between_them(batch: list[Response], data: st.DataObject
                                             ) -> None:
    """Many chunks queued before anything is taken: a payload taken across
    several chunks must leave the queue at the right place."""
    stream = b"".join(r.encode() for r in batch)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=20)))
    reader = ResponseReader()
    prev = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[prev:cut])
        prev = cut
    assert list(reader) == batch and reader.at_boundary()


def test_payload_taken_across_chunks_then_next_header() -> None:
    one = Response(Opcode.READ_OBJ, body=ObjResponse(), id=1, payload=b"a" * 10,
                   data_length=10)
    two = Response(Opcode.READ_OBJ, body=ObjResponse(), id=2, payload=b"b" * 10,
                   data_length=10)
    wire1, wire2 = one.encode(), two.encode()
    reader = ResponseReader()
    reader.feed(wire1[:51])  # header + 3 payload bytes
    reader.feed(wire1[51:])  # the other 7, a chunk consumed whole
    reader.feed(wire2)
    assert list(reader) == [one, two]


def test_response_byte_at_a_time_into_target() -> None:
    payload = bytes(range(256)) * 4
    wire = Response(Opcode.READ_OBJ, body=ObjResponse(), id=7, payload=payload).encode()
    reader = ResponseReader()
    for byte in wire[:48]:
        reader.feed(bytes([byte]))
    assert reader.next_message() is None and reader.payload_missing == len(payload)
    target = bytearray(len(payload))
    for i in range(len(payload)):
        view = reader.payload_buffer(target)
        assert len(view) == len(payload) - i
        view[0] = payload[i]
        reader.commit(1)
        assert reader.buffered == i + 1
    message = reader.next_message()
    assert message is not None and message.id == 7 and message.payload == b""
    assert message.data_length == len(payload) and bytes(target) == payload
    assert reader.at_boundary() and reader.buffered == 0


def test_queued_bytes_move_in_and_feeds_fill_the_buffer() -> None:
    payload = b"p" * 1000
    wire = Response(Opcode.READ_OBJ, id=3, payload=payload).encode()
    after = Response(Opcode.READ_OBJ, id=4, payload=b"xyz").encode()
    reader = ResponseReader()
    reader.feed(wire[:300])  # header + 252 payload bytes queued
    assert reader.next_message() is None
    view = reader.payload_buffer()  # the reader's own buffer
    assert len(view) == 748 and reader.payload_missing == 748
    reader.feed(wire[300:] + after)  # rest of the payload, then a whole message
    first, second = list(reader)
    assert first.payload == payload and first.id == 3
    assert second.payload == b"xyz" and reader.at_boundary()


def test_zero_length_and_non_write_messages_never_need_a_buffer() -> None:
    reader = RequestReader()
    reader.feed(Request(Opcode.READ_OBJ, data_length=4096).encode())
    assert reader.payload_missing == 0
    assert reader.next_message() is not None
    with pytest.raises(ValueError, match="no payload is pending"):
        reader.payload_buffer()


@pytest.mark.parametrize("bad", [
    lambda: bytearray(99), lambda: bytearray(101), lambda: memoryview(bytes(100)),
])
def test_target_must_be_writable_and_exact(bad: object) -> None:
    reader = ResponseReader()
    reader.feed(Response(Opcode.READ_OBJ, data_length=100).encode_header())
    assert reader.next_message() is None
    with pytest.raises(ValueError, match="100 bytes"):
        reader.payload_buffer(bad())  # type: ignore[operator]
    target = bytearray(100)  # nothing changed: a good target still works
    reader.payload_buffer(target)[:] = b"z" * 100
    reader.commit(100)
    message = reader.next_message()
    assert message is not None and bytes(target) == b"z" * 100


def test_misuse_of_commit_and_a_second_target() -> None:
    reader = ResponseReader()
    with pytest.raises(ValueError):
        reader.commit(1)  # nothing in use
    reader.feed(Response(Opcode.READ_OBJ, data_length=10).encode_header() + b"abc")
    assert reader.next_message() is None
    with pytest.raises(ValueError):
        reader.commit(1)  # no buffer asked for yet
    target = bytearray(10)
    assert len(reader.payload_buffer(target)) == 7 and target[:3] == b"abc"
    with pytest.raises(ValueError, match="different"):
        reader.payload_buffer(bytearray(10))
    with pytest.raises(ValueError, match="7 are missing"):
        reader.commit(8)
    reader.commit(0)
    reader.feed(b"defghij")
    message = reader.next_message()
    assert message is not None and bytes(target) == b"abcdefghij"


def test_too_large_is_refused_before_any_buffer_and_poisons() -> None:
    reader = ResponseReader(max_payload=SD_INODE_SIZE)
    reader.feed(Response(Opcode.READ_OBJ, data_length=SD_INODE_SIZE + 1).encode_header())
    with pytest.raises(MessageTooLarge):
        reader.next_message()
    assert reader.buffered == 0 and reader.payload_missing == 0
    for action in (reader.payload_buffer, lambda: reader.commit(0),
                   lambda: reader.payload_buffer(bytearray(SD_INODE_SIZE + 1))):
        with pytest.raises(MessageTooLarge):
            action()


def test_error_after_in_place_payload_poisons() -> None:
    reader = RequestReader()
    wire = Request(Opcode.WRITE_OBJ, flags=Flag.WRITE, data_length=5, payload=b"hello").encode()
    reader.feed(wire[:50])
    assert reader.next_message() is None
    reader.payload_buffer()[:3] = b"llo"
    reader.commit(3)
    reader.feed(b"\xff" * 48)  # a garbage header follows
    message = reader.next_message()
    assert message is not None and message.opcode == Opcode.WRITE_OBJ
    assert message.payload == b"hello"
    with pytest.raises(ProtocolError):
        reader.next_message()
    with pytest.raises(ProtocolError):
        reader.payload_buffer()
