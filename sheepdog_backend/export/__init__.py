"""Exporting volumes to hypervisors that have no Sheepdog driver.

One module per target kind (``tgt``: the Linux SCSI target daemon through
tgtadm); ``manager`` keeps export state on the cluster and re-applies it;
``base`` holds names, credentials and records.  ``manager_for`` builds an
ExportManager from a backend's options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sheepdog_backend.exception import ConfigError, InvalidInput
from sheepdog_backend.export.base import (
    ExportRecord,
    Target,
    chap_credentials,
    check_gateway_socket,
    target_iqn,
)
from sheepdog_backend.export.manager import ExportManager, ExportSettings, snapshot_clone_name
from sheepdog_backend.export.tgt import Tgtadm, TgtTargets

if TYPE_CHECKING:
    from sheepdog_backend.client import SheepdogClient

__all__ = [
    "ExportManager",
    "ExportRecord",
    "ExportSettings",
    "Target",
    "TgtTargets",
    "Tgtadm",
    "chap_credentials",
    "manager_for",
    "settings_for",
    "snapshot_clone_name",
    "target_iqn",
    "targets_for",
]


def settings_for(conf: Any) -> ExportSettings:
    """ExportSettings from a backend configuration; ConfigError naming the option."""
    where = getattr(conf, "where", lambda o: o)
    gateway = str(getattr(conf, "sheepdog_export_gateway", "") or "")
    gateway_socket = str(getattr(conf, "sheepdog_export_gateway_socket", "") or "")
    if gateway_socket:
        if not gateway:
            raise ConfigError(
                f"{where('sheepdog_export_gateway_socket')}: set only together with "
                "sheepdog_export_gateway (HOST:PORT of the same local gateway, which the "
                "driver's own requests, the probe and the export records use)")
        try:
            check_gateway_socket(gateway_socket)
        except InvalidInput as exc:
            raise ConfigError(f"{where('sheepdog_export_gateway_socket')}: {exc}") from None
    try:
        return ExportSettings(prefix=str(conf.target_prefix),
                              portal_host=str(conf.target_ip_address),
                              portal_port=int(conf.target_port),
                              chap=bool(conf.use_chap_auth),
                              chap_key=str(conf.sheepdog_export_chap_key or ""),
                              gateway=gateway, gateway_socket=gateway_socket)
    except InvalidInput as exc:
        raise ConfigError(f"{where('target_prefix')}: {exc}") from None


def targets_for(conf: Any) -> TgtTargets:
    """This host's tgtd as the backend's options reach it."""
    if str(conf.target_helper) != "tgtadm":
        raise ConfigError(f"target_helper {conf.target_helper!r} is not supported "
                          "(only 'tgtadm')")
    return TgtTargets(Tgtadm(path=str(conf.sheepdog_tgtadm_path),
                             control_port=int(conf.sheepdog_tgt_control_port),
                             root_helper=str(conf.sheepdog_export_root_helper or "")))


def manager_for(conf: Any, client: SheepdogClient) -> ExportManager:
    return ExportManager(client, targets_for(conf), settings_for(conf))
