"""Compute hosts on the cluster (local export mode): registrations, per-host
indexes and acknowledgements.

How it works: everything lives in attributes of one small control VDI,
``CONTROL_VDI``, made by the first agent that registers (it is never
written to or exported; 4 MiB, no data object).  Per host NAME:

* ``sheepdog-backend.host.NAME``: the registration, written by the host's
  agent when it starts: ``{"v": 1, "host", "portal": "IP:PORT", "gateway":
  "IP:PORT", "agent": "hostname:pid", "started": unix time}``.  The portal is
  what initiators log in to; the gateway is what that host's LUs go through.
* ``sheepdog-backend.host.NAME.index``: ``{"v": 1, "gen": G, "exports":
  {VDI: STAMP}}``: every VDI whose export record gives the host an
  attachment, with the stamp of the host's part of it (base.HostExport).
  Writers (initialize/terminate_connection from any process) change it under
  the lock ``...index.lock`` (clusterlock.py) and raise ``gen`` each time.
* ``sheepdog-backend.host.NAME.ack``: ``{"v": 1, "gen": G, "failed": {VDI:
  why}, "at": unix time, "agent"}``, written by the agent once its tgtd
  matches index generation G (``failed``: the targets it could not make).

The agent polls the index with one direct read of its attribute object (two
pipelined READ_OBJ, not the cluster-wide GET_VDI_ATTR: client/survey.py);
writers wait for the ack the same way.  A host name is 1-200 characters of
letters, digits, ``.``, ``-`` and ``_`` (what Nova's ``CONF.host`` holds).
No state is kept here: every call reads afresh.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sheepdog_backend.exception import ExportHostUnknown, InvalidInput, VdiExists
from sheepdog_backend.export import clusterlock

if TYPE_CHECKING:
    from sheepdog_backend.client import SheepdogClient

CONTROL_VDI = "sheepdog-backend.hosts"
CONTROL_SIZE = 4 << 20
T = TypeVar("T")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def check_host(host: object) -> str:
    """A host name that can be one, or ExportHostUnknown saying why not."""
    if not isinstance(host, str) or not _HOST.match(host):
        raise ExportHostUnknown(f"compute host name {host!r} is not 1-200 letters, digits, "
                                "'.', '-' or '_' starting with a letter or digit")
    return host


def registration_key(host: str) -> str:
    return f"sheepdog-backend.host.{check_host(host)}"


def index_key(host: str) -> str:
    return registration_key(host) + ".index"


def ack_key(host: str) -> str:
    return registration_key(host) + ".ack"


def _decoded(raw: bytes, what: str, build: Callable[[dict[str, Any]], T]) -> T:
    """``build`` of the JSON object in ``raw``; InvalidInput naming ``what``
    when it is not one or lacks what ``build`` needs."""
    try:
        body = json.loads(raw.rstrip(b"\0").decode("utf-8"))
        if not isinstance(body, dict):
            raise TypeError("not an object")
        return build(body)
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidInput(f"unreadable {what} {raw[:80]!r}: {exc}") from None


@dataclass(frozen=True)
class Registration:
    host: str
    portal: tuple[str, int]
    gateway: str
    agent: str = ""
    started: float = 0.0

    def encode(self) -> bytes:
        return json.dumps({"v": 1, "host": self.host,
                           "portal": f"{self.portal[0]}:{self.portal[1]}",
                           "gateway": self.gateway, "agent": self.agent,
                           "started": self.started}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Registration:
        def build(body: dict[str, Any]) -> Registration:
            address, _, port = str(body["portal"]).rpartition(":")
            return cls(host=str(body["host"]), portal=(address, int(port)),
                       gateway=str(body["gateway"]), agent=str(body.get("agent", "")),
                       started=float(body.get("started", 0.0)))
        return _decoded(raw, "host registration", build)


@dataclass(frozen=True)
class HostIndex:
    gen: int = 0
    exports: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"v": 1, "gen": self.gen, "exports": dict(self.exports)},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> HostIndex:
        return cls() if not raw else _decoded(raw, "host index", lambda body: cls(
            gen=int(body["gen"]),
            exports={str(k): str(v) for k, v in dict(body["exports"]).items()}))


@dataclass(frozen=True)
class HostAck:
    gen: int = -1
    failed: Mapping[str, str] = field(default_factory=dict)
    at: float = 0.0
    agent: str = ""

    def encode(self) -> bytes:
        return json.dumps({"v": 1, "gen": self.gen, "failed": dict(self.failed),
                           "at": self.at, "agent": self.agent}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> HostAck:
        return cls() if not raw else _decoded(raw, "agent acknowledgement", lambda body: cls(
            gen=int(body["gen"]),
            failed={str(k): str(v) for k, v in dict(body["failed"]).items()},
            at=float(body.get("at", 0.0)), agent=str(body.get("agent", ""))))


# -- reading (direct reads of attribute objects: no cluster operation) ---------


def _read(client: SheepdogClient, key: str) -> bytes | None:
    return client.survey(CONTROL_VDI, keys=(key,), look=False).attrs.get(key)


def registration(client: SheepdogClient, host: str) -> Registration:
    """The host's registration, or ExportHostUnknown (no agent registered it)."""
    raw = _read(client, registration_key(host))
    if raw is None:
        raise ExportHostUnknown(
            f"no agent registered compute host {host!r} on this cluster: run "
            f"'sheepdog-backend agent --host {host}' there (see the README), or check the "
            "connector's host name")
    return Registration.decode(raw)


def index(client: SheepdogClient, host: str) -> HostIndex:
    return HostIndex.decode(_read(client, index_key(host)))


def ack(client: SheepdogClient, host: str) -> HostAck:
    return HostAck.decode(_read(client, ack_key(host)))


# -- writing -----------------------------------------------------------------------


def register(client: SheepdogClient, reg: Registration) -> None:
    """Record ``reg`` (making the control VDI when it is missing)."""
    if client.find_vdi(CONTROL_VDI) is None:
        try:
            client.create_vdi(CONTROL_VDI, CONTROL_SIZE)
        except VdiExists:  # another agent made it meanwhile
            pass
    client.set_attr(CONTROL_VDI, registration_key(reg.host), reg.encode())


def acknowledge(client: SheepdogClient, host: str, done: HostAck) -> None:
    client.set_attr(CONTROL_VDI, ack_key(host), done.encode())


def update_index(client: SheepdogClient, host: str, vdi: str, stamp: str | None) -> int:
    """Set (``stamp``) or drop (None) ``vdi`` in the host's index under its
    lock; the index's new generation (the old one when nothing changed)."""
    with clusterlock.held(client, CONTROL_VDI, index_key(host) + ".lock"):
        current = index(client, host)
        exports = dict(current.exports)
        if stamp is None:
            if exports.pop(vdi, None) is None:
                return current.gen
        elif exports.get(vdi) == stamp:
            return current.gen
        else:
            exports[vdi] = stamp
        updated = HostIndex(gen=current.gen + 1, exports=exports)
        raw = updated.encode()
        if len(raw) > 65536:
            raise InvalidInput(f"compute host {host!r} exports too many volumes for its "
                               "index (65,536 bytes of names); detach some first")
        client.set_attr(CONTROL_VDI, index_key(host), raw)
        return updated.gen


def wait_for_ack(client: SheepdogClient, host: str, gen: int, timeout: float,
                 *, interval: float = 0.1) -> HostAck | None:
    """The host's acknowledgement of generation ``gen`` or later; None when
    none came within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done = ack(client, host)
        if done.gen >= gen:
            return done
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
