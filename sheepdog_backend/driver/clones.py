"""Clones for SheepdogDriver: from a snapshot and from a volume, both repeatable.

How it works: Sheepdog clones only snapshots.  ``clone_snapshot`` makes a
copy-on-write VDI whose parent is the snapshot; a repeat finds the VDI with that
parent and size and succeeds.  ``create_cloned_volume`` (volume -> volume) takes a
temporary snapshot of the source, clones it and deletes it.  The temporary tag is
deterministic and names both ends - ``clone-of-<h(src)>-for-<h(dst)>`` with ``h``
a truncated SHA-256 of the VDI name - because DEL_VDI clears a snapshot's name
but keeps its tag, snap_ctime and the clone's link to it (protocol §9.4).  So a
repeat whose first attempt finished, or died half-way, can tell what happened:

- the target exists and its parent inode (live or deleted) carries this tag and
  the size matches: done earlier; only a leftover live temporary snapshot (the
  earlier attempt died between clone and delete) remains to delete;
- the target exists otherwise: VdiExists naming the difference;
- the target is absent: delete any leftover temporary snapshot and start over.

A failure to delete the temporary snapshot after a good clone is raised (the
control plane repeats the call, which finishes it); ``delete_volume`` of the
source also removes such leftovers.  The repeat check looks at the target's
direct parent only: it is meant for a call repeated because its reply was lost,
not for a target that has since been snapshotted or reverted.

Concurrency: the whole call holds the source's and the target's locks and
leases (``core.hold``: one operation at a time per volume in any number of
processes; concurrent snapshots of one working VDI would overwrite each
other's tag), and the snapshot is cloned and deleted *by the vid and snapshot
id* that ``snapshot_vdi`` returned, never looked up again by its tag.  The
source's lease record names the temporary tag, so when this process dies
half-way the next holder of the source deletes the temporary snapshot
(``drop_temp``, driver/takeover.py).  Concurrent clones of one source into
different targets all succeed; into one target, the first makes it and the
others find it made as asked (a repeat) - or fail typed (VdiExists) when they
asked for something else.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from sheepdog_backend.driver import revert, sizing
from sheepdog_backend.driver.base import GiB, Volume, gib, human
from sheepdog_backend.driver.core import DriverCore
from sheepdog_backend.exception import (
    InvalidInput,
    NoTag,
    NoVdi,
    SheepdogError,
    VdiExists,
    VolumeNotFound,
)

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.client import VdiInfo

LOG = logging.getLogger(__name__)
_PREFIX = "clone-of-"
_DIGEST = 24  # hex digits of SHA-256 kept per name (96 bits)


def _digest(name: str) -> str:
    raw = name.encode("utf-8", errors="surrogateescape")
    return hashlib.sha256(raw).hexdigest()[:_DIGEST]


def temp_tag(src: str, dst: str) -> str:
    """The tag of the temporary snapshot of ``src`` taken to clone it into ``dst``."""
    return f"{_PREFIX}{_digest(src)}-for-{_digest(dst)}"


def is_temp_tag_of(src: str, tag: str) -> bool:
    """True for the tag of a temporary clone snapshot of ``src`` (any target)."""
    head = f"{_PREFIX}{_digest(src)}-for-"
    rest = tag[len(head):]
    return (tag.startswith(head) and len(rest) == _DIGEST
            and all(c in "0123456789abcdef" for c in rest))


def clone_snapshot(core: DriverCore, snap: VdiInfo, src: str, tag: str, name: str,
                   size: int, *, look: bool = True) -> dict[str, Any]:
    """Clone snapshot ``src``@``tag`` (VdiInfo ``snap``, just read) into ``name``
    of ``size`` bytes (``look`` False: ``name`` is not looked up first; NEW_VDI
    answers VDI_EXIST when it is taken)."""
    if size < snap.size:
        raise InvalidInput(f"volume {name!r} of {size // GiB} GiB is smaller than the "
                           f"snapshot {tag!r} of {src!r} ({human(snap.size)})")
    if core.create_checked(name, size, parent_vid=snap.vid, look=look):
        return {}
    try:
        core.client.clone_vdi(src, tag, name, size=size,
                              known=snap if snap.tag == tag and tag else None)
    except VdiExists:
        if not core.create_checked(name, size, parent_vid=snap.vid):
            raise
    core.invalidate_stats()
    return {}


def drop_temp(core: DriverCore, src: str, tag: str) -> bool:
    """Delete the live temporary snapshot ``src``@``tag``; True when one was there."""
    info = core.client.find_vdi(src, tag)
    if info is None or not info.is_snapshot:
        return False
    return _drop_snapshot(core, info)


def _drop_snapshot(core: DriverCore, snap: VdiInfo) -> bool:
    """Delete the snapshot ``snap`` by its snapshot id, after checking that id
    still names the same vid; True when it was there."""
    found = core.client.find_vdi(snap.name, "", snap.snap_id)
    if found is None or not found.is_snapshot or found.vid != snap.vid:
        return False
    LOG.info("deleting temporary snapshot %#x (%r) of %s", snap.vid, found.tag, snap.name)
    try:
        return core.client.delete_vdi(snap.name, snapid=snap.snap_id)
    except (NoVdi, NoTag):
        return False


def drop_temps_of(core: DriverCore, snapshots: list[VdiInfo]) -> None:
    """Delete the temporary clone snapshots among ``snapshots`` (VdiInfo list)."""
    for snap in snapshots:
        LOG.info("deleting leftover temporary clone snapshot %s of %s", snap.tag, snap.name)
        _drop_snapshot(core, snap)


def _check_repeat(core: DriverCore, target: VdiInfo, src: str, name: str, tag: str,
                  size: int) -> None:
    """Accept an existing ``name`` as an earlier clone of ``src``, or VdiExists."""
    if target.parent_vid == 0:
        raise VdiExists(f"volume {name!r} already exists and is not a clone")
    try:
        parent = core.client.get_vdi_by_vid(target.parent_vid)
    except NoVdi:
        raise VdiExists(f"volume {name!r} already exists; its parent inode "
                        f"{target.parent_vid:#x} is gone, so it cannot be shown to be a "
                        f"clone of {src!r}") from None
    if parent.tag != tag or parent.name not in ("", src) or not parent.is_snapshot:
        made_from = f"snapshot {parent.tag!r} of {parent.name or '(deleted)'!r}"
        raise VdiExists(f"volume {name!r} already exists but was not cloned from {src!r} "
                        f"for it (its parent is {made_from})")
    if target.size != size:
        raise VdiExists(f"volume {name!r} already exists as a clone of {src!r} with "
                        f"{human(target.size)}, not {size // GiB} GiB")


def _take_temp(core: DriverCore, src: str, name: str, tag: str, size: int) -> VdiInfo:
    """The temporary snapshot of ``src`` for ``name`` (call holding ``src``)."""
    info = revert.settle(core, src)
    if info is None:
        raise VolumeNotFound(f"volume {src!r} does not exist")
    sizing.refuse_hyper(src, "clones", info.store_policy)
    if size < info.size:
        raise InvalidInput(f"volume {name!r} of {size // GiB} GiB is smaller than its "
                           f"source {src!r} ({human(info.size)})")
    if drop_temp(core, src, tag):
        LOG.info("an earlier attempt to clone %s into %s left its snapshot: starting "
                 "over", src, name)
    return core.client.snapshot_vdi(src, tag)


def create_cloned_volume(core: DriverCore, volume: Volume,
                         src_vref: Volume) -> dict[str, Any]:
    name = core.vdi_name(volume)
    size = gib(volume.size) * GiB
    src = core.vdi_name(src_vref)
    tag = temp_tag(src, name)
    client = core.client
    with core.hold(name, src, op="create_cloned_volume", details={src: tag}):
        target = revert.settle(core, name)
        if target is not None:
            _check_repeat(core, target, src, name, tag, size)
            LOG.info("volume %s already exists as a clone of %s", name, src)
            drop_temp(core, src, tag)
            return {}
        snap = _take_temp(core, src, name, tag, size)
        try:
            client.clone_vdi(src, "", name, size=size, snapid=snap.snap_id)
        except BaseException:
            try:
                _drop_snapshot(core, snap)
            except SheepdogError as exc:
                LOG.error("could not delete temporary snapshot %s of %s (a repeat of this "
                          "call or deleting %s removes it): %s", tag, src, src, exc)
            raise
        core.invalidate_stats()
        _drop_snapshot(core, snap)  # raised on failure: repeating the call finishes it
    return {}
