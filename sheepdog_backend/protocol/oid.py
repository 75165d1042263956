"""Object ids (sheepdog-protocol.md §6): bit layout and formulas."""

from __future__ import annotations

import enum

VDI_SPACE_SHIFT = 32
VDI_BIT = 1 << 63
VMSTATE_BIT = 1 << 62
VDI_ATTR_BIT = 1 << 61
VDI_BTREE_BIT = 1 << 60
LEDGER_BIT = 1 << 59
_TYPE_BITS = VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT
_VID_MASK = 0x00FFFFFF00000000
MAX_VID = (1 << 24) - 1


class ObjectKind(enum.Enum):
    DATA = "data"
    INODE = "inode"
    ATTR = "attr"
    VMSTATE = "vmstate"
    BTREE = "btree"
    LEDGER = "ledger"


def _check_vid(vid: int) -> None:
    if not 0 <= vid <= MAX_VID:
        raise ValueError(f"vid {vid!r} is not a 24-bit VDI id")


def _check_idx(idx: int) -> None:
    if not 0 <= idx <= 0xFFFFFFFF:
        raise ValueError(f"index {idx!r} is not a u32")


def vid_to_vdi_oid(vid: int) -> int:
    _check_vid(vid)
    return VDI_BIT | (vid << VDI_SPACE_SHIFT)


def vid_to_data_oid(vid: int, idx: int) -> int:
    _check_vid(vid)
    _check_idx(idx)
    return (vid << VDI_SPACE_SHIFT) | idx


def vid_to_vmstate_oid(vid: int, idx: int) -> int:
    _check_vid(vid)
    _check_idx(idx)
    return VMSTATE_BIT | (vid << VDI_SPACE_SHIFT) | idx


def vid_to_attr_oid(vid: int, attr_id: int) -> int:
    _check_vid(vid)
    _check_idx(attr_id)
    return VDI_ATTR_BIT | (vid << VDI_SPACE_SHIFT) | attr_id


def vid_to_btree_oid(vid: int, n: int) -> int:
    _check_vid(vid)
    _check_idx(n)
    return VDI_BTREE_BIT | (vid << VDI_SPACE_SHIFT) | n


def data_oid_to_ledger_oid(oid: int) -> int:
    return oid | LEDGER_BIT


def ledger_oid_to_data_oid(oid: int) -> int:
    return oid & ~LEDGER_BIT


def oid_to_vid(oid: int) -> int:
    return (oid & _VID_MASK) >> VDI_SPACE_SHIFT


def oid_to_index(oid: int) -> int:
    """Data index, attr id or node number: the low 32 bits."""
    return oid & 0xFFFFFFFF


def is_data_obj(oid: int) -> bool:
    return not oid & _TYPE_BITS


def is_vdi_obj(oid: int) -> bool:
    return bool(oid & VDI_BIT)


def object_kind(oid: int) -> ObjectKind:
    if oid & VDI_BIT:
        return ObjectKind.INODE
    if oid & VMSTATE_BIT:
        return ObjectKind.VMSTATE
    if oid & VDI_ATTR_BIT:
        return ObjectKind.ATTR
    if oid & VDI_BTREE_BIT:
        return ObjectKind.BTREE
    if oid & LEDGER_BIT:
        return ObjectKind.LEDGER
    return ObjectKind.DATA


def oid_is_valid(oid: int) -> bool:
    """Exactly one type bit (or none), reserved bits 56-58 clear, vid != 0."""
    if not 0 <= oid < 1 << 64 or oid & (0b111 << 56):
        return False
    kind_bits = oid & _TYPE_BITS
    if kind_bits & (kind_bits - 1):
        return False
    return oid_to_vid(oid) != 0
