"""VDI operations (sheepdog-protocol.md §9): NEW_VDI (create, clone, snapshot,
rebase), GET_VDI_INFO, LOCK_VDI/RELEASE_VDI, DEL_VDI, GET_VDI_ATTR.

Every function runs under ``state.meta_lock`` and either returns the response
union or raises a ServerError (with ``.body`` set when sheep sends fields
together with the error).  Inode changes are single store transactions, so a
snapshot (old inode frozen + new working inode) is all-or-nothing on disk.

DEL_VDI policy: sheep 1.0 leaves an inode whose slots are still set untouched
(yet says SUCCESS); we instead do a full delete (drop every reference, clear
the inode), so QEMU's "delete working VDI, then create a branch" works;
and it also collects the VDI's objects that no slot names (created, never
linked).  Snapshots and deletes change the registry under ``state.gate``
exclusive, so no data write straddles them (see gate.py and objects.py).
"""

from __future__ import annotations

from array import array

from sheepdog_backend.exception import (
    BaseVdiReadError,
    FullVdi,
    InvalidParameters,
    NoObject,
    ServerError,
    VdiExists,
    VdiLocked,
)
from sheepdog_backend.protocol.constants import (
    SD_ATTR_OBJ_SIZE,
    SD_INODE_DATA_INDEX,
    SD_INODE_GREF_OFFSET,
    SD_INODE_INDEX_OFFSET,
    SD_INODE_SIZE,
    SD_MAX_BLOCK_SIZE_SHIFT,
    SD_MAX_COPIES,
    SD_MAX_VDI_SIZE,
    SD_MIN_BLOCK_SIZE_SHIFT,
    ClusterFlag,
    Flag,
    LockState,
    LockType,
    flat_max_vdi_size,
)
from sheepdog_backend.protocol.header import Request, VdiRequest, VdiResponse
from sheepdog_backend.protocol.inode import (
    OFFSET_NAME,
    OFFSET_SNAP_CTIME,
    OFFSET_VDI_SIZE,
    InodeHeader,
    encode_index_header,
)
from sheepdog_backend.protocol.naming import (
    attr_id as compute_attr_id,
)
from sheepdog_backend.protocol.naming import (
    decode_field,
    decode_lookup_payload,
    sd_hash_vdi,
)
from sheepdog_backend.protocol.oid import ObjectKind, object_kind, vid_to_attr_oid, vid_to_vdi_oid
from sheepdog_backend.protocol.structs import VDI_ATTR, ec_decode
from sheepdog_backend.server.state import ServerState, request_body
from sheepdog_backend.server.store import Transaction


def _fail(exc: ServerError, body: VdiResponse) -> ServerError:
    exc.body = body  # type: ignore[attr-defined]
    return exc


def _lookup_args(request: Request) -> tuple[bytes, bytes, int]:
    try:
        name, tag = decode_lookup_payload(request.payload)
    except ValueError as exc:
        raise InvalidParameters(str(exc)) from None
    return name, tag, request_body(request, VdiRequest).snapid


def _info(state: ServerState, vid: int) -> VdiResponse:
    record = state.registry.get(vid)
    assert record is not None
    return VdiResponse(vdi_id=vid, copies=record.header.nr_copies,
                       block_size_shift=record.header.block_size_shift)


# -- lookups -----------------------------------------------------------------------


def get_vdi_info(state: ServerState, request: Request) -> VdiResponse:
    with state.meta_lock:
        return _info(state, state.registry.find(*_lookup_args(request)))


def lock_vdi(state: ServerState, request: Request) -> VdiResponse:
    with state.meta_lock:
        vid = state.registry.find(*_lookup_args(request))
        info = _info(state, vid)
        if not state.config.flags & ClusterFlag.USE_LOCK:
            return info
        record = state.registry.get(vid)
        assert record is not None
        me = 1  # the only node: its participant number
        if request_body(request, VdiRequest).type == LockType.SHARED:
            if record.lock_state == LockState.LOCKED or me in record.participants:
                raise _fail(VdiLocked(), info)
            record.participants.append(me)
            record.lock_state = LockState.SHARED
        else:
            if record.lock_state != LockState.UNLOCKED:
                raise _fail(VdiLocked(), info)
            record.lock_state = LockState.LOCKED
        return info


def release_vdi(state: ServerState, request: Request) -> VdiResponse:
    with state.meta_lock:
        record = state.registry.get(request_body(request, VdiRequest).base_vdi_id)
        if record is not None and state.config.flags & ClusterFlag.USE_LOCK:
            if request_body(request, VdiRequest).type == LockType.SHARED:
                record.participants.clear()
            record.lock_state = LockState.UNLOCKED
        return VdiResponse()


# -- NEW_VDI -------------------------------------------------------------------------


def _effective(state: ServerState, body: VdiRequest) -> tuple[int, int, int]:
    if body.copies == 0:
        copies, policy = state.config.nr_copies, state.config.copy_policy
    else:
        copies, policy = body.copies, body.copy_policy
    if policy:
        data, parity = ec_decode(policy)
        copies = data + parity
    shift = body.block_size_shift or state.config.block_size_shift
    return copies, policy, shift


def _validate_new(body: VdiRequest, copies: int, shift: int, name: bytes) -> None:
    if not name:
        raise InvalidParameters("a VDI name must not be empty")
    if not 1 <= copies <= SD_MAX_COPIES:
        raise InvalidParameters(f"copies {copies} out of range 1..{SD_MAX_COPIES}")
    if not SD_MIN_BLOCK_SIZE_SHIFT <= shift <= SD_MAX_BLOCK_SIZE_SHIFT:
        raise InvalidParameters(f"block_size_shift {shift} out of range")
    if body.store_policy not in (0, 1):
        raise InvalidParameters(f"unknown store_policy {body.store_policy}")
    limit = SD_MAX_VDI_SIZE if body.store_policy else flat_max_vdi_size(shift)
    if body.vdi_size > limit:
        raise InvalidParameters(f"VDI size {body.vdi_size} exceeds {limit}")


class _Derived:
    """Slots and grefs a new inode inherits from a base, and the base's update."""

    def __init__(self, state: ServerState, base: int) -> None:
        record = state.registry.get(base)
        if record is None or not state.store.exists(vid_to_vdi_oid(base)):
            raise BaseVdiReadError()
        if record.header.store_policy:
            raise InvalidParameters("snapshots and clones of hyper volumes are not supported")
        count = min(record.header.count_data_objs, SD_INODE_DATA_INDEX)
        slots = state.read_slots(base, 0, count)
        used = [i for i, v in enumerate(slots) if v]
        self.first = used[0] if used else 0
        last = used[-1] + 1 if used else 0
        self.slots = slots[self.first:last].tobytes()
        grefs = state.read_grefs(base, self.first, last - self.first)
        base_grefs = array("i", grefs)
        new_grefs = array("i", bytes(len(grefs) * 4))
        for i in used:
            j = 2 * (i - self.first)
            base_grefs[j + 1] += 1
            new_grefs[j] = grefs[j] + 1
        self.base_grefs = base_grefs.tobytes()
        self.new_grefs = new_grefs.tobytes()

    def base_writes(self, base: int) -> list[tuple[int, int, bytes]]:
        if not self.base_grefs:
            return []
        return [(vid_to_vdi_oid(base), SD_INODE_GREF_OFFSET + 8 * self.first, self.base_grefs)]

    def extents(self) -> list[tuple[int, bytes]]:
        return [(SD_INODE_INDEX_OFFSET + 4 * self.first, self.slots),
                (SD_INODE_GREF_OFFSET + 8 * self.first, self.new_grefs)]


def new_vdi(state: ServerState, request: Request) -> VdiResponse:
    body = request_body(request, VdiRequest)
    if len(request.payload) != 256:
        raise InvalidParameters("NEW_VDI takes a 256-byte name")
    name = decode_field(request.payload)
    copies, policy, shift = _effective(state, body)
    failed = VdiResponse(copies=copies, block_size_shift=shift)
    with state.meta_lock:
        _validate_new(body, copies, shift, name)
        found = state.registry.lookup(name)
        txn = Transaction()
        now = state.now()
        if body.snapid == 0:
            if found.vid is not None:
                raise _fail(VdiExists(), failed)
            snap_id, parent = found.next_snapid, body.base_vdi_id
        else:
            if found.vid is None:
                raise _fail((found.error or InvalidParameters)(), failed)
            current = found.vid
            cur_header = state.registry.get(current)
            assert cur_header is not None
            snap_id = cur_header.header.snap_id + 1
            parent = body.base_vdi_id or current
            txn.writes.append((vid_to_vdi_oid(current), OFFSET_SNAP_CTIME,
                               now.to_bytes(8, "little")))
        new_vid = found.free_vid
        header = InodeHeader(name=name, create_time=now, vdi_size=body.vdi_size,
                             copy_policy=policy, store_policy=body.store_policy,
                             nr_copies=copies, block_size_shift=shift, snap_id=snap_id,
                             vdi_id=new_vid, parent_vdi_id=parent)
        extents: list[tuple[int, bytes]] = [(0, header.encode())]
        if parent:
            derived = _Derived(state, parent)
            extents += derived.extents()
            txn.writes[:0] = derived.base_writes(parent)
        elif body.store_policy:
            extents.append((SD_INODE_INDEX_OFFSET, encode_index_header()))
        staged = state.store.stage(vid_to_vdi_oid(new_vid), SD_INODE_SIZE, extents)
        txn.renames.append((staged, vid_to_vdi_oid(new_vid)))
        with state.gate.exclusive():  # no data write straddles the freeze
            state.store.commit(txn)
            for vid in {new_vid, parent, found.vid or 0} - {0}:
                state.registry.refresh(vid)
        return VdiResponse(vdi_id=new_vid, copies=copies, block_size_shift=shift)


# -- DEL_VDI ---------------------------------------------------------------------------


def del_vdi(state: ServerState, request: Request) -> VdiResponse:
    with state.meta_lock:
        vid = state.registry.find(*_lookup_args(request))
        record = state.registry.get(vid)
        assert record is not None
        header = record.header
        oid = vid_to_vdi_oid(vid)
        txn = Transaction()
        txn.writes.append((oid, OFFSET_NAME, bytes(256)))
        txn.writes.append((oid, OFFSET_VDI_SIZE, bytes(8)))
        dropped: list[tuple[int, int]] = []
        if header.store_policy:
            txn.writes.append((oid, SD_INODE_INDEX_OFFSET, bytes(4 * SD_INODE_DATA_INDEX)))
            # its data objects and its B-tree leaf objects (sheep 1.0 leaves
            # the leaves behind; nothing could ever read them again)
            txn.unlinks.extend(o for o in state.store.oids()
                               if (o >> 32) & 0xFFFFFF == vid
                               and object_kind(o) in (ObjectKind.DATA, ObjectKind.BTREE))
        else:
            count = min(header.count_data_objs, SD_INODE_DATA_INDEX)
            slots = state.read_slots(vid, 0, count)
            grefs = state.read_grefs(vid, 0, count)
            used = [i for i, v in enumerate(slots) if v]
            dropped = [(slots[i], i) for i in used]
            if used:
                txn.writes.append((oid, SD_INODE_INDEX_OFFSET + 4 * used[0],
                                   bytes(4 * (used[-1] - used[0] + 1))))
            nonzero = [i for i in range(count) if grefs[2 * i] or grefs[2 * i + 1]]
            if nonzero:
                txn.writes.append((oid, SD_INODE_GREF_OFFSET + 8 * nonzero[0],
                                   bytes(8 * (nonzero[-1] - nonzero[0] + 1))))
        with state.gate.exclusive():  # data writes before it finish, later ones see it
            state.store.commit(txn)
            refreshed = state.registry.refresh(vid)
        if refreshed is not None:
            refreshed.lock_state = LockState.UNLOCKED
            refreshed.participants = []
        if not header.store_policy:
            # also objects created but never linked (a client that died, or
            # whose slot write loses to this delete): no slot names them
            dropped += [(vid, oid & 0xFFFFFFFF) for oid in state.store.data_oids(vid)]
        state.collect(dropped)
        return VdiResponse(vdi_id=vid)


# -- GET_VDI_ATTR -----------------------------------------------------------------------


def get_vdi_attr(state: ServerState, request: Request) -> VdiResponse:
    body = request_body(request, VdiRequest)
    payload = request.payload
    if len(payload) != SD_ATTR_OBJ_SIZE:
        raise InvalidParameters(f"GET_VDI_ATTR takes a {SD_ATTR_OBJ_SIZE}-byte attribute")
    name_f, tag_f, _ctime, snap_id, value_len, key_f, _value = VDI_ATTR.unpack_from(payload)
    if value_len > 65536:
        raise InvalidParameters("attribute value_len exceeds 65536")
    name, tag = decode_field(name_f), decode_field(tag_f)
    with state.meta_lock:
        vid = state.registry.find(name, tag, body.snapid)
        record = state.registry.get(vid)
        assert record is not None
        hash_vid = sd_hash_vdi(name)
        first = compute_attr_id(name_f, tag_f, snap_id, key_f)
        ident = payload[:512] + payload[520:524] + payload[528:784]
        create = bool(request.flags & Flag.CREAT)
        excl = bool(request.flags & Flag.EXCL)
        delete = bool(request.flags & Flag.DEL)
        stored = (bytearray(payload))
        stored[512:520] = record.header.create_time.to_bytes(8, "little")
        aid = first
        while True:
            oid = vid_to_attr_oid(hash_vid, aid)
            if create and not excl and not delete:
                state.store.create(oid, SD_ATTR_OBJ_SIZE, [(0, bytes(stored))])
                break
            existing = state.store.read(oid, 0, 784)
            if existing is None:
                if create and excl and not delete:
                    state.store.create(oid, SD_ATTR_OBJ_SIZE, [(0, bytes(stored))])
                    break
                raise NoObject()
            if existing[:512] + existing[520:524] + existing[528:784] == ident:
                if delete:
                    state.store.write(oid, 0, b"\0")
                elif create:
                    raise VdiExists()
                break
            aid = (aid + 1) & 0xFFFFFFFF
            if aid == first:
                raise FullVdi("attribute probe wrapped around")
        return VdiResponse(vdi_id=hash_vid, attr_id=aid, copies=record.header.nr_copies)
