"""The core VolumeDriver contract served through SheepdogCinderDriver, so the
conformance suite can run through the Cinder adapter.

Each call builds Cinder's versioned objects from the suite's models (an
explicit VDI name becomes ``provider_location``, as the adapter records it),
calls the Cinder driver with Cinder's signatures, and maps Cinder's exceptions
back to the contract's classes by their meaning.  Backing references go through
``clone_image`` (a location that is not a clonable Sheepdog snapshot of this
cluster is a refused backing image); image files through Cinder's image
service (a file-backed one, tests/cinder/image_service.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sheepdog_backend import exception as sd
from sheepdog_backend.driver.base import (
    BackendConfiguration,
    Connector,
    Snapshot,
    Volume,
    VolumeDataAccess,
    VolumeDriver,
)
from tests.cinder.conftest import CinderBackend
from tests.cinder.image_service import FileImageService


@contextmanager
def contract_errors() -> Iterator[None]:
    from cinder import exception

    try:
        yield
    except exception.ManageExistingInvalidReference as exc:
        raise sd.InvalidInput(str(exc)) from exc
    except exception.VolumeIsBusy as exc:
        raise sd.VolumeIsBusy(str(exc)) from exc
    except exception.VolumeNotFound as exc:
        raise sd.VolumeNotFound(str(exc)) from exc
    except exception.SnapshotNotFound as exc:
        raise sd.SnapshotNotFound(str(exc)) from exc
    except exception.ImageUnacceptable as exc:
        raise sd.InvalidBackingImage(str(exc)) from exc
    except exception.InvalidInput as exc:
        raise sd.InvalidInput(str(exc)) from exc
    except exception.VolumeBackendAPIException as exc:
        cause = exc.__cause__
        raise (cause if isinstance(cause, sd.SheepdogError)
               else sd.SheepdogError(str(exc))) from exc


class CinderAdapterDriver(VolumeDriver):
    capabilities = frozenset({"snapshots", "clone", "extend", "revert", "manage",
                              "backing_images", "image_transfer", "data_access"})

    def __init__(self, backend: CinderBackend) -> None:
        super().__init__(BackendConfiguration({}), backend_name=backend.group)
        self.be = backend
        self.cinder = backend.driver
        self.images = FileImageService()

    # -- models -> Cinder's objects ------------------------------------------

    def _vol(self, volume: Volume) -> Any:
        if not isinstance(volume, Volume):
            raise sd.InvalidInput(f"expected a Volume, got {type(volume).__name__}")
        return self.be.volume(volume.size, id=volume.id, provider_location=volume.name)

    def _snap(self, snapshot: Snapshot) -> Any:
        return self.be.snapshot(self._vol(snapshot.volume), id=snapshot.id,
                                provider_location=snapshot.name)

    @staticmethod
    def _update(update: dict[str, Any] | None) -> dict[str, Any]:
        location = (update or {}).get("provider_location")
        return {"name": location} if location else {}

    @staticmethod
    def _connector(connector: Connector | None) -> dict[str, Any] | None:
        if connector is None:
            return None
        return {"host": connector.host, "ip": connector.ip, "initiator": connector.initiator,
                "multipath": connector.multipath}

    # -- the contract ----------------------------------------------------------

    def do_setup(self) -> None:
        with contract_errors():
            self.cinder.do_setup(self.be.ctx)

    def check_for_setup_error(self) -> None:
        with contract_errors():
            self.cinder.check_for_setup_error()

    def close(self) -> None:
        self.cinder.close()

    def create_volume(self, volume: Volume, *, backing: str | None = None) -> dict[str, Any]:
        with contract_errors():
            vol = self._vol(volume)
            if backing is None:
                return self._update(self.cinder.create_volume(vol))
            update, cloned = self.cinder.clone_image(
                self.be.ctx, vol, (backing, []), {"id": "backing", "disk_format": "raw"},
                self.images)
        if not cloned:
            raise sd.InvalidBackingImage(f"backing image {backing!r} rejected by clone_image")
        return self._update(update)

    def delete_volume(self, volume: Volume) -> None:
        with contract_errors():
            self.cinder.delete_volume(self._vol(volume))

    def extend_volume(self, volume: Volume, new_size: int) -> None:
        with contract_errors():
            self.cinder.extend_volume(self._vol(volume), new_size)

    def create_snapshot(self, snapshot: Snapshot) -> dict[str, Any]:
        with contract_errors():
            self.cinder.create_snapshot(self._snap(snapshot))
        return {}

    def delete_snapshot(self, snapshot: Snapshot) -> None:
        with contract_errors():
            self.cinder.delete_snapshot(self._snap(snapshot))

    def create_volume_from_snapshot(self, volume: Volume,
                                    snapshot: Snapshot) -> dict[str, Any]:
        with contract_errors():
            return self._update(self.cinder.create_volume_from_snapshot(
                self._vol(volume), self._snap(snapshot)))

    def create_cloned_volume(self, volume: Volume, src_vref: Volume) -> dict[str, Any]:
        with contract_errors():
            return self._update(self.cinder.create_cloned_volume(self._vol(volume),
                                                                 self._vol(src_vref)))

    def revert_to_snapshot(self, volume: Volume, snapshot: Snapshot) -> None:
        with contract_errors():
            self.cinder.revert_to_snapshot(self.be.ctx, self._vol(volume), self._snap(snapshot))

    def initialize_connection(self, volume: Volume, connector: Connector) -> dict[str, Any]:
        with contract_errors():
            info: dict[str, Any] = self.cinder.initialize_connection(
                self._vol(volume), self._connector(connector))
            return info

    def terminate_connection(self, volume: Volume, connector: Connector | None) -> bool:
        with contract_errors():
            return bool(self.cinder.terminate_connection(self._vol(volume),
                                                         self._connector(connector)))

    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        with contract_errors():
            stats: dict[str, Any] = self.cinder.get_volume_stats(refresh)
            return stats

    def copy_image_to_volume(self, volume: Volume, image_path: str) -> None:
        with contract_errors():
            self.cinder.copy_image_to_volume(self.be.ctx, self._vol(volume), self.images,
                                             image_path)

    def copy_volume_to_image(self, volume: Volume, image_path: str) -> None:
        with contract_errors():
            self.cinder.copy_volume_to_image(self.be.ctx, self._vol(volume), self.images,
                                             self.images.show(self.be.ctx, image_path))

    def manage_existing(self, volume: Volume, existing_ref: dict[str, Any]) -> dict[str, Any]:
        with contract_errors():
            return self._update(self.cinder.manage_existing(self._vol(volume), existing_ref))

    def manage_existing_get_size(self, volume: Volume, existing_ref: dict[str, Any]) -> int:
        with contract_errors():
            return int(self.cinder.manage_existing_get_size(self._vol(volume), existing_ref))

    def unmanage(self, volume: Volume) -> None:
        with contract_errors():
            self.cinder.unmanage(self._vol(volume))

    def get_manageable_volumes(self) -> list[dict[str, Any]]:
        with contract_errors():
            listed: list[dict[str, Any]] = self.cinder.get_manageable_volumes(
                [], None, 100000, 0, ["size"], ["asc"])
            return listed

    def data_access(self) -> VolumeDataAccess:
        access: VolumeDataAccess = self.cinder.core.data_access()
        return access
