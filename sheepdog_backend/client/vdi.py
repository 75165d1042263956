"""VDI control operations: one attempt each, on one connection.

Every function here sends the fewest requests the protocol allows and reads
inode metadata as the first 568 bytes of the inode (name, tag, times, size,
policies, ids: everything up to ``btree_counter``), or the slot range a VDI's
size covers (``4 * count_data_objs`` bytes at 4664) - never the whole
12.5 MB inode.  Independent requests (two lookups, two bitmaps, many header
reads, disjoint slot-range writes) are pipelined on the connection.

Retrying and reconciling after a lost reply is the caller's job
(``client.py`` and ``reconcile.py``); these functions raise the server's error as is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.models import VdiInfo
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.exception import InvalidInput, NoObject, ProtocolError, error_for_code
from sheepdog_backend.protocol.bitmap import VidBitmap
from sheepdog_backend.protocol.constants import (
    SD_INODE_HEADER_SIZE,
    SD_INODE_LOOKUP_SIZE,
    SD_NR_VDIS,
    ClusterFlag,
    Flag,
    Opcode,
    Result,
)
from sheepdog_backend.protocol.header import (
    ClusterDefaultResponse,
    Request,
    Response,
    VdiResponse,
)
from sheepdog_backend.protocol.inode import (
    OFFSET_TAG,
    OFFSET_VDI_SIZE,
    InodeHeader,
    decode_slots,
    slot_offset,
)
from sheepdog_backend.protocol.naming import TAG_FIELD, pad_field, sd_hash_vdi
from sheepdog_backend.protocol.oid import vid_to_attr_oid, vid_to_vdi_oid
from sheepdog_backend.protocol.structs import EpochLog, VdiAttr

HEADER_READ = SD_INODE_LOOKUP_SIZE  # 568 bytes cover every field a client needs
# Header reads in flight when listing: a reply is 568 bytes, so the data
# window (sized for objects of up to 4 MiB) need not bound them; 64 lists 1,003
# VDIs of a real sheep ~30% faster than 16 (benchmarks/bench_sheep.py).
HEADER_WINDOW = 64
# A listing with usage reads each inode's header and first slots in one
# request: 256 slots cover a 1 GiB volume of 4 MiB objects
USAGE_PREFIX_SLOTS = 256
USAGE_READ = SD_INODE_HEADER_SIZE + 4 * USAGE_PREFIX_SLOTS
SLOT_BATCH = 1 << 16  # slots per slot-range request (256 KiB)
GAP_MERGE = 12  # zero slots (48 bytes) cost less than another request header


def check(rsp: Response) -> Response:
    if rsp.result != Result.SUCCESS:
        raise error_for_code(rsp.result)
    return rsp


def pipeline(conn: Connection, requests: Iterable[Request], window: int = 16,
             *, raise_errors: bool = True) -> list[Response]:
    """Send requests with at most ``window`` in flight; responses in request order."""
    results: dict[int, Response] = {}
    order: list[int] = []
    pending: list[int] = []
    for req in requests:
        if len(pending) >= window:
            rid = pending.pop(0)
            results[rid] = conn.wait(rid)
        rid = conn.send(req)
        order.append(rid)
        pending.append(rid)
    for rid in pending:
        results[rid] = conn.wait(rid)
    out = [results[rid] for rid in order]
    if raise_errors:
        for rsp in out:
            check(rsp)
    return out


def vdi_body(rsp: Response) -> VdiResponse:
    body = rsp.body
    if not isinstance(body, VdiResponse):
        raise ProtocolError(f"a {type(body).__name__} where a VDI response belongs")
    return body


# -- lookups and inode reads -------------------------------------------------


def lookup(conn: Connection, name: str | bytes, tag: str | bytes = b"",
           snapid: int = 0) -> VdiResponse:
    return vdi_body(check(conn.call(rq.get_vdi_info(name, tag, snapid))))


def header_request(vid: int) -> Request:
    return rq.read_obj(vid_to_vdi_oid(vid), 0, HEADER_READ, flags=Flag.DIRECT)


def decode_header(rsp: Response) -> InodeHeader:
    check(rsp)
    data = rsp.payload
    if len(data) < HEADER_READ:
        raise ProtocolError(f"inode header read returned {len(data)} bytes")
    head = bytes(data[:SD_INODE_HEADER_SIZE])  # a usage read carries slots after it
    return InodeHeader.decode(head + bytes(SD_INODE_HEADER_SIZE - len(head)))


def read_header(conn: Connection, vid: int) -> InodeHeader:
    return decode_header(conn.call(header_request(vid)))


def resolve(conn: Connection, name: str | bytes, tag: str | bytes = b"",
            snapid: int = 0) -> InodeHeader:
    """Lookup + header read (2 round trips)."""
    return read_header(conn, lookup(conn, name, tag, snapid).vdi_id)


def slot_requests(vid: int, first: int, count: int) -> list[Request]:
    oid = vid_to_vdi_oid(vid)
    reqs = []
    for start in range(first, first + count, SLOT_BATCH):
        n = min(SLOT_BATCH, first + count - start)
        reqs.append(rq.read_obj(oid, slot_offset(start), 4 * n, flags=Flag.DIRECT))
    return reqs


def read_slots(conn: Connection, vid: int, first: int, count: int,
               window: int = 16) -> list[int]:
    """data_vdi_id[first:first+count] (no request when count is 0)."""
    slots: list[int] = []
    for rsp in pipeline(conn, slot_requests(vid, first, count), window):
        slots.extend(decode_slots(rsp.payload))
    return slots


def cluster_default_shift(conn: Connection) -> int:
    rsp = check(conn.call(Request(Opcode.GET_CLUSTER_DEFAULT)))
    body = rsp.body
    if not isinstance(body, ClusterDefaultResponse):
        raise ProtocolError(f"a {type(body).__name__} where GET_CLUSTER_DEFAULT's belongs")
    return body.block_size_shift


# -- create / snapshot / clone / resize / delete -----------------------------


def new_vdi(conn: Connection, request: Request) -> int:
    return vdi_body(check(conn.call(request))).vdi_id


def write_tag(conn: Connection, hdr: InodeHeader, tag: bytes) -> None:
    """dog's snapshot preparation: the 256-byte tag field of the working inode."""
    field = pad_field(tag, TAG_FIELD)
    check(conn.call(rq.write_obj(vid_to_vdi_oid(hdr.vdi_id), OFFSET_TAG, field,
                                 copies=hdr.nr_copies, copy_policy=hdr.copy_policy)))


def write_size(conn: Connection, hdr: InodeHeader, new_size: int) -> None:
    """Resize: rewrite only the 8-byte vdi_size field (dog rewrites 4664 bytes)."""
    check(conn.call(rq.write_obj(vid_to_vdi_oid(hdr.vdi_id), OFFSET_VDI_SIZE,
                                 new_size.to_bytes(8, "little"), copies=hdr.nr_copies,
                                 copy_policy=hdr.copy_policy, flags=Flag.DIRECT)))


def slot_runs(slots: Sequence[int], *, changed: Sequence[bool] | None = None,
              gap: int = GAP_MERGE) -> list[tuple[int, int]]:
    """(start, end) index runs covering the selected slots; runs separated by at
    most ``gap`` unselected *zero* slots are merged (rewriting a zero slot with
    zero changes nothing on the server).  Default selection: non-zero slots."""
    chosen = [bool(s) for s in slots] if changed is None else list(changed)
    runs: list[tuple[int, int]] = []
    i, n = 0, len(slots)
    while i < n:
        if not chosen[i]:
            i += 1
            continue
        start = end = i
        j = i + 1
        while j < n:
            if chosen[j]:
                end = j
                j += 1
                continue
            k = j
            while k < n and not chosen[k] and slots[k] == 0 and k - end <= gap:
                k += 1
            if k < n and chosen[k] and k - end <= gap + 1:
                j = k
                continue
            break
        runs.append((start, end + 1))
        i = end + 1
    return runs


def slot_write_requests(hdr: InodeHeader, base_idx: int, values: Sequence[int],
                        runs: Iterable[tuple[int, int]], flags: int = 0) -> list[Request]:
    oid = vid_to_vdi_oid(hdr.vdi_id)
    reqs = []
    for start, end in runs:
        for s in range(start, end, SLOT_BATCH):
            e = min(end, s + SLOT_BATCH)
            payload = b"".join(v.to_bytes(4, "little") for v in values[s:e])
            reqs.append(rq.write_obj(oid, slot_offset(base_idx + s), payload,
                                     copies=hdr.nr_copies, copy_policy=hdr.copy_policy,
                                     flags=flags))
    return reqs


def clear_slots(conn: Connection, hdr: InodeHeader, window: int = 16) -> int:
    """Zero every non-zero slot the VDI's size covers (owned and shared), so
    DEL_VDI really deletes it and the references are dropped (§12.9).

    A hyper VDI's index is left as it is: sheep walks it on DEL_VDI to
    remove the VDI's own data objects (dog zeroes it like slots, which makes
    a sheep 1.0 node abort in traverse_btree: depth 0)."""
    if hdr.store_policy:
        return 0
    count = hdr.count_data_objs
    slots = read_slots(conn, hdr.vdi_id, 0, count, window)
    runs = slot_runs(slots)
    zeros = [0] * count
    pipeline(conn, slot_write_requests(hdr, 0, zeros, runs, flags=Flag.DIRECT), window)
    return sum(1 for s in slots if s)


def del_vdi(conn: Connection, name: str | bytes, tag: str | bytes = b"",
            snapid: int = 0) -> int:
    return vdi_body(check(conn.call(rq.del_vdi(name, tag, snapid)))).vdi_id


# -- listing -----------------------------------------------------------------


def live_inodes(rsps: Iterable[Response]) -> Iterator[tuple[InodeHeader, Response]]:
    """(header, reply) of each inode read among ``rsps`` that is live: a
    missing inode (its bit set but the inode gone: a recycled family) and a
    deleted one are skipped, as dog skips them."""
    for rsp in rsps:
        if rsp.result == Result.NO_OBJ:
            continue
        hdr = decode_header(rsp)
        if not hdr.is_deleted:
            yield hdr, rsp


def live_headers(conn: Connection, vids: Iterable[int], window: int) -> list[InodeHeader]:
    """Headers of ``vids`` (pipelined, at least HEADER_WINDOW in flight),
    skipping missing and deleted inodes."""
    rsps = pipeline(conn, (header_request(vid) for vid in vids), max(window, HEADER_WINDOW),
                    raise_errors=False)
    return [hdr for hdr, _ in live_inodes(rsps)]


def family_candidates(in_use: VidBitmap, deleted: VidBitmap, start: int,
                      cluster_flags: int | None) -> list[int]:
    """``iter_family_candidates`` as a list."""
    return list(iter_family_candidates(in_use, deleted, start, cluster_flags))


def iter_family_candidates(in_use: VidBitmap, deleted: VidBitmap, start: int,
                           cluster_flags: int | None) -> Iterator[int]:
    """The vids that can hold a VDI whose name hashes to ``start``.

    Without RECYCLE_VID every VDI of a name is created on its probe chain
    (§8.3): from ``start`` up to the first clear in-use bit, wrapping from
    2^24 - 1 to 1, and in-use bits are never cleared, so the chain keeps the
    whole family.  A recycling cluster (or unknown flags) places vids anywhere:
    then every live vid is a candidate.  Deleted vids are left out as in
    ``list_vdis``.  Lazy, so that a garbage bitmap of 2^24 set bits costs
    only what the call's deadline lets it send."""
    if cluster_flags is None or cluster_flags & ClusterFlag.RECYCLE_VID:
        yield from (vid for vid in in_use if vid not in deleted)
        return
    vid = start
    while vid in in_use:
        if vid not in deleted:
            yield vid
        vid = vid + 1 if vid + 1 < SD_NR_VDIS else 1
        if vid == start:
            break


CHAIN_READ_LIMIT = 4096  # longer spans to the working VDI fall back to the bitmaps


def chain_through(start: int, last: int, limit: int = CHAIN_READ_LIMIT) -> list[int] | None:
    """The probe chain's vids from ``start`` to ``last`` inclusive, wrapping
    from 2^24 - 1 to 1 (§8.3); None, without building it, when it is longer
    than ``limit``.  ``last`` comes from the server: outside the 24-bit vid
    space it is a ProtocolError."""
    if not 0 < last < SD_NR_VDIS:
        raise ProtocolError(f"the server named VDI id {last:#x}, outside 1..{SD_NR_VDIS - 1:#x}")
    span = last - start + 1 if last >= start else SD_NR_VDIS - start + last
    if span > limit:
        return None
    if last >= start:
        return list(range(start, last + 1))
    return list(range(start, SD_NR_VDIS)) + list(range(1, last + 1))


def family_vids(conn: Connection, name: bytes, flags: int | None,
                working_vid: int | None) -> Iterable[int]:
    """The vids to read for every VDI named ``name``: the probe chain up to the
    working VDI when there is one on a cluster that does not recycle vids,
    else the candidates the two bitmaps give (family_candidates)."""
    start = sd_hash_vdi(name)
    if working_vid is not None and flags is not None \
            and not flags & ClusterFlag.RECYCLE_VID:
        vids = chain_through(start, working_vid)
        if vids is not None:
            return vids
    in_use_rsp, deleted_rsp = pipeline(conn, [rq.read_vdis(), rq.read_del_vdis()], 2)
    return iter_family_candidates(VidBitmap(in_use_rsp.payload),
                                  VidBitmap(deleted_rsp.payload), start, flags)


def cluster_flags(rsp: Response) -> int | None:
    """The cluster flags out of a ``stat_cluster_flags`` reply (None: no record)."""
    check(rsp)
    return EpochLog.decode(rsp.payload, 0).flags if rsp.payload else None


def found_vid(rsp: Response) -> int | None:
    """A lookup's vid, None for NO_VDI / NO_TAG; other errors raise."""
    if rsp.result in (Result.NO_VDI, Result.NO_TAG):
        return None
    return vdi_body(check(rsp)).vdi_id


def family_of(headers: Iterable[InodeHeader], name: bytes) -> list[VdiInfo]:
    return [VdiInfo.from_header(h) for h in headers if h.name == name]


def list_family(conn: Connection, name: bytes, window: int = 16) -> list[VdiInfo]:
    """Every live VDI (working, snapshots) named ``name``, reading only the
    headers of its probe chain instead of every inode of the cluster.

    Without RECYCLE_VID a VDI of the name lies on its chain at or before the
    name's working VDI: a snapshot keeps its vid while the new working VDI
    takes the chain's next free one, and a name created again (after its
    working VDI was deleted, or by rollback) lands past every earlier vid.  So
    when the lookup finds a working VDI, the headers from the chain's start up
    to it are all that is read (no 2 x 2 MiB bitmaps); without one, or on a
    recycling cluster, the bitmaps give the candidates (family_vids)."""
    stat, found = pipeline(conn, [rq.stat_cluster_flags(), rq.get_vdi_info(name)], 2,
                           raise_errors=False)
    flags = cluster_flags(stat)
    vids = family_vids(conn, name, flags, found_vid(found))
    return family_of(live_headers(conn, vids, window), name)


def list_vdis(conn: Connection, window: int = 16, *, with_usage: bool = False,
              index_vids: Callable[[Connection, InodeHeader], list[int]] | None = None
              ) -> list[VdiInfo]:
    """Every live VDI; ``with_usage`` adds used/shared space from the slots, and
    from ``index_vids`` (the vids of a hyper VDI's B-tree, client/hyper.py,
    which builds on this module) for hyper VDIs."""
    in_use_rsp, deleted_rsp = pipeline(conn, [rq.read_vdis(), rq.read_del_vdis()], 2)
    in_use = VidBitmap(in_use_rsp.payload)
    deleted = VidBitmap(deleted_rsp.payload)
    vids = (vid for vid in in_use if vid not in deleted)
    if not with_usage:
        return [VdiInfo.from_header(h) for h in live_headers(conn, vids, window)]
    # one read per VDI of its header and first USAGE_PREFIX_SLOTS slots (dog
    # reads them in two), then in one pipeline the rest of any longer range
    wide = max(window, HEADER_WINDOW)
    inodes: list[tuple[InodeHeader, tuple[int, ...]]] = []
    for hdr, rsp in live_inodes(pipeline(conn, (rq.read_obj(vid_to_vdi_oid(vid), 0, USAGE_READ,
                                                            flags=Flag.DIRECT) for vid in vids),
                                         wide, raise_errors=False)):
        got = rsp.payload[SD_INODE_HEADER_SIZE:USAGE_READ]
        n = 0 if hdr.store_policy else min(hdr.count_data_objs, len(got) // 4)
        inodes.append((hdr, decode_slots(got[:4 * n])))
    rest = [[] if hdr.store_policy else
            slot_requests(hdr.vdi_id, len(head), hdr.count_data_objs - len(head))
            for hdr, head in inodes]
    rsps = iter(pipeline(conn, (req for reqs in rest for req in reqs), wide))
    out = []
    for (hdr, head), reqs in zip(inodes, rest, strict=True):
        if hdr.store_policy:  # a B-tree, not slots
            if index_vids is None:
                raise InvalidInput(f"{hdr.name!r} is a hyper volume: its usage needs "
                                   "its B-tree (index_vids)")
            slots: Sequence[int] = index_vids(conn, hdr)
        else:
            slots = [*head, *(s for _ in reqs for s in decode_slots(next(rsps).payload))]
        own = sum(1 for s in slots if s == hdr.vdi_id)
        other = sum(1 for s in slots if s and s != hdr.vdi_id)
        out.append(VdiInfo.from_header(hdr, used=own * hdr.object_size,
                                       shared=other * hdr.object_size))
    return out


# -- attributes --------------------------------------------------------------


def attr_request(name: bytes, key: bytes, value: bytes = b"", *, flags: int = 0,
                 snapid: int = 0) -> Request:
    """GET_VDI_ATTR for the attribute ``key`` of ``name`` (tag "", snap_id 0).
    ``snapid`` only changes the VDI *lookup* (through that snapshot of the
    name), not which attribute is meant: it reaches the name's attributes while
    no working VDI exists (protocol §8.3, §9.7)."""
    if not key or len(key) > 255 or b"\0" in key:
        raise InvalidInput("an attribute key is 1..255 bytes without NUL")
    if len(value) > 65536:
        raise InvalidInput(f"an attribute value is at most 65536 bytes, got {len(value)}")
    attr = VdiAttr(name=name, key=key, value=value, value_len=len(value))
    return rq.get_vdi_attr(attr, flags=flags, snapid=snapid)


def get_attr(conn: Connection, name: bytes, key: bytes, snapid: int = 0) -> bytes | None:
    try:
        body = vdi_body(check(conn.call(attr_request(name, key, snapid=snapid))))
    except NoObject:
        return None
    rsp = conn.call(rq.read_obj(vid_to_attr_oid(body.vdi_id, body.attr_id), 0,
                                VdiAttr.SIZE, flags=Flag.DIRECT))
    if rsp.result == Result.NO_OBJ:
        return None
    return VdiAttr.decode(check(rsp).payload).value
