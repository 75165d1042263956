"""Central exports from processes on two hosts (two cinder-volume services of
one cluster, or a CLI on another host): each host has its own tgtd, and
tgtadm reaches only its own, so the export record names the portal of the
tgtd that holds the target.  A process behind another portal refuses, with
ExportElsewhere and before changing anything, what it could not carry out
there (a detach, a second attach, an extend, a removal); ``ensure`` and
``sync`` leave that export to its host.  Hosts are private tgtds on
127.0.0.1 and 127.0.0.2 (tests/tgtd.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.driver import attach
from sheepdog_backend.driver.base import BackendConfiguration, Connector, GiB, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import ExportElsewhere
from sheepdog_backend.export import Tgtadm, TgtTargets
from sheepdog_backend.export.manager import read_record
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.realsheep import free_port
from tests.tgtd import TgtDaemon

FIRST = Connector(host="compute-1", ip="127.0.0.1", initiator="iqn.1993-08.org.debian:01:c1")
SECOND = Connector(host="compute-2", ip="127.0.0.1", initiator="iqn.1993-08.org.debian:01:c2")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[SheepdogDriver, TgtDaemon, SheepdogDriver,
                                            TgtDaemon]]:
    """(driver, tgtd) of host 1 and of host 2, on one cluster."""
    server = EmbeddedServer(tmp_path / "sheep", ports=[free_port()])  # tgt: port <= 9999
    server.start()
    drivers: list[SheepdogDriver] = []
    try:
        with TgtDaemon(tmp_path / "tgtd-1") as one, \
                TgtDaemon(tmp_path / "tgtd-2", host="127.0.0.2") as two:
            for daemon in (one, two):
                drivers.append(SheepdogDriver(BackendConfiguration({
                    "sheepdog_gateways": server.gateways, "sheepdog_attach_protocol": "iscsi",
                    "target_ip_address": daemon.host, "target_port": daemon.portal_port,
                    "sheepdog_tgt_control_port": daemon.control_port,
                    "sheepdog_export_chap_key": "test-key-not-secret"}), backend_name="sd"))
            yield drivers[0], one, drivers[1], two
    finally:
        for drv in drivers:
            drv.close()
        server.stop()


def acls(daemon: TgtDaemon) -> dict[str, list[str]]:
    """Every target of ``daemon`` and its ACL."""
    return {t.iqn: sorted(t.acls)
            for t in TgtTargets(Tgtadm(control_port=daemon.control_port)).targets()}


def test_another_hosts_export_is_refused_and_left_alone(
        hosts: tuple[SheepdogDriver, TgtDaemon, SheepdogDriver, TgtDaemon]) -> None:
    one, tgtd_one, two, tgtd_two = hosts
    vol = Volume(id="v", size=1, name="vol-portal")
    one.create_volume(vol)
    iqn = one.initialize_connection(vol, FIRST)["data"]["target_iqn"]
    rec = read_record(one.client, "vol-portal")
    assert rec is not None and rec.portal == tgtd_one.portal
    exported = {iqn: [FIRST.initiator]}
    assert acls(tgtd_one) == exported

    refusals = {
        "detach": lambda: two.terminate_connection(vol, FIRST),
        "second attach": lambda: two.initialize_connection(vol, SECOND),
        "extend": lambda: two.extend_volume(vol, 2),
        "removal": lambda: two.remove_export(vol, force=True),
    }
    for what, call in refusals.items():
        with pytest.raises(ExportElsewhere, match=tgtd_one.portal) as caught:
            call()
        assert caught.value.portal == tgtd_one.portal, what
        # nothing changed: the record, host 1's target and ACL, the size
        assert read_record(one.client, "vol-portal") == rec, what
        assert acls(tgtd_one) == exported and acls(tgtd_two) == {}, what
        assert one.client.find_vdi("vol-portal").size == GiB, what  # type: ignore[union-attr]
    # host 2's restart re-exports only its own; its sync drops nothing of host 1's
    assert two.ensure_export(vol) == {}
    assert attach.manager(two.core).sync() == {"ensured": [], "removed": [], "failed": []}
    assert attach.manager(two.core).check("vol-portal")["problems"] == [
        f"exported through the tgtd behind portal {tgtd_one.portal}, not this host's "
        f"({tgtd_two.portal}): check it there"]
    assert acls(tgtd_one) == exported and acls(tgtd_two) == {}

    # host 1 ends it; then host 2 exports it on its own tgtd
    assert one.terminate_connection(vol, FIRST) is False
    assert acls(tgtd_one) == {} and read_record(one.client, "vol-portal") is None
    two.initialize_connection(vol, SECOND)
    assert acls(tgtd_two) == {iqn: [SECOND.initiator]}
    two.extend_volume(vol, 2)  # its own export: the LU is re-created at the new size
    assert two.client.find_vdi("vol-portal").size == 2 * GiB  # type: ignore[union-attr]
    assert two.terminate_connection(vol, SECOND) is False
    assert acls(tgtd_two) == {}
    one.delete_volume(vol)
