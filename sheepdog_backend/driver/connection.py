"""How a hypervisor reaches a Sheepdog volume.

* ``connection_info``: the dict os-brick's SheepdogConnector and Nova's libvirt
  network-volume driver consumed (``driver_volume_type`` "sheepdog", ``data``
  with ``name``, ``hosts``, ``ports`` as strings, plus Nova's optional
  ``access_mode`` and ``discard``).
* ``libvirt_disk_xml``: a ``<disk type='network'>`` element.  libvirt's QEMU
  driver accepts exactly one ``<host>`` for sheepdog, so the first (healthiest)
  gateway is used.
* ``qemu_uri`` (``sheepdog://host:port/vdi[#tag]``) and ``blockdev_json``
  (QEMU's BlockdevOptionsSheepdog).

Names are validated before they reach any of these: a VDI name is any
non-empty UTF-8 string up to 255 bytes, but XML 1.0 cannot carry control
characters, so those are refused for the XML form.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from sheepdog_backend.driver.addresses import format_gateway, validate_host, validate_port
from sheepdog_backend.exception import InvalidInput
from sheepdog_backend.protocol.naming import validate_name, validate_tag

DRIVER_VOLUME_TYPE = "sheepdog"
# Characters XML 1.0 cannot represent at all (even escaped).
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_TARGET_DEV = re.compile(r"^(vd|sd|hd|xvd)[a-z]{1,3}$")


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise InvalidInput(f"VDI name must be a string, not {type(name).__name__}")
    validate_name(name)
    return name


def _check_gateways(gateways: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    if not gateways:
        raise InvalidInput("at least one gateway is needed to connect to a volume")
    return [(validate_host(host), validate_port(port)) for host, port in gateways]


def connection_info(name: str, gateways: Sequence[tuple[str, int]], *,
                    access_mode: str = "rw", discard: bool = True) -> dict[str, Any]:
    """os-brick/Nova connection info; ``gateways`` healthiest first."""
    _check_name(name)
    if access_mode not in ("rw", "ro"):
        raise InvalidInput(f"access_mode must be 'rw' or 'ro', not {access_mode!r}")
    checked = _check_gateways(gateways)
    return {
        "driver_volume_type": DRIVER_VOLUME_TYPE,
        "data": {
            "name": name,
            "hosts": [host for host, _ in checked],
            "ports": [str(port) for _, port in checked],
            "access_mode": access_mode,
            "discard": bool(discard),
        },
    }


def _from_info(info: Mapping[str, Any]) -> tuple[str, str, int, dict[str, Any]]:
    if info.get("driver_volume_type") != DRIVER_VOLUME_TYPE:
        raise InvalidInput(f"not sheepdog connection info: driver_volume_type "
                           f"{info.get('driver_volume_type')!r}")
    data = info.get("data")
    if not isinstance(data, Mapping):
        raise InvalidInput("connection info has no 'data' mapping")
    hosts, ports = data.get("hosts") or [], data.get("ports") or []
    if not hosts or len(hosts) != len(ports):
        raise InvalidInput("connection info needs as many ports as hosts, at least one")
    return (_check_name(data.get("name", "")), validate_host(hosts[0]),
            validate_port(ports[0]), dict(data))


def libvirt_disk_xml(info: Mapping[str, Any], *, target_dev: str = "vdb",
                     bus: str = "virtio", serial: str | None = None) -> str:
    """``<disk type='network' device='disk'>`` for the connection info."""
    name, host, port, data = _from_info(info)
    if _XML_FORBIDDEN.search(name):
        raise InvalidInput(f"VDI name {name!r} holds characters XML cannot carry")
    if not _TARGET_DEV.match(target_dev):
        raise InvalidInput(f"target device {target_dev!r} is not like vdb or sda")
    if bus not in ("virtio", "scsi", "ide", "sata", "usb"):
        raise InvalidInput(f"unknown disk bus {bus!r}")
    disk = ET.Element("disk", {"type": "network", "device": "disk"})
    driver_attrs = {"name": "qemu", "type": "raw", "cache": "none"}
    if data.get("discard"):
        driver_attrs["discard"] = "unmap"
    ET.SubElement(disk, "driver", driver_attrs)
    source = ET.SubElement(disk, "source", {"protocol": "sheepdog", "name": name})
    ET.SubElement(source, "host", {"name": host, "port": str(port)})
    ET.SubElement(disk, "target", {"dev": target_dev, "bus": bus})
    if serial is not None:
        if _XML_FORBIDDEN.search(serial) or not serial:
            raise InvalidInput(f"serial {serial!r} cannot be rendered in XML")
        ET.SubElement(disk, "serial").text = serial
    if data.get("access_mode") == "ro":
        ET.SubElement(disk, "readonly")
    ET.indent(disk, space="  ")
    return ET.tostring(disk, encoding="unicode")


def qemu_uri(name: str, host: str, port: int, tag: str | None = None) -> str:
    """``sheepdog://host:port/vdi[#tag]``, IPv6 in brackets, name and tag
    percent-encoded (QEMU decodes the path and fragment)."""
    _check_name(name)
    authority = format_gateway(validate_host(host), validate_port(port))
    uri = f"sheepdog://{authority}/{quote(name, safe='')}"
    if tag:
        validate_tag(tag)
        uri += "#" + quote(tag, safe="")
    return uri


def blockdev_options(name: str, host: str, port: int,
                     tag: str | None = None) -> dict[str, Any]:
    """QEMU ``-blockdev`` options for the sheepdog driver."""
    _check_name(name)
    options: dict[str, Any] = {
        "driver": "sheepdog",
        "server": {"type": "inet", "host": validate_host(host),
                   "port": str(validate_port(port))},
        "vdi": name,
    }
    if tag:
        validate_tag(tag)
        options["tag"] = tag
    return options


def blockdev_json(name: str, host: str, port: int, tag: str | None = None) -> str:
    return json.dumps(blockdev_options(name, host, port, tag), sort_keys=False)


def renderings(info: Mapping[str, Any]) -> dict[str, Any]:
    """Every form for one connection info (used by the CLI and the demo)."""
    name, host, port, _ = _from_info(info)
    return {
        "connection_info": dict(info),
        "libvirt": libvirt_disk_xml(info),
        "qemu": qemu_uri(name, host, port),
        "blockdev": blockdev_options(name, host, port),
    }
