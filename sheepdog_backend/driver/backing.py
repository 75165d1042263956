"""Backing references (``sheepdog://...`` of a Glance image) -> a snapshot of
this cluster to clone, or InvalidBackingImage.  Stateless: everything it needs
comes from the ``DriverCore`` it is given."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sheepdog_backend.addresses import format_gateway, parse_gateway, same_endpoint
from sheepdog_backend.driver import images
from sheepdog_backend.driver.core import DriverCore
from sheepdog_backend.exception import InvalidBackingImage, SheepdogError

if TYPE_CHECKING:  # pragma: no cover
    from sheepdog_backend.client import VdiInfo

LOG = logging.getLogger(__name__)


def cluster_endpoints(core: DriverCore) -> list[tuple[str, int]]:
    """Configured gateways plus every node the cluster lists."""
    endpoints = [parse_gateway(g) for g in core.gateways]
    try:
        for node in core.client.node_list():
            endpoints.append((node.nid.addr, node.nid.port))
    except SheepdogError as exc:
        LOG.warning("could not list cluster nodes: %s", exc)
    return endpoints


def resolve_backing(core: DriverCore, backing: str) -> tuple[VdiInfo, str]:
    """(snapshot VdiInfo, tag) for a reference, or InvalidBackingImage."""
    ref = images.parse_backing_reference(backing)
    if ref.host is not None:
        port = ref.port if ref.port is not None else 7000
        if not any(same_endpoint((ref.host, port), ep) for ep in cluster_endpoints(core)):
            raise InvalidBackingImage(
                f"backing image {backing!r} rejected: {format_gateway(ref.host, port)} is "
                f"not a gateway of this cluster ({', '.join(core.gateways)})")
    if ref.latest_snapshot:
        working = core.client.find_vdi(ref.vdi)
        snaps = core.snapshots_of(ref.vdi)
        if working is None and not snaps:
            raise InvalidBackingImage(f"backing image {backing!r} rejected: no VDI "
                                      f"{ref.vdi!r} in this cluster")
        if not snaps:
            raise InvalidBackingImage(
                f"backing image {backing!r} rejected: glance image VDI {ref.vdi!r} is a "
                "working VDI with no snapshot; snapshot it once uploaded (dog vdi "
                "snapshot) to make it a base")
        snap = snaps[-1]
    else:
        found = core.client.find_vdi(ref.vdi, ref.tag, ref.snapid)
        if found is None:
            raise InvalidBackingImage(f"backing image {backing!r} rejected: no snapshot "
                                      f"{ref.describes} in this cluster")
        snap = found
        if not snap.is_snapshot:
            raise InvalidBackingImage(f"backing image {backing!r} rejected: "
                                      f"{ref.describes} is a working VDI, not a snapshot")
    if not snap.tag:
        raise InvalidBackingImage(f"backing image {backing!r} rejected: snapshot id "
                                  f"{snap.snap_id} of {ref.vdi!r} has no tag to clone by")
    return snap, snap.tag
