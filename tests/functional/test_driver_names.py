"""Caller-given names are used exactly; without them the backend's templates
apply (a control plane that owns its names, such as Cinder, passes them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sheepdog_backend.client.lease_records import ANCHOR
from sheepdog_backend.driver.base import BackendConfiguration, Snapshot, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import InvalidInput
from sheepdog_backend.testing.fixtures import EmbeddedServer


@pytest.fixture
def driver(embedded_server: EmbeddedServer) -> Iterator[SheepdogDriver]:
    conf = BackendConfiguration({"sheepdog_gateways": [embedded_server.gateways[0]],
                                 "volume_name_template": "bulk-%s",
                                 "snapshot_name_template": "snap-%s"})
    drv = SheepdogDriver(conf, backend_name="names")
    try:
        yield drv
    finally:
        drv.close()


def names(drv: SheepdogDriver) -> list[tuple[str, str]]:
    """Every VDI but the one holding the volume leases (not a volume)."""
    return sorted((v.name, v.tag) for v in drv.client.list_vdis() if v.name != ANCHOR)


def test_exact_names_and_templates(driver: SheepdogDriver) -> None:
    templated = Volume(id="7", size=1)
    exact = Volume(id="7", size=1, name="volume-from-the-control-plane")
    driver.create_volume(templated)
    driver.create_volume(exact)
    driver.create_snapshot(Snapshot(id="a", volume=templated))
    driver.create_snapshot(Snapshot(id="a", volume=exact, name="exact tag"))
    assert names(driver) == [("bulk-7", ""), ("bulk-7", "snap-a"),
                             ("volume-from-the-control-plane", ""),
                             ("volume-from-the-control-plane", "exact tag")]
    clone = Volume(id="8", size=1, name="clone-exact")
    driver.create_cloned_volume(clone, exact)
    driver.revert_to_snapshot(exact, Snapshot(id="a", volume=exact, name="exact tag"))
    assert ("clone-exact", "") in names(driver)
    with pytest.raises(InvalidInput):  # an exact name is validated like any other
        driver.create_volume(Volume(id="9", size=1, name="x" * 300))
    driver.delete_volume(clone)
    driver.delete_snapshot(Snapshot(id="a", volume=exact, name="exact tag"))
    driver.delete_snapshot(Snapshot(id="a", volume=templated))
    driver.delete_volume(exact)
    driver.delete_volume(templated)
    assert names(driver) == []
