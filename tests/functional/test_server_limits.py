"""The embedded server's memory and threads stay bounded whatever clients do
(issue 9 item 6): a server-wide in-flight byte budget with backpressure, a
connection limit and idle / send-stall timeouts, while a well-behaved client
keeps being served.  Measured with the server's own accounting (stats()), the
process's RSS and thread counts, on loopback with bounded loads."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.client.client import SheepdogClient
from sheepdog_backend.client.requests import read_obj
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.embedded import EmbeddedServer

MIB = 1 << 20
HOSTILE = 30
PIPELINED = 16  # 4 MiB reads per hostile connection, never read back


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _connect(server: EmbeddedServer) -> socket.socket:
    host, port = server.addresses[0]
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    return sock


def _wait(cond: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def hostile_server(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, int]]:
    server = EmbeddedServer(tmp_path / "sheep", memory_budget=64 * MIB,
                            pressure_stall=1.0, send_timeout=30.0).start()
    try:
        with SheepdogClient(server.gateways) as client:
            vid = client.create_vdi("big", 64 * MIB).vid
            client.write("big", 0, os.urandom(4 * MIB))
        yield server, vid
    finally:
        server.stop()


def test_clients_that_never_read_replies_cannot_exhaust_memory(
        hostile_server: tuple[EmbeddedServer, int]) -> None:
    server, vid = hostile_server
    request = read_obj(vid_to_data_oid(vid, 0), 0, 4 * MIB).encode()
    rss_before = _rss()
    socks = []
    try:
        for _ in range(HOSTILE):
            sock = _connect(server)
            sock.sendall(request * PIPELINED)  # 30 x 64 MiB asked for, never read
            socks.append(sock)
        assert _wait(lambda: server.stats()["waiting_for_budget"] > 0)
        time.sleep(1.0)
        stats = server.stats()
        growth = _rss() - rss_before
        print(f"hostile: {HOSTILE} x {PIPELINED} x 4 MiB reads; stats {stats}; "
              f"RSS growth {growth / MIB:.0f} MiB")
        assert stats["peak_inflight_bytes"] <= 64 * MIB
        assert growth < (64 + 200) * MIB  # budget + generous slack; was ~2 GiB
        # a well-behaved client is still served: stalled hostile connections
        # are closed once others wait for the budget
        started = time.monotonic()
        with SheepdogClient(server.gateways, request_timeout=30.0) as client:
            assert len(client.read("big", 0, 4 * MIB)) == 4 * MIB
            client.write("big", 8 * MIB, b"\x07" * 65536)
            assert client.read("big", 8 * MIB, 65536) == b"\x07" * 65536
        print(f"well-behaved client served after {time.monotonic() - started:.1f} s; "
              f"stats {server.stats()}")
        assert server.stats()["stall_closed"] >= 1
    finally:
        for sock in socks:
            sock.close()
    assert _wait(lambda: server.stats()["inflight_bytes"] == 0)


def _eof(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (waits up to its timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_at_the_connection_limit_a_quiet_connection_makes_room(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "sheep", max_connections=5) as server:
        with SheepdogClient(server.gateways) as client:  # the workers start
            client.create_vdi("first", MIB)
        assert _wait(lambda: server.stats()["connections"] == 0)
        baseline = threading.active_count()
        socks = [_connect(server) for _ in range(5)]
        try:
            assert _wait(lambda: server.stats()["connections"] == 5)
            with SheepdogClient(server.gateways) as client:  # a sixth: served
                assert client.create_vdi("room", MIB).name == "room"
            stats = server.stats()
            assert stats["idle_evicted"] >= 1 and stats["refused"] == 0
            assert stats["connections"] <= 5
            for sock in socks:
                sock.settimeout(0.5)
            closed = sum(_eof(sock) for sock in socks)  # the client's own may go too
            assert 1 <= closed <= stats["idle_evicted"]
            assert threading.active_count() == baseline  # the event loop: no thread each
        finally:
            for sock in socks:
                sock.close()


def test_at_the_connection_limit_with_every_connection_busy_a_new_one_is_closed(
        tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "sheep", max_connections=5) as server:
        with SheepdogClient(server.gateways) as client:
            vid = client.create_vdi("busy", 64 * MIB).vid
            client.write("busy", 0, b"\x01" * (4 * MIB))
        assert _wait(lambda: server.stats()["connections"] == 0)
        request = read_obj(vid_to_data_oid(vid, 0), 0, 4 * MIB).encode()
        busy = [_connect(server) for _ in range(5)]
        try:
            for sock in busy:  # replies they do not read: none of them is quiet
                sock.sendall(request * 2)
            assert _wait(lambda: server.stats()["connections"] == 5)
            time.sleep(0.3)
            for _ in range(20):  # closed at once: EOF or reset, never served
                try:
                    sock = _connect(server)
                except ConnectionResetError:
                    continue
                with sock:
                    assert _eof(sock)
            stats = server.stats()
            assert stats["connections"] == 5 and stats["refused"] == 20
            assert stats["idle_evicted"] == 0
        finally:
            for sock in busy:
                sock.close()
        assert _wait(lambda: server.stats()["connections"] == 0)
        with SheepdogClient(server.gateways) as client:
            assert client.create_vdi("after", MIB).name == "after"


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "sheep", idle_timeout=1.0) as server:
        baseline = threading.active_count()
        socks = [_connect(server) for _ in range(40)]
        try:
            assert _wait(lambda: server.stats()["connections"] == 40)
            assert threading.active_count() == baseline  # the event loop: no thread each
            for sock in socks:
                assert sock.recv(1) == b""  # the server closed it
            assert _wait(lambda: server.stats()["connections"] == 0)
            assert server.stats()["idle_closed"] == 40
            assert threading.active_count() == baseline
        finally:
            for sock in socks:
                sock.close()
        with SheepdogClient(server.gateways) as client:  # and a client reconnects
            client.create_vdi("v", MIB)
            time.sleep(2.5)
            assert client.get_vdi("v").name == "v"


@pytest.mark.parametrize("argv, message", [
    (["--memory-budget", "0"], "memory budget must be a size of at least 1M"),
    (["--memory-budget", "12X"], "memory budget must be a size"),
    (["--max-connections", "0"], "max-connections must be at least 1"),
    (["--max-connections", "many"], "max-connections must be a number"),
    (["--idle-timeout", "-1"], "timeout must be in 0..86400"),
    (["--send-timeout", "soon"], "timeout must be a number of seconds"),
    (["--check", "--repair"], "not allowed with argument"),
])
def test_bad_limit_arguments_are_refused(tmp_path: Path, argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from sheepdog_backend.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", "--data-dir", str(tmp_path / "d"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
