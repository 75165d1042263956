"""Two backends from one ini file on two embedded servers: each driver talks
to its own cluster, and one cluster's snapshot is refused by the other."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest

from sheepdog_backend.driver.base import Snapshot, Volume
from sheepdog_backend.driver.loader import load_backends
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import InvalidBackingImage
from sheepdog_backend.testing.fixtures import EmbeddedServer


@pytest.fixture
def two_servers(tmp_path: pathlib.Path) -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    with EmbeddedServer(tmp_path / "a") as a, EmbeddedServer(tmp_path / "b") as b:
        yield a, b


def test_two_backends_two_clusters(tmp_path: pathlib.Path,
                                   two_servers: tuple[EmbeddedServer, EmbeddedServer]) -> None:
    a, b = two_servers
    ini = tmp_path / "multi.conf"
    ini.write_text(f"""
[DEFAULT]
enabled_backends = gold, silver

[backend_defaults]
sheepdog_retry_attempts = 2

[gold]
volume_driver = sheepdog
sheepdog_gateways = {a.gateways[0]}
volume_name_template = gold-%s

[silver]
volume_driver = sheepdog_backend.driver.sheepdog.SheepdogDriver
sheepdog_store_address = {b.addresses[0][0]}
sheepdog_store_port = {b.addresses[0][1]}
""")
    drivers = load_backends(str(ini))
    try:
        gold, silver = drivers["gold"], drivers["silver"]
        assert isinstance(gold, SheepdogDriver) and isinstance(silver, SheepdogDriver)
        for drv in drivers.values():
            drv.do_setup()
            drv.check_for_setup_error()
        v = Volume(id=uuid.uuid4().hex, size=1)
        gold.create_volume(v)
        assert gold.data_access().exists(v)
        assert not silver.data_access().exists(Volume(id=v.id, size=1, name=f"gold-{v.id}"))
        assert [x["name"] for x in gold.list_volumes()] == [f"gold-{v.id}"]
        assert silver.list_volumes() == []
        assert gold.get_volume_stats(refresh=True)["volume_backend_name"] == "gold"
        assert silver.get_volume_stats(refresh=True)["total_volumes"] == 0

        s = Snapshot(id="s", volume=v, name="gold-snap")
        gold.create_snapshot(s)
        host, port = a.addresses[0]
        ref = f"sheepdog://{host}:{port}/gold-{v.id}#gold-snap"
        target = Volume(id="t", size=1, name="from-gold")
        with pytest.raises(InvalidBackingImage, match="not a gateway of this cluster"):
            silver.create_volume(target, backing=ref)
        assert not silver.data_access().exists(target)
        gold.create_volume(target, backing=ref)  # the same reference is fine at home
        assert gold.data_access().exists(target)
    finally:
        for drv in drivers.values():
            drv.close()
