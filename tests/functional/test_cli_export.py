"""``sheepdog-backend export ...`` and ``connect --protocol iscsi`` end to end
on the embedded server and a private tgtd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sheepdog_backend.cli import main
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.iscsi_tools import qemu_io
from tests.realsheep import free_port
from tests.tgtd import TgtDaemon


@pytest.fixture
def ini(tmp_path: Path) -> Iterator[tuple[str, TgtDaemon]]:
    with TgtDaemon(tmp_path / "tgtd") as tgtd, EmbeddedServer(
            tmp_path / "data", ports=[free_port()]) as srv:
        path = tmp_path / "cli.conf"
        path.write_text(
            "[DEFAULT]\nenabled_backends = main\n[main]\n"
            f"sheepdog_gateways = {srv.gateways[0]}\nsheepdog_retry_attempts = 2\n"
            "sheepdog_retry_deadline = 5\ntarget_ip_address = 127.0.0.1\n"
            f"target_port = {tgtd.portal_port}\nsheepdog_tgt_control_port = {tgtd.control_port}\n"
            "sheepdog_export_chap_key = cli-test-key\n")
        yield str(path), tgtd


def run(capsys: pytest.CaptureFixture[str], ini: str, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--config-file", ini])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_commands(capsys: pytest.CaptureFixture[str],
                         ini: tuple[str, TgtDaemon]) -> None:
    conf, tgtd = ini
    assert run(capsys, conf, "volume", "create", "v1", "--size", "1")[0] == 0
    code, out, err = run(capsys, conf, "export", "create", "v1", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["driver_volume_type"] == "iscsi"
    assert qemu_io(info, "write -P 0x61 0 64k").returncode == 0
    code, out, _ = run(capsys, conf, "export", "list", "--json")
    listed = json.loads(out)
    assert [(e["vdi"], e["problems"]) for e in listed] == [("v1", [])]
    # connect --protocol: the same export, libvirt form; the native form still works
    code, out, err = run(capsys, conf, "connect", "v1", "--protocol", "iscsi",
                         "--format", "libvirt")
    assert code == 0 and "protocol=\"iscsi\"" in out, err
    code, out, _ = run(capsys, conf, "connect", "v1", "--protocol", "sheepdog",
                       "--format", "qemu")
    assert code == 0 and out.strip().startswith("sheepdog://")
    # tgtd restart: check reports it, sync fixes it
    tgtd.restart()
    code, out, _ = run(capsys, conf, "export", "check", "v1", "--json")
    assert json.loads(out)["problems"] == ["no target on tgtd (tgtd restarted?)"]
    code, out, _ = run(capsys, conf, "export", "sync", "--json")
    assert code == 0 and json.loads(out)["ensured"] == [info["data"]["target_iqn"]]
    proc = qemu_io(info, "read -P 0x61 0 64k")
    assert proc.returncode == 0 and "verification failed" not in proc.stdout, proc
    # snapshots of an exported volume are refused (exit 6, busy) until detached
    code, _, err = run(capsys, conf, "snapshot", "create", "v1", "s1")
    assert code == 6 and "exported over iSCSI" in err
    # export create and connect --protocol iscsi made two attachments: one
    # delete ends one, the target stays for the other
    code, out, _ = run(capsys, conf, "export", "delete", "v1")
    assert code == 0 and "1 remain, the target stays" in out
    assert qemu_io(info, "read -P 0x61 0 64k").returncode == 0
    code, out, _ = run(capsys, conf, "export", "delete", "v1")
    assert code == 0 and "removed" in out
    assert qemu_io(info, "read 0 4k").returncode != 0
    assert run(capsys, conf, "snapshot", "create", "v1", "s1")[0] == 0
    code, out, _ = run(capsys, conf, "export", "delete", "v1")
    assert code == 0 and "was not exported" in out


def test_export_of_a_missing_volume_and_a_bad_name(capsys: pytest.CaptureFixture[str],
                                                   ini: tuple[str, TgtDaemon]) -> None:
    conf, tgtd = ini
    code, _, err = run(capsys, conf, "export", "create", "absent")
    assert code == 4, err
    assert run(capsys, conf, "volume", "create", "a:b", "--size", "1")[0] == 0
    code, _, err = run(capsys, conf, "export", "create", "a:b")
    assert code == 5 and "cannot be exported through tgt" in err
    assert run(capsys, conf, "export", "list", "--json")[1].strip() == "[]"


def test_export_delete_ends_one_attachment_per_initiator(
        capsys: pytest.CaptureFixture[str], ini: tuple[str, TgtDaemon]) -> None:
    """The CLI keeps the driver's rule: the record counts each attachment, any
    process sees it, the target goes with the last one (or with --all)."""
    conf, _ = ini
    one, two = "iqn.1993-08.org.debian:01:one", "iqn.1993-08.org.debian:01:two"
    assert run(capsys, conf, "volume", "create", "v2", "--size", "1")[0] == 0
    for initiator in (one, one, two):
        assert run(capsys, conf, "export", "create", "v2", "--initiator", initiator)[0] == 0
    code, out, _ = run(capsys, conf, "export", "check", "v2", "--json")
    assert json.loads(out)["attachments"] == {one: 2, two: 1}
    code, out, _ = run(capsys, conf, "export", "delete", "v2", "--json")  # which one?
    assert code == 0 and json.loads(out)["ended"] is None, out
    assert "name one with --initiator" in json.loads(out)["message"]
    code, out, _ = run(capsys, conf, "export", "delete", "v2", "--initiator",
                       "iqn.1993-08.org.debian:01:stranger", "--json")
    assert code == 0 and json.loads(out)["remaining"] == 3, out
    code, out, _ = run(capsys, conf, "export", "delete", "v2", "--initiator", one, "--json")
    assert json.loads(out)["remaining"] == 2
    code, out, _ = run(capsys, conf, "export", "check", "v2", "--json")
    assert json.loads(out)["attachments"] == {one: 1, two: 1}
    code, out, _ = run(capsys, conf, "export", "delete", "v2", "--all")
    assert code == 0 and "removed" in out
    code, out, _ = run(capsys, conf, "export", "list", "--json")
    assert json.loads(out) == []
