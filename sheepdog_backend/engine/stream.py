"""What both ends of the engine's connections share: the bytes of a frame the
kernel has not taken yet.

A frame goes out as its header and payload in one ``sendmsg``; whatever the
kernel does not take is kept as a list of views (``unsent``), copied first
when the caller's buffers will be reused (the loop's scratch buffer), and
sent later, dropping what each ``sendmsg`` took from the front (``advance``).
"""

from __future__ import annotations

Buffer = bytes | bytearray | memoryview


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
