"""What runs before every attempt of a client call: the caller's guards, and
typed decoding errors.

How it works: a driver operation that holds volume leases (client/lease.py)
pushes a *guard* - a function that raises when a lease is no longer held -
for the time it runs (``guarded``).  ``SheepdogClient`` wraps each attempt of
each call in ``attempt`` (``typed_attempt``), which first runs every guard the
calling thread pushed: a holder whose lease ran out (it was paused, or could
not renew it) stops before the request it was about to send, also before a
retry of a request whose reply was lost.  A reply that does not decode (a
ValueError or struct.error out of a decoder) becomes ``ProtocolError`` and
its connection is dropped.

Shared state: the guards are per thread (``threading.local``; green threads
under eventlet's monkey patching get their own); nothing else.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sheepdog_backend.client.transport import Connection
from sheepdog_backend.exception import ProtocolError, SheepdogError

T = TypeVar("T")
Check = Callable[[], None]
_DECODE_ERRORS = (ValueError, struct.error, IndexError, OverflowError)
_local = threading.local()


def _guards() -> list[Check]:
    guards: list[Check] | None = getattr(_local, "guards", None)
    if guards is None:
        guards = _local.guards = []
    return guards


@contextmanager
def guarded(check: Check) -> Iterator[None]:
    """Run ``check`` before every client attempt this thread makes in the block."""
    guards = _guards()
    guards.append(check)
    try:
        yield
    finally:
        guards.remove(check)


def check() -> None:
    """Run the calling thread's guards (each raises when its condition fails)."""
    for guard in list(_guards()):
        guard()


def typed_attempt(fn: Callable[[Connection], T], what: str) -> Callable[[Connection], T]:
    """``fn`` after the thread's guards, with a reply that does not decode
    raised as ProtocolError (the pool then drops the connection) instead of a
    bare ValueError."""
    def attempt(conn: Connection) -> T:
        check()
        try:
            return fn(conn)
        except SheepdogError:
            raise
        except _DECODE_ERRORS as exc:
            conn.close()
            raise ProtocolError(f"{what}: a reply from {conn.address} does not decode: "
                                f"{type(exc).__name__}: {exc}") from exc
    return attempt
