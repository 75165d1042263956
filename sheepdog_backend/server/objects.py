"""Object operations (sheepdog-protocol.md §10): CREATE_AND_WRITE_OBJ, READ_OBJ,
WRITE_OBJ, REMOVE_OBJ, DISCARD_OBJ, EXIST.

Pure functions of (state, request) that return the response payload or raise
the shared ServerError classes.  Writes to an inode go through
``write_inode`` so that slot writes drop references (§10.3) and header writes
are journalled (never torn) and reflected in the registry.  Data-object
changes check, under the data gate (gate.py), that their VDI is still a live
working VDI, so none lands in a snapshot or behind a delete.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from contextlib import contextmanager

from sheepdog_backend.exception import (
    InvalidParameters,
    NoObject,
    NoVdi,
    ReadOnly,
)
from sheepdog_backend.protocol.constants import (
    SD_ATTR_OBJ_SIZE,
    SD_BTREE_NODE_SIZE,
    SD_INODE_GREF_OFFSET,
    SD_INODE_HEADER_SIZE,
    SD_INODE_INDEX_OFFSET,
    SD_INODE_SIZE,
    SD_LEDGER_OBJ_SIZE,
    Flag,
)
from sheepdog_backend.protocol.header import ObjRequest, Request
from sheepdog_backend.protocol.inode import encode_slots
from sheepdog_backend.protocol.oid import (
    ObjectKind,
    is_data_obj,
    object_kind,
    oid_is_valid,
    oid_to_index,
    oid_to_vid,
    vid_to_vdi_oid,
)
from sheepdog_backend.server.state import ServerState, request_body
from sheepdog_backend.server.store import Transaction


def _valid_oid(oid: int) -> int:
    if not oid_is_valid(oid):
        raise InvalidParameters(f"invalid object id {oid:#018x}")
    return oid


def object_size(state: ServerState, oid: int) -> int:
    """Nominal size of an object of this kind (§6.3)."""
    kind = object_kind(oid)
    if kind is ObjectKind.INODE:
        return SD_INODE_SIZE
    if kind is ObjectKind.ATTR:
        return SD_ATTR_OBJ_SIZE
    if kind is ObjectKind.BTREE:
        return SD_BTREE_NODE_SIZE
    if kind is ObjectKind.LEDGER:
        return SD_LEDGER_OBJ_SIZE
    record = state.registry.get(oid_to_vid(oid))
    shift = record.header.block_size_shift if record else 0
    return 1 << (shift or state.config.block_size_shift or 22)


def _check_range(offset: int, length: int, size: int) -> None:
    if offset + length > size:
        raise InvalidParameters(
            f"range {offset}+{length} exceeds the object size {size}")


def _require_working_vdi(state: ServerState, oid: int) -> None:
    """A data object may only change while its VDI is a live working VDI.

    Called under ``state.gate`` shared (see gate.py), so the answer holds
    until the change is done: snapshots and deletes wait for it.  Sheep 1.0
    refuses only snapshot objects (READONLY); the objects of a deleted VDI
    or of a vid without an inode are refused too (NO_VDI), because nothing
    would ever reference or collect them, or (for a deleted VDI whose
    objects a derived VDI still shares) the write would change that VDI."""
    record = state.registry.get(oid_to_vid(oid))
    if record is None or record.deleted:
        raise NoVdi(f"data object {oid:#018x} belongs to no live VDI")
    if record.snapshot:
        raise ReadOnly()


@contextmanager
def _data_change(state: ServerState, oid: int) -> Iterator[None]:
    with state.gate.shared():
        _require_working_vdi(state, oid)
        yield


def read_obj(state: ServerState, request: Request, max_length: int) -> bytes:
    body = request_body(request, ObjRequest)
    oid = _valid_oid(body.oid)
    if request.data_length > max_length:
        raise InvalidParameters(f"read of {request.data_length} bytes exceeds the cap")
    size = state.store.size(oid)
    if size is None:
        raise NoObject()
    _check_range(body.offset, request.data_length, max(size, object_size(state, oid)))
    data = state.store.read(oid, body.offset, request.data_length)
    if data is None:
        raise NoObject()
    return data


def create_and_write(state: ServerState, request: Request) -> None:
    body = request_body(request, ObjRequest)
    oid = _valid_oid(body.oid)
    data = is_data_obj(oid)
    if data:
        _require_working_vdi(state, oid)  # early, before staging; again at the rename
    size = object_size(state, oid)
    _check_range(body.offset, len(request.payload), size)
    cow_from: int | None = None
    if request.flags & Flag.COW and body.cow_oid and len(request.payload) != size:
        cow = _valid_oid(body.cow_oid)
        if not state.store.exists(cow):
            raise NoObject(f"copy-on-write source {cow:#018x} does not exist")
        cow_from = cow
    extents = [(body.offset, request.payload)]
    if object_kind(oid) is ObjectKind.INODE:
        with state.meta_lock:
            state.store.create(oid, size, extents, cow_from)
            state.registry.refresh(oid_to_vid(oid))
        return
    state.store.create(oid, size, extents, cow_from,
                       guard=(lambda: _data_change(state, oid)) if data else None)


def write_obj(state: ServerState, request: Request) -> None:
    body = request_body(request, ObjRequest)
    oid = _valid_oid(body.oid)
    size = state.store.size(oid)
    if size is None:
        raise NoObject()
    _check_range(body.offset, len(request.payload), max(size, object_size(state, oid)))
    if object_kind(oid) is ObjectKind.INODE:
        write_inode(state, oid_to_vid(oid), body.offset, request.payload)
        return
    if is_data_obj(oid):
        with _data_change(state, oid):
            written = state.store.write(oid, body.offset, request.payload)
    else:
        written = state.store.write(oid, body.offset, request.payload)
    if not written:
        raise NoObject()


def _refuse_link_into_deleted(state: ServerState, vid: int, offset: int, data: bytes) -> None:
    """A write that would set slots of a deleted inode: refuse it (NO_VDI) and
    collect the objects it would have linked, which nobody else may name (a
    client created them for the VDI, then lost the race with DEL_VDI)."""
    end = offset + len(data)
    lo, hi = max(offset, SD_INODE_INDEX_OFFSET), min(end, SD_INODE_GREF_OFFSET)
    if lo >= hi or data[lo - offset:hi - offset].count(0) == hi - lo:
        return
    first = (lo - SD_INODE_INDEX_OFFSET) // 4
    count = (hi - 1 - SD_INODE_INDEX_OFFSET) // 4 - first + 1
    merged = bytearray(state.read_slots(vid, first, count).tobytes())
    base = SD_INODE_INDEX_OFFSET + 4 * first
    merged[lo - base:hi - base] = data[lo - offset:hi - offset]
    values = array("I")
    values.frombytes(bytes(merged))
    state.collect([(v, first + i) for i, v in enumerate(values) if v])
    raise NoVdi(f"VDI {vid:#x} is deleted; its slots cannot be set")


def write_inode(state: ServerState, vid: int, offset: int, data: bytes) -> None:
    """Write into an inode object with sheep's mapping-update semantics."""
    oid = vid_to_vdi_oid(vid)
    end = offset + len(data)
    with state.meta_lock:
        if not state.store.exists(oid):
            raise NoObject()
        record = state.registry.get(vid)
        hyper = record is not None and bool(record.header.store_policy)
        if record is not None and record.deleted:
            if hyper and end > SD_INODE_INDEX_OFFSET:
                raise NoVdi(f"VDI {vid:#x} is deleted; its index cannot be set")
            _refuse_link_into_deleted(state, vid, offset, data)
        in_slots = SD_INODE_INDEX_OFFSET <= offset and end <= SD_INODE_GREF_OFFSET
        if not in_slots or not data or hyper:
            # a hyper inode's data_vdi_id area is its B-tree root, not slots:
            # written as is (sheep's own writes of it are plain writes too)
            txn = Transaction()
            txn.writes.append((oid, offset, data))
            state.store.commit(txn)
            if offset < SD_INODE_HEADER_SIZE:
                state.registry.refresh(vid)
            return
        first = (offset - SD_INODE_INDEX_OFFSET) // 4
        last = (end - 1 - SD_INODE_INDEX_OFFSET) // 4
        count = last - first + 1
        old = state.read_slots(vid, first, count)
        grefs = state.read_grefs(vid, first, count)
        if any(grefs):
            txn = Transaction()
            txn.writes.append((oid, offset, data))
            txn.writes.append((oid, SD_INODE_GREF_OFFSET + 8 * first, bytes(8 * count)))
            state.store.commit(txn)
        elif not state.store.write(oid, offset, data):
            raise NoObject()
        new = state.read_slots(vid, first, count)
        pairs = enumerate(zip(old, new, strict=True))
        dropped = [(o, first + i) for i, (o, n) in pairs if o and o != n]
        if dropped:
            state.collect(dropped)


def remove_obj(state: ServerState, request: Request) -> None:
    oid = _valid_oid(request_body(request, ObjRequest).oid)
    with state.meta_lock:
        if not state.store.remove(oid):
            raise NoObject()
        if object_kind(oid) is ObjectKind.INODE:
            state.registry.refresh(oid_to_vid(oid))


def discard_obj(state: ServerState, request: Request) -> None:
    """Unmap one data object from its VDI and drop it (§10.5)."""
    oid = _valid_oid(request_body(request, ObjRequest).oid)
    if not is_data_obj(oid):
        raise InvalidParameters("DISCARD_OBJ takes a data object id")
    vid, idx = oid_to_vid(oid), oid_to_index(oid)
    if idx >= 1 << 20:
        raise InvalidParameters("data index beyond a flat inode")
    with state.meta_lock:
        record = state.registry.get(vid)
        if record is None:
            raise NoVdi()
        if record.header.store_policy:
            raise InvalidParameters("DISCARD_OBJ of a hyper VDI (B-tree index) is not "
                                    "supported by the embedded server")
        if state.read_slots(vid, idx, 1)[0]:
            write_inode(state, vid, SD_INODE_INDEX_OFFSET + 4 * idx, encode_slots([0]))
        state.collect([(vid, idx)])


def exist(state: ServerState, request: Request) -> None:
    if not state.store.exists(_valid_oid(request_body(request, ObjRequest).oid)):
        raise NoObject()

