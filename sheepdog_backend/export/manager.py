"""ExportManager: volumes exported as iSCSI targets, their state on the cluster.

How it works: exporting a volume picks a gateway tgt can use and that answers
(healthiest first), derives the IQN and CHAP credentials, writes an
ExportRecord into the VDI attribute ``RECORD_KEY`` of the exported VDI, then
makes the target match it on tgtd.  Because tgtd forgets everything when it
restarts, the record is the truth: ``ensure`` / ``sync`` re-create missing
targets and move a LU whose gateway stopped answering to a live one.  A
snapshot is exported through a temporary clone (tgt refuses snapshots as
LUs), read-only, recorded with its source and deleted when unexported.

Attachments share the volume's one target (one LU: tgt caches the inode per
LU, and two LUs of one VDI can lose each other's writes): ``export_volume``
counts one more attachment of its initiator in the record and adds it to the
ACL; ``detach`` ends one, takes the initiator off the ACL when it has none
left, and removes the target and the record with the last attachment.  A live
migration (two hosts) or a multiattach volume (several instances, maybe on
one host) is just more than one attachment.

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

from sheepdog_backend.exception import (
    GatewayUnusable,
    InvalidInput,
    NoVdi,
    SheepdogError,
    TargetBusy,
    VolumeNotFound,
)
from sheepdog_backend.export.base import (
    LUN,
    ExportRecord,
    Target,
    chap_credentials,
    check_backing_name,
    check_gateway,
    target_iqn,
    validate_prefix,
)
from sheepdog_backend.export.tgt import TgtTargets, backing_path

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

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        if self.gateway:
            host, _, port = self.gateway.rpartition(":")
            if not host or not port.isdigit():
                raise InvalidInput(f"export gateway {self.gateway!r} is not HOST:PORT")
            check_gateway(host, int(port))
        if self.chap and not self.chap_key:
            raise InvalidInput("CHAP is on (use_chap_auth) but no chap key is set "
                               "(sheepdog_export_chap_key): CHAP secrets are derived from it")


def _split(gateway: str) -> tuple[str, int]:
    host, _, port = gateway.rpartition(":")
    return host, int(port)


def snapshot_clone_name(volume: str, tag: str) -> str:
    """The temporary clone that carries snapshot ``tag`` of ``volume``."""
    digest = hashlib.sha256(f"{volume}\0{tag}".encode()).hexdigest()[:12]
    return f"{volume}{SNAPSHOT_CLONE_MARK}{digest}"


@dataclass(frozen=True)
class Detached:
    """What ending one attachment did.

    ``exported``: the volume had an export; ``ended``: the key of the
    attachment that ended (its initiator, or ``ANY_INITIATOR``), None when
    none did (unknown initiator, already gone, or a forced detach that cannot
    tell which of several); ``remaining``: attachments the target still
    serves; ``target_removed``: this call removed the target and its record.
    """

    vdi: str
    exported: bool
    ended: str | None
    remaining: int
    target_removed: bool

    @property
    def shared(self) -> bool:
        """Other attachments still use the target (Cinder's "shared connection")."""
        return self.remaining > 0


def read_record(client: SheepdogClient, vdi: str) -> ExportRecord | None:
    """The export record of ``vdi`` (None when not exported or absent)."""
    try:
        raw = client.get_attr(vdi, RECORD_KEY)
    except NoVdi:
        return None
    return ExportRecord.decode(raw) if raw else None


class ExportManager:
    def __init__(self, client: SheepdogClient, targets: TgtTargets,
                 settings: ExportSettings, *,
                 probe: Callable[[str], bool] | None = None) -> None:
        self.client = client
        self.targets = targets
        self.settings = settings
        self._probe = probe or self._probe_gateway
        self._lock = threading.RLock()

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
            rec = self.record(vdi)
            if rec is None:
                rec = ExportRecord(vdi=vdi, iqn=target_iqn(self.settings.prefix, vdi),
                                   gateway=self.pick_gateway(), readonly=readonly,
                                   initiators=(), chap=self.settings.chap, source=source)
            elif not self._probe(rec.gateway):
                self._refuse_stuck(rec, "re-exported")
                rec = rec.with_changes(gateway=self.pick_gateway(avoid=rec.gateway))
            rec = rec.attaching(initiator) if attach else rec.allowing(initiator)
            self._save(rec)
            self._apply(rec)
            return rec

    def export_snapshot(self, volume: str, tag: str, *,
                        initiator: str | None = None) -> ExportRecord:
        """Export snapshot ``tag`` of ``volume`` read-only through a temporary
        clone (one more attachment of ``initiator``)."""
        clone = snapshot_clone_name(volume, tag)
        with self._lock:
            snap = self.client.find_vdi(volume, tag)
            if snap is None or not snap.is_snapshot:
                from sheepdog_backend.exception import SnapshotNotFound
                raise SnapshotNotFound(f"snapshot {tag!r} of volume {volume!r} does not exist")
            existing = self.client.find_vdi(clone)
            if existing is None:
                self.client.clone_vdi(volume, tag, clone)
            elif existing.parent_vid != snap.vid:
                raise InvalidInput(f"VDI {clone!r} exists and is not a clone of "
                                   f"{volume!r}@{tag!r}")
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
        return self.record(vdi) if self.client.find_vdi(vdi) is not None else None

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

    def _apply(self, rec: ExportRecord) -> Target:
        host, port = _split(rec.gateway)
        return self.targets.create(rec.iqn, backing_path(host, port, rec.vdi),
                                   readonly=rec.readonly, chap=self.credentials(rec),
                                   initiators=rec.acl)

    # -- health, sync, resize -------------------------------------------------

    def check(self, vdi: str) -> dict[str, Any]:
        """What is wrong with the export of ``vdi`` (empty ``problems`` when fine)."""
        rec = self.record(vdi)
        if rec is None:
            return {"vdi": vdi, "exported": False, "problems": ["not exported"]}
        problems = []
        target = self.targets.find(rec.iqn)
        host, port = _split(rec.gateway)
        if target is None:
            problems.append("no target on tgtd (tgtd restarted?)")
        else:
            lu = target.lun(LUN)
            if lu is None or lu.backing != backing_path(host, port, rec.vdi):
                problems.append("LUN 1 does not serve the recorded volume and gateway")
        if not self._probe(rec.gateway):
            problems.append(f"gateway {rec.gateway} does not answer")
        return {"vdi": vdi, "exported": True, "iqn": rec.iqn, "gateway": rec.gateway,
                "readonly": rec.readonly, "initiators": list(rec.initiators),
                "attachments": dict(rec.attachments),
                "sessions": target.sessions if target else 0, "problems": problems}

    def ensure(self, vdi: str) -> ExportRecord | None:
        """Make tgtd serve the recorded export of ``vdi`` through a live
        gateway (moving it when its gateway is dead); None when not exported.
        TargetBusy when the LU has I/O stuck on the dead gateway."""
        with self._lock:
            rec = self.record(vdi)
            if rec is None:
                return None
            if not self._probe(rec.gateway):
                self._refuse_stuck(rec, "moved")
                old = rec.gateway
                rec = rec.with_changes(gateway=self.pick_gateway(avoid=old))
                LOG.warning("export %s: gateway %s is dead, moving to %s", rec.iqn, old,
                            rec.gateway)
                self._save(rec)
            self._apply(rec)
            return rec

    def sync(self) -> dict[str, list[str]]:
        """Ensure every recorded export; remove targets under our prefix that
        no record names.  Returns what was ensured, removed and failed."""
        done: dict[str, list[str]] = {"ensured": [], "removed": [], "failed": []}
        wanted = set()
        for rec in self.records():
            wanted.add(rec.iqn)
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
            rec = self.record(vdi)
            if rec is None:
                return False
            if not self._probe(rec.gateway):
                self._refuse_stuck(rec, "re-opened")
            host, port = _split(rec.gateway)
            self.targets.recreate_lun(rec.iqn, backing_path(host, port, rec.vdi),
                                      readonly=rec.readonly)
            return True

    # -- connection data --------------------------------------------------------

    def connection(self, rec: ExportRecord) -> dict[str, Any]:
        """What an initiator needs: portal, IQN, LUN, CHAP credentials."""
        creds = self.credentials(rec)
        return {"portal": (self.settings.portal_host, self.settings.portal_port),
                "iqn": rec.iqn, "lun": LUN, "readonly": rec.readonly,
                "chap": creds, "vdi": rec.vdi}
