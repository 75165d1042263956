"""Data I/O on hyper VDIs: their B-tree index read and written over the wire.

How it works.  A hyper inode (store_policy 1) has no slot array; its
``data_vdi_id`` area holds the root of a B-tree (protocol/btree.py).
``load_index`` reads the root's first 64 KiB and, when its header counts
more entries, its whole used part (8 + 8n bytes, never the 4 MiB area),
and, at depth 2, each leaf object an index needs (header, then entries).
``layout_slots`` turns that into the per-object vid list ``io.Layout`` holds,
so reads need nothing else.

A write that creates objects maps them the way dog's ``vdi write`` does
(``sd_inode_set_vid`` + ``sd_inode_write``): after the creates succeeded,
``IndexUpdater.flush`` re-reads the index (so concurrent transfers of this
client are not undone), inserts the created indexes and writes, one request
at a time and in this order: ``btree_counter`` (when leaves are added), new
leaf objects (CREATE_AND_WRITE_OBJ), changed leaves, the root.  The root
write starts 4 bytes early (the unused area before it, rewritten as read):
sheep 1.0 takes a write wholly inside ``data_vdi_id`` for slot updates and
removes the objects the old bytes would name, which for a B-tree root are
live data objects.  A crash at
any point loses no mapping that was acknowledged: until the root write lands,
new leaves are unreferenced and a split leaf still holds all its entries.
The re-read and the writes run under ``ObjectClaims.index_lock`` (one per VDI
name within one client); across processes Sheepdog has no compare-and-set,
so a hyper volume must have one allocating writer at a time, as with dog.

Nothing here is shared; the lock is the claims'.
"""

from __future__ import annotations

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client import vdi as ops
from sheepdog_backend.client.coord import ObjectClaims
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.protocol.btree import (
    ROOT_OFFSET,
    HyperIndex,
    IndexNode,
    NeedLeaf,
)
from sheepdog_backend.protocol.constants import Flag
from sheepdog_backend.protocol.inode import OFFSET_BTREE_COUNTER, InodeHeader
from sheepdog_backend.protocol.oid import vid_to_vdi_oid

FIRST_READ = 64 << 10  # a root of up to 8,191 entries in one read
ROOT_LEAD = 4  # bytes of the inode's unused area written ahead of the root

def _read_node(conn: Connection, oid: int, offset: int) -> IndexNode:
    """One node: a first read of FIRST_READ bytes, then (if its header says
    it holds more) the whole used part, until one read holds every entry its
    own header counts (another transfer may grow the node between reads)."""
    size = FIRST_READ
    while True:
        data = ops.check(conn.call(rq.read_obj(oid, offset, size, flags=Flag.DIRECT))).payload
        depth, entries = IndexNode.decode_header(data)
        need = IndexNode.encoded_size(depth, entries)
        if need <= len(data):
            return IndexNode.decode(data)
        size = need


def load_index(conn: Connection, hdr: InodeHeader, idxs: range | list[int]) -> HyperIndex:
    """The index of ``hdr``'s VDI with every leaf ``idxs`` need (for lookups
    and for inserts) loaded."""
    index = HyperIndex(hdr.vdi_id, _read_node(conn, vid_to_vdi_oid(hdr.vdi_id), ROOT_OFFSET),
                       hdr.btree_counter)
    if index.root.depth == 2:
        for idx in idxs:
            oid = index.leaf_for(idx)
            if oid is not None and oid not in index.leaves:
                index.add_leaf(oid, _read_node(conn, oid, 0))
    return index


def _get(conn: Connection, index: HyperIndex, idx: int) -> int:
    while True:
        try:
            return index.get(idx)
        except NeedLeaf as need:
            index.add_leaf(need.oid, _read_node(conn, need.oid, 0))


def layout_slots(conn: Connection, hdr: InodeHeader, first: int, count: int) -> list[int]:
    """The vid holding each data object first..first+count-1 (0: unallocated)."""
    index = load_index(conn, hdr, [])
    if index.root.depth == 1:
        mapped = dict(zip(index.root.keys, index.root.values, strict=True))
        return [mapped.get(idx, 0) for idx in range(first, first + count)]
    return [_get(conn, index, idx) for idx in range(first, first + count)]


def entries(conn: Connection, hdr: InodeHeader) -> list[tuple[int, int]]:
    """Every (idx, vid) entry of the VDI's index (each leaf read once)."""
    index = load_index(conn, hdr, [])
    for oid in index.root.values if index.root.depth == 2 else []:
        index.add_leaf(oid, _read_node(conn, oid, 0))
    return index.walk()


def index_vids(conn: Connection, hdr: InodeHeader) -> list[int]:
    """The vid of every entry of the VDI's index (for its used/shared space)."""
    return [vid for _idx, vid in entries(conn, hdr)]


def lookup_vids(conn: Connection, vid: int, idxs: list[int]) -> list[int]:
    """The vids mapping ``idxs`` in the (hyper) VDI ``vid``."""
    hdr = ops.read_header(conn, vid)
    index = load_index(conn, hdr, idxs)
    return [_get(conn, index, idx) for idx in idxs]


class IndexUpdater:
    """``write.py``'s slot updater for hyper VDIs (see the module comment)."""

    def __init__(self, hdr: InodeHeader, claims: ObjectClaims) -> None:
        self.hdr, self.claims = hdr, claims
        self.pending: set[int] = set()

    def add(self, idx: int) -> None:
        self.pending.add(idx)

    def flush(self, conn: Connection) -> list[int]:
        """Map every pending index to this VDI; the indexes mapped."""
        if not self.pending:
            return []
        idxs = sorted(self.pending)
        hdr, vid = self.hdr, self.hdr.vdi_id
        with self.claims.index_lock(vid):
            fresh = ops.read_header(conn, vid)
            index = load_index(conn, fresh, idxs)
            for idx in idxs:
                while True:
                    try:
                        index.set(idx, vid)
                        break
                    except NeedLeaf as need:
                        index.add_leaf(need.oid, _read_node(conn, need.oid, 0))
            changes = index.changes()
            inode = vid_to_vdi_oid(vid)
            kw = {"copies": hdr.nr_copies, "copy_policy": hdr.copy_policy}
            if changes.counter is not None:
                ops.check(conn.call(rq.write_obj(inode, OFFSET_BTREE_COUNTER,
                                                 changes.counter.to_bytes(4, "little"), **kw)))
            for oid, node in changes.new_leaves:
                ops.check(conn.call(rq.create_and_write_obj(oid, 0, node, **kw)))
            for oid, node in changes.leaves:
                ops.check(conn.call(rq.write_obj(oid, 0, node, **kw)))
            if changes.root is not None:
                # from 4 bytes before the root, as they are: sheep 1.0 treats a
                # write that lies wholly inside data_vdi_id as slot updates and
                # drops the "objects" the old bytes name (it removed live data
                # objects of this VDI in the interop test); dog writes the
                # whole header with the root, so it never meets that path
                lead = ops.check(conn.call(rq.read_obj(inode, ROOT_OFFSET - ROOT_LEAD, ROOT_LEAD,
                                                       flags=Flag.DIRECT))).payload
                ops.check(conn.call(rq.write_obj(inode, ROOT_OFFSET - ROOT_LEAD,
                                                 bytes(lead) + changes.root, **kw)))
        self.pending.clear()
        return idxs
