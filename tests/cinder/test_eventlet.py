"""The adapter's client works under eventlet's monkey patching (cinder-volume)
and without it: the same concurrent workload in a child process both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sheepdog_backend.server.embedded import EmbeddedServer
from tests.cinder.conftest import CINDER_MISSING

pytestmark = pytest.mark.skipif(bool(CINDER_MISSING), reason=CINDER_MISSING or "-")

RUNNER = Path(__file__).with_name("eventlet_run.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["patched", "plain"])
def test_concurrent_lifecycle(mode: str, embedded_server: EmbeddedServer) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, str(RUNNER), embedded_server.gateways[0], mode],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
                          check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout[-2000:], done.stderr[-4000:])
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["green_socket"] is (mode == "patched")
    assert out["green_lock"] is (mode == "patched")
    assert out["errors"] == [] and out["hung"] == 0
    assert sorted(out["workers"]) == ["0", "1", "2", "3"]
    for n, res in out["workers"].items():
        assert res == {"clone_matches": True, "volume_changed": True, "sha": True}, n
    assert out["image_round_trip"] is True
    assert out["left"] == []
    assert out["dead"] == "VolumeBackendAPIException"
    assert out["dead_seconds"] < 60  # bounded by the retry deadline, generous margin
    assert out["ticks_while_failing"] > 0  # other (green) threads kept running
