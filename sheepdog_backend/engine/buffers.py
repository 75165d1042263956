"""Reusable payload buffers for the event loop.

How it works: a payload larger than one receive (a 1 MiB write, a 1 MiB read's
answer) needs a buffer of its own, which a fresh ``bytearray`` zero-fills and
the kernel then maps page by page.  ``BufferPool.get(n)`` instead hands out a
view of exactly ``n`` bytes of a kept buffer of the next power-of-two size
class (64 KiB up), or a new one; whoever is done with the bytes gives the
view back with ``put`` (nothing else may hold it then), and at most
``max_bytes`` are kept.  A buffer never given back is simply freed by Python.
The bytes of a reused buffer are stale until overwritten: callers fill the
whole view (``recv_into`` up to its length) before reading it.

Loop thread only: no locks.
"""

from __future__ import annotations

MIN_CLASS = 64 << 10


def _size_class(n: int) -> int:
    size = MIN_CLASS
    while size < n:
        size <<= 1
    return size


class BufferPool:
    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self.kept = 0
        self._free: dict[int, list[bytearray]] = {}
        self.reused = 0  # views handed out from kept buffers
        self.allocated = 0  # new buffers made

    def get(self, n: int) -> memoryview:
        size = _size_class(n)
        free = self._free.get(size)
        if free:
            buf = free.pop()
            self.kept -= size
            self.reused += 1
        else:
            buf = bytearray(size)
            self.allocated += 1
        return memoryview(buf)[:n]

    def put(self, view: memoryview) -> None:
        buf = view.obj
        view.release()
        if not isinstance(buf, bytearray):
            return
        size = len(buf)
        if size < MIN_CLASS or size & (size - 1) or self.kept + size > self.max_bytes:
            return
        self._free.setdefault(size, []).append(buf)
        self.kept += size
