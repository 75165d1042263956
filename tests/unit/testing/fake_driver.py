"""A small, correct, in-memory VolumeDriver used to prove the conformance suite.

How it works: a ``FakeCluster`` holds VDIs by name; each VDI has a size in
bytes, sparse 4 MiB blocks (``dict[index, bytearray]``) and snapshots by tag
(frozen copies of the blocks).  Clones copy the blocks, so they are
independent.  The cluster answers at one made-up gateway address; a backing
reference is accepted only for a snapshot at that address.  ``FakeDriver``
implements the whole contract over it; the broken variants in
``broken_drivers.py`` each override one method to violate one rule.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from sheepdog_backend.driver.base import (
    ALL_CAPABILITIES,
    BackendConfiguration,
    Connector,
    Snapshot,
    Volume,
    VolumeDataAccess,
    VolumeDriver,
)
from sheepdog_backend.exception import (
    InvalidBackingImage,
    InvalidInput,
    SnapshotNotFound,
    VdiExists,
    VolumeIsBusy,
    VolumeNotFound,
)
from sheepdog_backend.protocol.naming import validate_name, validate_tag

GIB = 1 << 30
BLOCK = 256 << 10  # small blocks keep the fake fast; not an object size
ZERO_BLOCK = bytes(BLOCK)
HOST, PORT = "127.0.0.1", "7000"
_URL = re.compile(r"^sheepdog://(?P<host>[^/:]+):(?P<port>\d+)/(?P<vdi>[^#]+)#(?P<tag>.+)$")
_LEGACY = re.compile(r"^sheepdog:(?P<host>[^:]+):(?P<port>\d+):(?P<vdi>[^:]+):(?P<tag>.+)$")


@dataclass
class FakeImage:
    size: int
    blocks: dict[int, bytearray] = field(default_factory=dict)

    def copy(self, size: int | None = None) -> FakeImage:
        return FakeImage(size if size is not None else self.size,
                         {i: bytearray(b) for i, b in self.blocks.items()})


@dataclass
class FakeVdi:
    image: FakeImage
    snapshots: dict[str, FakeImage] = field(default_factory=dict)


@dataclass
class FakeCluster:
    vdis: dict[str, FakeVdi] = field(default_factory=dict)


def read_image(image: FakeImage, offset: int, length: int) -> bytes:
    if offset < 0 or length < 0 or offset + length > image.size:
        raise InvalidInput(f"read of {length} at {offset} is outside {image.size} bytes")
    out = bytearray()
    while length:
        index, inner = divmod(offset, BLOCK)
        step = min(length, BLOCK - inner)
        block = image.blocks.get(index)
        out += block[inner:inner + step] if block is not None else bytes(step)
        offset, length = offset + step, length - step
    return bytes(out)


def write_image(image: FakeImage, offset: int, data: bytes) -> None:
    if offset < 0 or offset + len(data) > image.size:
        raise InvalidInput(f"write of {len(data)} at {offset} is outside {image.size} bytes")
    pos = 0
    while pos < len(data):
        index, inner = divmod(offset + pos, BLOCK)
        step = min(len(data) - pos, BLOCK - inner)
        block = image.blocks.setdefault(index, bytearray(BLOCK))
        block[inner:inner + step] = data[pos:pos + step]
        pos += step


class FakeDataAccess:
    def __init__(self, driver: FakeDriver) -> None:
        self.driver = driver

    def read(self, volume: Volume, offset: int, length: int) -> bytes:
        return read_image(self.driver.vdi(volume).image, offset, length)

    def write(self, volume: Volume, offset: int, data: bytes) -> None:
        write_image(self.driver.vdi(volume).image, offset, data)

    def exists(self, volume: Volume) -> bool:
        return self.driver.name(volume) in self.driver.cluster.vdis

    def snapshot_exists(self, snapshot: Snapshot) -> bool:
        vdi = self.driver.cluster.vdis.get(self.driver.name(snapshot.volume))
        return vdi is not None and self.driver.tag(snapshot) in vdi.snapshots

    def size_bytes(self, volume: Volume) -> int:
        return self.driver.vdi(volume).image.size


class FakeDriver(VolumeDriver):
    VERSION = "1.0-fake"
    capabilities = ALL_CAPABILITIES

    def __init__(self, configuration: BackendConfiguration | None = None, *,
                 backend_name: str = "fake", cluster: FakeCluster | None = None) -> None:
        super().__init__(configuration or BackendConfiguration(), backend_name=backend_name)
        self.cluster = cluster if cluster is not None else FakeCluster()
        self._stats: dict[str, Any] = {}

    # helpers
    def name(self, volume: Volume) -> str:
        name = volume.vdi_name_for(self.configuration.volume_name_template)
        validate_name(name)
        return name

    def tag(self, snapshot: Snapshot) -> str:
        tag = snapshot.tag_for(self.configuration.snapshot_name_template)
        validate_tag(tag)
        return tag

    def vdi(self, volume: Volume) -> FakeVdi:
        try:
            return self.cluster.vdis[self.name(volume)]
        except KeyError:
            raise VolumeNotFound(f"no volume {self.name(volume)}") from None

    def snapshot_image(self, snapshot: Snapshot) -> FakeImage:
        vdi = self.cluster.vdis.get(self.name(snapshot.volume))
        if vdi is None or self.tag(snapshot) not in vdi.snapshots:
            raise SnapshotNotFound(f"no snapshot {self.tag(snapshot)}")
        return vdi.snapshots[self.tag(snapshot)]

    def _new(self, volume: Volume, image: FakeImage) -> dict[str, Any]:
        name = self.name(volume)
        if volume.size * GIB < image.size:
            raise InvalidInput("a volume cannot be smaller than its source")
        existing = self.cluster.vdis.get(name)
        if existing is not None:
            if existing.image.size == volume.size * GIB:
                return {}
            raise VdiExists(f"{name} exists with another size")
        self.cluster.vdis[name] = FakeVdi(image.copy(volume.size * GIB))
        return {}

    def parse_backing(self, ref: str) -> FakeImage:
        match = _URL.match(ref) or _LEGACY.match(ref)
        if match is None:
            raise InvalidBackingImage(f"{ref!r} is not a sheepdog snapshot reference")
        if (match["host"], match["port"]) != (HOST, PORT):
            raise InvalidBackingImage(f"{ref!r} is not on this cluster")
        vdi = self.cluster.vdis.get(match["vdi"])
        if vdi is None or match["tag"] not in vdi.snapshots:
            raise InvalidBackingImage(f"{ref!r} is not a snapshot")
        return vdi.snapshots[match["tag"]]

    # contract
    def do_setup(self) -> None:
        pass

    def check_for_setup_error(self) -> None:
        pass

    def create_volume(self, volume: Volume, *, backing: str | None = None) -> dict[str, Any]:
        source = self.parse_backing(backing) if backing is not None else FakeImage(0)
        return self._new(volume, source)

    def delete_volume(self, volume: Volume) -> None:
        vdi = self.cluster.vdis.get(self.name(volume))
        if vdi is None:
            return
        if vdi.snapshots:
            raise VolumeIsBusy(f"{self.name(volume)} has snapshots")
        del self.cluster.vdis[self.name(volume)]

    def extend_volume(self, volume: Volume, new_size: int) -> None:
        vdi = self.vdi(volume)
        if new_size * GIB < vdi.image.size:
            raise InvalidInput("cannot shrink")
        vdi.image.size = new_size * GIB

    def create_snapshot(self, snapshot: Snapshot) -> dict[str, Any]:
        vdi = self.vdi(snapshot.volume)
        vdi.snapshots.setdefault(self.tag(snapshot), vdi.image.copy())
        return {}

    def delete_snapshot(self, snapshot: Snapshot) -> None:
        vdi = self.cluster.vdis.get(self.name(snapshot.volume))
        if vdi is not None:
            vdi.snapshots.pop(self.tag(snapshot), None)

    def create_volume_from_snapshot(self, volume: Volume,
                                    snapshot: Snapshot) -> dict[str, Any]:
        return self._new(volume, self.snapshot_image(snapshot))

    def create_cloned_volume(self, volume: Volume, src_vref: Volume) -> dict[str, Any]:
        return self._new(volume, self.vdi(src_vref).image)

    def revert_to_snapshot(self, volume: Volume, snapshot: Snapshot) -> None:
        self.vdi(volume).image = self.snapshot_image(snapshot).copy()

    def initialize_connection(self, volume: Volume, connector: Connector) -> dict[str, Any]:
        self.vdi(volume)
        return {"driver_volume_type": "sheepdog",
                "data": {"name": self.name(volume), "hosts": [HOST], "ports": [PORT]}}

    def terminate_connection(self, volume: Volume, connector: Connector | None) -> bool:
        return False

    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        if refresh or not self._stats:
            provisioned = sum(v.image.size for v in self.cluster.vdis.values())
            self._stats = {
                "volume_backend_name": self.backend_name, "vendor_name": "Fake",
                "driver_version": self.VERSION, "storage_protocol": "sheepdog",
                "total_capacity_gb": 1000.0, "free_capacity_gb": 990.0,
                "provisioned_capacity_gb": provisioned / GIB,
                "total_volumes": len(self.cluster.vdis),
            }
        return dict(self._stats)

    def copy_image_to_volume(self, volume: Volume, image_path: str) -> None:
        image = self.vdi(volume).image  # raw files only: enough for the suite
        with open(image_path, "rb") as fh:
            for index in range(image.size // BLOCK):
                chunk = fh.read(BLOCK)
                if not chunk:
                    break
                if chunk != ZERO_BLOCK[:len(chunk)]:
                    write_image(image, index * BLOCK, chunk)

    def copy_volume_to_image(self, volume: Volume, image_path: str) -> None:
        image = self.vdi(volume).image
        with open(image_path, "wb") as fh:
            fh.truncate(image.size)
            for index, block in sorted(image.blocks.items()):
                fh.seek(index * BLOCK)
                fh.write(block)

    def _source(self, existing_ref: dict[str, Any]) -> FakeVdi:
        name = existing_ref.get("source-name")
        if not isinstance(name, str):
            raise InvalidInput("existing_ref needs 'source-name'")
        vdi = self.cluster.vdis.get(name)
        if vdi is None:
            raise VolumeNotFound(f"no VDI {name}")
        return vdi

    def manage_existing(self, volume: Volume, existing_ref: dict[str, Any]) -> dict[str, Any]:
        self._source(existing_ref)
        return {"name": existing_ref["source-name"]}

    def manage_existing_get_size(self, volume: Volume, existing_ref: dict[str, Any]) -> int:
        return math.ceil(self._source(existing_ref).image.size / GIB)

    def unmanage(self, volume: Volume) -> None:
        self.vdi(volume)

    def get_manageable_volumes(self) -> list[dict[str, Any]]:
        return [{"reference": {"source-name": name}, "size": math.ceil(v.image.size / GIB),
                 "safe_to_manage": True, "reason_not_safe": None, "cinder_id": None,
                 "extra_info": None} for name, v in sorted(self.cluster.vdis.items())]

    def data_access(self) -> VolumeDataAccess:
        return FakeDataAccess(self)
