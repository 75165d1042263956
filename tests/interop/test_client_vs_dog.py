"""Our native client next to the real dog on a real sheep node.

What the client creates, snapshots, clones, resizes, writes and deletes, `dog
vdi list -r` and `dog vdi read` see exactly (ids, sizes, tags, parents, copies,
object size, used bytes, data); what dog makes, the client reads exactly.
One real node for the module; each test uses names of its own.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.exception import NoTag, NoVdi
from tests.interop.conftest import Target, unique

MiB = 1 << 20
OBJ = 4 * MiB


@dataclass(frozen=True)
class Row:
    """One line of `dog vdi list -r`."""

    kind: str  # "=" working, "s" snapshot, "c" clone
    name: str
    snap_id: int
    size: int
    used: int
    shared: int
    vid: int
    copies: int
    tag: str
    block_size_shift: int


def dog_rows(target: Target, name: str | None = None) -> list[Row]:
    args = ("vdi", "list", "-r") + ((name,) if name else ())
    rows = []
    for line in target.dog_text(*args).splitlines():
        kind, vname, snap, size, used, shared, _ctime, vid, copies, tag, shift = \
            line.split(" ")
        rows.append(Row(kind, vname, int(snap), int(size), int(used), int(shared),
                        int(vid, 16), int(copies), tag, int(shift)))
    return rows


def dog_read(target: Target, name: str, offset: int, length: int, tag: str = "") -> bytes:
    args = ("vdi", "read") + (("-s", tag) if tag else ()) + (name, str(offset), str(length))
    return target.dog(*args).stdout


@pytest.fixture(scope="module")
def client(real_target: Target) -> Iterator[SheepdogClient]:
    with real_target.client() as c:
        yield c


def test_client_create_write_seen_by_dog(real_target: Target, client: SheepdogClient) -> None:
    name = unique("cw")
    info = client.create_vdi(name, 12 * MiB)
    data = os.urandom(MiB + 4096)
    client.write(name, OBJ - 4096, data)  # straddles objects 0 and 1
    (row,) = dog_rows(real_target, name)
    assert row == Row("=", name, 0, 12 * MiB, 2 * OBJ, 0, info.vid, 1, "", 22)
    assert dog_read(real_target, name, OBJ - 4096, len(data)) == data
    assert dog_read(real_target, name, 0, OBJ - 4096) == bytes(OBJ - 4096)
    assert dog_read(real_target, name, 8 * MiB, 4 * MiB) == bytes(4 * MiB)


def test_client_snapshot_clone_resize_seen_by_dog(real_target: Target,
                                                  client: SheepdogClient) -> None:
    name, kid = unique("sc"), unique("sc-kid")
    client.create_vdi(name, 8 * MiB)
    before = os.urandom(64 * 1024)
    client.write(name, 4096, before)
    snap = client.snapshot_vdi(name, "t1")
    after = os.urandom(64 * 1024)
    client.write(name, 4096, after)
    clone = client.clone_vdi(name, "t1", kid)
    client.resize_vdi(kid, 16 * MiB)
    rows = {(r.name, r.tag): r for r in dog_rows(real_target)}
    srow, wrow, crow = rows[(name, "t1")], rows[(name, "")], rows[(kid, "")]
    assert (srow.kind, srow.snap_id, srow.vid) == ("s", 1, snap.vid)
    assert (wrow.kind, wrow.snap_id, wrow.used, wrow.shared) == ("=", 0, OBJ, 0)
    assert (crow.kind, crow.vid, crow.size, crow.used, crow.shared) == \
        ("c", clone.vid, 16 * MiB, 0, OBJ)
    assert dog_read(real_target, name, 4096, len(before), tag="t1") == before
    assert dog_read(real_target, name, 4096, len(after)) == after
    assert dog_read(real_target, kid, 4096, len(before)) == before
    assert dog_read(real_target, kid, 8 * MiB, MiB) == bytes(MiB)
    tree = real_target.dog_text("vdi", "tree")
    assert f"{name}---[" in tree and f"{kid}---(you are here)" in tree


def test_client_delete_seen_by_dog(real_target: Target, client: SheepdogClient) -> None:
    name = unique("del")
    client.create_vdi(name, 4 * MiB)
    client.write(name, 0, b"x" * 4096)
    client.snapshot_vdi(name, "gone")
    assert client.delete_vdi(name, "gone") is True
    assert [(r.kind, r.tag) for r in dog_rows(real_target, name)] == [("=", "")]
    assert client.delete_vdi(name) is True
    assert dog_rows(real_target, name) == []
    assert client.delete_vdi(name) is False  # already gone: idempotent
    assert "No VDI found" in real_target.dog("vdi", "read", name, "0", "1",
                                             check=False).stderr.decode()


def test_client_attributes_seen_by_dog(real_target: Target, client: SheepdogClient) -> None:
    name = unique("attr")
    client.create_vdi(name, 4 * MiB)
    client.set_attr(name, "owner", b"alice")
    assert real_target.dog("vdi", "getattr", name, "owner").stdout == b"alice"
    real_target.dog("vdi", "setattr", name, "owner", "bob")
    assert client.get_attr(name, "owner") == b"bob"
    real_target.dog("vdi", "setattr", name, "from-dog", "1")
    assert client.get_attr(name, "from-dog") == b"1"
    assert client.delete_attr(name, "owner") is True
    assert real_target.dog("vdi", "getattr", name, "owner", check=False).returncode != 0
    assert client.get_attr(name, "never") is None


def test_dog_made_volumes_read_exactly_by_client(real_target: Target,
                                                 client: SheepdogClient) -> None:
    name, kid = unique("dogv"), unique("dogv-kid")
    real_target.dog("vdi", "create", name, "10M")
    first = os.urandom(2 * MiB)
    real_target.dog("vdi", "write", name, str(3 * MiB), str(len(first)), input=first)
    real_target.dog("vdi", "snapshot", "-s", "base", name)
    second = os.urandom(4096)
    real_target.dog("vdi", "write", name, str(3 * MiB), "4096", input=second)
    real_target.dog("vdi", "clone", "-s", "base", name, kid)
    real_target.dog("vdi", "resize", kid, "20M")
    got = client.get_vdi(name)
    (row,) = [r for r in dog_rows(real_target, name) if r.kind == "="]
    assert (got.vid, got.size, got.nr_copies, got.block_size_shift, got.snap_id) == \
        (row.vid, 10 * MiB, 1, 22, 2)
    assert client.read(name, 3 * MiB, 4096) == second
    assert client.read(name, 3 * MiB + 4096, len(first) - 4096) == first[4096:]
    assert client.read(name, 3 * MiB, len(first), tag="base") == first
    assert client.read(name, 0, 3 * MiB) == bytes(3 * MiB)
    kid_info = client.get_vdi(kid)
    assert kid_info.size == 20 * MiB and kid_info.is_clone
    assert kid_info.parent_vid == client.get_vdi(name, "base").vid
    assert client.read(kid, 3 * MiB, len(first)) == first
    assert client.read(kid, 10 * MiB, 10 * MiB) == bytes(10 * MiB)
    assert [s.tag for s in client.list_snapshots(name)] == ["base"]
    listed = {(v.name, v.tag) for v in client.list_vdis()}
    assert {(name, ""), (name, "base"), (kid, "")} <= listed
    with pytest.raises(NoTag):
        client.read(name, 0, 1, tag="nosuch")
    with pytest.raises(NoVdi):
        client.get_vdi(unique("never"))


def test_dog_object_size_and_hyper_volumes(real_target: Target, client: SheepdogClient) -> None:
    """dog's -z (8 MiB objects) reads right through the client; a hyper
    volume (B-tree index) reads as what it holds (zeros: nothing written;
    test_hyper_real.py checks written bytes both ways)."""
    big, hyper = unique("z23"), unique("hyper")
    real_target.dog("vdi", "create", "-z", "23", big, "24M")
    data = os.urandom(MiB)
    real_target.dog("vdi", "write", big, str(8 * MiB - MiB // 2), str(MiB), input=data)
    info = client.get_vdi(big)
    assert (info.block_size_shift, info.object_size) == (23, 8 * MiB)
    assert client.read(big, 8 * MiB - MiB // 2, MiB) == data
    client.write(big, 16 * MiB, data)
    assert dog_read(real_target, big, 16 * MiB, MiB) == data
    (row,) = dog_rows(real_target, big)
    assert row.used == 3 * 8 * MiB and row.block_size_shift == 23
    real_target.dog("vdi", "create", "-y", hyper, "5T")
    assert client.get_vdi(hyper).store_policy == 1
    assert client.read(hyper, 0, 4096) == bytes(4096)


def test_client_import_export_matches_dog_bytes(real_target: Target,
                                                client: SheepdogClient) -> None:
    """A whole volume streamed by the client equals dog's read of it."""
    name = unique("stream")
    real_target.dog("vdi", "create", name, "9M")
    payload = os.urandom(9 * MiB)
    assert client.write_from_file(name, io.BytesIO(payload)) == 9 * MiB
    out = io.BytesIO()
    assert client.read_to_file(name, out) == 9 * MiB
    assert out.getvalue() == payload
    assert hashlib.sha256(dog_read(real_target, name, 0, 9 * MiB)).digest() == \
        hashlib.sha256(payload).digest()
