"""HostAgent: keeps one compute host's tgtd equal to what the cluster's
export records ask of that host (local export mode).

How it works: on start the agent registers its host (portal, gateway) on
the cluster (export/hosts.py).  Then, every ``poll_interval`` seconds, it
reads its host's index - one direct read of one attribute object - and
when the index names a VDI whose stamp it has not applied (or dropped one),
it reads those records (one pipelined round trip), makes each target match
the host's part of its record on the local tgtd (LU through this host's
gateway: ``unix:PATH:VDI`` through its unix socket when ``gateway_socket``
is set, else ``tcp:HOST:PORT:VDI``; CHAP, ACL, size) and removes the
targets of dropped ones.  Every ``check_interval`` seconds, and at start,
it also compares every target under the prefix on tgtd with the index:
what is missing (tgtd restarted, the host rebooted) is made again, what is
wrong is fixed (a LU of the other backing form is re-made), and targets no
record asks for are removed.  After each pass that saw a new index
generation it acknowledges that generation on the cluster, with the
targets it could not make and why, so a waiting initialize_connection
learns the outcome.  Errors of one pass (cluster or tgtd unreachable) are
logged and the next pass tries again.

State: ``_applied`` (VDI -> the HostExport last made on tgtd) and
``_failed`` (VDI -> (stamp, why)) belong to the one thread that runs
``run``/``step``; nothing is shared with other threads but the stop event.
The cluster and tgtd are the truth: a restarted agent starts empty and its
first pass checks everything.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sheepdog_backend.client import Ask
from sheepdog_backend.exception import ExportError, InvalidInput, SheepdogError
from sheepdog_backend.export import hosts
from sheepdog_backend.export.base import (
    LUN,
    ExportRecord,
    HostExport,
    LogicalUnit,
    Target,
    chap_credentials,
    check_gateway,
    check_gateway_socket,
    target_iqn,
)
from sheepdog_backend.export.manager import (
    RECORD_KEY,
    ExportSettings,
    gateway_answers,
    socket_answers,
)
from sheepdog_backend.export.tgt import TgtTargets, backing_socket, lu_backing

if TYPE_CHECKING:
    from sheepdog_backend.client import SheepdogClient

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentSettings:
    """``host``: the name Nova's connector carries (CONF.host); ``portal``: the
    address initiators log in to; ``gateway``: HOST:PORT of this host's
    ``sheepdog-backend gateway`` (port <= 9999, IPv4); ``gateway_socket``:
    that gateway's unix socket (its --unix), which the LUs then go through
    ("": TCP)."""

    host: str
    portal: tuple[str, int]
    gateway: str
    poll_interval: float = 0.5
    check_interval: float = 10.0
    gateway_socket: str = ""

    def __post_init__(self) -> None:
        hosts.check_host(self.host)
        address, _, port = self.gateway.rpartition(":")
        if not address or not port.isdigit():
            raise InvalidInput(f"agent gateway {self.gateway!r} is not HOST:PORT")
        check_gateway(address, int(port))
        if self.gateway_socket:
            check_gateway_socket(self.gateway_socket)
        if not 0.01 <= self.poll_interval <= 60 or not 0.1 <= self.check_interval <= 3600:
            raise InvalidInput("poll interval must be 0.01-60 s and check interval "
                               "0.1-3600 s")


def _size_matches(lu_bytes: int, want: int) -> bool:
    """tgt reports a LU's size in whole MB (10^6 bytes)."""
    return abs(lu_bytes - want) < 1_000_000


class HostAgent:
    def __init__(self, client: SheepdogClient, targets: TgtTargets, export: ExportSettings,
                 settings: AgentSettings, *,
                 probe: Callable[[str], bool] = gateway_answers,
                 socket_probe: Callable[[str], bool] = socket_answers) -> None:
        self.client = client
        self.targets = targets
        self.export = export
        self.settings = settings
        self._probe = probe
        self._socket_probe = socket_probe
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._applied: dict[str, HostExport] = {}
        self._failed: dict[str, tuple[str, str]] = {}
        self._acked: tuple[int, dict[str, str]] | None = None  # generation, failures

    @property
    def host(self) -> str:
        return self.settings.host

    def register(self) -> hosts.Registration:
        reg = hosts.Registration(host=self.host, portal=self.settings.portal,
                                 gateway=self.settings.gateway, agent=self.identity,
                                 started=time.time())
        hosts.register(self.client, reg)
        LOG.info("host %s registered: portal %s:%d, gateway %s", self.host, *reg.portal,
                 reg.gateway)
        return reg

    def run(self, stop: threading.Event) -> None:
        """Register, then reconcile until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.register()
                break
            except SheepdogError as exc:
                LOG.error("host %s: cannot register (retrying): %s", self.host, exc)
                stop.wait(self.settings.check_interval)
        next_check = 0.0
        while not stop.is_set():
            full = time.monotonic() >= next_check
            try:
                self.step(full=full)
                if full:
                    next_check = time.monotonic() + self.settings.check_interval
            except SheepdogError as exc:
                LOG.error("host %s: pass failed (next in %g s): %s", self.host,
                          self.settings.poll_interval, exc)
            stop.wait(self.settings.poll_interval)
        LOG.info("host %s: agent stopped; its targets stay on tgtd", self.host)

    # -- one pass ----------------------------------------------------------------

    def step(self, *, full: bool = False) -> hosts.HostIndex:
        """One pass (``full``: check every target on tgtd too)."""
        index = hosts.index(self.client, self.host)
        wanted = dict(index.exports)
        stale = [vdi for vdi, stamp in wanted.items()
                 if (vdi not in self._applied or self._applied[vdi].stamp != stamp)
                 and (full or self._failed.get(vdi, ("",))[0] != stamp)]
        gone = [vdi for vdi in self._applied if vdi not in wanted]
        if not (stale or gone or full) and self._acked and index.gen == self._acked[0]:
            return index
        present = {t.iqn: t for t in self.targets.targets()}
        for vdi in gone:
            self._remove(self._applied.pop(vdi).iqn, present, f"{vdi} has no attachment here")
            self._failed.pop(vdi, None)
        for vdi, view in self._views(stale).items():
            if view is None:  # the record moved on without this host: its index follows
                self._applied.pop(vdi, None)
                self._remove(target_iqn(self.export.prefix, vdi), present,
                             f"{vdi} has no attachment here")
            else:
                self._apply(view, present.get(view.iqn), wanted[vdi])
        if full:
            for vdi, view in list(self._applied.items()):
                if vdi in wanted and vdi not in stale:
                    self._apply(view, present.get(view.iqn), wanted[vdi])
            keep = {target_iqn(self.export.prefix, vdi) for vdi in wanted}
            for iqn in list(present):
                if iqn.startswith(self.export.prefix) and iqn not in keep:
                    self._remove(iqn, present, "no record asks for it")
        self._acknowledge(index)
        return index

    def _views(self, vdis: list[str]) -> dict[str, HostExport | None]:
        if not vdis:
            return {}
        found = self.client.surveys([Ask(vdi, keys=(RECORD_KEY,), look=False)
                                     for vdi in vdis])
        out: dict[str, HostExport | None] = {}
        for vdi, survey in zip(vdis, found, strict=True):
            raw = survey.attrs.get(RECORD_KEY)
            try:
                rec = ExportRecord.decode(raw) if raw else None
            except InvalidInput as exc:
                LOG.error("volume %s: %s", vdi, exc)
                rec = None
            out[vdi] = rec.host_view(self.host) if rec is not None and rec.is_local else None
        return out

    def _apply(self, view: HostExport, target: Target | None, stamp: str) -> None:
        """Make ``view``'s target on tgtd (or fix it); a failure is recorded
        for the acknowledgement."""
        backing = lu_backing(self.settings.gateway, view.vdi,
                             socket=self.settings.gateway_socket)
        lu = target.lun(LUN) if target is not None else None
        chap = chap_credentials(self.export.chap_key, view.iqn) if view.chap else None
        acl = set(view.acl) if view.acl else {"ALL"}
        fine = (target is not None and lu is not None and lu.backing == backing
                and lu.readonly == view.readonly and set(target.acls) == acl
                and (chap is None or chap[0] in target.accounts))
        resized = fine and lu is not None and view.size and not _size_matches(lu.size,
                                                                              view.size)
        try:
            if resized:
                self._check_lu(backing, lu)
                self.targets.recreate_lun(view.iqn, backing, readonly=view.readonly)
                LOG.info("target %s: LU re-opened at %d bytes", view.iqn, view.size)
            elif not fine:
                if lu is None or lu.backing != backing:
                    if not self._probe(self.settings.gateway):
                        raise ExportError(f"gateway {self.settings.gateway} of host "
                                          f"{self.host} does not answer: start it "
                                          "(sheepdog-backend gateway)")
                    self._check_lu(backing, lu)
                self.targets.create(view.iqn, backing, readonly=view.readonly, chap=chap,
                                    initiators=view.acl)
                LOG.info("target %s %s for %s (ACL %s)", view.iqn,
                         "made" if target is None else "fixed", view.vdi,
                         ", ".join(view.acl) or "any initiator with CHAP")
        except SheepdogError as exc:
            if self._failed.get(view.vdi) != (stamp, str(exc)):
                LOG.error("target %s for %s: %s", view.iqn, view.vdi, exc)
            self._failed[view.vdi] = (stamp, str(exc))
            self._applied.pop(view.vdi, None)
            return
        self._failed.pop(view.vdi, None)
        self._applied[view.vdi] = view

    def _check_lu(self, backing: str, lu: LogicalUnit | None) -> None:
        """Before the LU is (re-)made on ``backing``: ExportError when that goes
        through a unix socket that does not answer, or when the LU to drop
        does (closing it would retry there forever and block tgtd)."""
        path = backing_socket(backing)
        if path is not None and not self._socket_probe(path):
            raise ExportError(f"unix socket {path} of host {self.host}'s gateway "
                              f"{self.settings.gateway} does not answer: start the gateway "
                              f"listening on it (sheepdog-backend gateway --unix {path} "
                              "--port N ...)")
        old = backing_socket(lu.backing) if lu is not None else None
        if old is not None and old != path and not self._socket_probe(old):
            raise ExportError(f"the LU goes through unix socket {old}, which does not "
                              "answer: tgtd cannot drop it (closing it retries forever); "
                              f"start the gateway with --unix {old} again or restart tgtd")

    def _remove(self, iqn: str, present: dict[str, Target], why: str) -> None:
        if iqn not in present:
            return
        user = chap_credentials(self.export.chap_key, iqn)[0] if self.export.chap else None
        try:
            self.targets.remove(iqn, chap_user=user)
            LOG.info("target %s removed: %s", iqn, why)
        except SheepdogError as exc:
            LOG.error("target %s not removed (%s): %s", iqn, why, exc)
        present.pop(iqn, None)

    def _acknowledge(self, index: hosts.HostIndex) -> None:
        failed = {vdi: why for vdi, (_, why) in self._failed.items() if vdi in index.exports}
        if self._acked == (index.gen, failed):
            return
        hosts.acknowledge(self.client, self.host, hosts.HostAck(
            gen=index.gen, failed=failed, at=time.time(), agent=self.identity))
        LOG.info("host %s: index generation %d applied (%d target(s)%s)", self.host,
                 index.gen, len(self._applied), f", {len(failed)} failed" if failed else "")
        self._acked = (index.gen, failed)
