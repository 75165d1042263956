"""Bookkeeping and data helpers for the driver conformance suite.

How it works: every test gets a ``ResourceTracker``.  A test asks it for a
``Volume``/``Snapshot`` *before* creating it on the backend, so the object is
registered even when the create call itself fails half-way.  At teardown the
tracker deletes everything it registered in reverse order (a clone before the
snapshot it came from, a snapshot before its volume), whatever the test's
outcome, and then checks through the data hook that each volume is really
gone.  Anything it cannot delete is reported as a teardown error naming the
leaked resource, so a run against a shared cluster never leaks silently.

Names are unique per run (``run_id`` is random) so several runs against one
real cluster do not collide.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sheepdog_backend.driver.base import Snapshot, Volume, VolumeDataAccess, VolumeDriver
from sheepdog_backend.exception import InvalidInput

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
OBJECT_SIZE = 4 * MIB  # Sheepdog's default data object size

# (offset, length) pairs written by the data checks of a 1 GiB volume: the
# first bytes, a range straddling the first 4 MiB object boundary, one
# straddling a later boundary, one in the middle and the very last bytes.
PATTERN_CHUNKS: tuple[tuple[int, int], ...] = (
    (0, 64 * KIB),
    (OBJECT_SIZE - 32 * KIB, 64 * KIB),
    (5 * OBJECT_SIZE - 4 * KIB, 48 * KIB),
    (512 * MIB + 12 * KIB, 32 * KIB),
    (GIB - 64 * KIB, 64 * KIB),
)


def pattern_bytes(seed: str, length: int) -> bytes:
    """Deterministic, non-zero-looking bytes for ``seed`` (never all zero)."""
    data = random.Random(seed).randbytes(length)
    return data if any(data) else b"\x01" + data[1:]


def write_pattern(data: VolumeDataAccess, volume: Volume, seed: str,
                  chunks: Iterable[tuple[int, int]] = PATTERN_CHUNKS) -> dict[int, bytes]:
    """Write seeded bytes at every chunk; returns {offset: bytes written}."""
    written: dict[int, bytes] = {}
    for offset, length in chunks:
        payload = pattern_bytes(f"{seed}@{offset}", length)
        data.write(volume, offset, payload)
        written[offset] = payload
    return written


def describe_mismatch(got: bytes, want: bytes) -> str:
    if len(got) != len(want):
        return f"read {len(got)} bytes, expected {len(want)}"
    first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    differing = sum(1 for a, b in zip(got, want, strict=True) if a != b)
    what = "zeros" if not any(got) else "other bytes"
    return (f"{differing} of {len(want)} bytes differ, first at +{first} "
            f"(got {got[first]:#04x}, expected {want[first]:#04x}); the range holds {what}")


def check_pattern(data: VolumeDataAccess, volume: Volume,
                  expected: dict[int, bytes]) -> list[str]:
    """Problems found reading back ``expected``; empty when every byte matches."""
    problems = []
    for offset, want in sorted(expected.items()):
        got = data.read(volume, offset, len(want))
        if got != want:
            problems.append(f"{volume_label(volume)} at offset {offset}: "
                            f"{describe_mismatch(got, want)}")
    return problems


def check_zeros(data: VolumeDataAccess, volume: Volume, offset: int,
                length: int) -> list[str]:
    got = data.read(volume, offset, length)
    if got == bytes(length):
        return []
    if len(got) != length:
        return [f"{volume_label(volume)} at offset {offset}: read {len(got)} bytes, "
                f"expected {length} zero bytes"]
    first = next(i for i, b in enumerate(got) if b)
    return [f"{volume_label(volume)} at offset {offset}: expected {length} zero bytes, "
            f"byte +{first} is {got[first]:#04x}"]


def volume_label(volume: Volume) -> str:
    return f"volume {volume.id}" + (f" (name {volume.name!r})" if volume.name else "")


def apply_model_update(volume: Volume, update: dict[str, Any] | None) -> Volume:
    """The volume as a control plane holds it after a driver call returned
    ``update`` (only keys that are Volume fields are applied)."""
    if not update:
        return volume
    known = {f.name for f in fields(volume)} - {"id"}
    changes = {k: v for k, v in update.items() if k in known}
    return replace(volume, **changes) if changes else volume


@dataclass
class ResourceTracker:
    """Registers what a test creates and deletes it all at teardown."""

    driver: VolumeDriver
    run_id: str
    data: VolumeDataAccess | None = None
    _items: list[Volume | Snapshot] = field(default_factory=list)
    _invalid: set[str] = field(default_factory=set)
    _counter: int = 0

    def unique_name(self, label: str) -> str:
        self._counter += 1
        return f"sdconf-{self.run_id}-{label}-{self._counter}"

    def volume(self, size: int = 1, *, name: str | None = None,
               invalid: bool = False) -> Volume:
        """A new, registered, not yet created Volume with a fresh uuid id.

        ``invalid`` marks a volume the driver is expected to refuse (e.g. a
        name over the limit): cleanup then accepts InvalidInput for it."""
        vol = Volume(id=str(uuid.uuid4()), size=size, name=name)
        self._items.append(vol)
        if invalid:
            self._invalid.add(vol.id)
        return vol

    def track(self, item: Volume | Snapshot) -> Volume | Snapshot:
        if item not in self._items:
            self._items.append(item)
        return item

    def create_volume(self, size: int = 1, *, name: str | None = None) -> Volume:
        vol = self.volume(size, name=name)
        self.driver.create_volume(vol)
        return vol

    def snapshot(self, volume: Volume, *, name: str | None = None) -> Snapshot:
        snap = Snapshot(id=str(uuid.uuid4()), volume=volume, name=name)
        self._items.append(snap)
        return snap

    def create_snapshot(self, volume: Volume) -> Snapshot:
        snap = self.snapshot(volume)
        self.driver.create_snapshot(snap)
        return snap

    @property
    def items(self) -> list[Volume | Snapshot]:
        return list(self._items)

    def cleanup(self) -> list[str]:
        """Delete everything registered, newest first; returns what leaked."""
        problems: list[str] = []
        for item in reversed(self._items):
            try:
                if isinstance(item, Snapshot):
                    self.driver.delete_snapshot(item)
                else:
                    self.driver.delete_volume(item)
            except InvalidInput:
                if item.id not in self._invalid:
                    problems.append(f"cleanup could not delete {describe(item)}: "
                                    "the driver called it invalid input")
            except Exception as exc:
                problems.append(f"cleanup could not delete {describe(item)}: "
                                f"{type(exc).__name__}: {exc}")
        if self.data is not None:
            for item in self._items:
                try:
                    still = (self.data.snapshot_exists(item) if isinstance(item, Snapshot)
                             else self.data.exists(item))
                except InvalidInput:
                    if item.id in self._invalid:
                        continue
                    problems.append(f"cleanup could not check {describe(item)}: "
                                    "the data hook called it invalid input")
                    continue
                except Exception as exc:
                    problems.append(f"cleanup could not check {describe(item)}: "
                                    f"{type(exc).__name__}: {exc}")
                    continue
                if still:
                    problems.append(f"cleanup left {describe(item)} behind: delete "
                                    "returned but it still exists")
        self._items.clear()
        return problems


def describe(item: Volume | Snapshot) -> str:
    if isinstance(item, Snapshot):
        name = f" (name {item.name!r})" if item.name else ""
        return f"snapshot {item.id}{name} of {volume_label(item.volume)}"
    return volume_label(item)


def new_run_id() -> str:
    return uuid.uuid4().hex[:10]
