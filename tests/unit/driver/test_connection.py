"""Connection info, libvirt XML (validated by libvirt's own RelaxNG schema),
QEMU URIs and blockdev JSON."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from sheepdog_backend.driver import connection
from sheepdog_backend.exception import InvalidInput

DOMAIN_RNG = pathlib.Path("/usr/share/libvirt/schemas/domain.rng")
GATEWAYS = [("127.0.0.1", 7001), ("::1", 7002)]


def test_connection_info_shape() -> None:
    info = connection.connection_info("vol-1", GATEWAYS)
    assert info == {"driver_volume_type": "sheepdog",
                    "data": {"name": "vol-1", "hosts": ["127.0.0.1", "::1"],
                             "ports": ["7001", "7002"], "access_mode": "rw",
                             "discard": True}}


@pytest.mark.parametrize("name", ["", "a" * 256, "bad\0name"])
def test_connection_info_refuses_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        connection.connection_info(name, GATEWAYS)


def test_connection_info_needs_gateways() -> None:
    with pytest.raises(InvalidInput):
        connection.connection_info("v", [])
    with pytest.raises(InvalidInput):
        connection.connection_info("v", [("127.0.0.1", 0)])


def test_libvirt_xml_one_host_and_escaped_name() -> None:
    name = "a<b>&'\"c"
    xml = connection.libvirt_disk_xml(connection.connection_info(name, GATEWAYS))
    disk = ET.fromstring(xml)
    assert disk.tag == "disk" and disk.get("type") == "network"
    source = disk.find("source")
    assert source is not None and source.get("protocol") == "sheepdog"
    assert source.get("name") == name  # survives the escaping round trip
    hosts = source.findall("host")
    assert [(h.get("name"), h.get("port")) for h in hosts] == [("127.0.0.1", "7001")]
    assert "<b>" not in xml
    driver = disk.find("driver")
    assert driver is not None and driver.get("discard") == "unmap"


def test_libvirt_xml_refuses_control_characters() -> None:
    with pytest.raises(InvalidInput):
        connection.libvirt_disk_xml(connection.connection_info("a\x01b", GATEWAYS))
    with pytest.raises(InvalidInput):
        connection.libvirt_disk_xml({"driver_volume_type": "rbd", "data": {}})


def _domain(disk_xml: str) -> str:
    return (f"<domain type='qemu'><name>t</name><memory unit='KiB'>131072</memory>"
            f"<os><type arch='x86_64'>hvm</type></os><devices>{disk_xml}</devices></domain>")


@pytest.mark.parametrize("name,gateways,ro", [
    ("volume-1", GATEWAYS, False),
    ("we<i>rd & 'name'", [("::1", 7000)], True),
    ("\u00e9t\u00e9", [("node1.example.org", 7000)], False),
])
def test_libvirt_xml_validates_against_libvirt_schema(tmp_path: pathlib.Path, name: str,
                                                      gateways: list[tuple[str, int]],
                                                      ro: bool) -> None:
    xmllint = shutil.which("xmllint")
    if xmllint is None or not DOMAIN_RNG.exists():
        print("SKIP reason: xmllint (libxml2-utils) or libvirt's domain.rng (libvirt0) "
              "is not installed")
        pytest.skip("xmllint or /usr/share/libvirt/schemas/domain.rng missing: install "
                    "libxml2-utils and libvirt0")
    info = connection.connection_info(name, gateways, access_mode="ro" if ro else "rw")
    doc = tmp_path / "domain.xml"
    doc.write_text(_domain(connection.libvirt_disk_xml(info, serial="s-1")))
    proc = subprocess.run([xmllint, "--noout", "--relaxng", str(DOMAIN_RNG), str(doc)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # and a broken disk is refused by the same check (the check can fail)
    doc.write_text(_domain("<disk type='network' device='disk'><source protocol='sheepdog'/>"
                           "<target dev='vdb'/></disk>"))
    proc = subprocess.run([xmllint, "--noout", "--relaxng", str(DOMAIN_RNG), str(doc)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0


@pytest.mark.parametrize("args,uri", [
    (("vol", "127.0.0.1", 7000), "sheepdog://127.0.0.1:7000/vol"),
    (("vol", "::1", 7001, "snap1"), "sheepdog://[::1]:7001/vol#snap1"),
    (("a b/c#d", "node1", 7000, "t#1"), "sheepdog://node1:7000/a%20b%2Fc%23d#t%231"),
])
def test_qemu_uri(args: tuple[object, ...], uri: str) -> None:
    assert connection.qemu_uri(*args) == uri  # type: ignore[arg-type]


def test_qemu_uri_refuses_bad_input() -> None:
    with pytest.raises(InvalidInput):
        connection.qemu_uri("", "127.0.0.1", 7000)
    with pytest.raises(InvalidInput):
        connection.qemu_uri("v", "not a host", 7000)
    with pytest.raises(InvalidInput):
        connection.qemu_uri("v", "127.0.0.1", 70000)


def test_blockdev_json() -> None:
    doc = json.loads(connection.blockdev_json("vol", "::1", 7000, "s"))
    assert doc == {"driver": "sheepdog",
                   "server": {"type": "inet", "host": "::1", "port": "7000"},
                   "vdi": "vol", "tag": "s"}
    assert "tag" not in connection.blockdev_options("vol", "127.0.0.1", 7000)


def test_renderings_use_the_first_gateway() -> None:
    forms = connection.renderings(connection.connection_info("v", GATEWAYS))
    assert forms["qemu"] == "sheepdog://127.0.0.1:7001/v"
    assert forms["blockdev"]["server"]["port"] == "7001"
