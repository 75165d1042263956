"""Fuzzing the frame readers through both receive paths (feed and in-place
payload_buffer/commit, mixed at random): valid frames come out intact in
order, mutated streams raise only ProtocolError, and nothing buffers more
than the announced payload (bounded memory)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.framing import RequestReader, ResponseReader
from sheepdog_backend.protocol.header import Request, Response
from tests.unit.protocol.strategies import requests, responses

FUZZ = settings(max_examples=80, deadline=2000)
CAP = 1 << 24


def _pump(reader: RequestReader | ResponseReader, stream: bytes,
          plan: list[tuple[bool, int]]) -> list[Request | Response]:
    """Deliver ``stream`` following ``plan`` (in place?, chunk size)."""
    out: list[Request | Response] = []
    pos = 0
    step = 0
    while True:
        message = reader.next_message()
        if message is not None:
            out.append(message)
            continue
        if pos >= len(stream):
            return out
        in_place, size = plan[step % len(plan)] if plan else (False, 64)
        step += 1
        if in_place and reader.payload_missing:
            view = reader.payload_buffer()
            n = min(len(view), size, len(stream) - pos)
            view[:n] = stream[pos:pos + n]
            reader.commit(n)
        else:
            n = min(size, len(stream) - pos)
            reader.feed(stream[pos:pos + n])
        pos += n
        assert reader.buffered <= len(stream)


plans = st.lists(st.tuples(st.booleans(), st.integers(1, 700)), max_size=12)


@FUZZ
@given(st.lists(requests(max_payload=2000), max_size=4), plans)
def test_valid_request_streams_come_out_intact(msgs: list[Request],
                                               plan: list[tuple[bool, int]]) -> None:
    stream = b"".join(m.encode() for m in msgs)
    got = _pump(RequestReader(CAP), stream, plan)
    assert [m.encode() for m in got] == [m.encode() for m in msgs]


@FUZZ
@given(st.lists(responses(max_payload=2000), max_size=4), plans)
def test_valid_response_streams_come_out_intact(msgs: list[Response],
                                                plan: list[tuple[bool, int]]) -> None:
    stream = b"".join(m.encode() for m in msgs)
    got = _pump(ResponseReader(CAP), stream, plan)
    assert [m.encode() for m in got] == [m.encode() for m in msgs]


@FUZZ
@given(st.lists(requests(max_payload=2000) | responses(max_payload=2000), min_size=1,
                max_size=3), st.data(), plans)
def test_mutated_streams_raise_only_protocol_errors(msgs: list[Request | Response],
                                                    data: st.DataObject,
                                                    plan: list[tuple[bool, int]]) -> None:
    raw = bytearray(b"".join(m.encode() for m in msgs))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for cls in (RequestReader, ResponseReader):
        reader = cls(CAP)
        try:
            _pump(reader, bytes(raw[:cut]), plan)
        except ProtocolError:
            continue
        assert reader.buffered <= cut
