"""ExportManager: volumes exported as iSCSI targets, their state on the cluster.

How it works: exporting a volume picks a gateway tgt can use and that answers
(healthiest first), derives the IQN and CHAP credentials, writes an
ExportRecord into the VDI attribute ``RECORD_KEY`` of the exported VDI, then
makes the target match it on tgtd.  Because tgtd forgets everything when it
restarts, the record is the truth: ``ensure`` / ``sync`` re-create missing
targets and move a LU whose gateway stopped answering to a live one.  A LU
through the local gateway goes through its unix socket when
``ExportSettings.gateway_socket`` is set (``unix:PATH:VDI``, checked with
``socket_answers`` before a LU is made there; the record still names the
gateway's HOST:PORT), else over TCP; a LU of the other form is re-made by
the same repair.  A
snapshot is exported through a temporary clone (tgt refuses snapshots as
LUs), read-only, recorded with its source and deleted when unexported.

Attachments share the volume's one target (one LU: tgt caches the inode per
LU, and two LUs of one VDI can lose each other's writes): ``export_volume``
counts one more attachment of its initiator in the record and adds it to the
ACL; ``detach`` ends one, takes the initiator off the ACL when it has none
left, and removes the target and the record with the last attachment.  A live
migration (two hosts) or a multiattach volume (several instances, maybe on
one host) is just more than one attachment.

tgtadm reaches only this host's tgtd, so a record names the portal of the
tgtd that holds its target; a manager behind another portal (another host's
cinder-volume in a cluster, another host's CLI) refuses to change that export
(``ExportElsewhere``, before any change) and ``ensure``/``sync`` leave it to
its host.  Processes on one host share its tgtd and portal: any of them acts.

Shared state: the cluster (records) and tgtd (targets); nothing is cached
here.  Calls for different volumes may run in parallel; calls for the same
volume are serialised by ``_lock`` (one lock for the manager: exports are
rare and each is a handful of tgtadm calls).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sheepdog_backend.addresses import format_gateway
from sheepdog_backend.exception import (
    ExportElsewhere,
    ExportModeMismatch,
    GatewayUnusable,
    InvalidInput,
    NoVdi,
    SheepdogError,
    SnapshotNotFound,
    TargetBusy,
    VolumeNotFound,
)
from sheepdog_backend.export.base import (
    LUN,
    Detached,
    ExportRecord,
    Target,
    chap_credentials,
    check_backing_name,
    check_gateway,
    check_gateway_socket,
    connection_data,
    target_iqn,
    validate_prefix,
)
from sheepdog_backend.export.tgt import TgtTargets, backing_socket, lu_backing

if TYPE_CHECKING:
    from sheepdog_backend.client import SheepdogClient

LOG = logging.getLogger(__name__)

RECORD_KEY = "sheepdog-backend.export"
SNAPSHOT_CLONE_MARK = ".snapexp-"


@dataclass(frozen=True)
class ExportSettings:
    prefix: str = "iqn.2010-10.org.openstack:"
    portal_host: str = "127.0.0.1"
    portal_port: int = 3260
    chap: bool = True
    chap_key: str = ""
    # A local gateway (sheepdog-backend gateway, HOST:PORT with PORT <= 9999)
    # that every LU goes through instead of a cluster node; empty: none.
    gateway: str = ""
    # That same gateway's unix socket (its --unix): LUs through the gateway
    # use unix:PATH:VDI instead of tcp:HOST:PORT:VDI; empty: TCP.  Records
    # and probes still name the gateway by ``gateway``.
    gateway_socket: str = ""

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        if self.gateway:
            host, _, port = self.gateway.rpartition(":")
            if not host or not port.isdigit():
                raise InvalidInput(f"export gateway {self.gateway!r} is not HOST:PORT")
            check_gateway(host, int(port))
        if self.gateway_socket:
            if not self.gateway:
                raise InvalidInput(
                    f"export gateway socket {self.gateway_socket!r} is set without its "
                    "gateway's HOST:PORT (sheepdog_export_gateway): the driver's own "
                    "requests, the probe and the export records name the gateway by it")
            check_gateway_socket(self.gateway_socket)
        if self.chap and not self.chap_key:
            raise InvalidInput("CHAP is on (use_chap_auth) but no chap key is set "
                               "(sheepdog_export_chap_key): CHAP secrets are derived from it")

    def backing(self, gateway: str, vdi: str) -> str:
        """tgt's backing path of a LU serving ``vdi`` through ``gateway``
        (HOST:PORT, a record's): through the local gateway's unix socket when
        ``gateway`` is the local gateway and its socket is set, else TCP."""
        through_socket = bool(self.gateway) and gateway == self.gateway
        return lu_backing(gateway, vdi,
                          socket=self.gateway_socket if through_socket else "")


def _split(gateway: str) -> tuple[str, int]:
    host, _, port = gateway.rpartition(":")
    return host, int(port)


def snapshot_clone_name(volume: str, tag: str) -> str:
    """The temporary clone that carries snapshot ``tag`` of ``volume``."""
    digest = hashlib.sha256(f"{volume}\0{tag}".encode()).hexdigest()[:12]
    return f"{volume}{SNAPSHOT_CLONE_MARK}{digest}"


def read_record(client: SheepdogClient, vdi: str) -> ExportRecord | None:
    """The export record of ``vdi`` (None when not exported or absent)."""
    try:
        raw = client.get_attr(vdi, RECORD_KEY)
    except NoVdi:
        return None
    return ExportRecord.decode(raw) if raw else None


def gateway_answers(gateway: str) -> bool:
    """True when ``gateway`` (HOST:PORT) accepts and says its cluster is running."""
    from sheepdog_backend.client import RetryPolicy, SheepdogClient
    from sheepdog_backend.protocol.constants import ClusterStatus

    host, port = _split(gateway)
    try:  # the client may fail over to other nodes: first this node itself
        socket.create_connection((host, port), timeout=2.0).close()
    except OSError:
        return False
    try:
        with SheepdogClient([gateway], connect_timeout=2.0, request_timeout=5.0,
                            retry=RetryPolicy(attempts=1, deadline=5.0)) as probe:
            return probe.cluster_info().status == ClusterStatus.OK
    except SheepdogError:
        return False


def socket_answers(path: str, *, timeout: float = 2.0) -> bool:
    """True when the gateway's unix socket ``path`` accepts a connection and
    answers what gateway_answers asks over TCP (CLUSTER_INFO: the cluster is
    running), within ``timeout`` seconds."""
    from sheepdog_backend.client import requests as rq
    from sheepdog_backend.client.transport import call_unix
    from sheepdog_backend.protocol.constants import ClusterStatus
    from sheepdog_backend.protocol.structs import ClusterInfo

    try:
        response = call_unix(path, rq.cluster_info(), timeout)
        return response.ok and ClusterInfo.decode(response.payload).status == ClusterStatus.OK
    except SheepdogError:
        return False


def snapshot_clone(client: SheepdogClient, volume: str, tag: str) -> str:
    """The temporary clone carrying snapshot ``tag`` of ``volume`` (made when
    missing); SnapshotNotFound, or InvalidInput when the name is taken by
    something else."""
    clone = snapshot_clone_name(volume, tag)
    snap = client.find_vdi(volume, tag)
    if snap is None or not snap.is_snapshot:
        raise SnapshotNotFound(f"snapshot {tag!r} of volume {volume!r} does not exist")
    existing = client.find_vdi(clone)
    if existing is None:
        client.clone_vdi(volume, tag, clone)
    elif existing.parent_vid != snap.vid:
        raise InvalidInput(f"VDI {clone!r} exists and is not a clone of {volume!r}@{tag!r}")
    return clone


class ExportManager:
    def __init__(self, client: SheepdogClient, targets: TgtTargets,
                 settings: ExportSettings, *,
                 probe: Callable[[str], bool] | None = None,
                 socket_probe: Callable[[str], bool] | None = None) -> None:
        self.client = client
        self.targets = targets
        self.settings = settings
        self._probe = probe or self._probe_gateway
        self._socket_probe = socket_probe or socket_answers
        self._lock = threading.RLock()
        # the portal of this host's tgtd, which new records name
        self.portal = format_gateway(settings.portal_host, settings.portal_port)

    # -- records --------------------------------------------------------------

    def record(self, vdi: str) -> ExportRecord | None:
        return read_record(self.client, vdi)

    def records(self) -> list[ExportRecord]:
        out = []
        for info in self.client.list_vdis():
            if info.is_snapshot:
                continue
            try:
                rec = self.record(info.name)
            except InvalidInput as exc:
                LOG.warning("volume %s: %s", info.name, exc)
                continue
            if rec is not None:
                out.append(rec)
        return out

    def is_exported(self, vdi: str) -> bool:
        return self.record(vdi) is not None

    def _save(self, rec: ExportRecord) -> None:
        self.client.set_attr(rec.vdi, RECORD_KEY, rec.encode())

    # -- gateways -------------------------------------------------------------

    def _probe_gateway(self, gateway: str) -> bool:
        return gateway_answers(gateway)

    def _candidates(self) -> list[tuple[str, int]]:
        seen: list[tuple[str, int]] = list(self.client.gateways_by_health())
        try:
            for node in self.client.node_list():
                if (node.nid.addr, node.nid.port) not in seen:
                    seen.append((node.nid.addr, node.nid.port))
        except SheepdogError as exc:
            LOG.warning("could not list cluster nodes: %s", exc)
        return seen

    def pick_gateway(self, *, avoid: str | None = None) -> str:
        """A gateway tgt can use that answers now; GatewayUnusable listing why
        each one was rejected."""
        if self.settings.gateway:  # the local gateway fails over between nodes itself
            if self._probe(self.settings.gateway):
                return self.settings.gateway
            raise GatewayUnusable(
                f"the export gateway {self.settings.gateway} does not answer: start it "
                "('sheepdog-backend gateway', see the README) before exporting")
        reasons = []
        for host, port in self._candidates():
            gateway = f"{host}:{port}"
            try:
                check_gateway(host, port)
            except GatewayUnusable as exc:
                reasons.append(str(exc))
                continue
            if gateway == avoid:
                reasons.append(f"gateway {gateway} is the one being moved away from")
            elif self._probe(gateway):
                return gateway
            else:
                reasons.append(f"gateway {gateway} does not answer")
        raise GatewayUnusable("no gateway can serve an iSCSI export: " + "; ".join(reasons))

    # -- export / unexport ----------------------------------------------------

    def credentials(self, rec: ExportRecord) -> tuple[str, str] | None:
        return chap_credentials(self.settings.chap_key, rec.iqn) if rec.chap else None

    def export_volume(self, vdi: str, *, initiator: str | None = None,
                      readonly: bool = False, source: dict[str, str] | None = None,
                      attach: bool = True) -> ExportRecord:
        """Export working VDI ``vdi`` and count one more attachment of
        ``initiator`` (None: a host that named none, allowed with CHAP only);
        with ``attach`` False only allow ``initiator`` (Cinder's create_export,
        followed by initialize_connection's attachment)."""
        check_backing_name(vdi)
        with self._lock:
            info = self.client.find_vdi(vdi)
            if info is None:
                raise VolumeNotFound(f"volume {vdi!r} does not exist")
            rec = self._central(vdi)
            if rec is None:
                rec = ExportRecord(vdi=vdi, iqn=target_iqn(self.settings.prefix, vdi),
                                   gateway=self.pick_gateway(), readonly=readonly,
                                   initiators=(), chap=self.settings.chap, source=source)
            elif not self._probe(rec.gateway):
                self._refuse_stuck(rec, "re-exported")
                rec = rec.with_changes(gateway=self.pick_gateway(avoid=rec.gateway))
            rec = (rec.attaching(initiator) if attach else rec.allowing(initiator)
                   ).with_changes(portal=self.portal)
            backing = self._backing_ready(rec)
            self._save(rec)
            self._apply(rec, backing)
            return rec

    def export_snapshot(self, volume: str, tag: str, *,
                        initiator: str | None = None) -> ExportRecord:
        """Export snapshot ``tag`` of ``volume`` read-only through a temporary
        clone (one more attachment of ``initiator``)."""
        with self._lock:
            clone = snapshot_clone(self.client, volume, tag)
            return self.export_volume(clone, initiator=initiator, readonly=True,
                                      source={"volume": volume, "tag": tag})

    def detach(self, vdi: str, *, initiator: str | None = None) -> Detached:
        """End one attachment of ``initiator`` (rules: ExportRecord.ending); the
        initiator leaves the ACL with its last attachment, the target and the
        record (and a snapshot's temporary clone) with the last of all.  An
        unknown initiator, a volume not exported or a forced detach that cannot
        tell which attachment ends change nothing."""
        with self._lock:
            rec = self._existing_record(vdi)
            if rec is None:
                return Detached(vdi, exported=False, ended=None, remaining=0,
                                target_removed=False)
            after, ended = rec.ending(initiator)
            if ended is not None and not after.attached:
                self._remove(rec)
                return Detached(vdi, exported=True, ended=ended, remaining=0,
                                target_removed=True)
            self._narrow(rec, after)
            return Detached(vdi, exported=True, ended=ended, remaining=after.attached,
                            target_removed=False)

    def detach_snapshot(self, volume: str, tag: str, *,
                        initiator: str | None = None) -> Detached:
        return self.detach(snapshot_clone_name(volume, tag), initiator=initiator)

    def remove_unused(self, vdi: str) -> bool:
        """Remove the export unless an attachment still uses it (then only take
        initiators allowed without an attachment off the ACL); a target left
        without a record goes too.  True when the export is gone."""
        with self._lock:
            rec = self._existing_record(vdi)
            if rec is None:
                self._remove_leftover(vdi)
                return True
            if rec.attached:
                self._narrow(rec, rec.unattached())
                return False
            self._remove(rec)
            return True

    def unexport(self, vdi: str) -> bool:
        """Remove the whole export of ``vdi`` whatever attachments it has (a
        temporary snapshot clone is deleted with it); a target left without a
        record goes too.  False when ``vdi`` was not exported."""
        with self._lock:
            rec = self._existing_record(vdi)
            if rec is None:
                self._remove_leftover(vdi)
                return False
            self._remove(rec)
            return True

    def unexport_snapshot(self, volume: str, tag: str) -> bool:
        return self.unexport(snapshot_clone_name(volume, tag))

    def _existing_record(self, vdi: str) -> ExportRecord | None:
        return self._central(vdi) if self.client.find_vdi(vdi) is not None else None

    def _central(self, vdi: str) -> ExportRecord | None:
        """The record of ``vdi``; ExportModeMismatch when compute hosts' agents
        export it (local mode: export/local.py changes it, not this tgtd),
        ExportElsewhere when another host's tgtd holds its target."""
        rec = self.record(vdi)
        if rec is not None and rec.is_local:
            raise ExportModeMismatch(
                f"volume {vdi!r} is exported by compute hosts' agents (local export mode, "
                f"hosts {', '.join(sorted(rec.hosts or {})) or 'none'}): detach it with "
                "sheepdog_export_mode = local")
        if rec is not None:
            self.check_served(rec)
        return rec

    def serves(self, rec: ExportRecord) -> bool:
        """True when this host's tgtd holds ``rec``'s target (a record that
        names no portal was written before they were kept: as then, yes)."""
        return not rec.portal or rec.portal == self.portal

    def check_served(self, rec: ExportRecord) -> None:
        """ExportElsewhere unless this host's tgtd holds ``rec``'s target."""
        if not self.serves(rec):
            raise ExportElsewhere(
                f"volume {rec.vdi!r} is exported through the tgtd behind portal "
                f"{rec.portal}, not this host's ({self.portal}): tgtadm reaches only this "
                "host's tgtd, so its target, ACL and size can change only from a process "
                "on that host. In a cluster of cinder-volume services on several hosts, use "
                "sheepdog_export_mode = local (any service attaches and detaches)",
                portal=rec.portal)

    def _narrow(self, rec: ExportRecord, after: ExportRecord) -> None:
        """Save ``after`` and take the initiators it dropped off the target."""
        if after == rec:
            return
        self._save(after)
        if after.acl != rec.acl and after.acl:  # from ALL to named initiators
            self._apply(after)
        for name in set(rec.initiators) - set(after.initiators):
            self.targets.unbind_initiator(rec.iqn, name)

    def _remove(self, rec: ExportRecord) -> None:
        if not self._probe(rec.gateway):
            self._refuse_stuck(rec, "removed")
        creds = self.credentials(rec)
        self.targets.remove(rec.iqn, chap_user=creds[0] if creds else None)
        self.client.delete_attr(rec.vdi, RECORD_KEY)
        if rec.source is not None:
            self.client.delete_vdi(rec.vdi)

    def _remove_leftover(self, vdi: str) -> None:
        iqn = target_iqn(self.settings.prefix, vdi)
        user = chap_credentials(self.settings.chap_key, iqn)[0] if self.settings.chap else None
        self.targets.remove(iqn, chap_user=user)

    def _refuse_stuck(self, rec: ExportRecord, what: str) -> None:
        """TargetBusy when tgtd still has a LU on ``rec``'s dead gateway: closing
        it sends RELEASE_VDI there and retries every second forever in tgtd's
        main thread, which would hang tgtd for every target."""
        if self.targets.find(rec.iqn) is None:
            return
        raise TargetBusy(
            f"export {rec.iqn} cannot be {what} now: its gateway {rec.gateway} does not "
            "answer and tgtd cannot drop a LU on a dead gateway (closing it retries that "
            "gateway forever and blocks tgtd). Bring the gateway back, or restart tgtd "
            "and run 'sheepdog-backend export sync' to re-create every export on a live "
            "gateway (initiators reconnect and replay)")

    def _backing_ready(self, rec: ExportRecord, *, recreate: bool = False) -> str:
        """``rec``'s backing path (ExportSettings.backing), once tgtd can make
        its LU there: GatewayUnusable when a LU is to be made through a unix
        socket that does not answer, TargetBusy when the LU to be dropped goes
        through a socket that does not answer (closing it would retry there
        forever and block tgtd).  Nothing changes before either.  A LU that
        already has this backing is kept (unless ``recreate``): no check."""
        backing = self.settings.backing(rec.gateway, rec.vdi)
        target = self.targets.find(rec.iqn)
        lu = target.lun(LUN) if target is not None else None
        if lu is not None and lu.backing == backing and not recreate:
            return backing
        path = backing_socket(backing)
        if path is not None and not self._socket_probe(path):
            raise GatewayUnusable(
                f"the export gateway's unix socket {path} does not answer: start the "
                f"gateway listening on it ('sheepdog-backend gateway --unix {path} --port "
                f"{_split(rec.gateway)[1]} ...', see the README) or unset "
                "sheepdog_export_gateway_socket")
        old = backing_socket(lu.backing) if lu is not None else None
        if old is not None and old != path and not self._socket_probe(old):
            raise TargetBusy(
                f"export {rec.iqn} cannot be re-made now: its LU goes through the unix "
                f"socket {old}, which does not answer, and tgtd cannot drop a LU on a dead "
                "gateway (closing it retries forever and blocks tgtd). Start the gateway "
                f"with --unix {old} again, or restart tgtd and run 'sheepdog-backend "
                "export sync'")
        return backing

    def _apply(self, rec: ExportRecord, backing: str | None = None) -> Target:
        """Make tgtd serve ``rec`` (``backing``: from _backing_ready, else
        checked here)."""
        if backing is None:
            backing = self._backing_ready(rec)
        return self.targets.create(rec.iqn, backing, readonly=rec.readonly,
                                   chap=self.credentials(rec), initiators=rec.acl)

    # -- health, sync, resize -------------------------------------------------

    def check(self, vdi: str) -> dict[str, Any]:
        """What is wrong with the export of ``vdi`` (empty ``problems`` when fine)."""
        rec = self.record(vdi)
        if rec is None:
            return {"vdi": vdi, "exported": False, "problems": ["not exported"]}
        out: dict[str, Any] = {
            "vdi": vdi, "exported": True, "iqn": rec.iqn, "gateway": rec.gateway,
            "readonly": rec.readonly, "initiators": list(rec.initiators),
            "attachments": dict(rec.attachments), "sessions": 0, "problems": []}
        if rec.is_local:
            return dict(out, gateway="", hosts=dict(rec.hosts or {}))
        out["portal"] = rec.portal or self.portal
        if not self.serves(rec):
            out["problems"] = [f"exported through the tgtd behind portal {rec.portal}, not "
                               f"this host's ({self.portal}): check it there"]
            return out
        target = self.targets.find(rec.iqn)
        backing = self.settings.backing(rec.gateway, rec.vdi)
        if target is None:
            out["problems"].append("no target on tgtd (tgtd restarted?)")
        else:
            out["sessions"] = target.sessions
            lu = target.lun(LUN)
            if lu is None or lu.backing != backing:
                out["problems"].append("LUN 1 does not serve the recorded volume and gateway "
                                       f"({backing})")
        if not self._probe(rec.gateway):
            out["problems"].append(f"gateway {rec.gateway} does not answer")
        path = backing_socket(backing)
        if path is not None and not self._socket_probe(path):
            out["problems"].append(f"gateway socket {path} does not answer")
        return out

    def ensure(self, vdi: str) -> ExportRecord | None:
        """Make tgtd serve the recorded export of ``vdi`` through a live
        gateway (moving it when its gateway is dead); None when not exported
        or exported by another host's tgtd (its own host ensures it).
        TargetBusy when the LU has I/O stuck on the dead gateway."""
        with self._lock:
            try:
                rec = self._central(vdi)
            except ExportElsewhere as exc:
                LOG.info("not ensured here: %s", exc)
                return None
            if rec is None:
                return None
            if not self._probe(rec.gateway):
                self._refuse_stuck(rec, "moved")
                old = rec.gateway
                rec = rec.with_changes(gateway=self.pick_gateway(avoid=old))
                LOG.warning("export %s: gateway %s is dead, moving to %s", rec.iqn, old,
                            rec.gateway)
                backing = self._backing_ready(rec)
                self._save(rec)
            else:
                backing = self._backing_ready(rec)
            self._apply(rec, backing)
            return rec

    def sync(self) -> dict[str, list[str]]:
        """Ensure every recorded export; remove targets under our prefix that
        no record names.  Returns what was ensured, removed and failed."""
        done: dict[str, list[str]] = {"ensured": [], "removed": [], "failed": []}
        wanted = set()
        for rec in self.records():
            wanted.add(rec.iqn)  # another host's target is never dropped here either
            if rec.is_local or not self.serves(rec):  # agents, or that host, keep those
                continue
            try:
                self.ensure(rec.vdi)
                done["ensured"].append(rec.iqn)
            except SheepdogError as exc:
                LOG.error("export %s: %s", rec.iqn, exc)
                done["failed"].append(f"{rec.iqn}: {exc}")
        for target in self.targets.targets():
            if target.iqn.startswith(self.settings.prefix) and target.iqn not in wanted:
                self.targets.remove(target.iqn)
                done["removed"].append(target.iqn)
        return done

    def refresh_size(self, vdi: str) -> bool:
        """Re-create the LU of an exported ``vdi`` so initiators see its new
        size; False when it is not exported."""
        with self._lock:
            rec = self._central(vdi)
            if rec is None:
                return False
            if not self._probe(rec.gateway):
                self._refuse_stuck(rec, "re-opened")
            self.targets.recreate_lun(rec.iqn, self._backing_ready(rec, recreate=True),
                                      readonly=rec.readonly)
            return True

    # -- connection data --------------------------------------------------------

    def connection(self, rec: ExportRecord) -> dict[str, Any]:
        """What an initiator needs: portal, IQN, LUN, CHAP credentials."""
        return connection_data(rec, (self.settings.portal_host, self.settings.portal_port),
                               self.credentials(rec))
