"""Issue 13's table: the real `dog` CLI, the raw request floor and our driver,
side by side in one run, on real sheep nodes, a cluster the user runs, and the
embedded server (next to a plain file write+fsync of the same bytes).

Jobs (each timed for dog, floor and ours within the same round; rounds repeat
and the table shows medians, the ratios' per-round range in brackets):

* lifecycle: create 1 GiB, snapshot, clone, extend the clone, show the volume
  (with its snapshots), delete the clone, the snapshot, the volume; broken
  down per operation with the requests each side sends (round trips, requests,
  requests the node makes durable before answering: see _counting.py);
  ``--life-rounds`` rounds, the order of dog, floor and ours rotating (the
  side that runs after another meets the node still removing the objects of
  the family the other just deleted);
* import: ``--mib`` MiB of random bytes from a file into an empty 1 GiB volume
  (dog vdi write < file; ours copy_image_to_volume), default io_window and 1
  (window 1 in the first round only); ``--rounds`` rounds, the order of dog,
  floor and ours rotating, each after an ``os.sync``;
* export: that 1 GiB volume to a file (dog vdi read > file; ours
  copy_volume_to_image, sparse: holes where the volume is unallocated or
  zero; the file's allocated size is printed);
* list: ``--vdis`` live VDIs (dog vdi list; ours list_volumes);
* snapshot + clone of a volume holding the imported data, next to the same on
  an empty volume (the cost must not depend on the data): ``--sc-rounds``
  interleaved pairs, both volumes snapshotted every round;
* the volume lease (issue 26): a take and a release on their own, without
  reuse, ``--life-rounds`` of each.

The floors are in _floors.py.  Targets (_targets.py): ``--config FILE
[--backend NAME]`` for a cluster you run (it creates VDIs named bench-PID-*
and deletes them afterwards); otherwise real sheep nodes started here when
sheep and dog are found (SHEEPDOG_INTEROP_BIN, SHEEPDOG_SHEEP/SHEEPDOG_DOG or
PATH), then the embedded server.  The numbers are as noisy as the machine:
read the ratios, which are measured side by side.

Run: .venv/bin/python benchmarks/bench_sheep.py [--rounds N] [--life-rounds L] [--mib M]
     [--sc-rounds P] [--vdis N] [--target auto|real|embedded] [--config FILE [--backend NAME]]
"""

# Every lambda below runs within the loop iteration that made it:
# ruff: noqa: B023
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import _floors as floor  # type: ignore[import-not-found]
from _counting import Counts, counting  # type: ignore[import-not-found]
from _targets import (  # type: ignore[import-not-found]
    Target,
    config_target,
    embedded_target,
    have_real_sheep,
    make_driver,
    real_sheep_target,
)

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.lease import LeaseManager, LeaseSettings
from sheepdog_backend.client.transport import Connection, parse_address
from sheepdog_backend.driver.base import GiB, Snapshot, Volume

MiB = 1 << 20
STEPS = ("create 1G", "snapshot", "clone", "extend clone", "show", "delete clone",
         "delete snapshot", "delete volume")


@dataclass
class Sample:
    """One job's seconds per round for dog, floor, ours; counts of one round."""

    dog: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    ours_counts: Counts | None = None
    floor_counts: Counts | None = None


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio_range(a: list[float], b: list[float]) -> str:
    rs = [x / y for x, y in zip(a, b, strict=False) if y]
    if not rs:
        return "-"
    return f"{statistics.median(rs):.2f} [{min(rs):.2f}-{max(rs):.2f}]"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_counted(fn: Callable[[], object]) -> tuple[float, Counts]:
    with counting() as counts:
        took = timed(fn)
    return took, counts


class Bench:
    def __init__(self, target: Target, root: str, prefix: str, rounds: int, mib: int,
                 vdis: int, *, no_dog: bool = False, local_disk: bool = False,
                 life_rounds: int = 0) -> None:
        self.t = target
        self.root = root
        self.p = prefix
        self.rounds = rounds
        self.life_rounds = life_rounds or rounds
        self.mib = mib
        self.vdis = vdis
        self.raw = Connection(parse_address(target.gateway), request_timeout=300)
        self.copies = target.copies
        self.window = int(target.driver.configuration.sheepdog_io_window)
        self.dog = target.dog is not None and not no_dog
        self.made: list[tuple[str, str]] = []  # (name, tag) left for cleanup
        # the node's store is on this machine's disk: time a plain file write of
        # the import's bytes (fsync every 4 MiB, as a node syncs each object) in
        # every import round, the disk's own bound next to the floor and ours
        self.local_disk = local_disk
        self.plain: list[float] = []

    def close(self) -> None:
        self.raw.close()

    # -- lifecycle -----------------------------------------------------------

    def lifecycle(self) -> dict[str, Sample]:
        """``life_rounds`` rounds; within each, dog, floor and ours run the
        eight steps one side after the other, in an order that rotates every
        round: what a side leaves the node doing (a deleted family's objects
        are removed in the background) then delays each side alike, rather
        than always the one that runs after it."""
        out = {s: Sample() for s in STEPS}
        d = self.t.driver
        size = GiB
        for r in range(self.life_rounds):
            sides: list[Callable[[], None]] = []
            if self.dog:
                n, c = f"{self.p}d{r}", f"{self.p}dc{r}"
                dog_cmds = [("vdi", "create", n, "1G"), ("vdi", "snapshot", "-s", "s", n),
                            ("vdi", "clone", "-s", "s", n, c), ("vdi", "resize", c, "2G"),
                            ("vdi", "list", n), ("vdi", "delete", c),
                            ("vdi", "delete", "-s", "s", n), ("vdi", "delete", n)]

                def run_dog(cmds: list[tuple[str, ...]] = dog_cmds) -> None:
                    for step, cmd in zip(STEPS, cmds, strict=True):
                        out[step].dog.append(self.t.run_dog(*cmd))
                sides.append(run_dog)
            n, c = f"{self.p}f{r}", f"{self.p}fc{r}"
            raw = self.raw
            floors: list[Callable[[], object]] = [
                lambda: floor.create(raw, n, size, self.copies),
                lambda: floor.snapshot(raw, n, "s", size, self.copies),
                lambda: floor.clone(raw, n, "s", c, size, self.copies),
                lambda: floor.resize(raw, c, 2 * size, self.copies),
                lambda: floor.show(raw, n, self.window),
                lambda: floor.delete(raw, c, 2 * size, self.copies),
                lambda: floor.delete(raw, n, size, self.copies, "s"),
                lambda: floor.delete(raw, n, size, self.copies)]

            def run_floor(fns: list[Callable[[], object]] = floors) -> None:
                for step, fn in zip(STEPS, fns, strict=True):
                    took, counts = timed_counted(fn)
                    out[step].floor.append(took)
                    out[step].floor_counts = counts
            sides.append(run_floor)
            vol = Volume(id=f"o{r}", size=1, name=f"{self.p}o{r}")
            snap = Snapshot(id="s", volume=vol, name="s")
            cvol = Volume(id=f"oc{r}", size=1, name=f"{self.p}oc{r}")
            ours: list[Callable[[], object]] = [
                lambda: d.create_volume(vol), lambda: d.create_snapshot(snap),
                lambda: d.create_volume_from_snapshot(cvol, snap),
                lambda: d.extend_volume(cvol, 2), lambda: d.describe_volume(vol),
                lambda: d.delete_volume(cvol), lambda: d.delete_snapshot(snap),
                lambda: d.delete_volume(vol)]

            def run_ours(fns: list[Callable[[], object]] = ours) -> None:
                for step, fn in zip(STEPS, fns, strict=True):
                    took, counts = timed_counted(fn)
                    out[step].ours.append(took)
                    out[step].ours_counts = counts
            sides.append(run_ours)
            k = r % len(sides)
            for side in sides[k:] + sides[:k]:
                side()
        return out

    # -- data ----------------------------------------------------------------

    def data(self, source: str, payload: bytes) -> dict[str, Sample]:
        """import / export (default window and 1), per round on fresh volumes."""
        out = {k: Sample() for k in ("import", "import (window 1)", "export",
                                     "export (window 1)")}
        d1 = make_driver(self.t.gateway, io_window=1)
        self.sparse: list[tuple[int, int]] = []  # (file size, allocated bytes)
        try:
            for r in range(self.rounds):
                names = {k: f"{self.p}{k}{r}" for k in ("dimp", "fimp", "f1imp", "oimp",
                                                            "o1imp")}
                w1 = r == 0  # window 1 once: it shows the cost, the default is measured
                for key, name in names.items():
                    if (key != "dimp" or self.dog) and (w1 or "1" not in key):
                        floor.create(self.raw, name, GiB, self.copies)
                        self.made.append((name, ""))
                imports: list[Callable[[], None]] = []
                if self.dog:
                    def dog_import() -> None:
                        out["import"].dog.append(self.t.run_dog("vdi", "write", names["dimp"],
                                                                stdin=source))
                        if w1:
                            out["import (window 1)"].dog.append(out["import"].dog[-1])
                    imports.append(dog_import)

                def floor_import() -> None:
                    took, counts = timed_counted(lambda: floor.write_volume(
                        self.raw, names["fimp"], payload, self.copies, self.window))
                    out["import"].floor.append(took)
                    out["import"].floor_counts = counts
                    if w1:
                        os.sync()
                        out["import (window 1)"].floor.append(timed(lambda: floor.write_volume(
                            self.raw, names["f1imp"], payload, self.copies, 1)))
                imports.append(floor_import)

                def our_import() -> None:
                    for key, drv, row in (("oimp", self.t.driver, "import"),
                                          ("o1imp", d1, "import (window 1)"))[:2 if w1 else 1]:
                        vol = Volume(id=key, size=1, name=names[key])
                        if key != "oimp":
                            os.sync()
                        took, counts = timed_counted(
                            lambda: drv.copy_image_to_volume(vol, source))
                        out[row].ours.append(took)
                        out[row].ours_counts = counts
                imports.append(our_import)
                k = r % len(imports)  # the order rotates, as in the lifecycle
                for side in imports[k:] + imports[:k]:
                    os.sync()  # each import starts with no writeback of the one before
                    side()
                if self.local_disk:
                    self.plain.append(plain_write(self.root, payload, every=True))
                os.sync()
                target = os.path.join(self.root, "export.raw")
                if self.dog:
                    out["export"].dog.append(self.t.run_dog("vdi", "read", names["dimp"],
                                                            stdout=target))
                    if w1:
                        out["export (window 1)"].dog.append(out["export"].dog[-1])
                    os.unlink(target)
                took, counts = timed_counted(lambda: floor.read_volume(
                    self.raw, names["fimp"], GiB, self.window))
                out["export"].floor.append(took)
                out["export"].floor_counts = counts
                if w1:
                    out["export (window 1)"].floor.append(timed(lambda: floor.read_volume(
                        self.raw, names["f1imp"], GiB, 1)))
                for key, drv, row in (("oimp", self.t.driver, "export"),
                                      ("o1imp", d1, "export (window 1)"))[:2 if w1 else 1]:
                    vol = Volume(id=key, size=1, name=names[key])
                    took, counts = timed_counted(lambda: drv.copy_volume_to_image(vol, target))
                    out[row].ours.append(took)
                    out[row].ours_counts = counts
                    st = os.stat(target)
                    self.sparse.append((st.st_size, st.st_blocks * 512))
                    os.unlink(target)
        finally:
            d1.close()
        return out

    # -- snapshot + clone: full vs empty -------------------------------------

    def snap_clone(self, rounds: int) -> tuple[Sample, Sample]:
        """(full, empty): snapshot + clone of the round-0 imported volumes next
        to the same on volumes that stay empty, ``rounds`` pairs.  Both kinds
        are snapshotted again every round (equal snapshot chains), the order
        within a pair alternates and dog, floor and ours take turns in each,
        so drifting load hits both kinds alike; the per-pair ratios' median
        and the ratio of the medians are what the report shows."""
        full, empty = Sample(), Sample()
        d = self.t.driver
        for side in ("d", "f", "o"):
            if side != "d" or self.dog:
                floor.create(self.raw, f"{self.p}{side}e", GiB, self.copies)
                self.made.append((f"{self.p}{side}e", ""))
        kinds = ((full, "imp0"), (empty, "e"))
        for r in range(rounds):
            for sample, src in kinds if r % 2 == 0 else kinds[::-1]:
                tag = f"sc{r}"
                if self.dog:
                    dn = f"{self.p}d{src}"
                    sample.dog.append(
                        self.t.run_dog("vdi", "snapshot", "-s", tag, dn)
                        + self.t.run_dog("vdi", "clone", "-s", tag, dn, f"{dn}-c{r}"))
                    self.made += [(f"{dn}-c{r}", ""), (dn, tag)]
                fn = f"{self.p}f{src}"
                def raw_snap_clone() -> None:
                    floor.snapshot(self.raw, fn, tag, GiB, self.copies)
                    floor.clone(self.raw, fn, tag, f"{fn}-c{r}", GiB, self.copies)
                took, counts = timed_counted(raw_snap_clone)
                sample.floor.append(took)
                sample.floor_counts = counts
                self.made += [(f"{fn}-c{r}", ""), (fn, tag)]
                vol = Volume(id="x", size=1, name=f"{self.p}o{src}")
                snap = Snapshot(id=tag, volume=vol, name=tag)
                cvol = Volume(id="c", size=1, name=f"{self.p}o{src}-c{r}")
                def snap_clone() -> None:
                    d.create_snapshot(snap)
                    d.create_volume_from_snapshot(cvol, snap)
                took, counts = timed_counted(snap_clone)
                sample.ours.append(took)
                sample.ours_counts = counts
                self.made += [(cvol.name or "", ""), (vol.name or "", tag)]
        return full, empty

    # -- list ----------------------------------------------------------------

    def listing(self) -> tuple[Sample, int]:
        client = self.t.driver.client
        live = len(client.list_vdis())
        names = [f"{self.p}l{i}" for i in range(max(0, self.vdis - live))]
        start = time.perf_counter()
        floor.pipeline(self.raw, (rq.new_vdi(n, 64 * MiB, copies=self.copies,
                                             block_size_shift=floor.SHIFT) for n in names),
                       self.window)
        self.setup_list = (len(names), time.perf_counter() - start)
        self.made += [(n, "") for n in names]
        live = len(client.list_vdis())
        sample = Sample()
        for _ in range(self.rounds):
            if self.dog:
                sample.dog.append(self.t.run_dog("vdi", "list"))
            took, counts = timed_counted(lambda: floor.list_all(self.raw, self.window))
            sample.floor.append(took)
            sample.floor_counts = counts
            took, counts = timed_counted(self.t.driver.list_volumes)
            sample.ours.append(took)
            sample.ours_counts = counts
        return sample, live

    def lease_cost(self) -> dict[str, list[float]]:
        """Seconds of a volume lease's take and release (issue 26) on fresh
        names, ``life_rounds`` of each, without reuse: a take that knows
        nothing of the volume (a read trip, then the exclusive create), one
        right after a release of ours (the exclusive create alone), and the
        release (a delete); a reused lease costs nothing."""
        leases = LeaseManager(self.t.driver.client, LeaseSettings(reuse=0.0),
                              background=False)
        out: dict[str, list[float]] = {"cold take": [], "take": [], "release": []}
        try:
            for r in range(self.life_rounds):
                for kind in ("cold take", "take"):
                    start = time.perf_counter()
                    with leases.hold([f"{self.p}lease{r}"], "bench"):
                        out[kind].append(time.perf_counter() - start)
                        start = time.perf_counter()
                    out["release"].append(time.perf_counter() - start)
        finally:
            leases.close()
        return out

    def cleanup(self) -> None:
        """Delete what this run made (clones first, then snapshots, then bases)."""
        client = self.t.driver.client
        for name, tag in sorted(set(self.made), key=lambda nt: ("-c" not in nt[0], not nt[1])):
            try:
                client.delete_vdi(name, tag)
            except Exception:  # already gone; best effort on the user's cluster
                pass


# -- plain file next to the embedded server ----------------------------------


def plain_write(root: str, payload: bytes, *, every: bool) -> float:
    """Seconds to write ``payload`` to a new file with an fsync after every
    4 MiB (``every``: as a node syncs each object) or one at the end."""
    path = os.path.join(root, "plain.raw")
    os.sync()
    start = time.perf_counter()
    with open(path, "wb") as f:
        for pos in range(0, len(payload), 4 * MiB):
            f.write(payload[pos:pos + 4 * MiB])
            if every:
                f.flush()
                os.fsync(f.fileno())
        f.flush()
        os.fsync(f.fileno())
    took = time.perf_counter() - start
    os.unlink(path)
    return took


# -- report ------------------------------------------------------------------


def ms(x: float) -> str:
    return f"{x * 1e3:8.1f}" if x == x else f"{'-':>8}"


def rate(mib: float, xs: list[float]) -> str:
    return f"{mib / med(xs):7.0f}" if xs else f"{'-':>7}"


def counts_text(c: Counts | None) -> str:
    return f"{c.round_trips:3d} {c.total:4d} {c.durable:3d}" if c else f"{'-':>12}"


def report(b: Bench, life: dict[str, Sample], data: dict[str, Sample],
           listed: tuple[Sample, int], sc: tuple[Sample, Sample],
           plain: float | None) -> None:
    print(f"\n== {b.t.label}; io_window {b.window}; {b.rounds} rounds ({b.life_rounds} of "
          "the lifecycle): medians, [min-max] of the per-round ratio")
    if not b.dog:
        print("   (no dog: the dog column is empty)")
    total = Sample(dog=[sum(x) for x in zip(*(life[s].dog for s in STEPS), strict=True)],
                   floor=[sum(x) for x in zip(*(life[s].floor for s in STEPS), strict=True)],
                   ours=[sum(x) for x in zip(*(life[s].ours for s in STEPS), strict=True)])
    print(f"{'job':26} {'dog ms':>8} {'floor ms':>8} {'ours ms':>8}   "
          f"{'ours/dog (time)':18} {'ours/floor (time)':18} goal (time ratios)")
    size = b.mib

    def row(job: str, s: Sample, goal: str, mib: float | None = None) -> None:
        print(f"{job:26} {ms(med(s.dog))} {ms(med(s.floor))} {ms(med(s.ours))}   "
              f"{ratio_range(s.ours, s.dog):18} {ratio_range(s.ours, s.floor):18} {goal}")
        if mib:
            print(f"{'':26} {rate(mib, s.dog)}M {rate(mib, s.floor)}M {rate(mib, s.ours)}M"
                  "   (MiB/s)")
    row("lifecycle (8 operations)", total, "<= 0.5 dog, <= 1.15 floor")
    row(f"import {size} MiB", data["import"], "<= 0.5 dog, <= 1.11 floor", size)
    row("import, window 1 (1 round)", data["import (window 1)"], "(cost of window 1)", size)
    row("export 1 GiB (sparse)", data["export"], "<= 0.5 dog", 1024)
    row("export, window 1 (1 round)", data["export (window 1)"], "(cost of window 1)",
        1024)
    sample, live = listed
    row(f"list {live} VDIs", sample, "<= 0.25 dog")
    made, took = b.setup_list
    print(f"{'':26} (setup: {made} NEW_VDI pipelined in {took:.1f} s, "
          f"{took / max(made, 1) * 1e3:.1f} ms each)")
    full, empty = sc
    row(f"snap+clone, {size} MiB full", full, "")
    row("snap+clone, empty", empty, "")
    print(f"snap+clone full/empty, {len(full.ours)} interleaved pairs (goal <= 1.2, flat): "
          "per-pair ratio median [range]; ratio of the medians")
    for side, f_, e_ in (("dog", full.dog, empty.dog), ("floor", full.floor, empty.floor),
                         ("ours", full.ours, empty.ours)):
        print(f"{'':26} {side:5} {ratio_range(f_, e_):18} {med(f_) / med(e_):.2f}"
              if f_ and e_ else f"{'':26} {side:5} -")
    if b.sparse:
        size_b, alloc = b.sparse[0]
        print(f"export file: {size_b / MiB:.0f} MiB long, {alloc / MiB:.0f} MiB allocated "
              f"(holes where the volume is unallocated or zero)")
    imp = data["import"]
    print(f"import, per round: floor/dog {ratio_range(imp.floor, imp.dog)}")
    if b.plain:
        print(f"plain file, same {size} MiB, write + fsync every 4 MiB, in each import round: "
              f"{med(b.plain) * 1e3:.1f} ms ({size / med(b.plain):.0f} MiB/s); floor/plain "
              f"{ratio_range(imp.floor, b.plain)}, ours/plain {ratio_range(imp.ours, b.plain)}, "
              f"dog/plain {ratio_range(imp.dog, b.plain)}")
    if plain is not None:
        print(f"plain file, one fsync at the end: {plain * 1e3:.1f} ms "
              f"({size / plain:.0f} MiB/s)")
    print("\nlifecycle per operation (ms; rt = serial round trips, req = requests, "
          "dur = requests made durable before the answer)")
    print(f"{'operation':16} {'dog':>8} {'floor':>8} {'rt req dur':>12} {'ours':>8} "
          f"{'rt req dur':>12} {'ours/floor':>10}  our requests")
    for step in STEPS:
        s = life[step]
        print(f"{step:16} {ms(med(s.dog))} {ms(med(s.floor))} {counts_text(s.floor_counts)} "
              f"{ms(med(s.ours))} {counts_text(s.ours_counts)} "
              f"{med(s.ours) / med(s.floor):10.2f}  "
              f"{s.ours_counts.describe() if s.ours_counts else ''}")
    for job, s in (("import", data["import"]), ("export", data["export"]),
                   ("list", sample), ("snap+clone full", full)):
        if s.ours_counts:
            print(f"{job:16} ours: {counts_text(s.ours_counts)} (rt req dur); "
                  f"floor: {counts_text(s.floor_counts)}; {s.ours_counts.describe()}")


def run(target: Target, root: str, args: argparse.Namespace, *, plain: bool,
        local_disk: bool = True) -> None:
    payload = os.urandom(args.mib * MiB)
    source = os.path.join(root, "import.raw")
    with open(source, "wb") as f:
        f.write(payload)
    b = Bench(target, root, f"bench-{os.getpid()}-", args.rounds, args.mib, args.vdis,
              no_dog=args.no_dog, local_disk=local_disk, life_rounds=args.life_rounds)
    try:
        target.driver.client.cluster_info()  # warm the pool
        life = b.lifecycle()
        leases = b.lease_cost()
        data = b.data(source, payload)
        sc = b.snap_clone(args.sc_rounds)
        listed = b.listing()
        pf = plain_write(root, payload, every=False) if plain else None
        report(b, life, data, listed, sc, pf)
        print(f"volume lease, medians of {b.life_rounds} (ms): " + ", ".join(
            f"{kind} {med(xs) * 1e3:.1f} [{min(xs) * 1e3:.1f}-{max(xs) * 1e3:.1f}]"
            for kind, xs in leases.items()) + " (a reused lease: 0)")
    finally:
        if not target.owned:
            b.cleanup()
        b.close()
        os.unlink(source)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9,
                        help="import and export rounds (the import's order rotates)")
    parser.add_argument("--life-rounds", type=int, default=30,
                        help="lifecycle rounds (the order of dog, floor, ours rotates)")
    parser.add_argument("--mib", type=int, default=256, help="MiB imported (<= 1024)")
    parser.add_argument("--sc-rounds", type=int, default=11,
                        help="interleaved full/empty pairs of the snapshot + clone job")
    parser.add_argument("--vdis", type=int, default=1003, help="live VDIs to list")
    parser.add_argument("--target", choices=("auto", "real", "embedded"), default="auto",
                        help="auto: real sheep when found, and the embedded server")
    parser.add_argument("--no-dog", action="store_true", help="leave dog out (smoke tests)")
    parser.add_argument("--config", help="sheepdog-backend ini file of a running cluster")
    parser.add_argument("--backend", help="backend section of --config (default: first)")
    args = parser.parse_args()
    if not 1 <= args.mib <= 1024:
        parser.error("--mib must be 1..1024")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as root:
        if args.config:
            with config_target(args.config, args.backend) as t:
                run(t, root, args, plain=False, local_disk=False)
        else:
            if args.target in ("auto", "real"):
                if have_real_sheep():
                    with real_sheep_target(root) as t:
                        run(t, root, args, plain=False)
                elif args.target == "real":
                    raise SystemExit("no real sheep/dog found: set SHEEPDOG_INTEROP_BIN "
                                     "(or SHEEPDOG_SHEEP and SHEEPDOG_DOG) or put them on PATH")
                else:
                    print("no real sheep/dog found (SHEEPDOG_INTEROP_BIN, SHEEPDOG_SHEEP/"
                          "SHEEPDOG_DOG, PATH): embedded server only")
            if args.target in ("auto", "embedded"):
                with embedded_target(root) as t:
                    run(t, root, args, plain=True)
    print(f"\n(bench_sheep: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
