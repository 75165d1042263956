"""A third party's view: a Sheepdog-compatible server is running somewhere, the
user writes an ini file for it, then runs ``sheepdog-backend check`` or
``pytest --pyargs sheepdog_backend.testing`` as separate processes.  Both must
report every test passing and leave the cluster as they found it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.driver.base import Volume
from sheepdog_backend.server.embedded import EmbeddedServer
from sheepdog_backend.testing.backends import (
    driver_from_config,
    leftover_volumes,
    write_backend_ini,
)

TIMEOUT = 240


@pytest.fixture
def backend_ini(tmp_path: Path) -> Iterator[Path]:
    with EmbeddedServer(tmp_path / "sheep", ports=(0, 0)) as server:
        ini = write_backend_ini(tmp_path / "site.ini", server.gateways, backend="site")
        with driver_from_config(ini) as drv:
            drv.create_volume(Volume(id="x", size=1, name="pre-existing"))
            yield ini
            assert leftover_volumes(drv) == ["pre-existing"], "the run leaked or deleted VDIs"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)


def test_check_command_prints_an_all_pass_table(backend_ini: Path, tmp_path: Path) -> None:
    proc = run(["-m", "sheepdog_backend", "check", "--config-file", str(backend_ini),
                "--backend", "site"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    rows = [ln for ln in lines if re.match(r"^(PASS|FAIL|GAP|SKIP) ", ln)]
    assert len(rows) >= 40 and all(r.startswith("PASS ") for r in rows), proc.stdout
    assert lines[-1] == f"{len(rows)} passed, 0 failed"


def test_pytest_pyargs_runs_the_suite_against_the_ini(backend_ini: Path,
                                                      tmp_path: Path) -> None:
    proc = run(["-m", "pytest", "--pyargs", "sheepdog_backend.testing", "-q",
                "-p", "no:cacheprovider", "--sheepdog-config", str(backend_ini)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^\d{2} passed in ", proc.stdout, re.M), proc.stdout
    assert "failed" not in proc.stdout and "error" not in proc.stdout.lower()
