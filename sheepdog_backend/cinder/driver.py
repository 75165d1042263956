"""SheepdogCinderDriver: what cinder-volume loads for a Sheepdog backend.

How it works: Cinder builds the driver with its backend ``configuration``; the
driver appends our ``sheepdog_*`` options to it and, on ``do_setup`` (or first
use), builds one core ``SheepdogDriver`` from a ``BackendConfiguration`` holding
those values plus the Cinder-owned ones it reads (templates, stats options).
Every Cinder call translates its versioned objects into the core models with
exact names (translate.py), calls the core driver, and returns Cinder's model
update (``provider_location`` = the VDI name or snapshot tag).  Errors become
Cinder's exceptions in ``cinder_errors``.  The core driver (and its client) is
shared by every green thread of cinder-volume; the client is thread-safe and
works under eventlet's monkey patching (its locks, sockets and threads are the
patched ones).  ``self._core`` is built once under ``self._core_lock``.

Active/active (``[DEFAULT] cluster``): any service of the cluster may get any
call for any volume, so nothing a later call needs stays in one process.
What a volume is lives on the cluster (its VDI, snapshots, export record);
every change holds the volume's lease there (driver/core.py), so services act
on a volume one at a time, and a service that dies mid-operation leaves its
lease to expire: the next holder - the service Cinder's cleanup hands the
volume to, or the user's next request - finishes or undoes what it left.
The driver needs no lock of Cinder's (its ``[coordination]`` backend still
serves Cinder's own manager locks).  Only central iSCSI exports are per host:
a target lives on the tgtd of the host that attached it, and a service on
another host refuses to change it (ExportElsewhere); local exports are any
service's (see the README).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

try:
    from cinder import exception, interface
    from cinder.volume import configuration as cinder_configuration
    from cinder.volume import driver as cinder_driver
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    from sheepdog_backend.cinder import MISSING_CINDER

    raise ImportError(f"{MISSING_CINDER} ({_exc})", name=_exc.name) from _exc

from oslo_config import cfg

from sheepdog_backend import __version__, opts
from sheepdog_backend.cinder import images, manageable
from sheepdog_backend.cinder.options import CINDER_OWNED_EXPORT_OPTS, SHEEPDOG_CINDER_OPTS
from sheepdog_backend.cinder.translate import (
    cinder_errors,
    core_connector,
    core_snapshot,
    core_volume,
    snapshot_tag,
    vdi_name,
)
from sheepdog_backend.driver.base import BackendConfiguration
from sheepdog_backend.driver.sheepdog import SheepdogDriver

LOG = logging.getLogger(__name__)
CONF = cfg.CONF
CONF.register_opts(SHEEPDOG_CINDER_OPTS, group=cinder_configuration.SHARED_CONF_GROUP)

STORAGE_PROTOCOL = "sheepdog"  # Cinder has no constant for it


def _float_or(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


@interface.volumedriver
class SheepdogCinderDriver(cinder_driver.VolumeDriver):  # type: ignore[misc]
    """Sheepdog volumes for Cinder, through sheepdog-backend's native client."""

    VERSION = __version__
    CI_WIKI_NAME = "sheepdog-backend"
    SUPPORTS_ACTIVE_ACTIVE = True  # see "Active/active" above
    _stats: dict[str, Any]  # BaseVD's stats cache

    def __init__(self, *args: Any, configuration: Any = None, **kwargs: Any) -> None:
        if configuration is None:  # Cinder always passes one; a bare build reads defaults
            configuration = cinder_configuration.Configuration(
                cinder_driver.volume_opts, config_group=cinder_configuration.SHARED_CONF_GROUP)
        super().__init__(*args, configuration=configuration, **kwargs)
        self.configuration.append_config_values(SHEEPDOG_CINDER_OPTS)
        self._core_obj: SheepdogDriver | None = None
        self._core_lock = threading.Lock()

    @staticmethod
    def get_driver_options() -> list[cfg.Opt]:
        return list(SHEEPDOG_CINDER_OPTS)

    # -- the core driver ------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return str(self.configuration.safe_get("volume_backend_name")
                   or self.configuration.config_group or "sheepdog")

    def core_configuration(self) -> BackendConfiguration:
        """Our options from the backend section, Cinder-owned names from Cinder."""
        conf = self.configuration
        values: dict[str, Any] = {opt.dest: conf.safe_get(opt.dest)
                                  for opt in SHEEPDOG_CINDER_OPTS}
        defaults = opts.default_values()
        values.update({
            "volume_driver": __name__ + ".SheepdogCinderDriver",
            "volume_backend_name": self.backend_name,
            "volume_name_template": CONF.volume_name_template,
            "snapshot_name_template": CONF.snapshot_name_template,
            "max_over_subscription_ratio": _float_or(
                conf.safe_get("max_over_subscription_ratio"),
                defaults["max_over_subscription_ratio"]),
            "reserved_percentage": int(conf.safe_get("reserved_percentage") or 0),
            "image_conversion_dir": CONF.image_conversion_dir or None,
        })
        for name in CINDER_OWNED_EXPORT_OPTS:  # Cinder's iSCSI target options
            value = conf.safe_get(name)
            if value is not None:
                values[name] = value
        return BackendConfiguration(values, section=conf.config_group)

    @property
    def core(self) -> SheepdogDriver:
        """The core driver (built on first use when do_setup was not called)."""
        with self._core_lock:
            if self._core_obj is None:
                with cinder_errors():
                    self._core_obj = SheepdogDriver(self.core_configuration(),
                                                    backend_name=self.backend_name)
            return self._core_obj

    # -- lifecycle ------------------------------------------------------------

    def do_setup(self, context: Any) -> None:
        with cinder_errors():
            self.core.do_setup()
        conf = self.configuration
        if self.cluster_name and conf.safe_get("sheepdog_attach_protocol") == "iscsi" and \
                conf.safe_get("sheepdog_export_mode") != "local":
            LOG.warning(
                "backend %s serves cluster %s with central iSCSI exports: a volume's target "
                "lives on the tgtd of the host whose service attached it, and a detach, "
                "extend or further attach that Cinder hands to a service on another host "
                "fails (ExportElsewhere). Run this cluster's services on one host, or set "
                "sheepdog_export_mode = local", self.backend_name, self.cluster_name)

    def check_for_setup_error(self) -> None:
        with cinder_errors():
            self.core.check_for_setup_error()

    def close(self) -> None:
        """Release the client's connections (not a Cinder call; tests use it)."""
        with self._core_lock:
            core, self._core_obj = self._core_obj, None
        if core is not None:
            core.close()

    # -- volumes --------------------------------------------------------------

    def create_volume(self, volume: Any) -> dict[str, Any]:
        with cinder_errors(volume=volume):
            self.core.create_volume(core_volume(volume))
        return {"provider_location": vdi_name(volume)}

    def delete_volume(self, volume: Any) -> None:
        with cinder_errors(volume=volume):
            self.core.delete_volume(core_volume(volume))

    def extend_volume(self, volume: Any, new_size: int) -> None:
        with cinder_errors(volume=volume):
            self.core.extend_volume(core_volume(volume), int(new_size))

    def create_cloned_volume(self, volume: Any, src_vref: Any) -> dict[str, Any]:
        with cinder_errors(volume=src_vref):
            self.core.create_cloned_volume(core_volume(volume), core_volume(src_vref))
        return {"provider_location": vdi_name(volume)}

    def local_path(self, volume: Any) -> str:
        raise NotImplementedError("Sheepdog volumes have no local path")

    # -- snapshots ------------------------------------------------------------

    def create_snapshot(self, snapshot: Any) -> dict[str, Any]:
        with cinder_errors(volume=snapshot.volume, snapshot=snapshot):
            self.core.create_snapshot(core_snapshot(snapshot))
        return {"provider_location": snapshot_tag(snapshot)}

    def delete_snapshot(self, snapshot: Any) -> None:
        with cinder_errors(volume=snapshot.volume, snapshot=snapshot):
            self.core.delete_snapshot(core_snapshot(snapshot))

    def create_volume_from_snapshot(self, volume: Any, snapshot: Any) -> dict[str, Any]:
        with cinder_errors(volume=snapshot.volume, snapshot=snapshot):
            self.core.create_volume_from_snapshot(core_volume(volume), core_snapshot(snapshot))
        return {"provider_location": vdi_name(volume)}

    def revert_to_snapshot(self, context: Any, volume: Any, snapshot: Any) -> None:
        with cinder_errors(volume=volume, snapshot=snapshot):
            self.core.revert_to_snapshot(core_volume(volume), core_snapshot(snapshot))

    # -- exports and attachment ---------------------------------------------

    def create_export(self, context: Any, volume: Any, connector: Any) -> dict[str, Any] | None:
        with cinder_errors(volume=volume):
            update = self.core.create_export(core_volume(volume), core_connector(connector))
        return update or None

    def ensure_export(self, context: Any, volume: Any) -> dict[str, Any] | None:
        with cinder_errors(volume=volume):
            update = self.core.ensure_export(core_volume(volume))
        return update or None

    def remove_export(self, context: Any, volume: Any) -> None:
        """Cinder calls this after the last attachment's terminate_connection,
        after a failed attach (other hosts may still be attached: their
        attachments keep the target) and before a delete (Cinder knows of no
        attachment: the export goes whatever the record still counts)."""
        gone = (volume.obj_attr_is_set("volume_attachment")
                and not volume.volume_attachment)
        with cinder_errors(volume=volume):
            self.core.remove_export(core_volume(volume), force=gone)

    def create_export_snapshot(self, context: Any, snapshot: Any, connector: Any) -> None:
        return None

    def remove_export_snapshot(self, context: Any, snapshot: Any) -> None:
        return None

    def initialize_connection(self, volume: Any, connector: Any,
                              **kwargs: Any) -> dict[str, Any]:
        conn = core_connector(connector)
        if conn is None:
            raise exception.InvalidConnectorException(missing="host")
        with cinder_errors(volume=volume):
            return self.core.initialize_connection(core_volume(volume), conn)

    def terminate_connection(self, volume: Any, connector: Any, **kwargs: Any) -> bool:
        """End one attachment (``connector`` None: a forced detach).  True while
        other attachments share the volume's target, as Cinder's LVM driver
        answers: the VolumeManager then keeps the export (no remove_export).
        The count is the export record's, so a host with two instances of a
        multiattach volume counts twice, and an unknown initiator or a second
        call ends nothing."""
        with cinder_errors(volume=volume):
            return self.core.terminate_connection(core_volume(volume),
                                                  core_connector(connector))

    # -- stats ----------------------------------------------------------------

    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        if refresh or not self._stats:
            self._stats = self._cinder_stats(refresh)
        return dict(self._stats)

    def _update_volume_stats(self) -> None:
        self._stats = self._cinder_stats(True)

    def _cinder_stats(self, refresh: bool) -> dict[str, Any]:
        with cinder_errors():
            stats = self.core.get_volume_stats(refresh=refresh)
        conf = self.configuration
        ratio = conf.safe_get("max_over_subscription_ratio")
        stats.update({
            "volume_backend_name": self.backend_name,
            # 'sheepdog' (no Cinder constant) or 'iSCSI' (cinder.common.constants.ISCSI),
            # as sheepdog_attach_protocol decides
            "storage_protocol": stats.get("storage_protocol") or STORAGE_PROTOCOL,
            "driver_version": self.VERSION,
            "vendor_name": "Open Source",
            # Cinder's own option, as the scheduler expects it ("auto" or a number)
            "max_over_subscription_ratio": str(ratio) if ratio is not None else "20.0",
            "reserved_percentage": int(conf.safe_get("reserved_percentage") or 0),
            "QoS_support": False,
            "location_info": "sheepdog:" + ",".join(self.core.gateways),
            "filter_function": self.get_filter_function(),
            "goodness_function": self.get_goodness_function(),
        })
        return stats

    # -- manage ---------------------------------------------------------------

    def manage_existing(self, volume: Any, existing_ref: Any) -> dict[str, Any]:
        return manageable.manage_existing(self.core, volume, existing_ref)

    def manage_existing_get_size(self, volume: Any, existing_ref: Any) -> int:
        return manageable.manage_existing_get_size(self.core, volume, existing_ref)

    def unmanage(self, volume: Any) -> None:
        with cinder_errors(volume=volume):
            self.core.unmanage(core_volume(volume))

    def get_manageable_volumes(self, cinder_volumes: Any, marker: Any, limit: int,
                               offset: int, sort_keys: list[str],
                               sort_dirs: list[str]) -> list[dict[str, Any]]:
        return manageable.get_manageable_volumes(self.core, cinder_volumes, marker, limit,
                                                 offset, sort_keys, sort_dirs)

    def manage_existing_snapshot(self, snapshot: Any, existing_ref: Any) -> dict[str, Any]:
        return manageable.manage_existing_snapshot(self.core, snapshot, existing_ref)

    def manage_existing_snapshot_get_size(self, snapshot: Any, existing_ref: Any) -> int:
        return manageable.manage_existing_snapshot_get_size(self.core, snapshot, existing_ref)

    def unmanage_snapshot(self, snapshot: Any) -> None:
        return None  # the snapshot stays exactly as it is

    def get_manageable_snapshots(self, cinder_snapshots: Any, marker: Any, limit: int,
                                 offset: int, sort_keys: list[str],
                                 sort_dirs: list[str]) -> list[dict[str, Any]]:
        return manageable.get_manageable_snapshots(self.core, cinder_snapshots, marker, limit,
                                                   offset, sort_keys, sort_dirs)

    # -- images ---------------------------------------------------------------

    def clone_image(self, context: Any, volume: Any, image_location: Any, image_meta: Any,
                    image_service: Any) -> tuple[dict[str, Any] | None, bool]:
        return images.clone_image(self.core, volume, image_location, image_meta)

    def copy_image_to_volume(self, context: Any, volume: Any, image_service: Any,
                             image_id: str, disable_sparse: bool = False) -> None:
        images.copy_image_to_volume(self.core, context, volume, image_service, image_id)

    def copy_image_to_encrypted_volume(self, context: Any, volume: Any, image_service: Any,
                                       image_id: str, disable_sparse: bool = False) -> None:
        raise exception.VolumeDriverException(
            message="Sheepdog backend: encrypted volumes are not supported")

    def copy_volume_to_image(self, context: Any, volume: Any, image_service: Any,
                             image_meta: dict[str, Any]) -> None:
        images.copy_volume_to_image(self.core, context, volume, image_service, image_meta)

    # -- migration ------------------------------------------------------------

    def migrate_volume(self, context: Any, volume: Any, host: Any) -> tuple[bool, None]:
        return False, None  # Cinder's generic migration copies through the new backend
