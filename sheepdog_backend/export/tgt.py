"""Targets on a Linux SCSI target daemon (tgtd) through ``tgtadm``.

How it works: every call runs ``[root_helper...] tgtadm --lld iscsi
[--control-port N] ...`` with a timeout and turns a non-zero exit into
TargetCommandFailed (TargetBusy for "still active").  A volume's target is
one tgt target (its IQN) with LUN 1 on tgt's built-in Sheepdog backing store
(``--bstype sheepdog --backing-store tcp:HOST:PORT:VDI``, or
``unix:PATH:VDI`` through a local gateway's unix socket: ``lu_backing``),
CHAP accounts bound to it and initiator ACLs.  tgtd keeps all of this in
memory only.

What tgt 1.0.85 does that we design around (each has a test):

* the port in ``tcp:HOST:PORT:VDI`` keeps only 4 characters
  (``tcp:127.0.0.1:17100`` connects to 1710): base.check_gateway refuses
  gateways above 9999;
* a snapshot (``VDI:tag``) is refused as a LU: the export layer exports a
  temporary clone read-only instead;
* a LU talks to one gateway and retries a dead one every second forever; an
  LU with a command stuck there cannot be deleted ("still active");
* READ CAPACITY keeps the size the LU was opened with: ``recreate_lun``
  re-opens it (sessions survive an idle LU's re-creation);
* each LU opens one connection per I/O thread (16 by default, 17 with the
  probe): a gateway must accept that many per exported volume;
* no UNMAP.

Shared state: tgtd itself.  ``_lock`` serialises this process's tgtadm calls
that pick a free tid, so two exports from one process never race for one tid;
other processes retry on "already exists".
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import threading
from collections.abc import Sequence

from sheepdog_backend.exception import (
    ConfigError,
    InvalidInput,
    TargetBusy,
    TargetCommandFailed,
)
from sheepdog_backend.export.base import (
    LUN,
    LogicalUnit,
    Target,
    check_backing_name,
    check_gateway_socket,
)

LOG = logging.getLogger(__name__)

_TARGET = re.compile(r"^Target (\d+): (\S+)$")
_LUN = re.compile(r"^LUN: (\d+)$")
_SIZE = re.compile(r"^Size: (\d+) MB")
_TID_ATTEMPTS = 8


def backing_path(host: str, port: int, vdi: str) -> str:
    """tgt's Sheepdog backing-store path for ``vdi`` through ``host:port``."""
    return f"tcp:{host}:{port}:{check_backing_name(vdi)}"


def lu_backing(gateway: str, vdi: str, *, socket: str = "") -> str:
    """The backing path of a LU serving ``vdi`` through ``gateway`` (HOST:PORT):
    ``unix:SOCKET:VDI`` when ``socket`` (that same gateway's unix socket) is
    given, else ``tcp:HOST:PORT:VDI``.  Every LU is made and compared with it,
    so a LU of the other form is re-made when the socket is set or unset."""
    if socket:
        return f"unix:{check_gateway_socket(socket)}:{check_backing_name(vdi)}"
    host, _, port = gateway.rpartition(":")
    return backing_path(host, int(port), vdi)


def backing_socket(backing: str) -> str | None:
    """The unix socket a ``unix:PATH:VDI`` backing path goes through; None for
    any other form."""
    if not backing.startswith("unix:"):
        return None
    return backing[len("unix:"):].split(":", 1)[0]


def parse_show(text: str) -> list[Target]:
    """Targets from ``tgtadm --mode target --op show``."""
    targets: list[Target] = []
    current: dict[str, object] | None = None
    section = ""
    lun: dict[str, object] | None = None

    def close_lun() -> None:
        nonlocal lun
        if current is not None and lun is not None:
            luns = current["luns"]
            assert isinstance(luns, list)
            luns.append(LogicalUnit(lun=int(str(lun["lun"])), backing=str(lun.get("path", "")),
                                    size=int(str(lun.get("size", 0))),
                                    readonly=lun.get("readonly") == "Yes"))
        lun = None

    def close_target() -> None:
        close_lun()
        if current is not None:
            targets.append(Target(
                tid=int(str(current["tid"])), iqn=str(current["iqn"]),
                luns=tuple(current["luns"]),  # type: ignore[arg-type]
                accounts=tuple(current["accounts"]),  # type: ignore[arg-type]
                acls=tuple(current["acls"]),  # type: ignore[arg-type]
                sessions=int(str(current["sessions"]))))

    for raw in text.splitlines():
        line = raw.strip()
        match = _TARGET.match(raw)
        if match:
            close_target()
            current = {"tid": match.group(1), "iqn": match.group(2), "luns": [],
                       "accounts": [], "acls": [], "sessions": 0}
            section = ""
            continue
        if current is None or not line:
            continue
        if line.endswith("information:"):
            close_lun()
            section = line[:-len(" information:")]
            continue
        if section == "LUN":
            match = _LUN.match(line)
            if match:
                close_lun()
                lun = {"lun": match.group(1)}
            elif lun is not None:
                size = _SIZE.match(line)
                if size:
                    lun["size"] = int(size.group(1)) * 1000 * 1000
                elif line.startswith("Backing store path:"):
                    lun["path"] = line.split(":", 1)[1].strip()
                elif line.startswith("Readonly:"):
                    lun["readonly"] = line.split(":", 1)[1].strip()
        elif section == "Account":
            accounts = current["accounts"]
            assert isinstance(accounts, list)
            accounts.append(line.split()[0])
        elif section == "ACL":
            acls = current["acls"]
            assert isinstance(acls, list)
            acls.append(line)
        elif section == "I_T nexus" and line.startswith("I_T nexus:"):
            current["sessions"] = int(str(current["sessions"])) + 1
    close_target()
    return targets


class Tgtadm:
    """Runs tgtadm against one tgtd."""

    def __init__(self, *, path: str = "tgtadm", control_port: int = 0,
                 root_helper: str = "", timeout: float = 30.0) -> None:
        if not path:
            raise ConfigError("tgtadm path must not be empty")
        if not 0 <= control_port <= 65535:
            raise ConfigError(f"tgt control port {control_port} is not 0-65535")
        self.path = path
        self.control_port = control_port
        self.root_helper = shlex.split(root_helper) if root_helper else []
        self.timeout = timeout

    def run(self, *args: str) -> str:
        argv = [*self.root_helper, self.path, "--lld", "iscsi"]
        if self.control_port:
            argv += ["--control-port", str(self.control_port)]
        argv += list(args)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except FileNotFoundError:
            raise ConfigError(f"tgtadm not found at {self.path!r}: install tgt or set "
                              "sheepdog_tgtadm_path") from None
        except subprocess.TimeoutExpired:
            raise TargetCommandFailed(f"{shlex.join(argv)} did not answer within "
                                      f"{self.timeout:g} s (is tgtd running?)") from None
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip()
            cls = TargetBusy if "still active" in err else TargetCommandFailed
            raise cls(f"tgtadm {' '.join(self._redacted(args))} failed ({proc.returncode}): "
                      f"{err}", returncode=proc.returncode, stderr=err)
        return proc.stdout

    @staticmethod
    def _redacted(args: Sequence[str]) -> list[str]:
        out = list(args)
        for i, arg in enumerate(out[:-1]):
            if arg == "--password":
                out[i + 1] = "***"
        return out


class TgtTargets:
    """Create, list, check and remove volume targets on one tgtd."""

    def __init__(self, adm: Tgtadm) -> None:
        self.adm = adm
        self._lock = threading.Lock()

    def targets(self) -> list[Target]:
        return parse_show(self.adm.run("--mode", "target", "--op", "show"))

    def find(self, iqn: str) -> Target | None:
        return next((t for t in self.targets() if t.iqn == iqn), None)

    def accounts(self) -> list[str]:
        out = self.adm.run("--mode", "account", "--op", "show")
        return [line.strip() for line in out.splitlines()[1:] if line.strip()]

    def create(self, iqn: str, backing: str, *, readonly: bool = False,
               chap: tuple[str, str] | None = None,
               initiators: Sequence[str] = ()) -> Target:
        """The target ``iqn`` serving ``backing`` as LUN 1; an existing target of
        that IQN is reconfigured to match (idempotent)."""
        with self._lock:
            target = self.find(iqn) or self._new_target(iqn)
        lu = target.lun(LUN)
        if lu is not None and lu.backing != backing:
            self.delete_lun(target.tid)
            lu = None
        if lu is None:
            self._new_lun(target.tid, backing)
        self._set_readonly(target.tid, readonly)
        if chap is not None:
            self._bind_account(target, *chap)
        self._set_acls(target, initiators)
        made = self.find(iqn)
        if made is None:
            raise TargetCommandFailed(f"target {iqn} vanished while being configured")
        return made

    def _new_target(self, iqn: str) -> Target:
        for _ in range(_TID_ATTEMPTS):
            used = {t.tid for t in self.targets()}
            tid = next(n for n in range(1, len(used) + 2) if n not in used)
            try:
                self.adm.run("--mode", "target", "--op", "new", "--tid", str(tid),
                             "--targetname", iqn)
            except TargetCommandFailed as exc:
                if "exist" not in exc.stderr:
                    raise
                found = self.find(iqn)
                if found is not None:  # made meanwhile by another process
                    return found
                continue  # tid taken meanwhile: pick another
            return Target(tid=tid, iqn=iqn)
        raise TargetCommandFailed(f"no free target id for {iqn} after {_TID_ATTEMPTS} tries")

    def _new_lun(self, tid: int, backing: str) -> None:
        self.adm.run("--mode", "logicalunit", "--op", "new", "--tid", str(tid),
                     "--lun", str(LUN), "--bstype", "sheepdog", "--backing-store", backing)

    def _set_readonly(self, tid: int, readonly: bool) -> None:
        self.adm.run("--mode", "logicalunit", "--op", "update", "--tid", str(tid),
                     "--lun", str(LUN), "--params", f"readonly={1 if readonly else 0}")

    def _bind_account(self, target: Target, user: str, secret: str) -> None:
        if user in target.accounts:
            return
        if user not in self.accounts():
            self.adm.run("--mode", "account", "--op", "new", "--user", user,
                         "--password", secret)
        self.adm.run("--mode", "account", "--op", "bind", "--tid", str(target.tid),
                     "--user", user)

    def _set_acls(self, target: Target, initiators: Sequence[str]) -> None:
        for name in initiators:
            if not name or any(c.isspace() for c in name):
                raise InvalidInput(f"initiator name {name!r} is not an IQN")
        current = set(target.acls)
        if initiators:
            want = {f"{n}" for n in initiators}
            for name in sorted(want - current):
                self.adm.run("--mode", "target", "--op", "bind", "--tid", str(target.tid),
                             "--initiator-name", name)
            for name in sorted(current - want - {"ALL"}):  # the ACL is exactly ``initiators``
                self.adm.run("--mode", "target", "--op", "unbind", "--tid", str(target.tid),
                             "--initiator-name", name)
            if "ALL" in current:
                self.adm.run("--mode", "target", "--op", "unbind", "--tid",
                             str(target.tid), "--initiator-address", "ALL")
        elif "ALL" not in current:
            self.adm.run("--mode", "target", "--op", "bind", "--tid", str(target.tid),
                         "--initiator-address", "ALL")

    def unbind_initiator(self, iqn: str, name: str) -> None:
        target = self.find(iqn)
        if target is not None and name in target.acls:
            self.adm.run("--mode", "target", "--op", "unbind", "--tid", str(target.tid),
                         "--initiator-name", name)

    def delete_lun(self, tid: int) -> None:
        self.adm.run("--mode", "logicalunit", "--op", "delete", "--tid", str(tid),
                     "--lun", str(LUN))

    def recreate_lun(self, iqn: str, backing: str, *, readonly: bool) -> Target:
        """Delete and re-add LUN 1 so tgt re-reads the VDI (new size, new
        gateway); TargetBusy when I/O is stuck in it."""
        target = self.find(iqn)
        if target is None:
            raise TargetCommandFailed(f"no target {iqn} on tgtd")
        if target.lun(LUN) is not None:
            self.delete_lun(target.tid)
        self._new_lun(target.tid, backing)
        self._set_readonly(target.tid, readonly)
        made = self.find(iqn)
        assert made is not None
        return made

    def remove(self, iqn: str, *, chap_user: str | None = None) -> bool:
        """Delete the target (and its CHAP account); False when absent."""
        target = self.find(iqn)
        if target is None:
            removed = False
        else:
            if target.lun(LUN) is not None:
                self.delete_lun(target.tid)
            self.adm.run("--mode", "target", "--op", "delete", "--force", "--tid",
                         str(target.tid))
            removed = True
        if chap_user and chap_user in self.accounts():
            try:
                self.adm.run("--mode", "account", "--op", "delete", "--user", chap_user)
            except TargetCommandFailed as exc:  # still bound elsewhere: leave it
                LOG.warning("CHAP account %s kept: %s", chap_user, exc)
        return removed
