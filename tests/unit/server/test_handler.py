"""Handler semantics without sockets: requests built with the real codec."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sheepdog_backend.protocol.constants import (
    SD_ATTR_OBJ_SIZE,
    SD_INODE_GREF_OFFSET,
    VID_BITMAP_SIZE,
    ClusterFlag,
    Flag,
    Opcode,
    Result,
)
from sheepdog_backend.protocol.header import ClusterRequest, ObjRequest, Request, VdiRequest
from sheepdog_backend.protocol.inode import slot_offset
from sheepdog_backend.protocol.naming import attr_id, sd_hash_vdi
from sheepdog_backend.protocol.oid import vid_to_attr_oid, vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.protocol.structs import VdiAttr
from sheepdog_backend.server.handler import Handler
from sheepdog_backend.server.state import ServerState
from tests.unit.server.helpers import (
    Clock,
    bitmap,
    call,
    header,
    lookup,
    new_vdi,
    open_handler,
    read_obj,
    set_slot,
    tag_field,
    vdi_op,
    whole_inode,
    write_data,
    write_obj,
)

TEST = 0x7C2B25  # sd_hash_vdi("test")


@pytest.fixture
def handler(tmp_path: Path) -> Handler:
    return open_handler(tmp_path)


def test_unformatted_gating(tmp_path: Path) -> None:
    h = open_handler(tmp_path, fmt=False)
    assert call(h, lookup("test")).result == Result.WAIT_FOR_FORMAT
    assert call(h, read_obj(vid_to_vdi_oid(1), 8)).result == Result.WAIT_FOR_FORMAT
    assert call(h, Request(Opcode.STAT_SHEEP)).result == Result.WAIT_FOR_FORMAT
    assert bitmap(h) == bytes(VID_BITMAP_SIZE)
    rsp = call(h, Request(Opcode.GET_CLUSTER_DEFAULT))
    assert rsp.ok and rsp.epoch == 0
    assert (rsp.body.nr_copies, rsp.body.block_size_shift) == (0, 0)  # type: ignore[union-attr]


def test_version_and_unknown_opcode(handler: Handler) -> None:
    assert call(handler, Request(Opcode.GET_NODE_LIST, proto_ver=2,
                                 data_length=80)).result == Result.VER_MISMATCH
    assert call(handler, lookup("x").__class__(
        Opcode.GET_VDI_INFO, VdiRequest(), flags=1, data_length=256, payload=bytes(256),
        proto_ver=3)).result == Result.VER_MISMATCH
    for pv in (0, 1, 2):
        rsp = call(handler, Request(Opcode.GET_CLUSTER_DEFAULT, proto_ver=pv))
        assert rsp.ok and rsp.epoch == 1 and rsp.proto_ver == 0 and rsp.flags == 0
    for op in (0x06, 0x91, 0x7F, 0xFF):
        assert call(handler, Request(op, proto_ver=0x0A if op >= 0x80 else 2)).result == \
            Result.INVALID_PARMS
    assert call(handler, Request(Opcode.FLUSH_VDI, ObjRequest())).result == Result.INVALID_PARMS
    assert call(handler, Request(Opcode.DELETE_CACHE, ObjRequest())).ok


def test_create_snapshot_clone_follow_sheep(handler: Handler) -> None:
    rsp = call(handler, new_vdi("test"))
    assert rsp.ok and rsp.body.vdi_id == TEST  # type: ignore[union-attr]
    assert call(handler, new_vdi("test")).result == Result.VDI_EXIST
    write_data(handler, TEST, 0, b"hello")
    # dog snapshot: tag into the current inode, then NEW_VDI with snapid=1
    assert call(handler, write_obj(vid_to_vdi_oid(TEST), tag_field("s1"), 256)).ok
    rsp = call(handler, new_vdi("test", base=TEST, snapid=1, copies=1, shift=22))
    new = rsp.body.vdi_id  # type: ignore[union-attr]
    assert new == TEST + 1
    snap, cur = header(handler, TEST), header(handler, new)
    assert snap.snap_ctime != 0 and snap.tag == b"s1" and snap.snap_id == 1
    assert cur.snap_ctime == 0 and cur.snap_id == 2 and cur.parent_vdi_id == TEST
    assert cur.create_time == snap.snap_ctime
    inode = whole_inode(handler, new)
    assert struct.unpack_from("<I", inode, slot_offset(0))[0] == TEST
    assert struct.unpack_from("<ii", inode, SD_INODE_GREF_OFFSET) == (1, 0)
    assert struct.unpack_from("<ii", whole_inode(handler, TEST), SD_INODE_GREF_OFFSET) == (0, 1)
    assert call(handler, lookup("test")).body.vdi_id == new  # type: ignore[union-attr]
    assert call(handler, lookup("test", "s1")).body.vdi_id == TEST  # type: ignore[union-attr]
    assert call(handler, lookup("test", snapid=1)).body.vdi_id == TEST  # type: ignore[union-attr]
    assert call(handler, lookup("test", "nope")).result == Result.NO_TAG
    assert call(handler, lookup("test", snapid=2)).result == Result.NO_TAG
    assert call(handler, lookup("nosuch")).result == Result.NO_VDI
    # snapshot data is read-only, the working VDI copies on write
    assert call(handler, write_obj(vid_to_data_oid(TEST, 0), b"x")).result == Result.READONLY
    write_data(handler, new, 0, b"J", cow_vid=TEST)
    assert call(handler, read_obj(vid_to_data_oid(new, 0), 5)).payload == b"Jello"
    assert call(handler, read_obj(vid_to_data_oid(TEST, 0), 5)).payload == b"hello"
    # clone of the snapshot: new family, snap_id 1, parent = snapshot
    rsp = call(handler, new_vdi("cl", base=TEST, copies=1, shift=22))
    cl = rsp.body.vdi_id  # type: ignore[union-attr]
    assert cl == sd_hash_vdi(b"cl")
    ch = header(handler, cl)
    assert (ch.snap_id, ch.parent_vdi_id, ch.snap_ctime) == (1, TEST, 0)
    assert struct.unpack_from("<I", whole_inode(handler, cl), slot_offset(0))[0] == TEST


def test_slot_writes_collect_only_unreferenced_objects(handler: Handler) -> None:
    call(handler, new_vdi("test"))
    write_data(handler, TEST, 0, b"a")
    write_data(handler, TEST, 1, b"b")
    store = handler.state.store
    assert call(handler, set_slot(TEST, 1, 0)).ok  # discard-style unmap
    assert not store.exists(vid_to_data_oid(TEST, 1))
    call(handler, new_vdi("test", base=TEST, snapid=1, copies=1, shift=22))
    new = TEST + 1
    write_data(handler, new, 0, b"c", cow_vid=TEST)  # drops new's ref to (TEST, 0)
    assert store.exists(vid_to_data_oid(TEST, 0)), "the snapshot still references it"
    assert call(handler, read_obj(vid_to_data_oid(TEST, 0), 1)).payload == b"a"


def test_delete_with_live_slots_is_a_full_delete(handler: Handler) -> None:
    """QEMU's branch creation: DEL_VDI without zeroing slots, then NEW_VDI again."""
    call(handler, new_vdi("test"))
    write_data(handler, TEST, 0, b"data")
    call(handler, write_obj(vid_to_vdi_oid(TEST), tag_field("t"), 256))
    call(handler, new_vdi("test", base=TEST, snapid=1, copies=1, shift=22))
    cur = TEST + 1
    write_data(handler, cur, 3, b"mine")
    rsp = call(handler, Request(Opcode.DEL_VDI, VdiRequest(base_vdi_id=cur), flags=Flag.WRITE,
                                data_length=256, payload=lookup("test").payload[:256]))
    assert rsp.ok and rsp.body.vdi_id == cur  # type: ignore[union-attr]
    gone = header(handler, cur)
    assert gone.name == b"" and gone.vdi_size == 0 and gone.snap_id == 2
    assert not any(whole_inode(handler, cur)[4664:])
    assert not handler.state.store.exists(vid_to_data_oid(cur, 3))
    assert handler.state.store.exists(vid_to_data_oid(TEST, 0))
    deleted = bitmap(handler, deleted=True)
    assert deleted[cur >> 3] & (1 << (cur & 7))
    assert call(handler, lookup("test")).result == Result.NO_VDI
    rsp = call(handler, new_vdi("test", base=TEST, copies=1, shift=22))
    assert rsp.ok
    branch = header(handler, rsp.body.vdi_id)  # type: ignore[union-attr]
    assert branch.snap_id == 2 and branch.parent_vdi_id == TEST


def test_restart_rebuilds_the_same_state(tmp_path: Path, handler: Handler) -> None:
    call(handler, new_vdi("test"))
    call(handler, new_vdi("test", base=TEST, snapid=1, copies=1, shift=22))
    call(handler, new_vdi("other"))
    call(handler, vdi_op(Opcode.DEL_VDI, "other"))
    before = (bitmap(handler), bitmap(handler, True))
    again = Handler(ServerState(tmp_path, sync=False, clock=Clock()))
    assert (bitmap(again), bitmap(again, True)) == before
    assert call(again, lookup("test")).body.vdi_id == TEST + 1  # type: ignore[union-attr]
    assert call(again, lookup("other")).result == Result.NO_VDI


def _attr(name: str, key: str, value: bytes = b"", flags: int = 0) -> Request:
    payload = VdiAttr(name=name.encode(), key=key.encode(), value=value,
                      value_len=len(value)).encode()
    return Request(Opcode.GET_VDI_ATTR, VdiRequest(), flags=Flag.WRITE | flags,
                   data_length=SD_ATTR_OBJ_SIZE, payload=payload)


def test_attributes(handler: Handler) -> None:
    assert call(handler, _attr("test", "k")).result == Result.NO_VDI
    call(handler, new_vdi("test"))
    assert call(handler, _attr("test", "k")).result == Result.NO_OBJ
    rsp = call(handler, _attr("test", "k", b"v1", Flag.CREAT))
    aid = attr_id(b"test", b"", 0, b"k")
    assert rsp.ok and rsp.body.attr_id == aid and rsp.body.vdi_id == TEST  # type: ignore
    assert call(handler, _attr("test", "k", b"v2", Flag.CREAT | Flag.EXCL)).result == \
        Result.VDI_EXIST
    stored = call(handler, read_obj(vid_to_attr_oid(TEST, aid), SD_ATTR_OBJ_SIZE)).payload
    assert VdiAttr.decode(stored).value == b"v1"
    assert call(handler, _attr("test", "k", flags=Flag.DEL)).ok
    assert call(handler, _attr("test", "k")).result == Result.NO_OBJ
    bad = Request(Opcode.GET_VDI_ATTR, VdiRequest(), flags=1, data_length=10, payload=bytes(10))
    assert call(handler, bad).result == Result.INVALID_PARMS


def test_locks_only_with_use_lock(tmp_path: Path) -> None:
    plain = open_handler(tmp_path / "a")
    call(plain, new_vdi("test"))
    for _ in range(2):
        assert call(plain, vdi_op(Opcode.LOCK_VDI, "test")).ok
    locking = open_handler(tmp_path / "b", flags=ClusterFlag.AUTO_VNODES | ClusterFlag.USE_LOCK)
    call(locking, new_vdi("test"))
    assert call(locking, vdi_op(Opcode.LOCK_VDI, "test")).ok
    rsp = call(locking, vdi_op(Opcode.LOCK_VDI, "test"))
    assert rsp.result == Result.VDI_LOCKED and rsp.body.vdi_id == TEST  # type: ignore
    assert call(locking, Request(Opcode.RELEASE_VDI, VdiRequest(base_vdi_id=TEST))).ok
    assert call(locking, vdi_op(Opcode.LOCK_VDI, "test")).ok


def test_sizes_and_zero_fill(handler: Handler) -> None:
    assert call(handler, Request(Opcode.READ_VDIS, data_length=1024)).result == \
        Result.INVALID_PARMS
    call(handler, new_vdi("test"))
    oid = vid_to_data_oid(TEST, 7)
    assert call(handler, read_obj(oid, 10)).result == Result.NO_OBJ
    assert call(handler, write_obj(oid, b"x")).result == Result.NO_OBJ
    assert call(handler, write_obj(oid, b"xyz", 100, create=True)).ok
    rsp = call(handler, read_obj(oid, 200, 90))
    assert rsp.payload == bytes(10) + b"xyz" + bytes(187)
    assert call(handler, read_obj(oid, 16, (1 << 22) - 8)).result == Result.INVALID_PARMS
    assert call(handler, write_obj(oid, b"abc", (1 << 22) - 1)).result == Result.INVALID_PARMS
    assert call(handler, read_obj(0, 8)).result == Result.INVALID_PARMS
    assert call(handler, new_vdi("big", 5 << 40)).result == Result.INVALID_PARMS
    # a WRITE request never gets payload back
    rsp = handler.handle(write_obj(oid, b"q", 0))
    assert rsp.ok and rsp.payload == b""
    assert call(handler, Request(Opcode.CLUSTER_INFO, data_length=100)).result == \
        Result.INVALID_PARMS


def test_stat_cluster_records_and_buffers(handler: Handler) -> None:
    rsp = call(handler, Request(Opcode.STAT_CLUSTER, ClusterRequest(nodes_nr=1), data_length=128))
    assert rsp.ok and len(rsp.payload) == 128
    rsp = call(handler, Request(Opcode.GET_VDI_COPIES, data_length=0))
    assert rsp.ok and rsp.payload == b""
    call(handler, new_vdi("test"))
    assert call(handler, Request(Opcode.GET_VDI_COPIES, data_length=100)).result == \
        Result.BUFFER_SMALL
    total = call(handler, Request(Opcode.STAT_SHEEP)).body.store_size  # type: ignore
    assert total > 0


def test_make_fs_wipes_and_validates(handler: Handler) -> None:
    call(handler, new_vdi("test"))
    bad = Request(Opcode.MAKE_FS, ClusterRequest(), flags=1, data_length=5,
                  payload=b"nope\0")
    assert call(handler, bad).result == Result.NO_STORE
    assert call(handler, lookup("test")).ok
    good = Request(Opcode.MAKE_FS, ClusterRequest(), flags=1, data_length=6,
                   payload=b"plain\0")
    assert call(handler, good).ok
    assert call(handler, lookup("test")).result == Result.NO_VDI
    assert bitmap(handler) == bytes(VID_BITMAP_SIZE)
