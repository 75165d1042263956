"""The volume-driver contract and its models.

A control plane (or the CLI, or the conformance suite) holds ``Volume`` and
``Snapshot`` records and asks a ``VolumeDriver`` to make the storage match them.
Names follow Cinder's so a control plane feels at home; sizes at this level are
GiB, as in Cinder (the client below works in bytes).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from sheepdog_backend import opts
from sheepdog_backend.exception import InvalidInput

GiB = 1 << 30
DEFAULT_VOLUME_NAME_TEMPLATE = "volume-%s"
DEFAULT_SNAPSHOT_NAME_TEMPLATE = "snapshot-%s"

ALL_CAPABILITIES = frozenset({"snapshots", "clone", "extend", "revert", "manage",
                              "backing_images", "image_transfer", "data_access"})


def human(size: int) -> str:
    """A byte count as the unit a user typed: 30 GiB, 4 TiB, 512 MiB."""
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.3f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{size} bytes"


def gib(value: int, what: str = "size") -> int:
    """A positive whole number of GiB, or InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be a whole number of GiB, got {value!r}")
    if value < 1:
        raise InvalidInput(f"{what} must be at least 1 GiB, got {value}")
    return value


@dataclass(frozen=True)
class Volume:
    """A volume as the control plane knows it.

    ``id`` is the control plane's id; ``size`` is in GiB; ``name``, when given,
    is the exact VDI name (the CLI passes it), otherwise the driver derives it
    from its ``volume_name_template`` (``volume-%s`` by default).
    """

    id: str
    size: int
    name: str | None = None

    @property
    def vdi_name(self) -> str:
        """The VDI name under the default template."""
        return self.vdi_name_for(DEFAULT_VOLUME_NAME_TEMPLATE)

    def vdi_name_for(self, template: str) -> str:
        return self.name if self.name else template % self.id


@dataclass(frozen=True)
class Snapshot:
    """A snapshot of ``volume``; its tag is ``name`` or ``snapshot_name_template``
    (``snapshot-%s`` by default) applied to ``id``."""

    id: str
    volume: Volume
    name: str | None = None

    @property
    def tag(self) -> str:
        """The snapshot tag under the default template."""
        return self.tag_for(DEFAULT_SNAPSHOT_NAME_TEMPLATE)

    def tag_for(self, template: str) -> str:
        return self.name if self.name else template % self.id


@dataclass(frozen=True)
class Connector:
    """The host that attaches a volume (os-brick's connector properties)."""

    host: str
    ip: str | None = None
    initiator: str | None = None
    multipath: bool = False


class BackendConfiguration(Mapping[str, Any]):
    """The option values of one backend, read-only.

    Every option of ``opts.BACKEND_OPTS`` is present (at its default unless
    given); a driver's extra options appear when the loader registered them.
    Values are reached as attributes (``conf.sheepdog_store_port``, as in Cinder)
    or as a mapping.  The loader builds it from an ini section; tests and
    embedders may build it from a dict.
    """

    def __init__(self, values: Mapping[str, Any] | None = None, *,
                 config_file: str | None = None, section: str | None = None) -> None:
        merged = opts.default_values()
        merged.update(values or {})
        object.__setattr__(self, "_values", merged)
        object.__setattr__(self, "config_file", config_file)
        object.__setattr__(self, "section", section)

    config_file: str | None
    section: str | None
    _values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no option {name!r} in this backend configuration") \
                from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("BackendConfiguration is read-only")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def where(self, option: str) -> str:
        """``file [section] option`` for error messages."""
        place = f"[{self.section}] {option}" if self.section else option
        return f"{self.config_file}: {place}" if self.config_file else place

    def __repr__(self) -> str:
        return f"BackendConfiguration({self._values!r}, section={self.section!r})"


class VolumeDataAccess(Protocol):
    """Byte-level access to a volume's contents, for tests and the demo."""

    def read(self, volume: Volume, offset: int, length: int) -> bytes: ...

    def write(self, volume: Volume, offset: int, data: bytes) -> None: ...

    def exists(self, volume: Volume) -> bool: ...

    def snapshot_exists(self, snapshot: Snapshot) -> bool: ...

    def size_bytes(self, volume: Volume) -> int: ...


class VolumeDriver(abc.ABC):
    """What every volume driver guarantees.

    Errors are the ``sheepdog_backend.exception`` classes: ``VolumeNotFound``,
    ``SnapshotNotFound``, ``VolumeIsBusy``, ``InvalidBackingImage``,
    ``InvalidInput`` (and transport/server errors when the storage fails).  A
    method that raises for bad input changes nothing.  Creating what already
    exists with identical attributes succeeds (that reconciles an operation
    whose reply was lost); with different attributes it fails clearly.
    """

    VERSION: ClassVar[str] = "0.0.0"
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, configuration: BackendConfiguration, *, backend_name: str) -> None:
        self.configuration = configuration
        self.backend_name = backend_name

    @staticmethod
    def get_driver_options() -> list[Any]:
        """Extra oslo.config options this driver reads from its backend section
        (beyond ``opts.BACKEND_OPTS``); the loader registers them."""
        return []

    # -- lifecycle -------------------------------------------------------

    @abc.abstractmethod
    def do_setup(self) -> None:
        """Prepare to serve (open connections, read configuration). Must not
        fail only because the storage is down: ``check_for_setup_error`` says
        that."""

    @abc.abstractmethod
    def check_for_setup_error(self) -> None:
        """Raise with the reason when the backend cannot serve (storage
        unreachable, not formatted, bad configuration); return when it can."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and threads. Idempotent."""

    # -- volumes ---------------------------------------------------------

    @abc.abstractmethod
    def create_volume(self, volume: Volume, *, backing: str | None = None) -> dict[str, Any]:
        """Create an empty (thin) volume of ``volume.size`` GiB, or, with
        ``backing``, a copy-on-write clone of that snapshot reference grown to
        the size.  A backing reference that is not a snapshot of this cluster
        raises ``InvalidBackingImage`` before anything is created.  Returns a
        model update (may be empty)."""

    @abc.abstractmethod
    def delete_volume(self, volume: Volume) -> None:
        """Delete the volume. Succeeds when it is already gone. A volume that
        still has snapshots raises ``VolumeIsBusy`` and is left intact."""

    @abc.abstractmethod
    def extend_volume(self, volume: Volume, new_size: int) -> None:
        """Grow to ``new_size`` GiB, keeping the data. Shrinking raises
        ``InvalidInput``; a missing volume ``VolumeNotFound``."""

    # -- snapshots and clones -------------------------------------------

    @abc.abstractmethod
    def create_snapshot(self, snapshot: Snapshot) -> dict[str, Any]:
        """Freeze the volume's current contents under the snapshot's tag; later
        writes to the volume do not change the snapshot."""

    @abc.abstractmethod
    def delete_snapshot(self, snapshot: Snapshot) -> None:
        """Delete the snapshot. Succeeds when it (or its volume) is already gone.
        Clones made from it keep their data."""

    @abc.abstractmethod
    def create_volume_from_snapshot(self, volume: Volume,
                                    snapshot: Snapshot) -> dict[str, Any]:
        """New volume with the snapshot's contents, grown to ``volume.size``
        GiB. A size smaller than the snapshot raises ``InvalidInput``; a
        missing snapshot ``SnapshotNotFound``."""

    @abc.abstractmethod
    def create_cloned_volume(self, volume: Volume, src_vref: Volume) -> dict[str, Any]:
        """New volume with ``src_vref``'s current contents. Leaves no temporary
        snapshot behind, whatever happens."""

    @abc.abstractmethod
    def revert_to_snapshot(self, volume: Volume, snapshot: Snapshot) -> None:
        """Make the volume's contents those of the snapshot. The snapshot is
        kept."""

    # -- attachment ------------------------------------------------------

    @abc.abstractmethod
    def initialize_connection(self, volume: Volume, connector: Connector) -> dict[str, Any]:
        """Connection info for os-brick / Nova:
        ``{"driver_volume_type": ..., "data": {...}}``."""

    @abc.abstractmethod
    def terminate_connection(self, volume: Volume, connector: Connector | None) -> bool:
        """Forget one attachment (``connector`` None: a forced detach). Never
        fails because it is already gone. True while other attachments still
        share the volume's connection (Cinder then keeps the export)."""

    # Exports: a driver that must set something up on the storage side before
    # a host can attach (e.g. an iSCSI target) does it here; Sheepdog's native
    # protocol needs nothing, so by default these do nothing.
    def create_export(self, volume: Volume,
                      connector: Connector | None) -> dict[str, Any]:
        """Make ``volume`` reachable for ``connector``; returns a model update."""
        return {}

    def ensure_export(self, volume: Volume) -> dict[str, Any]:
        """Re-create an export after a restart; returns a model update."""
        return {}

    def remove_export(self, volume: Volume) -> None:  # noqa: B027 - optional hook
        """Undo ``create_export``. Never fails because it is already gone."""

    # -- stats -----------------------------------------------------------

    @abc.abstractmethod
    def get_volume_stats(self, refresh: bool = False) -> dict[str, Any]:
        """Capacity and capabilities in Cinder's keys; cached unless
        ``refresh``."""

    # -- images ----------------------------------------------------------

    @abc.abstractmethod
    def copy_image_to_volume(self, volume: Volume, image_path: str) -> None:
        """Write an image file into the volume. The file is inspected first:
        an unsafe or unsupported image raises ``InvalidBackingImage`` and the
        volume is not written."""

    @abc.abstractmethod
    def copy_volume_to_image(self, volume: Volume, image_path: str) -> None:
        """Write the volume's contents to a raw image file."""

    # -- manage ----------------------------------------------------------

    @abc.abstractmethod
    def manage_existing(self, volume: Volume, existing_ref: dict[str, Any]) -> dict[str, Any]:
        """Adopt the VDI ``existing_ref["source-name"]`` as ``volume`` (renaming
        is impossible in Sheepdog, so the model update records the VDI name)."""

    @abc.abstractmethod
    def manage_existing_get_size(self, volume: Volume, existing_ref: dict[str, Any]) -> int:
        """Size in GiB (rounded up) of the VDI to adopt."""

    @abc.abstractmethod
    def unmanage(self, volume: Volume) -> None:
        """Stop managing the volume; its VDI and data stay."""

    @abc.abstractmethod
    def get_manageable_volumes(self) -> list[dict[str, Any]]:
        """Every working VDI with Cinder's keys: reference, size, safe_to_manage,
        reason_not_safe, cinder_id, extra_info."""

    # -- tests -----------------------------------------------------------

    def data_access(self) -> VolumeDataAccess:
        """Byte access for tests; NotImplementedError when unsupported."""
        raise NotImplementedError(f"{type(self).__name__} offers no data access")
