"""End to end through Cinder's own VolumeManager, as cinder-volume runs it.

The database is made offline by ``cinder-manage db sync`` (sqlite); the
manager runs in a child process that monkey-patches with eventlet first, as
cinder-volume does, against the embedded server started here (unpatched) and
against a real sheep (skipped when sheep/dog are absent).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sheepdog_backend.server.embedded import EmbeddedServer
from tests.cinder.conftest import CINDER_MISSING
from tests.realsheep import SheepCluster

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")

RUNNER = Path(__file__).with_name("manager_run.py")
ROOT = Path(__file__).resolve().parents[2]


def write_cinder_conf(tmp: Path, gateways: list[str]) -> Path:
    conf = tmp / "cinder.conf"
    conf.write_text(f"""[DEFAULT]
transport_url = fake://
state_path = {tmp / 'state'}
image_conversion_dir = {tmp / 'conversion'}
enabled_backends = sheepdog
host = testhost
[database]
connection = sqlite:///{tmp / 'cinder.sqlite'}
[oslo_messaging_notifications]
driver = noop
[oslo_concurrency]
lock_path = {tmp / 'locks'}
[sheepdog]
volume_driver = sheepdog_backend.cinder.SheepdogCinderDriver
volume_backend_name = sheepdog
sheepdog_gateways = {",".join(gateways)}
""")
    return conf


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT, check=False)


@pytest.fixture(scope="module")
def synced_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database made by ``cinder-manage db sync`` (offline), once per module;
    each test works on a copy."""
    tmp = tmp_path_factory.mktemp("cinder-db")
    conf = tmp / "db.conf"
    conf.write_text(f"[database]\nconnection = sqlite:///{tmp / 'cinder.sqlite'}\n")
    manage = Path(sys.executable).with_name("cinder-manage")
    done = run([str(manage), "--config-file", str(conf), "db", "sync"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp / "cinder.sqlite").stat().st_size > 0
    return tmp / "cinder.sqlite"


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
