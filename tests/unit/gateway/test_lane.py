"""The compiled lane (gateway/_lane.c), driven over socketpairs.

The test plays both far ends: the client on one socketpair (the lane holds
``down``, the other end) and the node on another (the lane holds ``up``).
Frames are built and parsed with the project's codec.  Every wait is bounded:
it polls until the condition holds, with a deadline of a few seconds.
"""

from __future__ import annotations

import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest

from sheepdog_backend.client import requests as rq
from sheepdog_backend.gateway import _lane
from sheepdog_backend.gateway.lane import pipe_fds
from sheepdog_backend.protocol.constants import HEADER_SIZE, Opcode, Result
from sheepdog_backend.protocol.framing import ResponseReader
from sheepdog_backend.protocol.header import (
    ObjResponse,
    Request,
    Response,
    decode_request,
    decode_request_header,
    decode_response,
    decode_response_header,
    result_response,
)
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid

DEADLINE = 5.0  # the longest any wait may take before the test fails
KIB = 1024
MIB = 1024 * KIB
MAX_PAYLOAD = 8 * MIB
BUDGET = 64 * MIB
VID = 0xABCDE
OID = vid_to_data_oid(VID, 7)
INODE_OID = vid_to_vdi_oid(VID)


class HandBack(NamedTuple):
    token: int
    reason: int
    request: bytes
    answer: bytes
    rest: bytes
    broken: bool
    message: str


@dataclass
class Pair:
    """A client connection and its node connection as the lane sees them."""

    client: socket.socket  # the test's client end
    down: socket.socket  # the lane's client side
    up: socket.socket  # the lane's node side
    node: socket.socket  # the test's node end


@dataclass
class Rig:
    """Lanes and sockets made by a test, all closed at its end."""

    lanes: list[_lane.Lane] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def lane(self, *, max_payload: int = MAX_PAYLOAD, budget: int = BUDGET, idle: float = 30.0,
             request_timeout: float = DEADLINE, stall: float = DEADLINE,
             splice: bool = True) -> _lane.Lane:
        lane = _lane.Lane(max_payload, budget, idle, request_timeout, stall, splice=splice)
        self.lanes.append(lane)
        return lane

    def pair(self, small_client_buffers: bool = False) -> Pair:
        client, down = socket.socketpair()
        up, node = socket.socketpair()
        self.sockets += [client, down, up, node]
        if small_client_buffers:
            for sock in (client, down):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * KIB)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * KIB)
        down.setblocking(False)  # the lane assumes non-blocking descriptors
        up.setblocking(False)
        client.settimeout(DEADLINE)
        node.settimeout(DEADLINE)
        return Pair(client, down, up, node)

    def adopted(self, lane: _lane.Lane, token: int = 1, small_client_buffers: bool = False
                ) -> Pair:
        pair = self.pair(small_client_buffers)
        lane.adopt(token, pair.down.fileno(), pair.up.fileno())
        return pair

    def close(self) -> None:
        for lane in self.lanes:  # first: its thread may still use the descriptors
            lane.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    try:
        yield made
    finally:
        made.close()


# -- helpers ----------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.002)


def handbacks(lane: _lane.Lane, count: int = 1, timeout: float = DEADLINE) -> list[HandBack]:
    """Wait on the lane's eventfd until ``count`` hand-backs came."""
    got: list[HandBack] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{len(got)} of {count} hand-backs within {timeout} s: {got}")
        select.select([lane.fileno()], [], [], left)
        got += [HandBack(*raw) for raw in lane.handbacks()]
    return got


def handback(lane: _lane.Lane, timeout: float = DEADLINE) -> HandBack:
    (one,) = handbacks(lane, 1, timeout)
    return one


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), MIB))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def node_receives(pair: Pair) -> bytes:
    """One whole request as it reaches the node."""
    header = recv_exact(pair.node, HEADER_SIZE)
    length = decode_request_header(header).payload_length
    return header + recv_exact(pair.node, length)


def client_receives(pair: Pair) -> bytes:
    """One whole answer as it reaches the client."""
    header = recv_exact(pair.client, HEADER_SIZE)
    return header + recv_exact(pair.client, decode_response_header(header).data_length)


def available(sock: socket.socket) -> bytes:
    """What ``sock`` holds right now, without waiting."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(MIB):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(timeout)
    return b"".join(chunks)


def assert_silent(sock: socket.socket) -> None:
    """Nothing has arrived on ``sock``."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(1)
    finally:
        sock.settimeout(timeout)


def lane_took_all(pair: Pair) -> bool:
    """The lane has received every byte the client sent so far."""
    try:
        pair.down.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    return False


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def read_request(length: int = 4 * KIB, request_id: int = 1, oid: int = OID) -> Request:
    return rq.read_obj(oid, 0, length).with_id(request_id)


def write_request(data: bytes, request_id: int = 1, oid: int = OID) -> Request:
    return rq.write_obj(oid, 4 * KIB, data).with_id(request_id)


def read_answer(request: Request, data: bytes, *, epoch: int = 0) -> bytes:
    return Response(opcode=Opcode.READ_OBJ, body=ObjResponse(), id=request.id, epoch=epoch,
                    payload=data).encode()


def answer(request: Request, result: int = Result.SUCCESS, *, epoch: int = 0) -> bytes:
    return result_response(request, result, epoch=epoch).encode()


def relay_read(lane: _lane.Lane, pair: Pair, request_id: int, *, epoch: int = 0) -> None:
    """A 4 KiB read goes through the lane, both ways byte-exact."""
    request = read_request(request_id=request_id)
    reply = read_answer(request, payload(4 * KIB, request_id), epoch=epoch)
    pair.client.sendall(request.encode())
    assert node_receives(pair) == request.encode()
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    assert lane.handbacks() == []


def relayed(lane: _lane.Lane) -> int:
    value = lane.counts()["relayed"]
    assert isinstance(value, int)
    return value


def spliced(lane: _lane.Lane) -> int:
    value = lane.counts()["spliced"]
    assert isinstance(value, int)
    return value


def handed_back(lane: _lane.Lane) -> dict[str, int]:
    value = lane.counts()["handed_back"]
    assert isinstance(value, dict)
    return value


# -- relaying ---------------------------------------------------------------------------

# large answers (128 KiB and up) go through a pipe (splice), or are copied
BOTH_PATHS = pytest.mark.parametrize("splice", [True, False], ids=["spliced", "copied"])


def test_a_write_and_a_read_are_relayed_byte_exact_and_counted(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane)
    data = payload(4 * KIB)
    write = write_request(data, request_id=11)
    write_reply = answer(write)
    pair.client.sendall(write.encode())
    received = node_receives(pair)
    assert received == write.encode()
    assert decode_request(received).payload == data
    pair.node.sendall(write_reply)
    assert client_receives(pair) == write_reply

    read = read_request(4 * KIB, request_id=12)
    read_reply = read_answer(read, data)
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(read_reply)
    got = client_receives(pair)
    assert got == read_reply
    assert decode_response(got).payload == data

    wait_until(lambda: relayed(lane) == 2, "both requests counted")
    ((vid, reads, writes, read_bytes, write_bytes, busy, longest),) = lane.take_stats()
    assert (vid, reads, writes, read_bytes, write_bytes) == (VID, 1, 1, 4 * KIB, 4 * KIB)
    assert 0 <= longest <= busy < DEADLINE
    assert lane.take_stats() == []  # counters since the last call
    wait_until(lambda: lane.counts()["budget_used"] == 0, "the budget given back")
    counts = lane.counts()
    assert counts["pairs"] == 1 and counts["inflight_writes"] == 0
    assert sum(handed_back(lane).values()) == 0
    assert lane.handbacks() == []


@BOTH_PATHS
def test_a_large_read_answer_sent_in_pieces_arrives_whole(rig: Rig, splice: bool) -> None:
    lane = rig.lane(splice=splice)
    pair = rig.adopted(lane)
    read = read_request(MIB)
    reply = read_answer(read, payload(MIB, 2))
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()

    def node_sends() -> None:
        for start in range(0, len(reply), 61 * KIB):  # pieces that split the header too
            pair.node.sendall(reply[start:start + 61 * KIB])

    sender = threading.Thread(target=node_sends)
    sender.start()
    try:
        reader = ResponseReader()
        got = bytearray()
        message = None
        while message is None:
            chunk = pair.client.recv(MIB)
            assert chunk, "the client's connection ended"
            got += chunk
            reader.feed(chunk)
            message = reader.next_message()
    finally:
        sender.join(DEADLINE)
    assert not sender.is_alive()
    assert bytes(got) == reply
    assert message.payload == reply[HEADER_SIZE:]
    wait_until(lambda: relayed(lane) == 1, "the read counted")
    assert spliced(lane) == int(splice)
    assert lane.take_stats()[0][1:5] == (1, 0, MIB, 0)
    assert lane.handbacks() == []


def test_a_large_write_arriving_in_pieces_is_relayed_whole(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane)
    write = write_request(payload(MIB, 5), request_id=77)
    wire = write.encode()
    sender = threading.Thread(target=pair.client.sendall, args=(wire,))
    sender.start()
    try:
        assert node_receives(pair) == wire
    finally:
        sender.join(DEADLINE)
    reply = answer(write)
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    wait_until(lambda: relayed(lane) == 1, "the write counted")
    assert lane.take_stats()[0][1:5] == (0, 1, 0, MIB)
    assert lane.handbacks() == []


# -- large answers through a pipe ------------------------------------------------------


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def read_slowly(sock: socket.socket, n: int, piece: int) -> bytes:
    """``n`` bytes, taken ``piece`` at a time with a pause between."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(piece, n - len(buf)))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
        time.sleep(0.0002)
    return bytes(buf)


def test_large_answers_one_after_another_arrive_whole_and_reuse_their_pipes(rig: Rig) -> None:
    lane = rig.lane()
    pairs = [rig.adopted(lane, token=t, small_client_buffers=True) for t in (1, 2)]
    sizes = [128 * KIB, MIB, 3 * MIB + 5, 200 * KIB, MIB]

    def one_read(pair: Pair, size: int, seed: int) -> None:
        read = read_request(size, request_id=seed)
        reply = read_answer(read, payload(size, seed))
        pair.client.sendall(read.encode())
        assert node_receives(pair) == read.encode()
        sender = threading.Thread(target=pair.node.sendall, args=(reply,))
        sender.start()
        try:  # a client slower than the node: the pipe is its buffer
            assert read_slowly(pair.client, len(reply), 48 * KIB) == reply
        finally:
            sender.join(DEADLINE)
        assert not sender.is_alive()

    def both_pairs_read(round_: int) -> None:
        threads = [threading.Thread(target=lambda p=pair, i=i: [
            one_read(p, size, 1000 * round_ + 10 * i + k) for k, size in enumerate(sizes)])
            for i, pair in enumerate(pairs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(4 * DEADLINE)
            assert not t.is_alive()

    both_pairs_read(0)  # the pipes are made
    before = open_descriptors()
    for round_ in (1, 2):
        both_pairs_read(round_)
    wait_until(lambda: relayed(lane) == 3 * len(pairs) * len(sizes), "every read counted")
    assert open_descriptors() == before  # pipes go back to the pool, none leak
    assert spliced(lane) == relayed(lane)  # every answer here is large enough
    assert lane.handbacks() == []
    assert lane.counts()["budget_used"] == 0


def test_pipes_in_use_stay_within_what_the_budget_allows(rig: Rig) -> None:
    # the gateway reserves descriptors for the lane's pipes (lane.pipe_fds):
    # one pipe per large answer the budget lets in flight, plus the pool
    budget = 2 * MIB
    lane = rig.lane(budget=budget)
    before = open_descriptors()
    pairs = [rig.adopted(lane, token=t) for t in (1, 2, 3)]
    made = open_descriptors()
    reads = [read_request(MIB, request_id=t) for t in (1, 2, 3)]
    for pair, read in zip(pairs[:2], reads, strict=False):
        pair.client.sendall(read.encode())
        assert node_receives(pair) == read.encode()
    pairs[2].client.sendall(reads[2].encode())  # over the budget: back to Python
    assert handback(lane).reason == _lane.REQUEST
    for pair, read in zip(pairs[:2], reads, strict=False):  # two answers under way
        pair.node.sendall(read_answer(read, payload(MIB, 40))[:HEADER_SIZE + 64 * KIB])
    wait_until(lambda: open_descriptors() == made + 2 * 2, "a pipe per answer under way")
    assert budget // _lane.STREAM_FROM >= 2
    assert open_descriptors() - before <= 3 * 4 + pipe_fds(budget)  # sockets + pipes


@BOTH_PATHS
def test_a_large_answer_for_a_client_that_hung_up_is_taken_whole(rig: Rig, splice: bool
                                                                 ) -> None:
    lane = rig.lane(splice=splice)
    pair = rig.adopted(lane, token=23)
    read = read_request(2 * MIB)
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.client.close()
    pair.node.sendall(read_answer(read, payload(2 * MIB, 23)))  # returns once taken
    back = handback(lane)
    assert (back.token, back.reason) == (23, _lane.CLOSED)
    assert not back.request and not back.broken
    assert spliced(lane) == int(splice)
    with pytest.raises(BlockingIOError):  # the node's connection is at a frame boundary
        pair.up.recv(1, socket.MSG_PEEK)
    assert lane.counts()["budget_used"] == 0


def test_a_large_read_answered_with_an_error_or_a_new_epoch_comes_back_whole(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=24)
    read = read_request(MIB, request_id=1)
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    reply = answer(read, Result.NO_OBJ)
    pair.node.sendall(reply)
    back = handback(lane)
    assert (back.reason, back.request, back.answer) == (_lane.ANSWER, read.encode(), reply)

    pair = rig.adopted(lane, token=25)
    read = read_request(MIB, request_id=2)
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    reply = read_answer(read, payload(MIB, 25), epoch=9)
    pair.node.sendall(reply)
    back = handback(lane)
    assert (back.reason, back.request, back.answer) == (_lane.ANSWER, read.encode(), reply)
    assert_silent(pair.client)
    assert spliced(lane) == 0  # judged answers are collected whole


def test_a_large_read_with_a_short_answer_reaches_the_client_whole(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane)
    read = read_request(MIB)
    reply = read_answer(read, payload(64 * KIB, 26))  # under the pipe's threshold
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    wait_until(lambda: relayed(lane) == 1, "the read counted")
    assert lane.handbacks() == []
    assert spliced(lane) == 0


def test_a_request_sent_one_byte_at_a_time_is_relayed_whole(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane)
    write = write_request(payload(200))
    wire = write.encode()
    for byte in wire[:-1]:
        pair.client.send(bytes([byte]))
        time.sleep(0.0005)
    wait_until(lambda: lane_took_all(pair), "the lane took every byte but the last")
    assert_silent(pair.node)  # nothing of an unfinished request goes on
    pair.client.send(wire[-1:])
    assert node_receives(pair) == wire
    reply = answer(write)
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    assert lane.handbacks() == []


def test_an_answer_sent_one_byte_at_a_time_reaches_the_client_whole(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane)
    read = read_request(100)
    reply = read_answer(read, payload(100, 3))
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    for byte in reply:
        pair.node.send(bytes([byte]))
        time.sleep(0.0005)
    assert client_receives(pair) == reply
    assert lane.handbacks() == []


def test_pairs_answered_out_of_order_each_get_their_own_answer(rig: Rig) -> None:
    lane = rig.lane()
    pairs = [rig.adopted(lane, token) for token in (1, 2, 3, 4)]
    reads = [read_request(4 * KIB, 1, vid_to_data_oid(VID + n, n)) for n in range(4)]
    for pair, read in zip(pairs, reads, strict=True):
        pair.client.sendall(read.encode())
    for pair, read in zip(pairs, reads, strict=True):
        assert node_receives(pair) == read.encode()
    replies = [read_answer(read, payload(4 * KIB, n)) for n, read in enumerate(reads)]
    for pair, reply in reversed(list(zip(pairs, replies, strict=True))):
        pair.node.sendall(reply)
    for pair, reply in zip(pairs, replies, strict=True):
        assert client_receives(pair) == reply
    wait_until(lambda: relayed(lane) == 4, "four reads counted")
    stats = {vid: counters for vid, *counters in lane.take_stats()}
    assert {vid: tuple(c[:4]) for vid, c in stats.items()} == {
        VID + n: (1, 0, 4 * KIB, 0) for n in range(4)}
    assert lane.counts()["pairs"] == 4
    assert lane.handbacks() == []


def test_counters_of_many_vdis_are_kept_apart(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane)
    vids = [VID + 1000 * n for n in range(70)]  # more than the first table holds
    for n, vid in enumerate(vids):
        read = read_request(512, n + 1, vid_to_data_oid(vid, 0))
        pair.client.sendall(read.encode())
        assert node_receives(pair) == read.encode()
        reply = read_answer(read, payload(512, n))
        pair.node.sendall(reply)
        assert client_receives(pair) == reply
    wait_until(lambda: relayed(lane) == len(vids), "every read counted")
    stats = lane.take_stats()
    assert sorted(vid for vid, *_ in stats) == vids
    assert {tuple(counters[:4]) for _, *counters in stats} == {(1, 0, 512, 0)}


# -- REQUEST: what the lane does not relay -------------------------------------------------


@pytest.mark.parametrize(("request_", "budget"), [
    pytest.param(rq.read_obj(INODE_OID, 0, 4 * KIB).with_id(5), BUDGET, id="inode-read"),
    pytest.param(rq.write_obj(INODE_OID, 0, payload(512)).with_id(5), BUDGET, id="inode-write"),
    pytest.param(rq.get_vdi_info("volume-1").with_id(5), BUDGET, id="get-vdi-info"),
    pytest.param(read_request(MAX_PAYLOAD + 1, 5), BUDGET, id="read-over-max-payload"),
    pytest.param(write_request(payload(8 * KIB), 5), 4 * KIB, id="write-over-budget"),
    pytest.param(read_request(8 * KIB, 5), 4 * KIB, id="read-over-budget"),
])
def test_a_request_the_lane_does_not_relay_comes_back_unsent(rig: Rig, request_: Request,
                                                              budget: int) -> None:
    lane = rig.lane(budget=budget)
    pair = rig.adopted(lane, token=42)
    wire = request_.encode()
    pair.client.sendall(wire)
    back = handback(lane)
    assert (back.token, back.reason) == (42, _lane.REQUEST)
    assert back.rest == wire
    assert not back.request and not back.answer and not back.broken
    assert_silent(pair.node)
    assert_silent(pair.client)
    assert lane.counts()["pairs"] == 0
    assert handed_back(lane)["request"] == 1
    assert lane.counts()["budget_used"] == 0 and lane.inflight_writes() == 0


def test_a_header_completed_after_a_pause_comes_back_unsent(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=3)
    wire = read_request().encode()
    pair.client.sendall(wire[:10])
    wait_until(lambda: lane_took_all(pair), "the lane took the first bytes")
    lane.pause()  # a pair in the middle of a header is not idle: it is not recalled
    pair.client.sendall(wire[10:])
    back = handback(lane)
    assert (back.token, back.reason, back.rest) == (3, _lane.REQUEST, wire)
    assert_silent(pair.node)


def test_requests_sent_before_the_answer_come_back_after_it(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=6)
    first, second = read_request(request_id=1), read_request(request_id=2)
    pair.client.sendall(first.encode() + second.encode())
    assert node_receives(pair) == first.encode()
    reply = read_answer(first, payload(4 * KIB))
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    back = handback(lane)
    assert (back.token, back.reason) == (6, _lane.REQUEST)
    assert back.rest == second.encode()
    assert_silent(pair.node)  # the second request never went on
    wait_until(lambda: relayed(lane) == 1, "the first read counted")


# -- ANSWER: what the lane does not pass on ----------------------------------------------


def test_an_answer_with_an_error_comes_back_whole(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=8)
    read = read_request()
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    reply = answer(read, Result.NO_OBJ)
    pair.node.sendall(reply)
    back = handback(lane)
    assert (back.token, back.reason) == (8, _lane.ANSWER)
    assert back.request == read.encode()
    assert back.answer == reply
    assert not back.rest and not back.broken
    assert_silent(pair.client)
    assert relayed(lane) == 0
    assert lane.counts()["budget_used"] == 0


def test_an_error_answer_with_a_payload_comes_back_whole(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane)
    write = write_request(payload(4 * KIB))
    pair.client.sendall(write.encode())
    assert node_receives(pair) == write.encode()
    reply = Response(opcode=Opcode.WRITE_OBJ, result=Result.EIO, body=ObjResponse(),
                     id=write.id, payload=b"why it failed").encode()
    pair.node.sendall(reply)
    back = handback(lane)
    assert (back.reason, back.request, back.answer) == (_lane.ANSWER, write.encode(), reply)
    assert_silent(pair.client)
    assert lane.inflight_writes() == 0


def test_an_answer_of_a_newer_epoch_comes_back_then_passes_once_known(rig: Rig) -> None:
    lane = rig.lane()
    lane.set_epoch(3)
    pair = rig.adopted(lane, token=9)
    relay_read(lane, pair, request_id=1, epoch=2)  # older than known: passes

    read = read_request(request_id=2)
    reply = read_answer(read, payload(4 * KIB), epoch=5)
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(reply)
    back = handback(lane)
    assert (back.token, back.reason) == (9, _lane.ANSWER)
    assert (back.request, back.answer) == (read.encode(), reply)
    assert_silent(pair.client)

    lane.set_epoch(5)
    lane.adopt(10, pair.down.fileno(), pair.up.fileno())
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    assert lane.handbacks() == []


def test_the_lane_raises_its_epoch_after_handing_one_back(rig: Rig) -> None:
    lane = rig.lane()
    lane.set_epoch(3)
    pair = rig.adopted(lane, token=1)
    read = read_request()
    reply = read_answer(read, payload(4 * KIB), epoch=4)
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(reply)
    assert handback(lane).reason == _lane.ANSWER  # Python hears of epoch 4 once
    lane.adopt(2, pair.down.fileno(), pair.up.fileno())
    relay_read(lane, pair, request_id=2, epoch=4)
    lane.set_epoch(1)  # never lowers it
    relay_read(lane, pair, request_id=3, epoch=4)


# -- UPSTREAM: the node's side fails ------------------------------------------------------


def test_a_node_closing_under_a_request_hands_the_request_back(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=4)
    write = write_request(payload(4 * KIB))
    pair.client.sendall(write.encode())
    assert node_receives(pair) == write.encode()
    pair.node.close()
    back = handback(lane)
    assert (back.token, back.reason) == (4, _lane.UPSTREAM)
    assert back.request == write.encode()
    assert not back.broken
    assert "closed" in back.message
    assert_silent(pair.client)
    assert lane.inflight_writes() == 0 and lane.counts()["budget_used"] == 0


@BOTH_PATHS
def test_a_node_closing_in_the_middle_of_an_answer_is_a_broken_answer(rig: Rig,
                                                                      splice: bool) -> None:
    lane = rig.lane(splice=splice)
    pair = rig.adopted(lane, token=4)
    read = read_request(MIB)
    reply = read_answer(read, payload(MIB, 4))
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(reply[:HEADER_SIZE + MIB // 2])
    pair.node.close()
    back = handback(lane)
    assert (back.token, back.reason) == (4, _lane.UPSTREAM)
    assert back.request == read.encode()
    assert back.broken
    got = available(pair.client)
    assert got and reply.startswith(got)  # a prefix of the answer went on, nothing else
    assert spliced(lane) == int(splice)


def test_a_small_answer_cut_short_reaches_the_client_not_at_all(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=4)
    read = read_request(64 * KIB)  # small answers go on whole or not at all
    reply = read_answer(read, payload(64 * KIB, 6))
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(reply[:HEADER_SIZE + 32 * KIB])
    pair.node.close()
    back = handback(lane)
    assert (back.token, back.reason) == (4, _lane.UPSTREAM)
    assert back.request == read.encode()
    assert not back.broken  # Python may send the request again
    assert_silent(pair.client)


def test_a_node_that_does_not_answer_in_time_hands_the_request_back(rig: Rig) -> None:
    lane = rig.lane(request_timeout=0.3)
    pair = rig.adopted(lane, token=5)
    read = read_request()
    sent = time.monotonic()  # before the lane can start the request's clock
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    back = handback(lane)
    assert time.monotonic() - sent >= 0.3
    assert (back.token, back.reason) == (5, _lane.UPSTREAM)
    assert back.request == read.encode()
    assert not back.broken
    assert "no answer within" in back.message
    assert_silent(pair.client)


def test_a_node_closing_while_the_pair_is_quiet_is_upstream_without_a_request(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=7)
    relay_read(lane, pair, request_id=1)
    pair.node.close()
    back = handback(lane)
    assert (back.token, back.reason) == (7, _lane.UPSTREAM)
    assert not back.request and not back.broken


def test_bytes_the_node_sends_unasked_are_upstream(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=7)
    pair.node.sendall(answer(read_request()))
    back = handback(lane)
    assert (back.token, back.reason) == (7, _lane.UPSTREAM)
    assert not back.request
    assert_silent(pair.client)


def test_an_answer_to_another_request_is_upstream(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=7)
    read = read_request(request_id=1)
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(read_answer(read_request(request_id=2), payload(4 * KIB)))
    back = handback(lane)
    assert (back.reason, back.request, back.broken) == (_lane.UPSTREAM, read.encode(), False)
    assert "unexpected answer" in back.message
    assert_silent(pair.client)


def test_a_read_answer_longer_than_asked_is_upstream(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=7)
    read = read_request(4 * KIB)
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(read_answer(read, payload(8 * KIB)))
    back = handback(lane)
    assert (back.reason, back.request, back.broken) == (_lane.UPSTREAM, read.encode(), False)
    assert_silent(pair.client)


# -- CLOSED, IDLE and pauses -------------------------------------------------------------


def test_a_client_closing_a_quiet_pair_is_closed(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=12)
    relay_read(lane, pair, request_id=1)
    pair.client.close()
    back = handback(lane)
    assert (back.token, back.reason) == (12, _lane.CLOSED)
    assert not back.request and not back.answer and not back.rest
    assert_silent(pair.node)
    # the lane never closes a descriptor: both of its ends are still open
    pair.up.sendall(b"still open")
    assert pair.node.recv(10) == b"still open"
    assert pair.down.fileno() >= 0 and pair.down.recv(1) == b""


def test_a_client_hanging_up_under_its_request_is_closed_after_the_answer(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane, token=22)
    read = read_request()
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.client.close()
    pair.node.sendall(read_answer(read, payload(4 * KIB)))
    back = handback(lane)
    assert (back.token, back.reason) == (22, _lane.CLOSED)
    assert not back.request and not back.broken
    # the node's answer was taken whole: its connection is at a frame boundary
    with pytest.raises(BlockingIOError):
        pair.up.recv(1, socket.MSG_PEEK)


def test_descriptors_the_lane_cannot_watch_come_straight_back(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.pair()
    spare = socket.socket(socket.AF_UNIX)
    closed = spare.fileno()
    spare.close()
    lane.adopt(23, pair.down.fileno(), closed)
    assert handback(lane)[:2] == (23, _lane.IDLE)
    assert lane.counts()["pairs"] == 0
    lane.adopt(24, pair.down.fileno(), pair.up.fileno())  # the good fd was let go
    relay_read(lane, pair, request_id=1)


def test_a_quiet_pair_comes_back_idle(rig: Rig) -> None:
    lane = rig.lane(idle=0.3)
    adopted = time.monotonic()
    rig.adopted(lane, token=13)
    back = handback(lane)
    assert time.monotonic() - adopted >= 0.3
    assert (back.token, back.reason) == (13, _lane.IDLE)
    assert lane.counts()["pairs"] == 0
    assert handed_back(lane)["idle"] == 1


def test_a_quiet_pair_comes_back_at_once_on_a_pause(rig: Rig) -> None:
    lane = rig.lane(idle=60.0)
    pair = rig.adopted(lane, token=14)
    relay_read(lane, pair, request_id=1)
    assert not lane.paused
    lane.pause()
    assert lane.paused
    back = handback(lane, timeout=2.0)
    assert (back.token, back.reason) == (14, _lane.IDLE)
    lane.adopt(15, pair.down.fileno(), pair.up.fileno())  # while paused: straight back
    assert handback(lane, timeout=2.0)[:2] == (15, _lane.IDLE)


def test_a_read_in_flight_on_a_pause_is_answered_then_comes_back_idle(rig: Rig) -> None:
    lane = rig.lane(idle=60.0)
    pair = rig.adopted(lane, token=16)
    read = read_request()
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    lane.pause()
    reply = read_answer(read, payload(4 * KIB))
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    assert handback(lane)[:2] == (16, _lane.IDLE)


def test_a_write_answered_during_a_pause_comes_back_and_resume_relays_again(rig: Rig) -> None:
    lane = rig.lane(idle=60.0)
    pair = rig.adopted(lane, token=17)
    write = write_request(payload(4 * KIB))
    pair.client.sendall(write.encode())
    assert node_receives(pair) == write.encode()
    lane.pause()
    reply = answer(write)
    pair.node.sendall(reply)
    back = handback(lane)
    assert (back.token, back.reason) == (17, _lane.ANSWER)
    assert (back.request, back.answer) == (write.encode(), reply)
    assert_silent(pair.client)  # the replay keeps it: the client hears nothing yet
    assert lane.inflight_writes() == 0

    lane.resume()
    assert not lane.paused
    lane.adopt(18, pair.down.fileno(), pair.up.fileno())
    pair.client.sendall(write.encode())
    assert node_receives(pair) == write.encode()
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    assert lane.handbacks() == []


def test_recall_gives_back_the_quiet_pairs_only(rig: Rig) -> None:
    lane = rig.lane(idle=60.0)
    quiet = rig.adopted(lane, token=1)
    busy = rig.adopted(lane, token=2)
    read = read_request()
    busy.client.sendall(read.encode())
    assert node_receives(busy) == read.encode()
    lane.recall()
    assert handback(lane)[:2] == (1, _lane.IDLE)
    assert not lane.paused
    reply = read_answer(read, payload(4 * KIB))
    busy.node.sendall(reply)
    assert client_receives(busy) == reply
    wait_until(lambda: relayed(lane) == 1, "the read counted")
    relay_read(lane, busy, request_id=2)  # not paused: the busy pair stays in the lane
    assert lane.counts()["pairs"] == 1
    assert_silent(quiet.node)


# -- STALLED ---------------------------------------------------------------------------


@BOTH_PATHS
def test_a_client_that_stops_reading_an_answer_is_stalled(rig: Rig, splice: bool) -> None:
    lane = rig.lane(splice=splice, stall=0.3)
    pair = rig.adopted(lane, token=19, small_client_buffers=True)
    read = read_request(4 * MIB)
    reply = read_answer(read, payload(4 * MIB, 9))
    pair.client.sendall(read.encode())
    assert node_receives(pair) == read.encode()
    pair.node.sendall(reply)  # the lane takes it all: the client is what is slow
    back = handback(lane)
    assert (back.token, back.reason) == (19, _lane.STALLED)
    assert back.request == read.encode()
    tail = back.answer
    assert 0 < len(tail) < len(reply)
    got = available(pair.client)
    assert len(got) + len(tail) == len(reply)
    assert got + tail == reply  # the tail is the answer's end
    assert spliced(lane) == int(splice)
    assert lane.counts()["budget_used"] == 0
    assert_silent(pair.node)


# -- counters --------------------------------------------------------------------------


def test_a_write_is_in_flight_until_its_answer(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.adopted(lane)
    assert lane.inflight_writes() == 0
    write = write_request(payload(4 * KIB))
    pair.client.sendall(write.encode())
    assert node_receives(pair) == write.encode()
    assert lane.inflight_writes() == 1
    assert lane.counts()["inflight_writes"] == 1
    assert lane.counts()["budget_used"] == 4 * KIB
    reply = answer(write)
    pair.node.sendall(reply)
    assert client_receives(pair) == reply
    wait_until(lambda: lane.inflight_writes() == 0, "the write no longer in flight")
    assert lane.counts()["inflight_writes"] == 0


def test_the_eventfd_is_readable_only_while_hand_backs_wait(rig: Rig) -> None:
    lane = rig.lane()
    assert select.select([lane.fileno()], [], [], 0)[0] == []
    pair = rig.adopted(lane, token=20)
    pair.client.close()
    readable, _, _ = select.select([lane.fileno()], [], [], DEADLINE)
    assert readable == [lane.fileno()]
    assert [raw[:2] for raw in lane.handbacks()] == [(20, _lane.CLOSED)]
    assert select.select([lane.fileno()], [], [], 0)[0] == []
    assert lane.handbacks() == []


def test_empty_hand_back_fields_are_bytes(rig: Rig) -> None:
    """_lane.pyi: request, answer and rest are bytes, b"" when there are none."""
    lane = rig.lane()
    pair = rig.adopted(lane, token=21)
    pair.client.close()
    back = handback(lane)
    assert back.reason == _lane.CLOSED
    assert (back.request, back.answer, back.rest) == (b"", b"", b"")


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", [
    pytest.param((0, BUDGET, 1.0, 1.0, 1.0), id="max_payload-0"),
    pytest.param((-1, BUDGET, 1.0, 1.0, 1.0), id="max_payload-negative"),
    pytest.param((MAX_PAYLOAD, -1, 1.0, 1.0, 1.0), id="budget-negative"),
    pytest.param((MAX_PAYLOAD, BUDGET, 0.0, 1.0, 1.0), id="idle-0"),
    pytest.param((MAX_PAYLOAD, BUDGET, 1.0, 0.0, 1.0), id="request_timeout-0"),
    pytest.param((MAX_PAYLOAD, BUDGET, 1.0, 1.0, 0.0), id="stall-0"),
    pytest.param((MAX_PAYLOAD, BUDGET, 1.0, 1.0, -0.5), id="stall-negative"),
])
def test_bad_lane_arguments_are_refused(arguments: tuple[int, int, float, float, float]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        _lane.Lane(*arguments)


def test_a_lane_with_no_budget_relays_nothing(rig: Rig) -> None:
    lane = rig.lane(budget=0)
    pair = rig.adopted(lane)
    wire = read_request().encode()
    pair.client.sendall(wire)
    back = handback(lane)
    assert (back.reason, back.rest) == (_lane.REQUEST, wire)
    assert_silent(pair.node)


@pytest.mark.parametrize(("down", "up"), [(-1, 5), (5, -1), (5, 5)])
def test_bad_descriptors_are_refused(rig: Rig, down: int, up: int) -> None:
    lane = rig.lane()
    with pytest.raises(ValueError, match="two distinct"):
        lane.adopt(1, down, up)


def test_adopt_after_close_is_refused(rig: Rig) -> None:
    lane = rig.lane()
    pair = rig.pair()
    lane.close()
    lane.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        lane.adopt(1, pair.down.fileno(), pair.up.fileno())
