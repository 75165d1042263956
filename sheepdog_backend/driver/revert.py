"""Reverting a volume to a snapshot, with its intent recorded on the cluster.

How it works: Sheepdog reverts by replacing the working VDI - clear its slots,
delete it, create a new working VDI from the snapshot (``client.rollback_vdi``).
Cut off half-way, the volume would read zeros (slots cleared) or not exist
(deleted), and a ``create_volume`` of the same id would quietly make a blank
one.  So before the first destructive step the driver writes a *revert intent*
on the cluster, and every later operation on that volume (create included)
first calls ``settle(core, name)`` (or ``survey``, which also answers the
operation's own questions in the same round trips), which finishes a pending
revert:

* The record is a VDI attribute of the volume's *name* (key ``REVERT_KEY``,
  tag "", snap_id 0).  Sheepdog stores attributes at the hash vid of the name,
  identified by (name, tag, snap_id, key), not at the working VDI's vid: the
  record survives the deletion of the working VDI and a later working VDI of
  the same name sees it again.  GET_VDI_ATTR needs *some* VDI to look up:
  while the working VDI exists the plain lookup reaches the record; while it
  is gone (mid-revert) the lookup goes through a snapshot of the name (the
  header's snapid; the struct's tag/snap_id still name the record), and a
  revert always has its target snapshot.  (Protocol reference §8.3, §9.7.)
* The value (JSON) names the target snapshot (tag and vid), the working vid
  being replaced (``old_vid``) and the size the reverted volume must have.
* ``settle``: no record -> nothing to do.  Working VDI is ``old_vid`` (slots
  maybe cleared) or absent, and the snapshot still exists -> finish the
  rollback.  Working VDI with another vid -> the revert completed and only the
  record was left: drop it.  Target snapshot gone (deleted behind the driver's
  back) -> nothing can be finished: log, drop the record.
* The record is removed only after the new working VDI exists at its size.

Shared state: none here.  A revert, and finishing an interrupted one, hold
the volume's lock and lease (``core.hold``), so of several drivers - in one
process or many - that find the record, one finishes the revert and the
others then find it finished.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sheepdog_backend.client import Ask
from sheepdog_backend.driver.core import DriverCore
from sheepdog_backend.exception import (
    NoTag,
    NoVdi,
    SheepdogError,
    SnapshotNotFound,
    VolumeNotFound,
)

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.client import Survey, VdiInfo

LOG = logging.getLogger(__name__)
REVERT_KEY = "sheepdog-backend.revert-intent"


@dataclass(frozen=True)
class Intent:
    tag: str
    snap_vid: int
    old_vid: int  # 0: no working VDI existed when the revert started
    size: int

    def encode(self) -> bytes:
        return json.dumps({"v": 1, "tag": self.tag, "snap_vid": self.snap_vid,
                           "old_vid": self.old_vid, "size": self.size},
                          sort_keys=True).encode("utf-8", errors="surrogateescape")

    @classmethod
    def decode(cls, raw: bytes) -> Intent | None:
        try:
            doc = json.loads(raw.decode("utf-8", errors="surrogateescape"))
            intent = cls(str(doc["tag"]), int(doc["snap_vid"]), int(doc["old_vid"]),
                         int(doc["size"]))
        except (ValueError, KeyError, TypeError):
            return None
        return intent


def read_intent(core: DriverCore, name: str, working: VdiInfo | None) -> Intent | None:
    """The pending revert record of ``name`` (None when there is none)."""
    client = core.client
    if working is not None:
        raw = client.get_attr(name, REVERT_KEY)
    else:
        snaps = core.snapshots_of(name)
        if not snaps:
            return None  # no snapshot: no revert can be pending
        try:
            raw = client.get_attr(name, REVERT_KEY, snapid=snaps[-1].snap_id)
        except (NoVdi, NoTag):
            return None  # the snapshot went meanwhile
    if raw is None:
        return None
    intent = Intent.decode(raw)
    if intent is None:
        LOG.warning("volume %s: ignoring an unreadable revert record %r", name, raw[:80])
    return intent


def _drop_record(core: DriverCore, name: str, working: VdiInfo | None,
                 snap: VdiInfo | None) -> None:
    if working is not None:
        core.client.delete_attr(name, REVERT_KEY)
    elif snap is not None:
        core.client.delete_attr(name, REVERT_KEY, snapid=snap.snap_id)


def surveys(core: DriverCore, ask: Ask, *others: Ask) -> list[Survey]:
    """``settle`` ``ask.name``, returning the client's surveys of ``ask`` and
    ``others`` afterwards (one pipelined survey: client/survey.py).

    The survey reads the revert record directly in the same round trip as the
    lookup: no record, the usual case, means nothing to finish and no further
    request; a record takes ``settle``'s full path, then the names are
    surveyed again."""
    first = replace(ask, keys=(REVERT_KEY, *ask.keys))
    with core.volume_lock(ask.name):
        found = core.client.surveys([first, *others])
        if found[0].attrs[REVERT_KEY] is None:
            return found
    with core.hold(ask.name, op="finish a revert"):
        _settle(core, ask.name)
        return core.client.surveys([first, *others])


def survey(core: DriverCore, name: str, *, tag: str = "", keys: Sequence[str] = (),
           family: bool = False, look: bool = True) -> Survey:
    """``surveys`` of one name (``look`` False: its working VDI is not looked
    up and ``Survey.working`` is None)."""
    return surveys(core, Ask(name, tag, keys, family, look))[0]


def settle(core: DriverCore, name: str) -> VdiInfo | None:
    """Finish an interrupted revert of ``name`` if one is recorded; return the
    working VDI afterwards (None when there is none)."""
    return survey(core, name).working


def _settle(core: DriverCore, name: str) -> VdiInfo | None:
    """Finish the revert the record asks for (call holding ``name``)."""
    client = core.client
    working = client.find_vdi(name)
    intent = read_intent(core, name, working)
    if intent is None:
        return working
    if working is not None and working.vid != intent.old_vid:
        LOG.info("volume %s: revert to %s had completed; dropping its record",
                 name, intent.tag)
        client.delete_attr(name, REVERT_KEY)
        return working
    snap = client.find_vdi(name, intent.tag)
    if snap is None or not snap.is_snapshot or snap.vid != intent.snap_vid:
        LOG.error("volume %s: an interrupted revert to snapshot %s cannot be finished: "
                  "the snapshot is gone; dropping the record", name, intent.tag)
        if snap is None or not snap.is_snapshot:
            snaps = core.snapshots_of(name)
            snap = snaps[-1] if snaps else None
        _drop_record(core, name, working, snap)
        return working
    LOG.warning("volume %s: finishing an interrupted revert to snapshot %s",
                name, intent.tag)
    return _rollback(core, name, intent)


def _rollback(core: DriverCore, name: str, intent: Intent) -> VdiInfo:
    reverted = core.client.rollback_vdi(name, intent.tag, size=intent.size)
    core.client.delete_attr(name, REVERT_KEY)  # only once the new working VDI is there
    core.invalidate_stats()
    return reverted


def revert_to_snapshot(core: DriverCore, name: str, tag: str, size: int) -> None:
    """Make ``name``'s contents those of snapshot ``tag``, at least ``size``
    bytes (a volume grown after the snapshot keeps its size)."""
    with core.hold(name, op="revert_to_snapshot"):
        state = survey(core, name, tag=tag)
        working, found = state.working, state.tagged
        if found is None or not found.is_snapshot:
            if working is None:
                raise VolumeNotFound(f"volume {name!r} does not exist")
            raise SnapshotNotFound(f"snapshot {tag!r} of volume {name!r} does not exist")
        snap = found
        if working is None:  # e.g. a revert of an older version died after the delete
            LOG.warning("volume %s has snapshot %s but no working VDI: finishing an "
                        "interrupted revert", name, tag)
        else:
            size = max(size, working.size)
        intent = Intent(tag, snap.vid, working.vid if working is not None else 0,
                        max(size, snap.size))
        if working is not None:
            core.client.set_attr(name, REVERT_KEY, intent.encode())
        else:
            core.client.set_attr(name, REVERT_KEY, intent.encode(), snapid=snap.snap_id)
        try:
            _rollback(core, name, intent)
        except SheepdogError:
            LOG.error("revert of %s to %s interrupted; the next operation on the volume "
                      "finishes it", name, tag)
            raise
