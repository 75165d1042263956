"""Conformance tests: backing references, manage/unmanage and image transfer."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from sheepdog_backend.driver.base import (
    VolumeDataAccess,
    VolumeDriver,
)
from sheepdog_backend.exception import (
    InvalidBackingImage,
    InvalidInput,
    VolumeNotFound,
)
from sheepdog_backend.testing.resources import (
    GIB,
    KIB,
    MIB,
    PATTERN_CHUNKS,
    ResourceTracker,
    apply_model_update,
    check_pattern,
    check_zeros,
    pattern_bytes,
    write_pattern,
)
from sheepdog_backend.testing.suite_base import (
    FOREIGN_HOST,
    IMAGE_SIZE,
    cluster_address,
    expect_ok,
    free_loopback_port,
    refused,
    requires,
    url_host,
)


class ReferenceTests:
    """Backing-image references, manage/unmanage and image import/export."""

    @requires("backing_images", "snapshots")
    def test_backing_snapshot_reference_accepted(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        src = resources.create_volume(name=resources.unique_name("base"))
        written = write_pattern(data, src, "backing")
        snap = resources.snapshot(src, name=resources.unique_name("tag"))
        driver.create_snapshot(snap)
        host, port, _ = cluster_address(driver, src)
        vol = resources.volume()
        driver.create_volume(vol, backing=f"sheepdog://{url_host(host)}:{port}/"
                                          f"{src.name}#{snap.name}")
        expect_ok(check_pattern(data, vol, written))

    BACKING_KINDS: ClassVar[tuple[str, ...]] = (
        "path", "file-url", "rbd", "http", "sheepdog-empty", "sheepdog-no-vdi",
        "sheepdog-bad-port", "sheepdog-legacy-short", "working-vdi", "working-vdi-legacy",
        "other-cluster-host", "other-cluster-port", "other-cluster-legacy",
    )

    @requires("backing_images", "snapshots")
    @pytest.mark.parametrize("kind", BACKING_KINDS)
    def test_backing_reference_rejected(self, kind: str, driver: VolumeDriver,
                                        data: VolumeDataAccess,
                                        resources: ResourceTracker) -> None:
        src = resources.create_volume(name=resources.unique_name("src"))
        snap = resources.snapshot(src, name=resources.unique_name("tag"))
        driver.create_snapshot(snap)
        host, port, ports = cluster_address(driver, src)
        addr = f"{url_host(host)}:{port}"
        other_port = free_loopback_port(ports)
        ref = {
            "path": f"/var/lib/images/{src.name}.img",
            "file-url": f"file:///var/lib/images/{src.name}.img",
            "rbd": f"rbd:volumes/{src.name}@{snap.name}",
            "http": f"http://127.0.0.1:{other_port}/{src.name}.img",
            "sheepdog-empty": "sheepdog://",
            "sheepdog-no-vdi": f"sheepdog://{addr}/#{snap.name}",
            "sheepdog-bad-port": f"sheepdog://{url_host(host)}:notaport/{src.name}#{snap.name}",
            "sheepdog-legacy-short": f"sheepdog:{src.name}",
            "working-vdi": f"sheepdog://{addr}/{src.name}",
            "working-vdi-legacy": f"sheepdog:{host}:{port}:{src.name}",
            "other-cluster-host": f"sheepdog://{FOREIGN_HOST}:{port}/{src.name}#{snap.name}",
            "other-cluster-port": f"sheepdog://{url_host(host)}:{other_port}/"
                                  f"{src.name}#{snap.name}",
            "other-cluster-legacy": f"sheepdog:{FOREIGN_HOST}:{port}:{src.name}:{snap.name}",
        }[kind]
        vol = resources.volume()
        with refused(InvalidBackingImage, f"create_volume(backing={ref!r})"):
            driver.create_volume(vol, backing=ref)
        assert not data.exists(vol), f"a volume was created from {ref!r}"

    # -------------------------------------------------------------- manage

    @requires("manage")
    def test_manage_existing_adopts_and_unmanage_leaves_vdi(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker) -> None:
        external = resources.create_volume(name=resources.unique_name("ext"))
        written = write_pattern(data, external, "manage")
        ref = {"source-name": external.name}
        listed = [v for v in driver.get_manageable_volumes()
                  if v.get("reference") == ref]
        assert listed, f"get_manageable_volumes does not list {ref}"
        adopted = resources.volume()
        assert driver.manage_existing_get_size(adopted, ref) == 1
        update = driver.manage_existing(adopted, ref)
        assert update is None or isinstance(update, dict)
        managed = apply_model_update(adopted, update)
        resources.track(managed)
        assert data.exists(managed), "the managed volume does not resolve to a VDI"
        assert data.size_bytes(managed) == GIB
        expect_ok(check_pattern(data, managed, written))
        driver.unmanage(managed)
        assert data.exists(managed), "unmanage must leave the VDI in place"
        expect_ok(check_pattern(data, managed, written))

    @requires("manage")
    @pytest.mark.parametrize("kind", ["missing-vdi", "no-source-name"])
    def test_manage_bad_reference_fails(self, kind: str, driver: VolumeDriver,
                                        data: VolumeDataAccess,
                                        resources: ResourceTracker) -> None:
        ref: dict[str, Any] = ({"source-name": resources.unique_name("absent")}
                               if kind == "missing-vdi" else {"source-id": "x"})
        vol = resources.volume()
        with refused((VolumeNotFound, InvalidInput), f"manage_existing_get_size({ref})"):
            driver.manage_existing_get_size(vol, ref)
        with refused((VolumeNotFound, InvalidInput), f"manage_existing({ref})"):
            driver.manage_existing(vol, ref)
        assert not data.exists(vol)

    # -------------------------------------------------------------- images

    @requires("image_transfer")
    def test_image_import_and_export_round_trip(
            self, driver: VolumeDriver, data: VolumeDataAccess,
            resources: ResourceTracker, tmp_path: Any) -> None:
        image = tmp_path / "in.raw"  # a raw image smaller than the volume
        chunks = [c for c in PATTERN_CHUNKS if c[0] + c[1] <= IMAGE_SIZE]
        expected: dict[int, bytes] = {}
        with open(image, "wb") as fh:
            fh.truncate(IMAGE_SIZE)
            for offset, length in chunks:
                expected[offset] = pattern_bytes(f"image@{offset}", length)
                fh.seek(offset)
                fh.write(expected[offset])
        vol = resources.create_volume()
        driver.copy_image_to_volume(vol, str(image))
        expect_ok(check_pattern(data, vol, expected))
        expect_ok(check_zeros(data, vol, IMAGE_SIZE, 64 * KIB))
        expect_ok(check_zeros(data, vol, 256 * MIB, 64 * KIB))
        exported = tmp_path / "out.raw"
        driver.copy_volume_to_image(vol, str(exported))
        assert exported.stat().st_size == GIB
        with open(exported, "rb") as fh:
            for offset, want in expected.items():
                fh.seek(offset)
                got = fh.read(len(want))
                assert got == want, f"exported image differs at offset {offset}"
            fh.seek(256 * MIB)
            assert fh.read(64 * KIB) == bytes(64 * KIB)
