"""Transport: address parsing, pipelining by id, poisoning, timeouts."""

from __future__ import annotations

import socket
import threading

import pytest

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.transport import (
    Address,
    ConnectFailed,
    Connection,
    _send_frame,
    parse_address,
    request_was_sent,
)
from sheepdog_backend.exception import (
    ConnectionClosed,
    InvalidInput,
    MessageTooLarge,
    ProtocolError,
    ReadTimeout,
)
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import Request, Response, VdiResponse
from tests.unit.client.loopback import PeerConn, ScriptedPeer


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:7001", "127.0.0.1", 7001),
    ("127.0.0.1", "127.0.0.1", 7000),
    ("[::1]:7000", "::1", 7000),
    ("[::1]", "::1", 7000),
    ("::1", "::1", 7000),
    ("[fe80::1]:65535", "fe80::1", 65535),
    ("Sheep-1.Example.com:1", "sheep-1.example.com", 1),
    ("localhost", "localhost", 7000),
])
def test_parse_address_accepts(text: str, host: str, port: int) -> None:
    addr = parse_address(text)
    assert (addr.host, addr.port) == (host, port)
    assert parse_address(str(addr)) == addr


@pytest.mark.parametrize("text", [
    "", ":7000", "host:0", "host:65536", "host:-1", "host:70a", "[::1", "[::1]x",
    "[127.0.0.1]:7000", "bad_host:7000", "-lead:7000", "a..b", "host:", "h st",
    "[::1]:99999",
])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_address(text)


def test_address_str_brackets_ipv6() -> None:
    assert str(Address("::1", 7000)) == "[::1]:7000"
    assert str(Address("10.0.0.1", 7)) == "10.0.0.1:7"


def _vdi_ok(req: Request, vid: int) -> Response:
    return Response(req.opcode, id=req.id, body=VdiResponse(vdi_id=vid))


def test_connect_refused_is_typed_and_unsent() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ConnectFailed) as info:
        Connection(Address("127.0.0.1", port), connect_timeout=2)
    assert not request_was_sent(info.value)


def test_nodelay_and_single_call() -> None:
    def handler(req: Request, conn: PeerConn) -> None:
        conn.reply(_vdi_ok(req, 0x7C2B25))
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        assert conn._sock is not None
        assert conn._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        rsp = conn.call(rq.get_vdi_info("test"))
        assert isinstance(rsp.body, VdiResponse) and rsp.body.vdi_id == 0x7C2B25
        assert conn.usable
        conn.close()


def test_out_of_order_responses_are_matched_by_id() -> None:
    held: list[tuple[Request, PeerConn]] = []

    def handler(req: Request, conn: PeerConn) -> None:
        held.append((req, conn))
        if len(held) == 3:  # answer in reverse order: 3, 2, 1
            for r, c in reversed(held):
                c.reply(_vdi_ok(r, int.from_bytes(r.payload[:1], "little")))
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        ids = [conn.send(rq.get_vdi_info(name)) for name in ("a", "b", "c")]
        assert len(set(ids)) == 3
        got = [conn.wait(i) for i in ids]  # wait in send order though they came reversed
        assert [g.body.vdi_id for g in got] == [ord("a"), ord("b"), ord("c")]  # type: ignore[union-attr]
        assert conn.usable
        conn.close()


def test_wait_any_returns_each_response_once() -> None:
    def handler(req: Request, conn: PeerConn) -> None:
        conn.reply(_vdi_ok(req, req.id))
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        ids = {conn.send(rq.get_vdi_info("x")) for _ in range(5)}
        seen = {conn.wait_any().id for _ in range(5)}
        assert seen == ids and conn.usable
        with pytest.raises(ValueError):
            conn.wait_any()
        conn.close()


def test_unknown_id_poisons_and_closes() -> None:
    def handler(req: Request, conn: PeerConn) -> None:
        conn.reply(_vdi_ok(req.with_id(req.id + 1000), 1))
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        with pytest.raises(ProtocolError, match="not in flight"):
            conn.call(rq.get_vdi_info("x"))
        assert conn.closed and not conn.usable
        with pytest.raises(ConnectionClosed):
            conn.send(rq.get_vdi_info("x"))


def test_oversized_frame_poisons_and_closes() -> None:
    def handler(req: Request, conn: PeerConn) -> None:
        header = Response(req.opcode, id=req.id, data_length=0xFFFFFFF0).encode_header()
        conn.send_raw(header)
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        with pytest.raises(ProtocolError) as info:
            conn.call(rq.get_vdi_info("x"))
        assert isinstance(info.value.__cause__, MessageTooLarge)
        assert conn.closed


def test_peer_closing_mid_response_is_connection_closed() -> None:
    def handler(req: Request, conn: PeerConn) -> None:
        conn.send_raw(Response(req.opcode, id=req.id, payload=bytes(100)).encode()[:60])
        conn.close()
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        with pytest.raises(ConnectionClosed) as info:
            conn.call(rq.read_obj(1, 0, 100))
        assert request_was_sent(info.value) and conn.closed


def test_silent_peer_times_out_per_request() -> None:
    with ScriptedPeer(lambda req, conn: None) as peer:
        conn = Connection(parse_address(peer.address), request_timeout=0.2)
        with pytest.raises(ReadTimeout) as info:
            conn.call(rq.get_vdi_info("x"))
        assert request_was_sent(info.value) and conn.closed


def test_error_result_keeps_connection_usable() -> None:
    def handler(req: Request, conn: PeerConn) -> None:
        conn.reply(Response(req.opcode, id=req.id, result=Result.NO_VDI))
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        rsp = conn.call(rq.get_vdi_info("x"))
        assert rsp.result == Result.NO_VDI and conn.usable
        conn.close()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("this machine has no IPv6 support")
    try:
        peer = ScriptedPeer(lambda req, conn: conn.reply(_vdi_ok(req, 5)), host="::1")
    except OSError as exc:
        pytest.skip(f"::1 is not available here: {exc}")
    with peer:
        conn = Connection(parse_address(peer.address))
        assert conn.call(rq.get_vdi_info("x")).body.vdi_id == 5  # type: ignore[union-attr]
        conn.close()


def test_big_payload_round_trip() -> None:
    blob = bytes(range(256)) * (1 << 14)  # 4 MiB

    def handler(req: Request, conn: PeerConn) -> None:
        if req.opcode == Opcode.WRITE_OBJ:
            assert req.payload == blob
            conn.reply(Response(req.opcode, id=req.id))
        else:
            conn.reply(Response(req.opcode, id=req.id, payload=blob[:req.data_length]))
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        assert conn.call(rq.write_obj(1, 0, blob)).ok
        assert conn.call(rq.read_obj(1, 0, len(blob))).payload == blob
        assert not peer.errors
        conn.close()


def test_threads_do_not_leak() -> None:
    before = threading.active_count()
    with ScriptedPeer(lambda req, conn: conn.reply(_vdi_ok(req, 1))) as peer:
        Connection(parse_address(peer.address)).close()
    assert threading.active_count() <= before + 1


def _read_peer(blob: bytes, order: str = "reverse", short: bool = False
               ) -> ScriptedPeer:
    """Answers READ_OBJ with blob[offset:offset+length]; holds three requests
    and answers them in reverse order; ``short`` answers one byte less."""
    held: list[tuple[Request, PeerConn]] = []

    def handler(req: Request, conn: PeerConn) -> None:
        held.append((req, conn))
        if len(held) == 3:
            for r, c in (reversed(held) if order == "reverse" else held):
                off = r.body.offset  # type: ignore[union-attr]
                n = r.data_length - (1 if short else 0)
                c.reply(Response(r.opcode, id=r.id, payload=blob[off:off + n]))
            held.clear()
    return ScriptedPeer(handler)


def test_payloads_land_in_their_buffers_out_of_order() -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB
    with _read_peer(blob) as peer:
        conn = Connection(parse_address(peer.address))
        out = bytearray(len(blob))
        view = memoryview(out)
        spans = [(0, 300_000), (300_000, 700_000), (700_000, len(blob))]
        ids = [conn.send(rq.read_obj(1, a, b - a), into=view[a:b]) for a, b in spans]
        got = [conn.wait(i) for i in ids]
        assert all(r.payload == b"" and r.effective_data_length == b - a
                   for r, (a, b) in zip(got, spans, strict=True))
        assert out == blob and conn.usable
        # a request without a buffer on the same connection still gets bytes
        ids = [conn.send(rq.read_obj(1, 5, 10)) for _ in range(3)]
        assert [conn.wait(i).payload for i in ids] == [blob[5:15]] * 3
        conn.close()


def test_reply_of_another_length_ignores_the_buffer() -> None:
    blob = b"q" * 1000
    with _read_peer(blob, order="forward", short=True) as peer:
        conn = Connection(parse_address(peer.address))
        targets = [bytearray(100) for _ in range(3)]
        ids = [conn.send(rq.read_obj(1, 0, 100), into=memoryview(t)) for t in targets]
        got = [conn.wait(i) for i in ids]
        assert [r.payload for r in got] == [b"q" * 99] * 3
        assert targets == [bytearray(100)] * 3 and conn.usable
        conn.close()


def test_peer_closing_mid_payload_into_buffer() -> None:
    def handler(req: Request, conn: PeerConn) -> None:
        wire = Response(req.opcode, id=req.id, payload=b"w" * 100_000).encode()
        conn.send_raw(wire[:60_000])
        conn.close()
    with ScriptedPeer(handler) as peer:
        conn = Connection(parse_address(peer.address))
        target = bytearray(100_000)
        rid = conn.send(rq.read_obj(1, 0, 100_000), into=memoryview(target))
        with pytest.raises(ConnectionClosed) as info:
            conn.wait(rid)
        assert request_was_sent(info.value) and conn.closed and not conn.usable


class _Trickle:
    """A socket stand-in whose sendmsg() takes at most ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.wire = bytearray()

    def sendmsg(self, buffers: list[bytes]) -> int:
        data = b"".join(buffers)[:self.limit]
        self.wire += data
        return len(data)

    def sendall(self, data: bytes | memoryview) -> None:
        self.wire += data


@pytest.mark.parametrize("limit", [1, 47, 48, 49, 1000, 10**9])
@pytest.mark.parametrize("payload", [b"", b"p", bytes(range(256)) * 40])
def test_send_frame_sends_header_then_payload_whatever_sendmsg_takes(
        limit: int, payload: bytes) -> None:
    header = bytes(range(48))
    sock = _Trickle(limit)
    _send_frame(sock, header, payload)  # type: ignore[arg-type]
    assert sock.wire == header + payload
