"""Volume leases: any number of processes and hosts act on a volume one at a time.

How it works: a lease is a sequence of attribute records on the cluster, one
per generation, taken by exclusive create (lease_records.py; the settings and
the held lease's bookkeeping are lease_model.py).  A ``LeaseManager`` (one
per driver) takes, renews and releases them:

* **take** (``hold``): a lease this manager still holds, idle since its last
  operation and taken less than ``reuse`` seconds ago, is used again without
  a request.  After a release of ours, generation g + 1 is created at once
  (one exclusive create): as we held g until then, nobody else can have acted
  in between if ours is the first record of g + 1.  Otherwise the highest
  generation is looked up (reads only) and g + 1 created when g was
  released; if g is live another process holds it and we wait, polling g and
  g + 1 (reads), until g is released - or until we have seen its record
  unchanged for its duration plus a margin (a sixth of it), measured on our
  own monotonic clock: its holder died or stopped.  Then exactly one waiter
  creates g + 1 (the exclusive create orders them), deletes the dead record
  and reports it to the caller, which finishes or undoes the dead holder's
  operation (``Held.takeovers``).  Wall clocks of different hosts are never
  compared.
* **hold**: a holder may act until its *deadline*, the time it sent the
  create (or its last renewal) plus the duration minus the margin, on its
  monotonic clock.  While a thread holds leases, every request attempt it
  makes first checks them (client/guard.py): a holder paused past its
  deadline raises ``LeaseLost`` before its next step instead of acting on a
  volume another process may have taken over.  A background thread renews
  held leases every ``renew_interval`` (one WRITE_OBJ of the record's value,
  whose counter changes); a renewal counts only when acknowledged before the
  deadline it extends, since a waiter may have judged the lease expired
  after that.
* **release**: at the end of an operation the lease stays held for reuse
  until ``reuse`` seconds after it was taken, then the background thread
  deletes its record (at once when the operation deleted the volume; in the
  caller's thread when ``reuse`` is 0).  A waiter sets a flag in the record
  it waits for (one object write); the thread reads the flags of the leases
  kept for reuse every ``FLAG_POLL`` seconds and releases a wanted one at
  once, and this manager's next take of that volume then lets the waiter go
  first (it waits ``POLL_MAX``, a waiter's longest pause between reads,
  before creating the next generation).  ``close`` releases everything.

Shared state: ``_held`` (volume name -> Lease), ``_released`` (name -> the
last generation we released), ``_yielded`` (name -> when we released it for
a waiter) and ``_queue`` (leases to release) under ``_lock``; a Lease's
record writes under its own ``lock``.  Different volumes' leases are taken,
renewed and released in parallel; the operations on one volume in one
process are serialised by the caller (DriverCore.volume_lock), which makes a
reused lease safe to share.  A forked child starts with fresh locks and
none of the parent's leases (``_reset_after_fork``, registered with
``os.register_at_fork``; ``_MANAGERS`` holds every manager weakly).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sheepdog_backend.client import guard
from sheepdog_backend.client import lease_records as lr
from sheepdog_backend.client.lease_model import Held, Lease, LeaseSettings, Runner, expiry
from sheepdog_backend.client.transport import Connection
from sheepdog_backend.exception import LeaseLost, LeaseTimeout, SheepdogError

__all__ = ["Held", "Lease", "LeaseManager", "LeaseSettings"]

LOG = logging.getLogger(__name__)
T = TypeVar("T")
POLL_FIRST = 0.005  # seconds between a waiter's first reads of a held lease
POLL_MAX = 0.1
FLAG_POLL = 0.02  # seconds between reads of the flags of the leases kept for reuse


_MANAGERS: weakref.WeakSet[LeaseManager] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for manager in list(_MANAGERS):
        manager._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class LeaseManager:
    def __init__(self, client: Runner, settings: LeaseSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, background: bool = True,
                 owner: str | None = None) -> None:
        self.client = client
        self.settings = settings if settings is not None else LeaseSettings()
        self.clock = clock
        self.sleep = sleep
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._background = background
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._held: dict[str, Lease] = {}
        self._released: dict[str, int] = {}
        self._yielded: dict[str, float] = {}
        self._queue: list[Lease] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pid = os.getpid()
        _MANAGERS.add(self)

    # -- taking and holding ----------------------------------------------------

    @contextmanager
    def hold(self, names: Sequence[str], op: str, details: Mapping[str, str] | None = None
             ) -> Iterator[Held]:
        """Hold the leases of ``names`` (taken in sorted order, so two holders
        of the same names never wait for each other) for the block.  Each
        record names ``op`` and the volume's entry of ``details``: what the
        next holder finishes or undoes should this process die holding it."""
        held = Held([], [])
        try:
            for name in sorted(set(names)):
                lease, dead = self._acquire(name, op, (details or {}).get(name, ""))
                held.leases.append(lease)
                if dead is not None:
                    held.takeovers.append((name, dead))

            def check() -> None:
                for lease in held.leases:
                    self.check(lease)
            held.check = check
            with guard.guarded(check):
                yield held
        finally:
            for lease in reversed(held.leases):
                self._finish(lease)

    def check(self, lease: Lease) -> None:
        """LeaseLost unless ``lease`` is still ours to act on."""
        if lease.lost or self.clock() >= lease.deadline:
            lease.lost = True
            raise LeaseLost(f"the lease on volume {lease.name!r} ran out (this process was "
                            f"paused or could not renew it for "
                            f"{self.settings.duration:g} s): nothing more was done; another "
                            "process may have taken the volume over; repeat the operation")

    def _acquire(self, name: str, op: str, detail: str) -> tuple[Lease, dict[str, Any] | None]:
        now = self.clock()
        stale: Lease | None = None
        with self._lock:
            self._after_fork()
            lease = self._held.get(name)
            if lease is not None and lease.busy:  # a nested hold in the same operation
                lease.busy += 1
                return lease, None
            if lease is not None:
                if not lease.lost and now < lease.deadline and \
                        now < lease.taken + self.settings.reuse:
                    lease.busy = 1
                else:
                    stale, lease = self._drop(lease), None
            start = self._released.get(name)
            yielded = now - self._yielded.get(name, -POLL_MAX) < POLL_MAX
        if stale is not None and not self._release(stale):
            with self._lock:
                self._queue.append(stale)
        if lease is not None:
            try:
                self._note(lease, op, detail)
            except BaseException:
                self._finish(lease)
                raise
            return lease, None
        if start is not None and not yielded:
            taken = self._take(name, start + 1, op, detail)
            if taken is not None:
                return taken, None
        return self._wait_and_take(name, op, detail, start or 0,
                                   defer=POLL_MAX if yielded else 0.0)

    def _doc(self, gen: int, op: str, detail: str, n: int = 0) -> dict[str, Any]:
        return {"v": 1, "owner": self.owner, "gen": gen, "op": op, "detail": detail,
                "dur": self.settings.duration, "n": n}

    def _take(self, name: str, gen: int, op: str, detail: str) -> Lease | None:
        """Generation ``gen`` of ``name``'s lease if we made its first record."""
        k = lr.key(name, gen)
        doc = self._doc(gen, op, detail)
        value = lr.encode_value(doc)
        sent: list[bool] = []

        def attempt(conn: Connection) -> tuple[int, int] | None:
            retry = bool(sent)
            sent.append(True)
            made = lr.create(conn, k, value)
            if made is None:
                live = lr.read_chains(conn, [k])[0].live
                if not (retry and live is not None and live.value == value):
                    return None  # another holder's
                made = (live.slot, 0)  # ours: an earlier attempt lost its reply
            if not lr.first_of_gen(conn, k, made[0]):
                lr.delete(conn, k)  # the generation was used while we looked away
                return None
            return made
        start = self.clock()
        try:
            made = self.client.run(attempt, what=f"take the lease of volume {name!r}")
        except SheepdogError:
            if sent:  # the create may have been made: delete it later if it is ours
                with self._lock:
                    self._queue.append(Lease(name, gen, -1, 0, doc, 0.0, 0.0, 0.0, busy=0,
                                             lost=True, unsure=value))
                    self._start_thread()
            raise
        if made is None:
            return None
        lease = Lease(name, gen, made[0], made[1], doc, start + self._valid(), start,
                      self.clock())
        if self.clock() >= lease.deadline:  # the take took longer than the lease lasts
            if not self._release(lease):
                with self._lock:
                    self._queue.append(lease)
            return None
        with self._lock:
            self._held[name] = lease
            self._start_thread()
        return lease

    def _valid(self) -> float:
        return self.settings.duration - self.settings.margin

    def _wait_and_take(self, name: str, op: str, detail: str, start: int, *,
                       defer: float = 0.0) -> tuple[Lease, dict[str, Any] | None]:
        """Take ``name``'s lease, waiting for its holder; ``defer``: seconds to
        let a waiter we released it for go first."""
        settings = self.settings
        end = self.clock() + settings.wait
        if defer:
            self.sleep(defer)
        top = start
        seen: tuple[int, int, bytes] | None = None
        since = 0.0
        poll = POLL_FIRST
        while True:
            # generation top (both its slots: it may have been released) and
            # whether top + 1 exists, in one trip
            chains = self._read_gens(name, [top, top + 1] if top else [1])
            if chains[top + 1].exists:  # taken meanwhile (or we started low): follow it
                top = self._find_top(name, top + 1)
                seen = None
                continue
            live = chains[top].live if top else None
            now = self.clock()
            if live is None:  # released, or never taken
                lease = self._take(name, top + 1, op, detail)
                if lease is not None:
                    return lease, None
                self.sleep(POLL_FIRST)  # another taker made it: read again
            elif seen != (top, live.slot, live.state):
                seen, since = (top, live.slot, live.state), now
                self._want(name, live)
            elif now - since >= expiry(live.fields, settings.duration):
                lease = self._take(name, top + 1, op, detail)
                if lease is not None:
                    LOG.warning("volume %s: took over the expired lease of %s (%s)", name,
                                live.fields.get("owner", "?"), live.fields.get("op", "?"))
                    self._delete(name, top, "delete the expired lease record")
                    return lease, live.fields
            if now >= end:
                holder = live.fields if live is not None else {}
                raise LeaseTimeout(
                    f"volume {name!r} is held by {holder.get('owner', 'another process')} "
                    f"({holder.get('op', 'an operation')}); waited {settings.wait:g} s "
                    "(sheepdog_lease_wait)")
            if live is not None:
                self.sleep(min(poll, max(0.0, end - now)))
                poll = min(poll * 1.5, POLL_MAX, settings.duration / 10)

    def _want(self, name: str, live: lr.Record) -> None:
        """Ask the holder of ``live`` to release it when it only keeps it for reuse."""
        if live.value[-lr.FLAG_SIZE:] == lr.WANTED:
            return
        try:
            self.client.run(lambda c: lr.want(c, live.slot),
                            what=f"ask for the lease of volume {name!r}")
        except SheepdogError as exc:  # it is released at the end of its reuse window anyway
            LOG.info("volume %s: could not flag its lease as wanted: %s", name, exc)

    def _find_top(self, name: str, start: int) -> int:
        return self.client.run(lambda c: lr.find_top(c, name, start),
                               what=f"read the lease of volume {name!r}")

    def _read_gens(self, name: str, gens: list[int]) -> dict[int, lr.Chain]:
        probes = [lr.PROBES] * (len(gens) - 1) + [1]  # the last only: does it exist
        return self.client.run(lambda c: lr.read_gens(c, name, gens, probes),
                               what=f"read the lease of volume {name!r}")

    def _delete(self, name: str, gen: int, what: str, value: bytes | None = None) -> bool:
        """Delete the record of generation ``gen`` (only when its value is
        ``value``, if given); False when that failed (logged: a record left
        live expires)."""
        k = lr.key(name, gen)
        try:
            self.client.run(lambda c: lr.delete(c, k) if value is None
                            else lr.delete_if(c, k, value), what=f"{what} of volume {name!r}")
        except SheepdogError as exc:
            LOG.warning("volume %s: could not %s (generation %d; it expires after its "
                        "duration): %s", name, what, gen, exc)
            return False
        return True

    def _note(self, lease: Lease, op: str, detail: str) -> None:
        """A reused lease's record names the new operation when it has
        something to finish or undo after a crash (``detail``)."""
        if detail and (lease.doc.get("op"), lease.doc.get("detail")) != (op, detail):
            self._rewrite(lease, op=op, detail=detail)
        self.check(lease)

    # -- renewing and releasing -------------------------------------------------

    def _rewrite(self, lease: Lease, **changes: Any) -> None:
        """Rewrite the record (a renewal): it counts when acknowledged before
        the deadline it extends; after the deadline the lease is lost."""
        with lease.lock:
            start = self.clock()
            if lease.lost or start >= lease.deadline:
                lease.lost = True
                return
            doc = dict(lease.doc, **changes, n=int(lease.doc.get("n", 0)) + 1)
            value = lr.encode_value(doc)
            self.client.run(lambda c: lr.rewrite(c, lease.slot, lease.copies, value),
                            what=f"renew the lease of volume {lease.name!r}")
            if self.clock() < lease.deadline:
                lease.doc, lease.sent, lease.deadline = doc, start, start + self._valid()
            else:
                lease.lost = True

    def _finish(self, lease: Lease) -> None:
        """An operation that held ``lease`` ended."""
        now = self.clock()
        sync = False
        with self._lock:
            lease.busy -= 1
            if lease.busy or self._held.get(lease.name) is not lease:
                return
            if lease.lost or lease.gone or now >= lease.taken + self.settings.reuse:
                self._drop(lease)
                sync = not self.settings.reuse or self._thread is None
                if not sync:
                    self._queue.append(lease)
            self._wake.notify_all()
        if sync and not self._release(lease):
            with self._lock:  # the thread tries again
                self._queue.append(lease)
                self._start_thread()

    def _drop(self, lease: Lease) -> Lease:
        """Forget ``lease`` as held (call under ``_lock``); the next take of
        its volume creates the next generation."""
        del self._held[lease.name]
        self._released[lease.name] = lease.gen
        return lease

    def _release(self, lease: Lease) -> bool:
        """Delete ``lease``'s record; False when it failed and is worth trying
        again (until others would take the lease over anyway)."""
        if self._delete(lease.name, lease.gen, "release the lease", lease.unsure):
            return True
        now = self.clock()
        if lease.retry_until is None:
            lease.retry_until = now + expiry({}, self.settings.duration)
        return now >= lease.retry_until

    def maintain(self) -> float | None:
        """Renew the leases due; release the idle ones past their reuse window,
        those another process asks for, and the queued ones; the seconds
        until something is due next (None: nothing held)."""
        now = self.clock()
        settings = self.settings
        with self._lock:
            self._after_fork()
            for lease in list(self._held.values()):
                if not lease.busy and (lease.lost or now >= lease.deadline
                                       or now >= lease.taken + settings.reuse):
                    self._queue.append(self._drop(lease))
            queue, self._queue = self._queue, []
            idle = [lease for lease in self._held.values() if not lease.busy]
            due = [lease for lease in self._held.values()
                   if not lease.lost and now - lease.sent >= settings.renew_interval]
        asked = self._asked_for(queue + idle)
        with self._lock:
            for lease in asked:
                self._yielded[lease.name] = now
                if lease in idle and not lease.busy and self._held.get(lease.name) is lease:
                    queue.append(self._drop(lease))
        failed = [lease for lease in queue if not self._release(lease)]
        with self._lock:
            self._queue.extend(failed)
        for lease in due:
            try:
                self._rewrite(lease)
            except SheepdogError as exc:
                LOG.warning("volume %s: could not renew its lease: %s", lease.name, exc)
        with self._lock:
            times = [lease.sent + settings.renew_interval for lease in self._held.values()]
            times += [min(lease.taken + settings.reuse, now + FLAG_POLL)
                      for lease in self._held.values() if not lease.busy]
            if self._queue:
                times.append(now + FLAG_POLL)  # failed releases
        return max(0.0, min(times) - self.clock()) if times else None

    def _asked_for(self, leases: list[Lease]) -> list[Lease]:
        """The ``leases`` whose record another process flagged as wanted."""
        if not leases:
            return []
        try:
            flags = self.client.run(lambda c: lr.wanted(c, [lease.slot for lease in leases]),
                                    what="read the flags of the leases held")
        except SheepdogError as exc:
            LOG.info("could not read the flags of the leases held: %s", exc)
            return []
        return [lease for lease, flag in zip(leases, flags, strict=True) if flag]

    def _start_thread(self) -> None:
        """The renewing and releasing thread (call under ``_lock``)."""
        if self._background and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, name="sheepdog-leases",
                                            daemon=True)
            self._thread.start()
        self._wake.notify_all()

    def _loop(self) -> None:
        while True:
            try:
                wait = self.maintain()
            except Exception:  # the thread must go on renewing; the next round retries
                LOG.exception("lease maintenance failed")
                wait = self.settings.renew_interval
            with self._lock:
                if self._closed or self._thread is not threading.current_thread():
                    return
                if not self._queue:
                    self._wake.wait(timeout=wait)

    def _after_fork(self) -> None:
        """In a forked child (call under ``_lock``): the parent's leases are not ours."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._held.clear()
            self._released.clear()
            self._yielded.clear()
            self._queue.clear()
            self._thread = None

    def _forked(self) -> None:
        """In a forked child, before anything else runs: fresh locks (the
        parent's thread may have held one at the fork) and no leases."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        with self._lock:
            self._after_fork()

    def close(self) -> None:
        """Stop the thread and release every lease held (idle or not)."""
        with self._lock:
            self._closed = True
            self._after_fork()
            leases = self._queue + list(self._held.values())
            self._queue = []
            self._held.clear()
            thread, self._thread = self._thread, None
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.settings.renew_interval + 5)
        for lease in leases:
            self._release(lease)
