"""The local export mode (issue 26, section 3) on a real Sheepdog 1.0 sheep:
two compute hosts simulated on 127.0.0.2 and 127.0.0.3, each with its own
tgtd, ``sheepdog-backend gateway`` and ``sheepdog-backend agent`` process;
QEMU 7.2 (qemu-io over libiscsi) is the guest on each.  The driver (any
process: here the test's) records attachments on the cluster; each host's
agent makes the targets on its own tgtd.  One sheep and one set of host
processes serve the whole module; every process is stopped by its own
handle whatever happens.  Skips, saying why, without sheep/dog, tgt or a
qemu-io with iSCSI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.driver.base import BackendConfiguration, Connector, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import (
    ConfigError,
    ExportAgentTimeout,
    ExportHostUnknown,
    ExportLockTimeout,
)
from sheepdog_backend.export import clusterlock, hosts
from sheepdog_backend.export.manager import read_record
from sheepdog_backend.gateway.relay import POLL
from tests.compute_hosts import ComputeHost, backend_values, wait_for
from tests.iscsi_tools import QemuSession, qemu_io, qemu_io_path
from tests.realsheep import SheepCluster, require

OBJ, BLOCK = 4 << 20, 64 << 10
AGENT_TIMEOUT = 4.0


def iqn(host: str, n: int = 1) -> str:
    return f"iqn.1993-08.org.debian:01:{host}-{n}"


def connector(host: str, n: int = 1) -> Connector:
    return Connector(host=host, ip=None, initiator=iqn(host, n))


class Site:
    """The module's sheep, its two compute hosts and a driver in local mode."""

    def __init__(self, sheep: SheepCluster, client: SheepdogClient,
                 h2: ComputeHost, h3: ComputeHost, driver: SheepdogDriver) -> None:
        self.sheep, self.client, self.h2, self.h3, self.driver = sheep, client, h2, h3, driver

    def volume(self, name: str) -> Volume:
        vol = Volume(id=name, size=1, name=name)
        self.driver.create_volume(vol)
        return vol


def local_driver(gateways: list[str], **extra: object) -> SheepdogDriver:
    values = dict(backend_values(gateways), sheepdog_attach_protocol="iscsi",
                  sheepdog_export_mode="local", sheepdog_export_agent_timeout=AGENT_TIMEOUT)
    values.update(extra)
    return SheepdogDriver(BackendConfiguration(values), backend_name="sd")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require("sheep")
    qemu_io_path()  # skips without qemu-io (iSCSI) and libiscsi-bin
    tmp = tmp_path_factory.mktemp("local-exports")
    with SheepCluster(tmp / "sheep", nodes=1) as sheep, \
            SheepdogClient(sheep.gateways) as client:
        h2 = ComputeHost("compute-2", "127.0.0.2", tmp, sheep.gateways)
        h3 = ComputeHost("compute-3", "127.0.0.3", tmp, sheep.gateways)
        driver = local_driver(sheep.gateways)
        try:
            h2.start(client)
            h3.start(client)
            yield Site(sheep, client, h2, h3, driver)
        finally:
            driver.close()
            for host in (h2, h3):
                host.stop()


def _acl(host: ComputeHost, target_iqn: str) -> tuple[str, ...] | None:
    """The ACL of the target on ``host``'s tgtd (None: no such target)."""
    target = host.targets().find(target_iqn)
    return None if target is None else target.acls


def portal_of(info: dict[str, Any]) -> str:
    return str(info["data"]["target_portal"])


def ok(proc: subprocess.CompletedProcess[str] | str, writes: int = 0, reads: int = 0,
       size: int = BLOCK) -> None:
    out = proc if isinstance(proc, str) else proc.stdout + proc.stderr
    assert "failed" not in out.lower() and "error" not in out.lower(), out
    assert out.count(f"wrote {size}/{size}") == writes, out
    assert out.count(f"read {size}/{size}") == reads, out


# -- the main path ----------------------------------------------------------------


def test_attach_goes_to_the_connectors_own_host(site: Site) -> None:
    vol = site.volume("loc-main")
    info = site.driver.initialize_connection(vol, connector("compute-2"))
    assert portal_of(info) == site.h2.portal  # host 2's own portal
    iqn_ = info["data"]["target_iqn"]
    assert iqn_ in site.h2.iqns() and iqn_ not in site.h3.iqns()
    target = site.h2.targets().find(iqn_)
    assert target is not None and target.acls == (iqn("compute-2"),)
    lu = target.lun(1)
    assert lu is not None and lu.backing == f"tcp:{site.h2.gateway}:loc-main"
    ok(qemu_io(info, "write -P 0x5c 1M 64k", "read -P 0x5c 1M 64k",
               initiator=iqn("compute-2")), writes=1, reads=1)
    assert site.client.read("loc-main", 1 << 20, BLOCK) == b"\x5c" * BLOCK
    rec = read_record(site.client, "loc-main")
    assert rec is not None and rec.hosts == {"compute-2": {iqn("compute-2"): 1}}
    # the last attachment takes the record; host 2's agent drops the target
    assert site.driver.terminate_connection(vol, connector("compute-2")) is False
    assert read_record(site.client, "loc-main") is None
    wait_for("host 2's target removed", lambda: iqn_ not in site.h2.iqns())
    assert hosts.index(site.client, "compute-2").exports.get("loc-main") is None


def test_a_dead_host_affects_only_its_own_attachments(site: Site) -> None:
    """Host 3 dies (agent killed, tgtd restarted empty as after a reboot):
    host 2 attaches and does I/O meanwhile; an attach on host 3 fails naming
    it and changes nothing; host 3's targets come back with its agent."""
    on3, on2, refused = site.volume("loc-dead-3"), site.volume("loc-dead-2"), \
        site.volume("loc-dead-x")
    info3 = site.driver.initialize_connection(on3, connector("compute-3"))
    ok(qemu_io(info3, "write -P 0x33 0 64k", initiator=iqn("compute-3")), writes=1)
    site.h3.kill_agent()
    site.h3.tgtd.restart()
    assert site.h3.iqns() == set()
    started = time.monotonic()
    info2 = site.driver.initialize_connection(on2, connector("compute-2"))
    assert time.monotonic() - started < AGENT_TIMEOUT  # not held up by host 3
    ok(qemu_io(info2, "write -P 0x22 0 64k", "read -P 0x22 0 64k",
               initiator=iqn("compute-2")), writes=1, reads=1)
    index_before = hosts.index(site.client, "compute-3")
    with pytest.raises(ExportAgentTimeout) as caught:
        site.driver.initialize_connection(refused, connector("compute-3"))
    assert caught.value.host == "compute-3" and "compute-3" in str(caught.value)
    assert read_record(site.client, "loc-dead-x") is None  # taken back
    assert "loc-dead-x" not in hosts.index(site.client, "compute-3").exports
    assert dict(hosts.index(site.client, "compute-3").exports) == dict(index_before.exports)
    # host 3 back: its agent restores the target it had, and only that one
    site.h3.start_agent(site.client)
    wait_for("host 3's target restored, ACL and all",
             lambda: _acl(site.h3, info3["data"]["target_iqn"]) == (iqn("compute-3"),))
    ok(qemu_io(info3, "read -P 0x33 0 64k", initiator=iqn("compute-3")), reads=1)
    assert site.h3.iqns() == {info3["data"]["target_iqn"]}
    for vol, host in ((on3, "compute-3"), (on2, "compute-2")):
        assert site.driver.terminate_connection(vol, connector(host)) is False


def test_a_restarted_tgtd_gets_its_targets_back(site: Site) -> None:
    vol = site.volume("loc-tgtd")
    info = site.driver.initialize_connection(vol, connector("compute-2"))
    ok(qemu_io(info, "write -P 0x44 4M 64k", initiator=iqn("compute-2")), writes=1)
    site.h2.tgtd.restart()
    wait_for("host 2's target re-made, ACL and all, after its tgtd restarted",
             lambda: _acl(site.h2, info["data"]["target_iqn"]) == (iqn("compute-2"),))
    ok(qemu_io(info, "read -P 0x44 4M 64k", initiator=iqn("compute-2")), reads=1)
    assert site.driver.terminate_connection(vol, connector("compute-2")) is False


# -- live migration -------------------------------------------------------------------


def _blocks(first: int, count: int, at: int, base: int) -> list[tuple[int, int]]:
    return [((first + i) * OBJ + at, base + i) for i in range(count)]


def test_live_migration_from_host_2_to_host_3_loses_nothing(site: Site) -> None:
    """Nova's flow: attach on the destination, the source writes (into objects
    the destination later writes too, and into objects only the source
    writes), the destination writes, the source is detached; the destination,
    idle meanwhile, reads every acknowledged write through its own LU, as the
    guest would, and through a fresh login."""
    vol = site.volume("loc-migrate")
    src_info = site.driver.initialize_connection(vol, connector("compute-2"))
    src = QemuSession(src_info, initiator=iqn("compute-2"))
    dst: QemuSession | None = None
    try:
        ok(src.run("write -P 1 0 64k"), writes=1)
        dst_info = site.driver.initialize_connection(vol, connector("compute-3"))
        assert portal_of(dst_info) == site.h3.portal and portal_of(src_info) == site.h2.portal
        assert dst_info["data"]["target_iqn"] == src_info["data"]["target_iqn"]
        dst = QemuSession(dst_info, initiator=iqn("compute-3"))  # the LU opens its inode
        ok(dst.run("read -P 1 0 64k"), reads=1)
        shared = _blocks(1, 8, 0, 0xA0)  # first 64 KiB of objects 1-8
        theirs = _blocks(1, 8, OBJ - BLOCK, 0xB0)  # last 64 KiB of the same objects
        only_src = _blocks(20, 4, 0, 0xC0)  # objects only the source writes
        ok(src.run(*(f"write -P {p} {off} 64k" for off, p in shared + only_src)), writes=12)
        ok(dst.run(*(f"write -P {p} {off} 64k" for off, p in theirs)), writes=8)
        src.close()  # the instance runs on the destination now
        assert site.driver.terminate_connection(vol, connector("compute-2")) is True
        iqn_ = dst_info["data"]["target_iqn"]
        wait_for("host 2's target removed", lambda: iqn_ not in site.h2.iqns())
        assert iqn_ in site.h3.iqns()
        time.sleep(POLL * 1.5)  # an idle guest: its gateway looked at the VDI again
        every = [(0, 1), *shared, *theirs, *only_src]
        for off, p in every:  # the truth on the cluster
            assert site.client.read("loc-migrate", off, BLOCK) == bytes([p]) * BLOCK, off
        ok(dst.run(*(f"read -P {p} {off} 64k" for off, p in every)), reads=len(every))
        ok(qemu_io(dst_info, *(f"read -P {p} {off} 64k" for off, p in every),
                   initiator=iqn("compute-3")), reads=len(every))
    finally:
        src.close()
        if dst is not None:
            dst.close()
    assert site.driver.terminate_connection(vol, connector("compute-3")) is False
    assert read_record(site.client, "loc-migrate") is None
    wait_for("host 3's target removed", lambda: iqn_ not in site.h3.iqns())


# -- several writers at once --------------------------------------------------------


def test_concurrent_attaches_and_detaches_from_two_clients_count_right(site: Site) -> None:
    """Two drivers (two clients, as two cinder-volume services) attach one
    volume for four initiators on two hosts at once, then detach them at
    once: the record counts each, each host's ACL is exactly its own."""
    vol = site.volume("loc-race")
    other = local_driver(site.sheep.gateways)
    plan = [(site.driver, connector("compute-2", 1)), (other, connector("compute-2", 2)),
            (site.driver, connector("compute-3", 1)), (other, connector("compute-3", 2))]
    errors: list[BaseException] = []

    def each(call: Any) -> None:
        def run(drv: SheepdogDriver, conn: Connector) -> None:
            try:
                call(drv, conn)
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=run, args=pair) for pair in plan]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors

    try:
        each(lambda drv, conn: drv.initialize_connection(vol, conn))
        rec = read_record(site.client, "loc-race")
        assert rec is not None and rec.hosts == {
            "compute-2": {iqn("compute-2", 1): 1, iqn("compute-2", 2): 1},
            "compute-3": {iqn("compute-3", 1): 1, iqn("compute-3", 2): 1}}
        for host in (site.h2, site.h3):
            target = host.targets().find(rec.iqn)
            assert target is not None
            assert set(target.acls) == {iqn(host.name, 1), iqn(host.name, 2)}
        each(lambda drv, conn: drv.terminate_connection(vol, conn))
        assert read_record(site.client, "loc-race") is None
        wait_for("both targets removed",
                 lambda: rec.iqn not in site.h2.iqns() | site.h3.iqns())
    finally:
        other.close()


def test_the_short_lock_breaks_an_expired_holder_and_waits_for_a_live_one(
        site: Site) -> None:
    site.volume("loc-lock")
    key = "sheepdog-backend.test.lock"
    dead = json.dumps({"owner": "gone:1", "token": "t0", "expires": time.time() - 1})
    site.client.set_attr("loc-lock", key, dead.encode(), exclusive=True)
    with clusterlock.held(site.client, "loc-lock", key, wait=5.0):  # breaks it
        live = site.client.get_attr("loc-lock", key)
        assert live is not None and json.loads(live)["token"] != "t0"
        with pytest.raises(ExportLockTimeout):
            with clusterlock.held(site.client, "loc-lock", key, wait=0.5):
                pass
        assert site.client.get_attr("loc-lock", key) == live  # the holder kept it
    assert site.client.get_attr("loc-lock", key) is None


# -- bad input -------------------------------------------------------------------------


def test_bad_hosts_and_a_bad_mode_are_refused_and_change_nothing(site: Site) -> None:
    vol = site.volume("loc-bad")
    for host in ("compute-9", "bad host", ""):  # never registered; cannot be a name
        with pytest.raises(ExportHostUnknown):
            site.driver.initialize_connection(vol, Connector(host=host, initiator=iqn("x")))
    bad = local_driver(site.sheep.gateways, sheepdog_export_mode="locale")
    try:
        with pytest.raises(ConfigError, match="sheepdog_export_mode"):
            bad.initialize_connection(vol, connector("compute-2"))
    finally:
        bad.close()
    assert read_record(site.client, "loc-bad") is None
    assert "loc-bad" not in hosts.index(site.client, "compute-2").exports
    assert hosts.index(site.client, "compute-9").gen == 0


def test_the_agent_refuses_a_gateway_tgt_cannot_use(site: Site, tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text("[DEFAULT]\nenabled_backends = sd\n\n[sd]\nsheepdog_gateways = "
                    + ",".join(site.sheep.gateways) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sheepdog_backend", "--config-file", str(conf), "agent",
         "--host", "compute-7", "--portal", "127.0.0.7:3260", "--gateway",
         "127.0.0.7:17000"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "9999" in proc.stderr, proc.stderr
    with pytest.raises(ExportHostUnknown):
        hosts.registration(site.client, "compute-7")


def test_the_cli_exports_on_a_compute_host(site: Site, tmp_path: Path) -> None:
    site.volume("loc-cli")
    conf = tmp_path / "cli.conf"
    conf.write_text("[DEFAULT]\nenabled_backends = sd\n\n[sd]\nsheepdog_gateways = "
                    + ",".join(site.sheep.gateways) + "\nsheepdog_export_mode = local\n"
                    "sheepdog_export_chap_key = test-key-not-secret\n")

    def cli(*args: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, "-m", "sheepdog_backend", "--config-file",
                               str(conf), "--json", "export", *args], capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    info = cli("create", "loc-cli", "--host", "compute-3", "--initiator", iqn("compute-3"))
    assert portal_of(info) == site.h3.portal
    assert _acl(site.h3, info["data"]["target_iqn"]) == (iqn("compute-3"),)
    done = cli("delete", "loc-cli", "--host", "compute-3", "--initiator", iqn("compute-3"))
    assert done["removed"] is True and read_record(site.client, "loc-cli") is None
    wait_for("host 3's target removed", lambda: info["data"]["target_iqn"] not in site.h3.iqns())
