"""The local gateway in front of the embedded server: forwarding, failover
between the cluster's gateways, the snapshot race made safe (the create /
slot-write sequence of tgt and QEMU, driven by hand so the interleaving is
exact), per-volume counters, a unix socket and bad listen addresses."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.exception import InvalidInput
from sheepdog_backend.gateway import Gateway
from sheepdog_backend.protocol.constants import SD_INODE_INDEX_OFFSET, Opcode, Result
from sheepdog_backend.protocol.framing import ResponseReader
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.server.embedded import EmbeddedServer
from sheepdog_backend.server.wire import RawConnection
from tests.proxybase import LoopbackProxy, cut
from tests.realsheep import free_port

MiB = 1 << 20
BLOCK = 64 * 1024


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(tmp_path / "sheep", ports=(0, 0), copies=1, sync=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway(cluster: EmbeddedServer, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(cluster.gateways, port=free_port(), unix_path=str(tmp_path / "gw.sock"),
                 discover=False)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def _tcp(gw: Gateway) -> str:
    return f"127.0.0.1:{gw.port}"


def _slot_write(vid: int, idx: int, value: int) -> Request:
    return rq.write_obj(vid_to_vdi_oid(vid), SD_INODE_INDEX_OFFSET + 4 * idx,
                        struct.pack("<I", value))


def test_requests_through_the_gateway_reach_the_cluster(cluster: EmbeddedServer,
                                                        gateway: Gateway) -> None:
    with SheepdogClient([_tcp(gateway)]) as via, SheepdogClient(cluster.gateways) as direct:
        via.create_vdi("vol", 64 * MiB)
        via.write("vol", 3 * MiB, b"\x5a" * (2 * MiB))
        assert direct.read("vol", 3 * MiB, 2 * MiB) == b"\x5a" * (2 * MiB)
        direct.write("vol", 0, b"\x11" * BLOCK)
        assert via.read("vol", 0, BLOCK) == b"\x11" * BLOCK
        assert [v.name for v in via.list_vdis()] == ["vol"]
        vid = direct.get_vdi("vol").vid
    stats = gateway.stats()["vdis"][f"{vid:x}"]
    assert stats["writes"] >= 1 and stats["write_bytes"] >= 2 * MiB
    assert stats["reads"] >= 1 and stats["read_bytes"] >= BLOCK


def test_unix_socket_answers_like_the_cluster(gateway: Gateway) -> None:
    assert gateway.unix_path is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(gateway.unix_path)
    try:
        sock.sendall(rq.cluster_info().with_id(77).encode())
        reader = ResponseReader()
        response: Response | None = None
        while response is None:
            data = sock.recv(65536)
            assert data, "the gateway closed the unix connection"
            reader.feed(data)
            response = reader.next_message()
    finally:
        sock.close()
    assert response.id == 77 and response.result == Result.SUCCESS


def test_failover_when_the_node_in_use_goes_away(cluster: EmbeddedServer,
                                                 gateway: Gateway) -> None:
    with SheepdogClient([_tcp(gateway)], retry=None) as via:
        via.create_vdi("ha", 16 * MiB)
        via.write("ha", 0, b"\x21" * BLOCK)
        first = [str(a) for a in gateway.client.cluster.addresses]
        used = max(first, key=lambda a: gateway.client.cluster.health(
            gateway.client.cluster.addresses[first.index(a)]).successes)
        cluster.stop_listener(cluster.gateways.index(used))
        # The next requests go to the other listener; the client sees no error.
        via.write("ha", BLOCK, b"\x22" * BLOCK)
        assert via.read("ha", 0, 2 * BLOCK) == b"\x21" * BLOCK + b"\x22" * BLOCK


def test_snapshot_waits_for_the_slot_write_of_an_answered_create(
        cluster: EmbeddedServer, gateway: Gateway) -> None:
    with SheepdogClient([_tcp(gateway)]) as via, SheepdogClient(cluster.gateways) as direct:
        vid = direct.create_vdi("race", 64 * MiB).vid
        data = bytes(range(256)) * (BLOCK // 256)
        with RawConnection("127.0.0.1", gateway.port or 0) as writer:
            created = writer.call(rq.create_and_write_obj(vid_to_data_oid(vid, 2), 0, data))
            assert created.ok
            done: list[float] = []
            snap = threading.Thread(target=lambda: (via.snapshot_vdi("race", "s1"),
                                                    done.append(time.monotonic())))
            snap.start()
            deadline = time.monotonic() + 10
            while not gateway.guard.draining and time.monotonic() < deadline:
                time.sleep(0.01)  # until the snapshot waits in the guard
            assert gateway.guard.draining == 1
            time.sleep(0.5)
            held = not done  # the snapshot waits for the slot write
            slot_at = time.monotonic()
            assert writer.call(_slot_write(vid, 2, vid)).ok
            snap.join(10)
        assert held and done and done[0] >= slot_at
        # The live volume and the snapshot both have the block.
        assert direct.read("race", 2 * 4 * MiB, BLOCK) == data
        assert direct.read("race", 2 * 4 * MiB, BLOCK, tag="s1") == data
    assert gateway.stats()["max_snapshot_drain"] >= 0.4


def test_late_slot_write_on_a_frozen_inode_is_reapplied(cluster: EmbeddedServer,
                                                        tmp_path: Path) -> None:
    gw = Gateway(cluster.gateways, port=free_port(), discover=False, drain_timeout=0.05)
    gw.start()
    try:
        with SheepdogClient([_tcp(gw)]) as via, SheepdogClient(cluster.gateways) as direct:
            vid = direct.create_vdi("late", 64 * MiB).vid
            data = b"\x7e" * BLOCK
            with RawConnection("127.0.0.1", gw.port or 0) as writer:
                assert writer.call(rq.create_and_write_obj(vid_to_data_oid(vid, 1), 0,
                                                           data)).ok
                snap = via.snapshot_vdi("late", "s1")  # drain gives up after 50 ms
                assert snap.vid == vid and direct.get_vdi("late").vid != vid
                assert writer.call(_slot_write(vid, 1, vid)).ok  # lands on frozen inode
                # The next create of the frozen vid is refused: the writer reloads.
                again = writer.call(rq.create_and_write_obj(vid_to_data_oid(vid, 3), 0, data))
                assert again.result == Result.READONLY
            assert direct.read("late", 4 * MiB, BLOCK) == data
            assert gw.stats()["reapplied_slots"] == 1
            assert gw.stats()["undrained_snapshots"] == 1
    finally:
        gw.stop()


def test_without_the_gateway_the_late_slot_write_is_lost(cluster: EmbeddedServer) -> None:
    """The race itself on the embedded server (what the gateway repairs)."""
    with SheepdogClient(cluster.gateways) as direct:
        vid = direct.create_vdi("bare", 64 * MiB).vid
        with RawConnection(*cluster.addresses[0]) as writer:
            assert writer.call(rq.create_and_write_obj(vid_to_data_oid(vid, 1), 0,
                                                       b"\x7e" * BLOCK)).ok
            direct.snapshot_vdi("bare", "s1")
            assert writer.call(_slot_write(vid, 1, vid)).ok
        assert direct.read("bare", 4 * MiB, BLOCK) == bytes(BLOCK)


def test_non_repeatable_request_is_not_repeated_after_a_cut(cluster: EmbeddedServer,
                                                            gateway: Gateway) -> None:
    """NEW_VDI whose connection breaks is answered NETWORK_ERROR, not resent."""
    calls: list[int] = []
    real = gateway.client.cluster.run

    def cut_once(fn):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            from sheepdog_backend.client.transport import mark
            from sheepdog_backend.exception import ConnectionClosed
            raise mark(ConnectionClosed("cut after send"), True)
        return real(fn)

    gateway.client.cluster.run = cut_once  # type: ignore[method-assign]
    with RawConnection("127.0.0.1", gateway.port or 0) as raw:
        answer = raw.call(rq.new_vdi("once", 16 * MiB))
    assert answer.result == Result.NETWORK_ERROR and len(calls) == 1
    with SheepdogClient(cluster.gateways) as direct:
        assert direct.find_vdi("once") is None


@pytest.mark.parametrize(("port", "path"), [(10000, None), (17000, None), (None, None)])
def test_bad_listen_addresses_are_refused(port: int | None, path: str | None) -> None:
    with pytest.raises(InvalidInput):
        Gateway(["127.0.0.1:7000"], port=port, unix_path=path)


def test_a_live_gateway_socket_is_not_taken_over(gateway: Gateway) -> None:
    other = Gateway(gateway.cluster_gateways, unix_path=gateway.unix_path, discover=False)
    with pytest.raises(InvalidInput, match="already listens"):
        other.start()
    other.stop()
    assert gateway.unix_path is not None and Path(gateway.unix_path).exists()
    with SheepdogClient([_tcp(gateway)]) as via:  # the first gateway still serves
        assert via.list_vdis() == []


class _LoseFirstWriteReply(LoopbackProxy):
    """Forwards requests to the node, but cuts the connection (both ways) as
    soon as the first WRITE_OBJ has gone through: its reply is lost."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self.cuts = 0

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        self.spawn(self._up, client, upstream)
        self.spawn(self._down, client, upstream)

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        from sheepdog_backend.protocol.framing import RequestReader
        reader = RequestReader()
        try:
            while data := client.recv(1 << 16):
                reader.feed(data)
                upstream.sendall(data)
                for request in reader:
                    if request.opcode == Opcode.WRITE_OBJ and not self.cuts:
                        self.cuts += 1
                        time.sleep(0.2)  # the node has written it by now
                        cut(client, upstream)
                        return
        except OSError:
            cut(client, upstream)

    def _down(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := upstream.recv(1 << 16):
                client.sendall(data)
        except OSError:
            pass
        cut(client, upstream)


def test_a_write_cut_after_it_was_sent_is_repeated(cluster: EmbeddedServer,
                                                  tmp_path: Path) -> None:
    """WRITE_OBJ repeats the same bytes at the same offset: resent, answered ok,
    when the node's connection breaks after the write was sent."""
    host, port = cluster.addresses[0]
    with SheepdogClient(cluster.gateways) as direct, \
            _LoseFirstWriteReply((host, port)) as proxy, \
            Gateway([proxy.address], port=free_port(), discover=False) as gw:
        vid = direct.create_vdi("again", 16 * MiB).vid
        direct.write("again", 0, b"\x01" * BLOCK)
        with RawConnection("127.0.0.1", gw.port or 0) as raw:
            answer = raw.call(rq.write_obj(vid_to_data_oid(vid, 0), 0, b"\x66" * BLOCK))
        assert answer.ok and proxy.cuts == 1, (hex(answer.result), proxy.cuts)
        assert direct.read("again", 0, BLOCK) == b"\x66" * BLOCK
        assert gw.stats()["wire"]["fast_requests"] >= 1  # it went out on the relay first
