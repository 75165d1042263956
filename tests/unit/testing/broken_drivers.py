"""Deliberately broken variants of FakeDriver, one broken rule each, to prove
that the conformance suite fails the right tests (and only those)."""

from __future__ import annotations

import re
from typing import Any

from sheepdog_backend.driver.base import ALL_CAPABILITIES, Connector, Snapshot, Volume
from sheepdog_backend.exception import InvalidBackingImage, InvalidInput, VolumeNotFound
from tests.unit.testing.fake_driver import (
    GIB,
    FakeDriver,
    FakeImage,
    FakeVdi,
)


class DeleteNotIdempotent(FakeDriver):
    def delete_volume(self, volume: Volume) -> None:
        self.vdi(volume)  # VolumeNotFound when already gone
        super().delete_volume(volume)


class DeleteLeaves(FakeDriver):
    """delete_volume returns but the VDI stays."""

    def delete_volume(self, volume: Volume) -> None:
        pass


class SizeInDecimalGB(FakeDriver):
    def create_volume(self, volume: Volume, *, backing: str | None = None) -> dict[str, Any]:
        self.cluster.vdis.setdefault(self.name(volume), FakeVdi(FakeImage(volume.size * 10**9)))
        return {}


class CreateAgainWipes(FakeDriver):
    def create_volume(self, volume: Volume, *, backing: str | None = None) -> dict[str, Any]:
        if backing is None:
            self.cluster.vdis.pop(self.name(volume), None)
        return super().create_volume(volume, backing=backing)


class CloneSharesBlocks(FakeDriver):
    """Clones share the source's blocks instead of copying on write."""

    def _share(self, volume: Volume, image: FakeImage) -> dict[str, Any]:
        if volume.size * GIB < image.size:
            raise InvalidInput("a volume cannot be smaller than its source")
        self.cluster.vdis[self.name(volume)] = FakeVdi(FakeImage(volume.size * GIB,
                                                                 image.blocks))
        return {}

    def create_volume_from_snapshot(self, volume: Volume,
                                    snapshot: Snapshot) -> dict[str, Any]:
        return self._share(volume, self.snapshot_image(snapshot))

    def create_cloned_volume(self, volume: Volume, src_vref: Volume) -> dict[str, Any]:
        return self._share(volume, self.vdi(src_vref).image)


class SnapshotIsLive(FakeDriver):
    """The snapshot shares the volume's blocks: not point-in-time."""

    def create_snapshot(self, snapshot: Snapshot) -> dict[str, Any]:
        vdi = self.vdi(snapshot.volume)
        vdi.snapshots[self.tag(snapshot)] = vdi.image
        return {}


class RevertNoop(FakeDriver):
    def revert_to_snapshot(self, volume: Volume, snapshot: Snapshot) -> None:
        self.snapshot_image(snapshot)


class ExtendLosesData(FakeDriver):
    def extend_volume(self, volume: Volume, new_size: int) -> None:
        vdi = self.vdi(volume)
        if new_size * GIB < vdi.image.size:
            raise InvalidInput("cannot shrink")
        vdi.image = FakeImage(new_size * GIB)


class DeleteIgnoresSnapshots(FakeDriver):
    def delete_volume(self, volume: Volume) -> None:
        self.cluster.vdis.pop(self.name(volume), None)


class PortsAsInts(FakeDriver):
    def initialize_connection(self, volume: Volume, connector: Connector) -> dict[str, Any]:
        info = super().initialize_connection(volume, connector)
        info["data"]["ports"] = [int(p) for p in info["data"]["ports"]]
        return info


class StaleStats(FakeDriver):
    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        return super().get_volume_stats(refresh=False)


_ANY_ADDRESS = re.compile(r"^sheepdog://[^/]+/(?P<vdi>[^#]+)#(?P<tag>.+)$|"
                          r"^sheepdog:[^:]+:\d+:(?P<lvdi>[^:]+):(?P<ltag>.+)$")


class IgnoresClusterAddress(FakeDriver):
    """Accepts a snapshot reference whatever cluster address it names."""

    def parse_backing(self, ref: str) -> FakeImage:
        match = _ANY_ADDRESS.match(ref)
        if match is None or ":notaport/" in ref:
            return super().parse_backing(ref)
        vdi = self.cluster.vdis.get(match["vdi"] or match["lvdi"])
        tag = match["tag"] or match["ltag"]
        if vdi is None or tag not in vdi.snapshots:
            raise InvalidBackingImage(ref)
        return vdi.snapshots[tag]


class AcceptsWorkingVdi(FakeDriver):
    """Takes a reference without a snapshot tag as the working VDI itself."""

    def parse_backing(self, ref: str) -> FakeImage:
        for prefix in ("sheepdog://127.0.0.1:7000/", "sheepdog:127.0.0.1:7000:"):
            rest = ref[len(prefix):] if ref.startswith(prefix) else ""
            if rest and "#" not in rest and ":" not in rest and rest in self.cluster.vdis:
                return self.cluster.vdis[rest].image
        return super().parse_backing(ref)


class NameLimitOffByOne(FakeDriver):
    """Checks the 255-byte limit in characters, not bytes, and allows 256."""

    def name(self, volume: Volume) -> str:
        name = volume.vdi_name_for(self.configuration.volume_name_template)
        if not name or len(name) > 256:
            raise InvalidInput("bad name")
        return name


class UnmanageDeletes(FakeDriver):
    def unmanage(self, volume: Volume) -> None:
        self.cluster.vdis.pop(self.name(volume), None)


class ManageLosesName(FakeDriver):
    """manage_existing returns no model update, so the adopted volume does not
    resolve to the VDI it adopted."""

    def manage_existing(self, volume: Volume, existing_ref: dict[str, Any]) -> dict[str, Any]:
        super().manage_existing(volume, existing_ref)
        return {}


class MissingVolumeWrongError(FakeDriver):
    def extend_volume(self, volume: Volume, new_size: int) -> None:
        try:
            super().extend_volume(volume, new_size)
        except VolumeNotFound:
            raise KeyError(volume.id) from None


class NoSnapshots(FakeDriver):
    capabilities = ALL_CAPABILITIES - {"snapshots"}


class NoDataAccess(FakeDriver):
    capabilities = ALL_CAPABILITIES - {"data_access"}


class UnknownCapability(FakeDriver):
    capabilities = ALL_CAPABILITIES | {"teleport"}


class SetupFails(FakeDriver):
    def check_for_setup_error(self) -> None:
        raise ConnectionRefusedError("no gateway")
