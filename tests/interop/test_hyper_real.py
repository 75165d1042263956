"""Hyper volumes (B-tree index): our client and the real dog read each other's
bytes beyond 4 TiB, on a real sheep 1.0 node and on the embedded server, and
our delete reclaims the data objects (sparse volumes, a few objects: seconds)."""

from __future__ import annotations

import os

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.protocol.constants import Result
from sheepdog_backend.protocol.oid import vid_to_data_oid
from tests.interop.conftest import Target, unique

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
