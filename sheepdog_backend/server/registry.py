"""In-memory VDI state of the embedded server: vid bitmaps, per-vid records,
the name lookup of sheepdog-protocol.md §8.3.

How it works: the store's inode objects are the truth.  On start every inode
is scanned once (its 4,664-byte header) to rebuild the in-use bitmap (every
inode, deleted or not), the deleted bitmap (inode name empty) and a record per
vid (name, tag, snap_id, snapshot flag, copies, policy, shift, parent).  Every
change the handler makes to an inode goes through ``refresh(vid)`` afterwards,
so memory never disagrees with disk and a restart reproduces the same state.
Lock state is the only thing kept in memory only (as in sheep).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sheepdog_backend.exception import FullVdi, NoTag, NoVdi
from sheepdog_backend.protocol.bitmap import VidBitmap
from sheepdog_backend.protocol.constants import SD_INODE_HEADER_SIZE, SD_NR_VDIS, LockState
from sheepdog_backend.protocol.inode import InodeHeader
from sheepdog_backend.protocol.naming import sd_hash_vdi
from sheepdog_backend.protocol.oid import VDI_BIT, oid_to_vid, vid_to_vdi_oid
from sheepdog_backend.server.store import ObjectStore


@dataclass
class VdiRecord:
    header: InodeHeader
    lock_state: int = LockState.UNLOCKED
    participants: list[int] = field(default_factory=list)  # shared-lock participants

    @property
    def deleted(self) -> bool:
        return self.header.name == b""

    @property
    def snapshot(self) -> bool:
        return self.header.snap_ctime != 0


@dataclass(frozen=True)
class LookupResult:
    """Outcome of §8.3: ``vid`` when found, else the free vid for a create."""

    vid: int | None
    free_vid: int
    next_snapid: int  # 1 unless a surviving snapshot of the name was met
    error: type[NoVdi] | type[NoTag] | None = None


class Registry:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.in_use = VidBitmap()
        self.deleted = VidBitmap()
        self.records: dict[int, VdiRecord] = {}

    def reset(self) -> None:
        self.in_use = VidBitmap()
        self.deleted = VidBitmap()
        self.records = {}

    def rebuild(self) -> None:
        self.reset()
        for oid in self.store.oids():
            if oid & VDI_BIT and oid & 0xFFFFFFFF == 0:
                self.refresh(oid_to_vid(oid))

    def refresh(self, vid: int) -> VdiRecord | None:
        """Re-read one inode header into memory (after any change to it)."""
        raw = self.store.read(vid_to_vdi_oid(vid), 0, SD_INODE_HEADER_SIZE)
        if raw is None:
            self.records.pop(vid, None)
            self.in_use.clear(vid)
            self.deleted.clear(vid)
            return None
        header = InodeHeader.decode(raw)
        old = self.records.get(vid)
        record = VdiRecord(header)
        if old is not None:
            record.lock_state, record.participants = old.lock_state, old.participants
        self.records[vid] = record
        self.in_use.set(vid)
        if record.deleted:
            self.deleted.set(vid)
        else:
            self.deleted.clear(vid)
        return record

    def get(self, vid: int) -> VdiRecord | None:
        return self.records.get(vid)

    def is_snapshot(self, vid: int) -> bool:
        record = self.records.get(vid)
        return record is not None and record.snapshot

    # -- §8.3 lookup -----------------------------------------------------------

    def _candidates(self, start: int) -> tuple[list[int], int]:
        """Vids to scan (downwards) and the free vid, or raise FullVdi."""
        end = self.in_use.first_clear_from(start)
        if end == start:
            return [], start
        if end < SD_NR_VDIS:
            return list(range(end - 1, start - 1, -1)), end
        end = self.in_use.first_clear_from(1)
        if end >= SD_NR_VDIS:
            raise FullVdi()
        return list(range(end - 1, 0, -1)) + list(range(SD_NR_VDIS - 1, start - 1, -1)), end

    def lookup(self, name: bytes, tag: bytes = b"", snapid: int = 0) -> LookupResult:
        start = sd_hash_vdi(name)
        candidates, free_vid = self._candidates(start)
        has_tag = bool(tag) or snapid != 0
        working_seen = False
        for vid in candidates:
            if vid not in self.in_use and vid not in self.deleted:
                continue
            record = self.records.get(vid)
            if record is None or record.deleted or record.header.name != name:
                continue
            header = record.header
            if has_tag:
                if not record.snapshot:
                    working_seen = True
                    continue
                if (header.tag and header.tag == tag) or snapid == header.snap_id:
                    return LookupResult(vid, free_vid, 1)
                continue
            if record.snapshot:
                return LookupResult(None, free_vid, header.snap_id + 1, NoVdi)
            return LookupResult(vid, free_vid, header.snap_id + 1)
        return LookupResult(None, free_vid, 1, NoTag if working_seen else NoVdi)

    def find(self, name: bytes, tag: bytes = b"", snapid: int = 0) -> int:
        """The vid a lookup resolves to, or raise NoVdi / NoTag."""
        result = self.lookup(name, tag, snapid)
        if result.vid is None:
            raise (result.error or NoVdi)()
        return result.vid
