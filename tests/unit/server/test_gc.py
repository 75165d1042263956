"""Garbage collection never removes a data object still referenced by any
inode's slot, whatever wrote that slot, also after a restart; the slot index
that narrows the check agrees with a brute-force scan of every inode."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from sheepdog_backend.protocol.constants import SD_INODE_DATA_INDEX, Opcode
from sheepdog_backend.protocol.inode import slot_offset
from sheepdog_backend.protocol.naming import sd_hash_vdi
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.server.handler import Handler
from sheepdog_backend.server.slots import aligned_slot_range, slot_values
from sheepdog_backend.server.state import ServerState
from tests.unit.server.helpers import (
    Clock,
    call,
    new_vdi,
    open_handler,
    read_obj,
    set_slot,
    vdi_op,
    write_data,
    write_obj,
)


@pytest.fixture
def handler(tmp_path: Path) -> Handler:
    return open_handler(tmp_path / "sheep")


def _reopen(handler: Handler) -> Handler:
    return Handler(ServerState(handler.state.data_dir, sync=False, clock=Clock()))


def _vid(handler: Handler, name: str, **kw: int) -> int:
    rsp = call(handler, new_vdi(name, **kw))
    assert rsp.ok
    return rsp.body.vdi_id  # type: ignore[union-attr]


def _exists(handler: Handler, vid: int, idx: int) -> bool:
    return handler.state.store.exists(vid_to_data_oid(vid, idx))


def _brute_references(handler: Handler, vid: int, idx: int) -> bool:
    """The rule itself: does any inode file on disk hold vid in slot idx?"""
    want = struct.pack("<I", vid)
    store = handler.state.store
    return any(store.read(vid_to_vdi_oid(other), slot_offset(idx), 4) == want
               for other in handler.state.registry.records)


def test_shared_object_survives_until_its_last_holder_goes(handler: Handler) -> None:
    base = _vid(handler, "base")
    write_data(handler, base, 0, b"shared")
    snap_new = _vid(handler, "base", base=base, snapid=1, copies=1, shift=22)  # base frozen
    clone = _vid(handler, "clone", base=base, copies=1, shift=22)
    assert call(handler, vdi_op(Opcode.DEL_VDI, "base")).ok  # the working VDI
    assert _exists(handler, base, 0), "snapshot and clone still hold it"
    assert call(handler, vdi_op(Opcode.DEL_VDI, "base", snapid=1)).ok  # the snapshot
    assert _exists(handler, base, 0), "the clone still holds it"
    assert call(handler, read_obj(vid_to_data_oid(base, 0), 6)).payload == b"shared"
    assert call(handler, vdi_op(Opcode.DEL_VDI, "clone")).ok
    assert not _exists(handler, base, 0)
    assert snap_new != clone


@pytest.mark.parametrize("restart", [False, True])
def test_a_slot_written_by_an_unrelated_vdi_keeps_the_object(handler: Handler,
                                                             restart: bool) -> None:
    owner = _vid(handler, "owner")
    stranger = _vid(handler, "stranger")  # not derived from owner
    write_data(handler, owner, 3, b"payload")
    # a client maps owner's object into stranger, far beyond stranger's size too
    assert call(handler, set_slot(stranger, 3, owner)).ok
    far = SD_INODE_DATA_INDEX - 1
    write_data(handler, owner, far, b"far")
    assert call(handler, set_slot(stranger, far, owner)).ok
    if restart:
        handler = _reopen(handler)
    assert call(handler, vdi_op(Opcode.DEL_VDI, "owner")).ok
    assert _exists(handler, owner, 3) and _exists(handler, owner, far)
    assert call(handler, read_obj(vid_to_data_oid(owner, 3), 7)).payload == b"payload"
    assert call(handler, set_slot(stranger, 3, 0)).ok  # last holder lets go
    assert not _exists(handler, owner, 3)
    assert _exists(handler, owner, far)


def test_unaligned_slot_writes_are_seen_as_the_slot_really_is(handler: Handler) -> None:
    owner = _vid(handler, "owner")
    other = _vid(handler, "other")
    write_data(handler, owner, 5, b"x")
    raw = struct.pack("<I", owner)
    # two writes of two bytes each compose the vid in other's slot 5
    assert call(handler, write_obj(vid_to_vdi_oid(other), raw[:2], slot_offset(5))).ok
    assert call(handler, write_obj(vid_to_vdi_oid(other), raw[2:], slot_offset(5) + 2)).ok
    assert call(handler, vdi_op(Opcode.DEL_VDI, "owner")).ok
    assert _exists(handler, owner, 5)


def test_an_inode_created_whole_by_create_and_write_counts(handler: Handler) -> None:
    owner = _vid(handler, "owner")
    write_data(handler, owner, 2, b"x")
    inode = call(handler, read_obj(vid_to_vdi_oid(owner), slot_offset(3))).payload
    copy = sd_hash_vdi(b"copy-of-owner")
    assert call(handler, write_obj(vid_to_vdi_oid(copy), inode, create=True)).ok
    assert call(handler, vdi_op(Opcode.DEL_VDI, "owner")).ok
    assert _exists(handler, owner, 2), "the hand-made inode still maps it"


def test_slot_index_agrees_with_a_full_scan(handler: Handler) -> None:
    rnd = random.Random(7)
    vids = [_vid(handler, f"v{i}") for i in range(5)]
    for idx in range(6):
        write_data(handler, vids[idx % 5], idx, os.urandom(16))
    for _ in range(60):
        target = rnd.choice(vids)
        first = rnd.randrange(6)
        values = [rnd.choice([0, *vids]) for _ in range(rnd.randrange(1, 4))]
        data = struct.pack(f"<{len(values)}I", *values)
        cut = rnd.randrange(0, 3)  # sometimes an unaligned start
        assert call(handler, write_obj(vid_to_vdi_oid(target), data[cut:],
                                       slot_offset(first) + cut)).ok
    for current in (handler, _reopen(handler)):
        for vid in vids:
            for idx in range(10):
                assert current.state.references(vid, idx) == \
                    _brute_references(current, vid, idx), (vid, idx)


def test_slot_helpers() -> None:
    assert aligned_slot_range(0, 4664) is None
    assert aligned_slot_range(4665, 1) == (4664, 4668)
    assert aligned_slot_range(4666, 4) == (4664, 4672)
    assert slot_values(struct.pack("<4I", 0, 7, 0, 7)) == {7}
    assert slot_values(bytes(64)) == set()
