"""The raw request floor of each benchmark job: the least request sequence a
client must send for the same job, on one raw connection, pipelined wherever
no request depends on another's answer, built with our sans-I/O codec
(``client/requests.py`` builders, ``protocol/``), with no validation, no
retries, no pool and no result objects.

The sequences follow what the job needs on the wire (protocol reference §12):
a lookup (GET_VDI_INFO) whenever the job starts from a name; the dependent
writes in order (a snapshot's tag before its NEW_VDI); deletes read the
inode's slots and zero the non-zero ones before DEL_VDI (§12.9), the data
path sends one object request per object with ``window`` in flight.  What a
floor knows that a real caller would not (the job's size, the cluster's
copies) saves no request.  Each function uses the connection it is given and
leaves nothing in flight.
"""

from __future__ import annotations

from collections.abc import Iterable

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.client.vdi import (
    HEADER_READ,
    HEADER_WINDOW,
    USAGE_READ,
    chain_through,
    check,
    vdi_body,
)
from sheepdog_backend.protocol.bitmap import VidBitmap
from sheepdog_backend.protocol.constants import Flag
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.inode import OFFSET_TAG, OFFSET_VDI_SIZE, decode_slots, slot_offset
from sheepdog_backend.protocol.naming import sd_hash_vdi
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid

SHIFT = 22
OBJ = 1 << SHIFT


def pipeline(conn: Connection, requests: Iterable[Request], window: int) -> list[Response]:
    """Send with at most ``window`` in flight; check every response; return
    them in the order sent."""
    order: dict[int, int] = {}
    got: dict[int, Response] = {}
    for req in requests:
        if conn.inflight >= window:
            rsp = check(conn.wait_any())
            got[order[rsp.id]] = rsp
        order[conn.send(req)] = len(order)
    while conn.inflight:
        rsp = check(conn.wait_any())
        got[order[rsp.id]] = rsp
    return [got[i] for i in range(len(got))]


def lookup(conn: Connection, name: str, tag: str = "") -> int:
    return vdi_body(check(conn.call(rq.get_vdi_info(name, tag)))).vdi_id


def create(conn: Connection, name: str, size: int, copies: int) -> int:
    return vdi_body(check(conn.call(rq.new_vdi(name, size, copies=copies,
                                               block_size_shift=SHIFT)))).vdi_id


def snapshot(conn: Connection, name: str, tag: str, size: int, copies: int) -> None:
    vid = lookup(conn, name)
    field = tag.encode() + bytes(256 - len(tag))
    check(conn.call(rq.write_obj(vid_to_vdi_oid(vid), OFFSET_TAG, field, copies=copies)))
    check(conn.call(rq.new_vdi(name, size, base_vid=vid, snapshot=True, copies=copies,
                               block_size_shift=SHIFT)))


def clone(conn: Connection, name: str, tag: str, dst: str, size: int, copies: int) -> None:
    base = lookup(conn, name, tag)
    check(conn.call(rq.new_vdi(dst, size, base_vid=base, copies=copies,
                               block_size_shift=SHIFT)))


def resize(conn: Connection, name: str, new_size: int, copies: int) -> None:
    vid = lookup(conn, name)
    check(conn.call(rq.write_obj(vid_to_vdi_oid(vid), OFFSET_VDI_SIZE,
                                 new_size.to_bytes(8, "little"), copies=copies,
                                 flags=Flag.DIRECT)))


def show(conn: Connection, name: str, window: int) -> int:
    """The volume and its snapshots: the lookup with the cluster flags (a
    recycling cluster needs the bitmaps) in one trip, then the headers of the
    name's probe chain up to its working VDI (see client.vdi.list_family).
    Returns headers read."""
    _flags, info = pipeline(conn, [rq.stat_cluster_flags(), rq.get_vdi_info(name)], 2)
    vids = chain_through(sd_hash_vdi(name.encode()), vdi_body(info).vdi_id)
    return len(pipeline(conn, (rq.read_obj(vid_to_vdi_oid(v), 0, HEADER_READ,
                                           flags=Flag.DIRECT) for v in vids),
                        max(window, HEADER_WINDOW)))


def delete(conn: Connection, name: str, size: int, copies: int, tag: str = "") -> None:
    """Lookup; the inode's slots; zero the non-zero ones (one write per run);
    DEL_VDI."""
    vid = lookup(conn, name, tag)
    oid = vid_to_vdi_oid(vid)
    count = -(-size // OBJ)
    slots = decode_slots(check(conn.call(rq.read_obj(oid, slot_offset(0), 4 * count,
                                                     flags=Flag.DIRECT))).payload)
    runs: list[tuple[int, int]] = []
    for i, s in enumerate(slots):
        if s:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
    pipeline(conn, (rq.write_obj(oid, slot_offset(a), bytes(4 * (b - a)), copies=copies,
                                 flags=Flag.DIRECT) for a, b in runs), 16)
    check(conn.call(rq.del_vdi(name, tag)))


def write_volume(conn: Connection, name: str, data: bytes, copies: int, window: int) -> None:
    """Import into an empty volume: lookup, one CREATE_AND_WRITE_OBJ per
    object (``window`` in flight), then the created slots in one write."""
    vid = lookup(conn, name)
    n = -(-len(data) // OBJ)
    view = memoryview(data)
    pipeline(conn, (rq.create_and_write_obj(vid_to_data_oid(vid, i), 0,
                                            bytes(view[i * OBJ:(i + 1) * OBJ]), copies=copies)
                    for i in range(n)), window)
    slots = b"".join(vid.to_bytes(4, "little") for _ in range(n))
    check(conn.call(rq.write_obj(vid_to_vdi_oid(vid), slot_offset(0), slots, copies=copies)))


def read_volume(conn: Connection, name: str, size: int, window: int) -> int:
    """Export: lookup, the slots, READ_OBJ of each allocated object (payloads
    dropped, holes not even visited).  Returns the bytes read."""
    vid = lookup(conn, name)
    count = -(-size // OBJ)
    slots = decode_slots(check(conn.call(rq.read_obj(vid_to_vdi_oid(vid), slot_offset(0),
                                                     4 * count, flags=Flag.DIRECT))).payload)
    rsps = pipeline(conn, (rq.read_obj(vid_to_data_oid(s, i), 0, OBJ)
                           for i, s in enumerate(slots) if s), window)
    return sum(len(r.payload) for r in rsps)


def list_all(conn: Connection, window: int) -> int:
    """What ``dog vdi list`` shows, names, sizes and used/shared space: both
    bitmaps, then for every live vid one read of its inode header and the
    slots a volume of up to 1 GiB (4 MiB objects) covers, 5,688-byte replies
    with at least HEADER_WINDOW in flight (dog reads header and slots in two
    requests; no VDI of this job is larger, so no slot read follows).
    Returns inodes read."""
    in_use, deleted = (VidBitmap(r.payload) for r in
                       pipeline(conn, [rq.read_vdis(), rq.read_del_vdis()], 2))
    return len(pipeline(conn, (rq.read_obj(vid_to_vdi_oid(v), 0, USAGE_READ,
                                           flags=Flag.DIRECT)
                               for v in in_use if v not in deleted),
                        max(window, HEADER_WINDOW)))
