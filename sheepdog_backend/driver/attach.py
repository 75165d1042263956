"""The driver's attach hooks: native Sheepdog or an iSCSI target per volume.

How it works: ``sheepdog_attach_protocol`` chooses.  For ``sheepdog`` the
driver keeps its native connection info and nothing here runs.  For
``iscsi`` every attach exports the volume through tgt (sheepdog_backend.export),
records the export on the cluster and returns os-brick's iSCSI connection
info; detach removes the initiator, and the target when none is left.  A
snapshot attaches through a temporary read-only clone.

The driver calls these functions with itself; ``_managers`` maps a driver to
its ExportManager (built on first use, weakly keyed so a closed driver frees
it; guarded by ``_managers_lock``).

Snapshotting a volume that tgt writes straight to a node can lose
acknowledged writes (the sheep rewrites the whole inode and drops a slot
update landing in between; tgt hides the loss until the LU is re-opened):
``refuse_if_exported`` stops snapshots and temporary clones of such exports
unless forced.  Exports through the local gateway (``sheepdog_export_gateway``,
sheepdog_backend.gateway) are safe when the driver's own requests go through
it too (``sheepdog_gateways`` names it): the gateway orders the snapshot
after the writer's pending slot writes.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from sheepdog_backend.driver.connection import iscsi_connection_info
from sheepdog_backend.exception import ExportedVolumeBusy

if TYPE_CHECKING:
    from sheepdog_backend.driver.base import Connector, Snapshot, Volume
    from sheepdog_backend.driver.sheepdog import SheepdogDriver
    from sheepdog_backend.export import ExportManager, ExportRecord

_managers: weakref.WeakKeyDictionary[SheepdogDriver, ExportManager] = (
    weakref.WeakKeyDictionary())
_managers_lock = threading.Lock()


def uses_iscsi(driver: SheepdogDriver) -> bool:
    return str(driver.configuration.sheepdog_attach_protocol) == "iscsi"


def manager(driver: SheepdogDriver) -> ExportManager:
    """The driver's ExportManager (whatever the attach protocol: the CLI
    exports on demand)."""
    with _managers_lock:
        found = _managers.get(driver)
        if found is None:
            from sheepdog_backend.export import manager_for
            found = manager_for(driver.configuration, driver.client)
            _managers[driver] = found
        return found


def _info(driver: SheepdogDriver, rec: ExportRecord, volume_id: str) -> dict[str, Any]:
    conn = manager(driver).connection(rec)
    return iscsi_connection_info(portal=conn["portal"], iqn=conn["iqn"], lun=conn["lun"],
                                 volume_id=volume_id, chap=conn["chap"],
                                 access_mode="ro" if conn["readonly"] else "rw")


def initialize_connection(driver: SheepdogDriver, volume: Volume,
                          connector: Connector | None) -> dict[str, Any]:
    name = driver.vdi_name(volume)
    initiator = connector.initiator if connector is not None else None
    rec = manager(driver).export_volume(name, initiator=initiator)
    return _info(driver, rec, volume.id)


def terminate_connection(driver: SheepdogDriver, volume: Volume,
                         connector: Connector | None) -> None:
    """Drop ``connector``'s initiator; the target goes with the last one (or at
    once when no connector is given: a forced detach)."""
    name = driver.vdi_name(volume)
    initiator = connector.initiator if connector is not None else None
    manager(driver).unexport(name, initiator=initiator)


def initialize_connection_snapshot(driver: SheepdogDriver, snapshot: Snapshot,
                                   connector: Connector | None) -> dict[str, Any]:
    name, tag = driver.vdi_name(snapshot.volume), driver.snapshot_tag(snapshot)
    initiator = connector.initiator if connector is not None else None
    rec = manager(driver).export_snapshot(name, tag, initiator=initiator)
    return _info(driver, rec, snapshot.id)


def terminate_connection_snapshot(driver: SheepdogDriver, snapshot: Snapshot,
                                  connector: Connector | None) -> None:
    name, tag = driver.vdi_name(snapshot.volume), driver.snapshot_tag(snapshot)
    initiator = connector.initiator if connector is not None else None
    manager(driver).unexport_snapshot(name, tag, initiator=initiator)


def create_export(driver: SheepdogDriver, volume: Volume,
                  connector: Connector | None = None) -> dict[str, Any]:
    """Cinder's create_export: the target exists afterwards (model update
    carries the IQN as provider_location)."""
    if not uses_iscsi(driver):
        return {}
    initiator = connector.initiator if connector is not None else None
    rec = manager(driver).export_volume(driver.vdi_name(volume), initiator=initiator)
    conn = manager(driver).connection(rec)
    host, port = conn["portal"]
    return {"provider_location": f"{host}:{port},1 {rec.iqn} {conn['lun']}"}


def ensure_export(driver: SheepdogDriver, volume: Volume) -> None:
    """Re-create the recorded target of ``volume`` (after a tgtd restart),
    moving it off a dead gateway."""
    manager(driver).ensure(driver.vdi_name(volume))


def remove_export(driver: SheepdogDriver, volume: Volume) -> None:
    manager(driver).unexport(driver.vdi_name(volume))


def after_extend(driver: SheepdogDriver, name: str) -> None:
    """Let initiators see the new size of an exported volume."""
    from sheepdog_backend.export.manager import read_record
    if read_record(driver.client, name) is not None:
        manager(driver).refresh_size(name)


def through_gateway(driver: SheepdogDriver, lu_gateway: str) -> bool:
    """True when the LU goes through the local gateway and so do the driver's
    own requests: the gateway then sees the snapshot and makes it safe."""
    conf = driver.configuration
    gateway = str(getattr(conf, "sheepdog_export_gateway", "") or "")
    return bool(gateway) and lu_gateway == gateway and gateway in [
        str(g) for g in conf.sheepdog_gateways]


def refuse_if_exported(driver: SheepdogDriver, name: str, what: str, *,
                       force: bool = False) -> None:
    from sheepdog_backend.export.manager import read_record
    if force:
        return
    rec = read_record(driver.client, name)
    if rec is None or through_gateway(driver, rec.gateway):
        return
    raise ExportedVolumeBusy(
        f"volume {name!r} is exported over iSCSI: a {what} now could lose writes tgt "
        "has acknowledged (the sheep rewrites the whole inode and drops a slot update "
        "landing meanwhile; tgt cannot pause I/O). Detach it first, or force it once "
        "the guest is quiesced")


def stats(driver: SheepdogDriver) -> dict[str, Any]:
    """Stats keys that depend on the attach protocol."""
    if uses_iscsi(driver):
        return {"storage_protocol": "iSCSI", "online_extend_support": True}
    return {"storage_protocol": "sheepdog", "online_extend_support": False}
