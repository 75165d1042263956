"""End to end through Cinder's own VolumeManager, as cinder-volume runs it.

The database is made offline by ``cinder-manage db sync`` (sqlite); the
manager runs in a child process that monkey-patches with eventlet first, as
cinder-volume does, against the embedded server started here (unpatched) and
against a real sheep (skipped when sheep/dog are absent).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from sheepdog_backend.server.embedded import EmbeddedServer
from tests.cinder.conftest import CINDER_MISSING, run, write_cinder_conf
from tests.realsheep import SheepCluster

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")

RUNNER = Path(__file__).with_name("manager_run.py")


@pytest.mark.parametrize("storage", ["embedded_server", "real_sheep"])
def test_volume_manager_takes_volumes_through_their_life(
        tmp_path: Path, storage: str, request: pytest.FixtureRequest,
        synced_db: Path) -> None:
    server: EmbeddedServer | SheepCluster = request.getfixturevalue(storage)
    conf = write_cinder_conf(tmp_path, server.gateways)
    shutil.copyfile(synced_db, tmp_path / "cinder.sqlite")

    done = run([sys.executable, str(RUNNER), str(conf)], timeout=300)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout[-2000:], done.stderr[-4000:])
    out = json.loads(lines[-1][len("RESULT "):])

    assert out["monkey_patched"] is True  # the client ran on eventlet's green sockets
    assert out["driver"] == "sheepdog_backend.cinder.driver.SheepdogCinderDriver"
    assert out["initialized"] is True
    assert out["stats"] == {"volume_backend_name": "sheepdog", "storage_protocol": "sheepdog",
                            "driver_version": out["stats"]["driver_version"]}
    steps = out["steps"]
    for key in ("create", "from_snapshot", "from_volume", "extend", "revert"):
        assert steps[key]["status"] == "available", (key, steps[key])
        assert steps[key]["vdi_exists"] is True, key
        assert steps[key]["provider_location"].startswith("volume-"), key
    assert steps["snapshot"]["status"] == "available"
    assert steps["snapshot"]["provider_location"].startswith("snapshot-")
    assert steps["from_snapshot"]["data"] == "first"  # the snapshot's bytes
    assert steps["from_snapshot"]["size"] == 2
    assert steps["from_volume"]["data"] == "later"  # the source's current bytes
    assert steps["extend"]["size"] == 3 and steps["extend"]["size_bytes"] == 3 << 30
    assert steps["revert"]["data"] == "first"
    # a delete refused by VolumeIsBusy leaves the volume available and intact
    assert steps["delete_busy"]["status"] == "available"
    assert steps["delete_busy"]["vdi_exists"] is True
    assert steps["delete_snapshot"]["status"] == "deleted"
    for key in ("delete", "delete_from_snapshot", "delete_from_volume"):
        assert steps[key]["status"] == "deleted" and steps[key]["deleted"] is True, key
        assert steps[key]["vdi_exists"] is False, key
    assert out["left"] == []  # nothing left on the storage
