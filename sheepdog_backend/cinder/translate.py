"""Translation between Cinder and the core driver: names, models, errors.

Cinder owns the names.  A volume's VDI is recorded in ``provider_location`` when
the driver creates or adopts it, and every later call resolves the VDI from
there, falling back to ``volume.name`` (``volume_name_template % name_id``,
which follows a migration's ``_name_id``) for a volume that has none.  A
snapshot's tag is resolved the same way from the snapshot's
``provider_location`` or ``snapshot.name``.  The core driver is then handed the
exact names, so its own templates never apply.

``cinder_errors`` turns the core's SheepdogError classes into Cinder's
exceptions in one place; nothing else in the adapter catches SheepdogError.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cinder import exception

from sheepdog_backend import exception as sd_exc
from sheepdog_backend.driver.base import Connector, Snapshot, Volume

LOG = logging.getLogger(__name__)


def vdi_name(volume: Any) -> str:
    """The VDI of a Cinder volume: its provider_location, else volume.name."""
    location = volume.provider_location
    if isinstance(location, str) and location:
        return location
    return str(volume.name)


def snapshot_tag(snapshot: Any) -> str:
    location = snapshot.provider_location
    if isinstance(location, str) and location:
        return location
    return str(snapshot.name)


def core_volume(volume: Any, size: int | None = None) -> Volume:
    return Volume(id=str(volume.id), size=int(volume.size if size is None else size),
                  name=vdi_name(volume))


def core_snapshot(snapshot: Any) -> Snapshot:
    volume = snapshot.volume
    return Snapshot(id=str(snapshot.id), volume=core_volume(volume), name=snapshot_tag(snapshot))


def core_connector(connector: Any) -> Connector | None:
    """os-brick's connector properties (a dict) as a Connector; None stays None
    (a force-detach)."""
    if not connector:
        return None
    return Connector(host=str(connector.get("host") or ""), ip=connector.get("ip"),
                     initiator=connector.get("initiator"),
                     multipath=bool(connector.get("multipath", False)))


@contextmanager
def cinder_errors(*, volume: Any = None, snapshot: Any = None,
                  existing_ref: Any = None, image_id: str | None = None) -> Iterator[None]:
    """Raise Cinder's exception for a core error inside the block.

    ``existing_ref`` marks a manage call: a bad or unknown reference is then
    ManageExistingInvalidReference.  ``image_id`` marks an image transfer: an
    image refused by inspection is ImageUnacceptable.
    """
    try:
        yield
    except sd_exc.SheepdogError as exc:
        raise _translate(exc, volume, snapshot, existing_ref, image_id) from exc


def _translate(exc: sd_exc.SheepdogError, volume: Any, snapshot: Any, existing_ref: Any,
               image_id: str | None) -> Exception:
    message = str(exc) or type(exc).__name__
    error: Exception
    if existing_ref is not None and isinstance(
            exc, (sd_exc.InvalidInput, sd_exc.VolumeNotFound, sd_exc.SnapshotNotFound)):
        error = exception.ManageExistingInvalidReference(existing_ref=existing_ref,
                                                         reason=message)
        return error
    if isinstance(exc, sd_exc.VolumeIsBusy):
        name = vdi_name(volume) if volume is not None else message
        error = exception.VolumeIsBusy(message=message, volume_name=name)
        return error
    if isinstance(exc, sd_exc.VolumeNotFound):
        volume_id = volume.id if volume is not None else message
        error = exception.VolumeNotFound(message=message, volume_id=volume_id)
        return error
    if isinstance(exc, sd_exc.SnapshotNotFound):
        snapshot_id = snapshot.id if snapshot is not None else message
        error = exception.SnapshotNotFound(message=message, snapshot_id=snapshot_id)
        return error
    if image_id is not None and isinstance(exc, (sd_exc.InvalidBackingImage,
                                                 sd_exc.InvalidInput)):
        error = exception.ImageUnacceptable(image_id=image_id, reason=message)
        return error
    if isinstance(exc, sd_exc.InvalidInput):
        error = exception.InvalidInput(reason=message)
        return error
    LOG.error("Sheepdog backend error: %s", message)
    error = exception.VolumeBackendAPIException(data=message)
    return error
