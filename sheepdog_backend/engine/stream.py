"""What both ends of the engine's connections share: the bytes of a frame the
kernel has not taken yet.

A frame goes out as its header and payload in one ``sendmsg``; whatever the
kernel does not take is kept as a list of views (``unsent``), copied first
when the caller's buffers will be reused (the loop's scratch buffer), and
sent later, dropping what each ``sendmsg`` took from the front (``advance``).
A large payload still arriving is received in one piece where the kernel
allows (``wait_for``: SO_RCVLOWAT).
"""

from __future__ import annotations

import socket

Buffer = bytes | bytearray | memoryview
LOWAT_FROM = 128 << 10  # payloads still missing past this wait for most of it at once
_LOWAT_MAX = 1 << 20


def wait_for(sock: socket.socket, missing: int, *, started: bool = False) -> bool:
    """Have the kernel report ``sock`` readable only once ``missing`` more
    bytes (at most 1 MiB) have arrived: one wake-up and one receive for a
    large payload instead of one per segment.  A payload starts waiting so
    only when more than ``LOWAT_FROM`` is missing; once ``started``, every
    call sets exactly what is still missing (never more than will come: the
    sender has nothing else to send before its next request), and 0 puts
    it back to one byte.  True while set."""
    if not started and missing < LOWAT_FROM:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT,
                        max(1, min(missing, _LOWAT_MAX)))
    except OSError:
        return False
    return missing > 0


def unsent(header: Buffer, payload: Buffer, skip: int, copy: bool) -> list[memoryview]:
    """The parts of ``header`` + ``payload`` after their first ``skip`` bytes
    (copied when ``copy``)."""
    parts: list[memoryview] = []
    for part in (header, payload):
        view = memoryview(part).cast("B")
        if skip >= len(view):
            skip -= len(view)
            continue
        if skip:
            view, skip = view[skip:], 0
        parts.append(memoryview(bytes(view)) if copy else view)
    return parts


def advance(parts: list[memoryview], n: int) -> bool:
    """Drop the ``n`` bytes a send took from the front of ``parts``; True
    when nothing is left."""
    while parts and n >= len(parts[0]):
        n -= len(parts[0])
        parts.pop(0)
    if parts:
        parts[0] = parts[0][n:]
        return False
    return True
