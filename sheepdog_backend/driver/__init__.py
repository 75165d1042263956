"""Volume drivers: the contract (``base``), the Sheepdog driver (``sheepdog``),
the ini/entry-point loader (``loader``), connection-info renderers
(``connection``) and image inspection (``images``)."""

from sheepdog_backend.driver.base import (
    ALL_CAPABILITIES,
    BackendConfiguration,
    Connector,
    Snapshot,
    Volume,
    VolumeDataAccess,
    VolumeDriver,
)

__all__ = ["ALL_CAPABILITIES", "BackendConfiguration", "Connector", "Snapshot", "Volume",
           "VolumeDataAccess", "VolumeDriver"]
