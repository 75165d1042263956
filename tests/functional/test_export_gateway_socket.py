"""tgt's LUs through the local gateway's unix socket
(sheepdog_export_gateway_socket, the agent's --gateway-socket), end to end on
a real Sheepdog 1.0 sheep: a ``sheepdog-backend gateway`` process listening
on a port and a unix socket at once, a private tgtd, and QEMU 7.2 (qemu-io
over libiscsi, CHAP) as the guest.  A volume exported through the socket
shows ``unix:PATH:VDI`` in ``tgtadm --op show`` and keeps the guest's
bytes; an export made over TCP is re-pointed to the socket when the option
is switched on and back when it is off; a socket nothing answers on changes
nothing; a LU on a socket that died is not dropped (tgtd would hang).  Every
process is stopped by its own handle whatever happens; loopback only.
Skips, saying why, without sheep/dog, tgt or a qemu-io with iSCSI."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.driver import attach
from sheepdog_backend.driver.base import Connector
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import GatewayUnusable, TargetBusy
from sheepdog_backend.export.manager import read_record
from tests.compute_hosts import ComputeHost, wait_for
from tests.functional.test_export_local import local_driver
from tests.functional.test_export_tgt import HOST_IQN, make_driver, volume
from tests.iscsi_tools import qemu_io, qemu_io_path
from tests.realsheep import SheepCluster, require

MiB, BLOCK = 1 << 20, 64 << 10
CONNECTOR = Connector(host="test-host", ip="127.0.0.1", initiator=HOST_IQN)


@dataclass
class Site:
    sheep: SheepCluster
    client: SheepdogClient  # straight to the sheep, not through the gateway
    host: ComputeHost  # this host: its tgtd and its gateway (port and socket)
    sock_dir: Path

    @property
    def socket(self) -> str:
        assert self.host.gateway_socket is not None
        return self.host.gateway_socket

    def driver(self, gateway_socket: str | None = None) -> SheepdogDriver:
        """A driver whose requests and LUs go through this host's gateway, its
        LUs through ``gateway_socket`` when given."""
        extra: dict[str, object] = {"sheepdog_export_gateway": self.host.gateway}
        if gateway_socket is not None:
            extra["sheepdog_export_gateway_socket"] = gateway_socket
        drv = make_driver([self.host.gateway], self.host.tgtd, **extra)
        drv.do_setup()
        return drv

    def show(self) -> str:
        """What ``tgtadm --op show`` says about this host's tgtd."""
        done = subprocess.run([require("tgtadm"), "--lld", "iscsi", "-C",
                               str(self.host.tgtd.control_port), "--mode", "target",
                               "--op", "show"], capture_output=True, text=True, timeout=30,
                              check=True)
        return done.stdout

    def backing(self, iqn: str) -> str | None:
        target = self.host.targets().find(iqn)
        lu = target.lun(1) if target is not None else None
        return lu.backing if lu is not None else None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require("sheep")
    qemu_io_path()  # skips without qemu-io (iSCSI) and libiscsi-bin
    tmp = tmp_path_factory.mktemp("gateway-socket")
    sock_dir = Path(tempfile.mkdtemp(prefix="sdsock-"))  # short: a socket path <= 107 bytes
    try:
        with SheepCluster(tmp / "sheep", nodes=1) as sheep, \
                SheepdogClient(sheep.gateways) as client:
            host = ComputeHost("central", "127.0.0.1", tmp, sheep.gateways,
                               gateway_socket=str(sock_dir / "gw.sock"))
            try:
                host.tgtd.start()
                host.start_gateway()  # --port and --unix at once
                yield Site(sheep, client, host, sock_dir)
            finally:
                host.stop()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def ok(proc: subprocess.CompletedProcess[str], writes: int = 0, reads: int = 0,
       size: int = BLOCK) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "failed" not in out.lower(), out
    assert out.count(f"wrote {size}/{size}") == writes, out
    assert out.count(f"read {size}/{size}") == reads, out


def test_a_volume_exported_through_the_socket_keeps_the_guests_bytes(site: Site) -> None:
    drv = site.driver(site.socket)
    try:
        vol = volume("sock-main")
        drv.create_volume(vol)
        info = drv.initialize_connection(vol, CONNECTOR)
        assert f"Backing store path: unix:{site.socket}:sock-main\n" in site.show()
        rec = read_record(site.client, "sock-main")
        assert rec is not None and rec.gateway == site.host.gateway  # named by HOST:PORT
        assert attach.manager(drv.core).check("sock-main")["problems"] == []
        ok(qemu_io(info, f"write -P 0x5a {MiB} {BLOCK}", f"read -P 0x5a {MiB} {BLOCK}",
                   initiator=HOST_IQN), writes=1, reads=1)
        assert site.client.read("sock-main", MiB, BLOCK) == b"\x5a" * BLOCK
        assert drv.terminate_connection(vol, CONNECTOR) is False
        assert site.host.targets().find(info["data"]["target_iqn"]) is None
    finally:
        drv.close()


def test_switching_the_socket_on_and_off_re_points_an_exported_volume(site: Site) -> None:
    over_tcp, through_socket = site.driver(), site.driver(site.socket)
    try:
        vol = volume("sock-switch")
        over_tcp.create_volume(vol)
        info = over_tcp.initialize_connection(vol, CONNECTOR)
        iqn = info["data"]["target_iqn"]
        assert site.backing(iqn) == f"tcp:{site.host.gateway}:sock-switch"
        ok(qemu_io(info, f"write -P 0x11 0 {BLOCK}", initiator=HOST_IQN), writes=1)
        # the option switched on: the next ensure re-makes the LU through the socket
        through_socket.ensure_export(vol)
        assert f"Backing store path: unix:{site.socket}:sock-switch\n" in site.show()
        ok(qemu_io(info, f"read -P 0x11 0 {BLOCK}", f"write -P 0x22 {MiB} {BLOCK}",
                   initiator=HOST_IQN), writes=1, reads=1)
        assert site.client.read("sock-switch", MiB, BLOCK) == b"\x22" * BLOCK
        # and off again: back to TCP, the bytes still there
        over_tcp.ensure_export(vol)
        assert site.backing(iqn) == f"tcp:{site.host.gateway}:sock-switch"
        ok(qemu_io(info, f"read -P 0x11 0 {BLOCK}", f"read -P 0x22 {MiB} {BLOCK}",
                   initiator=HOST_IQN), reads=2)
        assert over_tcp.terminate_connection(vol, CONNECTOR) is False
    finally:
        over_tcp.close()
        through_socket.close()


def test_a_socket_nothing_answers_on_changes_nothing(site: Site) -> None:
    absent = str(site.sock_dir / "absent.sock")
    over_tcp, dead = site.driver(), site.driver(absent)
    try:
        fresh, exported = volume("sock-absent"), volume("sock-kept")
        dead.create_volume(fresh)
        with pytest.raises(GatewayUnusable) as caught:
            dead.initialize_connection(fresh, CONNECTOR)
        assert type(caught.value) is GatewayUnusable
        assert absent in str(caught.value) and f"--unix {absent}" in str(caught.value)
        assert read_record(site.client, "sock-absent") is None
        assert "sock-absent" not in site.show()
        # an export over TCP is not re-pointed to it: LU and record as they were
        dead.create_volume(exported)
        info = over_tcp.initialize_connection(exported, CONNECTOR)
        before = read_record(site.client, "sock-kept")
        with pytest.raises(GatewayUnusable, match=absent):
            dead.ensure_export(exported)
        assert site.backing(info["data"]["target_iqn"]) == \
            f"tcp:{site.host.gateway}:sock-kept"
        assert read_record(site.client, "sock-kept") == before
        assert over_tcp.terminate_connection(exported, CONNECTOR) is False
    finally:
        over_tcp.close()
        dead.close()


def test_a_lu_on_a_socket_that_died_is_not_dropped(site: Site, tmp_path: Path) -> None:
    """Another gateway process, on a unix socket only, serves a LU and dies:
    switching the option off must not delete that LU (tgtd would retry its
    RELEASE on the dead socket forever and answer nobody)."""
    other = str(site.sock_dir / "other.sock")
    argv = [sys.executable, "-m", "sheepdog_backend", "gateway", "--unix", other]
    for node in site.sheep.gateways:
        argv += ["--cluster", node]
    with open(tmp_path / "other-gateway.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    through_other, over_tcp = site.driver(other), site.driver()
    iqn = None
    try:
        wait_for("the other gateway's socket", Path(other).exists, timeout=20)
        vol = volume("sock-dies")
        through_other.create_volume(vol)
        iqn = through_other.initialize_connection(vol, CONNECTOR)["data"]["target_iqn"]
        assert site.backing(iqn) == f"unix:{other}:sock-dies"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        with pytest.raises(TargetBusy, match=other):
            over_tcp.ensure_export(vol)
        assert site.backing(iqn) == f"unix:{other}:sock-dies"  # kept, tgtd still answers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        through_other.close()
        over_tcp.close()
        if iqn is not None:  # a LU on a dead socket: only a fresh tgtd is rid of it
            site.host.tgtd.restart()


def test_the_agent_makes_its_lus_through_its_gateways_socket(
        site: Site, tmp_path: Path) -> None:
    host = ComputeHost("compute-s", "127.0.0.2", tmp_path, site.sheep.gateways,
                       gateway_socket=str(site.sock_dir / "agent.sock"))
    driver = local_driver(site.sheep.gateways)
    connector = Connector(host="compute-s", ip=None, initiator=HOST_IQN)
    try:
        host.start(site.client)  # tgtd, gateway (port and socket), agent --gateway-socket
        vol = volume("sock-agent")
        driver.create_volume(vol)
        info = driver.initialize_connection(vol, connector)
        iqn = info["data"]["target_iqn"]

        def backing() -> str | None:
            target = host.targets().find(iqn)
            lun = target.lun(1) if target is not None else None
            return lun.backing if lun is not None else None

        assert backing() == f"unix:{host.gateway_socket}:sock-agent"
        ok(qemu_io(info, f"write -P 0x3c 0 {BLOCK}", f"read -P 0x3c 0 {BLOCK}",
                   initiator=HOST_IQN), writes=1, reads=1)
        assert site.client.read("sock-agent", 0, BLOCK) == b"\x3c" * BLOCK
        # the agent restarted without --gateway-socket (the gateway still listens
        # on it) re-makes the LU over TCP in its first pass
        host.kill_agent()
        host.gateway_socket = None
        host.start_agent(site.client)
        wait_for("the LU re-made over TCP",
                 lambda: backing() == f"tcp:{host.gateway}:sock-agent")
        ok(qemu_io(info, f"read -P 0x3c 0 {BLOCK}", initiator=HOST_IQN), reads=1)
        assert driver.terminate_connection(vol, connector) is False
    finally:
        driver.close()
        host.stop()
