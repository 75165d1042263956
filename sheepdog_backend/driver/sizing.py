"""Object size per volume, so volumes beyond 4 TiB work (and can be snapshotted).

A flat Sheepdog inode indexes 2^20 data objects, so a VDI can be at most
2^20 x object size: 4 TiB with the default 4 MiB objects (block_size_shift 22),
up to 2 PiB with 2 GiB objects (shift 31).  QEMU and dog honour a VDI's own
``block_size_shift``, and snapshots and clones of such a VDI keep it.  Larger
objects cost copy-on-write granularity (the first write after a snapshot copies
a whole object), so the driver raises the object size only as far as needed:

* ``sheepdog_block_size_shift`` set (not 0): that size for every volume, and a
  volume that does not fit is refused with the remedy;
* otherwise the cluster's default object size, doubled until the volume fits
  ``max(requested size, sheepdog_max_volume_size)``, so a volume can later be
  extended up to the configured ceiling.

``sheepdog_max_volume_size`` (GiB, 0 = no ceiling) is also a limit: creating or
extending past it is refused.  Extending past a volume's own cap is refused
with the reason and the remedy (a new volume, whose object size is chosen for
its size, and a copy).

Hyper volumes (B-tree index, up to 16 PiB, 4 MiB objects) are made only when
the operator sets ``sheepdog_hyper_volumes = true``, and then only for a
volume the largest allowed object size cannot hold flat (2 PiB with 2 GiB
objects, or the cap of ``sheepdog_block_size_shift`` when set).  Sheepdog 1.0
cannot snapshot them, so snapshots, clones and reverts of a hyper volume are
refused (``HyperVolumeUnsupported``); so is attaching one to a hypervisor,
since QEMU's and tgt's Sheepdog drivers read only flat indexes.  They can be
read and written through this backend's client, extended (up to 16 PiB) and
deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sheepdog_backend.driver.base import human
from sheepdog_backend.exception import HyperVolumeUnsupported, InvalidInput
from sheepdog_backend.protocol.constants import (
    SD_MAX_BLOCK_SIZE_SHIFT,
    SD_MAX_VDI_SIZE,
    SD_MIN_BLOCK_SIZE_SHIFT,
    flat_max_vdi_size,
)

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.driver.core import DriverCore

GiB = 1 << 30
DEFAULT_SHIFT = 22  # Sheepdog's default: 4 MiB objects


def cap(shift: int) -> int:
    """Largest flat volume with objects of 2^shift bytes."""
    return flat_max_vdi_size(shift)


def shift_needed(size: int, base: int) -> int | None:
    """Smallest shift >= base whose flat cap holds ``size``; None beyond 2 PiB."""
    for shift in range(max(base, SD_MIN_BLOCK_SIZE_SHIFT), SD_MAX_BLOCK_SIZE_SHIFT + 1):
        if cap(shift) >= size:
            return shift
    return None


def ceiling(conf: Any) -> int:
    """``sheepdog_max_volume_size`` in bytes, 0 when unset."""
    return int(getattr(conf, "sheepdog_max_volume_size", 0) or 0) * GiB


def choose_shift(size: int, *, configured: int, ceiling_bytes: int,
                 cluster_shift: int) -> int:
    """block_size_shift for a new volume of ``size`` bytes (0 = the cluster's
    default, when that is what the rule picks)."""
    if ceiling_bytes and size > ceiling_bytes:
        raise InvalidInput(f"{human(size)} exceeds sheepdog_max_volume_size "
                           f"({human(ceiling_bytes)}): raise that option to allow it")
    if configured:
        if size > cap(configured):
            raise InvalidInput(
                f"{human(size)} does not fit objects of {human(1 << configured)} "
                f"(sheepdog_block_size_shift = {configured} allows {human(cap(configured))}"
                "): raise sheepdog_block_size_shift, or set it to 0 so the object size "
                "is chosen per volume")
        return configured
    base = cluster_shift or DEFAULT_SHIFT
    want = max(size, ceiling_bytes)
    shift = shift_needed(want, base)
    if shift is None:
        raise InvalidInput(
            f"{human(want)} is beyond the largest flat Sheepdog volume "
            f"({human(cap(SD_MAX_BLOCK_SIZE_SHIFT))}, 2 GiB objects); {HYPER_HINT}")
    return 0 if shift == cluster_shift else shift


HYPER_HINT = ("set sheepdog_hyper_volumes = true to create such volumes as hyper volumes "
              "(B-tree index, up to 16 PiB), which Sheepdog 1.0 cannot snapshot, so they "
              "have no snapshots, clones or reverts")


def hyper_for_new_volume(conf: Any, size: int) -> bool:
    """Hook of ``create_volume``: True when the volume is to be a hyper volume
    (the operator allows them and no allowed object size holds it flat)."""
    if not getattr(conf, "sheepdog_hyper_volumes", False):
        return False
    configured = int(conf.sheepdog_block_size_shift or 0)
    if size <= cap(configured or SD_MAX_BLOCK_SIZE_SHIFT):
        return False
    ceiling_bytes = ceiling(conf)
    if ceiling_bytes and size > ceiling_bytes:
        raise InvalidInput(f"{human(size)} exceeds sheepdog_max_volume_size "
                           f"({human(ceiling_bytes)}): raise that option to allow it")
    if size > SD_MAX_VDI_SIZE:
        raise InvalidInput(f"{human(size)} is beyond the largest Sheepdog volume: a hyper "
                           f"volume holds at most {human(SD_MAX_VDI_SIZE)}")
    return True


def refuse_hyper(name: str, what: str, store_policy: int) -> None:
    """HyperVolumeUnsupported when ``name`` is a hyper volume: ``what`` (a
    snapshot, a clone, a revert) needs a snapshot of it."""
    if store_policy:
        raise HyperVolumeUnsupported(
            f"volume {name!r} is a hyper volume (B-tree index): Sheepdog 1.0 cannot "
            f"snapshot it, so it cannot have {what}. It can be read, written, extended "
            "(up to 16 PiB) and deleted; to snapshot the data, copy it to a flat volume "
            "of at most 2 PiB")


def refuse_hyper_attach(name: str, store_policy: int) -> None:
    """HyperVolumeUnsupported when ``name`` is a hyper volume: the hypervisor
    side (QEMU's block/sheepdog.c, tgt's Sheepdog store) reads flat indexes only."""
    if store_policy:
        raise HyperVolumeUnsupported(
            f"volume {name!r} is a hyper volume (B-tree index): QEMU's and tgt's Sheepdog "
            "drivers read only flat indexes (QEMU 5.2 fails to open one with an I/O "
            "error), so it cannot be attached to a hypervisor; its data is reachable "
            "through this backend (image export, image import)")


def shift_for_new_volume(core: DriverCore, size: int) -> int:
    """Hook of ``create_volume``: the object size of a new volume."""
    conf = core.configuration
    configured = int(conf.sheepdog_block_size_shift or 0)
    ceiling_bytes = ceiling(conf)
    if not configured and max(size, ceiling_bytes) <= cap(SD_MIN_BLOCK_SIZE_SHIFT):
        return 0  # fits any object size: the cluster's default, no extra request
    cluster_shift = 0 if configured else int(core.client.cluster_info().block_size_shift)
    return choose_shift(size, configured=configured, ceiling_bytes=ceiling_bytes,
                        cluster_shift=cluster_shift)


def check_extend(conf: Any, name: str, shift: int, new_size: int,
                 store_policy: int = 0) -> None:
    """Hook of ``extend_volume``: InvalidInput with reason and remedy when the
    volume cannot hold ``new_size`` bytes."""
    ceiling_bytes = ceiling(conf)
    if ceiling_bytes and new_size > ceiling_bytes:
        raise InvalidInput(f"volume {name!r} cannot grow to {human(new_size)}: "
                           f"sheepdog_max_volume_size is {human(ceiling_bytes)}")
    if store_policy:
        if new_size > SD_MAX_VDI_SIZE:
            raise HyperVolumeUnsupported(
                f"volume {name!r} cannot grow to {human(new_size)}: it is a hyper volume "
                f"(B-tree index), which holds at most {human(SD_MAX_VDI_SIZE)}")
        return
    if shift and new_size > cap(shift):
        raise InvalidInput(
            f"volume {name!r} cannot grow to {human(new_size)}: it uses objects of "
            f"{human(1 << shift)}, so Sheepdog's flat index (2^20 objects) holds at most "
            f"{human(cap(shift))}. An object size is fixed when a volume is created: "
            "create a new volume of the size you need (its object size is chosen for it) "
            "and copy the data (image export, image import), and set "
            "sheepdog_max_volume_size so new volumes can grow that far")


def describe(shift: int, store_policy: int = 0) -> dict[str, Any]:
    """What ``volume show`` reports about a volume's object size."""
    if not shift:
        return {}
    return {"object_size": 1 << shift,
            "max_size": SD_MAX_VDI_SIZE if store_policy else cap(shift),
            "index": "hyper (B-tree)" if store_policy else "flat"}
