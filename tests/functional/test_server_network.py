"""The TCP loop: pipelining, many clients, several gateways, hostile input."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from pathlib import Path

from sheepdog_backend.exception import ConnectionClosed
from sheepdog_backend.protocol.constants import Flag, Opcode, Result
from sheepdog_backend.protocol.header import ObjRequest, Request, VdiRequest
from sheepdog_backend.protocol.naming import encode_name, encode_name_tag
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.server.wire import RawConnection
from sheepdog_backend.testing.fixtures import EmbeddedServer

TEST = 0x7C2B25


def _create(conn: RawConnection, name: str = "test") -> int:
    rsp = conn.call(Request(Opcode.NEW_VDI, VdiRequest(vdi_size=1 << 30), flags=Flag.WRITE,
                            data_length=256, payload=encode_name(name)))
    assert rsp.ok
    return rsp.body.vdi_id  # type: ignore[union-attr]


def _snapshot_dir(path: str) -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_pipelined_requests_from_many_clients(embedded_server: EmbeddedServer) -> None:
    host, port = embedded_server.addresses[0]
    with RawConnection(host, port) as conn:
        vid = _create(conn)
    errors: list[str] = []

    def client(n: int) -> None:
        try:
            with RawConnection(host, port, timeout=30) as conn:
                oid = vid_to_data_oid(vid, n)
                blocks = {i: os.urandom(512) for i in range(16)}
                conn.send(Request(Opcode.CREATE_AND_WRITE_OBJ, ObjRequest(oid=oid),
                                  flags=Flag.WRITE, id=1000 * n, data_length=0))
                assert conn.recv().ok
                for i, data in blocks.items():  # 16 writes in flight at once
                    conn.send(Request(Opcode.WRITE_OBJ, ObjRequest(oid=oid, offset=512 * i),
                                      flags=Flag.WRITE, id=1000 * n + i + 1,
                                      data_length=512, payload=data))
                ids = set()
                for _ in blocks:
                    rsp = conn.recv()
                    assert rsp.ok
                    ids.add(rsp.id)
                assert ids == {1000 * n + i + 1 for i in blocks}
                for i in blocks:
                    conn.send(Request(Opcode.READ_OBJ, ObjRequest(oid=oid, offset=512 * i),
                                      id=5000 + 100 * n + i, data_length=512))
                for _ in blocks:
                    rsp = conn.recv()
                    i = rsp.id - 5000 - 100 * n
                    assert rsp.payload == blocks[i], f"client {n} block {i}"
        except Exception as exc:
            errors.append(f"client {n}: {exc!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_several_gateways_one_store(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "s", ports=(0, 0, 0)) as server:
        assert len(set(server.gateways)) == 3
        (h0, p0), (h1, p1), (h2, p2) = server.addresses
        with RawConnection(h0, p0) as conn:
            vid = _create(conn)
            nodes = conn.call(Request(Opcode.GET_NODE_LIST, data_length=80 * 10))
            assert nodes.body.nr_nodes == 1  # type: ignore[union-attr]
            assert struct.unpack_from("<H", nodes.payload, 40)[0] == p0
        idle = RawConnection(h1, p1)
        server.stop_listener(1)
        try:
            idle.call(Request(Opcode.GET_CLUSTER_DEFAULT))
            raise AssertionError("a killed gateway kept its connection")
        except (ConnectionClosed, OSError):
            pass
        finally:
            idle.close()
        try:
            socket.create_connection((h1, p1), timeout=2).close()
            raise AssertionError("a killed gateway still accepts")
        except OSError:
            pass
        with RawConnection(h2, p2) as conn:
            rsp = conn.call(Request(Opcode.GET_VDI_INFO, VdiRequest(), flags=Flag.WRITE,
                                    data_length=512, payload=encode_name_tag("test")))
            assert rsp.ok and rsp.body.vdi_id == vid  # type: ignore[union-attr]


def test_bad_input_is_refused_and_changes_nothing(embedded_server: EmbeddedServer) -> None:
    host, port = embedded_server.addresses[0]
    with RawConnection(host, port) as conn:
        vid = _create(conn)
    before = _snapshot_dir(embedded_server.data_dir)

    def answer(request: Request) -> int:
        with RawConnection(host, port, timeout=10) as conn:
            return conn.call(request).result

    # answered like sheep would
    assert answer(Request(0x42, proto_ver=2)) == Result.INVALID_PARMS
    assert answer(Request(Opcode.GET_NODE_LIST, proto_ver=1, data_length=80)) == \
        Result.VER_MISMATCH
    assert answer(Request(Opcode.GET_VDI_INFO, VdiRequest(), flags=Flag.WRITE,
                          data_length=300, payload=bytes(300))) == Result.INVALID_PARMS
    assert answer(Request(Opcode.NEW_VDI, VdiRequest(vdi_size=1), flags=Flag.WRITE,
                          data_length=10, payload=b"x" * 10)) == Result.INVALID_PARMS
    assert answer(Request(Opcode.NEW_VDI, VdiRequest(vdi_size=1), flags=Flag.WRITE,
                          data_length=256, payload=bytes(256))) == Result.INVALID_PARMS
    assert answer(Request(Opcode.READ_OBJ, ObjRequest(oid=vid_to_data_oid(0, 1)),
                          data_length=8)) == Result.INVALID_PARMS
    assert answer(Request(Opcode.READ_OBJ, ObjRequest(oid=(1 << 63) | (vid << 32)),
                          data_length=0xFFFFFFFF)) == Result.INVALID_PARMS
    assert answer(Request(Opcode.READ_VDIS, data_length=0xFFFFFFFF)) == Result.INVALID_PARMS
    assert answer(Request(Opcode.WRITE_OBJ, ObjRequest(oid=vid_to_data_oid(0xFFFFFF, 3)),
                          flags=Flag.WRITE, data_length=1, payload=b"x")) == Result.NO_OBJ
    # dropped connections: a 4 GiB WRITE announcement, garbage, a truncated header
    huge = struct.pack("<BBHIII", 2, Opcode.WRITE_OBJ, Flag.WRITE, 0, 0, 0xFFFFFFFF) + \
        ObjRequest(oid=vid_to_data_oid(vid, 0)).pack()
    for raw in (huge, b"\x02\x03\x01\x00" + b"\xff" * 44 + b"junk",
                b"\x02\x14\x01"):
        conn = RawConnection(host, port, timeout=10)
        try:
            conn.send_raw(raw)
            conn.sock.shutdown(socket.SHUT_WR)
            try:
                rsp = conn.recv()
                raise AssertionError(f"got an answer to garbage: {rsp}")
            except ConnectionClosed:
                pass
        finally:
            conn.close()
    # still serving, store unchanged
    assert answer(Request(Opcode.GET_VDI_INFO, VdiRequest(), flags=Flag.WRITE,
                          data_length=512, payload=encode_name_tag("test"))) == Result.SUCCESS
    assert _snapshot_dir(embedded_server.data_dir) == before




def test_killed_gateway_is_no_longer_advertised(tmp_path: Path) -> None:
    """dog and the client send STAT_SHEEP to the address GET_NODE_LIST names;
    after the advertised gateway dies, a live one must be named instead."""
    with EmbeddedServer(tmp_path / "s", ports=(0, 0)) as server:
        (_h0, p0), (h1, p1) = server.addresses
        server.stop_listener(0)
        with RawConnection(h1, p1) as conn:
            nodes = conn.call(Request(Opcode.GET_NODE_LIST, data_length=80 * 10))
            assert nodes.body.nr_nodes == 1  # type: ignore[union-attr]
            advertised = struct.unpack_from("<H", nodes.payload, 40)[0]
        assert advertised == p1 != p0
        with RawConnection(h1, advertised) as conn:
            stat = conn.call(Request(Opcode.STAT_SHEEP))
            assert stat.ok and stat.body.store_size > 0  # type: ignore[union-attr]
