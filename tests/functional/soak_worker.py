"""One soak worker: random volume operations on its own volumes through the
native client, with a model of what each acknowledged call implies.

The model keeps, per volume and per 64 KiB block, the set of contents the
block may hold: one after an acknowledged write, old-or-new after a write
that failed (a typed error leaves it undecided).  A volume or snapshot whose
create/delete/revert failed is *uncertain* and left alone afterwards.
``verify`` reads every block of every certain volume and snapshot back
(through a gateway without faults) and counts a loss for every block that
holds none of its allowed contents, and for every certain volume missing or
extra on the cluster.  Runs in a thread of the test or as a second process
(``python -m tests.functional.soak_worker GATEWAYS SECONDS SEED PREFIX``,
printing its JSON result)."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from sheepdog_backend.client.client import SheepdogClient
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.exception import SheepdogError

BLOCK = 64 << 10
MIB = 1 << 20


class CountingRetry(RetryPolicy):
    """The client's policy, counting the retries it waits for."""

    retries = 0

    def backoff(self, attempt: int) -> float:
        CountingRetry.retries += 1
        return super().backoff(attempt)


@dataclass
class Volume:
    size: int
    blocks: dict[int, set[bytes]] = field(default_factory=dict)  # offset -> digests
    snaps: dict[str, dict[int, set[bytes]]] = field(default_factory=dict)
    snap_sizes: dict[str, int] = field(default_factory=dict)

    def allowed(self, offset: int) -> set[bytes]:
        return self.blocks.get(offset, {_ZERO})


_ZERO = hashlib.sha256(bytes(BLOCK)).digest()


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Worker:
    client: SheepdogClient
    prefix: str
    rng: random.Random
    volumes: dict[str, Volume] = field(default_factory=dict)
    uncertain: set[str] = field(default_factory=set)
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    untyped: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    serial: int = 0

    def _name(self) -> str:
        self.serial += 1
        return f"{self.prefix}-{self.serial}"

    def step(self) -> None:
        live = [n for n in self.volumes if n not in self.uncertain]
        choices = ["create"] if len(live) < 2 else []
        if live:
            choices += ["write"] * 6 + ["read"] * 3 + ["snapshot", "clone", "extend",
                                                       "revert", "delete"]
        op = self.rng.choice(choices or ["create"])
        name = self.rng.choice(live) if live else ""
        try:
            getattr(self, f"_{op}")(name)
            self.ops[op] += 1
        except SheepdogError as exc:
            self.errors[f"{op}:{type(exc).__name__}"] += 1
            if op in ("snapshot", "clone", "extend", "revert", "delete") and name:
                self.uncertain.add(name)  # its state is undecided: leave it alone
        except Exception as exc:
            self.untyped.append(f"{op}: {type(exc).__name__}: {exc}")

    # -- operations (each updates the model for success and for failure) -----

    def _create(self, _name: str) -> None:
        name = self._name()
        self.uncertain.add(name)
        self.volumes[name] = Volume(self.rng.choice([4, 8]) * MIB)
        self.client.create_vdi(name, self.volumes[name].size)
        self.uncertain.discard(name)

    def _write(self, name: str) -> None:
        vol = self.volumes[name]
        offset = self.rng.randrange(vol.size // BLOCK) * BLOCK
        data = self.rng.randbytes(BLOCK)
        vol.blocks[offset] = vol.allowed(offset) | {_digest(data)}
        self.client.write(name, offset, data)
        vol.blocks[offset] = {_digest(data)}

    def _read(self, name: str) -> None:
        vol = self.volumes[name]
        offset = self.rng.randrange(vol.size // BLOCK) * BLOCK
        got = _digest(self.client.read(name, offset, BLOCK))
        if got not in vol.allowed(offset):
            self.losses.append(f"{name}@{offset}: read back none of the acknowledged data")

    def _snapshot(self, name: str) -> None:
        vol = self.volumes[name]
        tag = f"s{self.serial}-{self.rng.randrange(1 << 30)}"
        self.client.snapshot_vdi(name, tag)
        vol.snaps[tag] = {k: set(v) for k, v in vol.blocks.items()}
        vol.snap_sizes[tag] = vol.size

    def _clone(self, name: str) -> None:
        vol = self.volumes[name]
        if not vol.snaps:
            return self._snapshot(name)
        tag = self.rng.choice(sorted(vol.snaps))
        target = self._name()
        self.uncertain.add(target)
        self.volumes[target] = Volume(vol.snap_sizes[tag],
                                      {k: set(v) for k, v in vol.snaps[tag].items()})
        self.client.clone_vdi(name, tag, target)
        self.uncertain.discard(target)

    def _extend(self, name: str) -> None:
        vol = self.volumes[name]
        if vol.size >= 16 * MIB:
            return
        self.client.resize_vdi(name, vol.size + 4 * MIB)
        vol.size += 4 * MIB

    def _revert(self, name: str) -> None:
        vol = self.volumes[name]
        if not vol.snaps:
            return self._snapshot(name)
        tag = self.rng.choice(sorted(vol.snaps))
        snap = vol.snaps[tag]
        undecided = {off: vol.allowed(off) | snap.get(off, {_ZERO})
                     for off in set(vol.blocks) | set(snap)}
        vol.blocks = undecided
        self.client.rollback_vdi(name, tag)
        vol.blocks = {k: set(v) for k, v in snap.items()}
        vol.size = vol.snap_sizes[tag]

    def _delete(self, name: str) -> None:
        vol = self.volumes[name]
        self.uncertain.add(name)
        for tag in sorted(vol.snaps):
            self.client.delete_vdi(name, tag)
            del vol.snaps[tag]
        self.client.delete_vdi(name)
        del self.volumes[name]
        self.uncertain.discard(name)

    # -- the final check -----------------------------------------------------

    def verify(self, client: SheepdogClient) -> None:
        names = {v.name for v in client.list_vdis() if v.name.startswith(self.prefix + "-")}
        certain = {n for n in self.volumes if n not in self.uncertain}
        gone = {n for n in names - set(self.volumes) if n not in self.uncertain}
        for name in sorted(certain - names):
            self.losses.append(f"{name}: acknowledged volume missing")
        for name in sorted(gone):
            self.losses.append(f"{name}: deleted volume still exists")
        for name in sorted(certain & names):
            vol = self.volumes[name]
            data = client.read(name, 0, vol.size)
            for offset in range(0, vol.size, BLOCK):
                if _digest(data[offset:offset + BLOCK]) not in vol.allowed(offset):
                    self.losses.append(f"{name}@{offset}: acknowledged data lost")
            for tag, blocks in sorted(vol.snaps.items()):
                snap = client.read(name, 0, vol.snap_sizes[tag], tag=tag)
                for offset in range(0, len(snap), BLOCK):
                    want = blocks.get(offset, {_ZERO})
                    if _digest(snap[offset:offset + BLOCK]) not in want:
                        self.losses.append(f"{name}:{tag}@{offset}: snapshot data lost")

    def result(self) -> dict[str, object]:
        return {"ops": dict(self.ops), "errors": dict(self.errors), "untyped": self.untyped,
                "losses": self.losses, "volumes": len(self.volumes),
                "retries": CountingRetry.retries}


def run(gateways: list[str], seconds: float, seed: int, prefix: str,
        verify_gateways: list[str] | None = None) -> dict[str, object]:
    retry = CountingRetry(deadline=20.0)
    with SheepdogClient(gateways, request_timeout=5.0, connect_timeout=2.0,
                        retry=retry) as client:
        worker = Worker(client, prefix, random.Random(seed))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            worker.step()
    with SheepdogClient(verify_gateways or gateways) as checker:
        worker.verify(checker)
    return worker.result()


if __name__ == "__main__":
    gws, secs, seed_, prefix_, verify_gws = sys.argv[1:6]
    print(json.dumps(run(gws.split(","), float(secs), int(seed_), prefix_,
                         verify_gws.split(","))))
