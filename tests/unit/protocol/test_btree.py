"""The hyper-volume B-tree codec, byte for byte against what Sheepdog writes."""

from __future__ import annotations

import random
import struct

import pytest

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.btree import (
    MAX_INDEX,
    MAX_INDIRECT,
    HyperIndex,
    IndexNode,
    NeedLeaf,
)
from sheepdog_backend.protocol.oid import vid_to_btree_oid

VID = 0x5E9293

# The root a real sheep 1.0 node held (inode offset 4664) after `dog vdi create
# -y hv 6T` and `dog vdi write` at 0 and at 5497558138000 (objects 0x13ffff and
# 0x140000): magic 0x6274, depth 1, 3 entries {idx, vdi_id}.
REAL_ROOT = bytes.fromhex(
    "7462010003000000" "0000000093925e00" "ffff130093925e00" "0000140093925e00")


def test_decodes_and_reencodes_the_root_a_real_sheep_wrote() -> None:
    node = IndexNode.decode(REAL_ROOT + bytes(64))
    assert (node.depth, node.keys, node.values) == (1, [0, 0x13FFFF, 0x140000], [VID] * 3)
    assert node.encode() == REAL_ROOT


def test_building_that_root_by_inserts_gives_the_same_bytes() -> None:
    index = HyperIndex(VID, IndexNode(), 0)
    for idx in (0x140000, 0, 0x13FFFF):  # any order: entries are kept sorted
        index.set(idx, VID)
    changes = index.changes()
    assert changes.root == REAL_ROOT
    assert (changes.counter, changes.new_leaves, changes.leaves) == (None, [], [])
    assert index.changes().root is None  # nothing changed since


def test_uninitialised_root_is_an_empty_leaf_and_garbage_is_refused() -> None:
    assert IndexNode.decode(bytes(8)).keys == []
    with pytest.raises(ProtocolError, match="magic"):
        IndexNode.decode(struct.pack("<HHI", 0x1234, 1, 0))
    with pytest.raises(ProtocolError, match="depth 3"):
        IndexNode.decode(struct.pack("<HHI", 0x6274, 3, 0))
    with pytest.raises(ProtocolError, match="needs"):
        IndexNode.decode(struct.pack("<HHI", 0x6274, 1, 2) + bytes(8))
    with pytest.raises(ProtocolError, match="sorted"):
        IndexNode.decode(struct.pack("<HHIIIII", 0x6274, 1, 2, 5, 1, 4, 1))


def test_indirect_entries_are_16_bytes_with_c_padding() -> None:
    oid = vid_to_btree_oid(VID, 7)
    node = IndexNode(2, [99], [oid])
    raw = node.encode()
    assert raw == struct.pack("<HHI", 0x6274, 2, 1) + struct.pack("<I", 99) + bytes(4) \
        + struct.pack("<Q", oid)
    assert IndexNode.decode(raw) == node
    assert (MAX_INDEX, MAX_INDIRECT) == (524287, 262143)


def test_full_root_splits_into_two_leaves_found_by_lookup() -> None:
    index = HyperIndex(VID, IndexNode(1, list(range(0, 2 * MAX_INDEX, 2)),
                                      [VID] * MAX_INDEX), 0)
    index.set(7, VID + 1)  # the root is full: it splits, then takes the entry
    changes = index.changes()
    left, right = vid_to_btree_oid(VID, 0), vid_to_btree_oid(VID, 1)
    assert changes.counter == 2
    assert [oid for oid, _ in changes.new_leaves] == [left, right]
    root = IndexNode.decode(changes.root or b"")
    assert root.depth == 2 and root.values == [left, right]
    half = MAX_INDEX // 2
    assert root.keys == [2 * (half - 1), 2 * (MAX_INDEX - 1)]
    leaves = {oid: IndexNode.decode(raw) for oid, raw in changes.new_leaves}
    assert len(leaves[left].keys) == half + 1 and 7 in leaves[left].keys
    assert len(leaves[right].keys) == MAX_INDEX - half
    # a fresh reader of those bytes (as dog is) finds every entry
    fresh = HyperIndex(VID, root, 2)
    with pytest.raises(NeedLeaf) as need:
        fresh.get(7)
    assert need.value.oid == left
    for oid, node in leaves.items():
        fresh.add_leaf(oid, node)
    assert fresh.get(7) == VID + 1 and fresh.get(6) == VID and fresh.get(5) == 0
    assert fresh.get(2 * (MAX_INDEX - 1)) == VID and fresh.get(2 * MAX_INDEX) == 0


def test_depth_two_appends_update_the_last_key_then_open_a_new_leaf() -> None:
    leaf_oid = vid_to_btree_oid(VID, 0)
    top = MAX_INDEX - 2
    index = HyperIndex(VID, IndexNode(2, [top], [leaf_oid]), 1)
    index.add_leaf(leaf_oid, IndexNode(1, list(range(MAX_INDEX - 1)), [VID] * (MAX_INDEX - 1)))
    index.set(top + 10, VID)  # room for one more: the last leaf takes it, its key moves
    first = index.changes()
    assert first.new_leaves == [] and [o for o, _ in first.leaves] == [leaf_oid]
    assert IndexNode.decode(first.root or b"").keys == [top + 10]
    index.set(top + 20, VID)  # the last leaf is full now: a new leaf after it
    second = index.changes()
    new = vid_to_btree_oid(VID, 1)
    assert second.counter == 2
    assert second.new_leaves == [(new, IndexNode(1, [top + 20], [VID]).encode())]
    assert IndexNode.decode(second.root or b"").keys == [top + 10, top + 20]
    assert index.get(top + 20) == VID and index.get(top + 10) == VID
    assert index.get(top + 15) == 0 and index.get(top + 21) == 0


def test_full_middle_leaf_splits_and_keeps_every_entry() -> None:
    a, b = vid_to_btree_oid(VID, 0), vid_to_btree_oid(VID, 1)
    keys_a = list(range(0, 2 * MAX_INDEX, 2))
    index = HyperIndex(VID, IndexNode(2, [keys_a[-1], 2 * MAX_INDEX + 10], [a, b]), 2)
    index.add_leaf(a, IndexNode(1, keys_a, [VID] * MAX_INDEX))
    index.add_leaf(b, IndexNode(1, [2 * MAX_INDEX + 10], [VID]))
    index.set(1001, VID + 2)
    changes = index.changes()
    new = vid_to_btree_oid(VID, 2)
    assert changes.counter == 3 and [o for o, _ in changes.new_leaves] == [new]
    assert [o for o, _ in changes.leaves] == [a]
    root = IndexNode.decode(changes.root or b"")
    assert root.values == [new, a, b]
    rebuilt = HyperIndex(VID, root, 3)
    for oid, raw in changes.new_leaves + changes.leaves:
        rebuilt.add_leaf(oid, IndexNode.decode(raw))
    rebuilt.add_leaf(b, index.leaves[b])
    entries = dict(rebuilt.walk())
    assert len(entries) == MAX_INDEX + 2 and entries[1001] == VID + 2
    assert all(rebuilt.get(k) == VID for k in random.Random(5).sample(keys_a, 200))


def test_overwrite_of_a_mapped_index_changes_only_its_value() -> None:
    index = HyperIndex(VID, IndexNode.decode(REAL_ROOT), 0)
    index.set(0x13FFFF, 0)
    assert IndexNode.decode(index.changes().root or b"").values == [VID, 0, VID]
    with pytest.raises(ValueError):
        index.set(1 << 32, VID)
