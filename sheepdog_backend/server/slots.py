"""Reverse index of inode slots: which inodes may hold a vid in ``data_vdi_id``.

How it works: garbage collection (state.py) must know whether any inode still
has ``vid`` in slot ``idx``.  Reading that slot in every inode costs one file
read per VDI on the server, per dropped object.  This index remembers, for
every data vid, the set of inode vids that *may* hold it in some slot; the
collector then reads the slot of those inodes only, so the decision is still
made on the bytes on disk.

The index is a superset, never a subset, of the truth, which is what keeps
removal safe: every byte that reaches an inode's slot array passes through
the ObjectStore (``write``, ``stage``, journal replay), which reports it
here; the store re-reads the written slots from the file (so unaligned and
partial-slot writes are seen as the slots really are) and adds every non-zero
value.  Nothing is ever removed except by ``reset`` (MAKE_FS wipes the store),
so a stale entry only costs one extra read.  A COW create of an inode from
another inode inherits the source's entries.  At start the index is rebuilt
from the slot arrays on disk, reading only their allocated extents
(SEEK_DATA/SEEK_HOLE; inode files are sparse), so it includes slots written
anywhere in the array, also beyond the VDI's size.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Iterable, Iterator

from sheepdog_backend.protocol.constants import SD_INODE_GREF_OFFSET, SD_INODE_INDEX_OFFSET
from sheepdog_backend.protocol.oid import ObjectKind, object_kind, oid_is_valid, oid_to_vid

SLOTS_START = SD_INODE_INDEX_OFFSET
SLOTS_END = SD_INODE_GREF_OFFSET
_CHUNK = 1 << 20


def inode_vid(oid: int) -> int | None:
    """The vid of an inode object id, None for any other object."""
    if oid_is_valid(oid) and object_kind(oid) is ObjectKind.INODE:
        return oid_to_vid(oid)
    return None


def slot_values(raw: bytes) -> set[int]:
    """Non-zero little-endian u32 values of slot-aligned bytes."""
    if raw.count(0) == len(raw):
        return set()
    values = array("I")
    values.frombytes(raw[:len(raw) & ~3])
    if values.itemsize != 4:  # pragma: no cover - every supported platform has 4
        raise RuntimeError("array('I') is not 32-bit here")
    found = set(values)
    found.discard(0)
    return found


def aligned_slot_range(offset: int, length: int) -> tuple[int, int] | None:
    """File range of the whole slots a write of [offset, offset+length) touches."""
    lo, hi = max(offset, SLOTS_START), min(offset + length, SLOTS_END)
    if lo >= hi:
        return None
    lo -= (lo - SLOTS_START) % 4
    hi += (-(hi - SLOTS_START)) % 4
    return lo, hi


class SlotIndex:
    """data vid -> inode vids that may hold it in a slot (a superset)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[int, set[int]] = {}
        self._held: dict[int, set[int]] = {}

    def reset(self) -> None:
        with self._lock:
            self._holders, self._held = {}, {}

    def add(self, holder: int, vids: Iterable[int]) -> None:
        with self._lock:
            held = self._held.setdefault(holder, set())
            for vid in vids:
                if vid not in held:
                    held.add(vid)
                    self._holders.setdefault(vid, set()).add(holder)

    def inherit(self, holder: int, source: int) -> None:
        """``holder`` was created as a copy of inode ``source``."""
        with self._lock:
            inherited = set(self._held.get(source, ()))
        self.add(holder, inherited)

    def holders(self, vid: int) -> set[int]:
        with self._lock:
            return set(self._holders.get(vid, ()))

    def note_fd(self, holder: int, fd: int, offset: int, length: int) -> None:
        """Index the slots that a write of [offset, offset+length) to the
        inode open as ``fd`` touched, as they are in the file now."""
        span = aligned_slot_range(offset, length)
        if span is None:
            return
        lo, hi = span
        found: set[int] = set()
        while lo < hi:
            raw = os.pread(fd, min(_CHUNK, hi - lo), lo)
            if not raw:
                break
            found |= slot_values(raw)
            lo += len(raw)
        if found:
            self.add(holder, found)

    def scan_fd(self, holder: int, fd: int) -> None:
        """Index every slot of an inode file, reading only its data extents."""
        for start, end in slot_extents(fd):
            self.note_fd(holder, fd, start, end - start)


def slot_extents(fd: int) -> Iterator[tuple[int, int]]:
    """Slot-aligned file ranges [start, end) of the allocated extents of an
    inode file's slot array (SEEK_DATA/SEEK_HOLE): holes are all-zero slots."""
    pos = SLOTS_START
    while pos < SLOTS_END:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), SLOTS_END)
        except OSError:  # ENXIO: no data past pos
            return
        if start >= SLOTS_END:
            return
        start -= (start - SLOTS_START) % 4
        end += (-(end - SLOTS_START)) % 4
        yield start, end
        pos = end


def nonzero_slots(fd: int) -> Iterator[tuple[int, int]]:
    """(idx, vid) of every non-zero slot of an inode file, reading only the
    allocated extents of its slot array."""
    for start, end in slot_extents(fd):
        while start < end:
            raw = os.pread(fd, min(_CHUNK, end - start), start)
            raw = raw[:len(raw) & ~3]
            if not raw:
                break
            if raw.count(0) != len(raw):
                values = array("I")
                values.frombytes(raw)
                first = (start - SLOTS_START) // 4
                for i, vid in enumerate(values):
                    if vid:
                        yield first + i, vid
            start += len(raw)
