"""`sheepdog-backend serve --check/--repair` on a stopped data directory with
planted inconsistencies: each is reported, the repairable ones are fixed, the
data every live VDI holds still reads back, and a served directory is refused."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from sheepdog_backend.cli import main
from sheepdog_backend.client.client import SheepdogClient
from sheepdog_backend.exception import DataDirBusy
from sheepdog_backend.protocol.inode import slot_offset
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.server.check import check_data_dir
from sheepdog_backend.server.embedded import EmbeddedServer
from sheepdog_backend.server.store import oid_name

MIB = 1 << 20


def _obj(data_dir: Path, oid: int) -> Path:
    return data_dir / "obj" / oid_name(oid)


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, bytes, int, int]:
    """A data dir with a live VDI "keep" (2 objects), a deleted VDI "gone",
    and then, planted while stopped: 2 orphans, a stale slot in the deleted
    inode, a stray temp file, a missing object of a second live VDI."""
    data_dir = tmp_path / "sheep"
    payload = os.urandom(2 * 4 * MIB)
    with EmbeddedServer(data_dir) as server:
        with SheepdogClient(server.gateways) as client:
            keep = client.create_vdi("keep", 16 * MIB).vid
            client.write("keep", 0, payload)
            gone = client.create_vdi("gone", 16 * MIB).vid
            client.write("gone", 0, b"\x01" * 4096)
            client.delete_vdi("gone")
            hurt = client.create_vdi("hurt", 16 * MIB).vid
            client.write("hurt", 0, b"\x02" * 4096)
    assert check_data_dir(data_dir).clean
    obj = data_dir / "obj"
    shutil.copy(_obj(data_dir, vid_to_data_oid(keep, 0)), _obj(data_dir, vid_to_data_oid(keep, 9)))
    shutil.copy(_obj(data_dir, vid_to_data_oid(keep, 0)),
                _obj(data_dir, vid_to_data_oid(0x4242, 1)))  # no inode at all
    shutil.copy(_obj(data_dir, vid_to_data_oid(keep, 1)), _obj(data_dir, vid_to_data_oid(gone, 3)))
    with open(_obj(data_dir, vid_to_vdi_oid(gone)), "r+b") as f:
        f.seek(slot_offset(3))
        f.write(struct.pack("<I", gone))
    (obj / ".tmp-0000000000000000-dead").write_bytes(b"torn")
    os.unlink(_obj(data_dir, vid_to_data_oid(hurt, 0)))
    return data_dir, payload, keep, hurt


def test_check_reports_every_planted_problem_and_changes_nothing(
        planted: tuple[Path, bytes, int, int], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, _payload, keep, hurt = planted
    before = sorted(os.listdir(data_dir / "obj"))
    assert main(["serve", "--data-dir", str(data_dir), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"orphan-object {oid_name(vid_to_data_oid(keep, 9))}" in out
    assert f"orphan-object {oid_name(vid_to_data_oid(0x4242, 1))}" in out
    assert "stale-slots" in out and "stray-temp" in out
    assert f"missing-object {oid_name(vid_to_data_oid(hurt, 0))}" in out
    assert "--repair fixes" in out
    assert sorted(os.listdir(data_dir / "obj")) == before


def test_repair_fixes_what_it_can_and_the_data_reads_back(
        planted: tuple[Path, bytes, int, int], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, payload, keep, _hurt = planted
    assert main(["serve", "--data-dir", str(data_dir), "--repair"]) == 1  # missing is left
    out = capsys.readouterr().out
    assert out.count("repaired orphan-object") == 2
    assert "repaired stale-slots" in out and "repaired stray-temp" in out
    assert "found missing-object" in out and "(not repairable)" in out
    report = check_data_dir(data_dir)
    assert [f.kind for f in report.findings] == ["missing-object"]
    assert not _obj(data_dir, vid_to_data_oid(keep, 9)).exists()
    with EmbeddedServer(data_dir) as server, SheepdogClient(server.gateways) as client:
        assert client.read("keep", 0, len(payload)) == payload


def test_a_served_data_dir_is_refused(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "sheep"
    with EmbeddedServer(data_dir):
        with pytest.raises(DataDirBusy):
            check_data_dir(data_dir)
        with pytest.raises(DataDirBusy):
            EmbeddedServer(data_dir).start()
        assert main(["serve", "--data-dir", str(data_dir), "--check"]) == 1
        assert "in use" in capsys.readouterr().err
    assert check_data_dir(data_dir).clean


def test_check_of_a_missing_dir_is_an_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--data-dir", str(tmp_path / "none"), "--check"]) == 2
    assert "no data directory" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
