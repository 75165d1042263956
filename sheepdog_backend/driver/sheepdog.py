"""SheepdogDriver: the VolumeDriver contract over the native client.

How it works: the driver holds one ``SheepdogClient`` (built in ``do_setup``,
or on first use) for the backend's gateways.  A volume is a working VDI named
``volume.name`` or ``volume_name_template % id``; a snapshot is a snapshot of
that VDI tagged ``snapshot.name`` or ``snapshot_name_template % id``.  Sizes
arrive in GiB and go to the client in bytes.  Creates are idempotent by
inspection: when the VDI already exists with the requested size (and, for a
clone, the requested parent; for a volume-to-volume clone see clones.py) the
call succeeds; otherwise it fails and changes nothing.  Everything that takes
a name validates it before the first request.  Stats are cached until
``get_volume_stats(refresh=True)``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from sheepdog_backend import __version__
from sheepdog_backend.driver import clones, images, manage, sizing
from sheepdog_backend.driver.addresses import format_gateway, parse_gateway, same_endpoint
from sheepdog_backend.driver.base import (
    BackendConfiguration,
    Connector,
    GiB,
    Snapshot,
    Volume,
    VolumeDataAccess,
    VolumeDriver,
    gib,
)
from sheepdog_backend.driver.connection import connection_info
from sheepdog_backend.driver.data import (
    ClientDataAccess,
    copy_image_to_volume,
    copy_volume_to_image,
)
from sheepdog_backend.exception import (
    ConfigError,
    InvalidBackingImage,
    InvalidInput,
    NoGatewayAvailable,
    NoTag,
    NoVdi,
    RetryExhausted,
    SheepdogError,
    SnapshotNotFound,
    TransportError,
    VdiExists,
    VolumeIsBusy,
    VolumeNotFound,
    WaitForFormat,
)
from sheepdog_backend.opts import parse_erasure_code
from sheepdog_backend.protocol.constants import ClusterStatus
from sheepdog_backend.protocol.naming import check_snapshot_tag, check_volume_name
from sheepdog_backend.protocol.structs import ec_policy

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
        conf = configuration
        self._gateways = self._configured_gateways(conf)
        self._copies, self._copy_policy = self._redundancy(conf)
        self._client_obj: SheepdogClient | None = None
        self._lock = threading.Lock()
        self._stats: dict[str, Any] | None = None

    # -- configuration -----------------------------------------------------

    @staticmethod
    def _configured_gateways(conf: BackendConfiguration) -> list[str]:
        raw = list(conf.sheepdog_gateways or [])
        if not raw:
            raw = [format_gateway(conf.sheepdog_store_address, int(conf.sheepdog_store_port))]
        out: list[str] = []
        for item in raw:
            try:
                out.append(format_gateway(*parse_gateway(str(item))))
            except InvalidInput as exc:
                raise ConfigError(f"{conf.where('sheepdog_gateways')}: {exc}") from None
        return out

    @staticmethod
    def _redundancy(conf: BackendConfiguration) -> tuple[int, int]:
        copies = int(conf.sheepdog_copies or 0)
        code = conf.sheepdog_erasure_code
        if not code:
            return copies, 0
        if copies:
            raise ConfigError(f"{conf.where('sheepdog_erasure_code')}: cannot be combined "
                              f"with sheepdog_copies = {copies}; set one of them")
        try:
            data, parity = parse_erasure_code(str(code))
        except InvalidInput as exc:
            raise ConfigError(f"{conf.where('sheepdog_erasure_code')}: {exc}") from None
        return data + parity, ec_policy(data, parity)

    @property
    def gateways(self) -> list[str]:
        return list(self._gateways)

    def vdi_name(self, volume: Volume) -> str:
        """The VDI name of ``volume``; InvalidInput when it cannot exist."""
        if not isinstance(volume, Volume):
            raise InvalidInput(f"expected a Volume, got {type(volume).__name__}")
        if not volume.name and not volume.id:
            raise InvalidInput("a volume needs a name or an id")
        name = volume.vdi_name_for(self.configuration.volume_name_template)
        return check_volume_name(name)  # the user alphabet (protocol/naming.py)

    def snapshot_tag(self, snapshot: Snapshot) -> str:
        if not isinstance(snapshot, Snapshot):
            raise InvalidInput(f"expected a Snapshot, got {type(snapshot).__name__}")
        if not snapshot.name and not snapshot.id:
            raise InvalidInput("a snapshot needs a name or an id")
        tag = snapshot.tag_for(self.configuration.snapshot_name_template)
        return check_snapshot_tag(tag)  # the user alphabet (protocol/naming.py)

    # -- lifecycle ---------------------------------------------------------

    @property
    def client(self) -> SheepdogClient:
        """The SheepdogClient (built on first use when do_setup was not called)."""
        with self._lock:
            if self._client_obj is None:
                self._client_obj = self._make_client()
            return self._client_obj

    def _make_client(self) -> SheepdogClient:
        from sheepdog_backend.client import RetryPolicy, SheepdogClient

        conf = self.configuration
        retry = RetryPolicy(attempts=int(conf.sheepdog_retry_attempts),
                            deadline=float(conf.sheepdog_retry_deadline))
        return SheepdogClient(
            self._gateways, connect_timeout=float(conf.sheepdog_connect_timeout),
            request_timeout=float(conf.sheepdog_request_timeout),
            pool_size=int(conf.sheepdog_pool_size), retry=retry,
            io_window=int(conf.sheepdog_io_window))

    def do_setup(self) -> None:
        _ = self.client

    def check_for_setup_error(self) -> None:
        where = ", ".join(self._gateways)
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
        with self._lock:
            client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()

    # -- helpers -----------------------------------------------------------

    def _existing(self, name: str) -> Any:
        info = self.client.find_vdi(name)
        if info is None:
            raise VolumeNotFound(f"volume {name!r} does not exist")
        return info

    def _snapshot_info(self, name: str, tag: str) -> Any:
        info = self.client.find_vdi(name, tag)
        if info is None or not info.is_snapshot:
            raise SnapshotNotFound(f"snapshot {tag!r} of volume {name!r} does not exist")
        return info

    def _snapshots_of(self, name: str) -> list[VdiInfo]:
        """Snapshots of ``name``, oldest first (the client reads only the name's
        probe chain, not every inode of the cluster)."""
        return self.client.list_snapshots(name)

    def _invalidate_stats(self) -> None:
        self._stats = None

    def _create_checked(self, name: str, size: int, *, parent_vid: int | None) -> bool:
        """True when ``name`` already exists as requested (a retried create);
        raises VdiExists when it exists otherwise; False when absent."""
        info = self.client.find_vdi(name)
        if info is None:
            return False
        if info.size != size:
            raise VdiExists(f"volume {name!r} already exists with {info.size} bytes, not "
                            f"{size} ({size // GiB} GiB)")
        if parent_vid is not None and info.parent_vid != parent_vid:
            raise VdiExists(f"volume {name!r} already exists and is not a clone of the "
                            "requested snapshot")
        LOG.info("volume %s already exists as requested", name)
        return True

    # -- volumes -----------------------------------------------------------

    def create_volume(self, volume: Volume, *, backing: str | None = None) -> dict[str, Any]:
        name = self.vdi_name(volume)
        size = gib(volume.size) * GiB
        if backing is not None:
            return self._create_from_backing(name, size, backing)
        if self._create_checked(name, size, parent_vid=None):
            return {}
        try:
            self.client.create_vdi(name, size, copies=self._copies,
                                   copy_policy=self._copy_policy,
                                   block_size_shift=sizing.shift_for_new_volume(self, size))
        except VdiExists:
            if not self._create_checked(name, size, parent_vid=None):
                raise
        self._invalidate_stats()
        return {}

    def delete_volume(self, volume: Volume) -> None:
        name = self.vdi_name(volume)
        if self.client.find_vdi(name) is None:
            LOG.info("volume %s is already gone", name)
            return
        snaps = self._snapshots_of(name)
        temps = [s for s in snaps if clones.is_temp_tag_of(name, s.tag)]
        snaps = [s for s in snaps if s not in temps]
        if snaps:
            tags = ", ".join(repr(s.tag or f"#{s.snap_id}") for s in snaps[:5])
            raise VolumeIsBusy(f"volume {name!r} has {len(snaps)} snapshot(s) ({tags}): "
                               "delete them first")
        clones.drop_temps_of(self, temps)  # left by an interrupted create_cloned_volume
        if not self.client.delete_vdi(name):
            LOG.info("volume %s vanished while being deleted", name)
        self._invalidate_stats()

    def extend_volume(self, volume: Volume, new_size: int) -> None:
        name = self.vdi_name(volume)
        new_bytes = gib(new_size, "new size") * GiB
        info = self._existing(name)
        if new_bytes < info.size:
            raise InvalidInput(f"volume {name!r} is {info.size} bytes; it can only grow, not "
                               f"shrink to {new_size} GiB")
        if new_bytes > info.size:
            sizing.check_extend(self.configuration, name, info.block_size_shift, new_bytes)
            self.client.resize_vdi(name, new_bytes)
            self._invalidate_stats()

    # -- snapshots and clones ---------------------------------------------

    def create_snapshot(self, snapshot: Snapshot) -> dict[str, Any]:
        tag = self.snapshot_tag(snapshot)  # first: it checks snapshot is a Snapshot
        name = self.vdi_name(snapshot.volume)
        self._existing(name)
        existing = self.client.find_vdi(name, tag)
        if existing is not None and existing.is_snapshot:
            LOG.info("snapshot %s of %s already exists", tag, name)
            return {}
        try:
            self.client.snapshot_vdi(name, tag)
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
        info = self.client.find_vdi(name, tag)
        if info is None or not info.is_snapshot:
            LOG.info("snapshot %s of %s is already gone", tag, name)
            return
        try:
            self.client.delete_vdi(name, tag)
        except (NoVdi, NoTag):
            LOG.info("snapshot %s of %s vanished while being deleted", tag, name)

    def create_volume_from_snapshot(self, volume: Volume,
                                    snapshot: Snapshot) -> dict[str, Any]:
        name = self.vdi_name(volume)
        size = gib(volume.size) * GiB
        tag = self.snapshot_tag(snapshot)  # first: it checks snapshot is a Snapshot
        src = self.vdi_name(snapshot.volume)
        snap = self._snapshot_info(src, tag)
        return clones.clone_snapshot(self, snap, src, tag, name, size)

    def create_cloned_volume(self, volume: Volume, src_vref: Volume) -> dict[str, Any]:
        return clones.create_cloned_volume(self, volume, src_vref)

    def revert_to_snapshot(self, volume: Volume, snapshot: Snapshot) -> None:
        name = self.vdi_name(volume)
        tag = self.snapshot_tag(snapshot)
        want = gib(volume.size) * GiB
        info = self.client.find_vdi(name)
        snap = self.client.find_vdi(name, tag) if info is None else None
        if info is None and (snap is None or not snap.is_snapshot):
            raise VolumeNotFound(f"volume {name!r} does not exist")
        if info is None:  # a revert that died after the old working VDI was deleted
            LOG.warning("volume %s has snapshot %s but no working VDI: finishing an "
                        "interrupted revert", name, tag)
        else:
            self._snapshot_info(name, tag)
            want = max(want, info.size)
        reverted = self.client.rollback_vdi(name, tag)
        if reverted.size < want:  # keep the volume's (possibly grown) size
            self.client.resize_vdi(name, want)

    # -- backing references --------------------------------------------------

    def cluster_endpoints(self) -> list[tuple[str, int]]:
        """Configured gateways plus every node the cluster lists."""
        endpoints = [parse_gateway(g) for g in self._gateways]
        try:
            for node in self.client.node_list():
                endpoints.append((node.nid.addr, node.nid.port))
        except SheepdogError as exc:
            LOG.warning("could not list cluster nodes: %s", exc)
        return endpoints

    def resolve_backing(self, backing: str) -> tuple[Any, str]:
        """(snapshot VdiInfo, tag) for a reference, or InvalidBackingImage."""
        ref = images.parse_backing_reference(backing)
        if ref.host is not None:
            port = ref.port if ref.port is not None else 7000
            if not any(same_endpoint((ref.host, port), ep) for ep in self.cluster_endpoints()):
                raise InvalidBackingImage(
                    f"backing image {backing!r} rejected: {format_gateway(ref.host, port)} is "
                    f"not a gateway of this cluster ({', '.join(self._gateways)})")
        if ref.latest_snapshot:
            working = self.client.find_vdi(ref.vdi)
            snaps = self._snapshots_of(ref.vdi)
            if working is None and not snaps:
                raise InvalidBackingImage(f"backing image {backing!r} rejected: no VDI "
                                          f"{ref.vdi!r} in this cluster")
            if not snaps:
                raise InvalidBackingImage(
                    f"backing image {backing!r} rejected: glance image VDI {ref.vdi!r} is a "
                    "working VDI with no snapshot; snapshot it once uploaded (dog vdi "
                    "snapshot) to make it a base")
            snap = snaps[-1]
        else:
            found = self.client.find_vdi(ref.vdi, ref.tag, ref.snapid)
            if found is None:
                raise InvalidBackingImage(f"backing image {backing!r} rejected: no snapshot "
                                          f"{ref.describes} in this cluster")
            snap = found
            if not snap.is_snapshot:
                raise InvalidBackingImage(f"backing image {backing!r} rejected: "
                                          f"{ref.describes} is a working VDI, not a snapshot")
        if not snap.tag:
            raise InvalidBackingImage(f"backing image {backing!r} rejected: snapshot id "
                                      f"{snap.snap_id} of {ref.vdi!r} has no tag to clone by")
        return snap, snap.tag

    def _create_from_backing(self, name: str, size: int, backing: str) -> dict[str, Any]:
        snap, tag = self.resolve_backing(backing)
        return clones.clone_snapshot(self, snap, snap.name, tag, name, size)

    # -- attachment ----------------------------------------------------------

    def initialize_connection(self, volume: Volume, connector: Connector) -> dict[str, Any]:
        name = self.vdi_name(volume)
        self._existing(name)
        gateways = list(self.client.gateways_by_health())
        return connection_info(name, gateways)

    def terminate_connection(self, volume: Volume, connector: Connector | None) -> None:
        """Sheepdog keeps no per-host export state: nothing to undo."""
        self.vdi_name(volume)

    # -- stats ---------------------------------------------------------------

    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        if refresh or self._stats is None:
            self._stats = self._collect_stats()
        return dict(self._stats)

    def _collect_stats(self) -> dict[str, Any]:
        conf = self.configuration
        total_gb: float | str
        free_gb: float | str
        try:
            total, free = self.client.capacity()
            total_gb, free_gb = round(total / GiB, 2), round(free / GiB, 2)
        except (TransportError, RetryExhausted) as exc:
            # A listed node that cannot be reached (down, or not yet dropped from the
            # node list) leaves the capacity unknown; Cinder's scheduler accepts that.
            LOG.warning("backend %s: capacity unknown: %s", self.backend_name, exc)
            total_gb = free_gb = "unknown"
        working = [v for v in self.client.list_vdis() if not v.is_snapshot]
        return {
            "volume_backend_name": conf.volume_backend_name or self.backend_name,
            "vendor_name": "Open Source",
            "driver_version": self.VERSION,
            "storage_protocol": "sheepdog",
            "total_capacity_gb": total_gb,
            "free_capacity_gb": free_gb,
            "provisioned_capacity_gb": round(sum(v.size for v in working) / GiB, 2),
            "thin_provisioning_support": True,
            "thick_provisioning_support": False,
            "max_over_subscription_ratio": float(conf.max_over_subscription_ratio),
            "reserved_percentage": int(conf.reserved_percentage),
            "total_volumes": len(working),
            "multiattach": False,
            "online_extend_support": False,
            "sparse_copy_volume": True,
        }

    # -- images --------------------------------------------------------------

    def copy_image_to_volume(self, volume: Volume, image_path: str) -> None:
        name = self.vdi_name(volume)
        info = self._existing(name)
        qemu_img = images.find_qemu_img(self.configuration.qemu_img_path or "qemu-img")
        copy_image_to_volume(self.client, name, info.size, image_path, qemu_img=qemu_img,
                             work_dir=self.configuration.image_conversion_dir)

    def copy_volume_to_image(self, volume: Volume, image_path: str) -> None:
        name = self.vdi_name(volume)
        info = self._existing(name)
        copy_volume_to_image(self.client, name, info.size, image_path)

    # -- manage (driver/manage.py) ----------------------------------------

    def manage_existing(self, volume: Volume, existing_ref: dict[str, Any]) -> dict[str, Any]:
        return manage.manage_existing(self, volume, existing_ref)

    def manage_existing_get_size(self, volume: Volume, existing_ref: dict[str, Any]) -> int:
        return manage.manage_existing_get_size(self, volume, existing_ref)

    def unmanage(self, volume: Volume) -> None:
        manage.unmanage(self, volume)

    def get_manageable_volumes(self) -> list[dict[str, Any]]:
        return manage.get_manageable_volumes(self)

    # -- inspection (CLI, demo; not part of the contract) ---------------------

    @staticmethod
    def _describe(info: Any) -> dict[str, Any]:
        return {"name": info.name, "tag": info.tag, "snap_id": info.snap_id,
                "size_bytes": info.size, "size_gib": round(info.size / GiB, 3),
                "vid": info.vid, "parent_vid": info.parent_vid,
                "is_snapshot": bool(info.is_snapshot), "copies": info.nr_copies,
                "copy_policy": info.copy_policy, "block_size_shift": info.block_size_shift,
                "created": (info.snap_ctime if info.is_snapshot else info.create_time) >> 32,
                "used_bytes": info.used, "shared_bytes": info.shared}

    def describe_volume(self, volume: Volume) -> dict[str, Any]:
        """The volume's VDI and its snapshots; VolumeNotFound when absent."""
        name = self.vdi_name(volume)
        out = self._describe(self._existing(name))
        out["snapshots"] = [self._describe(s) for s in self._snapshots_of(name)]
        return out

    def describe_snapshot(self, snapshot: Snapshot) -> dict[str, Any]:
        name = self.vdi_name(snapshot.volume)
        return self._describe(self._snapshot_info(name, self.snapshot_tag(snapshot)))

    def list_volumes(self) -> list[dict[str, Any]]:
        return [self._describe(v) for v in sorted(self.client.list_vdis(with_usage=True),
                                                   key=lambda v: (v.name, v.snap_id))
                if not v.is_snapshot]

    def list_snapshots(self, volume: Volume | None = None) -> list[dict[str, Any]]:
        name = self.vdi_name(volume) if volume is not None else None
        vdis = self.client.list_vdis(with_usage=True)
        return [self._describe(v) for v in sorted(vdis, key=lambda v: (v.name, v.snap_id))
                if v.is_snapshot and (name is None or v.name == name)]

    # -- tests ---------------------------------------------------------------

    def data_access(self) -> VolumeDataAccess:
        return ClientDataAccess(self)
