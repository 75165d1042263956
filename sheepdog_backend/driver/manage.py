"""Adopting existing VDIs (Cinder's manage/unmanage) for SheepdogDriver.

Sheepdog cannot rename a VDI, so an adopted volume keeps its VDI name: the
model update returns ``{"name": <vdi>, "size": <GiB>}`` and the control plane
stores it on the volume.  A VDI whose size is not a whole number of GiB is
grown to the next GiB when adopted (thin: it costs no space), so the size the
control plane records is the real one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sheepdog_backend.driver import revert
from sheepdog_backend.driver.base import GiB, Volume
from sheepdog_backend.driver.core import DriverCore
from sheepdog_backend.exception import InvalidInput, VolumeNotFound
from sheepdog_backend.protocol.naming import check_volume_name

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.client import VdiInfo


def _source_name(existing_ref: Any) -> str:
    if not isinstance(existing_ref, dict):
        raise InvalidInput(f"existing_ref must be a dict, got {type(existing_ref).__name__}")
    name = existing_ref.get("source-name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("existing_ref needs 'source-name': the VDI name to adopt "
                           f"(got keys {sorted(existing_ref)})")
    check_volume_name(name)  # a name outside the alphabet could be adopted but never used
    if name == DriverCore.lease_anchor():
        raise InvalidInput(f"{name!r} holds the volume leases of this backend; it is not "
                           "a volume")
    return name


def _working(core: DriverCore, name: str) -> VdiInfo:
    info = revert.settle(core, name)
    if info is None or info.is_snapshot:
        raise VolumeNotFound(f"no VDI named {name!r} to manage")
    return info


def _gib_ceil(size: int) -> int:
    return max(1, -(-size // GiB))


def manage_existing_get_size(core: DriverCore, volume: Volume,
                             existing_ref: dict[str, Any]) -> int:
    return _gib_ceil(_working(core, _source_name(existing_ref)).size)


def manage_existing(core: DriverCore, volume: Volume,
                    existing_ref: dict[str, Any]) -> dict[str, Any]:
    name = _source_name(existing_ref)
    with core.hold(name, op="manage_existing"):
        info = _working(core, name)
        size = _gib_ceil(info.size)
        if info.size != size * GiB:
            core.client.resize_vdi(name, size * GiB)
    core.invalidate_stats()
    return {"name": name, "size": size}


def unmanage(core: DriverCore, volume: Volume) -> None:
    """Nothing to undo: the VDI stays exactly as it is."""
    core.vdi_name(volume)


def template_pattern(template: str) -> re.Pattern[str]:
    prefix, _, suffix = template.partition("%s")
    return re.compile(re.escape(prefix.replace("%%", "%")) + "(.+)"
                      + re.escape(suffix.replace("%%", "%")) + r"\Z", re.DOTALL)


def get_manageable_volumes(core: DriverCore) -> list[dict[str, Any]]:
    """Every working VDI, Cinder's keys. One already named by the volume template
    is reported as managed (not safe), with the id it encodes."""
    pattern = template_pattern(core.configuration.volume_name_template)
    out: list[dict[str, Any]] = []
    for info in sorted(core.list_vdis(), key=lambda v: v.name):
        if info.is_snapshot:
            continue
        match = pattern.match(info.name)
        try:
            check_volume_name(info.name)
            bad_name = None
        except InvalidInput as exc:
            bad_name = f"name outside the accepted alphabet: {exc}"
        out.append({
            "reference": {"source-name": info.name},
            "size": _gib_ceil(info.size),
            "safe_to_manage": match is None and bad_name is None,
            "reason_not_safe": "already managed" if match else bad_name,
            "cinder_id": match.group(1) if match else None,
            "extra_info": {"vid": info.vid, "copies": info.nr_copies,
                           "block_size_shift": info.block_size_shift},
        })
    return out

