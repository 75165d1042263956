"""Admin structures that dog reads (sheepdog-protocol.md §7.5, §11).

Node ids, nodes, epoch logs, cluster_info, vdi_state, the VDI attribute
object and small fixed payloads.  Every layout is a module-level Struct.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.constants import (
    CLUSTER_INFO_SIZE,
    EPOCH_LOG_HEADER_SIZE,
    SD_ATTR_OBJ_SIZE,
    SD_MAX_NODES,
    SD_MAX_PARTICIPANTS,
    SD_NODE_SIZE,
    VDI_STATE_SIZE,
    ClusterStatus,
    LockState,
)
from sheepdog_backend.protocol.naming import decode_field, pad_field

NODE_ID = struct.Struct("<16sH16sH4s")
SD_NODE = struct.Struct("<24s40sHHIQ")
EPOCH_LOG = struct.Struct("<QQIIBBB3sH16s")
CLUSTER_INFO_HEADER = struct.Struct("<BBhIQHBBBB3s16s7s")
VDI_STATE = struct.Struct("<IBBBBB3sII40sI124s1240s")
VDI_ATTR = struct.Struct("<256s256sQII256s65536s")
VDI_ATTR_HEAD = struct.Struct("<256s256sQII256s")  # the fields before the value
RECOVERY_STATE = struct.Struct("<B3sIQQ")
assert NODE_ID.size == 40 and SD_NODE.size == SD_NODE_SIZE
assert EPOCH_LOG.size == EPOCH_LOG_HEADER_SIZE
assert CLUSTER_INFO_HEADER.size == 48
assert VDI_STATE.size == VDI_STATE_SIZE
assert VDI_ATTR.size == SD_ATTR_OBJ_SIZE


def _need(data: bytes | memoryview, size: int, what: str) -> None:
    if len(data) < size:
        raise ProtocolError(f"{what} needs {size} bytes, got {len(data)}")


def encode_addr(host: str) -> bytes:
    """16 address bytes: IPv6 as is, IPv4 as 12 zero bytes + 4 bytes (§11.1)."""
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return bytes(12) + ip.packed
    return ip.packed


def decode_addr(raw: bytes) -> str:
    if raw[:12] == bytes(12):
        return str(ipaddress.IPv4Address(raw[12:16]))
    return str(ipaddress.IPv6Address(raw))


@dataclass(frozen=True, slots=True)
class NodeId:
    addr: str = "127.0.0.1"
    port: int = 7000
    io_addr: bytes = bytes(16)
    io_port: int = 0
    pad: bytes = bytes(4)

    SIZE: ClassVar[int] = 40

    def encode(self) -> bytes:
        return NODE_ID.pack(encode_addr(self.addr), self.port, self.io_addr, self.io_port,
                            self.pad)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> NodeId:
        _need(data, 40, "node_id")
        addr, port, io_addr, io_port, pad = NODE_ID.unpack_from(data, 0)
        return cls(decode_addr(addr), port, io_addr, io_port, pad)

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}" if ":" in self.addr else f"{self.addr}:{self.port}"


@dataclass(frozen=True, slots=True)
class SdNode:
    nid: NodeId = field(default_factory=NodeId)
    nr_vnodes: int = 128
    zone: int = 0
    space: int = 0
    rb: bytes = bytes(24)  # host pointers in sheep; meaningless on the wire
    pad: int = 0

    SIZE: ClassVar[int] = SD_NODE_SIZE

    def encode(self) -> bytes:
        return SD_NODE.pack(self.rb, self.nid.encode(), self.nr_vnodes, self.pad, self.zone,
                            self.space)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> SdNode:
        _need(data, SD_NODE_SIZE, "sd_node")
        rb, nid, nr_vnodes, pad, zone, space = SD_NODE.unpack_from(data, 0)
        return cls(NodeId.decode(nid), nr_vnodes, zone, space, rb, pad)


def decode_node_list(data: bytes | memoryview, nr_nodes: int) -> list[SdNode]:
    if nr_nodes < 0 or nr_nodes * SD_NODE_SIZE > len(data):
        raise ProtocolError(f"node list of {nr_nodes} nodes needs {nr_nodes * 80} bytes, "
                            f"got {len(data)}")
    return [SdNode.decode(data[i * 80:(i + 1) * 80]) for i in range(nr_nodes)]


def encode_node_list(nodes: list[SdNode]) -> bytes:
    return b"".join(node.encode() for node in nodes)


@dataclass(frozen=True, slots=True)
class EpochLog:
    ctime: int = 0
    time: int = 0
    epoch: int = 0
    nr_nodes: int = 0
    disable_recovery: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    pad: bytes = b"\0\0\0"
    flags: int = 0
    drv_name: bytes = b""
    nodes: tuple[SdNode, ...] = ()

    def encode(self, nodes_nr: int) -> bytes:
        """One record with room for ``nodes_nr`` nodes (the stride dog asked for)."""
        if len(self.nodes) > nodes_nr:
            raise ProtocolError("more nodes than slots in the epoch record", remote=False)
        head = EPOCH_LOG.pack(self.ctime, self.time, self.epoch, self.nr_nodes,
                              self.disable_recovery, self.nr_copies, self.copy_policy,
                              self.pad, self.flags, pad_field(self.drv_name, 16))
        body = encode_node_list(list(self.nodes))
        return head + body + bytes((nodes_nr - len(self.nodes)) * SD_NODE_SIZE)

    @classmethod
    def decode(cls, data: bytes | memoryview, nodes_nr: int) -> EpochLog:
        _check_nodes_nr(nodes_nr)
        _need(data, EPOCH_LOG_HEADER_SIZE + nodes_nr * SD_NODE_SIZE, "epoch_log")
        (ctime, time, epoch, nr_nodes, disable_recovery, nr_copies, copy_policy, pad, flags,
         drv) = EPOCH_LOG.unpack_from(data, 0)
        valid = min(nr_nodes, nodes_nr)
        nodes = tuple(decode_node_list(data[48:48 + nodes_nr * 80], valid))
        return cls(ctime, time, epoch, nr_nodes, disable_recovery, nr_copies, copy_policy,
                   pad, flags, decode_field(drv), nodes)


def _check_nodes_nr(nodes_nr: int) -> None:
    if nodes_nr < 0:
        raise ProtocolError(f"epoch log node slots must not be negative, got {nodes_nr}")


def decode_epoch_logs(data: bytes | memoryview, nodes_nr: int) -> list[EpochLog]:
    _check_nodes_nr(nodes_nr)
    stride = EPOCH_LOG_HEADER_SIZE + nodes_nr * SD_NODE_SIZE
    if len(data) % stride:
        raise ProtocolError(f"epoch log payload {len(data)} is not a multiple of {stride}")
    return [EpochLog.decode(data[i:i + stride], nodes_nr) for i in range(0, len(data), stride)]


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    proto_ver: int = 0x0A
    disable_recovery: int = 0
    nr_nodes: int = 0
    epoch: int = 0
    ctime: int = 0
    flags: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    status: int = ClusterStatus.WAIT
    block_size_shift: int = 0
    pad1: bytes = b"\0\0\0"
    default_store: bytes = b""
    pad2: bytes = bytes(7)
    nodes: tuple[SdNode, ...] = ()
    node_area_tail: bytes = b""  # bytes after the valid nodes, kept for round trips

    SIZE: ClassVar[int] = CLUSTER_INFO_SIZE

    def encode(self) -> bytes:
        head = CLUSTER_INFO_HEADER.pack(
            self.proto_ver, self.disable_recovery, self.nr_nodes, self.epoch, self.ctime,
            self.flags, self.nr_copies, self.copy_policy, self.status, self.block_size_shift,
            self.pad1, pad_field(self.default_store, 16), self.pad2)
        nodes = encode_node_list(list(self.nodes))
        area = SD_MAX_NODES * SD_NODE_SIZE
        tail = self.node_area_tail or bytes(area - len(nodes))
        out = head + nodes + tail
        if len(out) != CLUSTER_INFO_SIZE:
            raise ProtocolError("cluster_info node area has the wrong size", remote=False)
        return out

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ClusterInfo:
        _need(data, CLUSTER_INFO_SIZE, "cluster_info")
        (proto_ver, disable_recovery, nr_nodes, epoch, ctime, flags, nr_copies, copy_policy,
         status, bss, pad1, store, pad2) = CLUSTER_INFO_HEADER.unpack_from(data, 0)
        if not 0 <= nr_nodes <= SD_MAX_NODES:
            raise ProtocolError(f"cluster_info nr_nodes {nr_nodes} out of range")
        nodes = tuple(decode_node_list(data[48:48 + nr_nodes * 80], nr_nodes))
        tail = bytes(data[48 + nr_nodes * 80:CLUSTER_INFO_SIZE])
        if tail == bytes(len(tail)):
            tail = b""
        return cls(proto_ver, disable_recovery, nr_nodes, epoch, ctime, flags, nr_copies,
                   copy_policy, status, bss, pad1, decode_field(store), pad2, nodes, tail)


@dataclass(frozen=True, slots=True)
class VdiState:
    vid: int = 0
    nr_copies: int = 0
    snapshot: int = 0
    deleted: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    pad: bytes = b"\0\0\0"
    parent_vid: int = 0
    lock_state: int = LockState.UNLOCKED
    lock_owner: NodeId | None = None
    nr_participants: int = 0
    participants_state: tuple[int, ...] = (0,) * SD_MAX_PARTICIPANTS
    participants: bytes = bytes(40 * SD_MAX_PARTICIPANTS)

    SIZE: ClassVar[int] = VDI_STATE_SIZE

    def encode(self) -> bytes:
        owner = self.lock_owner.encode() if self.lock_owner else bytes(40)
        return VDI_STATE.pack(
            self.vid, self.nr_copies, self.snapshot, self.deleted, self.copy_policy,
            self.block_size_shift, self.pad, self.parent_vid, self.lock_state, owner,
            self.nr_participants, struct.pack("<31I", *self.participants_state),
            self.participants)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> VdiState:
        _need(data, VDI_STATE_SIZE, "vdi_state")
        (vid, nr_copies, snapshot, deleted, copy_policy, bss, pad, parent, lock_state, owner,
         nr_part, part_state, parts) = VDI_STATE.unpack_from(data, 0)
        owner_id = None if owner == bytes(40) else NodeId.decode(owner)
        return cls(vid, nr_copies, snapshot, deleted, copy_policy, bss, pad, parent,
                   lock_state, owner_id, nr_part, struct.unpack("<31I", part_state), parts)


def decode_vdi_states(data: bytes | memoryview) -> list[VdiState]:
    if len(data) % VDI_STATE_SIZE:
        raise ProtocolError(f"vdi_state payload {len(data)} is not a multiple of 1428")
    return [VdiState.decode(data[i:i + VDI_STATE_SIZE])
            for i in range(0, len(data), VDI_STATE_SIZE)]


@dataclass(frozen=True, slots=True)
class VdiAttr:
    """The 66,320-byte attribute object / GET_VDI_ATTR payload (§7.5)."""

    name: bytes = b""
    tag: bytes = b""
    ctime: int = 0
    snap_id: int = 0
    value_len: int = 0
    key: bytes = b""
    value: bytes = b""

    SIZE: ClassVar[int] = SD_ATTR_OBJ_SIZE

    def encode(self) -> bytes:
        return VDI_ATTR.pack(pad_field(self.name, 256), pad_field(self.tag, 256), self.ctime,
                             self.snap_id, self.value_len, pad_field(self.key, 256),
                             pad_field(self.value, 65536))

    @classmethod
    def decode(cls, data: bytes | memoryview) -> VdiAttr:
        _need(data, SD_ATTR_OBJ_SIZE, "vdi_attr")
        name, tag, ctime, snap_id, value_len, key, value = VDI_ATTR.unpack_from(data, 0)
        if value_len > 65536:
            raise ProtocolError(f"attribute value_len {value_len} exceeds 65536")
        return cls(decode_field(name), decode_field(tag), ctime, snap_id, value_len,
                   decode_field(key), bytes(value[:value_len]))


@dataclass(frozen=True, slots=True)
class VdiAttrHead:
    """The start of an attribute object read directly (READ_OBJ of fewer than
    66,320 bytes): its identity, value_len and as much of the value as was
    read.  ``name_field`` is the raw 256-byte field: a deleted attribute keeps
    its object and every field, only the name's first byte is cleared (§9.7),
    so the rest still says whose it was."""

    name_field: bytes
    tag: bytes
    snap_id: int
    value_len: int
    key: bytes
    value: bytes

    @property
    def deleted(self) -> bool:
        return self.name_field[:1] == b"\0"

    @classmethod
    def decode(cls, data: bytes | memoryview) -> VdiAttrHead:
        _need(data, VDI_ATTR_HEAD.size, "vdi_attr head")
        name, tag, _ctime, snap_id, value_len, key = VDI_ATTR_HEAD.unpack_from(data, 0)
        if value_len > 65536:
            raise ProtocolError(f"attribute value_len {value_len} exceeds 65536")
        end = VDI_ATTR_HEAD.size + value_len
        return cls(bytes(name), decode_field(tag), snap_id, value_len, decode_field(key),
                   bytes(data[VDI_ATTR_HEAD.size:end]))


@dataclass(frozen=True, slots=True)
class RecoveryState:
    in_recovery: int = 0
    state: int = 0
    nr_finished: int = 0
    nr_total: int = 0

    def encode(self) -> bytes:
        return RECOVERY_STATE.pack(self.in_recovery, b"\0\0\0", self.state, self.nr_finished,
                                   self.nr_total)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> RecoveryState:
        _need(data, 24, "recovery_state")
        in_rec, _pad, state, done, total = RECOVERY_STATE.unpack_from(data, 0)
        return cls(in_rec, state, done, total)


def encode_store_list(names: list[str]) -> bytes:
    return (" ".join(names) + " ").encode() + b"\0"


def ec_policy(data_strips: int, parity_strips: int) -> int:
    """copy_policy byte for erasure code d:p (§7.6)."""
    if data_strips not in (2, 4, 8, 16) or not 1 <= parity_strips <= 15:
        raise ValueError(f"invalid erasure code {data_strips}:{parity_strips}")
    return ((data_strips // 2) << 4) | parity_strips


def ec_decode(copy_policy: int) -> tuple[int, int]:
    return (copy_policy >> 4) * 2, copy_policy & 0x0F


def make_ctime(seconds: int, microseconds: int = 0) -> int:
    """Sheepdog time format (§7.2): seconds << 32 | nanoseconds."""
    return (seconds << 32) | (microseconds * 1000)
