"""The whole driver conformance suite on a real Sheepdog 1.0 node, the way a
third party runs it: an ini file pointing at the node, `sheepdog-backend check`
as a separate process.  Every test must pass and the cluster must be left as
found (a VDI that was there before is still there, nothing else is)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sheepdog_backend.client.lease_records import ANCHOR
from sheepdog_backend.driver.base import Volume
from sheepdog_backend.testing.backends import (
    driver_from_config,
    leftover_volumes,
    write_backend_ini,
)
from tests.realsheep import SheepCluster

TIMEOUT = 600


def test_check_passes_every_conformance_test_on_a_real_node(tmp_path: Path) -> None:
    with SheepCluster(tmp_path / "real", nodes=1) as cluster:
        ini = write_backend_ini(tmp_path / "site.ini", cluster.gateways, backend="site")
        with driver_from_config(ini) as drv:
            drv.create_volume(Volume(id="x", size=1, name="pre-existing"))
        env = dict(os.environ)
        env.pop("PYTEST_ADDOPTS", None)
        proc = subprocess.run(
            [sys.executable, "-m", "sheepdog_backend", "check", "--config-file", str(ini),
             "--backend", "site"], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=TIMEOUT, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        rows = [ln for ln in lines if re.match(r"^(PASS|FAIL|GAP|SKIP) ", ln)]
        assert len(rows) >= 40 and all(r.startswith("PASS ") for r in rows), proc.stdout
        assert lines[-1] == f"{len(rows)} passed, 0 failed"
        with driver_from_config(ini) as drv:
            assert leftover_volumes(drv) == ["pre-existing"], "the run leaked or deleted VDIs"
        # and the real dog agrees: one working VDI (and the driver's leases'
        # VDI, which is not a volume), no snapshot left behind
        listed = cluster.run_dog("vdi", "list", "-r").stdout.splitlines()
        assert [ln.split(" ")[:2] for ln in listed
                if ln.split(" ")[1] != ANCHOR] == [["=", "pre-existing"]]
