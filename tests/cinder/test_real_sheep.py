"""The adapter against a real Sheepdog 1.0 node (skips when sheep/dog are absent);
what the node holds is checked with the real ``dog``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sheepdog_backend.client.lease_records import ANCHOR
from tests.cinder.conftest import CINDER_MISSING, CinderBackend
from tests.realsheep import SheepCluster

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")

GiB = 1 << 30


@pytest.fixture
def real_backend(real_sheep: SheepCluster) -> Iterator[CinderBackend]:
    be = CinderBackend(real_sheep.gateways)
    try:
        be.driver.do_setup(be.ctx)
        be.driver.check_for_setup_error()
        yield be
    finally:
        be.close()


def dog_vdis(cluster: SheepCluster) -> list[str]:
    """Working VDI names as the real dog lists them (raw output, 'vdi list -r'),
    but the one that holds the volume leases (it is not a volume)."""
    out = cluster.run_dog("vdi", "list", "-r").stdout
    return sorted(line.split()[1] for line in out.splitlines()
                  if line.split() and line.split()[0] == "=" and line.split()[1] != ANCHOR)


def test_lifecycle_on_a_real_sheep(real_backend: CinderBackend,
                                   real_sheep: SheepCluster) -> None:
    from cinder import exception

    drv, be = real_backend.driver, real_backend
    vol = be.created(1)
    assert dog_vdis(real_sheep) == [vol.name]
    be.write(vol, (4 << 20) - 2, b"real bytes")
    snap = be.snapshot(vol)
    snap.update(drv.create_snapshot(snap))
    be.write(vol, (4 << 20) - 2, b"REAL BYTES")
    from_snap = be.volume(2)
    from_snap.update(drv.create_volume_from_snapshot(from_snap, snap))
    clone = be.volume(1)
    clone.update(drv.create_cloned_volume(clone, vol))
    assert be.read(from_snap, (4 << 20) - 2, 10) == b"real bytes"
    assert be.read(clone, (4 << 20) - 2, 10) == b"REAL BYTES"
    drv.extend_volume(vol, 2)
    vol.size = 2
    drv.revert_to_snapshot(be.ctx, vol, snap)
    assert be.read(vol, (4 << 20) - 2, 10) == b"real bytes"
    assert be.size_bytes(vol) == 2 * GiB
    with pytest.raises(exception.VolumeIsBusy):
        drv.delete_volume(vol)
    stats = drv.get_volume_stats(refresh=True)
    assert stats["total_volumes"] == 3 and isinstance(stats["free_capacity_gb"], float)

    real_sheep.run_dog("vdi", "create", "made-by-dog", "1G")
    managed = be.volume(1)
    assert drv.manage_existing_get_size(managed, {"source-name": "made-by-dog"}) == 1
    managed.update(drv.manage_existing(managed, {"source-name": "made-by-dog"}))
    assert managed.provider_location == "made-by-dog"

    drv.delete_snapshot(snap)
    for v in (vol, from_snap, clone, managed):
        drv.delete_volume(v)
        drv.delete_volume(v)
    assert dog_vdis(real_sheep) == []
