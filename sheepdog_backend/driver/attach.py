"""The driver's attach hooks: native Sheepdog or an iSCSI target per volume.

How it works: ``sheepdog_attach_protocol`` chooses.  For ``sheepdog`` the
driver keeps its native connection info and nothing here runs.  For
``iscsi`` every attach exports the volume through tgt (sheepdog_backend.export),
counts the attachment in the export record on the cluster and returns
os-brick's iSCSI connection info; every attachment of a volume shares its one
target (live migration, multiattach).  Detach ends one attachment: the
initiator leaves the ACL with its last one, the target with the last of all,
and ``terminate_connection`` says whether others remain.  A snapshot attaches
through a temporary read-only clone.

``sheepdog_export_mode`` chooses where targets live: ``central`` (the
ExportManager: this host's tgtd) or ``local`` (LocalExports: the connector's
compute host, whose ``sheepdog-backend agent`` makes the target; records,
host indexes and acknowledgements on the cluster).  In local mode
create_export and ensure_export have nothing to do on this host.

The driver calls these functions with its DriverCore (``driver.core``);
``_managers`` maps a core to its ExportManager and ``_locals`` to its
LocalExports (built on first use, weakly keyed so a closed driver frees them;
guarded by ``_managers_lock``).

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
from sheepdog_backend.driver.core import DriverCore
from sheepdog_backend.exception import ConfigError, ExportedVolumeBusy

if TYPE_CHECKING:
    from sheepdog_backend.driver.base import Connector, Snapshot, Volume
    from sheepdog_backend.export import ExportManager, ExportRecord
    from sheepdog_backend.export.base import Detached
    from sheepdog_backend.export.local import LocalExports

_managers: weakref.WeakKeyDictionary[DriverCore, ExportManager] = (
    weakref.WeakKeyDictionary())
_locals: weakref.WeakKeyDictionary[DriverCore, LocalExports] = weakref.WeakKeyDictionary()
_managers_lock = threading.Lock()
EXPORT_MODES = ("central", "local")


def uses_iscsi(core: DriverCore) -> bool:
    return str(core.configuration.sheepdog_attach_protocol) == "iscsi"


def is_local(core: DriverCore) -> bool:
    """True when compute hosts' agents make the targets (sheepdog_export_mode =
    local); ConfigError naming the option for a value that is neither mode."""
    conf = core.configuration
    mode = str(getattr(conf, "sheepdog_export_mode", "central"))
    if mode not in EXPORT_MODES:
        raise ConfigError(f"{conf.where('sheepdog_export_mode')}: {mode!r} is not one of "
                          f"{', '.join(EXPORT_MODES)}")
    return mode == "local"


def local_exports(core: DriverCore) -> LocalExports:
    """The driver's LocalExports (local export mode)."""
    with _managers_lock:
        found = _locals.get(core)
        if found is None:
            from sheepdog_backend.export import settings_for
            from sheepdog_backend.export.local import LocalExports
            conf = core.configuration
            found = LocalExports(core.client, settings_for(conf),
                                 timeout=float(conf.sheepdog_export_agent_timeout))
            _locals[core] = found
        return found


def _where(connector: Connector | None) -> tuple[str | None, str | None]:
    """(host, initiator) of a connector (None, None: a forced detach)."""
    if connector is None:
        return None, None
    return connector.host or None, connector.initiator


def manager(core: DriverCore) -> ExportManager:
    """The driver's ExportManager (whatever the attach protocol: the CLI
    exports on demand)."""
    with _managers_lock:
        found = _managers.get(core)
        if found is None:
            from sheepdog_backend.export import manager_for
            found = manager_for(core.configuration, core.client)
            _managers[core] = found
        return found


def _info(core: DriverCore, rec: ExportRecord, volume_id: str) -> dict[str, Any]:
    conn = manager(core).connection(rec)
    return iscsi_connection_info(portal=conn["portal"], iqn=conn["iqn"], lun=conn["lun"],
                                 volume_id=volume_id, chap=conn["chap"],
                                 access_mode="ro" if conn["readonly"] else "rw")


def _local_info(core: DriverCore, rec: ExportRecord, reg: Any, volume_id: str
                ) -> dict[str, Any]:
    conn = local_exports(core).connection(rec, reg)
    return iscsi_connection_info(portal=conn["portal"], iqn=conn["iqn"], lun=conn["lun"],
                                 volume_id=volume_id, chap=conn["chap"],
                                 access_mode="ro" if conn["readonly"] else "rw")


def initialize_connection(core: DriverCore, volume: Volume,
                          connector: Connector | None) -> dict[str, Any]:
    name = core.vdi_name(volume)
    host, initiator = _where(connector)
    if is_local(core):
        rec, reg = local_exports(core).attach(name, host or "", initiator)
        return _local_info(core, rec, reg, volume.id)
    rec = manager(core).export_volume(name, initiator=initiator)
    return _info(core, rec, volume.id)


def terminate_connection(core: DriverCore, volume: Volume,
                         connector: Connector | None) -> Detached:
    """End one attachment of ``connector``'s initiator (None: a forced detach,
    see ExportRecord.ending); the target goes with the last attachment."""
    name = core.vdi_name(volume)
    host, initiator = _where(connector)
    if is_local(core):
        return local_exports(core).detach(name, host, initiator)
    return manager(core).detach(name, initiator=initiator)


def initialize_connection_snapshot(core: DriverCore, snapshot: Snapshot,
                                   connector: Connector | None) -> dict[str, Any]:
    name, tag = core.vdi_name(snapshot.volume), core.snapshot_tag(snapshot)
    host, initiator = _where(connector)
    if is_local(core):
        rec, reg = local_exports(core).attach_snapshot(name, tag, host or "", initiator)
        return _local_info(core, rec, reg, snapshot.id)
    rec = manager(core).export_snapshot(name, tag, initiator=initiator)
    return _info(core, rec, snapshot.id)


def terminate_connection_snapshot(core: DriverCore, snapshot: Snapshot,
                                  connector: Connector | None) -> Detached:
    name, tag = core.vdi_name(snapshot.volume), core.snapshot_tag(snapshot)
    host, initiator = _where(connector)
    if is_local(core):
        return local_exports(core).detach_snapshot(name, tag, host, initiator)
    return manager(core).detach_snapshot(name, tag, initiator=initiator)


def create_export(core: DriverCore, volume: Volume,
                  connector: Connector | None = None) -> dict[str, Any]:
    """Cinder's create_export: the target exists afterwards and allows the
    connector's initiator; the attachment itself is counted by the
    initialize_connection that follows.  No model update: the export is
    recorded on the volume (a VDI attribute) and initialize_connection returns
    the portal, IQN and CHAP; provider_location stays the VDI name the Cinder
    adapter resolves volumes by."""
    if not uses_iscsi(core) or is_local(core):  # local: the agent makes it on attach
        return {}
    initiator = connector.initiator if connector is not None else None
    manager(core).export_volume(core.vdi_name(volume), initiator=initiator, attach=False)
    return {}


def ensure_export(core: DriverCore, volume: Volume) -> dict[str, Any]:
    """Re-create the recorded target of ``volume`` (after a tgtd restart),
    moving it off a dead gateway; no model update."""
    name = core.vdi_name(volume)
    if not uses_iscsi(core) and not _recorded(core, name):
        return {}  # native attach, and no export made by hand (CLI): nothing on tgtd
    if is_local(core):
        return {}  # the compute hosts' agents keep their targets
    manager(core).ensure(name)
    return {}


def remove_export(core: DriverCore, volume: Volume, *, force: bool = False) -> None:
    """Remove the export unless an attachment still uses it (Cinder calls this
    after a failed attach too, while other hosts stay attached); ``force``:
    whatever attachments it records (the volume is going away)."""
    name = core.vdi_name(volume)
    if not uses_iscsi(core) and not _recorded(core, name):
        return  # native attach, and no export made by hand (CLI): no tgtd to ask
    if is_local(core):  # a local record holds attachments only: nothing unused
        if force:
            local_exports(core).unexport(name)
        return
    if force:
        manager(core).unexport(name)
    else:
        manager(core).remove_unused(name)


def _recorded(core: DriverCore, name: str) -> bool:
    from sheepdog_backend.export.manager import read_record
    return read_record(core.client, name) is not None


# the VDI attribute holding a volume's export record (export/manager.py's
# RECORD_KEY; a test checks they agree): the driver reads it in the survey of
# the operation's first round trip (revert.survey) and hands it here as ``raw``
EXPORT_KEY = "sheepdog-backend.export"


def _decoded(raw: bytes | None) -> ExportRecord | None:
    from sheepdog_backend.export.base import ExportRecord
    return ExportRecord.decode(raw) if raw else None


def refuse_if_elsewhere(core: DriverCore, raw: bytes | None) -> None:
    """ExportElsewhere when ``raw`` (a volume's export record as read) is a
    central export another host's tgtd holds: no initiator would see a change
    made from here (call before changing anything)."""
    rec = _decoded(raw)
    if rec is not None and not rec.is_local:
        manager(core).check_served(rec)


def after_extend(core: DriverCore, name: str, raw: bytes | None) -> None:
    """Let initiators see the new size of an exported volume (``raw``: its
    export record as read, None when it has none)."""
    rec = _decoded(raw)
    if rec is not None and rec.is_local:
        local_exports(core).refresh_size(name)
    elif rec is not None:
        manager(core).refresh_size(name)


def through_gateway(core: DriverCore, lu_gateway: str) -> bool:
    """True when the LU goes through the local gateway and so do the driver's
    own requests: the gateway then sees the snapshot and makes it safe."""
    conf = core.configuration
    gateway = str(getattr(conf, "sheepdog_export_gateway", "") or "")
    return bool(gateway) and lu_gateway == gateway and gateway in [
        str(g) for g in conf.sheepdog_gateways]


def refuse_if_exported(core: DriverCore, name: str, what: str, *,
                       force: bool = False) -> None:
    from sheepdog_backend.export.manager import read_record
    if not force:
        refuse_if_recorded(core, name, what, read_record(core.client, name))


def refuse_if_recorded(core: DriverCore, name: str, what: str,
                       rec: ExportRecord | bytes | None, *, force: bool = False) -> None:
    """ExportedVolumeBusy when ``rec`` (the volume's export record, or its raw
    bytes) says tgt writes the volume straight to a node."""
    if isinstance(rec, bytes):
        rec = _decoded(rec)
    if force or rec is None or through_gateway(core, rec.gateway):
        return
    raise ExportedVolumeBusy(
        f"volume {name!r} is exported over iSCSI: a {what} now could lose writes tgt "
        "has acknowledged (the sheep rewrites the whole inode and drops a slot update "
        "landing meanwhile; tgt cannot pause I/O and caches the inode). Detach it first"
        + ("" if what.startswith("revert") else ", or force it once the guest is quiesced"))


def stats(core: DriverCore) -> dict[str, Any]:
    """Stats keys that depend on the attach protocol."""
    if uses_iscsi(core):  # every attachment shares the volume's one LU
        return {"storage_protocol": "iSCSI", "online_extend_support": True,
                "multiattach": True}
    # QEMU's sheepdog driver locks the VDI: one guest at a time
    return {"storage_protocol": "sheepdog", "online_extend_support": False,
            "multiattach": False}
