"""Issue 24's fairness figure for the embedded server: a well-behaved client
is answered within 1 s while 30 clients never read their replies and 400
connections sit idle.

How it works: ``answer_under_pressure(host, port, oid, expected)`` opens 400
connections that send nothing, then 30 connections (64 KiB receive buffer)
that each pipeline 16 READ_OBJ of 4 MiB of object ``oid`` and never read a
byte (1.9 GiB asked for, far past the default 256 MiB memory budget).  It
waits until reply bytes sit unread in those sockets and their total has
stopped growing for 0.5 s (the server is stuck writing to them; observed
from the client side with FIONREAD, so it holds for any engine), then a
fresh client connects, asks for the first ``len(expected)`` bytes of the
object and times connect + request -> the whole answer.  Every socket is
closed before it returns; every wait is bounded (20 s each).  The test runs
it against an EmbeddedServer with its default limits, as ``serve`` runs,
on loopback, stopped whatever happens.  benchmarks/bench_server.py imports
the same function to measure it against a ``serve`` process.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import time
from dataclasses import dataclass
from pathlib import Path

from sheepdog_backend.client.client import SheepdogClient
from sheepdog_backend.client.requests import read_obj
from sheepdog_backend.protocol.framing import ResponseReader
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.embedded import EmbeddedServer

MIB = 1 << 20
HOSTILE = 30  # clients that never read their replies
PIPELINED = 16  # 4 MiB reads each of them sends
IDLE = 400  # connections that send nothing
GOAL = 1.0  # seconds


@dataclass(frozen=True)
class Answer:
    seconds: float  # connect + request -> the whole answer
    exact: bool  # the answer was a success carrying exactly the expected bytes
    unread: int  # reply bytes sitting unread in the hostile sockets when it asked
    result: int  # the answer's result code


def _unread(sock: socket.socket) -> int:
    got = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", got)[0])


def answer_under_pressure(host: str, port: int, oid: int, expected: bytes, *,
                          hostile: int = HOSTILE, idle: int = IDLE,
                          timeout: float = 20.0) -> Answer:
    """The well-behaved client's answer while ``hostile`` clients never read
    and ``idle`` sit idle (see the module docstring)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(idle):
            socks.append(socket.create_connection((host, port), timeout=timeout))
        greedy = []
        request = read_obj(oid, 0, 4 * MIB).encode()
        for _ in range(hostile):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.sendall(request * PIPELINED)
            greedy.append(sock)
        deadline = time.monotonic() + timeout
        last, steady_since = -1, time.monotonic()
        while True:  # until the server is stuck writing to the greedy clients
            counts = [_unread(s) for s in greedy]
            now = time.monotonic()
            if sum(counts) != last:
                last, steady_since = sum(counts), now
            elif last > 0 and now - steady_since >= 0.5:
                break
            if now > deadline:
                raise AssertionError(f"the greedy clients' unread replies did not settle "
                                     f"within {timeout:g} s: {counts}")
            time.sleep(0.05)
        reader = ResponseReader()
        started = time.monotonic()
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(read_obj(oid, 0, len(expected)).encode())
            while (response := reader.next_message()) is None:
                data = sock.recv(1 << 20)
                if not data:
                    raise AssertionError("the server closed the well-behaved client's "
                                         f"connection after {time.monotonic() - started:.2f} s")
                reader.feed(data)
            seconds = time.monotonic() - started
        return Answer(seconds=seconds, exact=response.ok and response.payload == expected,
                      unread=last, result=int(response.result))
    finally:
        for sock in socks:
            sock.close()


def test_a_well_behaved_client_is_answered_within_a_second_while_others_never_read(
        tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "sheep").start()  # the default limits
    try:
        data = os.urandom(4 * MIB)
        with SheepdogClient(server.gateways) as client:
            vid = client.create_vdi("fair", 64 * MIB).vid
            client.write("fair", 0, data)
        host, port = server.addresses[0]
        answer = answer_under_pressure(host, port, vid_to_data_oid(vid, 0), data[:MIB])
    finally:
        server.stop()
    print(f"well-behaved client answered in {answer.seconds:.3f} s (result {answer.result:#x}, "
          f"exact {answer.exact}) while {HOSTILE} clients left {answer.unread} bytes unread "
          f"and {IDLE} sat idle")
    assert answer.exact, f"the answer was not the object's bytes (result {answer.result:#x})"
    assert answer.seconds <= GOAL, (f"the well-behaved client waited {answer.seconds:.2f} s "
                                    f"(goal {GOAL:g} s)")
