"""Hostile and random input: decoders and readers raise the codec's own
ProtocolError (or a subclass) and nothing else, and never over-allocate."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sheepdog_backend.exception import MessageTooLarge, ProtocolError
from sheepdog_backend.protocol.bitmap import VidBitmap
from sheepdog_backend.protocol.constants import (
    CLUSTER_INFO_SIZE,
    HEADER_SIZE,
    SD_ATTR_OBJ_SIZE,
    SD_INODE_SIZE,
    VDI_STATE_SIZE,
    Flag,
    Opcode,
)
from sheepdog_backend.protocol.framing import (
    DEFAULT_MAX_PAYLOAD,
    RequestReader,
    ResponseReader,
)
from sheepdog_backend.protocol.header import (
    ObjRequest,
    Request,
    decode_request,
    decode_request_header,
    decode_response,
    decode_response_header,
)
from sheepdog_backend.protocol.inode import InodeHeader, decode_slots
from sheepdog_backend.protocol.naming import decode_lookup_payload
from sheepdog_backend.protocol.structs import (
    ClusterInfo,
    EpochLog,
    NodeId,
    RecoveryState,
    SdNode,
    VdiAttr,
    VdiState,
    decode_epoch_logs,
    decode_node_list,
    decode_vdi_states,
)

PROPS = settings(max_examples=200, deadline=None)


def only_protocol_errors(fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn; a ProtocolError is fine, any other exception fails the test."""
    try:
        return fn(*args)
    except ProtocolError:
        return None


DECODERS: list[tuple[str, Callable[[bytes], Any]]] = [
    ("decode_request_header", decode_request_header),
    ("decode_response_header", decode_response_header),
    ("decode_request", decode_request),
    ("decode_response", decode_response),
    ("InodeHeader.decode", InodeHeader.decode),
    ("decode_slots", decode_slots),
    ("NodeId.decode", NodeId.decode),
    ("SdNode.decode", SdNode.decode),
    ("VdiState.decode", VdiState.decode),
    ("decode_vdi_states", decode_vdi_states),
    ("RecoveryState.decode", RecoveryState.decode),
    ("VidBitmap", VidBitmap),
    ("decode_lookup_payload", decode_lookup_payload),
    ("VdiAttr.decode", VdiAttr.decode),
    ("ClusterInfo.decode", ClusterInfo.decode),
]

# Lengths that reach past each decoder's size checks, plus random ones.
INTERESTING = [0, 1, 4, 24, 39, 40, 47, 48, 49, 79, 80, 81, 255, 256, 257, 511, 512, 513,
               4663, 4664, 4672, VDI_STATE_SIZE, 2 * VDI_STATE_SIZE + 1]


@pytest.mark.parametrize(("name", "decoder"), DECODERS, ids=[n for n, _ in DECODERS])
@PROPS
@given(data=st.data())
def test_random_bytes_into_every_decoder(name: str, decoder: Callable[[bytes], Any],
                                         data: st.DataObject) -> None:
    size = data.draw(st.sampled_from(INTERESTING) | st.integers(0, 6000))
    raw = data.draw(st.binary(min_size=size, max_size=size))
    only_protocol_errors(decoder, raw)


@pytest.mark.parametrize(("decoder", "size"), [
    (VdiAttr.decode, SD_ATTR_OBJ_SIZE), (ClusterInfo.decode, CLUSTER_INFO_SIZE)])
@settings(max_examples=30, deadline=None)
@given(prefix=st.binary(min_size=1024, max_size=1024))
def test_random_big_structs(decoder: Callable[[bytes], Any], size: int, prefix: bytes) -> None:
    only_protocol_errors(decoder, prefix + bytes(size - len(prefix)))


@PROPS
@given(st.binary(max_size=3000), st.integers(-3, 40))
def test_random_node_lists_and_epoch_logs(raw: bytes, count: int) -> None:
    only_protocol_errors(decode_node_list, raw, count)
    only_protocol_errors(decode_epoch_logs, raw, count)
    only_protocol_errors(EpochLog.decode, raw, count)


@pytest.mark.parametrize("reader_cls", [RequestReader, ResponseReader])
@PROPS
@given(stream=st.binary(max_size=2000), cuts=st.lists(st.integers(1, 200), max_size=20))
def test_random_streams_into_readers(reader_cls: type[RequestReader | ResponseReader],
                                     stream: bytes, cuts: list[int]) -> None:
    reader = reader_cls()
    pos = 0
    try:
        for cut in [*cuts, len(stream)]:
            reader.feed(stream[pos:pos + cut])
            pos += cut
            for message in reader:
                assert message.encode_header()  # decoded messages re-encode
    except MessageTooLarge:
        # the announced length really is above the cap
        header = stream[:HEADER_SIZE]
        length = struct.unpack_from("<I", header, 12)[0]
        assert length > reader.max_payload
    # whatever happened, only ProtocolError (checked by not catching others)


def hostile_header(direction: str, length: int) -> bytes:
    if direction == "req":
        return Request(Opcode.WRITE_OBJ, ObjRequest(), flags=Flag.WRITE, data_length=0
                       ).encode_header()[:12] + struct.pack("<I", length) + bytes(32)
    return bytes([0, Opcode.READ_OBJ, 0, 0]) + bytes(8) + struct.pack("<I", length) + bytes(32)


@pytest.mark.parametrize("direction", ["req", "rsp"])
@pytest.mark.parametrize("length", [DEFAULT_MAX_PAYLOAD + 1, 0xFFFFFFFF])
def test_hostile_length_raises_before_any_payload(direction: str, length: int) -> None:
    reader = RequestReader() if direction == "req" else ResponseReader()
    reader.feed(hostile_header(direction, length))
    with pytest.raises(MessageTooLarge) as info:
        reader.next_message()
    assert isinstance(info.value, ProtocolError) and info.value.remote
    assert reader.buffered == 0  # nothing kept, nothing waited for
    # the reader is poisoned: the stream can no longer be trusted
    with pytest.raises(MessageTooLarge):
        reader.feed(b"more")
    with pytest.raises(MessageTooLarge):
        reader.next_message()


def test_length_at_the_cap_is_accepted() -> None:
    reader = ResponseReader(max_payload=SD_INODE_SIZE)
    reader.feed(hostile_header("rsp", SD_INODE_SIZE))
    assert reader.next_message() is None and reader.pending_header is not None
    reader.feed(bytes(SD_INODE_SIZE))
    message = reader.next_message()
    assert message is not None and len(message.payload) == SD_INODE_SIZE


def test_read_request_may_offer_a_huge_buffer() -> None:
    """A non-WRITE request's data_length is a buffer offer, not a payload."""
    reader = RequestReader()
    reader.feed(Request(Opcode.READ_OBJ, ObjRequest(), data_length=0xFFFFFFFF).encode())
    message = reader.next_message()
    assert message is not None and message.payload == b""


def test_cap_below_one_inode_is_refused() -> None:
    with pytest.raises(ValueError):
        ResponseReader(max_payload=SD_INODE_SIZE - 1)
