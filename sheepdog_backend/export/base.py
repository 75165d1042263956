"""What every target kind shares: names, credentials, the record kept on the
cluster, and the models a target daemon reports.

* ``target_iqn(prefix, vdi)``: the per-volume IQN.  IQNs allow only lower-case
  letters, digits, ``-``, ``.`` and ``:`` (RFC 3720 3.2.6.1) and 223 bytes, so
  a name that does not fit is folded and suffixed with a hash of the exact
  name: two VDI names never share an IQN.
* ``chap_credentials(key, iqn)``: CHAP user and secret derived with
  HMAC-SHA256 from a configured key, so they survive restarts without a
  database and differ per volume.
* ``ExportRecord``: what is exported, through which gateway (and, central,
  on the tgtd behind which portal), for which initiators and how many
  attachments each has; stored as JSON in a VDI
  attribute (manager.py) so ``sync`` can recreate targets after the daemon
  forgot them and every process sees the same attachments; ``Detached``, what
  ending one of them did; ``connection_data``, what an initiator needs.
* ``check_backing_name`` / ``check_gateway`` / ``check_gateway_socket``: what
  tgt's Sheepdog backing store cannot carry (see tgt.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any

from sheepdog_backend.exception import GatewayUnusable, InvalidInput

LUN = 1  # LUN 0 is tgt's controller; the volume is always LUN 1
MAX_IQN = 223
_IQN_PREFIX = re.compile(r"^(iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*[a-z0-9](:[a-z0-9.:-]*)?"
                         r"|eui\.[0-9a-f]{16}[:.]?)$")
_IQN_ALLOWED = re.compile(r"[^a-z0-9.-]")
# tgt splits its Sheepdog backing-store path on ':' and its parameters on ','
# and '='; whitespace and non-printable bytes do not survive tgtadm's parsing.
_BACKING_FORBIDDEN = re.compile(r"[:,=\s\x00-\x1f\x7f-\U0010ffff]")
# tgt's Sheepdog store copies at most 4 characters of the port (see tgt.py).
MAX_TGT_PORT = 9999
# sun_path holds 108 bytes with its NUL; tgt copies at most 107 of a unix path.
MAX_SOCKET_PATH = 107


def validate_prefix(prefix: str) -> str:
    """The IQN prefix ``iqn.YYYY-MM.reverse.domain:`` or InvalidInput."""
    if not isinstance(prefix, str) or not _IQN_PREFIX.match(prefix):
        raise InvalidInput(f"target prefix {prefix!r} is not an IQN prefix like "
                           "'iqn.2010-10.org.openstack:' (lower case, digits, '.', '-', ':')")
    return prefix


def target_iqn(prefix: str, vdi: str) -> str:
    """The IQN of the target exporting VDI ``vdi``."""
    validate_prefix(prefix)
    if not vdi:
        raise InvalidInput("a VDI name must not be empty")
    folded = _IQN_ALLOWED.sub("-", vdi.lower())
    iqn = prefix + folded
    if folded != vdi or len(iqn) > MAX_IQN:
        digest = hashlib.sha256(vdi.encode("utf-8")).hexdigest()[:12]
        room = MAX_IQN - len(prefix) - len(digest) - 1
        if room < 1:
            raise InvalidInput(f"target prefix {prefix!r} leaves no room for a volume name")
        iqn = f"{prefix}{folded[:room]}-{digest}"
    return iqn


def chap_credentials(key: str, iqn: str) -> tuple[str, str]:
    """(user, secret) for ``iqn``: HMAC-SHA256 of the IQN under ``key``.
    The secret is 24 hex digits (tgt and libiscsi accept 12-255 bytes)."""
    if not key:
        raise InvalidInput("a CHAP key is needed to derive CHAP secrets")
    mac = hmac.new(key.encode("utf-8"), b"chap\0" + iqn.encode("utf-8"),
                   hashlib.sha256).hexdigest()
    return f"sd{mac[:10]}", mac[10:34]


def check_backing_name(vdi: str) -> str:
    """A VDI name tgt's Sheepdog store can open, or InvalidInput saying why."""
    bad = _BACKING_FORBIDDEN.search(vdi)
    if bad:
        raise InvalidInput(f"VDI {vdi!r} cannot be exported through tgt: its Sheepdog "
                           f"backing store cannot carry {bad.group()!r} in a name (':' "
                           "separates fields, ',' and '=' separate parameters; only "
                           "printable ASCII without spaces is passed intact)")
    return vdi


def check_gateway(host: str, port: int) -> tuple[str, int]:
    """A gateway tgt can reach, or GatewayUnusable with the reason."""
    if ":" in host:
        raise GatewayUnusable(f"gateway [{host}]:{port} cannot be used by tgt: its Sheepdog "
                              "backing store splits 'tcp:HOST:PORT:VDI' on ':', so IPv6 "
                              "addresses do not parse; give the node an IPv4 address")
    if not 1 <= port <= MAX_TGT_PORT:
        raise GatewayUnusable(
            f"gateway {host}:{port} cannot be used by tgt: its Sheepdog backing store keeps "
            f"only 4 digits of the port (tcp:{host}:{port} would connect to port "
            f"{str(port)[:4]}); run the gateway on a port <= {MAX_TGT_PORT}")
    return host, port


def check_gateway_socket(path: str) -> str:
    """A unix socket path tgt's Sheepdog backing store can carry
    (``unix:PATH:VDI``), or InvalidInput saying why."""
    if not path.startswith("/"):
        raise InvalidInput(f"gateway socket {path!r} is not an absolute path")
    bad = _BACKING_FORBIDDEN.search(path)
    if bad:
        raise InvalidInput(f"gateway socket {path!r} cannot be used by tgt: its Sheepdog "
                           f"backing store cannot carry {bad.group()!r} in a path (':' "
                           "separates fields, ',' and '=' separate parameters; only "
                           "printable ASCII without spaces is passed intact)")
    if len(path.encode("utf-8")) > MAX_SOCKET_PATH:
        raise InvalidInput(f"gateway socket {path!r} is {len(path.encode('utf-8'))} bytes "
                           f"long: a unix socket path holds at most {MAX_SOCKET_PATH}")
    return path


ANY_INITIATOR = "*"  # the attachments of hosts that named no initiator (ACL: ALL, CHAP only)
RECORD_VERSION = 2
LOCAL_RECORD_VERSION = 3  # version 2 plus ``hosts`` and ``size`` (local export mode)


@dataclass(frozen=True)
class ExportRecord:
    """An export as recorded on the cluster.

    ``vdi`` is the VDI the LU serves (a temporary clone for a snapshot);
    ``source`` is ``{"volume": name, "tag": tag}`` when it is such a clone.
    ``initiators`` is the ACL: the named initiators allowed to log in.
    ``attachments`` counts the attachments per initiator (``ANY_INITIATOR`` for
    those made without a name): one host with two instances of a volume has
    two.  An initiator in the ACL without an attachment was allowed ahead of
    its attachment (Cinder's ``create_export``).  The target lives while any
    attachment does.

    Version 2 adds ``attachments``; ``initiators`` keeps its version-1 meaning,
    so a reader of version 1 still applies the right ACL.  A version-1 record
    reads as one attachment per listed initiator (version 1 counted no
    repeats), or one attachment of any initiator when it lists none.
    """

    vdi: str
    iqn: str
    gateway: str
    readonly: bool = False
    initiators: tuple[str, ...] = ()
    chap: bool = True
    source: dict[str, str] | None = None
    attachments: dict[str, int] = field(default_factory=dict)
    # local export mode (version 3): attachments per compute host, then per
    # initiator; None for a central record.  ``size``: the VDI's size the LUs
    # should show (an extend raises it and the agents re-open their LUs).
    hosts: dict[str, dict[str, int]] | None = None
    size: int = 0
    # central mode: the portal (HOST:PORT) of the tgtd that holds the target,
    # the one of the host whose process exported it; "" in a record written
    # before it was kept (any host then acts on it, as then)
    portal: str = ""

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": RECORD_VERSION, "vdi": self.vdi, "iqn": self.iqn,
                                "gateway": self.gateway, "readonly": self.readonly,
                                "initiators": list(self.initiators), "chap": self.chap,
                                "attachments": dict(self.attachments)}
        if self.source is not None:
            body["source"] = dict(self.source)
        if self.portal:
            body["portal"] = self.portal
        if self.hosts is not None:
            body.update(v=LOCAL_RECORD_VERSION, size=self.size,
                        hosts={h: dict(c) for h, c in self.hosts.items()})
        return json.dumps(body, sort_keys=True).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> ExportRecord:
        try:
            body = json.loads(raw.rstrip(b"\0").decode("utf-8"))
            source = body.get("source")
            initiators = tuple(str(i) for i in body.get("initiators", []))
            counts = body.get("attachments")
            if counts is None:  # version 1
                counts = {i: 1 for i in initiators} if initiators else {ANY_INITIATOR: 1}
            attachments = {str(k): int(n) for k, n in dict(counts).items() if int(n) > 0}
            hosts = body.get("hosts")
            return cls(vdi=str(body["vdi"]), iqn=str(body["iqn"]),
                       gateway=str(body["gateway"]), readonly=bool(body["readonly"]),
                       initiators=initiators, chap=bool(body.get("chap", True)),
                       source=({"volume": str(source["volume"]), "tag": str(source["tag"])}
                               if source else None),
                       attachments=attachments,
                       hosts=None if hosts is None else {
                           str(h): {str(k): int(n) for k, n in dict(c).items() if int(n) > 0}
                           for h, c in dict(hosts).items()},
                       size=int(body.get("size", 0)), portal=str(body.get("portal", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"unreadable export record {raw[:80]!r}: {exc}") from None

    def with_changes(self, **changes: Any) -> ExportRecord:
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values.update(changes)
        return ExportRecord(**values)

    # -- attachments ------------------------------------------------------------

    @property
    def attached(self) -> int:
        """How many attachments the export serves."""
        return sum(self.attachments.values())

    @property
    def acl(self) -> tuple[str, ...]:
        """The initiators to allow on the target; empty: any (with CHAP)."""
        return () if ANY_INITIATOR in self.attachments else self.initiators

    def allowing(self, initiator: str | None) -> ExportRecord:
        """``initiator`` added to the ACL, with no attachment yet."""
        if not initiator or initiator in self.initiators:
            return self
        return self.with_changes(initiators=(*self.initiators, initiator))

    def attaching(self, initiator: str | None) -> ExportRecord:
        """One more attachment of ``initiator`` (None: a host that named none)."""
        key = initiator or ANY_INITIATOR
        counts = dict(self.attachments)
        counts[key] = counts.get(key, 0) + 1
        return self.allowing(initiator).with_changes(attachments=counts)

    def ending(self, initiator: str | None) -> tuple[ExportRecord, str | None]:
        """The record with one attachment of ``initiator`` ended, and the key of
        the attachment that ended (None: none did, and the record is the same).

        ``initiator`` None (a forced detach that names no host) ends an
        attachment of a host that named none, else the only attachment; with
        several named ones it cannot tell which and ends none.  An initiator
        allowed but not attached loses its ACL entry and ends nothing.
        """
        if initiator:
            key = initiator if self.attachments.get(initiator) else None
        elif self.attachments.get(ANY_INITIATOR):
            key = ANY_INITIATOR
        else:
            key = next(iter(self.attachments)) if self.attached == 1 else None
        if key is None:
            if initiator in self.initiators:
                return self.with_changes(initiators=tuple(
                    i for i in self.initiators if i != initiator)), None
            return self, None
        counts = dict(self.attachments)
        counts[key] -= 1
        if not counts[key]:
            del counts[key]
        rec = self.with_changes(attachments=counts)
        if key not in counts and key != ANY_INITIATOR:
            rec = rec.with_changes(initiators=tuple(i for i in rec.initiators if i != key))
        return rec, key

    def unattached(self) -> ExportRecord:
        """Only the initiators that have attachments left in the ACL."""
        return self.with_changes(initiators=tuple(
            i for i in self.initiators if self.attachments.get(i)))

    # -- local export mode: attachments per compute host ---------------------------

    @property
    def is_local(self) -> bool:
        return self.hosts is not None

    def _with_hosts(self, hosts: dict[str, dict[str, int]]) -> ExportRecord:
        """The record with ``hosts`` (empty counts dropped), its totals and ACL
        union following them."""
        hosts = {h: {k: n for k, n in c.items() if n > 0} for h, c in hosts.items()}
        hosts = {h: c for h, c in hosts.items() if c}
        totals: dict[str, int] = {}
        for counts in hosts.values():
            for key, n in counts.items():
                totals[key] = totals.get(key, 0) + n
        return self.with_changes(hosts=hosts, attachments=totals, initiators=tuple(
            sorted(k for k in totals if k != ANY_INITIATOR)))

    def attaching_on(self, host: str, initiator: str | None) -> ExportRecord:
        """One more attachment of ``initiator`` on compute host ``host``."""
        hosts = {h: dict(c) for h, c in (self.hosts or {}).items()}
        counts = hosts.setdefault(host, {})
        key = initiator or ANY_INITIATOR
        counts[key] = counts.get(key, 0) + 1
        return self._with_hosts(hosts)

    def ending_on(self, host: str | None, initiator: str | None
                  ) -> tuple[ExportRecord, tuple[str, str] | None]:
        """The record with one attachment ended and which one (host, key), as
        ``ending`` decides within a host.  ``host`` None (a forced detach
        without a connector) looks at every host: it ends the attachment only
        when exactly one host holds one that fits."""
        hosts = {h: dict(c) for h, c in (self.hosts or {}).items()}
        candidates = [host] if host is not None else list(hosts)
        picks = []
        for name in candidates:
            counts = hosts.get(name, {})
            if initiator:
                key = initiator if counts.get(initiator) else None
            elif counts.get(ANY_INITIATOR):
                key = ANY_INITIATOR
            else:
                key = next(iter(counts)) if sum(counts.values()) == 1 else None
            if key is not None:
                picks.append((name, key))
        if len(picks) != 1:
            return self, None
        name, key = picks[0]
        hosts[name][key] -= 1
        return self._with_hosts(hosts), (name, key)

    def host_view(self, host: str) -> HostExport | None:
        """What compute host ``host``'s target must be; None when the host has
        no attachment of this export."""
        counts = (self.hosts or {}).get(host)
        if not counts:
            return None
        acl = () if ANY_INITIATOR in counts else tuple(sorted(counts))
        return HostExport(vdi=self.vdi, iqn=self.iqn, readonly=self.readonly,
                          chap=self.chap, acl=acl, size=self.size)


@dataclass(frozen=True)
class HostExport:
    """One compute host's target of an export (local mode): the part of the
    record that host's agent applies.  ``stamp`` names this exact content; a
    host's index carries it so the agent re-reads only records that changed."""

    vdi: str
    iqn: str
    readonly: bool
    chap: bool
    acl: tuple[str, ...]
    size: int

    @property
    def stamp(self) -> str:
        text = json.dumps([self.vdi, self.iqn, self.readonly, self.chap, list(self.acl),
                           self.size])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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


def connection_data(rec: ExportRecord, portal: tuple[str, int],
                    chap: tuple[str, str] | None) -> dict[str, Any]:
    """What an initiator needs: portal, IQN, LUN, CHAP credentials."""
    return {"portal": portal, "iqn": rec.iqn, "lun": LUN, "readonly": rec.readonly,
            "chap": chap, "vdi": rec.vdi}


@dataclass(frozen=True)
class LogicalUnit:
    lun: int
    backing: str
    size: int
    readonly: bool


@dataclass(frozen=True)
class Target:
    """A target as the daemon reports it."""

    tid: int
    iqn: str
    luns: tuple[LogicalUnit, ...] = ()
    accounts: tuple[str, ...] = ()
    acls: tuple[str, ...] = ()
    sessions: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def lun(self, number: int = LUN) -> LogicalUnit | None:
        return next((lu for lu in self.luns if lu.lun == number), None)
