"""A survey of VDI names: for each, its working VDI, one snapshot,
attributes and family, in as few round trips as the protocol allows.

How it works: a driver operation starts by asking several independent
questions about one name - does it have a working VDI, a snapshot with this
tag, a pending revert record, an export record, which snapshots.  Asked one
call at a time they cost a round trip each, and two of them cost more: a
GET_VDI_ATTR is a *cluster* operation (sheep serialises it with NEW_VDI and
DEL_VDI through its cluster driver), and the family of a name without a
working VDI needs the two 2 MiB vid bitmaps.  ``survey`` asks them at once on
one connection:

* trip 1, pipelined: GET_VDI_INFO of the name (unless the caller will not
  need it: a create sends NEW_VDI and learns from VDI_EXIST) and of name +
  tag, the attribute objects of each key read directly, and the cluster flags
  when the family is wanted;
* trip 2, pipelined: the inode headers of what trip 1 found, and the name's
  probe chain when the family is wanted (client/vdi.py ``family_vids``; the
  bitmaps only without a working VDI or on a recycling cluster).

Several names (``Ask`` each; a clone asks about its source snapshot and its
new name) share the same two trips.

Attributes are read as sheep's ``get_vdi_attr`` reads them (protocol §9.7):
the object ``vid_to_attr_oid(sd_hash_vdi(name), attr_id)`` where ``attr_id``
hashes name, tag "", snap_id 0 and key; a non-exclusive set always writes
there, a delete clears the record's name, and a lookup probes on
(``attr_id + 1`` ...) past records that do not match until an object is
missing.  The first two probes ride trip 1; further ones (only after
collisions) follow one at a time.  Unlike GET_VDI_ATTR, a direct read needs
no VDI of the name to exist, so it answers also while the name has no working
VDI (a revert cut off half-way) without first listing its snapshots.

No state: every call reads afresh.  Retries are the caller's (client.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client import vdi as ops
from sheepdog_backend.client.models import VdiInfo, decode_text, encode_text
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.protocol.constants import Flag, Result
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.naming import attr_id, sd_hash_vdi, validate_name, validate_tag
from sheepdog_backend.protocol.oid import vid_to_attr_oid
from sheepdog_backend.protocol.structs import VdiAttr

ATTR_PROBES_PIPELINED = 2  # the record's own slot, and the next (after a delete)
ATTR_PROBE_LIMIT = 256  # sheep probes all 2^32 ids; a longer run is not ours


@dataclass(frozen=True)
class Ask:
    """The questions about one name (``client.surveys`` takes several)."""

    name: str
    tag: str = ""  # a snapshot to look up ("": none)
    keys: Sequence[str] = ()  # attributes of the name to read
    family: bool = False  # every live VDI of the name
    look: bool = True  # False: do not look the working VDI up (Survey.working is None)

    def encoded(self) -> Question:
        """The validated wire form (InvalidInput for a bad name, tag or key)."""
        raw = validate_name(encode_text(self.name))
        keys = [encode_text(k) for k in self.keys]
        for key in keys:
            ops.attr_request(raw, key)  # validates the key
        return Question(raw, validate_tag(encode_text(self.tag)), keys, self.family, self.look)


@dataclass(frozen=True)
class Question:
    """An Ask in its validated wire form."""

    name: bytes
    tag: bytes
    keys: list[bytes]
    family: bool
    look: bool


@dataclass(frozen=True)
class Survey:
    """What one survey found about a name."""

    working: VdiInfo | None  # None also when the survey was asked not to look
    tagged: VdiInfo | None  # the snapshot the tag names (None: no such snapshot)
    attrs: dict[str, bytes | None] = field(default_factory=dict)  # by key
    family: list[VdiInfo] | None = None  # every live VDI of the name, when asked

    @property
    def snapshots(self) -> list[VdiInfo]:
        """The snapshots of the family, oldest first ([] when not asked)."""
        return sorted((v for v in self.family or [] if v.is_snapshot),
                      key=lambda v: v.snap_id)


def attr_read(name: bytes, key: bytes, aid: int) -> Request:
    return rq.read_obj(vid_to_attr_oid(sd_hash_vdi(name), aid & 0xFFFFFFFF), 0,
                       VdiAttr.SIZE, flags=Flag.DIRECT)


def _probe(rsp: Response, name: bytes, key: bytes) -> tuple[bool, bytes | None]:
    """(done, value) of one attribute probe: done with None when the object
    is missing, done with the value when the record matches."""
    if rsp.result == Result.NO_OBJ:
        return True, None
    attr = VdiAttr.decode(ops.check(rsp).payload)
    if attr.name == name and attr.tag == b"" and attr.snap_id == 0 and attr.key == key:
        return True, attr.value
    return False, None


def _attr_value(conn: Connection, name: bytes, key: bytes,
                first: Sequence[Response]) -> bytes | None:
    base = attr_id(name, b"", 0, key)
    for n in range(ATTR_PROBE_LIMIT):
        rsp = first[n] if n < len(first) else conn.call(attr_read(name, key, base + n))
        done, value = _probe(rsp, name, key)
        if done:
            return value
    # a run this long is no record of ours: ask sheep (it needs a VDI lookup)
    return ops.get_attr(conn, name, key)


@dataclass
class _Trip1:
    """What trip 1's replies said about one ask."""

    working: int | None = None
    tagged: int | None = None
    attrs: dict[str, bytes | None] = field(default_factory=dict)
    flags: Response | None = None


def _trip1_requests(q: Question) -> list[Request]:
    reqs = [rq.get_vdi_info(q.name)] if q.look else []
    if q.tag:
        reqs.append(rq.get_vdi_info(q.name, q.tag))
    for key in q.keys:
        base = attr_id(q.name, b"", 0, key)
        reqs += [attr_read(q.name, key, base + n) for n in range(ATTR_PROBES_PIPELINED)]
    if q.family:
        reqs.append(rq.stat_cluster_flags())
    return reqs


def _trip1_answers(conn: Connection, q: Question, rsps: Sequence[Response], at: int) -> _Trip1:
    out = _Trip1()
    if q.look:
        out.working = ops.found_vid(rsps[at])
        at += 1
    if q.tag:
        out.tagged = ops.found_vid(rsps[at])
        at += 1
    for key in q.keys:
        out.attrs[decode_text(key)] = _attr_value(conn, q.name, key,
                                                  rsps[at:at + ATTR_PROBES_PIPELINED])
        at += ATTR_PROBES_PIPELINED
    if q.family:
        out.flags = rsps[at]
    return out


def survey_all(conn: Connection, asks: Sequence[Question], *, window: int = 16) -> list[Survey]:
    """Survey each of ``asks`` (from ``Ask.encoded``), all in the same two
    round trips."""
    batches = [_trip1_requests(q) for q in asks]
    reqs = [r for batch in batches for r in batch]
    rsps = ops.pipeline(conn, reqs, len(reqs), raise_errors=False)
    trip1: list[_Trip1] = []
    at = 0
    for q, batch in zip(asks, batches, strict=True):
        trip1.append(_trip1_answers(conn, q, rsps, at))
        at += len(batch)
    vids: list[int] = []  # filled as the pipeline pulls from ``candidates``
    spans: list[tuple[int, int]] = []  # each ask's slice of ``vids``

    def candidates() -> Iterator[int]:
        """Each ask's found vids, then its family's others: lazily, so a
        garbage bitmap costs only what the call's deadline lets it send
        (vdi.iter_family_candidates)."""
        for q, t in zip(asks, trip1, strict=True):
            start = len(vids)
            found = [v for v in (t.working, t.tagged) if v is not None]
            vids.extend(found)
            yield from found
            if q.family and t.flags is not None:
                for vid in ops.family_vids(conn, q.name, ops.cluster_flags(t.flags), t.working):
                    if vid not in found:  # the working VDI is on its chain too
                        vids.append(vid)
                        yield vid
            spans.append((start, len(vids)))
    hrsps = ops.pipeline(conn, (ops.header_request(v) for v in candidates()),
                         max(window, ops.HEADER_WINDOW), raise_errors=False)
    return [_answer(q, t, vids[a:b], hrsps[a:b])
            for q, t, (a, b) in zip(asks, trip1, spans, strict=True)]


def _answer(q: Question, t: _Trip1, vids: list[int], hrsps: list[Response]) -> Survey:
    by_vid = dict(zip(vids, hrsps, strict=True))

    def info(vid: int | None) -> VdiInfo | None:
        return None if vid is None else VdiInfo.from_header(ops.decode_header(by_vid[vid]))
    members = (ops.family_of((hdr for hdr, _ in ops.live_inodes(hrsps)), q.name)
               if q.family else None)
    return Survey(info(t.working), info(t.tagged), t.attrs, members)
