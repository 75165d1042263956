"""Hyper volumes (B-tree index): our client and the real dog read each other's
bytes beyond 4 TiB, on a real sheep 1.0 node and on the embedded server, and
our delete reclaims the data objects (sparse volumes, a few objects: seconds)."""

from __future__ import annotations

import os
import subprocess

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.protocol.constants import Result
from sheepdog_backend.protocol.oid import vid_to_data_oid
from tests.interop.conftest import Target, unique
from tests.realsheep import require

MiB, TiB = 1 << 20, 1 << 40
OBJ = 4 * MiB


def _dog_read(target: Target, name: str, offset: int, length: int) -> bytes:
    return target.dog("vdi", "read", name, str(offset), str(length)).stdout


def _exists(client: SheepdogClient, oid: int) -> bool:
    def probe(conn: Connection) -> bool:
        rsp = conn.call(rq.read_obj(oid, 0, 1))
        assert rsp.result in (Result.SUCCESS, Result.NO_OBJ), rsp.result
        return rsp.result == Result.SUCCESS
    return client.cluster.run(probe)


def test_dog_and_client_read_each_others_hyper_bytes(target: Target) -> None:
    name = unique("hyp")
    target.dog("vdi", "create", "-y", name, "6T")
    theirs = os.urandom(OBJ + 3000)
    at = 5 * TiB + OBJ - 1500  # spans three objects beyond the flat 4 TiB cap
    target.dog("vdi", "write", name, str(at), str(len(theirs)), input=theirs)
    with target.client() as client:
        info = client.get_vdi(name)
        assert info.store_policy == 1
        assert client.read(name, at, len(theirs)) == theirs
        ours = os.urandom(2 * OBJ)
        client.write(name, 4 * TiB + 100, ours)  # new objects: the client inserts them
        client.write(name, at + 10, b"overwrite")  # an object dog created
        assert client.read(name, 3 * TiB, 4096) == bytes(4096)
    assert _dog_read(target, name, 4 * TiB + 100, len(ours)) == ours
    expect = theirs[:10] + b"overwrite" + theirs[19:]
    assert _dog_read(target, name, at, len(theirs)) == expect
    # dog inserts after ours: both kinds of entries stay found
    late = os.urandom(5000)
    target.dog("vdi", "write", name, str(2 * TiB), str(len(late)), input=late)
    with target.client() as client:
        assert client.read(name, 2 * TiB, len(late)) == late
        assert client.read(name, 4 * TiB + 100, len(ours)) == ours


def test_qemu_cannot_open_a_hyper_volume(real_target: Target) -> None:
    """Why the driver refuses to attach hyper volumes: QEMU 5.2's Sheepdog
    driver reads the B-tree root as flat slots and fails to open the image."""
    qemu_io = require("qemu-io")
    name = unique("hypq")
    with real_target.client() as client:
        client.create_vdi(name, 5 * TiB, hyper=True)
        client.write(name, 0, b"HYPER" * 100)
    proc = subprocess.run([qemu_io, "-c", "read 0 512",
                           f"sheepdog://{real_target.host}:{real_target.port}/{name}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "can't open device" in proc.stderr, proc.stderr


def test_client_created_hyper_volume_deleted_and_reclaimed(target: Target) -> None:
    name = unique("hypdel")
    with target.client() as client:
        info = client.create_vdi(name, 5 * TiB, hyper=True)
        data = os.urandom(3 * OBJ)
        client.write(name, 4 * TiB + OBJ // 2, data)
        client.write(name, 0, b"boot")
        assert _dog_read(target, name, 4 * TiB + OBJ // 2, len(data)) == data
        listed = target.dog_text("vdi", "list", "-r", name).split()
        assert name in listed  # dog sees it, named as we made it
        first = (4 * TiB + OBJ // 2) // OBJ
        oids = [vid_to_data_oid(info.vid, idx) for idx in (0, first, first + 1, first + 2,
                                                           first + 3)]
        assert all(_exists(client, oid) for oid in oids)
        assert client.delete_vdi(name)
        # sheep walked the index and removed the objects (dog's own delete of a
        # hyper volume zeroes the index first, which aborts a sheep 1.0 node)
        assert not any(_exists(client, oid) for oid in oids)
    assert name not in target.dog_text("vdi", "list", "-r", name)
    assert target.dog("node", "list").returncode == 0  # the node is alive


def _rewrite_as_depth_two(client: SheepdogClient, name: str) -> list[int]:
    """Turn the VDI's depth-1 root into a depth-2 tree of two leaves (as
    sd_inode.c's root split lays it out, with far fewer than the 524,287
    entries that make sheep split); returns the leaf oids."""
    from sheepdog_backend.client import vdi as ops
    from sheepdog_backend.protocol.btree import ROOT_OFFSET, IndexNode
    from sheepdog_backend.protocol.inode import OFFSET_BTREE_COUNTER
    from sheepdog_backend.protocol.oid import vid_to_btree_oid, vid_to_vdi_oid

    def rewrite(conn: Connection) -> list[int]:
        hdr = ops.resolve(conn, name.encode())
        inode = vid_to_vdi_oid(hdr.vdi_id)
        raw = ops.check(conn.call(rq.read_obj(inode, ROOT_OFFSET - 4, 4096))).payload
        root = IndexNode.decode(raw[4:])
        half = len(root.keys) // 2
        leaves = [vid_to_btree_oid(hdr.vdi_id, 0), vid_to_btree_oid(hdr.vdi_id, 1)]
        parts = [(root.keys[:half], root.values[:half]), (root.keys[half:], root.values[half:])]
        for oid, (keys, values) in zip(leaves, parts, strict=True):
            ops.check(conn.call(rq.create_and_write_obj(oid, 0, IndexNode(1, keys, values)
                                                        .encode(), copies=hdr.nr_copies)))
        ops.check(conn.call(rq.write_obj(inode, OFFSET_BTREE_COUNTER, (2).to_bytes(4, "little"),
                                         copies=hdr.nr_copies)))
        top = IndexNode(2, [parts[0][0][-1], parts[1][0][-1]], leaves)
        # from 4 bytes early, as the client does: a write wholly inside
        # data_vdi_id makes sheep drop the objects the old bytes name as slots
        ops.check(conn.call(rq.write_obj(inode, ROOT_OFFSET - 4, raw[:4] + top.encode(),
                                         copies=hdr.nr_copies)))
        return leaves
    return client.cluster.run(rewrite)


def test_depth_two_tree_is_read_written_and_deleted_alike(target: Target) -> None:
    """A depth-2 tree in our encoding (16-byte indirect entries, leaf objects):
    dog reads through it, our client reads it and inserts into it, dog reads
    that, and DEL_VDI walks it to remove the data objects."""
    name = unique("hyp2")
    blobs = {idx: os.urandom(700) for idx in (3, 1 << 20, (1 << 20) + 9, 1 << 21)}
    with target.client() as client:
        info = client.create_vdi(name, 9 * TiB, hyper=True)
        for idx, blob in blobs.items():
            client.write(name, idx * OBJ, blob)
        leaves = _rewrite_as_depth_two(client, name)
    for idx, blob in blobs.items():
        assert _dog_read(target, name, idx * OBJ, len(blob)) == blob
    with target.client() as client:
        for idx, blob in blobs.items():
            assert client.read(name, idx * OBJ, len(blob)) == blob
        late = {(1 << 21) + 5: os.urandom(300), 7: os.urandom(300)}  # past the end; a middle
        for idx, blob in late.items():
            client.write(name, idx * OBJ, blob)
        blobs.update(late)
    for idx, blob in blobs.items():
        assert _dog_read(target, name, idx * OBJ, len(blob)) == blob
    with target.client() as client:
        assert all(_exists(client, oid) for oid in leaves)
        oids = [vid_to_data_oid(info.vid, idx) for idx in blobs]
        assert all(_exists(client, oid) for oid in oids)
        assert client.delete_vdi(name)
        assert not any(_exists(client, oid) for oid in oids)
    assert target.dog("node", "list").returncode == 0
