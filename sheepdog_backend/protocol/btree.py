"""The B-tree index of a hyper volume (store_policy 1; Sheepdog's lib/sd_inode.c).

A hyper inode keeps no flat slot array.  Its ``data_vdi_id`` area (4 MiB at
inode offset 4664) holds the *root* node: an 8-byte ``sd_index_header``
{u16 magic 0x6274, u16 depth, u32 entries} followed by sorted entries.

* depth 1: the root is a leaf of ``sd_index`` {u32 idx, u32 vdi_id} (8 bytes):
  data object ``idx`` lives in ``vid_to_data_oid(vdi_id, idx)``; an index
  not listed is unallocated.  At most MAX_INDEX (524,287) entries.
* depth 2: the root holds ``sd_indirect_idx`` {u32 idx, 4 pad, u64 oid}
  (16 bytes, C alignment; at most MAX_INDIRECT = 262,143): ``idx`` is the
  largest data index in the leaf object ``oid`` (``vid_to_btree_oid(vid,
  n)``, a 4 MiB object with the same header, depth 1, and ``sd_index``
  entries).  A lookup takes the first entry whose key is >= idx.

``inode.btree_counter`` (offset 568) numbers the leaf objects: each new leaf
takes ``btree_counter++``.  The writer of a data object updates the index
itself (dog's ``vdi write``: ``sd_inode_set_vid`` then ``sd_inode_write``);
sheep only walks it, on DEL_VDI, to remove the VDI's own data objects.

``HyperIndex`` is the pure part of ``sd_inode_set_vid`` / ``get_vid``: it
holds decoded nodes, answers lookups (``NeedLeaf`` names a leaf it has not
been given) and records what an insert changed, as ``IndexChanges`` the
client writes in a crash-safe order (counter, new leaves, changed leaves,
root).  One deviation from sd_inode.c: a split leaf's key is its *last*
entry's idx (sd_inode.c reads one past the end there); lookups of sd_inode.c
find every entry of a tree written this way.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from dataclasses import dataclass, field

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.constants import (
    INDEX_HEADER_MAGIC,
    SD_BTREE_NODE_SIZE,
    SD_INODE_INDEX_OFFSET,
)
from sheepdog_backend.protocol.inode import INDEX_HEADER, encode_index_header
from sheepdog_backend.protocol.oid import vid_to_btree_oid

INDEX_ENTRY = struct.Struct("<II")
INDIRECT_ENTRY = struct.Struct("<I4xQ")
NODE_SIZE = SD_BTREE_NODE_SIZE  # the root area and every leaf object: 4 MiB
PAYLOAD_SIZE = NODE_SIZE - INDEX_HEADER.size
MAX_INDEX = PAYLOAD_SIZE // INDEX_ENTRY.size  # 524,287
MAX_INDIRECT = PAYLOAD_SIZE // INDIRECT_ENTRY.size  # 262,143
ROOT_OFFSET = SD_INODE_INDEX_OFFSET  # the root node inside the inode object
MAX_DATA_INDEX = (1 << 32) - 1


@dataclass
class IndexNode:
    """One node: ``keys`` sorted; ``values`` are vdi ids (depth 1) or leaf
    oids (depth 2)."""

    depth: int = 1
    keys: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)

    @property
    def entry_size(self) -> int:
        return INDEX_ENTRY.size if self.depth == 1 else INDIRECT_ENTRY.size

    @property
    def capacity(self) -> int:
        return MAX_INDEX if self.depth == 1 else MAX_INDIRECT

    def encode(self) -> bytes:
        """Header and the used entries (the rest of the node is not written)."""
        entry = INDEX_ENTRY if self.depth == 1 else INDIRECT_ENTRY
        out = bytearray(encode_index_header(self.depth, len(self.keys)))
        for key, value in zip(self.keys, self.values, strict=True):
            out += entry.pack(key, value)
        return bytes(out)

    @classmethod
    def decode_header(cls, data: bytes | bytearray | memoryview) -> tuple[int, int]:
        """(depth, entries) of a node; an all-zero header (a root sheep never
        initialised) is an empty leaf."""
        if len(data) < INDEX_HEADER.size:
            raise ProtocolError(f"a B-tree node header is 8 bytes, got {len(data)}")
        magic, depth, entries = INDEX_HEADER.unpack_from(data, 0)
        if magic == 0 and depth == 0 and entries == 0:
            return 1, 0
        if magic != INDEX_HEADER_MAGIC:
            raise ProtocolError(f"B-tree node magic {magic:#06x}, expected "
                                f"{INDEX_HEADER_MAGIC:#06x}")
        if depth not in (1, 2):
            raise ProtocolError(f"B-tree depth {depth} (Sheepdog knows 1 and 2)")
        limit = MAX_INDEX if depth == 1 else MAX_INDIRECT
        if entries > limit:
            raise ProtocolError(f"B-tree node claims {entries} entries, at most {limit}")
        return depth, entries

    @classmethod
    def encoded_size(cls, depth: int, entries: int) -> int:
        size = INDEX_ENTRY.size if depth == 1 else INDIRECT_ENTRY.size
        return INDEX_HEADER.size + size * entries

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> IndexNode:
        depth, entries = cls.decode_header(data)
        need = cls.encoded_size(depth, entries)
        if len(data) < need:
            raise ProtocolError(f"B-tree node of {entries} entries needs {need} bytes, "
                                f"got {len(data)}")
        entry = INDEX_ENTRY if depth == 1 else INDIRECT_ENTRY
        pairs = list(entry.iter_unpack(memoryview(data)[INDEX_HEADER.size:need]))
        keys, values = [k for k, _ in pairs], [v for _, v in pairs]
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise ProtocolError("B-tree node entries are not sorted")
        return cls(depth, keys, values)

    def find(self, idx: int) -> int:
        """Position of the first key >= idx (sd_inode.c's nbsearch)."""
        return bisect.bisect_left(self.keys, idx)

    def get(self, idx: int) -> int:
        pos = self.find(idx)
        return self.values[pos] if pos < len(self.keys) and self.keys[pos] == idx else 0

    def insert(self, pos: int, key: int, value: int) -> None:
        self.keys.insert(pos, key)
        self.values.insert(pos, value)


class NeedLeaf(Exception):
    """The answer lies in leaf object ``oid``, which was not given (pure code
    cannot read it: the caller reads it, ``add_leaf``s it and asks again)."""

    def __init__(self, oid: int) -> None:
        super().__init__(f"B-tree leaf {oid:#018x} not loaded")
        self.oid = oid


@dataclass
class IndexChanges:
    """What an insert changed, in the order a crash-safe writer writes it."""

    counter: int | None  # new btree_counter, when leaves were created
    new_leaves: list[tuple[int, bytes]]  # (oid, node): CREATE_AND_WRITE_OBJ
    leaves: list[tuple[int, bytes]]  # (oid, node): WRITE_OBJ at 0
    root: bytes | None  # WRITE_OBJ into the inode at ROOT_OFFSET


class HyperIndex:
    """A hyper inode's B-tree as far as it was loaded (see the module comment)."""

    def __init__(self, vid: int, root: IndexNode, counter: int) -> None:
        self.vid, self.root, self.counter = vid, root, counter
        self.leaves: dict[int, IndexNode] = {}
        self._root_dirty = False
        self._dirty: set[int] = set()
        self._new: list[int] = []
        self._counter_start = counter

    def add_leaf(self, oid: int, node: IndexNode) -> None:
        if node.depth != 1:
            raise ProtocolError(f"B-tree leaf {oid:#018x} has depth {node.depth}")
        self.leaves[oid] = node

    def _leaf(self, oid: int) -> IndexNode:
        node = self.leaves.get(oid)
        if node is None:
            raise NeedLeaf(oid)
        return node

    def leaf_for(self, idx: int) -> int | None:
        """The leaf an insert of ``idx`` goes to (None at depth 1)."""
        if self.root.depth == 1:
            return None
        pos = self.root.find(idx)
        return self.root.values[min(pos, len(self.root.keys) - 1)]

    def get(self, idx: int) -> int:
        """The vdi id holding data object ``idx``; 0 when unallocated."""
        root = self.root
        if root.depth == 1:
            return root.get(idx)
        pos = root.find(idx)
        if pos >= len(root.keys):
            return 0
        return self._leaf(root.values[pos]).get(idx)

    def _new_leaf_oid(self) -> int:
        oid = vid_to_btree_oid(self.vid, self.counter)
        self.counter += 1
        self._new.append(oid)
        return oid

    def set(self, idx: int, vdi_id: int) -> None:
        """Map data object ``idx`` to ``vdi_id`` (sd_inode_set_vid)."""
        if not 0 <= idx <= MAX_DATA_INDEX:
            raise ValueError(f"data index {idx!r} out of range")
        root = self.root
        if root.depth == 1:
            pos = root.find(idx)
            if pos < len(root.keys) and root.keys[pos] == idx:
                root.values[pos] = vdi_id
            elif len(root.keys) < MAX_INDEX:
                root.insert(pos, idx, vdi_id)
            else:
                self._split_root()
                self.set(idx, vdi_id)
                return
            self._root_dirty = True
            return
        pos = root.find(idx)
        last = pos >= len(root.keys)
        ri = len(root.keys) - 1 if last else pos
        oid = root.values[ri]
        leaf = self._leaf(oid)
        lpos = leaf.find(idx)
        if lpos < len(leaf.keys) and leaf.keys[lpos] == idx:
            leaf.values[lpos] = vdi_id
            self._dirty.add(oid)
            return
        if len(leaf.keys) < MAX_INDEX:
            leaf.insert(lpos, idx, vdi_id)
            self._dirty.add(oid)
            if last:
                root.keys[ri] = idx
                self._root_dirty = True
            return
        if last:  # the last leaf is full: a new leaf after it
            if len(root.keys) >= MAX_INDIRECT:
                raise ValueError("the B-tree is full")
            new = self._new_leaf_oid()
            self.leaves[new] = IndexNode(1, [idx], [vdi_id])
            root.insert(len(root.keys), idx, new)
            self._root_dirty = True
            return
        self._split_leaf(ri)
        self.set(idx, vdi_id)

    def _split_root(self) -> None:
        """The full depth-1 root becomes two leaves; the root, depth 2."""
        root = self.root
        half = len(root.keys) // 2
        left, right = self._new_leaf_oid(), self._new_leaf_oid()
        self.leaves[left] = IndexNode(1, root.keys[:half], root.values[:half])
        self.leaves[right] = IndexNode(1, root.keys[half:], root.values[half:])
        self.root = IndexNode(2, [root.keys[half - 1], root.keys[-1]], [left, right])
        self._root_dirty = True

    def _split_leaf(self, ri: int) -> None:
        """A full leaf gives its lower half to a new leaf placed before it."""
        root = self.root
        if len(root.keys) >= MAX_INDIRECT:
            raise ValueError("the B-tree is full")
        oid = root.values[ri]
        old = self._leaf(oid)
        half = len(old.keys) // 2
        new = self._new_leaf_oid()
        self.leaves[new] = IndexNode(1, old.keys[:half], old.values[:half])
        old.keys, old.values = old.keys[half:], old.values[half:]
        root.insert(ri, self.leaves[new].keys[-1], new)
        self._dirty.add(oid)
        self._root_dirty = True

    def changes(self) -> IndexChanges:
        """What the inserts since the last call changed (and forget it)."""
        new = [(oid, self.leaves[oid].encode()) for oid in self._new]
        changed = [(oid, self.leaves[oid].encode()) for oid in sorted(self._dirty)
                   if oid not in self._new]
        out = IndexChanges(self.counter if self.counter != self._counter_start else None,
                           new, changed, self.root.encode() if self._root_dirty else None)
        self._new, self._dirty, self._root_dirty = [], set(), False
        self._counter_start = self.counter
        return out

    def walk(self) -> list[tuple[int, int]]:
        """Every (idx, vdi_id) entry in order (needs every leaf loaded)."""
        if self.root.depth == 1:
            return list(zip(self.root.keys, self.root.values, strict=True))
        out: list[tuple[int, int]] = []
        for oid in self.root.values:
            leaf = self._leaf(oid)
            out.extend(zip(leaf.keys, leaf.values, strict=True))
        return out
