"""DriverCore: what SheepdogDriver's helper modules share, and nothing more.

How it works: one ``DriverCore`` per backend holds the backend's parsed
configuration (gateways, redundancy), the ``SheepdogClient`` (built on first
use), the stats cache and the per-volume locks, and offers the lookups and
checks every operation needs (names, ``existing``, ``create_checked`` ...).
``SheepdogDriver`` owns one and delegates to the helper modules (``clones``,
``data``, ``manage``, ``revert``, ``backing``, ``stats``), which depend on this
class only: the picture reads top-down (driver -> helpers -> core -> client)
with no import cycle and no reaching into the driver's private members.

Names: ``Volume.name`` / ``Snapshot.name``, when given, are the exact VDI
name / snapshot tag (a control plane that owns its names, such as Cinder,
passes them); otherwise the backend's ``volume_name_template`` /
``snapshot_name_template`` is applied to the id.

Shared state and locks: ``_client_lock`` guards building and closing the
client and the lease manager; the stats cache is a single reference
(replaced, never mutated); ``volume_lock(name)`` hands out one
``threading.RLock`` per VDI name (kept in ``_locks`` under ``_locks_guard``,
dropped when no caller holds them).  Every operation that changes a volume
(create, delete, snapshot, clone - source and target -, extend, revert and
finishing an interrupted one, manage, image import) runs in ``hold(names)``:
the volumes' locks, then their leases on the cluster (client/lease.py, one
``LeaseManager`` per driver), both in name order.  So within one driver, and
across drivers in any number of processes and hosts, operations run one at a
time per volume while different volumes run in parallel; reads and writes of
data take neither (they only take the lock briefly to check for an
interrupted revert, and the lease only to finish one).  When a ``hold`` takes
over the lease of a holder that died, ``recover`` (given by the driver)
finishes or undoes what the record says that holder was doing, before the
operation starts.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from sheepdog_backend.addresses import format_gateway, parse_gateway
from sheepdog_backend.driver.base import BackendConfiguration, GiB, Snapshot, Volume, human
from sheepdog_backend.exception import (
    ConfigError,
    InvalidInput,
    SnapshotNotFound,
    VdiExists,
    VolumeNotFound,
)
from sheepdog_backend.opts import parse_erasure_code
from sheepdog_backend.protocol.naming import check_snapshot_tag, check_volume_name
from sheepdog_backend.protocol.structs import ec_policy

if TYPE_CHECKING:  # the client is imported on first use, not at driver import
    from sheepdog_backend.client import SheepdogClient, VdiInfo
    from sheepdog_backend.client.lease import Held, LeaseManager, LeaseSettings

# what a takeover hands the driver: the core, the volume, the dead holder's record
Recover = Callable[["DriverCore", str, dict[str, Any]], None]
LEASE_OPTIONS = {"duration": "sheepdog_lease_duration",
                 "renew_interval": "sheepdog_lease_renew_interval",
                 "reuse": "sheepdog_lease_reuse", "wait": "sheepdog_lease_wait"}

LOG = logging.getLogger(__name__)


def configured_gateways(conf: BackendConfiguration) -> list[str]:
    raw = list(conf.sheepdog_gateways or [])
    if not raw:
        raw = [format_gateway(conf.sheepdog_store_address, int(conf.sheepdog_store_port))]
    out: list[str] = []
    for item in raw:
        try:
            out.append(format_gateway(*parse_gateway(str(item))))
        except InvalidInput as exc:
            raise ConfigError(f"{conf.where('sheepdog_gateways')}: {exc}") from None
    return out


def redundancy(conf: BackendConfiguration) -> tuple[int, int]:
    """(copies, copy_policy) for new volumes."""
    copies = int(conf.sheepdog_copies or 0)
    code = conf.sheepdog_erasure_code
    if not code:
        return copies, 0
    if copies:
        raise ConfigError(f"{conf.where('sheepdog_erasure_code')}: cannot be combined "
                          f"with sheepdog_copies = {copies}; set one of them")
    try:
        data, parity = parse_erasure_code(str(code))
    except InvalidInput as exc:
        raise ConfigError(f"{conf.where('sheepdog_erasure_code')}: {exc}") from None
    return data + parity, ec_policy(data, parity)


def lease_settings(conf: BackendConfiguration) -> LeaseSettings:
    """The lease options; ConfigError naming the option for a bad value."""
    from sheepdog_backend.client.lease import LeaseSettings

    try:
        return LeaseSettings(**{k: conf[option] for k, option in LEASE_OPTIONS.items()})
    except InvalidInput as exc:
        option = LEASE_OPTIONS.get(getattr(exc, "option", ""), "sheepdog_lease_duration")
        raise ConfigError(f"{conf.where(option)}: {exc}") from None


def require_snapshot(info: VdiInfo | None, name: str, tag: str) -> VdiInfo:
    """``info`` when it is a snapshot (of ``name`` as ``tag``, as looked up),
    else SnapshotNotFound."""
    if info is None or not info.is_snapshot:
        raise SnapshotNotFound(f"snapshot {tag!r} of volume {name!r} does not exist")
    return info


class DriverCore:
    """The narrow interface the driver's helper modules depend on."""

    def __init__(self, configuration: BackendConfiguration, *, backend_name: str,
                 recover: Recover | None = None) -> None:
        self.configuration = configuration
        self.backend_name = backend_name
        self.gateways = configured_gateways(configuration)
        self.copies, self.copy_policy = redundancy(configuration)
        self.lease_settings = lease_settings(configuration)
        self.recover = recover
        self._client: SheepdogClient | None = None
        self._leases: LeaseManager | None = None
        self._client_lock = threading.Lock()
        self.stats: dict[str, Any] | None = None
        self._locks: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()

    # -- client --------------------------------------------------------------

    @property
    def client(self) -> SheepdogClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> SheepdogClient:
        from sheepdog_backend.client import RetryPolicy, SheepdogClient

        conf = self.configuration
        retry = RetryPolicy(attempts=int(conf.sheepdog_retry_attempts),
                            deadline=float(conf.sheepdog_retry_deadline))
        return SheepdogClient(
            self.gateways, connect_timeout=float(conf.sheepdog_connect_timeout),
            request_timeout=float(conf.sheepdog_request_timeout),
            pool_size=int(conf.sheepdog_pool_size), retry=retry,
            io_window=int(conf.sheepdog_io_window))

    @property
    def leases(self) -> LeaseManager:
        """The volume leases of this driver (built with the client)."""
        client = self.client
        with self._client_lock:
            if self._leases is None:
                from sheepdog_backend.client.lease import LeaseManager

                self._leases = LeaseManager(client, self.lease_settings)
            return self._leases

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
            leases, self._leases = self._leases, None
        if leases is not None:
            leases.close()  # releases what this driver holds, while the client works
        if client is not None:
            client.close()

    # -- names ---------------------------------------------------------------

    def vdi_name(self, volume: Volume) -> str:
        """``volume.name`` when given, else ``volume_name_template % id``;
        InvalidInput when it cannot be a VDI name."""
        if not isinstance(volume, Volume):
            raise InvalidInput(f"expected a Volume, got {type(volume).__name__}")
        if not volume.name and not volume.id:
            raise InvalidInput("a volume needs a name or an id")
        name = volume.vdi_name_for(self.configuration.volume_name_template)
        return check_volume_name(name)  # the user alphabet (protocol/naming.py)

    def snapshot_tag(self, snapshot: Snapshot) -> str:
        """``snapshot.name`` when given, else ``snapshot_name_template % id``."""
        if not isinstance(snapshot, Snapshot):
            raise InvalidInput(f"expected a Snapshot, got {type(snapshot).__name__}")
        if not snapshot.name and not snapshot.id:
            raise InvalidInput("a snapshot needs a name or an id")
        tag = snapshot.tag_for(self.configuration.snapshot_name_template)
        return check_snapshot_tag(tag)  # the user alphabet (protocol/naming.py)

    # -- lookups and checks ----------------------------------------------------

    def existing(self, name: str) -> VdiInfo:
        """The working VDI ``name``, or VolumeNotFound."""
        info = self.client.find_vdi(name)
        if info is None:
            raise VolumeNotFound(f"volume {name!r} does not exist")
        return info

    def snapshot_info(self, name: str, tag: str) -> VdiInfo:
        return require_snapshot(self.client.find_vdi(name, tag), name, tag)

    @staticmethod
    def lease_anchor() -> str:
        """The name of the VDI that holds the volume leases (not a volume)."""
        from sheepdog_backend.client.lease_records import ANCHOR

        return ANCHOR

    def list_vdis(self, *, with_usage: bool = False) -> list[VdiInfo]:
        """Every VDI of the cluster but the one that holds the volume leases."""
        anchor = self.lease_anchor()
        return [v for v in self.client.list_vdis(with_usage=with_usage) if v.name != anchor]

    def snapshots_of(self, name: str) -> list[VdiInfo]:
        """Snapshots of ``name``, oldest first (the client reads only the name's
        probe chain, not every inode of the cluster)."""
        return self.client.list_snapshots(name)

    def create_checked(self, name: str, size: int, *, parent_vid: int | None,
                       look: bool = True) -> bool:
        """True when ``name`` already exists as requested (a retried create);
        raises VdiExists when it exists otherwise; False when absent.
        ``look`` False: False without a lookup (the caller sends NEW_VDI next,
        which answers VDI_EXIST when the name is taken)."""
        info = self.client.find_vdi(name) if look else None
        if info is None:
            return False
        if info.size != size:
            raise VdiExists(f"volume {name!r} already exists with {human(info.size)}, not "
                            f"{size // GiB} GiB")
        if parent_vid is not None and info.parent_vid != parent_vid:
            raise VdiExists(f"volume {name!r} already exists and is not a clone of the "
                            "requested snapshot")
        LOG.info("volume %s already exists as requested", name)
        return True

    def invalidate_stats(self) -> None:
        self.stats = None

    # -- per-volume serialisation ----------------------------------------------

    @contextmanager
    def hold(self, *names: str, op: str, details: Mapping[str, str] | None = None
             ) -> Iterator[Held]:
        """The locks and leases of ``names`` for the block (``details``: what
        to finish or undo, per volume, should this process die holding it);
        a dead holder's half-done operation is recovered first."""
        with ExitStack() as stack:
            for name in sorted(set(names)):
                stack.enter_context(self.volume_lock(name))
            held = stack.enter_context(self.leases.hold(names, op, details or {}))
            for name, fields in held.takeovers:
                if self.recover is not None:
                    self.recover(self, name, fields)
            yield held

    @contextmanager
    def volume_lock(self, name: str) -> Iterator[None]:
        """Hold the lock of VDI ``name`` (re-entrant) for the block."""
        with self._locks_guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = threading.RLock()
                self._locks[name] = lock
        with lock:
            yield
