"""The 2^24-bit vid bitmaps of READ_VDIS / READ_DEL_VDIS (§8.2).

Bit n lives in byte n >> 3 at position n & 7 (LSB first), which is what an
array of little-endian u64 words gives on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.constants import SD_NR_VDIS, VID_BITMAP_SIZE


class VidBitmap:
    __slots__ = ("_bits",)

    def __init__(self, data: bytes | bytearray | None = None) -> None:
        if data is None:
            self._bits = bytearray(VID_BITMAP_SIZE)
        else:
            if len(data) != VID_BITMAP_SIZE:
                raise ProtocolError(
                    f"a vid bitmap is {VID_BITMAP_SIZE} bytes, got {len(data)}")
            self._bits = bytearray(data)

    @classmethod
    def from_vids(cls, vids: Iterable[int]) -> VidBitmap:
        bitmap = cls()
        for vid in vids:
            bitmap.set(vid)
        return bitmap

    def _check(self, vid: int) -> None:
        if not 0 <= vid < SD_NR_VDIS:
            raise ValueError(f"vid {vid!r} out of range")

    def __contains__(self, vid: object) -> bool:
        if not isinstance(vid, int) or not 0 <= vid < SD_NR_VDIS:
            return False
        return bool(self._bits[vid >> 3] & (1 << (vid & 7)))

    def set(self, vid: int) -> None:
        self._check(vid)
        self._bits[vid >> 3] |= 1 << (vid & 7)

    def clear(self, vid: int) -> None:
        self._check(vid)
        self._bits[vid >> 3] &= ~(1 << (vid & 7)) & 0xFF

    def __iter__(self) -> Iterator[int]:
        """Set vids in ascending order (skips zero bytes quickly)."""
        bits = self._bits
        start = 0
        while True:
            # find the next non-zero byte
            pos = _next_nonzero(bits, start)
            if pos < 0:
                return
            byte = bits[pos]
            for bit in range(8):
                if byte & (1 << bit):
                    yield (pos << 3) | bit
            start = pos + 1

    def first_clear_from(self, vid: int) -> int:
        """First clear bit at index >= vid, or SD_NR_VDIS if none."""
        bits = self._bits
        n = vid
        while n < SD_NR_VDIS:
            byte = bits[n >> 3]
            if byte == 0xFF and n & 7 == 0:
                n += 8
                continue
            if not byte & (1 << (n & 7)):
                return n
            n += 1
        return SD_NR_VDIS

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def __len__(self) -> int:
        """Number of set vids (one big-int popcount, not a Python loop)."""
        return int.from_bytes(self._bits, "little").bit_count()


def _next_nonzero(bits: bytearray, start: int) -> int:
    n = len(bits)
    step = 4096
    i = start
    while i < n:
        end = min(i + step, n)
        if bits.count(0, i, end) != end - i:
            for j in range(i, end):
                if bits[j]:
                    return j
        i = end
    return -1
