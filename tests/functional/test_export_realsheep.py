"""The iSCSI main path on a real Sheepdog 1.0 sheep: our driver exports a
volume through a private tgtd, QEMU 7.2 writes through iSCSI with CHAP and
our client reads the same bytes (and the reverse), `dog` sees them too; a
snapshot attaches read-only through a clone; detach removes the target; a
killed gateway's export is moved after a tgtd restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.client.lease_records import ANCHOR
from sheepdog_backend.driver.base import Connector, Snapshot
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import TargetBusy
from sheepdog_backend.export.manager import read_record
from tests.functional.test_export_tgt import (
    HOST_IQN,
    driver_sync,
    make_driver,
    targets,
    volume,
)
from tests.iscsi_tools import capacity, libiscsi, qemu_io, url
from tests.realsheep import SheepCluster
from tests.tgtd import TgtDaemon

MiB, GiB = 1 << 20, 1 << 30
CONNECTOR = Connector(host="test-host", ip="127.0.0.1", initiator=HOST_IQN)


@pytest.fixture
def tgtd(tmp_path: Path) -> Iterator[TgtDaemon]:
    with TgtDaemon(tmp_path / "tgtd") as daemon:
        yield daemon


@pytest.fixture
def driver(real_sheep: SheepCluster, tgtd: TgtDaemon) -> Iterator[SheepdogDriver]:
    drv = make_driver(real_sheep.gateways, tgtd)
    try:
        yield drv
    finally:
        drv.close()


def test_real_sheep_qemu_and_client_agree_through_iscsi(real_sheep: SheepCluster,
                                                        driver: SheepdogDriver,
                                                        tgtd: TgtDaemon) -> None:
    vol = volume("vol-real")
    driver.create_volume(vol)
    driver.client.write("vol-real", 5 * MiB, b"\x6b" * MiB)  # before the attach
    info = driver.initialize_connection(vol, CONNECTOR)
    assert capacity(info, HOST_IQN) == GiB
    proc = qemu_io(info, "write -P 0x3c 0 2M", "read -P 0x6b 5M 1M", initiator=HOST_IQN)
    assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc
    assert proc.stdout.count("wrote 2097152/2097152") == 1
    assert driver.client.read("vol-real", 0, 2 * MiB) == b"\x3c" * 2 * MiB
    dog = real_sheep.run_dog("vdi", "read", "vol-real", "0", "4096")
    assert dog.stdout == "<" * 4096  # 0x3c, as the real dog reads it
    wrong = libiscsi("iscsi-inq", url(info, password="wrong-secret-123"), "-i", HOST_IQN)
    assert wrong.returncode != 0
    driver.terminate_connection(vol, CONNECTOR)
    assert targets(tgtd).targets() == []
    assert read_record(driver.client, "vol-real") is None


def test_real_sheep_snapshot_read_only_through_a_clone(driver: SheepdogDriver) -> None:
    vol = volume("vol-rsnap")
    driver.create_volume(vol)
    driver.client.write("vol-rsnap", 0, b"\x11" * MiB)
    snap = Snapshot(id="s", volume=vol, name="s")
    driver.create_snapshot(snap)
    driver.client.write("vol-rsnap", 0, b"\x22" * MiB)
    info = driver.initialize_connection_snapshot(snap, CONNECTOR)
    proc = qemu_io(info, "read -P 0x11 0 1M", initiator=HOST_IQN, readonly=True)
    assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc
    driver.terminate_connection_snapshot(snap, CONNECTOR)
    assert [v.name for v in driver.client.list_vdis()
            if not v.is_snapshot and v.name != ANCHOR] == ["vol-rsnap"]


def test_real_gateway_killed_export_moved(real_sheep_cluster: SheepCluster,
                                         tgtd: TgtDaemon) -> None:
    gateways = real_sheep_cluster.gateways
    drv = make_driver([gateways[1], gateways[0], gateways[2]], tgtd)
    try:
        vol = volume("vol-rmove")
        drv.create_volume(vol)
        info = drv.initialize_connection(vol, CONNECTOR)
        assert qemu_io(info, "write -P 0x47 0 1M", initiator=HOST_IQN).returncode == 0
        assert read_record(drv.client, "vol-rmove").gateway == gateways[1]  # type: ignore[union-attr]
        real_sheep_cluster.nodes[1].kill()
        with pytest.raises(TargetBusy, match="restart tgtd"):
            drv.ensure_export(vol)
        tgtd.restart()
        assert driver_sync(drv)["ensured"] == [info["data"]["target_iqn"]]
        rec = read_record(drv.client, "vol-rmove")
        assert rec is not None and rec.gateway in (gateways[0], gateways[2])
        # Fresh writes go through the new gateway and read back on both sides.
        proc = qemu_io(info, "write -P 0x48 4M 1M", "read -P 0x48 4M 1M", initiator=HOST_IQN)
        assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc
        assert drv.client.read("vol-rmove", 4 * MiB, MiB) == b"\x48" * MiB
        proc = qemu_io(info, "read -P 0x47 0 1M", initiator=HOST_IQN)
        assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc
    finally:
        drv.close()
