"""Cluster and node operations dog sends (sheepdog-protocol.md §11): MAKE_FS,
STAT_CLUSTER, CLUSTER_INFO, GET_NODE_LIST, STAT_SHEEP, GET_STORE_LIST,
GET_VDI_COPIES, STAT_RECOVERY, READ_VDIS/READ_DEL_VDIS, GET_CLUSTER_DEFAULT.

A single node: one epoch (1 after the format), one member, status OK once
formatted.  Every payload is built for the request's buffer and never exceeds
its ``data_length``.
"""

from __future__ import annotations

import os
import struct

from sheepdog_backend.exception import (
    BufferSmall,
    InvalidParameters,
    NoStore,
    WaitForFormat,
)
from sheepdog_backend.protocol.constants import (
    CLUSTER_INFO_SIZE,
    EPOCH_LOG_HEADER_SIZE,
    SD_DEFAULT_BLOCK_SIZE_SHIFT,
    SD_DEFAULT_COPIES,
    SD_MAX_BLOCK_SIZE_SHIFT,
    SD_MAX_COPIES,
    SD_MIN_BLOCK_SIZE_SHIFT,
    SD_NODE_SIZE,
    VDI_STATE_SIZE,
    VID_BITMAP_SIZE,
    ClusterStatus,
)
from sheepdog_backend.protocol.header import (
    ClusterDefaultResponse,
    ClusterRequest,
    NodeResponse,
    Request,
)
from sheepdog_backend.protocol.naming import decode_field
from sheepdog_backend.protocol.structs import (
    ClusterInfo,
    EpochLog,
    RecoveryState,
    VdiState,
    encode_store_list,
)
from sheepdog_backend.server.state import ServerState, request_body
from sheepdog_backend.server.store import ClusterConfig

STORES = ("tree", "plain")



def make_fs(state: ServerState, request: Request) -> None:
    body = request_body(request, ClusterRequest)
    store = decode_field(request.payload).decode("utf-8", "replace")
    if store not in STORES:
        raise NoStore()
    copies = body.copies or SD_DEFAULT_COPIES
    shift = body.block_size_shift or SD_DEFAULT_BLOCK_SIZE_SHIFT
    if not 1 <= copies <= SD_MAX_COPIES:
        raise InvalidParameters(f"copies {copies} out of range 1..{SD_MAX_COPIES}")
    if not SD_MIN_BLOCK_SIZE_SHIFT <= shift <= SD_MAX_BLOCK_SIZE_SHIFT:
        raise InvalidParameters(f"block_size_shift {shift} out of range")
    with state.meta_lock:
        now = state.clock()
        config = ClusterConfig(ctime=body.ctime or state.now(), epoch=1, epoch_time=int(now),
                               nr_copies=copies, copy_policy=body.copy_policy,
                               block_size_shift=shift, flags=body.flags, store=store)
        state.store.wipe()
        state.registry.reset()
        state.store.save_config(config)
        state.config = config


def _require_formatted(state: ServerState) -> ClusterConfig:
    if not state.config.formatted:
        raise WaitForFormat()
    return state.config


def stat_cluster(state: ServerState, request: Request, max_length: int) -> bytes:
    config = _require_formatted(state)
    nodes_nr = request_body(request, ClusterRequest).nodes_nr
    stride = EPOCH_LOG_HEADER_SIZE + nodes_nr * SD_NODE_SIZE
    if stride > max_length:
        raise InvalidParameters(f"nodes_nr {nodes_nr} asks for oversized records")
    records = min(config.epoch, request.data_length // stride)
    out = []
    for i in range(records):
        epoch = config.epoch - i
        nodes = (state.node(),) if nodes_nr else ()
        first = i == 0
        out.append(EpochLog(
            ctime=config.ctime if first else 0,
            time=config.epoch_time if nodes_nr else 0, epoch=epoch, nr_nodes=len(nodes),
            nr_copies=config.nr_copies if first else 0,
            copy_policy=config.copy_policy if first else 0,
            flags=config.flags if first else 0,
            drv_name=config.store.encode() if first else b"", nodes=nodes).encode(nodes_nr))
    return b"".join(out)


def cluster_info(state: ServerState, request: Request) -> bytes:
    if request.data_length < CLUSTER_INFO_SIZE:
        raise InvalidParameters(f"CLUSTER_INFO needs a {CLUSTER_INFO_SIZE}-byte buffer")
    config = state.config
    formatted = config.formatted
    nodes = (state.node(),) if formatted else ()
    return ClusterInfo(
        nr_nodes=len(nodes), epoch=config.epoch, ctime=config.ctime, flags=config.flags,
        nr_copies=config.nr_copies, copy_policy=config.copy_policy,
        status=ClusterStatus.OK if formatted else ClusterStatus.WAIT,
        block_size_shift=config.block_size_shift, default_store=config.store.encode(),
        nodes=nodes).encode()


def node_list(state: ServerState, request: Request) -> tuple[NodeResponse, bytes]:
    if request.data_length < SD_NODE_SIZE:
        raise BufferSmall()
    return NodeResponse(nr_nodes=1), state.node().encode()


def _objects_usage(state: ServerState) -> int:
    """Bytes the stored objects occupy on disk (allocated blocks, as sheep's
    md_get_size counts them)."""
    used = 0
    for oid in state.store.oids():
        try:
            used += os.stat(state.store.path(oid)).st_blocks * 512
        except FileNotFoundError:  # removed meanwhile
            continue
    return used


def stat_sheep(state: ServerState) -> NodeResponse:
    """sheep's STAT_SHEEP: store_size = free space + what the objects use,
    store_free = free space, so `dog node info` shows the node's own usage
    (not everything else on the filesystem) as Used."""
    _, free = state.capacity()
    return NodeResponse(store_size=free + _objects_usage(state), store_free=free)


def store_list(request: Request) -> bytes:
    data = encode_store_list(list(STORES))
    if request.data_length < len(data):
        raise BufferSmall()
    return data


def vdi_copies(state: ServerState, request: Request) -> bytes:
    with state.meta_lock:
        records = sorted(state.registry.records.items())
        if request.data_length < len(records) * VDI_STATE_SIZE:
            raise BufferSmall()
        out = []
        for vid, record in records:
            h = record.header
            out.append(VdiState(
                vid=vid, nr_copies=h.nr_copies, snapshot=int(record.snapshot),
                deleted=int(record.deleted), copy_policy=h.copy_policy,
                block_size_shift=h.block_size_shift, parent_vid=h.parent_vdi_id,
                lock_state=record.lock_state,
                lock_owner=state.node_id if record.lock_state != 1 else None,
                nr_participants=len(record.participants)).encode())
        return b"".join(out)


def stat_recovery(request: Request) -> bytes:
    data = RecoveryState().encode()
    if request.data_length < len(data):
        raise InvalidParameters("STAT_RECOVERY needs a 24-byte buffer")
    return data


def read_bitmap(state: ServerState, request: Request, deleted: bool) -> bytes:
    if request.data_length != VID_BITMAP_SIZE:
        raise InvalidParameters(f"a vid bitmap request must ask for {VID_BITMAP_SIZE} bytes")
    with state.meta_lock:
        bitmap = state.registry.deleted if deleted else state.registry.in_use
        return bitmap.to_bytes()


def cluster_default(state: ServerState) -> ClusterDefaultResponse:
    config = state.config
    return ClusterDefaultResponse(nr_copies=config.nr_copies, copy_policy=config.copy_policy,
                                  block_size_shift=config.block_size_shift)


def loglevel(request: Request, current: list[int]) -> bytes:
    """GET_LOGLEVEL (no payload in) / SET_LOGLEVEL (i32 0..7 in)."""
    if request.has_payload:
        if len(request.payload) != 4:
            raise InvalidParameters("SET_LOGLEVEL takes one i32")
        (level,) = struct.unpack("<i", request.payload)
        if not 0 <= level <= 7:
            raise InvalidParameters(f"log level {level} out of range 0..7")
        current[0] = level
        return b""
    if request.data_length < 4:
        raise InvalidParameters("GET_LOGLEVEL needs a 4-byte buffer")
    return struct.pack("<i", current[0])
