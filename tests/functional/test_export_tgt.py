"""Volumes exported over iSCSI through a private tgtd, end to end against the
embedded server: QEMU 7.2 (qemu-io, libiscsi) writes and reads through the
target with CHAP and our client sees the same bytes; the tgt facts the
export layer designs around, each shown on the real tgtd."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.driver.base import BackendConfiguration, Connector, Snapshot, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import (
    ExportedVolumeBusy,
    GatewayUnusable,
    TargetBusy,
    TargetCommandFailed,
)
from sheepdog_backend.export import TgtTargets, Tgtadm, snapshot_clone_name
from sheepdog_backend.export.manager import RECORD_KEY, read_record
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.iscsi_tools import capacity, libiscsi, qemu_io, url
from tests.realsheep import free_port
from tests.tgtd import TgtDaemon

MiB, GiB = 1 << 20, 1 << 30
HOST_IQN = "iqn.1993-08.org.debian:01:testhost"
CONNECTOR = Connector(host="test-host", ip="127.0.0.1", initiator=HOST_IQN)
PREFIX = "iqn.2010-10.org.openstack:"


@pytest.fixture
def tgtd(tmp_path: Path) -> Iterator[TgtDaemon]:
    daemon = TgtDaemon(tmp_path / "tgtd")
    with daemon:
        yield daemon


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """Two listeners on ports <= 9999 (tgt keeps 4 digits of a port)."""
    srv = EmbeddedServer(tmp_path / "sheep", ports=[free_port(), free_port()])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def make_driver(gateways: list[str], daemon: TgtDaemon, **extra: object) -> SheepdogDriver:
    values: dict[str, object] = {
        "sheepdog_gateways": gateways, "sheepdog_retry_attempts": 2,
        "sheepdog_retry_deadline": 5.0, "sheepdog_connect_timeout": 2.0,
        "sheepdog_attach_protocol": "iscsi", "target_prefix": PREFIX,
        "target_ip_address": "127.0.0.1", "target_port": daemon.portal_port,
        "sheepdog_tgt_control_port": daemon.control_port,
        "sheepdog_export_chap_key": "test-key-not-secret"}
    values.update(extra)
    return SheepdogDriver(BackendConfiguration(values), backend_name="sd")


@pytest.fixture
def driver(server: EmbeddedServer, tgtd: TgtDaemon) -> Iterator[SheepdogDriver]:
    drv = make_driver(server.gateways, tgtd)
    drv.do_setup()
    try:
        yield drv
    finally:
        drv.close()


def targets(daemon: TgtDaemon) -> TgtTargets:
    return TgtTargets(Tgtadm(control_port=daemon.control_port))


def volume(name: str, size: int = 1) -> Volume:
    return Volume(id=name, size=size, name=name)


def pattern(seed: int, length: int) -> bytes:
    return bytes((seed + i * 7) % 251 for i in range(length))


# -- the main path -------------------------------------------------------------


def test_qemu_writes_through_iscsi_client_reads_and_back(driver: SheepdogDriver) -> None:
    vol = volume("vol-iscsi")
    driver.create_volume(vol)
    # Our client writes before the attach (as an image import does): tgt reads the
    # inode when the LU opens and caches it, so objects our client allocates
    # while the LU is open stay invisible to tgt until it re-opens.
    driver.client.write("vol-iscsi", 8 * MiB, b"\xc3" * (256 << 10))
    info = driver.initialize_connection(vol, CONNECTOR)
    data = info["data"]
    assert info["driver_volume_type"] == "iscsi"
    assert data["target_lun"] == 1 and data["auth_method"] == "CHAP"
    assert data["discard"] is False
    # QEMU writes 1 MiB at 3 MiB; our client reads it back.
    proc = qemu_io(info, "write -P 0x5a 3M 1M", initiator=HOST_IQN)
    assert proc.returncode == 0 and "wrote 1048576/1048576" in proc.stdout, proc
    assert driver.client.read("vol-iscsi", 3 * MiB, MiB) == b"\x5a" * MiB
    # QEMU reads exactly our client's pattern (qemu-io -P checks every byte).
    proc = qemu_io(info, "read -P 0xc3 8M 256k", "read -P 0 0 1M", initiator=HOST_IQN)
    assert proc.returncode == 0 and "Pattern verification failed" not in proc.stdout, proc
    assert proc.stdout.count("read 262144/262144") == 1
    assert capacity(info, HOST_IQN) == GiB
    stats = driver.get_volume_stats(refresh=True)
    assert stats["storage_protocol"] == "iSCSI"


def test_chap_and_acl_refuse_strangers(driver: SheepdogDriver) -> None:
    vol = volume("vol-chap")
    driver.create_volume(vol)
    info = driver.initialize_connection(vol, CONNECTOR)
    good = libiscsi("iscsi-inq", url(info), "-i", HOST_IQN)
    assert good.returncode == 0, good.stderr
    wrong = libiscsi("iscsi-inq", url(info, password="wrong-secret-123"), "-i", HOST_IQN)
    assert wrong.returncode != 0 and "Authentication failure" in wrong.stderr
    no_chap = libiscsi("iscsi-inq", url(info).replace(
        f"{info['data']['auth_username']}%{info['data']['auth_password']}@", ""),
        "-i", HOST_IQN)
    assert no_chap.returncode != 0
    other = libiscsi("iscsi-inq", url(info), "-i", "iqn.1993-08.org.debian:01:intruder")
    assert other.returncode != 0
    assert qemu_io(info, "read 0 4k", password="wrong-secret-123",
                   initiator=HOST_IQN).returncode != 0


def test_chap_secret_survives_a_new_driver_and_differs_per_volume(
        server: EmbeddedServer, tgtd: TgtDaemon, driver: SheepdogDriver) -> None:
    for name in ("vol-a", "vol-b"):
        driver.create_volume(volume(name))
    a = driver.initialize_connection(volume("vol-a"), CONNECTOR)["data"]
    b = driver.initialize_connection(volume("vol-b"), CONNECTOR)["data"]
    assert a["auth_password"] != b["auth_password"]
    again = make_driver(server.gateways, tgtd)
    try:
        assert again.initialize_connection(volume("vol-a"), CONNECTOR)["data"] == a
    finally:
        again.close()


def test_detach_removes_target_and_record(driver: SheepdogDriver, tgtd: TgtDaemon) -> None:
    vol = volume("vol-detach")
    driver.create_volume(vol)
    info = driver.initialize_connection(vol, CONNECTOR)
    iqn = info["data"]["target_iqn"]
    assert targets(tgtd).find(iqn) is not None
    driver.terminate_connection(vol, CONNECTOR)
    assert targets(tgtd).find(iqn) is None
    assert driver.client.get_attr("vol-detach", RECORD_KEY) is None
    assert libiscsi("iscsi-inq", url(info), "-i", HOST_IQN).returncode != 0
    driver.terminate_connection(vol, CONNECTOR)  # already gone: no error
    driver.delete_volume(vol)
    assert driver.client.find_vdi("vol-detach") is None


def test_second_initiator_keeps_the_target_until_the_last_detach(
        driver: SheepdogDriver, tgtd: TgtDaemon) -> None:
    vol = volume("vol-two")
    driver.create_volume(vol)
    other = Connector(host="h2", initiator="iqn.1993-08.org.debian:01:second")
    info = driver.initialize_connection(vol, CONNECTOR)
    driver.initialize_connection(vol, other)
    driver.terminate_connection(vol, CONNECTOR)
    assert libiscsi("iscsi-inq", url(info), "-i", HOST_IQN).returncode != 0
    assert libiscsi("iscsi-inq", url(info), "-i", other.initiator or "").returncode == 0
    driver.terminate_connection(vol, other)
    assert targets(tgtd).find(info["data"]["target_iqn"]) is None


def test_terminate_without_connector_unknown_initiator_and_twice(
        server: EmbeddedServer, driver: SheepdogDriver, tgtd: TgtDaemon) -> None:
    """Each answers whether other attachments remain and removes nothing that
    another attachment uses; the record is what every process counts from."""
    from sheepdog_backend.driver import attach
    from sheepdog_backend.export.base import Detached

    vol = volume("vol-term")
    driver.create_volume(vol)
    other = Connector(host="h2", initiator="iqn.1993-08.org.debian:01:second")
    stranger = Connector(host="h3", initiator="iqn.1993-08.org.debian:01:stranger")
    info = driver.initialize_connection(vol, CONNECTOR)
    driver.initialize_connection(vol, other)
    iqn = info["data"]["target_iqn"]

    def seen() -> tuple[bool, list[str], dict[str, int] | None]:
        target, rec = targets(tgtd).find(iqn), read_record(driver.client, "vol-term")
        return (target is not None, sorted(target.acls) if target else [],
                rec.attachments if rec else None)

    both = (True, sorted([HOST_IQN, other.initiator or ""]), {HOST_IQN: 1, other.initiator: 1})
    assert seen() == both
    assert driver.terminate_connection(vol, None) is True  # forced: which of two? neither
    assert seen() == both
    assert attach.terminate_connection(driver.core, vol, stranger) == Detached(
        "vol-term", exported=True, ended=None, remaining=2, target_removed=False)
    assert seen() == both
    # Cinder's clean-up after a failed attach of a third host keeps the others
    driver.create_export(vol, stranger)
    assert stranger.initiator in seen()[1]
    driver.remove_export(vol)
    assert seen() == both
    for initiator in (HOST_IQN, other.initiator or ""):
        assert libiscsi("iscsi-inq", url(info), "-i", initiator).returncode == 0
    assert driver.terminate_connection(vol, other) is True
    assert driver.terminate_connection(vol, other) is True  # twice: nothing more ends
    assert seen() == (True, [HOST_IQN], {HOST_IQN: 1})
    again = make_driver(server.gateways, tgtd)  # another process counts the same
    try:
        assert again.terminate_connection(vol, None) is False  # the only one: it ends
        assert seen() == (False, [], None)
        assert again.terminate_connection(vol, None) is False  # nothing left: no error
        assert driver.terminate_connection(vol, CONNECTOR) is False
    finally:
        again.close()
    assert driver.client.find_vdi("vol-term") is not None  # the volume itself stays


# -- tgtd forgets: sync restores -------------------------------------------------


def test_tgtd_restart_then_sync_restores_every_export(driver: SheepdogDriver,
                                                      tgtd: TgtDaemon) -> None:
    infos = {}
    for i, name in enumerate(("vol-r1", "vol-r2")):
        driver.create_volume(volume(name))
        infos[name] = driver.initialize_connection(volume(name), CONNECTOR)
        assert qemu_io(infos[name], f"write -P {0x21 + i} 0 64k",
                       initiator=HOST_IQN).returncode == 0
    tgtd.restart()
    assert targets(tgtd).targets() == []  # tgtd keeps targets in memory only
    driver.ensure_export(volume("vol-r1"))  # the driver hook restores one
    assert [t.iqn for t in targets(tgtd).targets()] == [infos["vol-r1"]["data"]["target_iqn"]]
    result = driver_sync(driver)  # sync restores the rest
    assert sorted(result["ensured"]) == sorted(i["data"]["target_iqn"] for i in infos.values())
    assert result["failed"] == []
    for i, (name, info) in enumerate(infos.items()):
        proc = qemu_io(info, f"read -P {0x21 + i} 0 64k", initiator=HOST_IQN)
        assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc


def driver_sync(driver: SheepdogDriver) -> dict[str, list[str]]:
    from sheepdog_backend.driver import attach
    return attach.manager(driver.core).sync()


def test_sync_removes_unrecorded_targets_under_the_prefix(driver: SheepdogDriver,
                                                          tgtd: TgtDaemon) -> None:
    driver.create_volume(volume("vol-s"))
    host, port = driver.gateways[0].rsplit(":", 1)
    targets(tgtd).create(PREFIX + "forgotten", f"tcp:{host}:{port}:vol-s")
    targets(tgtd).create("iqn.2001-04.com.example:other", f"tcp:{host}:{port}:vol-s")
    result = driver_sync(driver)
    assert result["removed"] == [PREFIX + "forgotten"]
    assert [t.iqn for t in targets(tgtd).targets()] == ["iqn.2001-04.com.example:other"]


# -- extend ---------------------------------------------------------------------


def test_extend_is_seen_by_the_initiator(driver: SheepdogDriver, tgtd: TgtDaemon) -> None:
    vol = volume("vol-grow")
    driver.create_volume(vol)
    info = driver.initialize_connection(vol, CONNECTOR)
    assert capacity(info, HOST_IQN) == GiB
    driver.extend_volume(vol, 2)
    assert capacity(info, HOST_IQN) == 2 * GiB
    proc = qemu_io(info, "write -P 0x77 1536M 64k", "read -P 0x77 1536M 64k",
                   initiator=HOST_IQN)
    assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc
    assert driver.get_volume_stats(refresh=True)["online_extend_support"] is True


def test_lu_keeps_its_old_size_until_re_created(server: EmbeddedServer,
                                                tgtd: TgtDaemon) -> None:
    """The tgt fact refresh_size exists for: a resize alone is not seen."""
    drv = make_driver(server.gateways, tgtd, sheepdog_attach_protocol="sheepdog")
    try:
        drv.create_volume(volume("vol-stale"))
        from sheepdog_backend.driver import attach
        info = attach.initialize_connection(drv.core, volume("vol-stale"), CONNECTOR)
        drv.client.resize_vdi("vol-stale", 2 * GiB)  # behind the export layer's back
        assert capacity(info, HOST_IQN) == GiB
        assert attach.manager(drv.core).refresh_size("vol-stale") is True
        assert capacity(info, HOST_IQN) == 2 * GiB
    finally:
        drv.close()


# -- snapshots --------------------------------------------------------------------


def test_snapshot_attaches_read_only_through_a_temporary_clone(
        driver: SheepdogDriver) -> None:
    vol = volume("vol-snap")
    driver.create_volume(vol)
    driver.client.write("vol-snap", 0, b"\x42" * MiB)
    snap = Snapshot(id="s1", volume=vol, name="s1")
    driver.create_snapshot(snap)
    driver.client.write("vol-snap", 0, b"\x43" * MiB)  # the volume moves on
    info = driver.initialize_connection_snapshot(snap, CONNECTOR)
    assert info["data"]["access_mode"] == "ro"
    clone = snapshot_clone_name("vol-snap", "s1")
    assert driver.client.find_vdi(clone) is not None
    proc = qemu_io(info, "read -P 0x42 0 1M", initiator=HOST_IQN, readonly=True)
    assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc
    write = qemu_io(info, "write -P 0x99 0 4k", initiator=HOST_IQN)  # read-write open
    assert write.returncode != 0 and "write protected" in write.stderr, write
    assert driver.client.read("vol-snap", 0, 4) == b"\x43" * 4
    assert driver.client.read("vol-snap", 0, 4, tag="s1") == b"\x42" * 4
    driver.terminate_connection_snapshot(snap, CONNECTOR)
    assert driver.client.find_vdi(clone) is None


def test_tgt_refuses_a_snapshot_as_lun(driver: SheepdogDriver, tgtd: TgtDaemon) -> None:
    """Why snapshots go through a clone: tgt refuses ``VDI:tag``."""
    vol = volume("vol-tag")
    driver.create_volume(vol)
    driver.create_snapshot(Snapshot(id="t", volume=vol, name="t"))
    host, port = driver.gateways[0].rsplit(":", 1)
    with pytest.raises(TargetCommandFailed):
        targets(tgtd).create(PREFIX + "tagged", f"tcp:{host}:{port}:vol-tag:t")


def test_snapshot_and_clone_of_an_exported_volume_refused_unless_forced(
        driver: SheepdogDriver) -> None:
    vol = volume("vol-busy")
    driver.create_volume(vol)
    driver.initialize_connection(vol, CONNECTOR)
    snap = Snapshot(id="x", volume=vol, name="x")
    with pytest.raises(ExportedVolumeBusy, match="exported over iSCSI"):
        driver.create_snapshot(snap)
    assert driver.client.find_vdi("vol-busy", "x") is None
    with pytest.raises(ExportedVolumeBusy):
        driver.create_cloned_volume(volume("vol-busy-copy"), vol)
    assert driver.client.find_vdi("vol-busy-copy") is None
    driver.create_snapshot(snap, force=True)
    assert driver.client.find_vdi("vol-busy", "x") is not None
    driver.client.write("vol-busy", 0, b"\x01" * 512)  # after the snapshot
    vid = driver.client.find_vdi("vol-busy").vid  # type: ignore[union-attr]
    with pytest.raises(ExportedVolumeBusy, match="revert"):
        driver.revert_to_snapshot(vol, snap)
    assert driver.client.find_vdi("vol-busy").vid == vid  # type: ignore[union-attr]
    assert driver.client.read("vol-busy", 0, 512) == b"\x01" * 512
    driver.terminate_connection(vol, CONNECTOR)
    driver.create_snapshot(Snapshot(id="y", volume=vol, name="y"))  # detached: allowed


# -- gateways -----------------------------------------------------------------------


def test_five_digit_gateway_refused_with_the_reason(tmp_path: Path, tgtd: TgtDaemon) -> None:
    srv = EmbeddedServer(tmp_path / "wide", ports=[free_port(max_port=65535)])
    srv.start()
    try:
        port = srv.addresses[0][1]
        if port <= 9999:
            pytest.skip(f"the OS gave a 4-digit port ({port})")
        drv = make_driver(srv.gateways, tgtd)
        try:
            drv.create_volume(volume("vol-wide"))
            with pytest.raises(GatewayUnusable, match="only 4 digits of the port"):
                drv.initialize_connection(volume("vol-wide"), CONNECTOR)
            assert targets(tgtd).targets() == []
            assert read_record(drv.client, "vol-wide") is None
        finally:
            drv.close()
    finally:
        srv.stop()


def test_tgt_keeps_four_digits_of_the_port(server: EmbeddedServer, tgtd: TgtDaemon) -> None:
    """The tgt bug itself: a 5-digit port is cut to its first 4 digits."""
    drv = make_driver(server.gateways, tgtd)
    try:
        drv.create_volume(volume("vol-cut"))
        port = server.addresses[0][1]
        lied = f"tcp:127.0.0.1:{port}0:vol-cut"  # a port nobody listens on (or none at all)
        made = targets(tgtd).create(PREFIX + "cut", lied)
        lu = made.lun(1)
        assert lu is not None and lu.size > 0  # it opened our VDI through port {port}
    finally:
        drv.close()


def test_dead_gateway_export_moves_to_a_live_one(server: EmbeddedServer,
                                                 tgtd: TgtDaemon) -> None:
    """tgtd cannot drop a LU on a dead gateway (closing it retries that gateway
    forever in tgtd's main thread): ensure_export says so without touching
    tgtd, and after a tgtd restart sync moves the export to a live gateway."""
    second, first = server.gateways[1], server.gateways[0]
    drv = make_driver([second, first], tgtd)
    try:
        vol = volume("vol-move")
        drv.create_volume(vol)
        info = drv.initialize_connection(vol, CONNECTOR)
        assert read_record(drv.client, "vol-move").gateway == second  # type: ignore[union-attr]
        assert qemu_io(info, "write -P 0x31 0 64k", initiator=HOST_IQN).returncode == 0
        server.stop_listener(1)
        with pytest.raises(TargetBusy, match="restart tgtd"):
            drv.ensure_export(vol)
        assert len(targets(tgtd).targets()) == 1  # tgtd still answers
        tgtd.restart()
        assert driver_sync(drv)["ensured"] == [info["data"]["target_iqn"]]
        rec = read_record(drv.client, "vol-move")
        assert rec is not None and rec.gateway == first
        lu = targets(tgtd).find(rec.iqn).lun(1)  # type: ignore[union-attr]
        assert lu is not None and lu.backing == f"tcp:{first}:vol-move"
        proc = qemu_io(info, "read -P 0x31 0 64k", initiator=HOST_IQN)
        assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc
    finally:
        drv.close()


def test_lu_with_io_stuck_on_a_dead_gateway_reports_busy(server: EmbeddedServer,
                                                         tgtd: TgtDaemon) -> None:
    second = server.gateways[1]
    drv = make_driver([second, server.gateways[0]], tgtd)
    reader = None
    try:
        vol = volume("vol-stuck")
        drv.create_volume(vol)
        info = drv.initialize_connection(vol, CONNECTOR)
        server.stop_listener(1)
        from tests.iscsi_tools import image_opts, qemu_io_path
        reader = subprocess.Popen(
            [qemu_io_path(), "--object",
             f"secret,id=sd-chap,data={info['data']['auth_password']}",
             "--image-opts", image_opts(info, initiator=HOST_IQN), "-c", "read 0 64k"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while "retrying to reconnect" not in tgtd.log_text():
            assert time.monotonic() < deadline, "tgt never tried the dead gateway"
            time.sleep(0.2)
        with pytest.raises(TargetBusy, match="restart tgtd"):
            drv.ensure_export(vol)
        # tgtd itself refuses to drop the LU (and answers, since a command is in flight
        # it never gets as far as closing the LU)
        tid = targets(tgtd).find(info["data"]["target_iqn"]).tid  # type: ignore[union-attr]
        with pytest.raises(TargetBusy, match="still active"):
            targets(tgtd).delete_lun(tid)
    finally:
        if reader is not None:
            reader.kill()
            reader.wait(timeout=10)
        drv.close()


# -- connections per LU ---------------------------------------------------------------


def _tgtd_connections_to(pid: int, port: int) -> int:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if inode in inodes and state == "01" and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


def test_one_lu_opens_at_most_17_connections_and_the_server_takes_them(
        driver: SheepdogDriver, server: EmbeddedServer, tgtd: TgtDaemon) -> None:
    vol = volume("vol-conns")
    driver.create_volume(vol)
    info = driver.initialize_connection(vol, CONNECTOR)
    commands = [f"aio_write -P {i + 1} {i}M 1M" for i in range(32)] + ["aio_flush"]
    proc = qemu_io(info, *commands, initiator=HOST_IQN)
    assert proc.returncode == 0, proc
    port = int(read_record(driver.client, "vol-conns").gateway.rsplit(":", 1)[1])  # type: ignore[union-attr]
    opened = _tgtd_connections_to(tgtd.pid, port)
    print(f"tgtd holds {opened} connections to the gateway for one LU")
    assert 1 <= opened <= 17
    for i in (0, 17, 31):
        assert driver.client.read("vol-conns", i * MiB, 16) == bytes([i + 1]) * 16


def test_no_unmap_advertised(driver: SheepdogDriver) -> None:
    vol = volume("vol-unmap")
    driver.create_volume(vol)
    info = driver.initialize_connection(vol, CONNECTOR)
    proc = libiscsi("iscsi-readcapacity16", url(info), "-i", HOST_IQN)
    assert proc.returncode == 0 and "LBPME:0" in proc.stdout  # no logical block provisioning
    assert info["data"]["discard"] is False
