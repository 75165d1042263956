"""Hyper volumes (B-tree index) through the client on the embedded server."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.exception import InvalidInput, InvalidParameters, NoVdi
from sheepdog_backend.protocol.btree import ROOT_OFFSET, IndexNode
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.server.check import check_data_dir
from sheepdog_backend.testing.fixtures import EmbeddedServer

MiB, TiB = 1 << 20, 1 << 40
OBJ = 4 * MiB


@pytest.fixture
def client(embedded_server: EmbeddedServer) -> Iterator[SheepdogClient]:
    with SheepdogClient(embedded_server.gateways, retry=RetryPolicy(attempts=2)) as c:
        yield c


def _root(embedded_server: EmbeddedServer, vid: int) -> IndexNode:
    data = embedded_server.handler.state.store.read(vid_to_vdi_oid(vid), ROOT_OFFSET, 1 << 16)
    assert data is not None
    return IndexNode.decode(data)


def test_write_read_beyond_4_tib_across_objects_and_delete(
        client: SheepdogClient, embedded_server: EmbeddedServer) -> None:
    info = client.create_vdi("big", 6 * TiB, hyper=True)
    assert (info.store_policy, info.block_size_shift) == (1, 22)
    far = 5 * TiB + OBJ - 1000  # straddles two objects beyond the flat 4 TiB cap
    data = os.urandom(3 * OBJ)
    client.write("big", far, data)
    client.write("big", 7, b"start")
    assert client.read("big", far, len(data)) == data
    assert client.read("big", 0, 16) == bytes(7) + b"start" + bytes(4)
    assert client.read("big", 3 * TiB, 4096) == bytes(4096)  # unallocated
    root = _root(embedded_server, info.vid)
    first = far // OBJ
    assert root.depth == 1 and root.keys == [0, first, first + 1, first + 2, first + 3]
    assert set(root.values) == {info.vid}
    client.write("big", far, b"x" * 10)  # an overwrite changes no index entry
    assert _root(embedded_server, info.vid).keys == root.keys
    store = embedded_server.handler.state.store
    oids = [vid_to_data_oid(info.vid, idx) for idx in root.keys]
    assert all(store.exists(oid) for oid in oids)
    assert client.delete_vdi("big")
    assert not any(store.exists(oid) for oid in oids)
    with pytest.raises(NoVdi):
        client.read("big", 0, 1)


def test_concurrent_writers_of_one_client_keep_every_mapping(
        client: SheepdogClient) -> None:
    client.create_vdi("many", 5 * TiB, hyper=True)
    base = 4 * TiB
    blobs = {i: os.urandom(512) for i in range(24)}
    errors: list[BaseException] = []

    def writer(part: int) -> None:
        try:
            for i in range(part, 24, 4):
                client.write("many", base + i * OBJ, blobs[i])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for i, blob in blobs.items():
        assert client.read("many", base + i * OBJ, 512) == blob


def test_hyper_refusals_are_typed_and_change_nothing(client: SheepdogClient) -> None:
    with pytest.raises(InvalidInput, match="16 PiB"):
        client.create_vdi("huge", (1 << 54) + 1, hyper=True)
    with pytest.raises(InvalidInput, match="4 MiB objects"):
        client.create_vdi("z", TiB, hyper=True, block_size_shift=23)
    with pytest.raises(InvalidInput, match="preallocated"):
        client.create_vdi("p", TiB, hyper=True, prealloc=True)
    assert client.list_vdis() == []
    client.create_vdi("h", 5 * TiB, hyper=True)
    with pytest.raises((InvalidInput, InvalidParameters), match="hyper"):
        client.snapshot_vdi("h", "s1")
    assert client.list_snapshots("h") == []


def test_check_finds_nothing_wrong_after_hyper_io(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path
    data_dir = Path(tmp_path) / "data"
    server = EmbeddedServer(data_dir, copies=1, format=True, sync=False)
    server.start()
    try:
        with SheepdogClient(server.gateways) as c:
            c.create_vdi("h", 5 * TiB, hyper=True)
            c.create_vdi("flat", 64 * MiB)
            c.write("h", 4 * TiB + 5, b"abc")
            c.write("h", 5, b"abc")
            c.write("flat", 0, b"def")
    finally:
        server.stop()
    report = check_data_dir(data_dir)
    assert report.findings == []


def test_listing_with_usage_counts_a_hyper_volumes_objects(client: SheepdogClient) -> None:
    client.create_vdi("h", 5 * TiB, hyper=True)
    client.write("h", 4 * TiB + 1, b"a")
    client.write("h", 4 * TiB + 3 * OBJ, b"b")
    (row,) = client.list_vdis(with_usage=True)
    assert (row.used, row.shared) == (2 * OBJ, 0)
