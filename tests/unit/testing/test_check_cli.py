"""``sheepdog-backend check`` end to end on in-memory fakes loaded from an ini
file by dotted path: the table, the closing counts and the exit status."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sheepdog_backend.cli import main
from sheepdog_backend.testing.backends import write_backend_ini

FAKES = "tests.unit.testing"


def ini_for(tmp_path: Path, driver: str, backend: str = "fake") -> str:
    return str(write_backend_ini(tmp_path / "backend.ini", ["127.0.0.1:7000"],
                                 backend=backend, driver=driver))


def rows(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in text.splitlines():
        match = re.match(r"^(PASS|FAIL|GAP|SKIP)\s+(\S+)\s*(.*)$", line)
        if match:
            out[match[2]] = (match[1], match[3])
    return out


def test_correct_driver_passes_with_a_table(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ini = ini_for(tmp_path, f"{FAKES}.fake_driver.FakeDriver")
    assert main(["check", "--config-file", ini]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert len(table) >= 40 and {r[0] for r in table.values()} == {"PASS"}
    assert table["test_revert_to_snapshot"] == ("PASS", "")
    assert re.search(rf"^{len(table)} passed, 0 failed$", out, re.M), out


def test_broken_driver_fails_with_the_reason(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ini = ini_for(tmp_path, f"{FAKES}.broken_drivers.RevertNoop")
    assert main(["check", "--config-file", ini, "-k", "revert or snapshot_and"]) == 1
    out = capsys.readouterr().out
    table = rows(out)
    assert table["test_revert_to_snapshot"][0] == "FAIL"
    assert "at offset 0" in table["test_revert_to_snapshot"][1]
    assert table["test_snapshot_and_delete_twice"] == ("PASS", "")
    assert re.search(r"^1 passed, 1 failed$", out, re.M), out


def test_declared_gap_is_a_gap_not_a_failure(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ini = ini_for(tmp_path, f"{FAKES}.broken_drivers.NoSnapshots")
    assert main(["check", "--config-file", ini, "-k", "snapshot or size_is"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert table["test_snapshot_and_delete_twice"] == (
        "GAP", "declared unsupported: snapshots")
    assert table["test_size_is_exact"] == ("PASS", "")
    assert re.search(r"^1 passed, 0 failed, \d+ gap$", out, re.M), out


def test_missing_config_file_is_a_config_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config-file", str(tmp_path / "nope.ini")]) == 3
    assert "nope.ini" in capsys.readouterr().err


def test_backend_not_enabled_is_a_config_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ini = ini_for(tmp_path, f"{FAKES}.fake_driver.FakeDriver")
    assert main(["check", "--config-file", ini, "--backend", "other"]) == 3
    assert "'other' is not in" in capsys.readouterr().err


def test_no_matching_test_is_a_failure(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    ini = ini_for(tmp_path, f"{FAKES}.fake_driver.FakeDriver")
    assert main(["check", "--config-file", ini, "-k", "no_such_test_anywhere"]) == 1
    assert "no conformance test matches -k" in capsys.readouterr().err


def test_backend_without_config_file_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--backend", "x"]) == 2
    assert "--backend needs --config-file" in capsys.readouterr().err


def test_backend_that_cannot_serve_is_reported_once(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ini = ini_for(tmp_path, f"{FAKES}.broken_drivers.SetupFails")
    assert main(["check", "--config-file", ini]) == 7
    captured = capsys.readouterr()
    assert "cannot serve: ConnectionRefusedError: no gateway" in captured.err
    assert "PASS" not in captured.out and "FAIL" not in captured.out
