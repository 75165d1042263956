"""Volume lease records on the cluster: keys, values and the requests that
take, read, renew and release them (one attempt each, on one connection).

How it works: sheep orders one primitive across the cluster, GET_VDI_ATTR
with CREAT|EXCL: of several exclusive creates of one attribute key exactly
one succeeds while a live record of that key exists (protocol §9.7).  A lease
on volume ``name`` is a sequence of such records, one per *generation*:

* the key of generation ``g`` is ``sheepdog-backend.lease.<h(name)>.<g>``
  (``h``: 32 hex digits of SHA-256); every record is an attribute of one
  cluster-wide VDI, ``ANCHOR`` (GET_VDI_ATTR needs a VDI to look up, and a
  volume being created has none yet), made by the first take that finds it
  missing;
* generations are taken in order, ``g + 1`` only by a taker that saw ``g``
  (released, or expired), so the generations that exist are 1..top: the
  current one is the highest (``find_top``);
* a record's value is ``VALUE_SIZE`` bytes: JSON (owner, operation,
  duration, a renewal counter) padded with spaces, which a renewal rewrites in
  place with one WRITE_OBJ of the record's object - no cluster operation -
  and, in its last ``FLAG_SIZE`` bytes, a flag a waiting process sets
  (``want``) so that a holder keeping the lease for reuse releases it at once;
* release deletes the record: sheep keeps the object and clears the name's
  first byte, so a released generation still *exists* (``Chain.exists``) and
  the take of the next one can be judged;
* a taker whose view was stale (it saw ``g`` free long ago) can still create
  ``g + 1`` after another holder released it, since an exclusive create skips
  deleted records.  ``take`` therefore succeeds only for the *first* record of
  its generation: when the create landed past the key's first slot, the slots
  before it are read, and an earlier record of the same key (live or deleted)
  means the generation was used already: the new record is deleted again.

Records are read directly (READ_OBJ of ``vid_to_attr_oid(hash(ANCHOR),
slot)``), probing from the key's slot past other keys' objects as sheep does:
cheap gateway reads, not cluster operations.

No state: retries and the lease's bookkeeping are client/lease.py's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client import vdi as ops
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.exception import InvalidInput, NoObject, NoVdi, VdiExists
from sheepdog_backend.protocol.constants import Flag, Result
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.naming import attr_id, pad_field, sd_hash_vdi
from sheepdog_backend.protocol.oid import vid_to_attr_oid
from sheepdog_backend.protocol.structs import VDI_ATTR_HEAD, VdiAttrHead

ANCHOR = ".sheepdog-backend-leases"  # the VDI whose attributes hold every lease
ANCHOR_SIZE = 4 << 20  # one object's worth, never written
KEY_PREFIX = "sheepdog-backend.lease."
VALUE_SIZE = 1024
FLAG_SIZE = 16  # the end of the value: "wanted" when another process waits
WANTED = b"wanted".ljust(FLAG_SIZE)
_DOC_SIZE = VALUE_SIZE - FLAG_SIZE
PROBES = 2  # slots read per key in one trip: its own, and the next
PROBE_LIMIT = 256  # a longer run of other objects is no chain of ours
GALLOP_FIRST = (1, 2, 4, 8)  # generation offsets find_top reads first
GALLOP_REST = tuple(1 << i for i in range(4, 25))  # then, when all of those exist
SPLIT = 15  # generations probed per trip while narrowing find_top's range

_ANCHOR = ANCHOR.encode()
_HASH_VID = sd_hash_vdi(_ANCHOR)
_NAME_FIELD = pad_field(_ANCHOR, 256)
_READ = VDI_ATTR_HEAD.size + VALUE_SIZE


def digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", errors="surrogateescape")).hexdigest()[:32]


def key(name: str, gen: int) -> bytes:
    """The attribute key of generation ``gen`` of ``name``'s lease."""
    return f"{KEY_PREFIX}{digest(name)}.{gen}".encode()


def base_slot(k: bytes) -> int:
    return attr_id(_ANCHOR, b"", 0, k)


def slot_oid(slot: int) -> int:
    return vid_to_attr_oid(_HASH_VID, slot & 0xFFFFFFFF)


def encode_value(doc: dict[str, Any]) -> bytes:
    """``doc`` as JSON padded to VALUE_SIZE bytes, the flag clear;
    InvalidInput when longer."""
    raw = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    data = raw.encode("utf-8", errors="surrogateescape")
    if len(data) > _DOC_SIZE:
        raise InvalidInput(f"a lease record holds {_DOC_SIZE} bytes, this one needs "
                           f"{len(data)}")
    return data + b" " * (VALUE_SIZE - len(data))


def decode_value(raw: bytes) -> dict[str, Any]:
    """The JSON of a record's value; {} when it is not readable JSON."""
    try:
        doc = json.loads(raw[:_DOC_SIZE].decode("utf-8", errors="surrogateescape"))
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass(frozen=True)
class Record:
    """One record of a lease generation, as read from its object."""

    slot: int
    live: bool  # False: released (deleted; the object and value remain)
    value: bytes

    @property
    def fields(self) -> dict[str, Any]:
        return decode_value(self.value)

    @property
    def state(self) -> bytes:
        """What its holder writes (a renewal changes it); not the flag."""
        return self.value[:_DOC_SIZE]


@dataclass(frozen=True)
class Chain:
    """Every record of one generation's key, in probe order."""

    records: tuple[Record, ...] = ()

    @property
    def exists(self) -> bool:
        """The generation was taken (it may since have been released)."""
        return bool(self.records)

    @property
    def live(self) -> Record | None:
        """The live record (at most one exists), or None: released or never taken."""
        return next((r for r in self.records if r.live), None)


def _ours(head: VdiAttrHead, k: bytes) -> bool:
    """A record (live or deleted) of key ``k`` on the anchor."""
    return (head.name_field[1:] == _NAME_FIELD[1:]
            and head.name_field[:1] in (b"\0", _NAME_FIELD[:1])
            and head.tag == b"" and head.snap_id == 0 and head.key == k)


def _read(slot: int) -> Request:
    return rq.read_obj(slot_oid(slot), 0, _READ, flags=Flag.DIRECT)


def _step(rsp: Response, slot: int, k: bytes) -> tuple[bool, Record | None]:
    """(chain ends here, this slot's record of ``k``) from one probe's reply."""
    if rsp.result == Result.NO_OBJ:
        return True, None
    head = VdiAttrHead.decode(ops.check(rsp).payload)
    if not _ours(head, k):
        return False, None
    return False, Record(slot & 0xFFFFFFFF, not head.deleted, head.value)


def _chain(conn: Connection, k: bytes, first: Sequence[Response], *, stop_at: int | None = None
           ) -> Chain:
    """The records of ``k``: probes its slots from the first (``first`` holds
    the replies already read) up to the first missing object, or up to slot
    ``stop_at`` (exclusive)."""
    base = base_slot(k)
    found: list[Record] = []
    for n in range(PROBE_LIMIT):
        slot = (base + n) & 0xFFFFFFFF
        if slot == stop_at:
            break
        rsp = first[n] if n < len(first) else conn.call(_read(slot))
        end, record = _step(rsp, slot, k)
        if end:
            break
        if record is not None:
            found.append(record)
    return Chain(tuple(found))


def read_chains(conn: Connection, keys: Iterable[bytes], probes: Sequence[int] | int = PROBES
                ) -> list[Chain]:
    """The chain of each key, its first ``probes`` slots (per key, or for all)
    of all keys in one trip."""
    ks = list(keys)
    counts = [probes] * len(ks) if isinstance(probes, int) else list(probes)
    reqs = [_read(base_slot(k) + n) for k, c in zip(ks, counts, strict=True) for n in range(c)]
    rsps = ops.pipeline(conn, reqs, max(len(reqs), 1), raise_errors=False)
    out, at = [], 0
    for k, c in zip(ks, counts, strict=True):
        out.append(_chain(conn, k, rsps[at:at + c]))
        at += c
    return out


def read_gens(conn: Connection, name: str, gens: Sequence[int],
              probes: Sequence[int] | int = PROBES) -> dict[int, Chain]:
    return dict(zip(gens, read_chains(conn, (key(name, g) for g in gens), probes),
                    strict=True))


def find_top(conn: Connection, name: str, start: int = 0) -> int:
    """The highest generation of ``name``'s lease that exists (0: none),
    ``start`` being one known to exist (or 0).  Generations exist as a prefix
    1..top: one trip reads start + 1, 2, 4 and 8, a second (only when all
    exist) start + 16 ... 2^24, then each further trip narrows the range
    between the highest found and the lowest missing sixteen-fold."""
    lo = start
    for offsets in (GALLOP_FIRST, GALLOP_REST):
        found = read_gens(conn, name, [lo + d for d in offsets], probes=1)
        missing = next((d for d in offsets if not found[lo + d].exists), None)
        if missing is not None:
            break
    else:
        raise InvalidInput(f"the lease of {name!r} has more than 2^24 generations")
    lo, hi = lo + missing // 2, lo + missing  # lo + missing // 2 exists (or is lo)
    while hi - lo > 1:
        step = max(1, (hi - lo) // (SPLIT + 1))
        points = list(range(lo + step, hi, step))[:SPLIT]
        found = read_gens(conn, name, points, probes=1)
        for g in points:
            if found[g].exists:
                lo = g
            else:
                hi = g
                break
    return lo


def create_anchor(conn: Connection) -> None:
    """The anchor VDI, unless it exists already."""
    try:
        ops.new_vdi(conn, rq.new_vdi(_ANCHOR, ANCHOR_SIZE))
    except VdiExists:
        pass


def _attr(conn: Connection, k: bytes, value: bytes, flags: int) -> Response:
    """GET_VDI_ATTR of ``k`` on the anchor, making the anchor when it is missing."""
    req = ops.attr_request(_ANCHOR, k, value, flags=flags)
    rsp = conn.call(req)
    if rsp.result == Result.NO_VDI:
        create_anchor(conn)
        rsp = conn.call(req)
    return rsp


def create(conn: Connection, k: bytes, value: bytes) -> tuple[int, int] | None:
    """Create a live record of ``k`` exclusively: (slot, copies), or None when
    a live record of ``k`` exists."""
    rsp = _attr(conn, k, value, Flag.CREAT | Flag.EXCL)
    if rsp.result == Result.VDI_EXIST:
        return None
    body = ops.vdi_body(ops.check(rsp))
    return body.attr_id & 0xFFFFFFFF, body.copies


def first_of_gen(conn: Connection, k: bytes, slot: int) -> bool:
    """True when no record of ``k`` precedes slot ``slot`` on its chain."""
    base = base_slot(k)
    if slot == base:
        return True
    before = (slot - base) & 0xFFFFFFFF
    rsps = ops.pipeline(conn, [_read(base + n) for n in range(min(before, PROBE_LIMIT))],
                        64, raise_errors=False)
    return not _chain(conn, k, rsps, stop_at=slot).exists


def delete_if(conn: Connection, k: bytes, value: bytes) -> bool:
    """Delete the live record of ``k`` when its value is ``value`` (a take
    whose reply was lost: the record is ours only if it says so)."""
    live = read_chains(conn, [k])[0].live
    return live is not None and live.value[:_DOC_SIZE] == value[:_DOC_SIZE] \
        and delete(conn, k)


def delete(conn: Connection, k: bytes) -> bool:
    """Delete the live record of ``k``; False when there was none."""
    try:
        ops.check(_attr(conn, k, b"", Flag.DEL))
    except NoObject:
        return False
    return True


def _write(conn: Connection, slot: int, copies: int, offset: int, data: bytes) -> None:
    try:
        ops.check(conn.call(rq.write_obj(slot_oid(slot), VDI_ATTR_HEAD.size + offset, data,
                                         copies=copies)))
    except NoObject:
        raise NoVdi(f"the lease record at attribute slot {slot:#x} is gone") from None


def rewrite(conn: Connection, slot: int, copies: int, value: bytes) -> None:
    """Write ``value`` (from ``encode_value``) over the record at ``slot``,
    all but the flag."""
    if len(value) != VALUE_SIZE:
        raise InvalidInput(f"a lease value is {VALUE_SIZE} bytes, got {len(value)}")
    _write(conn, slot, copies, 0, value[:_DOC_SIZE])


def want(conn: Connection, slot: int, copies: int = 0) -> None:
    """Set the flag of the record at ``slot``: another process waits for it."""
    _write(conn, slot, copies, _DOC_SIZE, WANTED)


def wanted(conn: Connection, slots: Sequence[int]) -> list[bool]:
    """For each record at ``slots``, whether its flag is set (one trip)."""
    reqs = [rq.read_obj(slot_oid(s), VDI_ATTR_HEAD.size + _DOC_SIZE, FLAG_SIZE,
                        flags=Flag.DIRECT) for s in slots]
    rsps = ops.pipeline(conn, reqs, max(len(reqs), 1), raise_errors=False)
    return [r.ok and bytes(r.payload) == WANTED for r in rsps]
