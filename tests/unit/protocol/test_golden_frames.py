"""The codec against every frame captured from a real Sheepdog 1.0 node.

Structural checks: every header and payload decodes, every header re-encodes
to the same 48 bytes, summarised payloads are rebuilt byte-exactly where the
capture proves what they hold, and each connection's byte stream comes out of
the incremental readers as the same messages whatever the chunking.
"""

from __future__ import annotations

import hashlib
import random
import struct

import pytest

from sheepdog_backend.protocol.bitmap import VidBitmap
from sheepdog_backend.protocol.constants import (
    HEADER_SIZE,
    SD_INODE_GREF_OFFSET,
    SD_INODE_SIZE,
    VID_BITMAP_SIZE,
    Flag,
    Opcode,
    Result,
)
from sheepdog_backend.protocol.framing import RequestReader, ResponseReader
from sheepdog_backend.protocol.header import (
    ClusterRequest,
    NodeResponse,
    ObjRequest,
    ObjResponse,
    RawRequest,
    RawResponse,
    Request,
    Response,
    VdiRequest,
    VdiResponse,
    decode_request_header,
    decode_response_header,
)
from sheepdog_backend.protocol.inode import InodeHeader, decode_slots
from sheepdog_backend.protocol.structs import ClusterInfo, VdiAttr
from tests.golden_frames import Frame, Transcript, iter_frames, load_transcript, load_transcripts

TRANSCRIPTS = load_transcripts()
IDS = [t.name for t in TRANSCRIPTS]
FRAMES = list(iter_frames())


def test_all_files_loaded() -> None:
    assert len(TRANSCRIPTS) == 39
    assert sum(len(t.frames) for t in TRANSCRIPTS) == len(FRAMES) > 200
    # 23 is the one command dog refused before talking to sheep.
    assert [t.name for t in TRANSCRIPTS if not t.frames] == ["23-vdi-clone-from-current"]


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=IDS)
def test_every_header_decodes_and_reencodes(transcript: Transcript) -> None:
    for frame in transcript.frames:
        assert len(frame.header) == HEADER_SIZE
        header = frame.decode_header()
        message = frame.decode()
        assert message.encode_header() == frame.header, str(frame)
        # The opcode is one the codec knows and the union variant is the
        # specific one for it, never the raw fallback, where one exists.
        Opcode(header.opcode)
        assert header.data_length == frame.payload_length or (
            frame.is_request and not header.flags & Flag.WRITE and frame.payload_length == 0)


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=IDS)
def test_every_message_reencodes_with_its_payload(transcript: Transcript) -> None:
    for frame in transcript.frames:
        message = frame.decode()
        assert message.encode() == frame.wire(), str(frame)


def test_union_variants_chosen_by_opcode() -> None:
    expected_req = {
        Opcode.READ_OBJ: ObjRequest, Opcode.WRITE_OBJ: ObjRequest,
        Opcode.CREATE_AND_WRITE_OBJ: ObjRequest, Opcode.NEW_VDI: VdiRequest,
        Opcode.GET_VDI_INFO: VdiRequest, Opcode.DEL_VDI: VdiRequest,
        Opcode.GET_VDI_ATTR: VdiRequest, Opcode.MAKE_FS: ClusterRequest,
        Opcode.STAT_CLUSTER: ClusterRequest, Opcode.GET_NODE_LIST: RawRequest,
        Opcode.READ_VDIS: RawRequest, Opcode.CLUSTER_INFO: RawRequest,
    }
    expected_rsp = {
        Opcode.READ_OBJ: ObjResponse, Opcode.NEW_VDI: VdiResponse,
        Opcode.GET_VDI_INFO: VdiResponse, Opcode.GET_NODE_LIST: NodeResponse,
        Opcode.READ_VDIS: RawResponse,
    }
    seen = set()
    for frame in FRAMES:
        message = frame.decode()
        table = expected_req if frame.is_request else expected_rsp
        if frame.opcode in table:
            assert type(message.body) is table[Opcode(frame.opcode)], str(frame)
            seen.add((frame.dir, frame.opcode))
    assert len(seen) == len(expected_req) + len(expected_rsp)


def test_common_header_conventions_of_dog_and_sheep() -> None:
    """dog: id 0, epoch 0, proto_ver 2/0x0a by opcode; sheep: proto_ver 0, flags 0."""
    for frame in FRAMES:
        header = frame.decode_header()
        assert header.id == 0
        if frame.is_request:
            assert header.epoch == 0
            assert header.proto_ver == (0x0A if header.opcode >= 0x80 else 0x02)
        else:
            assert header.proto_ver == 0 and header.flags == 0
            assert header.epoch in (0, 1)


# ---------------------------------------------------------------------------
# Summarised payloads (over 64 KiB): rebuild them byte-exactly where possible
# ---------------------------------------------------------------------------

SUMMARISED = [f for f in FRAMES if f.summary is not None]


def test_summaries_cover_the_big_payloads() -> None:
    lengths = {f.summary.length for f in SUMMARISED if f.summary}
    assert lengths == {SD_INODE_SIZE, VID_BITMAP_SIZE, 491568, 66320}
    for frame in SUMMARISED:
        assert frame.summary is not None
        assert frame.decode_header().data_length == frame.summary.length
        assert len(frame.summary.head) == 8192


@pytest.mark.parametrize("frame", [f for f in SUMMARISED if f.payload_is_exact], ids=str)
def test_head_plus_zeros_is_exact_when_pages_say_so(frame: Frame) -> None:
    assert frame.summary is not None
    assert frame.summary.matches(frame.payload())


def _inode_summaries() -> list[Frame]:
    return [f for f in SUMMARISED if f.summary and f.summary.length == SD_INODE_SIZE]


# gref (generation, count) per non-zero slot, by §7.4: a snapshot or clone
# bumps the source's count and gives the child generation + 1; an inode
# write that remaps a slot zeroes that slot's gref (Appendix B).
EXPECTED_GREF = {
    "18-vdi-write-after-snapshot": {0: (1, 0), 1: (1, 0)},  # new working VDI
    "19-vdi-read-snapshot": {0: (0, 1), 1: (0, 1)},         # the snapshot
    "20-vdi-clone": {0: (0, 1), 1: (0, 1)},                 # read before cloning
    "21-vdi-read-clone": {0: (1, 0), 1: (1, 0)},
    "22-vdi-write-clone": {0: (1, 0), 1: (1, 0)},
    "31-vdi-delete-clone": {0: (0, 0), 1: (1, 0)},          # slot 0 rewritten
    "33-vdi-delete-snapshot": {0: (0, 2), 1: (0, 2)},       # snapshotted + cloned
    "37-vdi-delete": {0: (0, 0), 1: (1, 0)},
}


@pytest.mark.parametrize("frame", _inode_summaries(), ids=str)
def test_whole_inode_rebuilt_byte_exact(frame: Frame) -> None:
    """Header from data_head, slots at 4664 + 4*idx, gref at 4198968 + 8*idx:
    the rebuilt 12,587,576 bytes must hash to the captured sha256."""
    assert frame.summary is not None
    head = frame.summary.head
    inode = InodeHeader.decode(head)
    assert inode.encode() == head[:4664]
    slots = decode_slots(head[4664:4664 + 4 * inode.count_data_objs])
    data = bytearray(frame.summary.synthesize())
    gref = EXPECTED_GREF.get(frame.transcript, {})
    assert set(gref) <= {i for i, vid in enumerate(slots) if vid}
    for idx, (generation, count) in gref.items():
        struct.pack_into("<ii", data, SD_INODE_GREF_OFFSET + 8 * idx, generation, count)
    assert frame.summary.matches(bytes(data))
    has_gref_page = any(p >= SD_INODE_GREF_OFFSET - 4096 for p in frame.summary.nonzero_pages)
    assert has_gref_page == bool(gref and any(gref.values()))


def test_cluster_info_summary_decodes() -> None:
    frames = [f for f in SUMMARISED if f.opcode == Opcode.CLUSTER_INFO]
    assert frames
    for frame in frames:
        info = ClusterInfo.decode(frame.payload())
        assert frame.summary is not None and frame.summary.matches(info.encode())


def test_attr_summaries_decode() -> None:
    frames = [f for f in SUMMARISED if f.summary and f.summary.length == 66320]
    assert len(frames) == 3
    for frame in frames:
        attr = VdiAttr.decode(frame.payload())
        assert frame.summary is not None and frame.summary.matches(attr.encode())
        assert attr.name == b"test" and attr.key == b"key1"


def test_bitmap_summaries_are_structurally_sound() -> None:
    """Every bitmap is 2 MiB and its non-zero pages are where set vids live
    (the exact contents are checked against dog's output elsewhere)."""
    frames = [f for f in SUMMARISED if f.summary and f.summary.length == VID_BITMAP_SIZE]
    assert len(frames) >= 10
    for frame in frames:
        assert frame.summary is not None
        bitmap = VidBitmap(frame.payload())
        assert list(bitmap) == []  # head (first 8 KiB) is zero: vids start far above
        for page in frame.summary.nonzero_pages:
            assert page % 4096 == 0 and page < VID_BITMAP_SIZE


def test_empty_bitmap_digest() -> None:
    zero = hashlib.sha256(bytes(VID_BITMAP_SIZE)).hexdigest()
    empties = [f for f in SUMMARISED
               if f.summary and f.summary.length == VID_BITMAP_SIZE and not f.summary.nonzero_pages]
    assert empties and all(f.summary and f.summary.sha256 == zero for f in empties)


# ---------------------------------------------------------------------------
# Streams through the incremental readers
# ---------------------------------------------------------------------------

BULK = 64 * 1024  # payloads above this are fed in big pieces in the middle


def _stream_cases() -> list[tuple[str, int, str]]:
    cases = []
    for t in TRANSCRIPTS:
        for conn in t.connections:
            for direction in ("req", "rsp"):
                if t.frames_for(conn, direction):  # type: ignore[arg-type]
                    cases.append((t.name, conn, direction))
    return cases


STREAM_CASES = _stream_cases()
STREAM_IDS = [f"{n}-c{c}-{d}" for n, c, d in STREAM_CASES]


def _reader(direction: str) -> RequestReader | ResponseReader:
    return RequestReader() if direction == "req" else ResponseReader()


def _expected(transcript: Transcript, conn: int, direction: str) -> list[Frame]:
    return transcript.frames_for(conn, direction)  # type: ignore[arg-type]


def _byte_pieces(frames: list[Frame]) -> list[tuple[bytes, int | None]]:
    """Pieces of the stream: one byte at a time everywhere except the middle
    of payloads over 64 KiB (first and last 4 KiB still byte by byte).  The
    second item is the index of the message that the piece completes."""
    pieces: list[tuple[bytes, int | None]] = []
    for n, frame in enumerate(frames):
        wire = frame.wire()
        if len(wire) - HEADER_SIZE > BULK:
            edge = HEADER_SIZE + 4096
            singles = [wire[i:i + 1] for i in range(edge)]
            middle_end = len(wire) - 4096
            middle = [wire[i:min(i + (1 << 20), middle_end)]
                      for i in range(edge, middle_end, 1 << 20)]
            tail = [wire[i:i + 1] for i in range(middle_end, len(wire))]
            chunks = singles + middle + tail
        else:
            chunks = [wire[i:i + 1] for i in range(len(wire))]
        assert b"".join(chunks) == wire
        pieces.extend((c, None) for c in chunks[:-1])
        pieces.append((chunks[-1], n))
    return pieces


def _check_message(message: Request | Response, frame: Frame) -> None:
    assert message.encode_header() == frame.header, str(frame)
    assert message.payload == frame.payload(), str(frame)


@pytest.mark.parametrize(("name", "conn", "direction"), STREAM_CASES, ids=STREAM_IDS)
def test_stream_one_byte_at_a_time(name: str, conn: int, direction: str) -> None:
    transcript = load_transcript(name)
    frames = _expected(transcript, conn, direction)
    reader = _reader(direction)
    got = 0
    for piece, completes in _byte_pieces(frames):
        reader.feed(piece)
        message = reader.next_message()
        if completes is None:
            assert message is None
            # a partial message never leaves the reader at a boundary
            assert not reader.at_boundary()
        else:
            assert completes == got
            assert message is not None, f"message {got} not complete at its last byte"
            _check_message(message, frames[got])
            got += 1
            assert reader.next_message() is None
            assert reader.at_boundary()
    assert got == len(frames)


@pytest.mark.parametrize(("name", "conn", "direction"), STREAM_CASES, ids=STREAM_IDS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_random_chunking(name: str, conn: int, direction: str, seed: int) -> None:
    transcript = load_transcript(name)
    frames = _expected(transcript, conn, direction)
    stream = transcript.stream(conn, direction)  # type: ignore[arg-type]
    rng = random.Random(f"{name}-{conn}-{direction}-{seed}")
    reader = _reader(direction)
    messages: list[Request | Response] = []
    pos = 0
    while pos < len(stream):
        size = rng.choice([1, 2, 7, 47, 48, 49, 300, 4096, 70_000, 1 << 20, 5 << 20])
        reader.feed(stream[pos:pos + size])
        pos += size
        messages.extend(reader)
    assert reader.at_boundary()
    assert len(messages) == len(frames)
    for message, frame in zip(messages, frames, strict=True):
        _check_message(message, frame)


@pytest.mark.parametrize(("name", "conn", "direction"), STREAM_CASES, ids=STREAM_IDS)
def test_stream_in_one_piece(name: str, conn: int, direction: str) -> None:
    transcript = load_transcript(name)
    frames = _expected(transcript, conn, direction)
    reader = _reader(direction)
    reader.feed(transcript.stream(conn, direction))  # type: ignore[arg-type]
    messages = list(reader)
    assert len(messages) == len(frames)
    for message, frame in zip(messages, frames, strict=True):
        _check_message(message, frame)


def test_headers_decode_from_memoryview_slices() -> None:
    for frame in FRAMES[:40]:
        view = memoryview(b"xx" + frame.header)[2:]
        if frame.is_request:
            assert decode_request_header(view) == decode_request_header(frame.header)
        else:
            assert decode_response_header(view) == decode_response_header(frame.header)


def test_results_seen_are_known_codes() -> None:
    results = {Result(f.response().result) for f in FRAMES if not f.is_request}
    assert results == {Result.SUCCESS, Result.WAIT_FOR_FORMAT, Result.VDI_EXIST,
                       Result.NO_TAG, Result.NO_VDI}
