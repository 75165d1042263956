"""Backend statistics in Cinder's keys, and the driver's inspection views
(describe/list for the CLI and the demo).  Stateless: the cache lives on the
``DriverCore`` (``core.stats``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sheepdog_backend.driver import attach
from sheepdog_backend.driver.base import GiB
from sheepdog_backend.driver.core import DriverCore
from sheepdog_backend.exception import RetryExhausted, TransportError

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.client import VdiInfo

LOG = logging.getLogger(__name__)


def collect_stats(core: DriverCore, version: str) -> dict[str, Any]:
    conf = core.configuration
    total_gb: float | str
    free_gb: float | str
    try:
        total, free = core.client.capacity()
        total_gb, free_gb = round(total / GiB, 2), round(free / GiB, 2)
    except (TransportError, RetryExhausted) as exc:
        # A listed node that cannot be reached (down, or not yet dropped from the
        # node list) leaves the capacity unknown; Cinder's scheduler accepts that.
        LOG.warning("backend %s: capacity unknown: %s", core.backend_name, exc)
        total_gb = free_gb = "unknown"
    working = [v for v in core.list_vdis(with_usage=True) if not v.is_snapshot]
    return {
        "volume_backend_name": conf.volume_backend_name or core.backend_name,
        "vendor_name": "Open Source",
        "driver_version": version,
        **attach.stats(core),
        "total_capacity_gb": total_gb,
        "free_capacity_gb": free_gb,
        "provisioned_capacity_gb": round(sum(v.size for v in working) / GiB, 2),
        "thin_provisioning_support": True,
        "thick_provisioning_support": False,
        "max_over_subscription_ratio": float(conf.max_over_subscription_ratio),
        "reserved_percentage": int(conf.reserved_percentage),
        "total_volumes": len(working),
        "sparse_copy_volume": True,
    }


def describe(info: VdiInfo) -> dict[str, Any]:
    return {"name": info.name, "tag": info.tag, "snap_id": info.snap_id,
            "size_bytes": info.size, "size_gib": round(info.size / GiB, 3),
            "vid": info.vid, "parent_vid": info.parent_vid,
            "is_snapshot": bool(info.is_snapshot), "copies": info.nr_copies,
            "copy_policy": info.copy_policy, "block_size_shift": info.block_size_shift,
            "store_policy": info.store_policy,
            "created": (info.snap_ctime if info.is_snapshot else info.create_time) >> 32,
            "used_bytes": info.used, "shared_bytes": info.shared}


def list_volumes(core: DriverCore) -> list[dict[str, Any]]:
    return [describe(v) for v in sorted(core.list_vdis(with_usage=True),
                                        key=lambda v: (v.name, v.snap_id))
            if not v.is_snapshot]


def list_snapshots(core: DriverCore, name: str | None) -> list[dict[str, Any]]:
    vdis = core.list_vdis(with_usage=True)
    return [describe(v) for v in sorted(vdis, key=lambda v: (v.name, v.snap_id))
            if v.is_snapshot and (name is None or v.name == name)]
