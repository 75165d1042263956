"""Builders for every request the client sends (pure: values in, Request out).

Flags follow what dog sends for the same job (protocol §12), so our frames
can be compared field by field with the golden transcripts: DIRECT on inode
metadata reads and on slot-clearing/header writes, plain WRITE on the tag
write and on data and slot writes after a create.
"""

from __future__ import annotations

from sheepdog_backend.protocol.constants import (
    CLUSTER_INFO_SIZE,
    EPOCH_LOG_HEADER_SIZE,
    NODE_LIST_BUFFER,
    SD_ATTR_OBJ_SIZE,
    VID_BITMAP_SIZE,
    Flag,
    Opcode,
)
from sheepdog_backend.protocol.header import (
    ClusterRequest,
    ObjRequest,
    Request,
    VdiRequest,
)
from sheepdog_backend.protocol.inode import InodeHeader
from sheepdog_backend.protocol.naming import encode_name, encode_name_tag
from sheepdog_backend.protocol.structs import VdiAttr


def get_vdi_info(name: str | bytes, tag: str | bytes = b"", snapid: int = 0) -> Request:
    payload = encode_name_tag(name, tag)
    return Request(Opcode.GET_VDI_INFO, VdiRequest(snapid=snapid), flags=Flag.WRITE,
                   data_length=len(payload), payload=payload)


def lock_vdi(name: str | bytes, tag: str | bytes = b"", snapid: int = 0,
             lock_type: int = 0) -> Request:
    payload = encode_name_tag(name, tag)
    return Request(Opcode.LOCK_VDI, VdiRequest(snapid=snapid, type=lock_type),
                   flags=Flag.WRITE, data_length=len(payload), payload=payload)


def release_vdi(vid: int, lock_type: int = 0) -> Request:
    return Request(Opcode.RELEASE_VDI, VdiRequest(base_vdi_id=vid, type=lock_type))


def new_vdi(name: str | bytes, size: int, *, base_vid: int = 0, snapshot: bool = False,
            copies: int = 0, copy_policy: int = 0, store_policy: int = 0,
            block_size_shift: int = 0) -> Request:
    payload = encode_name(name)
    body = VdiRequest(vdi_size=size, base_vdi_id=base_vid, copies=copies,
                      copy_policy=copy_policy, store_policy=store_policy,
                      block_size_shift=block_size_shift, snapid=1 if snapshot else 0)
    return Request(Opcode.NEW_VDI, body, flags=Flag.WRITE, data_length=len(payload),
                   payload=payload)


def new_vdi_from(name: str | bytes, size: int, base: InodeHeader, *,
                 snapshot: bool = False) -> Request:
    """NEW_VDI deriving from ``base`` (snapshot, clone, rollback): the new inode
    takes the base's copies, copy policy, store policy and object size, as dog
    does (§12.5, §12.7, §12.10)."""
    return new_vdi(name, size, base_vid=base.vdi_id, snapshot=snapshot,
                   copies=base.nr_copies, copy_policy=base.copy_policy,
                   store_policy=base.store_policy, block_size_shift=base.block_size_shift)


def del_vdi(name: str | bytes, tag: str | bytes = b"", snapid: int = 0) -> Request:
    payload = encode_name_tag(name, tag)
    return Request(Opcode.DEL_VDI, VdiRequest(snapid=snapid), flags=Flag.WRITE,
                   data_length=len(payload), payload=payload)


def read_obj(oid: int, offset: int, length: int, *, flags: int = 0) -> Request:
    return Request(Opcode.READ_OBJ, ObjRequest(oid=oid, offset=offset), flags=flags,
                   data_length=length)


def write_obj(oid: int, offset: int, data: bytes, *, copies: int = 0,
              copy_policy: int = 0, flags: int = 0) -> Request:
    body = ObjRequest(oid=oid, copies=copies, copy_policy=copy_policy, offset=offset)
    return Request(Opcode.WRITE_OBJ, body, flags=Flag.WRITE | flags,
                   data_length=len(data), payload=data)


def create_and_write_obj(oid: int, offset: int, data: bytes, *, cow_oid: int = 0,
                         copies: int = 0, copy_policy: int = 0, flags: int = 0) -> Request:
    flags |= Flag.WRITE
    if cow_oid:
        flags |= Flag.COW
    body = ObjRequest(oid=oid, cow_oid=cow_oid, copies=copies, copy_policy=copy_policy,
                      offset=offset)
    return Request(Opcode.CREATE_AND_WRITE_OBJ, body, flags=flags, data_length=len(data),
                   payload=data)


def read_vdis() -> Request:
    return Request(Opcode.READ_VDIS, data_length=VID_BITMAP_SIZE)


def read_del_vdis() -> Request:
    return Request(Opcode.READ_DEL_VDIS, data_length=VID_BITMAP_SIZE)


def get_node_list() -> Request:
    return Request(Opcode.GET_NODE_LIST, data_length=NODE_LIST_BUFFER)


def stat_sheep() -> Request:
    return Request(Opcode.STAT_SHEEP)


def stat_cluster_flags() -> Request:
    """STAT_CLUSTER with no node slots and room for one record: the newest
    epoch record, whose ``flags`` are the cluster flags (as dog's prelude, §12.0)."""
    return Request(Opcode.STAT_CLUSTER, ClusterRequest(nodes_nr=0),
                   data_length=EPOCH_LOG_HEADER_SIZE)


def cluster_info() -> Request:
    return Request(Opcode.CLUSTER_INFO, data_length=CLUSTER_INFO_SIZE)


def make_fs(*, ctime: int, copies: int, copy_policy: int, flags: int,
            block_size_shift: int, store: str) -> Request:
    payload = store.encode("ascii") + b"\0"
    body = ClusterRequest(ctime=ctime, copies=copies, copy_policy=copy_policy, flags=flags,
                          block_size_shift=block_size_shift)
    return Request(Opcode.MAKE_FS, body, flags=Flag.WRITE, data_length=len(payload),
                   payload=payload)


def get_vdi_attr(attr: VdiAttr, *, flags: int = 0, snapid: int = 0) -> Request:
    payload = attr.encode()
    assert len(payload) == SD_ATTR_OBJ_SIZE
    return Request(Opcode.GET_VDI_ATTR, VdiRequest(snapid=snapid), flags=Flag.WRITE | flags,
                   data_length=len(payload), payload=payload)
