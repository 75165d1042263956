"""Live migration and multiattach through Cinder's own API and VolumeManager,
over iSCSI on a real Sheepdog 1.0 sheep, a private tgtd and QEMU 7.2 (issue 25).

One child process (attach_run.py, eventlet-patched as cinder-volume) runs
every scenario on one sheep and one tgtd; this module asserts what it saw.
Skips, saying why, without Cinder, sheep/dog, tgt or qemu-io with iSCSI.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cinder.conftest import CINDER_MISSING, iscsi_lines, run, write_cinder_conf
from tests.iscsi_tools import qemu_io_path
from tests.realsheep import SheepCluster
from tests.tgtd import TgtDaemon

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")

RUNNER = Path(__file__).with_name("attach_run.py")
OBJ, BLOCK = 4 << 20, 64 << 10


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory, synced_db: Path) -> Iterator[
        dict[str, Any]]:
    qemu_io_path()  # skips without qemu-io (iSCSI) and libiscsi-bin
    tmp = tmp_path_factory.mktemp("attach")
    with SheepCluster(tmp / "sheep", nodes=1) as sheep, TgtDaemon(tmp / "tgtd") as tgtd:
        conf = write_cinder_conf(tmp, sheep.gateways, iscsi_lines(tgtd))
        shutil.copyfile(synced_db, tmp / "cinder.sqlite")
        done = run([sys.executable, str(RUNNER), str(conf), str(tgtd.control_port)],
                   timeout=300)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        assert done.returncode == 0 and lines, (done.stdout[-3000:], done.stderr[-5000:])
        yield json.loads(lines[-1][len("RESULT "):])


def ok(output: str, writes: int = 0, reads: int = 0) -> None:
    """qemu-io did every write and read, and every pattern matched."""
    assert "verification failed" not in output and "failed" not in output.lower(), output
    assert output.count(f"wrote {BLOCK}/{BLOCK}") == writes, output
    assert output.count(f"read {BLOCK}/{BLOCK}") == reads, output


def test_stats_offer_multiattach_over_iscsi(outcome: dict[str, Any]) -> None:
    assert outcome["stats"] == {"storage_protocol": "iSCSI", "multiattach": True}


def test_live_migration_keeps_the_destination_attached(outcome: dict[str, Any]) -> None:
    steps = outcome["migration"]
    ok(steps["source_write"], writes=1)
    assert steps["same_target"] is True  # one target (one LU) for both hosts
    ok(steps["dest_open"], reads=1)
    assert steps["both_attached"]["acl"] == [
        "iqn.1993-08.org.debian:01:compute-1", "iqn.1993-08.org.debian:01:compute-2"]
    ok(steps["source_writes"], writes=8)
    ok(steps["dest_writes"], writes=8)
    # Nova deletes the source's attachment: the target stays for the destination
    after = steps["after_source_delete"]
    assert after["target"] and after["record"], after
    assert after["acl"] == ["iqn.1993-08.org.debian:01:compute-2"]
    ok(steps["dest_session_reads"], reads=17)  # every acknowledged write of both
    ok(steps["dest_login_reads"], reads=17)  # and a fresh login
    assert steps["source_login"]["rc"] != 0  # compute-1 is out of the ACL
    # back to compute-1 and rolled back: the new destination's attachment first
    ok(steps["back_writes"], writes=4)
    ok(steps["stay_writes"], writes=4)
    rollback = steps["after_rollback"]
    assert rollback["target"] and rollback["record"], rollback
    assert rollback["acl"] == ["iqn.1993-08.org.debian:01:compute-2"]
    ok(steps["stay_reads"], reads=25)
    assert steps["back_login"]["rc"] != 0
    # the last attachment takes the target and the record with it
    last = steps["after_last"]
    assert (last["target"], last["record"], last["status"]) == (False, False, "available")
    assert steps["last_login"]["rc"] != 0
    assert all(steps["on_cluster"].values()), steps["on_cluster"]


def test_multiattach_instances_share_one_target(outcome: dict[str, Any]) -> None:
    steps = outcome["multiattach"]
    assert steps["multiattach"] is True
    for output in steps["writes"]:
        ok(output, writes=1)
    assert steps["three"]["attachments"] == 3
    # compute-1 keeps its place in the ACL while its second instance is attached
    after_x = steps["after_x"]
    assert after_x["target"] and after_x["acl"] == [
        "iqn.1993-08.org.debian:01:compute-1", "iqn.1993-08.org.debian:01:compute-2"]
    ok(steps["z_reads"], reads=3)
    after_y = steps["after_y"]
    assert after_y["target"] and after_y["acl"] == ["iqn.1993-08.org.debian:01:compute-1"]
    assert steps["y_login"]["rc"] != 0 and steps["z_login"]["rc"] == 0
    assert (steps["after_z"]["target"], steps["after_z"]["record"]) == (False, False)
    # the other order: compute-2's instance goes first
    for output in steps["more_writes"]:
        ok(output, writes=1)
    after_w = steps["after_w"]
    assert after_w["target"] and after_w["acl"] == ["iqn.1993-08.org.debian:01:compute-1"]
    ok(steps["v_reads"], reads=5)
    assert (steps["after_v"]["target"], steps["after_v"]["record"]) == (False, False)
    assert steps["after_v"]["status"] == "available"
    assert all(steps["on_cluster"].values()), steps["on_cluster"]


def test_second_instance_refused_without_multiattach(outcome: dict[str, Any]) -> None:
    assert outcome["refused"] == "InvalidVolume"  # Cinder's own refusal
    held = outcome["refused_state"]
    assert held["target"] and held["attachments"] == 1
    assert held["acl"] == ["iqn.1993-08.org.debian:01:compute-1"]
    gone = outcome["refused_after"]
    assert (gone["target"], gone["record"], gone["status"]) == (False, False, "available")
