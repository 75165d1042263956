"""LocalExports: the local export mode seen from any process that attaches
or detaches (cinder-volume, the CLI): targets on the compute host itself.

How it works: nothing here touches a tgtd.  Attaching volume V for compute
host H records one more attachment of the connector's initiator on H in V's
export record (version 3: attachments per host, base.ExportRecord.hosts),
puts V with the stamp of H's part in H's index (hosts.py) and waits, at most
``timeout`` seconds, for H's agent to acknowledge that index generation
(agent/agent.py makes the target on H's tgtd, through H's gateway).  The
connection info then points at the portal H registered.  When H's agent
does not answer or reports a failure, the attachment is taken back and
ExportAgentTimeout / ExportAgentFailed names H; an unknown host changes
nothing (ExportHostUnknown before any write).  Detaching ends one
attachment; H's index loses V with H's last one (its agent removes the
target), the record goes with the last of all.  No wait on detach: a dead
host's detach succeeds and its agent catches up when it returns; only a
snapshot's temporary clone waits (bounded) for the agents before it is
deleted.

Shared state: only the cluster.  The record of V is read, changed and
written under V's short lock (clusterlock, key ``LOCK_KEY`` on V); H's index
under H's index lock, taken inside V's (always in that order).  Any number
of processes and hosts may call this at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sheepdog_backend.exception import (
    ExportAgentFailed,
    ExportAgentTimeout,
    ExportModeMismatch,
    NoVdi,
    VolumeNotFound,
)
from sheepdog_backend.export import clusterlock, hosts
from sheepdog_backend.export.base import (
    Detached,
    ExportRecord,
    chap_credentials,
    check_backing_name,
    connection_data,
    target_iqn,
)
from sheepdog_backend.export.manager import (
    RECORD_KEY,
    ExportSettings,
    read_record,
    snapshot_clone,
    snapshot_clone_name,
)

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sheepdog_backend.client import SheepdogClient

LOG = logging.getLogger(__name__)

LOCK_KEY = "sheepdog-backend.export.lock"


class LocalExports:
    def __init__(self, client: SheepdogClient, settings: ExportSettings, *,
                 timeout: float = 30.0) -> None:
        self.client = client
        self.settings = settings
        self.timeout = timeout

    # -- records ----------------------------------------------------------------

    def record(self, vdi: str) -> ExportRecord | None:
        rec = read_record(self.client, vdi)
        if rec is not None and not rec.is_local:
            raise ExportModeMismatch(
                f"volume {vdi!r} is exported by one host's tgtd (central export mode, "
                f"gateway {rec.gateway}): detach it with sheepdog_export_mode = central")
        return rec

    def _locked(self, vdi: str) -> AbstractContextManager[None]:
        return clusterlock.held(self.client, vdi, LOCK_KEY)

    def _publish(self, before: ExportRecord, after: ExportRecord | None) -> dict[str, int]:
        """Write ``after`` (None: delete the record) and the index of every host
        whose part changed; the new index generation per host.

        The VDI's inode also says how many hosts export it (the gateways check
        the reads of a VDI two hosts export: gateway/views.py): raised before
        a new host's agent can open its LU, lowered once a host's part is gone
        (a gateway keeps checking a LU that was shared until it found its
        inode current, so a destination that stayed idle since the source's
        last writes still reloads; tried).
        """
        count_before = len(before.hosts or {})
        count_after = len(after.hosts or {}) if after is not None else 0
        if count_after > count_before:
            self.client.set_export_hosts(before.vdi, count_after)
        if after is None:
            self.client.delete_attr(before.vdi, RECORD_KEY)
        else:
            self.client.set_attr(after.vdi, RECORD_KEY, after.encode())
        gens = {}
        for host in set(before.hosts or {}) | set((after.hosts or {}) if after else {}):
            old = before.host_view(host)
            new = after.host_view(host) if after is not None else None
            if old != new:
                gens[host] = hosts.update_index(self.client, host, before.vdi,
                                                new.stamp if new is not None else None)
        if count_after < count_before and count_before > 1:
            try:
                self.client.set_export_hosts(before.vdi, count_after)
            except NoVdi:  # deleted meanwhile: nobody reads it any more
                pass
        return gens

    # -- attach ----------------------------------------------------------------

    def attach(self, vdi: str, host: str, initiator: str | None, *, readonly: bool = False,
               source: dict[str, str] | None = None) -> tuple[ExportRecord, hosts.Registration]:
        """One more attachment of ``initiator`` on compute host ``host``, once
        that host's agent made the target; the record and the host's
        registration (its portal)."""
        check_backing_name(vdi)
        reg = hosts.registration(self.client, hosts.check_host(host))
        info = self.client.find_vdi(vdi)
        if info is None:
            raise VolumeNotFound(f"volume {vdi!r} does not exist")
        try:
            with self._locked(vdi):
                rec = self.record(vdi) or ExportRecord(
                    vdi=vdi, iqn=target_iqn(self.settings.prefix, vdi), gateway="",
                    readonly=readonly, chap=self.settings.chap, source=source, hosts={},
                    size=info.size)
                after = rec.attaching_on(host, initiator)
                gen = self._publish(rec, after).get(host)
        except NoVdi:
            raise VolumeNotFound(f"volume {vdi!r} does not exist") from None
        if gen is not None:
            self._await(vdi, host, gen, initiator)
        return after, reg

    def _await(self, vdi: str, host: str, gen: int, initiator: str | None) -> None:
        done = hosts.wait_for_ack(self.client, host, gen, self.timeout)
        if done is not None and vdi not in done.failed:
            return
        self._take_back(vdi, host, initiator)
        if done is None:
            last = hosts.ack(self.client, host)
            raise ExportAgentTimeout(
                f"the agent of compute host {host!r} did not make the target of {vdi!r} "
                f"within {self.timeout:g} s (its last acknowledgement: generation "
                f"{last.gen}{', by ' + last.agent if last.agent else ''}): is "
                f"'sheepdog-backend agent --host {host}' running there and able to reach "
                "the cluster? The attachment was taken back", host=host)
        raise ExportAgentFailed(f"the agent of compute host {host!r} could not make the "
                                f"target of {vdi!r}: {done.failed[vdi]}; the attachment "
                                "was taken back", host=host)

    def _take_back(self, vdi: str, host: str, initiator: str | None) -> None:
        try:
            self.detach(vdi, host, initiator, wait=False)
        except Exception as exc:
            LOG.error("attachment of %s on %s not taken back: %s", vdi, host, exc)

    def attach_snapshot(self, volume: str, tag: str, host: str, initiator: str | None
                        ) -> tuple[ExportRecord, hosts.Registration]:
        """Snapshot ``tag`` of ``volume`` read-only through a temporary clone."""
        hosts.registration(self.client, hosts.check_host(host))  # before the clone
        clone = snapshot_clone(self.client, volume, tag)
        return self.attach(clone, host, initiator, readonly=True,
                           source={"volume": volume, "tag": tag})

    # -- detach ----------------------------------------------------------------

    def detach(self, vdi: str, host: str | None, initiator: str | None, *,
               wait: bool = True) -> Detached:
        """End one attachment (rules: ExportRecord.ending_on; ``host`` None: a
        forced detach without a connector).  The record goes with the last
        attachment; a snapshot's temporary clone too, once the agents dropped
        its targets (``wait``) or the wait ran out."""
        if self.client.find_vdi(vdi) is None:
            return Detached(vdi, exported=False, ended=None, remaining=0, target_removed=False)
        with self._locked(vdi):
            rec = self.record(vdi)
            if rec is None:
                return Detached(vdi, exported=False, ended=None, remaining=0,
                                target_removed=False)
            after, ended = rec.ending_on(host, initiator)
            if ended is None:
                return Detached(vdi, exported=True, ended=None, remaining=rec.attached,
                                target_removed=False)
            gens = self._publish(rec, after if after.attached else None)
        if not after.attached:
            self._drop_clone(rec, gens, wait=wait)
        return Detached(vdi, exported=True, ended=ended[1], remaining=after.attached,
                        target_removed=not after.attached)

    def detach_snapshot(self, volume: str, tag: str, host: str | None,
                        initiator: str | None) -> Detached:
        return self.detach(snapshot_clone_name(volume, tag), host, initiator)

    def unexport(self, vdi: str) -> bool:
        """Remove the whole export whatever attachments it has (every host's
        agent drops its target).  False when ``vdi`` was not exported."""
        if self.client.find_vdi(vdi) is None:
            return False
        with self._locked(vdi):
            rec = self.record(vdi)
            if rec is None:
                return False
            gens = self._publish(rec, None)
        self._drop_clone(rec, gens, wait=True)
        return True

    def _drop_clone(self, rec: ExportRecord, gens: dict[str, int], *, wait: bool) -> None:
        if rec.source is None:
            return
        for host in sorted(gens) if wait else ():
            if hosts.wait_for_ack(self.client, host, gens[host], self.timeout) is None:
                LOG.warning("agent of %s did not drop the target of %s within %g s; "
                            "deleting the clone anyway", host, rec.vdi, self.timeout)
        self.client.delete_vdi(rec.vdi)

    # -- resize, connection -------------------------------------------------------

    def refresh_size(self, vdi: str) -> bool:
        """Have every host's agent re-open its LU at the VDI's new size (bounded
        wait, logged when an agent does not answer); False when not exported."""
        info = self.client.find_vdi(vdi)
        if info is None:
            return False
        with self._locked(vdi):
            rec = self.record(vdi)
            if rec is None:
                return False
            gens = self._publish(rec, rec.with_changes(size=info.size))
        for host, gen in sorted(gens.items()):
            if hosts.wait_for_ack(self.client, host, gen, self.timeout) is None:
                LOG.warning("agent of %s did not re-open the LU of %s within %g s: its "
                            "initiators see the old size until it does", host, vdi,
                            self.timeout)
        return True

    def connection(self, rec: ExportRecord, reg: hosts.Registration) -> dict[str, Any]:
        creds = chap_credentials(self.settings.chap_key, rec.iqn) if rec.chap else None
        return connection_data(rec, reg.portal, creds)
