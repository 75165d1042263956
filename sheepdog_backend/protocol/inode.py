"""The inode object (struct sd_inode, sheepdog-protocol.md §7.1-§7.4).

``InodeHeader`` is the first 4,664 bytes: everything a client needs for
control operations.  The slot array ``data_vdi_id`` (u32 per data index) and
the ``gref`` array follow; helpers give their offsets so a client can read or
write only the slots it needs instead of the whole 12,587,576-byte object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import ClassVar

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.constants import (
    INDEX_HEADER_MAGIC,
    SD_INODE_DATA_INDEX,
    SD_INODE_GREF_OFFSET,
    SD_INODE_HEADER_SIZE,
    SD_INODE_INDEX_OFFSET,
)
from sheepdog_backend.protocol.naming import decode_field, pad_field

INODE_HEADER = struct.Struct("<256s256sQQQQQBBBBIIII4092s")
assert INODE_HEADER.size == SD_INODE_HEADER_SIZE

# Byte offsets of the header fields, for single-field writes (see also
# OFFSET_STAMP below).
OFFSET_NAME = 0
OFFSET_TAG = 256
OFFSET_CREATE_TIME = 512
OFFSET_SNAP_CTIME = 520
OFFSET_VM_CLOCK_NSEC = 528
OFFSET_VDI_SIZE = 536
OFFSET_VM_STATE_SIZE = 544
OFFSET_COPY_POLICY = 552
OFFSET_STORE_POLICY = 553
OFFSET_NR_COPIES = 554
OFFSET_BLOCK_SIZE_SHIFT = 555
OFFSET_SNAP_ID = 556
OFFSET_VDI_ID = 560
OFFSET_PARENT_VDI_ID = 564
OFFSET_BTREE_COUNTER = 568

# The coherence stamp (sheepdog-backend's, not Sheepdog's): the last 16 bytes
# of the inode header's recycled area (sheepdog_proto.h: the old child list,
# "recycling the area for storing new metadata"; Sheepdog 1.0 uses only its
# first word, btree_counter).  ``stamp`` (u64) changes with every inode slot
# write a gateway forwards; ``hosts`` (u32) is how many hosts export the VDI
# at once (the export layer sets it); the last 4 bytes stay zero (a hyper
# volume's index write rewrites them as it read them).  A snapshot copies them.
OFFSET_STAMP = SD_INODE_INDEX_OFFSET - 16
OFFSET_EXPORT_HOSTS = OFFSET_STAMP + 8
STAMP = struct.Struct("<QI4x")
STAMP_VALUE = struct.Struct("<Q")
HOSTS_VALUE = struct.Struct("<I")
# What a gateway reads to tell whether a cached inode is current: from
# snap_ctime (a snapshot since) to the end of the stamp.
OFFSET_FRESHNESS = OFFSET_SNAP_CTIME
FRESHNESS_LENGTH = SD_INODE_INDEX_OFFSET - OFFSET_FRESHNESS

SLOT = struct.Struct("<I")
GREF = struct.Struct("<ii")
INDEX_HEADER = struct.Struct("<HHI")  # magic, depth, entries (hyper volumes)


@dataclass(frozen=True, slots=True)
class InodeHeader:
    name: bytes = b""
    tag: bytes = b""
    create_time: int = 0
    snap_ctime: int = 0
    vm_clock_nsec: int = 0
    vdi_size: int = 0
    vm_state_size: int = 0
    copy_policy: int = 0
    store_policy: int = 0
    nr_copies: int = 0
    block_size_shift: int = 0
    snap_id: int = 0
    vdi_id: int = 0
    parent_vdi_id: int = 0
    btree_counter: int = 0
    unused: bytes = bytes(4092)

    SIZE: ClassVar[int] = SD_INODE_HEADER_SIZE

    @property
    def is_snapshot(self) -> bool:
        return self.snap_ctime != 0

    @property
    def is_deleted(self) -> bool:
        return self.name == b""

    @property
    def is_clone(self) -> bool:
        """dog's 'c' marker: first of a family with a parent."""
        return self.snap_id == 1 and self.parent_vdi_id != 0 and not self.is_snapshot

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift

    @property
    def count_data_objs(self) -> int:
        return data_objects_for(self.vdi_size, self.block_size_shift)

    def encode(self) -> bytes:
        try:
            return INODE_HEADER.pack(
                pad_field(self.name, 256), pad_field(self.tag, 256), self.create_time,
                self.snap_ctime, self.vm_clock_nsec, self.vdi_size, self.vm_state_size,
                self.copy_policy, self.store_policy, self.nr_copies, self.block_size_shift,
                self.snap_id, self.vdi_id, self.parent_vdi_id, self.btree_counter,
                self.unused)
        except struct.error as exc:
            raise ProtocolError(f"inode field out of range: {exc}", remote=False) from exc

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> InodeHeader:
        """Decode from at least the first 4,664 bytes of an inode object.

        The name and tag keep every byte before the first NUL (a 256-byte tag
        without NUL is legal)."""
        if len(data) < SD_INODE_HEADER_SIZE:
            raise ProtocolError(
                f"an inode header is {SD_INODE_HEADER_SIZE} bytes, got {len(data)}")
        fields = INODE_HEADER.unpack_from(data, 0)
        return cls(decode_field(fields[0]), decode_field(fields[1]), *fields[2:])

    def evolve(self, **changes: object) -> InodeHeader:
        return replace(self, **changes)  # type: ignore[arg-type]


def data_objects_for(vdi_size: int, block_size_shift: int) -> int:
    """ceil(vdi_size / object size): the slots a flat VDI of that size uses."""
    obj = 1 << block_size_shift
    return (vdi_size + obj - 1) // obj


def slot_offset(idx: int) -> int:
    """Offset of data_vdi_id[idx] inside the inode object."""
    if not 0 <= idx < SD_INODE_DATA_INDEX:
        raise ValueError(f"slot index {idx!r} out of range")
    return SD_INODE_INDEX_OFFSET + 4 * idx


def gref_offset(idx: int) -> int:
    if not 0 <= idx < SD_INODE_DATA_INDEX:
        raise ValueError(f"slot index {idx!r} out of range")
    return SD_INODE_GREF_OFFSET + 8 * idx


def slot_range_for_offset(offset: int) -> int | None:
    """The slot index written at an inode offset, or None outside the array."""
    if SD_INODE_INDEX_OFFSET <= offset < SD_INODE_GREF_OFFSET and (offset - 4664) % 4 == 0:
        return (offset - SD_INODE_INDEX_OFFSET) // 4
    return None


def encode_slots(vids: list[int] | tuple[int, ...]) -> bytes:
    return struct.pack(f"<{len(vids)}I", *vids)


def decode_slots(data: bytes | bytearray | memoryview) -> tuple[int, ...]:
    if len(data) % 4:
        raise ProtocolError(f"slot data must be a multiple of 4 bytes, got {len(data)}")
    return struct.unpack(f"<{len(data) // 4}I", data)


def encode_index_header(depth: int = 1, entries: int = 0) -> bytes:
    return INDEX_HEADER.pack(INDEX_HEADER_MAGIC, depth, entries)


def stamp_fields(data: bytes | bytearray | memoryview, at: int = 0) -> tuple[int, int]:
    """(stamp, hosts) from the 16 bytes at ``at`` of ``data``."""
    stamp, hosts = STAMP.unpack_from(data, at)
    return int(stamp), int(hosts)
