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


def _new_disk(target_dev: str, bus: str) -> ET.Element:
    """An empty ``<disk type='network'>`` once the target device and bus are valid."""
    if not _TARGET_DEV.match(target_dev):
        raise InvalidInput(f"target device {target_dev!r} is not like vdb or sda")
    if bus not in ("virtio", "scsi", "ide", "sata", "usb"):
        raise InvalidInput(f"unknown disk bus {bus!r}")
    return ET.Element("disk", {"type": "network", "device": "disk"})


def _finish_disk(disk: ET.Element, target_dev: str, bus: str, serial: str | None,
                 data: Mapping[str, Any]) -> str:
    """Target, serial and read-only flag, then the disk as indented XML text."""
    ET.SubElement(disk, "target", {"dev": target_dev, "bus": bus})
    if serial is not None:
        if _XML_FORBIDDEN.search(serial) or not serial:
            raise InvalidInput(f"serial {serial!r} cannot be rendered in XML")
        ET.SubElement(disk, "serial").text = serial
    if data.get("access_mode") == "ro":
        ET.SubElement(disk, "readonly")
    ET.indent(disk, space="  ")
    return ET.tostring(disk, encoding="unicode")


def libvirt_disk_xml(info: Mapping[str, Any], *, target_dev: str = "vdb",
                     bus: str = "virtio", serial: str | None = None) -> str:
    """``<disk type='network' device='disk'>`` for the connection info."""
    name, host, port, data = _from_info(info)
    if _XML_FORBIDDEN.search(name):
        raise InvalidInput(f"VDI name {name!r} holds characters XML cannot carry")
    disk = _new_disk(target_dev, bus)
    driver_attrs = {"name": "qemu", "type": "raw", "cache": "none"}
    if data.get("discard"):
        driver_attrs["discard"] = "unmap"
    ET.SubElement(disk, "driver", driver_attrs)
    source = ET.SubElement(disk, "source", {"protocol": "sheepdog", "name": name})
    ET.SubElement(source, "host", {"name": host, "port": str(port)})
    return _finish_disk(disk, target_dev, bus, serial, data)


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
    if info.get("driver_volume_type") == ISCSI_VOLUME_TYPE:
        return iscsi_renderings(info)
    name, host, port, _ = _from_info(info)
    return {
        "connection_info": dict(info),
        "libvirt": libvirt_disk_xml(info),
        "qemu": qemu_uri(name, host, port),
        "blockdev": blockdev_options(name, host, port),
    }


# -- iSCSI (a tgt target per volume; sheepdog_backend/export) ----------------

ISCSI_VOLUME_TYPE = "iscsi"
_IQN = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[a-z0-9.:-]+)?|eui\.[0-9a-f]{16})$")
_CHAP_TEXT = re.compile(r"^[\x21-\x7e]{1,255}$")


def _check_iqn(iqn: str) -> str:
    if not isinstance(iqn, str) or not _IQN.match(iqn) or len(iqn) > 223:
        raise InvalidInput(f"{iqn!r} is not an iSCSI qualified name (iqn.YYYY-MM.domain:...)")
    return iqn


def iscsi_connection_info(*, portal: tuple[str, int], iqn: str, lun: int,
                          volume_id: str, chap: tuple[str, str] | None,
                          access_mode: str = "rw") -> dict[str, Any]:
    """os-brick ISCSIConnector / Nova LibvirtISCSIVolumeDriver connection info.
    ``discard`` is False: tgt's Sheepdog store has no UNMAP."""
    host, port = validate_host(portal[0]), validate_port(portal[1])
    _check_iqn(iqn)
    if isinstance(lun, bool) or not isinstance(lun, int) or not 0 <= lun < 1 << 14:
        raise InvalidInput(f"LUN {lun!r} is not 0..16383")
    if access_mode not in ("rw", "ro"):
        raise InvalidInput(f"access_mode must be 'rw' or 'ro', not {access_mode!r}")
    target_portal = format_gateway(host, port)
    data: dict[str, Any] = {
        "target_discovered": False,
        "target_portal": target_portal, "target_iqn": iqn, "target_lun": lun,
        "target_portals": [target_portal], "target_iqns": [iqn], "target_luns": [lun],
        "volume_id": volume_id, "access_mode": access_mode, "discard": False,
        "encrypted": False,
    }
    if chap is not None:
        user, secret = chap
        if not _CHAP_TEXT.match(user) or not _CHAP_TEXT.match(secret):
            raise InvalidInput("CHAP user and secret must be 1-255 printable characters")
        data.update(auth_method="CHAP", auth_username=user, auth_password=secret)
    return {"driver_volume_type": ISCSI_VOLUME_TYPE, "data": data}


def _iscsi_from_info(info: Mapping[str, Any]) -> dict[str, Any]:
    if info.get("driver_volume_type") != ISCSI_VOLUME_TYPE:
        raise InvalidInput(f"not iSCSI connection info: driver_volume_type "
                           f"{info.get('driver_volume_type')!r}")
    data = info.get("data")
    if not isinstance(data, Mapping):
        raise InvalidInput("connection info has no 'data' mapping")
    from sheepdog_backend.driver.addresses import parse_gateway
    try:
        host, port = parse_gateway(str(data["target_portal"]))
        out = dict(data, host=host, port=port, iqn=_check_iqn(str(data["target_iqn"])),
                   lun=int(data["target_lun"]))
    except KeyError as exc:
        raise InvalidInput(f"iSCSI connection info lacks {exc.args[0]!r}") from None
    return out


def iscsi_disk_xml(info: Mapping[str, Any], *, target_dev: str = "vdb",
                   bus: str = "virtio", serial: str | None = None,
                   secret_uuid: str | None = None) -> str:
    """``<disk type='network'><source protocol='iscsi' name='IQN/LUN'>`` with
    ``<auth>`` naming a libvirt secret of usage type iscsi (by ``secret_uuid``,
    or by usage name = the IQN, which the host defines with the CHAP secret)."""
    data = _iscsi_from_info(info)
    disk = _new_disk(target_dev, bus)
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw", "cache": "none"})
    source = ET.SubElement(disk, "source", {"protocol": "iscsi",
                                            "name": f"{data['iqn']}/{data['lun']}"})
    ET.SubElement(source, "host", {"name": data["host"], "port": str(data["port"])})
    if data.get("auth_method") == "CHAP":
        auth = ET.SubElement(source, "auth", {"username": str(data["auth_username"])})
        if secret_uuid is not None:
            if not re.match(r"^[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}$",
                            secret_uuid):
                raise InvalidInput(f"secret uuid {secret_uuid!r} is not a UUID")
            ET.SubElement(auth, "secret", {"type": "iscsi", "uuid": secret_uuid})
        else:
            ET.SubElement(auth, "secret", {"type": "iscsi", "usage": data["iqn"]})
    return _finish_disk(disk, target_dev, bus, serial, data)


def iscsi_uri(info: Mapping[str, Any], *, with_secret: bool = True) -> str:
    """QEMU's ``iscsi://[user%secret@]host:port/IQN/LUN``.  The secret in the
    URI is visible in the process list: prefer the blockdev form on hosts."""
    data = _iscsi_from_info(info)
    auth = ""
    if data.get("auth_method") == "CHAP" and with_secret:
        auth = (f"{quote(str(data['auth_username']), safe='')}%"
                f"{quote(str(data['auth_password']), safe='')}@")
    authority = format_gateway(data["host"], data["port"])
    return f"iscsi://{auth}{authority}/{data['iqn']}/{data['lun']}"


def iscsi_blockdev_options(info: Mapping[str, Any], *,
                           password_secret: str = "sd-chap") -> dict[str, Any]:
    """QEMU ``-blockdev`` options (BlockdevOptionsIscsi); the CHAP secret goes
    in ``-object secret,id=<password_secret>,...``."""
    data = _iscsi_from_info(info)
    options: dict[str, Any] = {
        "driver": "iscsi", "transport": "tcp",
        "portal": format_gateway(data["host"], data["port"]),
        "target": data["iqn"], "lun": data["lun"]}
    if data.get("auth_method") == "CHAP":
        options["user"] = str(data["auth_username"])
        options["password-secret"] = password_secret
    return options


def iscsi_renderings(info: Mapping[str, Any]) -> dict[str, Any]:
    return {"connection_info": dict(info), "libvirt": iscsi_disk_xml(info),
            "qemu": iscsi_uri(info, with_secret=False),
            "blockdev": iscsi_blockdev_options(info)}
