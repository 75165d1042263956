"""One soak worker: random driver operations on its own volumes, with a model
of what each acknowledged call implies.

Operations (SheepdogDriver, as a control plane and a data path use it):
create_volume, data writes of random checksummed 64 KiB blocks, reads,
create_snapshot, create_volume_from_snapshot, create_cloned_volume,
extend_volume, revert_to_snapshot, delete_volume (its snapshots first).

The model keeps, per volume and per 64 KiB block, the set of contents the
block may hold: one after an acknowledged write, old-or-new after a write
that raised (a typed error leaves it undecided).  A volume whose other
operation raised is *uncertain* and left alone afterwards (a failed call
promises nothing).  ``verify`` reads every block of every certain volume and
snapshot back through gateways without faults and counts a loss for every
block that holds none of its allowed contents, for every certain volume
missing and every deleted one still there.  Runs in a thread of the test or
as a second process (``python -m tests.functional.soak_worker GATEWAYS
SECONDS SEED PREFIX VERIFY_GATEWAYS`` prints its JSON result)."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sheepdog_backend.client.client import SheepdogClient
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.driver.base import Snapshot, Volume
from sheepdog_backend.driver.loader import load_backend
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.exception import SheepdogError

BLOCK = 64 << 10
REGION = 32 << 20  # blocks land in the first 32 MiB of each (1-3 GiB, sparse) volume
GIB = 1 << 30
_ZERO = hashlib.sha256(bytes(BLOCK)).digest()


class RetryCounter:
    """Counts the retries every RetryPolicy of this process waits for."""

    _lock = threading.Lock()
    count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        with cls._lock:
            if cls._installed:
                return
            cls._installed = True
            original = RetryPolicy.backoff

            def backoff(self: RetryPolicy, attempt: int) -> float:
                with cls._lock:
                    cls.count += 1
                return original(self, attempt)

            RetryPolicy.backoff = backoff  # type: ignore[method-assign]


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Model:
    size_gib: int
    blocks: dict[int, set[bytes]] = field(default_factory=dict)  # offset -> digests
    snaps: dict[str, dict[int, set[bytes]]] = field(default_factory=dict)

    def allowed(self, offset: int) -> set[bytes]:
        return self.blocks.get(offset, {_ZERO})

    def copy_blocks(self, source: dict[int, set[bytes]] | None = None) -> dict[int, set[bytes]]:
        return {k: set(v) for k, v in (self.blocks if source is None else source).items()}


def make_driver(gateways: list[str], work: Path) -> SheepdogDriver:
    ini = work / f"soak-{random.randrange(1 << 30)}.conf"
    ini.write_text("[DEFAULT]\nenabled_backends = sd\n\n[sd]\nvolume_driver = sheepdog\n"
                   f"sheepdog_gateways = {','.join(gateways)}\nsheepdog_retry_attempts = 8\n"
                   "sheepdog_retry_deadline = 20\nsheepdog_connect_timeout = 2\n"
                   "sheepdog_request_timeout = 5\n")
    driver = load_backend(str(ini))
    assert isinstance(driver, SheepdogDriver)
    driver.do_setup()
    return driver


@dataclass
class Worker:
    driver: SheepdogDriver
    prefix: str
    rng: random.Random
    volumes: dict[str, Model] = field(default_factory=dict)
    uncertain: set[str] = field(default_factory=set)
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    untyped: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    serial: int = 0

    def _new_name(self) -> str:
        self.serial += 1
        return f"{self.prefix}-{self.serial}"

    def _vol(self, name: str) -> Volume:
        return Volume(id=name, size=self.volumes[name].size_gib, name=name)

    def _snap(self, name: str, tag: str) -> Snapshot:
        return Snapshot(id=tag, volume=self._vol(name), name=tag)

    def step(self) -> None:
        live = sorted(n for n in self.volumes if n not in self.uncertain)
        choices = ["create"] if len(live) < 2 else []
        if live:
            choices += ["write"] * 6 + ["read"] * 3 + ["snapshot", "clone_snapshot",
                                                       "clone_volume", "extend", "revert",
                                                       "delete"]
        op = self.rng.choice(choices or ["create"])
        name = self.rng.choice(live) if live else ""
        try:
            getattr(self, f"_{op}")(name)
            self.ops[op] += 1
        except SheepdogError as exc:
            self.errors[f"{op}:{type(exc).__name__}"] += 1
            if op not in ("write", "read") and name:
                self.uncertain.add(name)  # a failed call promises nothing: leave it
        except Exception as exc:  # an untyped error is a finding
            self.untyped.append(f"{op}: {type(exc).__name__}: {exc}")

    # -- operations ------------------------------------------------------------

    def _create(self, _name: str) -> None:
        name = self._new_name()
        self.uncertain.add(name)
        self.volumes[name] = Model(1)
        self.driver.create_volume(self._vol(name))
        self.uncertain.discard(name)

    def _write(self, name: str) -> None:
        model = self.volumes[name]
        offset = self.rng.randrange(REGION // BLOCK) * BLOCK
        data = self.rng.randbytes(BLOCK)
        model.blocks[offset] = model.allowed(offset) | {_digest(data)}
        self.driver.data_access().write(self._vol(name), offset, data)
        model.blocks[offset] = {_digest(data)}

    def _read(self, name: str) -> None:
        model = self.volumes[name]
        offset = self.rng.randrange(REGION // BLOCK) * BLOCK
        got = _digest(self.driver.data_access().read(self._vol(name), offset, BLOCK))
        if got not in model.allowed(offset):
            self.losses.append(f"{name}@{offset}: read none of the acknowledged contents")

    def _snapshot(self, name: str) -> None:
        model = self.volumes[name]
        tag = f"s{self.serial}x{self.rng.randrange(1 << 20)}"
        self.driver.create_snapshot(self._snap(name, tag))
        model.snaps[tag] = model.copy_blocks()

    def _clone_snapshot(self, name: str) -> None:
        model = self.volumes[name]
        if not model.snaps:
            return self._snapshot(name)
        tag = self.rng.choice(sorted(model.snaps))
        target = self._new_name()
        self.uncertain.add(target)
        self.volumes[target] = Model(model.size_gib, model.copy_blocks(model.snaps[tag]))
        self.driver.create_volume_from_snapshot(self._vol(target), self._snap(name, tag))
        self.uncertain.discard(target)

    def _clone_volume(self, name: str) -> None:
        model = self.volumes[name]
        target = self._new_name()
        self.uncertain.add(target)
        self.volumes[target] = Model(model.size_gib, model.copy_blocks())
        self.driver.create_cloned_volume(self._vol(target), self._vol(name))
        self.uncertain.discard(target)

    def _extend(self, name: str) -> None:
        model = self.volumes[name]
        if model.size_gib >= 3:
            return
        self.driver.extend_volume(self._vol(name), model.size_gib + 1)
        model.size_gib += 1

    def _revert(self, name: str) -> None:
        model = self.volumes[name]
        if not model.snaps:
            return self._snapshot(name)
        tag = self.rng.choice(sorted(model.snaps))
        self.driver.revert_to_snapshot(self._vol(name), self._snap(name, tag))
        model.blocks = model.copy_blocks(model.snaps[tag])  # size stays (driver keeps it)

    def _delete(self, name: str) -> None:
        model = self.volumes[name]
        for tag in sorted(model.snaps):
            self.driver.delete_snapshot(self._snap(name, tag))
            del model.snaps[tag]
        self.driver.delete_volume(self._vol(name))
        del self.volumes[name]

    # -- the final check -------------------------------------------------------

    def verify(self, client: SheepdogClient) -> None:
        names = {v.name for v in client.list_vdis()
                 if v.name.startswith(self.prefix + "-") and not v.is_snapshot}
        known = set(self.volumes) | self.uncertain
        certain = set(self.volumes) - self.uncertain
        for name in sorted(certain - names):
            self.losses.append(f"{name}: acknowledged volume missing")
        for name in sorted(names - known):
            self.losses.append(f"{name}: deleted volume still exists")
        for name in sorted(certain & names):
            model = self.volumes[name]
            if client.get_vdi(name).size != model.size_gib * GIB:
                self.losses.append(f"{name}: size is not the acknowledged one")
            self._compare(f"{name}", client.read(name, 0, REGION), model.blocks)
            for tag, blocks in sorted(model.snaps.items()):
                self._compare(f"{name}:{tag}", client.read(name, 0, REGION, tag=tag), blocks)

    def _compare(self, what: str, data: bytes, blocks: dict[int, set[bytes]]) -> None:
        for offset in range(0, REGION, BLOCK):
            if _digest(data[offset:offset + BLOCK]) not in blocks.get(offset, {_ZERO}):
                self.losses.append(f"{what}@{offset}: acknowledged data lost")

    def result(self) -> dict[str, object]:
        return {"ops": dict(self.ops), "errors": dict(self.errors), "untyped": self.untyped,
                "losses": self.losses, "volumes": len(self.volumes),
                "uncertain": len(self.uncertain)}


def run(gateways: list[str], seconds: float, seed: int, prefix: str,
        verify_gateways: list[str]) -> dict[str, object]:
    RetryCounter.install()
    with tempfile.TemporaryDirectory(prefix="soak-") as work:
        driver = make_driver(gateways, Path(work))
        try:
            worker = Worker(driver, prefix, random.Random(seed))
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                worker.step()
        finally:
            driver.close()
    with SheepdogClient(verify_gateways) as checker:
        worker.verify(checker)
    return worker.result()


if __name__ == "__main__":
    gws, secs, seed_, prefix_, verify_gws = sys.argv[1:6]
    out = run(gws.split(","), float(secs), int(seed_), prefix_, verify_gws.split(","))
    out["retries"] = RetryCounter.count
    print(json.dumps(out))
