"""Manage and unmanage for SheepdogCinderDriver: volumes and snapshots.

Sheepdog cannot rename a VDI or a snapshot tag, so an adopted volume keeps its
VDI name and an adopted snapshot its tag; both are recorded in
``provider_location``, from where every later call resolves them.  Whether a
VDI is already managed is decided by the volumes Cinder passes in
(``cinder_volumes``), matched by the VDI each of them resolves to.  Listings
are paginated by Cinder's own ``paginate_entries_list``.
"""

from __future__ import annotations

from typing import Any

from cinder import exception
from cinder.volume import volume_utils

from sheepdog_backend.cinder.translate import (
    cinder_errors,
    core_volume,
    snapshot_tag,
    vdi_name,
)
from sheepdog_backend.driver.base import GiB, Snapshot, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver


def _adopting(volume: Any) -> Volume:
    """The core model of a volume being adopted (its size is not known yet)."""
    return Volume(id=str(volume.id), size=max(1, int(volume.size or 1)))


def manage_existing_get_size(core: SheepdogDriver, volume: Any, existing_ref: Any) -> int:
    with cinder_errors(volume=volume, existing_ref=existing_ref):
        return core.manage_existing_get_size(_adopting(volume), existing_ref)


def manage_existing(core: SheepdogDriver, volume: Any, existing_ref: Any) -> dict[str, Any]:
    with cinder_errors(volume=volume, existing_ref=existing_ref):
        update = core.manage_existing(_adopting(volume), existing_ref)
    return {"provider_location": update["name"]}


def _extra(info: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(info.items()))


def get_manageable_volumes(core: SheepdogDriver, cinder_volumes: Any, marker: Any, limit: int,
                           offset: int, sort_keys: list[str],
                           sort_dirs: list[str]) -> list[dict[str, Any]]:
    managed = {vdi_name(v): str(v.id) for v in cinder_volumes or []}
    with cinder_errors():
        entries = core.get_manageable_volumes()
    out = []
    for entry in entries:
        name = entry["reference"]["source-name"]
        entry = dict(entry, extra_info=_extra(entry.get("extra_info") or {}))
        if name in managed:
            entry.update(safe_to_manage=False, reason_not_safe="already managed",
                         cinder_id=managed[name])
        elif not entry["safe_to_manage"]:
            entry.update(cinder_id=None, reason_not_safe=(
                "named like a Cinder volume (volume_name_template) but not one of this "
                "backend's"))
        out.append(entry)
    return list(volume_utils.paginate_entries_list(out, marker, limit, offset, sort_keys,
                                                   sort_dirs))


def _source_tag(existing_ref: Any) -> str:
    tag = existing_ref.get("source-name") if isinstance(existing_ref, dict) else None
    if not isinstance(tag, str) or not tag:
        raise exception.ManageExistingInvalidReference(
            existing_ref=existing_ref,
            reason="needs 'source-name': the tag of a snapshot of the snapshot's volume")
    return tag


def _snapshot_info(core: SheepdogDriver, snapshot: Any, existing_ref: Any) -> dict[str, Any]:
    tag = _source_tag(existing_ref)
    with cinder_errors(volume=snapshot.volume, snapshot=snapshot, existing_ref=existing_ref):
        return core.describe_snapshot(Snapshot(id=str(snapshot.id),
                                               volume=core_volume(snapshot.volume), name=tag))


def manage_existing_snapshot_get_size(core: SheepdogDriver, snapshot: Any,
                                      existing_ref: Any) -> int:
    size = int(_snapshot_info(core, snapshot, existing_ref)["size_bytes"])
    return max(1, -(-size // GiB))


def manage_existing_snapshot(core: SheepdogDriver, snapshot: Any,
                             existing_ref: Any) -> dict[str, Any]:
    info = _snapshot_info(core, snapshot, existing_ref)
    return {"provider_location": info["tag"]}


def get_manageable_snapshots(core: SheepdogDriver, cinder_snapshots: Any, marker: Any,
                             limit: int, offset: int, sort_keys: list[str],
                             sort_dirs: list[str]) -> list[dict[str, Any]]:
    managed = {(vdi_name(s.volume), snapshot_tag(s)): str(s.id)
               for s in cinder_snapshots or []}
    with cinder_errors():
        snaps = core.list_snapshots()
    out = []
    for info in snaps:
        key = (info["name"], info["tag"])
        cinder_id = managed.get(key)
        reason = ("already managed" if cinder_id else
                  None if info["tag"] else "has no tag to manage it by")
        out.append({
            "reference": {"source-name": info["tag"] or f"#{info['snap_id']}"},
            "source_reference": {"source-name": info["name"]},
            "size": max(1, -(-int(info["size_bytes"]) // GiB)),
            "safe_to_manage": reason is None,
            "reason_not_safe": reason,
            "cinder_id": cinder_id,
            "extra_info": _extra({"snap_id": info["snap_id"], "vid": info["vid"]}),
        })
    return list(volume_utils.paginate_entries_list(out, marker, limit, offset, sort_keys,
                                                   sort_dirs))
