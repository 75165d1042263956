"""iSCSI connection info (os-brick's form), libvirt XML validated by libvirt's
own RelaxNG schema, QEMU iscsi:// URI and blockdev options."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from sheepdog_backend.driver import connection
from sheepdog_backend.exception import InvalidInput

DOMAIN_RNG = pathlib.Path("/usr/share/libvirt/schemas/domain.rng")
IQN = "iqn.2010-10.org.openstack:volume-1"


def info(**kw: object) -> dict[str, object]:
    args: dict[str, object] = {"portal": ("127.0.0.1", 3260), "iqn": IQN, "lun": 1,
                               "volume_id": "1", "chap": ("sduser", "s3cretsecret")}
    args.update(kw)
    return connection.iscsi_connection_info(**args)  # type: ignore[arg-type]


def test_os_brick_shape() -> None:
    got = info()
    assert got["driver_volume_type"] == "iscsi"
    data = got["data"]
    assert data["target_portal"] == "127.0.0.1:3260" and data["target_portals"] == [
        "127.0.0.1:3260"]
    assert (data["target_iqn"], data["target_lun"]) == (IQN, 1)
    assert data["target_iqns"] == [IQN] and data["target_luns"] == [1]
    assert (data["auth_method"], data["auth_username"], data["auth_password"]) == (
        "CHAP", "sduser", "s3cretsecret")
    assert data["discard"] is False and data["volume_id"] == "1"
    assert "auth_method" not in info(chap=None)["data"]
    assert info(portal=("::1", 3261))["data"]["target_portal"] == "[::1]:3261"


@pytest.mark.parametrize("kw", [{"iqn": "not-an-iqn"}, {"lun": -1}, {"lun": True},
                                {"portal": ("127.0.0.1", 0)}, {"access_mode": "rx"},
                                {"chap": ("user", "has space")}, {"iqn": "IQN.2010-10.x:y"}])
def test_bad_input_refused(kw: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        info(**kw)


def test_uri_and_blockdev() -> None:
    assert connection.iscsi_uri(info()) == f"iscsi://sduser%s3cretsecret@127.0.0.1:3260/{IQN}/1"
    assert connection.iscsi_uri(info(), with_secret=False) == f"iscsi://127.0.0.1:3260/{IQN}/1"
    assert connection.iscsi_blockdev_options(info()) == {
        "driver": "iscsi", "transport": "tcp", "portal": "127.0.0.1:3260", "target": IQN,
        "lun": 1, "user": "sduser", "password-secret": "sd-chap"}
    forms = connection.renderings(info())
    assert set(forms) == {"connection_info", "libvirt", "qemu", "blockdev"}
    assert "s3cretsecret" not in forms["qemu"] and "s3cretsecret" not in forms["libvirt"]


def test_xml_names_iqn_lun_and_secret() -> None:
    xml = connection.iscsi_disk_xml(info(access_mode="ro"), secret_uuid=
                                    "3e3fce45-4f53-4fa7-bb32-11f34168b82b")
    assert f"protocol=\"iscsi\" name=\"{IQN}/1\"" in xml
    assert "<auth username=\"sduser\">" in xml and "uuid=\"3e3fce45" in xml
    assert "<readonly" in xml and "discard" not in xml
    with pytest.raises(InvalidInput):
        connection.iscsi_disk_xml(info(), secret_uuid="nope")
    with pytest.raises(InvalidInput):
        connection.iscsi_disk_xml({"driver_volume_type": "iscsi", "data": {}})


def _domain(disk_xml: str) -> str:
    return (f"<domain type='qemu'><name>t</name><memory unit='KiB'>131072</memory>"
            f"<os><type arch='x86_64'>hvm</type></os><devices>{disk_xml}</devices></domain>")


@pytest.mark.parametrize("kw,secret", [({}, None), ({"access_mode": "ro"},
                                        "3e3fce45-4f53-4fa7-bb32-11f34168b82b"),
                                       ({"chap": None, "portal": ("::1", 3260)}, None)])
def test_xml_validates_against_libvirt_schema(tmp_path: pathlib.Path, kw: dict[str, object],
                                              secret: str | None) -> None:
    xmllint = shutil.which("xmllint")
    if xmllint is None or not DOMAIN_RNG.exists():
        print("SKIP reason: xmllint (libxml2-utils) or libvirt's domain.rng (libvirt0) "
              "is not installed")
        pytest.skip("xmllint or /usr/share/libvirt/schemas/domain.rng missing")
    doc = tmp_path / "domain.xml"
    doc.write_text(_domain(connection.iscsi_disk_xml(info(**kw), serial="s-1",
                                                     secret_uuid=secret)))
    proc = subprocess.run([xmllint, "--noout", "--relaxng", str(DOMAIN_RNG), str(doc)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    doc.write_text(_domain("<disk type='network' device='disk'><source protocol='iscsi'>"
                           "<auth/></source><target dev='vdb'/></disk>"))
    proc = subprocess.run([xmllint, "--noout", "--relaxng", str(DOMAIN_RNG), str(doc)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
