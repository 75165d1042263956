"""SheepdogDriver: the VolumeDriver contract over the native client.

How it works: the driver holds one ``DriverCore`` (driver/core.py: the parsed
configuration, the ``SheepdogClient`` built in ``do_setup`` or on first use,
the stats cache and the per-volume locks) and delegates to helper modules that
depend on that core only: ``clones`` (clones), ``revert`` (reverts and their
durable intent), ``manage`` (adoption), ``data`` (bytes in and out),
``backing`` (backing references), ``stats`` (stats and inspection).

A volume is a working VDI named ``volume.name`` when the caller gives it (an
exact name: a control plane such as Cinder that owns its names passes it) or
``volume_name_template % id``; a snapshot is a snapshot of that VDI tagged
``snapshot.name`` or ``snapshot_name_template % id``.  Sizes arrive in GiB and
go to the client in bytes.  Creates are idempotent by inspection: when the VDI
already exists with the requested size (and, for a clone, the requested
parent; for a volume-to-volume clone see clones.py) the call succeeds;
otherwise it fails and changes nothing.  Everything that takes a name
validates it before the first request.  Every operation on a volume first
finishes an interrupted revert of it (``revert.settle``).  Every operation
that changes a volume holds its lock and its lease on the cluster
(``core.hold``; clones and volumes made from snapshots also their source's),
so drivers in any number of processes and hosts act on one volume one at a
time.  Stats are cached until ``get_volume_stats(refresh=True)``.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

from sheepdog_backend import __version__
from sheepdog_backend.client import Ask
from sheepdog_backend.driver import (
    attach,
    clones,
    images,
    manage,
    revert,
    sizing,
    stats,
    takeover,
)
from sheepdog_backend.driver import backing as _backing
from sheepdog_backend.driver.base import (
    BackendConfiguration,
    Connector,
    GiB,
    Snapshot,
    Volume,
    VolumeDataAccess,
    VolumeDriver,
    gib,
    human,
)
from sheepdog_backend.driver.connection import connection_info
from sheepdog_backend.driver.core import DriverCore, require_snapshot
from sheepdog_backend.driver.data import (
    ClientDataAccess,
    copy_image_to_volume,
    copy_volume_to_image,
)
from sheepdog_backend.exception import (
    InvalidInput,
    NoGatewayAvailable,
    NoTag,
    NoVdi,
    RetryExhausted,
    TransportError,
    VdiExists,
    VolumeIsBusy,
    VolumeNotFound,
    WaitForFormat,
)
from sheepdog_backend.protocol.constants import ClusterStatus

if TYPE_CHECKING:  # the client is imported on first use, not at driver import
    from sheepdog_backend.client import SheepdogClient, VdiInfo

LOG = logging.getLogger(__name__)


class SheepdogDriver(VolumeDriver):
    VERSION: ClassVar[str] = __version__
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"snapshots", "clone", "extend", "revert", "manage", "backing_images",
         "image_transfer", "data_access"})

    def __init__(self, configuration: BackendConfiguration, *, backend_name: str) -> None:
        super().__init__(configuration, backend_name=backend_name)
        self._core = DriverCore(configuration, backend_name=backend_name,
                                recover=takeover.recover)

    @property
    def core(self) -> DriverCore:
        """The interface the helper modules (and hook modules) work with."""
        return self._core

    @property
    def gateways(self) -> list[str]:
        return list(self._core.gateways)

    def vdi_name(self, volume: Volume) -> str:
        """The VDI name of ``volume`` (``volume.name`` when given, exactly);
        InvalidInput when it cannot exist."""
        return self._core.vdi_name(volume)

    def snapshot_tag(self, snapshot: Snapshot) -> str:
        """The tag of ``snapshot`` (``snapshot.name`` when given, exactly)."""
        return self._core.snapshot_tag(snapshot)

    # -- lifecycle ---------------------------------------------------------

    @property
    def client(self) -> SheepdogClient:
        """The SheepdogClient (built on first use when do_setup was not called)."""
        return self._core.client

    def do_setup(self) -> None:
        _ = self.client

    def check_for_setup_error(self) -> None:
        where = ", ".join(self._core.gateways)
        try:
            from sheepdog_backend.client.identity import check_gateways  # one cluster only

            check_gateways(self.client.cluster, self.configuration.sheepdog_cluster_id)
            info = self.client.cluster_info()
        except (TransportError, RetryExhausted) as exc:
            raise NoGatewayAvailable(f"backend {self.backend_name}: no Sheepdog gateway "
                                     f"answered ({where}): {exc}") from exc
        except WaitForFormat:
            raise WaitForFormat(f"backend {self.backend_name}: the cluster at {where} is "
                                "not formatted: run 'dog cluster format'") from None
        if info.status != ClusterStatus.OK:
            states: dict[int, str] = {
                ClusterStatus.WAIT: "waiting (not formatted, or nodes missing)",
                ClusterStatus.SHUTDOWN: "shutting down",
                ClusterStatus.KILLED: "killed"}
            state = states.get(info.status, f"status {info.status}")
            exc_cls = WaitForFormat if info.nr_copies == 0 else NoGatewayAvailable
            raise exc_cls(f"backend {self.backend_name}: the cluster at {where} is {state}"
                          + (": run 'dog cluster format'" if info.nr_copies == 0 else ""))

    def close(self) -> None:
        self._core.close()

    def _settled(self, volume: Volume) -> tuple[str, VdiInfo | None]:
        """The volume's name and working VDI, after finishing an interrupted
        revert of it."""
        name = self.vdi_name(volume)
        return name, revert.settle(self._core, name)

    def _existing(self, volume: Volume) -> tuple[str, VdiInfo]:
        name, info = self._settled(volume)
        if info is None:
            raise VolumeNotFound(f"volume {name!r} does not exist")
        return name, info

    # -- volumes -----------------------------------------------------------

    def create_volume(self, volume: Volume, *, backing: str | None = None) -> dict[str, Any]:
        core = self._core
        name = self.vdi_name(volume)
        size = gib(volume.size) * GiB
        if backing is not None:
            snap, tag = self.resolve_backing(backing)
            with core.hold(name, snap.name, op="create_volume"):
                revert.settle(core, name)
                return clones.clone_snapshot(core, snap, snap.name, tag, name, size)
        with core.hold(name, op="create_volume"):
            # a half-done revert is finished, not replaced by a blank; the name is
            # not looked up: NEW_VDI answers VDI_EXIST when it is taken
            revert.survey(core, name, look=False)
            try:
                if sizing.hyper_for_new_volume(self.configuration, size):
                    self.client.create_vdi(name, size, copies=core.copies,
                                           copy_policy=core.copy_policy, hyper=True)
                else:
                    self.client.create_vdi(
                        name, size, copies=core.copies, copy_policy=core.copy_policy,
                        block_size_shift=sizing.shift_for_new_volume(core, size))
            except VdiExists:
                if not core.create_checked(name, size, parent_vid=None):
                    raise
        core.invalidate_stats()
        return {}

    def delete_volume(self, volume: Volume) -> None:
        core = self._core
        name = self.vdi_name(volume)
        with core.hold(name, op="delete_volume") as held:
            state = revert.survey(core, name, family=True)
            if state.working is None:
                LOG.info("volume %s is already gone", name)
                return
            snaps = state.snapshots
            temps = [s for s in snaps if clones.is_temp_tag_of(name, s.tag)]
            snaps = [s for s in snaps if s not in temps]
            if snaps:
                tags = ", ".join(repr(s.tag or f"#{s.snap_id}") for s in snaps[:5])
                raise VolumeIsBusy(f"volume {name!r} has {len(snaps)} snapshot(s) ({tags}): "
                                   "delete them first")
            clones.drop_temps_of(core, temps)  # left by an interrupted create_cloned_volume
            # the survey's inode unless temporary snapshots changed it
            known = None if temps else state.working
            if not self.client.delete_vdi(name, known=known):
                LOG.info("volume %s vanished while being deleted", name)
            held.gone(name)  # nothing left to reuse the lease for
            core.invalidate_stats()

    def extend_volume(self, volume: Volume, new_size: int) -> None:
        new_bytes = gib(new_size, "new size") * GiB
        name = self.vdi_name(volume)
        with self._core.hold(name, op="extend_volume"):
            state = revert.survey(self._core, name, keys=(attach.EXPORT_KEY,))
            info = state.working
            if info is None:
                raise VolumeNotFound(f"volume {name!r} does not exist")
            if new_bytes < info.size:
                raise InvalidInput(f"volume {name!r} is {human(info.size)}; it can only "
                                   f"grow, not shrink to {new_size} GiB")
            if new_bytes > info.size:
                sizing.check_extend(self.configuration, name, info.block_size_shift,
                                    new_bytes, info.store_policy)
                attach.refuse_if_elsewhere(self._core, state.attrs[attach.EXPORT_KEY])
                self.client.resize_vdi(name, new_bytes, known=info)
                self._core.invalidate_stats()
                attach.after_extend(self._core, name, state.attrs[attach.EXPORT_KEY])

    # -- snapshots and clones ---------------------------------------------

    def create_snapshot(self, snapshot: Snapshot, *, force: bool = False) -> dict[str, Any]:
        core = self._core
        tag = self.snapshot_tag(snapshot)  # first: it checks snapshot is a Snapshot
        name = self.vdi_name(snapshot.volume)
        # concurrent snapshots of one VDI lose their tags; the record names the
        # tag, which the next holder clears should this process die tagging
        with core.hold(name, op="create_snapshot", details={name: tag}):
            state = revert.survey(core, name, tag=tag, keys=(attach.EXPORT_KEY,))
            info = state.working
            if info is None:
                raise VolumeNotFound(f"volume {name!r} does not exist")
            sizing.refuse_hyper(name, "snapshots", info.store_policy)
            attach.refuse_if_recorded(core, name, "snapshot", state.attrs[attach.EXPORT_KEY],
                                      force=force)
            existing = state.tagged
            if existing is not None and existing.is_snapshot:
                LOG.info("snapshot %s of %s already exists", tag, name)
                return {}
            try:
                self.client.snapshot_vdi(name, tag, known=info)
            except NoVdi:
                raise VolumeNotFound(f"volume {name!r} does not exist") from None
            except VdiExists:  # made meanwhile (a concurrent repeat of this call)?
                made = self.client.find_vdi(name, tag)
                if made is None or not made.is_snapshot:
                    raise
        return {}

    def delete_snapshot(self, snapshot: Snapshot) -> None:
        tag = self.snapshot_tag(snapshot)  # first: it checks snapshot is a Snapshot
        name = self.vdi_name(snapshot.volume)
        with self._core.hold(name, op="delete_snapshot"):
            # settled first: a pending revert may need this snapshot; only the
            # snapshot is looked up (a lookup costs a real sheep 1-8 ms)
            info = revert.survey(self._core, name, tag=tag, look=False).tagged
            if info is None or not info.is_snapshot:
                LOG.info("snapshot %s of %s is already gone", tag, name)
                return
            try:
                self.client.delete_vdi(name, tag, known=info)
            except (NoVdi, NoTag):
                LOG.info("snapshot %s of %s vanished while being deleted", tag, name)

    def create_volume_from_snapshot(self, volume: Volume,
                                    snapshot: Snapshot) -> dict[str, Any]:
        name = self.vdi_name(volume)
        size = gib(volume.size) * GiB
        tag = self.snapshot_tag(snapshot)  # first: it checks snapshot is a Snapshot
        src = self.vdi_name(snapshot.volume)
        with self._core.hold(name, src, op="create_volume_from_snapshot"):
            # the source snapshot and the new name's revert record in one survey;
            # the new name is not looked up: NEW_VDI answers VDI_EXIST when taken
            _, source = revert.surveys(self._core, Ask(name, look=False),
                                       Ask(src, tag, look=False))
            snap = require_snapshot(source.tagged, src, tag)
            return clones.clone_snapshot(self._core, snap, src, tag, name, size, look=False)

    def create_cloned_volume(self, volume: Volume, src_vref: Volume, *,
                             force: bool = False) -> dict[str, Any]:
        attach.refuse_if_exported(self._core, self.vdi_name(src_vref), "clone (it "
                                  "snapshots the source)", force=force)
        return clones.create_cloned_volume(self._core, volume, src_vref)

    def revert_to_snapshot(self, volume: Volume, snapshot: Snapshot) -> None:
        name = self.vdi_name(volume)
        tag = self.snapshot_tag(snapshot)
        current = self._core.client.find_vdi(name)
        if current is not None:
            sizing.refuse_hyper(name, "reverts", current.store_policy)
        attach.refuse_if_exported(self._core, name,
                                  "revert (tgt would keep the old inode)")
        revert.revert_to_snapshot(self._core, name, tag, gib(volume.size) * GiB)

    # -- backing references --------------------------------------------------

    def cluster_endpoints(self) -> list[tuple[str, int]]:
        """Configured gateways plus every node the cluster lists."""
        return _backing.cluster_endpoints(self._core)

    def resolve_backing(self, backing: str) -> tuple[Any, str]:
        """(snapshot VdiInfo, tag) for a reference, or InvalidBackingImage."""
        return _backing.resolve_backing(self._core, backing)

    # -- attachment ----------------------------------------------------------

    def _exporting(self, volume: Volume, op: str) -> AbstractContextManager[Any]:
        """The volume's lock and lease while its iSCSI export and the export's
        record on the cluster change; nothing for native attach."""
        if not attach.uses_iscsi(self._core):
            return nullcontext()
        return self._core.hold(self.vdi_name(volume), op=op)

    def initialize_connection(self, volume: Volume, connector: Connector) -> dict[str, Any]:
        with self._exporting(volume, "initialize_connection"):
            name, info = self._existing(volume)
            sizing.refuse_hyper_attach(name, info.store_policy)
            if attach.uses_iscsi(self._core):
                return attach.initialize_connection(self._core, volume, connector)
        gateways = list(self.client.gateways_by_health())
        return connection_info(name, gateways)

    def terminate_connection(self, volume: Volume, connector: Connector | None) -> bool:
        """Native Sheepdog keeps no per-host state; iSCSI ends one attachment
        and says whether others still share the target."""
        if attach.uses_iscsi(self._core):
            with self._exporting(volume, "terminate_connection"):
                return attach.terminate_connection(self._core, volume, connector).shared
        self.vdi_name(volume)
        return False

    # iSCSI exports (driver/attach.py, sheepdog_backend/export)
    def initialize_connection_snapshot(self, snapshot: Snapshot,
                                       connector: Connector) -> dict[str, Any]:
        with self._exporting(snapshot.volume, "initialize_connection_snapshot"):
            return attach.initialize_connection_snapshot(self._core, snapshot, connector)

    def terminate_connection_snapshot(self, snapshot: Snapshot,
                                      connector: Connector | None) -> bool:
        with self._exporting(snapshot.volume, "terminate_connection_snapshot"):
            return attach.terminate_connection_snapshot(self._core, snapshot,
                                                        connector).shared

    def create_export(self, volume: Volume,
                      connector: Connector | None = None) -> dict[str, Any]:
        with self._exporting(volume, "create_export"):
            return attach.create_export(self._core, volume, connector)

    def ensure_export(self, volume: Volume) -> dict[str, Any]:
        with self._exporting(volume, "ensure_export"):
            return attach.ensure_export(self._core, volume)

    def remove_export(self, volume: Volume, *, force: bool = False) -> None:
        with self._exporting(volume, "remove_export"):
            attach.remove_export(self._core, volume, force=force)

    # -- stats ---------------------------------------------------------------

    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        current = self._core.stats
        if refresh or current is None:
            current = self._core.stats = stats.collect_stats(self._core, self.VERSION)
        return dict(current)

    # -- images --------------------------------------------------------------

    def copy_image_to_volume(self, volume: Volume, image_path: str) -> None:
        name = self.vdi_name(volume)
        qemu_img = images.find_qemu_img(self.configuration.qemu_img_path or "qemu-img")
        with self._core.hold(name, op="copy_image_to_volume") as held:
            _, info = self._existing(volume)
            copy_image_to_volume(self.client, name, info.size, image_path, qemu_img=qemu_img,
                                 work_dir=self.configuration.image_conversion_dir,
                                 check=held.check)

    def copy_volume_to_image(self, volume: Volume, image_path: str) -> None:
        name, info = self._existing(volume)
        copy_volume_to_image(self.client, name, info.size, image_path)

    # -- manage (driver/manage.py) ----------------------------------------

    def manage_existing(self, volume: Volume, existing_ref: dict[str, Any]) -> dict[str, Any]:
        return manage.manage_existing(self._core, volume, existing_ref)

    def manage_existing_get_size(self, volume: Volume, existing_ref: dict[str, Any]) -> int:
        return manage.manage_existing_get_size(self._core, volume, existing_ref)

    def unmanage(self, volume: Volume) -> None:
        manage.unmanage(self._core, volume)

    def get_manageable_volumes(self) -> list[dict[str, Any]]:
        return manage.get_manageable_volumes(self._core)

    # -- inspection (CLI, demo; not part of the contract) ---------------------

    def describe_volume(self, volume: Volume) -> dict[str, Any]:
        """The volume's VDI and its snapshots; VolumeNotFound when absent."""
        name = self.vdi_name(volume)
        state = revert.survey(self._core, name, family=True)
        if state.working is None:
            raise VolumeNotFound(f"volume {name!r} does not exist")
        out = stats.describe(state.working)
        out["snapshots"] = [stats.describe(s) for s in state.snapshots]
        return out

    def describe_snapshot(self, snapshot: Snapshot) -> dict[str, Any]:
        name = self.vdi_name(snapshot.volume)
        return stats.describe(self._core.snapshot_info(name, self.snapshot_tag(snapshot)))

    def list_volumes(self) -> list[dict[str, Any]]:
        return stats.list_volumes(self._core)

    def list_snapshots(self, volume: Volume | None = None) -> list[dict[str, Any]]:
        name = self.vdi_name(volume) if volume is not None else None
        return stats.list_snapshots(self._core, name)

    # -- tests ---------------------------------------------------------------

    def data_access(self) -> VolumeDataAccess:
        return ClientDataAccess(self._core)
