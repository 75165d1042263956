"""Parsing tgtadm's target listing (text captured from tgt 1.0.85) and the
commands' error mapping."""

from __future__ import annotations

import pytest

from sheepdog_backend.exception import ConfigError
from sheepdog_backend.export.tgt import Tgtadm, backing_path, parse_show

SHOW = """Target 1: iqn.2010-10.org.openstack:vol1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.1993-08.org.debian:01:testhost alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: IET     00010001
            SCSI SN: beaf11
            Size: 67 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: Yes
            SWP: No
            Thin-provisioning: No
            Backing store type: sheepdog
            Backing store path: tcp:127.0.0.1:5497:vol1
            Backing store flags: 
    Account information:
        sd0123456789
    ACL information:
        iqn.1993-08.org.debian:01:testhost
Target 2: iqn.2010-10.org.openstack:vol2
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
    Account information:
    ACL information:
        ALL
"""


def test_parse_show() -> None:
    one, two = parse_show(SHOW)
    assert (one.tid, one.iqn, one.sessions) == (1, "iqn.2010-10.org.openstack:vol1", 1)
    lu = one.lun(1)
    assert lu is not None and lu.backing == "tcp:127.0.0.1:5497:vol1" and lu.readonly
    assert lu.size == 67_000_000
    assert one.accounts == ("sd0123456789",)
    assert one.acls == ("iqn.1993-08.org.debian:01:testhost",)
    assert (two.tid, two.lun(1), two.acls, two.sessions) == (2, None, ("ALL",), 0)
    assert parse_show("") == []


def test_backing_path() -> None:
    assert backing_path("127.0.0.1", 7000, "v") == "tcp:127.0.0.1:7000:v"


def test_tgtadm_options_checked() -> None:
    with pytest.raises(ConfigError):
        Tgtadm(path="")
    with pytest.raises(ConfigError):
        Tgtadm(control_port=70000)


def test_missing_tgtadm_is_a_config_error() -> None:
    adm = Tgtadm(path="/nonexistent/tgtadm")
    with pytest.raises(ConfigError, match="tgtadm not found"):
        adm.run("--mode", "target", "--op", "show")
