"""What a volume lease is, without I/O: its settings (validated), the
expiry a waiter applies, a held lease and what ``LeaseManager.hold`` yields
(client/lease.py holds the how).

No shared state of its own: a ``Lease`` is changed only by the manager that
holds it, under that manager's lock (``busy``, ``lost``...) or the lease's
own ``lock`` (its record's writes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sheepdog_backend.client.transport import Connection
from sheepdog_backend.exception import InvalidInput

T = TypeVar("T")


class Runner(Protocol):
    """What the manager needs of a client: run a function on a connection
    under the client's retries and deadline (``SheepdogClient.run``)."""

    def run(self, fn: Callable[[Connection], T], *, what: str) -> T: ...


@dataclass(frozen=True)
class LeaseSettings:
    """Seconds: a lease's ``duration``, ``renew_interval``, ``reuse`` window
    and how long a take ``wait``s for another holder."""

    duration: float = 30.0
    renew_interval: float = 10.0
    reuse: float = 1.0
    wait: float = 120.0

    def __post_init__(self) -> None:
        def bad(option: str, why: str) -> InvalidInput:
            exc = InvalidInput(why)
            exc.option = option  # type: ignore[attr-defined]
            return exc
        for option in ("duration", "renew_interval", "reuse", "wait"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or value != value:
                raise bad(option, f"must be a number of seconds >= 0, got {value!r}")
        if self.duration <= 0:
            raise bad("duration", f"must be positive, got {self.duration!r}")
        if not 0 < self.renew_interval <= self.duration / 2:
            raise bad("renew_interval", f"must be more than 0 and at most half the lease "
                      f"duration ({self.duration / 2:g} s), got {self.renew_interval!r}")
        if self.reuse > self.duration / 2:
            raise bad("reuse", f"must be at most half the lease duration "
                      f"({self.duration / 2:g} s), got {self.reuse!r}")
        if self.wait < 2 * self.duration:
            raise bad("wait", f"must be at least twice the lease duration "
                      f"({2 * self.duration:g} s) so that a dead holder's lease can be "
                      f"taken over, got {self.wait!r}")

    @property
    def margin(self) -> float:
        return self.duration / 6


def expiry(fields: dict[str, Any], default: float) -> float:
    """How long a waiter must see a record unchanged: its holder's duration
    (``default`` when the record does not say) plus the margin."""
    dur = fields.get("dur")
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not 0 < dur < 1e6:
        dur = default
    return float(dur) * 7 / 6


@dataclass(eq=False)
class Lease:
    """One generation of one volume's lease, held by this manager."""

    name: str
    gen: int
    slot: int
    copies: int
    doc: dict[str, Any]
    deadline: float  # this process may act until then (monotonic clock)
    sent: float  # when the take or the last renewal was sent
    taken: float
    busy: int = 1
    lost: bool = False
    gone: bool = False  # the operation deleted the volume: release at once
    retry_until: float | None = None  # a failed release is tried again until then
    unsure: bytes | None = None  # a take whose outcome is unknown: the value it wrote
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Held:
    """What ``hold`` yields: the dead holders taken over (volume name, their
    record's fields: op and detail), ``check`` (LeaseLost unless every lease
    is still held: a long step calls it as it goes) and ``gone`` to say a
    volume was deleted."""

    leases: list[Lease]
    takeovers: list[tuple[str, dict[str, Any]]]
    check: Callable[[], None] = lambda: None

    def gone(self, name: str) -> None:
        for lease in self.leases:
            if lease.name == name:
                lease.gone = True
