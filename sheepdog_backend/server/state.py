"""Shared state of one embedded server: store, registry, cluster config, clock,
and the inode helpers the op modules share (slot/gref access, reference GC).

How it works: one re-entrant ``meta_lock`` serialises everything that reads
and then changes VDI metadata (cluster ops, VDI ops, inode writes, garbage
collection), like sheep's cluster-op serialisation; plain data-object reads
and writes do not take it and run concurrently.  Data writes hold ``gate``
shared instead, and snapshots and deletes hold it exclusive (gate.py), so a
data write never lands in a VDI that was frozen or deleted under it.

Garbage collection: sheep keeps generational reference counts (gref + ledger
objects).  We keep the ``gref`` bytes in inodes exactly as sheep writes them
(so inode reads match a real node byte for byte) but decide removal with an
exact reference check instead of ledgers: when a slot stops pointing at
``(vid, idx)``, the data object ``vid_to_data_oid(vid, idx)`` is removed only if
no inode at all (working, snapshot or deleted) still has ``vid`` in slot
``idx``.  That can only remove an object nobody can reach.  The store's slot
index (slots.py) names the inodes that may hold ``vid`` anywhere, so the check
reads only those inodes' slot ``idx`` instead of every inode's.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from typing import TypeVar

from sheepdog_backend.exception import InvalidParameters
from sheepdog_backend.protocol.constants import (
    SD_INODE_DATA_INDEX,
    SD_INODE_GREF_OFFSET,
    SD_INODE_INDEX_OFFSET,
    SD_NR_VDIS,
)
from sheepdog_backend.protocol.header import Request
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.protocol.structs import NodeId, SdNode, encode_addr
from sheepdog_backend.server.gate import Gate
from sheepdog_backend.server.registry import Registry
from sheepdog_backend.server.store import ClusterConfig, ObjectStore

_Body = TypeVar("_Body")


def request_body(request: Request, kind: type[_Body]) -> _Body:
    """The request's union variant as ``kind``; INVALID_PARMS if it is another.

    The codec picks the variant from the opcode, so a mismatch means a
    handler was routed the wrong opcode: answer as sheep would, not crash."""
    body = request.body
    if not isinstance(body, kind):  # pragma: no cover - codec guarantees it
        raise InvalidParameters(
            f"opcode {request.opcode:#x} carries {type(body).__name__}, not {kind.__name__}")
    return body


def to_ctime(seconds: float) -> int:
    """Sheepdog time format (§7.2): seconds << 32 | nanoseconds (µs precision)."""
    whole = int(seconds)
    micros = int((seconds - whole) * 1_000_000)
    return (whole << 32) | (micros * 1000)


class ServerState:
    def __init__(self, data_dir: str | os.PathLike[str], *, sync: bool = True,
                 node: NodeId | None = None, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = os.fspath(data_dir)
        self.store = ObjectStore(data_dir, sync=sync)
        self.registry = Registry(self.store)
        self.meta_lock = threading.RLock()
        self.gate = Gate()  # data writes (shared) vs snapshot/delete (exclusive)
        self.clock = clock
        self.node_id = node or NodeId("127.0.0.1", 7000)
        self.config: ClusterConfig = self.store.load_config()
        self.registry.rebuild()

    # -- cluster ---------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self.config.epoch

    def now(self) -> int:
        return to_ctime(self.clock())

    def capacity(self) -> tuple[int, int]:
        """(total, free) bytes of the filesystem holding the data directory."""
        st = os.statvfs(self.data_dir)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def node(self) -> SdNode:
        # sheep without -z: the zone is the address's last 4 bytes, little-endian
        # (127.0.0.1 -> 16777343), as `dog node list` shows it.
        zone = int.from_bytes(encode_addr(self.node_id.addr)[12:16], "little")
        return SdNode(nid=self.node_id, nr_vnodes=128, zone=zone, space=self.capacity()[0])

    # -- inode slot / gref access ------------------------------------------------

    def read_slots(self, vid: int, first: int, count: int) -> array[int]:
        count = max(0, min(count, SD_INODE_DATA_INDEX - first))
        raw = self.store.read(vid_to_vdi_oid(vid), SD_INODE_INDEX_OFFSET + 4 * first, 4 * count)
        out = array("I")
        out.frombytes(raw or bytes(4 * count))
        return out

    def read_grefs(self, vid: int, first: int, count: int) -> array[int]:
        """Flat (generation, count) pairs for slots first .. first+count-1."""
        count = max(0, min(count, SD_INODE_DATA_INDEX - first))
        raw = self.store.read(vid_to_vdi_oid(vid), SD_INODE_GREF_OFFSET + 8 * first, 8 * count)
        out = array("i")
        out.frombytes(raw or bytes(8 * count))
        return out

    def references(self, vid: int, idx: int) -> bool:
        """True if any inode's slot ``idx`` holds ``vid``.

        Only inodes the slot index names as possible holders are read (the
        index is a superset of the real holders, see slots.py); the answer
        comes from the slot bytes on disk."""
        want = vid.to_bytes(4, "little")
        offset = SD_INODE_INDEX_OFFSET + 4 * idx
        for other in sorted(self.store.slots.holders(vid)):
            if self.store.read(vid_to_vdi_oid(other), offset, 4) == want:
                return True
        return False

    def _hyper(self, vid: int) -> bool:
        record = self.registry.get(vid)
        return record is not None and bool(record.header.store_policy)

    def collect(self, dropped: Iterable[tuple[int, int]]) -> int:
        """Remove the data objects of dropped references nobody holds any more."""
        with self.meta_lock:
            # a slot may hold any u32 (a client wrote it): only a 24-bit vid
            # and an index below 2**20 can name an object
            # and never an object of a hyper VDI: its B-tree names them, no slot
            garbage = [vid_to_data_oid(vid, idx) for vid, idx in sorted(set(dropped))
                       if 0 < vid < SD_NR_VDIS and 0 <= idx < SD_INODE_DATA_INDEX
                       and not self._hyper(vid) and not self.references(vid, idx)]
            return self.store.remove_many(garbage)
