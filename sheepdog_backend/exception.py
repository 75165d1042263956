"""The sheepdog-backend exception hierarchy.

Every Sheepdog result code (sheepdog-protocol.md §4) maps to exactly one
``ServerError`` subclass that carries the code as ``code``.  The client raises
``error_for_code(code)`` for a non-SUCCESS reply; the embedded server raises the
same classes and turns them back into codes with ``exc.code``.  An unknown code
gives ``UnknownServerError`` holding the number.
"""

from __future__ import annotations

from typing import ClassVar

from sheepdog_backend.protocol.constants import Result, result_message


class SheepdogError(Exception):
    """Root of every error raised by sheepdog-backend."""


# --------------------------------------------------------------------------
# Protocol and transport
# --------------------------------------------------------------------------


class ProtocolError(SheepdogError):
    """Bytes that are not a valid Sheepdog message.

    Likely cause: a peer that does not speak Sheepdog 1.0, a desynchronised
    stream, or a hostile length field.  ``remote`` is True when the bad bytes
    came from the network peer, False when we were asked to encode bad values.
    """

    def __init__(self, message: str, *, remote: bool = True) -> None:
        super().__init__(message)
        self.remote = remote


class MessageTooLarge(ProtocolError):
    """A frame announced a payload larger than the configured cap.

    Likely cause: garbage on the connection or a client asking for more than
    any legitimate Sheepdog request needs (the largest is a whole inode).
    """


class InvalidPayload(ProtocolError, ValueError):
    """A payload has the wrong size or layout for its message, e.g. a
    GET_VDI_INFO name field that is neither 256 nor 512 bytes.

    Also a ValueError, so callers written against the older ValueError
    contract of ``decode_lookup_payload`` keep working.
    """


class TransportError(SheepdogError):
    """The connection to a gateway failed; the outcome of an in-flight request
    is unknown.

    Likely cause: the sheep daemon is down, restarting, or unreachable.
    """


class ConnectTimeout(TransportError):
    """Could not connect to the gateway in time (host down or filtered)."""


class ReadTimeout(TransportError):
    """The gateway accepted the request but did not answer in time."""


class DeadlineExceeded(ReadTimeout):
    """The call's total deadline (the retry deadline) passed while it was still
    sending or waiting; whatever was in flight is abandoned.

    Likely cause: a gateway that answers too slowly, or a garbage reply that
    would make the call send an unbounded number of requests.
    """


class ConnectionClosed(TransportError):
    """The peer closed the connection (sheep restarted or was killed)."""


class NoGatewayAvailable(TransportError):
    """Every configured gateway is marked unhealthy or failed to connect."""


class RetryExhausted(SheepdogError):
    """A retried operation ran out of attempts or time; ``last_error`` says why."""

    def __init__(self, message: str, last_error: BaseException | None) -> None:
        super().__init__(message)
        self.last_error = last_error


# --------------------------------------------------------------------------
# Server result codes
# --------------------------------------------------------------------------


class ServerError(SheepdogError):
    """A Sheepdog node answered with a non-SUCCESS result code."""

    code: int = Result.UNKNOWN  # class attribute; UnknownServerError sets it per instance
    transient: ClassVar[bool] = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or result_message(self.code))

    @property
    def result(self) -> int:
        return self.code


class ServerUnavailable(ServerError):
    """The cluster is in a state that refuses work for now (transient)."""

    transient = True


_REGISTRY: dict[int, type[ServerError]] = {}


def _register(cls: type[ServerError]) -> type[ServerError]:
    if cls.code in _REGISTRY:
        raise RuntimeError(f"result code {cls.code:#x} mapped twice")
    _REGISTRY[cls.code] = cls
    return cls


@_register
class UnknownError(ServerError):
    """Generic failure on the node (0x01)."""

    code = Result.UNKNOWN


@_register
class NoObject(ServerError):
    """The object does not exist (0x02). Likely cause: a stale inode copy."""

    code = Result.NO_OBJ


@_register
class ServerIOError(ServerError):
    """Disk I/O error on a node (0x03); the node may leave the cluster."""

    code = Result.EIO
    transient = True


@_register
class VdiExists(ServerError):
    """A VDI (or attribute with EXCL) of that name already exists (0x04)."""

    code = Result.VDI_EXIST


@_register
class InvalidParameters(ServerError):
    """The node rejected the request as malformed or obsolete (0x05)."""

    code = Result.INVALID_PARMS


@_register
class SystemError_(ServerError):
    """Internal failure on the node (0x06), e.g. too few zones for EC."""

    code = Result.SYSTEM_ERROR


@_register
class VdiLocked(ServerError):
    """The VDI is locked by another user (0x07); USE_LOCK clusters only."""

    code = Result.VDI_LOCKED
    transient = True


@_register
class NoVdi(ServerError):
    """No VDI of that name (or name and snapshot) exists (0x08)."""

    code = Result.NO_VDI


@_register
class NoBaseVdi(ServerError):
    """No base VDI (0x09); not produced by 1.0."""

    code = Result.NO_BASE_VDI


@_register
class VdiReadError(ServerError):
    """Failed to read the VDI (0x0a); not produced by 1.0."""

    code = Result.VDI_READ


@_register
class VdiWriteError(ServerError):
    """The node could not write the new inode (0x0b)."""

    code = Result.VDI_WRITE
    transient = True


@_register
class BaseVdiReadError(ServerError):
    """The node could not read the base inode of a clone/snapshot (0x0c)."""

    code = Result.BASE_VDI_READ


@_register
class BaseVdiWriteError(ServerError):
    """The node could not update the base inode (0x0d)."""

    code = Result.BASE_VDI_WRITE
    transient = True


@_register
class NoTag(ServerError):
    """The VDI exists but has no snapshot with that tag or id (0x0e)."""

    code = Result.NO_TAG


@_register
class Startup(ServerUnavailable):
    """The node is still booting (0x0f)."""

    code = Result.STARTUP


@_register
class VdiNotLocked(ServerError):
    """The VDI is not locked (0x10); not produced by 1.0."""

    code = Result.VDI_NOT_LOCKED


@_register
class Shutdown(ServerUnavailable):
    """The node is shutting down (0x11); another gateway may serve."""

    code = Result.SHUTDOWN


@_register
class NoMemory(ServerError):
    """The node ran out of memory (0x12)."""

    code = Result.NO_MEM
    transient = True


@_register
class FullVdi(ServerError):
    """The 24-bit VDI id space (or attribute probe) is exhausted (0x13)."""

    code = Result.FULL_VDI


@_register
class VersionMismatch(ServerError):
    """The node refused the header's proto_ver (0x14). Client bug."""

    code = Result.VER_MISMATCH


@_register
class NoSpace(ServerError):
    """A node's disk is full (0x15); free space before retrying."""

    code = Result.NO_SPACE


@_register
class WaitForFormat(ServerUnavailable):
    """The cluster was never formatted (0x16): run `dog cluster format`."""

    code = Result.WAIT_FOR_FORMAT


@_register
class WaitForJoin(ServerUnavailable):
    """The cluster waits for the nodes of its last epoch to rejoin (0x17)."""

    code = Result.WAIT_FOR_JOIN


@_register
class JoinFailed(ServerError):
    """The node failed to join the cluster (0x18)."""

    code = Result.JOIN_FAILED


@_register
class Halt(ServerUnavailable):
    """I/O halted: not enough living nodes or zones for the copies (0x19)."""

    code = Result.HALT


@_register
class ReadOnly(ServerError):
    """Write to a data object of a snapshot (0x1a). The VDI was snapshotted:
    re-resolve the name and write to the new working VDI."""

    code = Result.READONLY


@_register
class InodeInvalidated(ServerError):
    """Another node modified the inode (0x1d); re-read it and retry."""

    code = Result.INODE_INVALIDATED


@_register
class OldNodeVersion(ServerError):
    """Peer request with an old epoch (0x81)."""

    code = Result.OLD_NODE_VER
    transient = True


@_register
class NewNodeVersion(ServerError):
    """Peer request with a newer epoch (0x82)."""

    code = Result.NEW_NODE_VER
    transient = True


@_register
class NotFormatted(ServerError):
    """Internal: cluster not formatted (0x83)."""

    code = Result.NOT_FORMATTED


@_register
class InvalidCtime(ServerError):
    """A joining node's cluster creation time differs (0x84)."""

    code = Result.INVALID_CTIME


@_register
class InvalidEpoch(ServerError):
    """Internal: invalid epoch (0x85)."""

    code = Result.INVALID_EPOCH


@_register
class NetworkError(ServerError):
    """Communication between sheep daemons failed (0x86)."""

    code = Result.NETWORK_ERROR
    transient = True


@_register
class NoCache(ServerError):
    """Obsolete object-cache error (0x87)."""

    code = Result.NO_CACHE


@_register
class BufferSmall(ServerError):
    """The response buffer offered was too small (0x88); ask with more."""

    code = Result.BUFFER_SMALL


@_register
class ForceRecoverRefused(ServerError):
    """FORCE_RECOVER is not allowed now (0x89)."""

    code = Result.FORCE_RECOVER


@_register
class NoStore(ServerError):
    """MAKE_FS named an unknown store driver (0x8a)."""

    code = Result.NO_STORE


@_register
class NoSupport(ServerError):
    """The store driver lacks the operation (0x8b)."""

    code = Result.NO_SUPPORT


@_register
class NodeInRecovery(ServerError):
    """The node is recovering (0x8c)."""

    code = Result.NODE_IN_RECOVERY
    transient = True


@_register
class Killed(ServerUnavailable):
    """The node was killed (0x8d); use another gateway."""

    code = Result.KILLED


@_register
class OidExists(ServerError):
    """Internal: object id exists (0x8e)."""

    code = Result.OID_EXIST


@_register
class Again(ServerError):
    """The node asks to try again (0x8f)."""

    code = Result.AGAIN
    transient = True


@_register
class StaleObject(ServerError):
    """Internal: the object may be stale (0x90)."""

    code = Result.STALE_OBJ


@_register
class ClusterError(ServerError):
    """The cluster driver failed and dropped a cluster operation (0x91)."""

    code = Result.CLUSTER_ERROR
    transient = True


@_register
class VdiNotEmpty(ServerError):
    """VDI not empty (0x92); not produced by 1.0."""

    code = Result.VDI_NOT_EMPTY


@_register
class NotFound(ServerError):
    """Internal B-tree search failure (0x93)."""

    code = Result.NOT_FOUND


@_register
class Incomplete(ServerError):
    """HTTP/kv object upload incomplete (0x94)."""

    code = Result.INCOMPLETE


@_register
class CollectingClusterInfo(ServerError):
    """The node is still collecting lock state after joining (0x95)."""

    code = Result.COLLECTING_CINFO
    transient = True


@_register
class GatewayMode(ServerError):
    """The node is gateway-only (0x97)."""

    code = Result.GATEWAY_MODE


@_register
class InvalidVnodesStrategy(ServerError):
    """SET_VNODES while AUTO_VNODES is on (0x98)."""

    code = Result.INVALID_VNODES_STRATEGY


@_register
class NoCheckpointEntry(ServerError):
    """Internal: no checkpoint entry (0x99)."""

    code = Result.NO_CHECKPOINT_ENTRY


class UnknownServerError(ServerError):
    """A result code this library does not know; ``code`` holds the number."""

    def __init__(self, code: int, message: str | None = None) -> None:
        # Set before the base __init__, which formats the message from it.
        self.code = code
        super().__init__(message or f"unknown Sheepdog result code {code:#x}")


def error_class_for_code(code: int) -> type[ServerError] | None:
    """The registered class for a result code, or None if unknown."""
    return _REGISTRY.get(code)


def error_for_code(code: int, message: str | None = None) -> ServerError:
    """Build the exception for a non-SUCCESS result code."""
    if code == Result.SUCCESS:
        raise ValueError("SUCCESS is not an error")
    cls = _REGISTRY.get(code)
    if cls is None:
        return UnknownServerError(code, message)
    return cls(message)


def registered_codes() -> dict[int, type[ServerError]]:
    return dict(_REGISTRY)


# --------------------------------------------------------------------------
# Client / driver level
# --------------------------------------------------------------------------


class InvalidInput(SheepdogError, ValueError):
    """A name, size, address, URL or option value is not acceptable."""


class HyperVolumeUnsupported(InvalidInput):
    """An operation a hyper volume (B-tree index) cannot have: Sheepdog 1.0
    cannot snapshot it, so no snapshot, clone from it, or revert either."""


class ConfigError(SheepdogError):
    """The configuration file or an option in it is invalid."""


class ReconcileConflict(SheepdogError):
    """An operation whose reply was lost left a state that differs from the
    one requested (e.g. a VDI of that name exists with another size)."""


class SnapshotInDoubt(ReconcileConflict):
    """A snapshot whose reply was lost exists, but its volume has no working
    VDI visible: the node that answered the snapshot most likely died while it
    made the new working VDI, which reappears when that node rejoins the
    cluster.  Do not recreate the volume; wait for the node, or revert the
    volume to the snapshot (nothing in it is lost)."""


class VolumeNotFound(SheepdogError):
    """The volume (VDI) does not exist."""


class SnapshotNotFound(SheepdogError):
    """The snapshot does not exist."""


class VolumeIsBusy(SheepdogError):
    """The volume cannot be changed now, e.g. it still has snapshots."""


class LeaseTimeout(VolumeIsBusy):
    """Another process kept the volume's lease (client/lease.py) for longer
    than this one waits (``sheepdog_lease_wait``).

    Likely cause: a long operation on the volume elsewhere (an image import),
    or a holder that keeps renewing it; a dead holder's lease is taken over
    once it expires.  The message names the holder and its operation."""


class LeaseLost(VolumeIsBusy):
    """An operation stopped before its next step because its volume lease ran
    out: nothing more was sent, and another process may have taken the
    volume over (and finished or undone the steps already made).

    Likely cause: this process was paused (SIGSTOP, a suspended VM, a long
    garbage collection) or could not renew the lease for
    ``sheepdog_lease_duration`` seconds.  Repeat the operation."""


class InvalidBackingImage(SheepdogError, ValueError):
    """A backing/clone source is not a Sheepdog snapshot of this cluster, or
    an image file is unsafe (backing file, data file, unknown format)."""


class DataDirBusy(SheepdogError):
    """The embedded server's data directory is in use by another server or
    check (its lock is held)."""


class DriverLoadError(SheepdogError):
    """A volume driver could not be found or loaded."""


# --------------------------------------------------------------------------
# Export (iSCSI targets through tgt; sheepdog_backend/export)
# --------------------------------------------------------------------------


class ExportError(SheepdogError):
    """A volume could not be exported, checked or unexported."""


class TargetCommandFailed(ExportError):
    """The target admin tool (tgtadm) failed; ``returncode`` and ``stderr``
    hold what it said."""

    def __init__(self, message: str, *, returncode: int = -1, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class TargetBusy(TargetCommandFailed):
    """tgtd refuses to remove or re-create a logical unit that still has I/O
    in flight (e.g. stuck retrying a dead gateway)."""


class GatewayUnusable(ExportError):
    """No gateway the target daemon can use: wrong port width, IPv6, or dead."""


class ExportedVolumeBusy(VolumeIsBusy):
    """The operation is refused while the volume is exported (unless forced)."""


class ForeignCluster(ConfigError):
    """A configured gateway belongs to another Sheepdog cluster than the others
    (its cluster creation time differs); client/identity.py."""


# --------------------------------------------------------------------------
# Local exports (issue 26: targets on the compute host; export/local.py, agent/)
# --------------------------------------------------------------------------


class ExportHostUnknown(ExportError, InvalidInput):
    """The connector names a host no agent registered on the cluster (a typo,
    or ``sheepdog-backend agent --host NAME`` never ran there), or a host
    name that cannot be one.  Nothing was recorded."""


class ExportAgentError(ExportError):
    """A compute host's agent did not make or drop a target; ``host`` names it."""

    def __init__(self, message: str, *, host: str) -> None:
        super().__init__(message)
        self.host = host


class ExportAgentTimeout(ExportAgentError):
    """The host's agent did not acknowledge within sheepdog_export_agent_timeout
    (agent stopped, host down, cluster unreachable from it)."""


class ExportAgentFailed(ExportAgentError):
    """The host's agent acknowledged but could not make the target (its
    gateway or tgtd refused); the message holds what it reported."""


class ExportModeMismatch(ExportError):
    """The volume is exported in the other export mode (central vs local):
    detach it in the mode that exported it first."""


class ExportElsewhere(ExportError):
    """The volume's central export lives on another host's tgtd (its record
    names that tgtd's portal, ``portal``): tgtadm reaches only this host's
    tgtd, so nothing was changed here.  Act on it from a process on that host,
    or use the local export mode, where any process can attach and detach."""

    def __init__(self, message: str, *, portal: str) -> None:
        super().__init__(message)
        self.portal = portal


class ExportLockTimeout(ExportError):
    """A short lock on the cluster (export/clusterlock.py) stayed held by
    another process for longer than the caller may wait."""
