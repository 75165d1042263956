"""Every client operation against the embedded server, with limits and errors."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.vdi import check
from sheepdog_backend.exception import (
    InvalidInput,
    InvalidParameters,
    NoStore,
    NoTag,
    NoVdi,
    ReadOnly,
    VdiExists,
    VdiLocked,
    VersionMismatch,
    WaitForFormat,
)
from sheepdog_backend.protocol.constants import ClusterFlag, ClusterStatus, Flag, Opcode
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.protocol.oid import vid_to_data_oid
from sheepdog_backend.protocol.structs import EpochLog
from sheepdog_backend.server.wire import RawConnection
from sheepdog_backend.testing.fixtures import EmbeddedServer

MiB = 1 << 20
OBJ = 4 * MiB


@pytest.fixture
def client(embedded_server: EmbeddedServer) -> Iterator[SheepdogClient]:
    with SheepdogClient(embedded_server.gateways, retry=RetryPolicy(attempts=2)) as c:
        yield c


def test_cluster_info_nodes_capacity(client: SheepdogClient,
                                     embedded_server: EmbeddedServer) -> None:
    info = client.cluster_info()
    assert info.ctime != 0 and info.status == ClusterStatus.OK and info.nr_copies == 1
    nodes = client.node_list()
    assert len(nodes) == 1 and (nodes[0].nid.addr, nodes[0].nid.port) == \
        embedded_server.addresses[0]
    total, free = client.capacity()
    assert total > 0 and 0 <= free <= total
    assert client.discover_gateways() == []  # already known
    assert client.gateways_by_health() == embedded_server.addresses


def test_create_get_find_list(client: SheepdogClient) -> None:
    info = client.create_vdi("vol", 20 * MiB)
    assert (info.name, info.size, info.snap_id, info.parent_vid, info.is_snapshot) == \
        ("vol", 20 * MiB, 1, 0, False)
    assert info.nr_copies == 1 and info.block_size_shift == 22 and info.create_time > 0
    assert client.get_vdi("vol") == info
    assert client.find_vdi("nope") is None
    other = client.create_vdi("small-objects", 3 * MiB, block_size_shift=20, copies=1)
    assert other.block_size_shift == 20
    listed = {(v.name, v.vid) for v in client.list_vdis()}
    assert listed == {("vol", info.vid), ("small-objects", other.vid)}


def test_create_prealloc_and_usage(client: SheepdogClient) -> None:
    client.create_vdi("pre", 10 * MiB, prealloc=True)
    (v,) = client.list_vdis(with_usage=True)
    assert v.used == 3 * OBJ and v.shared == 0
    assert client.read("pre", 0, 10 * MiB) == bytes(10 * MiB)


def test_usage_of_many_vdis_read_in_one_pipeline(client: SheepdogClient) -> None:
    """Every VDI's slots are read in one pipeline and handed back to the right
    VDI, also one whose slots take two slot-range requests (> SLOT_BATCH)."""
    big_objs = 65536 + 10  # two slot-range reads
    client.create_vdi("big", big_objs * MiB, block_size_shift=20)
    client.write("big", (big_objs - 1) * MiB, b"\1")  # an object in the second read
    client.write("big", 0, b"\1")
    client.create_vdi("a", 3 * OBJ)
    client.write("a", OBJ, b"\2")
    client.create_vdi("empty", OBJ)
    client.snapshot_vdi("a", "s")
    client.clone_vdi("a", "s", "child")
    client.write("child", 2 * OBJ, b"\3")  # own object; object 1 shared with a's snapshot
    usage = {(v.name, v.is_snapshot): (v.used, v.shared)
             for v in client.list_vdis(with_usage=True)}
    assert usage == {("big", False): (2 * MiB, 0), ("a", False): (0, OBJ),
                     ("a", True): (OBJ, 0), ("empty", False): (0, 0),
                     ("child", False): (OBJ, OBJ)}


def test_erasure_coded_create(client: SheepdogClient) -> None:
    info = client.create_vdi("ec", 8 * MiB, copy_policy=0x21)  # 4:1
    assert info.copy_policy == 0x21 and info.nr_copies == 5


def test_names_and_tags_at_the_limit(client: SheepdogClient) -> None:
    name, tag = "n" * 255, "t" * 255
    info = client.create_vdi(name, MiB)
    assert client.get_vdi(name).vid == info.vid
    snap = client.snapshot_vdi(name, tag)
    assert snap.tag == tag and client.get_vdi(name, tag).vid == snap.vid
    utf = "é" * 127  # 254 bytes of UTF-8
    assert client.create_vdi(utf, MiB).name == utf
    for bad in ("n" * 256, "é" * 128, "", "a\0b"):
        with pytest.raises(InvalidInput):
            client.create_vdi(bad, MiB)
    with pytest.raises(InvalidInput):
        client.snapshot_vdi(name, "t" * 256)
    with pytest.raises(InvalidInput):
        client.get_vdi(name, "t" * 256)
    assert {v.name for v in client.list_vdis()} == {name, utf}


def test_sizes_at_the_limits(client: SheepdogClient) -> None:
    flat_max = (1 << 20) * OBJ  # 4 TiB with 4 MiB objects
    assert client.create_vdi("max", flat_max).size == flat_max
    with pytest.raises(InvalidInput):
        client.create_vdi("too-big", flat_max + 1)
    assert client.create_vdi("max1m", 1 << 40, block_size_shift=20).size == 1 << 40
    with pytest.raises(InvalidInput):
        client.create_vdi("too-big-1m", (1 << 40) + 1, block_size_shift=20)
    for bad_size in (0, -1, 1.5, True):
        with pytest.raises(InvalidInput):
            client.create_vdi("bad", bad_size)  # type: ignore[arg-type]
    for kwargs in ({"block_size_shift": 19}, {"block_size_shift": 32}, {"copies": 32},
                   {"copy_policy": 0x10}, {"copy_policy": 0x21, "copies": 3}):
        with pytest.raises(InvalidInput):
            client.create_vdi("bad", MiB, **kwargs)  # type: ignore[arg-type]
    assert client.create_vdi("one-byte", 1).size == 1
    assert {v.name for v in client.list_vdis()} == {"max", "max1m", "one-byte"}
    # the last byte of a 4 TiB VDI is addressable
    client.write("max", flat_max - 3, b"end")
    assert client.read("max", flat_max - 4, 4) == b"\0end"
    (v,) = [v for v in client.list_vdis(with_usage=True) if v.name == "max"]
    assert v.used == OBJ


def test_duplicate_create_is_vdi_exists(client: SheepdogClient) -> None:
    client.create_vdi("dup", MiB)
    with pytest.raises(VdiExists):
        client.create_vdi("dup", MiB)


def test_snapshot_clone_read_write(client: SheepdogClient) -> None:
    client.create_vdi("base", 12 * MiB)
    client.write("base", OBJ - 3, b"across")
    snap = client.snapshot_vdi("base", "s1")
    assert snap.is_snapshot and snap.tag == "s1" and snap.snap_ctime > 0
    working = client.get_vdi("base")
    assert working.vid != snap.vid and working.parent_vid == snap.vid and working.tag == ""
    with pytest.raises(VdiExists):
        client.snapshot_vdi("base", "s1")
    client.write("base", 0, b"new")  # COW against the snapshot's object
    assert client.read("base", 0, 3) == b"new"
    assert client.read("base", 0, 3, tag="s1") == b"\0\0\0"
    assert client.read("base", OBJ - 3, 6, tag="s1") == b"across"
    clone = client.clone_vdi("base", "s1", "copy")
    assert clone.parent_vid == snap.vid and clone.size == 12 * MiB and clone.is_clone
    assert client.read("copy", OBJ - 3, 6) == b"across"
    client.write("copy", OBJ - 3, b"CLONE!")
    assert client.read("copy", OBJ - 3, 6) == b"CLONE!"
    assert client.read("base", OBJ - 3, 6) == b"across"
    bigger = client.clone_vdi("base", "s1", "bigger", size=20 * MiB)
    assert bigger.size == 20 * MiB
    with pytest.raises(InvalidInput):
        client.clone_vdi("base", "s1", "smaller", size=MiB)
    with pytest.raises(InvalidInput):
        client.clone_vdi("base", "", "from-working")
    with pytest.raises(NoTag):
        client.clone_vdi("base", "missing", "x")
    with pytest.raises(NoVdi):
        client.clone_vdi("ghost", "s1", "x")
    with pytest.raises(NoVdi):
        client.snapshot_vdi("ghost", "s")
    names = sorted((v.name, v.tag) for v in client.list_vdis())
    assert names == [("base", ""), ("base", "s1"), ("bigger", ""), ("copy", "")]


def test_resize(client: SheepdogClient) -> None:
    client.create_vdi("r", 4 * MiB)
    client.write("r", 0, b"keep")
    assert client.resize_vdi("r", 8 * MiB).size == 8 * MiB
    assert client.get_vdi("r").size == 8 * MiB
    assert client.read("r", 0, 4) == b"keep" and client.read("r", 7 * MiB, 4) == bytes(4)
    assert client.resize_vdi("r", 8 * MiB).size == 8 * MiB  # same size: nothing to do
    with pytest.raises(InvalidInput):
        client.resize_vdi("r", 4 * MiB)
    with pytest.raises(InvalidInput):
        client.resize_vdi("r", (1 << 20) * OBJ + 1)
    with pytest.raises(NoVdi):
        client.resize_vdi("ghost", MiB)
    assert client.get_vdi("r").size == 8 * MiB


def test_delete_frees_the_name_at_once(client: SheepdogClient) -> None:
    client.create_vdi("d", 8 * MiB)
    client.write("d", 0, b"x" * (5 * MiB))
    client.snapshot_vdi("d", "s")
    client.write("d", 0, b"y")
    assert client.delete_vdi("d") is True
    assert client.find_vdi("d") is None and client.get_vdi("d", "s").is_snapshot
    assert client.delete_vdi("d") is False
    again = client.create_vdi("d", MiB)  # name reusable immediately
    assert again.size == MiB and client.read("d", 0, 1) == b"\0"
    assert client.read("d", 0, 1, tag="s") == b"x"
    assert client.delete_vdi("d", "s") is True
    assert client.delete_vdi("d", "s") is False
    assert client.delete_vdi("never-was") is False
    assert [(v.name, v.tag) for v in client.list_vdis()] == [("d", "")]


def test_rollback(client: SheepdogClient) -> None:
    client.create_vdi("rb", 8 * MiB)
    client.write("rb", 0, b"v1")
    snap = client.snapshot_vdi("rb", "good")
    client.write("rb", 0, b"v2")
    client.write("rb", 5 * MiB, b"later")
    back = client.rollback_vdi("rb", "good")
    assert back.parent_vid == snap.vid and not back.is_snapshot
    assert client.read("rb", 0, 2) == b"v1" and client.read("rb", 5 * MiB, 5) == bytes(5)
    assert sorted((v.name, v.tag) for v in client.list_vdis()) == [("rb", ""), ("rb", "good")]
    with pytest.raises(NoTag):
        client.rollback_vdi("rb", "bad")


def test_attributes(client: SheepdogClient) -> None:
    client.create_vdi("a", MiB)
    assert client.get_attr("a", "k") is None
    client.set_attr("a", "k", b"v1")
    assert client.get_attr("a", "k") == b"v1"
    client.set_attr("a", "k", b"v2")
    assert client.get_attr("a", "k") == b"v2"
    with pytest.raises(VdiExists):
        client.set_attr("a", "k", b"v3", exclusive=True)
    client.set_attr("a", "big", b"z" * 65536)
    assert client.get_attr("a", "big") == b"z" * 65536
    with pytest.raises(InvalidInput):
        client.set_attr("a", "big", b"z" * 65537)
    with pytest.raises(InvalidInput):
        client.set_attr("a", "k" * 256, b"")
    assert client.delete_attr("a", "k") is True
    assert client.get_attr("a", "k") is None and client.delete_attr("a", "k") is False
    with pytest.raises(NoVdi):
        client.set_attr("ghost", "k", b"v")


def test_lock_release_without_lock_mode(client: SheepdogClient) -> None:
    info = client.create_vdi("l", MiB)
    assert client.lock_vdi("l").vid == info.vid
    assert client.lock_vdi("l").vid == info.vid  # no USE_LOCK: lock = lookup
    client.release_vdi(info.vid)
    with pytest.raises(InvalidInput):
        client.release_vdi(0)


def test_lock_mode_and_format(client: SheepdogClient) -> None:
    client.create_vdi("gone-after-format", MiB)
    client.format_cluster(1, flags=ClusterFlag.AUTO_VNODES | ClusterFlag.USE_LOCK)
    assert client.list_vdis() == []
    assert client.cluster_info().flags & ClusterFlag.USE_LOCK
    info = client.create_vdi("l", MiB)
    client.lock_vdi("l")
    with pytest.raises(VdiLocked):
        client.lock_vdi("l")
    client.release_vdi(info.vid)
    assert client.lock_vdi("l").vid == info.vid
    with pytest.raises(NoStore):
        client.format_cluster(1, store="nosuch")
    for bad in ({"copies": 0}, {"block_size_shift": 19}, {"store": "a b"}):
        with pytest.raises(InvalidInput):
            client.format_cluster(**bad)  # type: ignore[arg-type]


def test_unformatted_cluster_is_wait_for_format(tmp_path: Path) -> None:
    with EmbeddedServer(tmp_path / "raw", format=False) as server, \
            SheepdogClient(server.gateways) as client:
        with pytest.raises(WaitForFormat):
            client.create_vdi("x", MiB)
        assert client.cluster_info().ctime == 0
        client.format_cluster(2)
        assert client.cluster_info().nr_copies == 2
        assert client.create_vdi("x", MiB).nr_copies == 2


def test_data_across_objects_and_offsets(client: SheepdogClient) -> None:
    client.create_vdi("io", 3 * OBJ + 5)
    blob = bytes(i % 251 for i in range(2 * OBJ + 40))
    client.write("io", OBJ - 50, blob)
    assert client.read("io", OBJ - 50, len(blob)) == blob
    assert client.read("io", 0, OBJ - 50) == bytes(OBJ - 50)
    client.write("io", 3 * OBJ, b"tail!")
    assert client.read("io", 3 * OBJ, 5) == b"tail!"
    assert client.read("io", 0, 0) == b""
    for offset, length in ((3 * OBJ + 1, 5), (-1, 1), (0, -1)):
        with pytest.raises(InvalidInput):
            client.read("io", offset, length)
    with pytest.raises(InvalidInput):
        client.write("io", 3 * OBJ + 1, b"12345")
    with pytest.raises(NoVdi):
        client.read("ghost", 0, 1)
    with pytest.raises(NoTag):
        client.read("io", 0, 1, tag="none")


def test_streaming_file_io(client: SheepdogClient, tmp_path: Path) -> None:
    size = 3 * OBJ + 12345
    client.create_vdi("s", size)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    src = tmp_path / "src.raw"
    src.write_bytes(data)
    with src.open("rb") as f:
        assert client.write_from_file("s", f) == size
    out = io.BytesIO()
    assert client.read_to_file("s", out) == size and out.getvalue() == data
    out2 = io.BytesIO()
    assert client.read_to_file("s", out2, length=100) == 100
    assert out2.getvalue() == data[:100]

    class Pipe(io.RawIOBase):  # not seekable: written in buffered segments
        def __init__(self, payload: bytes) -> None:
            self.buf = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            chunk = self.buf.read(min(len(b), 1000003))
            b[:len(chunk)] = chunk
            return len(chunk)
    assert client.write_from_file("s", Pipe(b"P" * 5000), offset=7) == 5000  # type: ignore[arg-type]
    assert client.read("s", 0, 5010) == data[:7] + b"P" * 5000 + data[5007:5010]
    with open(src, "rb") as f, pytest.raises(InvalidInput):
        client.write_from_file("s", f, offset=1)  # one byte too many: nothing written
    assert client.read("s", 0, 7) == data[:7]


def test_server_errors_map_to_exceptions(client: SheepdogClient,
                                         embedded_server: EmbeddedServer) -> None:
    """Errors no public method provokes on purpose, sent raw on a client connection."""
    client.create_vdi("e", 8 * MiB)
    client.write("e", 0, b"data")
    snap = client.snapshot_vdi("e", "s")
    cluster = client.cluster
    bad_len = Request(Opcode.GET_VDI_INFO, rq.get_vdi_info("e").body, flags=Flag.WRITE,
                      data_length=10, payload=bytes(10))
    with pytest.raises(InvalidParameters):
        cluster.run(lambda c: check(c.call(bad_len)))
    with pytest.raises(VersionMismatch):
        cluster.run(lambda c: check(c.call(Request(Opcode.GET_NODE_LIST, proto_ver=2,
                                                   data_length=80))))
    with pytest.raises(ReadOnly):  # a data object of a snapshot
        cluster.run(lambda c: check(c.call(rq.write_obj(vid_to_data_oid(snap.vid, 0), 0,
                                                        b"x"))))
    assert client.read("e", 0, 4, tag="s") == b"data"


def test_get_vdi_by_vid_reads_live_and_deleted_inodes(client: SheepdogClient) -> None:
    client.create_vdi("byvid", 8 * MiB)
    snap = client.snapshot_vdi("byvid", "kept-tag")
    working = client.get_vdi("byvid")
    clone = client.clone_vdi("byvid", "kept-tag", "byvid-clone", size=12 * MiB)
    assert client.get_vdi_by_vid(working.vid) == working
    assert client.get_vdi_by_vid(snap.vid) == client.get_vdi("byvid", "kept-tag")
    assert client.get_vdi_by_vid(clone.vid) == clone
    assert client.delete_vdi("byvid", "kept-tag") is True
    gone = client.get_vdi_by_vid(snap.vid)  # deleted: name and size cleared, the rest kept
    assert (gone.name, gone.size) == ("", 0)
    assert (gone.tag, gone.vid, gone.snap_id, gone.snap_ctime, gone.create_time) == \
        (snap.tag, snap.vid, snap.snap_id, snap.snap_ctime, snap.create_time)
    assert gone.is_snapshot and gone.parent_vid == snap.parent_vid
    assert client.get_vdi_by_vid(clone.vid).parent_vid == snap.vid  # the link survives
    unused = next(v for v in range(1, 1 << 24)
                  if v not in {working.vid, snap.vid, clone.vid})
    with pytest.raises(NoVdi, match=f"{unused:#x}"):
        client.get_vdi_by_vid(unused)
    for bad in (0, -1, 1 << 24, True, "1"):
        with pytest.raises(InvalidInput):
            client.get_vdi_by_vid(bad)  # type: ignore[arg-type]


def _snapshots_by_full_listing(client: SheepdogClient, name: str) -> list[tuple[str, int]]:
    return sorted((v.tag, v.vid) for v in client.list_vdis()
                  if v.is_snapshot and v.name == name)


@pytest.mark.parametrize("recycle", [False, True])
def test_list_snapshots_matches_the_full_listing(tmp_path: Path, recycle: bool) -> None:
    """The probe-chain walk finds exactly what a listing of every inode finds:
    interleaved families, a family whose working VDI was deleted, a deleted
    snapshot, and a cluster formatted to recycle vids (full-scan fallback)."""
    with EmbeddedServer(tmp_path / "s", format=False) as server, \
            SheepdogClient(server.gateways) as client:
        flags = ClusterFlag.AUTO_VNODES | (ClusterFlag.RECYCLE_VID if recycle else 0)
        client.format_cluster(1, flags=flags)
        host, port = server.addresses[0]
        with RawConnection(host, port) as raw:  # what decides chain walk vs full scan
            stat = check(raw.call(rq.stat_cluster_flags()))
        assert EpochLog.decode(stat.payload, 0).flags == flags
        names = ["a", "b", "vol-1", "x" * 255]
        for name in names:
            client.create_vdi(name, 1 << 30)
        for round_ in range(3):
            for name in names:
                client.snapshot_vdi(name, f"s{round_}")
        client.delete_vdi("b", "s1")
        client.delete_vdi("vol-1")  # snapshots outlive their working VDI
        for name in [*names, "never-made"]:
            got = client.list_snapshots(name)
            assert [v.snap_id for v in got] == sorted(v.snap_id for v in got)
            assert sorted((v.tag, v.vid) for v in got) == \
                _snapshots_by_full_listing(client, name)
        assert [v.tag for v in client.list_snapshots("b")] == ["s0", "s2"]
        assert [v.tag for v in client.list_snapshots("vol-1")] == ["s0", "s1", "s2"]
