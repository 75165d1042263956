"""The wire engine over loopback: frames cut anywhere, payloads larger than a
receive, replies larger than the socket buffers, malformed frames, EOF with
answers still owed, the caps and the budget, a client that stops reading.

Clients speak through the real codec (Request.encode, ResponseReader); the
service is a scripted node on the same engine (fakenode.py)."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable

import pytest

from sheepdog_backend.client import requests as rq
from sheepdog_backend.engine.engine import Engine
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import COMMON
from sheepdog_backend.protocol.oid import vid_to_data_oid

from .fakenode import FakeNode, read_answers

OID = vid_to_data_oid(0x42, 1)
WAIT = 10.0


def _connect(node: FakeNode) -> socket.socket:
    host, port = node.engine.addresses[0]
    sock = socket.create_connection((host, port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _eof(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _wait(cond: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_frames_cut_anywhere_and_payloads_larger_than_a_receive() -> None:
    big = bytes(random.Random(1).randrange(256) for _ in range(100 * 1024))
    requests = [rq.write_obj(OID, 0, big).with_id(1), rq.read_obj(OID, 0, 4096).with_id(2),
                rq.write_obj(OID, 7, b"tiny").with_id(3), rq.read_obj(OID, 0, 0).with_id(4)]
    stream = b"".join(r.encode() for r in requests)
    rng = random.Random(7)
    with FakeNode(fill=b"\x11") as node, _connect(node) as sock:
        pos = 0
        while pos < len(stream):  # 1-byte pieces around every header, larger inside payloads
            n = 1 if rng.random() < 0.5 else rng.randrange(1, 40_000)
            sock.sendall(stream[pos:pos + n])
            pos += n
            if rng.random() < 0.05:
                time.sleep(0.002)  # let the loop see a partial frame
        got = {r.id: r for r in read_answers(sock, 4)}
    assert sorted(got) == [1, 2, 3, 4] and all(r.ok for r in got.values())
    assert got[2].payload == b"\x11" * 4096 and got[4].payload == b""
    assert node.writes == [(Opcode.WRITE_OBJ, big), (Opcode.WRITE_OBJ, b"tiny")]


def test_a_reply_larger_than_the_socket_buffers_arrives_whole() -> None:
    with FakeNode(fill=b"\x22") as node, _connect(node) as sock:
        sock.sendall(rq.read_obj(OID, 0, 8 << 20).with_id(9).encode())
        time.sleep(0.3)  # the engine queues what the kernel does not take
        (answer,) = read_answers(sock, 1)
    assert answer.id == 9 and answer.payload == b"\x22" * (8 << 20)
    assert _wait(lambda: node.engine.stats()["inflight_bytes"] == 0)


def test_a_malformed_frame_ends_the_connection_after_answering_what_came_before() -> None:
    oversized = bytearray(rq.write_obj(OID, 0, b"x").encode_header())
    COMMON.pack_into(oversized, 0, 1, Opcode.WRITE_OBJ, 1, 0, 77, 64 << 20)
    with FakeNode() as node, _connect(node) as sock:
        sock.sendall(rq.read_obj(OID, 0, 512).with_id(5).encode() + bytes(oversized))
        (answer,) = read_answers(sock, 1)
        assert answer.id == 5 and answer.ok
        assert _eof(sock)
    assert node.requests[Opcode.WRITE_OBJ] == 0


def test_a_half_closed_client_still_gets_every_answer() -> None:
    with FakeNode() as node, _connect(node) as sock:
        sock.sendall(b"".join(rq.read_obj(OID, 0, 100).with_id(i).encode() for i in range(5)))
        sock.shutdown(socket.SHUT_WR)
        assert sorted(r.id for r in read_answers(sock, 5)) == [0, 1, 2, 3, 4]
        assert _eof(sock)
    assert _wait(lambda: node.engine.stats()["connections"] == 0)


def _capped_node(**limits: int) -> FakeNode:
    node = FakeNode()
    node.engine = Engine(node, ports=[0], name="fakenode", **limits)  # type: ignore[arg-type]
    return node


def test_a_connection_over_its_caps_waits_for_its_own_replies() -> None:
    node = _capped_node(max_inflight=2)
    node.then(Opcode.READ_OBJ, "hold", "hold")
    with node, _connect(node) as sock:
        sock.sendall(b"".join(rq.read_obj(OID, 0, 10).with_id(i).encode() for i in range(4)))
        assert _wait(lambda: node.requests[Opcode.READ_OBJ] == 2)
        time.sleep(0.2)
        assert node.requests[Opcode.READ_OBJ] == 2  # the third waits for room
        node.release()
        assert sorted(r.id for r in read_answers(sock, 4)) == [0, 1, 2, 3]


def test_the_budget_holds_back_a_second_connection_until_the_first_is_answered() -> None:
    node = _capped_node(memory_budget=1 << 20)
    node.then(Opcode.READ_OBJ, "hold")
    with node, _connect(node) as first, _connect(node) as second:
        first.sendall(rq.read_obj(OID, 0, 800 << 10).with_id(1).encode())
        assert _wait(lambda: node.requests[Opcode.READ_OBJ] == 1)
        second.sendall(rq.read_obj(OID, 0, 800 << 10).with_id(2).encode())
        assert _wait(lambda: node.engine.stats()["waiting_for_budget"] == 1)
        assert node.requests[Opcode.READ_OBJ] == 1
        node.release()
        assert read_answers(first, 1)[0].id == 1
        assert read_answers(second, 1)[0].id == 2
    assert node.engine.stats()["peak_inflight_bytes"] <= 1 << 20


def test_a_client_that_stops_reading_is_closed_and_frees_the_budget() -> None:
    node = FakeNode()
    node.engine = Engine(node, ports=[0], name="fakenode", send_timeout=1.0)
    with node, _connect(node) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"".join(rq.read_obj(OID, 0, 4 << 20).with_id(i).encode()
                              for i in range(4)))
        assert _wait(lambda: node.engine.stats()["stall_closed"] == 1)
        assert _wait(lambda: node.engine.stats()["inflight_bytes"] == 0)
        assert node.engine.stats()["connections"] == 0


def test_an_unknown_opcode_is_answered_not_dropped() -> None:
    with FakeNode() as node, _connect(node) as sock:
        frame = bytearray(rq.read_obj(OID, 0, 0).with_id(3).encode())
        frame[1] = 0xEE  # the opcode byte
        sock.sendall(frame)
        (answer,) = read_answers(sock, 1)
    assert answer.id == 3 and answer.result == Result.INVALID_PARMS


@pytest.mark.parametrize("limits", [{"max_inflight": 0}, {"memory_budget": 0},
                                    {"idle_timeout": -1.0}])
def test_bad_limits_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Engine(FakeNode(), ports=[0], **limits)  # type: ignore[arg-type]


def test_a_large_payload_whose_tail_comes_later_is_received() -> None:
    """The engine waits for most of a large payload at once (SO_RCVLOWAT); the
    tail it waits for must never be more than what is still to come (once
    the wait was set past the small tail, the old code waited for bytes that
    would never come: the client timed out)."""
    plen = (1 << 20) + 100 * 1024
    payload = random.Random(3).randbytes(plen)
    frame = rq.write_obj(OID, 0, payload).with_id(8).encode()
    first = 48 + (64 << 10) - 48 + (1 << 20)  # the first receive's 64 KiB, then 1 MiB
    with FakeNode() as node, _connect(node) as sock:
        sock.sendall(frame[:first])
        time.sleep(0.3)  # the engine has taken the first MiB and waits for the rest
        sock.sendall(frame[first:])
        (answer,) = read_answers(sock, 1)
    assert answer.id == 8 and answer.ok
    assert node.writes == [(Opcode.WRITE_OBJ, payload)]
