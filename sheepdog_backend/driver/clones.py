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
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from sheepdog_backend.driver.base import GiB, Volume, gib
from sheepdog_backend.exception import InvalidInput, NoVdi, SheepdogError, VdiExists

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.driver.sheepdog import SheepdogDriver

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


def clone_snapshot(driver: SheepdogDriver, snap: Any, src: str, tag: str, name: str,
                   size: int) -> dict[str, Any]:
    """Clone snapshot ``src``@``tag`` (VdiInfo ``snap``) into ``name`` of ``size`` bytes."""
    if size < snap.size:
        raise InvalidInput(f"volume {name!r} of {size // GiB} GiB is smaller than the "
                           f"snapshot {tag!r} of {src!r} ({snap.size} bytes)")
    if driver._create_checked(name, size, parent_vid=snap.vid):
        return {}
    try:
        driver.client.clone_vdi(src, tag, name, size=size)
    except VdiExists:
        if not driver._create_checked(name, size, parent_vid=snap.vid):
            raise
    driver._invalidate_stats()
    return {}


def _drop_temp(driver: SheepdogDriver, src: str, tag: str) -> bool:
    """Delete the live temporary snapshot ``src``@``tag``; True when one was there."""
    info = driver.client.find_vdi(src, tag)
    if info is None or not info.is_snapshot:
        return False
    LOG.info("deleting temporary snapshot %s of %s", tag, src)
    driver.client.delete_vdi(src, tag)
    return True


def drop_temps_of(driver: SheepdogDriver, snapshots: list[Any]) -> None:
    """Delete the temporary clone snapshots among ``snapshots`` (VdiInfo list)."""
    for snap in snapshots:
        LOG.info("deleting leftover temporary clone snapshot %s of %s", snap.tag, snap.name)
        driver.client.delete_vdi(snap.name, snap.tag)


def _check_repeat(driver: SheepdogDriver, target: Any, src: str, name: str, tag: str,
                  size: int) -> None:
    """Accept an existing ``name`` as an earlier clone of ``src``, or VdiExists."""
    if target.parent_vid == 0:
        raise VdiExists(f"volume {name!r} already exists and is not a clone")
    try:
        parent = driver.client.get_vdi_by_vid(target.parent_vid)
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
                        f"{target.size} bytes, not {size} ({size // GiB} GiB)")


def create_cloned_volume(driver: SheepdogDriver, volume: Volume,
                         src_vref: Volume) -> dict[str, Any]:
    name = driver.vdi_name(volume)
    size = gib(volume.size) * GiB
    src = driver.vdi_name(src_vref)
    tag = temp_tag(src, name)
    client = driver.client
    target = client.find_vdi(name)
    if target is not None:
        _check_repeat(driver, target, src, name, tag, size)
        LOG.info("volume %s already exists as a clone of %s", name, src)
        _drop_temp(driver, src, tag)
        return {}
    info = driver._existing(src)
    if size < info.size:
        raise InvalidInput(f"volume {name!r} of {size // GiB} GiB is smaller than its "
                           f"source {src!r} ({info.size} bytes)")
    if _drop_temp(driver, src, tag):
        LOG.info("an earlier attempt to clone %s into %s left its snapshot: starting over",
                 src, name)
    client.snapshot_vdi(src, tag)
    try:
        client.clone_vdi(src, tag, name, size=size)
    except BaseException:
        try:
            _drop_temp(driver, src, tag)
        except SheepdogError as exc:
            LOG.error("could not delete temporary snapshot %s of %s (a repeat of this "
                      "call or deleting %s removes it): %s", tag, src, src, exc)
        raise
    driver._invalidate_stats()
    _drop_temp(driver, src, tag)  # raised on failure: repeating the call finishes it
    return {}
