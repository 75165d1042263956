"""Images through Cinder's image service: download + our inspection into the
volume, export + Cinder's upload, and copy-on-write clones of Sheepdog images."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cinder.conftest import CINDER_MISSING, CinderBackend
from tests.cinder.image_service import MemoryImageService

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")

MiB = 1 << 20


def pattern(size: int) -> bytes:
    return bytes((i * 7 + i // 4096) % 251 for i in range(size))


@pytest.fixture
def images(backend: CinderBackend, tmp_path: Path) -> MemoryImageService:
    backend.set(image_conversion_dir=str(tmp_path / "conversion"))
    backend.driver.close()  # the core driver is rebuilt with the new directory
    return MemoryImageService()


def leftovers(tmp_path: Path) -> list[str]:
    directory = tmp_path / "conversion"
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_copy_image_to_volume_and_back(backend: CinderBackend, images: MemoryImageService,
                                       tmp_path: Path) -> None:
    drv, be = backend.driver, backend
    body = pattern(9 * MiB + 123)
    images.add("img-raw", body)
    vol = be.created(1)
    drv.copy_image_to_volume(be.ctx, vol, images, "img-raw")
    assert be.read(vol, 0, len(body)) == body
    assert be.read(vol, len(body), 4096) == bytes(4096)

    images.add("img-up", b"", disk_format="raw")
    drv.copy_volume_to_image(be.ctx, vol, images, images.show(be.ctx, "img-up"))
    size, nonzero_after_head, head = images.uploads["img-up"]
    assert size == 1 << 30 and head[:len(body)] == body and not any(head[len(body):])
    assert nonzero_after_head == 0
    assert leftovers(tmp_path) == []  # no temporary file stays behind
    drv.delete_volume(vol)


def test_safe_qcow2_image_is_converted(backend: CinderBackend, images: MemoryImageService,
                                       tmp_path: Path) -> None:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        pytest.skip("qemu-img is not installed: cannot make or convert a qcow2 image")
    raw = tmp_path / "src.raw"
    body = pattern(3 * MiB + 5)
    raw.write_bytes(body)
    qcow = tmp_path / "src.qcow2"
    subprocess.run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(qcow)], check=True, timeout=60)
    images.add("img-qcow2", qcow.read_bytes(), disk_format="qcow2")
    vol = backend.created(1)
    backend.driver.copy_image_to_volume(backend.ctx, vol, images, "img-qcow2")
    assert backend.read(vol, 0, len(body)) == body
    assert leftovers(tmp_path) == []
    backend.driver.delete_volume(vol)


def test_unsafe_image_is_refused_and_volume_untouched(
        backend: CinderBackend, images: MemoryImageService, tmp_path: Path) -> None:
    from cinder import exception

    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        pytest.skip("qemu-img is not installed: cannot make a qcow2 with a backing file")
    base = tmp_path / "base.raw"
    base.write_bytes(b"secret" * 100)
    evil = tmp_path / "evil.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(evil), "64M"], check=True, timeout=60)
    images.add("img-evil", evil.read_bytes(), disk_format="qcow2")
    big = tmp_path / "big.qcow2"  # a small file announcing 2 GiB: more than the volume
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(big), "2G"], check=True,
                   timeout=60)
    images.add("img-big", big.read_bytes(), disk_format="qcow2")
    vol = backend.created(1)
    backend.write(vol, 0, b"untouched")
    with pytest.raises(exception.ImageUnacceptable, match="img-evil"):
        backend.driver.copy_image_to_volume(backend.ctx, vol, images, "img-evil")
    assert backend.read(vol, 0, 9) == b"untouched"
    tiny = backend.volume(1)
    tiny.update(backend.driver.create_volume(tiny))
    with pytest.raises(exception.ImageUnacceptable, match="img-big"):
        backend.driver.copy_image_to_volume(backend.ctx, tiny, images, "img-big")
    assert leftovers(tmp_path) == []
    backend.driver.delete_volume(vol)
    backend.driver.delete_volume(tiny)


def test_clone_image_is_copy_on_write_only_for_this_clusters_raw_snapshots(
        backend: CinderBackend, images: MemoryImageService) -> None:
    drv, be = backend.driver, backend
    base = be.created(1)
    be.write(base, 0, b"glance image bytes")
    snap = be.snapshot(base)
    snap.update(drv.create_snapshot(snap))
    host, port = drv.core.gateways[0].rsplit(":", 1)
    here = f"sheepdog://{host}:{port}/{base.provider_location}#{snap.provider_location}"
    foreign = f"sheepdog://127.0.0.254:7000/{base.provider_location}#{snap.provider_location}"
    meta = images.add("img-sd", b"", disk_format="raw", locations=[foreign, here])

    vol = be.volume(1)
    update, cloned = drv.clone_image(be.ctx, vol, (foreign, meta["locations"]), meta, images)
    assert cloned is True and update == {"provider_location": vol.name}
    vol.update(update)
    assert be.read(vol, 0, 18) == b"glance image bytes"
    be.write(vol, 0, b"changed")
    assert be.read(base, 0, 18) == b"glance image bytes"  # a clone, not the base

    other = be.volume(1)
    assert drv.clone_image(be.ctx, other, (foreign, []), meta, images) == (None, False)
    qcow = dict(meta, disk_format="qcow2")
    assert drv.clone_image(be.ctx, other, (here, []), qcow, images) == (None, False)
    assert drv.clone_image(be.ctx, other, ("http://example.invalid/x", []), meta,
                           images) == (None, False)
    assert drv.clone_image(be.ctx, other, None, meta, images) == (None, False)
    assert other.name not in be.vdis()
    drv.delete_volume(vol)
    drv.delete_snapshot(snap)
    drv.delete_volume(base)
    assert be.vdis() == []
