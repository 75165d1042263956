"""``sheepdog-backend check`` as an operator runs it: a line per test as it
finishes, $SHEEPDOG_BACKEND_CONFIG honoured, pytest's own text kept out (a -k
that matches nothing says so in one line), global options before the command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.server.embedded import EmbeddedServer
from sheepdog_backend.testing.backends import write_backend_ini

ONE_TEST = "test_create_and_delete_twice"


@pytest.fixture
def site_ini(tmp_path: Path) -> Iterator[Path]:
    with EmbeddedServer(tmp_path / "sheep") as server:
        yield write_backend_ini(tmp_path / "site.ini", server.gateways, backend="site")


def check(args: list[str], cwd: Path, ini: Path | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "SHEEPDOG_BACKEND_CONFIG")}
    if ini is not None:
        env["SHEEPDOG_BACKEND_CONFIG"] = str(ini)
    return subprocess.run([sys.executable, "-m", "sheepdog_backend", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=240, check=False)


def test_env_config_progress_and_table(site_ini: Path, tmp_path: Path) -> None:
    proc = check(["check", "-k", ONE_TEST], tmp_path, ini=site_ini)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(site_ini) in proc.stdout  # the env's file, not an embedded server
    assert f"[1/1] PASS  {ONE_TEST}" in proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 passed, 0 failed"


def test_no_match_is_one_line_without_pytest_text(site_ini: Path, tmp_path: Path) -> None:
    proc = check(["--config-file", str(site_ini), "check", "-k", "no_such_test_xyz"],
                 tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("sheepdog-backend check: no conformance test matches -k "
                                   "'no_such_test_xyz'"), proc.stderr
    assert "deselected" not in proc.stdout + proc.stderr
    assert "RESULT" not in proc.stdout


def test_ctrl_c_prints_the_finished_tests_and_no_pytest_text(site_ini: Path,
                                                             tmp_path: Path) -> None:
    import signal
    import time

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "SHEEPDOG_BACKEND_CONFIG")}
    proc = subprocess.Popen([sys.executable, "-m", "sheepdog_backend", "check",
                             "--config-file", str(site_ini)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 180
        seen = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("[") and line[1:].lstrip().startswith("1/"):
                break
        assert seen and seen[-1][1:].lstrip().startswith("1/"), seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "interrupted after" in err and "KeyboardInterrupt" not in out + err
    assert out.splitlines()[1].startswith("RESULT") and "\nPASS " in out
