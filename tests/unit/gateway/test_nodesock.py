"""Node sockets (gateway/nodesock.py): what ``--node-socket`` accepts, and the
check that a socket answers for the node's own cluster, against a server
speaking the real codec on a unix socket (a tiny one-shot peer)."""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.client.transport import Address
from sheepdog_backend.exception import InvalidInput, TransportError
from sheepdog_backend.gateway.nodesock import (
    check_node_socket,
    parse_node_sockets,
    socket_ctime,
)
from sheepdog_backend.protocol.constants import Result
from sheepdog_backend.protocol.framing import RequestReader
from sheepdog_backend.protocol.header import result_response
from sheepdog_backend.protocol.structs import EpochLog

CTIME = 0x5F00_1234_0000_0042


def test_entries_parse_to_node_addresses_and_absolute_paths(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.chdir(tmp_path)
    got = parse_node_sockets(["127.0.0.1:7000=store/sock", "[::1]:7001=/var/lib/sd/sock"])
    assert got == {Address("127.0.0.1", 7000): str(tmp_path / "store" / "sock"),
                   Address("::1", 7001): "/var/lib/sd/sock"}


@pytest.mark.parametrize(("entry", "message"), [
    ("127.0.0.1:7000", "is not HOST:PORT=PATH"),
    ("=/x/sock", "is not HOST:PORT=PATH"),
    ("127.0.0.1:7000=", "is not HOST:PORT=PATH"),
    ("127.0.0.1:70000=/x/sock", "port"),
    ("127.0.0.1:7000=/" + "d" * 120, "longer than 107 bytes"),
])
def test_bad_entries_are_refused(entry: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_node_sockets([entry])


def test_one_node_with_two_sockets_is_refused() -> None:
    with pytest.raises(InvalidInput, match="has two sockets"):
        parse_node_sockets(["127.0.0.1:7000=/a/sock", "127.0.0.1:7000=/b/sock"])


def test_a_missing_socket_is_a_transport_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="does not exist"):
        socket_ctime(str(tmp_path / "sock"), 1.0)


def test_a_file_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    path.write_text("not a socket")
    with pytest.raises(InvalidInput, match="is not a unix socket"):
        socket_ctime(str(path), 1.0)


def test_a_socket_nobody_listens_on_is_a_transport_error(tmp_path: Path) -> None:
    path = str(tmp_path / "sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens
    with pytest.raises(TransportError, match="does not answer"):
        socket_ctime(path, 1.0)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """A unix socket answering STAT_CLUSTER with an epoch log of the ctime
    last put in the list (fed one byte at a time), until the test ends."""
    path = str(tmp_path / "node.sock")
    ctimes = [CTIME]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                reader = RequestReader()
                while (request := reader.next_message()) is None:
                    data = conn.recv(4096)
                    if not data:
                        break
                    reader.feed(data)
                if request is None:
                    continue
                payload = EpochLog(ctime=ctimes[-1], epoch=1, nr_copies=1).encode(0)
                answer = dataclasses.replace(result_response(request, Result.SUCCESS),
                                             payload=payload)
                for byte in answer.encode():
                    conn.sendall(bytes([byte]))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, ctimes
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_the_socket_of_the_same_cluster_passes(peer: tuple[str, list[int]]) -> None:
    path, _ = peer
    assert socket_ctime(path, 2.0) == CTIME
    check_node_socket(Address("127.0.0.1", 7000), path, CTIME, 2.0)


def test_the_socket_of_another_cluster_is_refused(peer: tuple[str, list[int]]) -> None:
    path, ctimes = peer
    ctimes.append(CTIME + 1)
    with pytest.raises(InvalidInput, match=re.escape(
            "does not belong to the cluster of node 127.0.0.1:7000")):
        check_node_socket(Address("127.0.0.1", 7000), path, CTIME, 2.0)


def test_a_node_that_cannot_say_its_cluster_is_checked_later(peer: tuple[str, list[int]]
                                                             ) -> None:
    path, _ = peer
    with pytest.raises(TransportError, match="checked later"):
        check_node_socket(Address("127.0.0.1", 7000), path, 0, 2.0)
