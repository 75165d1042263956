"""The local gateway's cost: tgt's LU talking to a real sheep directly next
to the same LU through `sheepdog-backend gateway` (TCP port), in one run.

For each path the same N MiB of random data are written to a fresh exported
1 GiB volume with `qemu-img convert -n -m 16 -W` (QEMU 7.2, libiscsi, CHAP
on) and read back with `qemu-img dd bs=4M` (checked byte for byte); then
`qemu-io` does 200 small 4 KiB writes one after another (latency-bound: every
request crosses the gateway once more).  Each figure is the median of
--rounds runs; "x direct" is the gateway's speed over the direct path's.

Then the guest's stall per snapshot, both paths: the snapshot race of
tests/gateway_race.py (--stall-writes 64 KiB writes by qemu-io over half as
many 4 MiB objects, a snapshot of the volume every 0.1 s, through the
gateway or straight to the node), the guest's longest and median write next
to the same writes without snapshots, the acknowledged writes lost, and the
gateway's longest write split into its requests.
The machine is shared: treat the numbers as indicative.  Needs the real
sheep/dog, tgtd/tgtadm and Debian's qemu-img/qemu-io; exits 0 with the
reason when any is missing.

Run: .venv/bin/python benchmarks/bench_gateway.py [--mib N] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import _tgt  # type: ignore[import-not-found]  # benchmarks/ is not a package

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.driver.base import BackendConfiguration, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.gateway import Gateway

if TYPE_CHECKING:
    from tests.gateway_race import RaceResult

MiB = 1 << 20


def snapshot_stall(drivers: dict[str, SheepdogDriver], gateway: Gateway, cluster: list[str],
                   writes: int) -> dict[str, RaceResult]:
    """path -> the snapshot race's result, with its control run."""
    from tests.gateway_race import run_race, with_control  # needs pytest: lazily
    results: dict[str, RaceResult] = {}
    via = {"direct": cluster[0], "gateway": f"127.0.0.1:{gateway.port}"}
    for path, driver in drivers.items():
        runs = []
        for kind, snapshots in (("control", 0), ("race", 2000)):
            name = f"stall-{path}-{kind}"
            vol = Volume(id=name, size=1, name=name)
            driver.create_volume(vol)
            with _tgt.exported(driver, vol) as info, SheepdogClient(cluster) as check:
                runs.append(run_race(info, initiator=None, name=name, snapshot_via=via[path],
                                     check_client=check,
                                     gateway=gateway if path == "gateway" else None,
                                     writes=writes, objects=max(1, writes // 2),
                                     max_snapshots=snapshots))
        results[path] = with_control(runs[1], runs[0])
    return results


def print_stall(results: dict[str, RaceResult], writes: int) -> None:
    ms = 1000.0
    print(f"\nguest stall per snapshot: {writes} 64 KiB writes (qemu-io), a snapshot every "
          "0.1 s, vs the same writes without snapshots")
    print(f"{'path':<8} {'snapshots':>9} {'lost':>5} {'longest':>9} {'(none)':>8} "
          f"{'median':>8} {'(none)':>8}")
    for path, r in results.items():
        print(f"{path:<8} {r.snapshots:>9} {len(r.lost):>5} "
              f"{r.longest_write * ms:7.1f}ms {r.control_longest_write * ms:6.1f}ms "
              f"{r.median_write * ms:6.1f}ms {r.control_median_write * ms:6.1f}ms")
    stall = results["gateway"].stall
    if stall:
        parts = ", ".join(f"{k} {v * ms:.1f} ms" for k, v in stall.items() if k != "tries")
        print(f"gateway's longest write ({int(stall['tries'])} tries): {parts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32, help="a multiple of 4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stall-writes", type=int, default=200,
                        help="writes of the snapshot stall race (0: skip it)")
    args = parser.parse_args()
    if args.mib < 4 or args.mib % 4 or args.rounds < 1 or args.stall_writes < 0:
        parser.error("--mib must be a positive multiple of 4, --rounds at least 1 and "
                     "--stall-writes not negative")
    stall: dict[str, RaceResult] = {}
    size = args.mib * MiB
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        src = Path(tmp) / "src.raw"
        src.write_bytes(os.urandom(size))
        out = Path(tmp) / "out.raw"
        stack = contextlib.ExitStack()
        try:
            _tgt.require_qemu(_tgt.QEMU_IMG, _tgt.QEMU_IO)
            setup = stack.enter_context(_tgt.sheep_and_tgtd(tmp))
        except _tgt.Unavailable as exc:
            print(f"bench_gateway: skipped: {exc}")
            return 0
        with stack:
            from tests.realsheep import free_port
            gateway = Gateway(setup.gateways, port=free_port(), trace=20 * args.stall_writes
                              + 1000).start()
            local = f"127.0.0.1:{gateway.port}"
            drivers: dict[str, SheepdogDriver] = {}
            try:
                base = setup.iscsi_options()
                drivers["direct"] = SheepdogDriver(BackendConfiguration(
                    {**base, "sheepdog_gateways": setup.gateways}), backend_name="direct")
                drivers["gateway"] = SheepdogDriver(BackendConfiguration(
                    {**base, "sheepdog_gateways": [local], "sheepdog_export_gateway": local}),
                    backend_name="gateway")
                for r in range(args.rounds):
                    for path, driver in drivers.items():
                        name = f"bench-{path}-{r}"
                        vol = Volume(id=name, size=1, name=name)
                        driver.create_volume(vol)
                        with _tgt.attached(driver, vol) as (target, secret):
                            results.setdefault(("write", path), []).append(
                                _tgt.qemu_write(secret, target, src))
                            results.setdefault(("read", path), []).append(
                                _tgt.qemu_read(secret, target, out, args.mib))
                            if out.read_bytes()[:size] != src.read_bytes():
                                raise RuntimeError(f"{path}: the bytes read back differ")
                            small = [a for i in range(200)
                                     for a in ("-c", f"write -P 7 {i * 4096} 4k")]
                            results.setdefault(("4k-writes", path), []).append(_tgt.timed_run(
                                [_tgt.QEMU_IO, "--object", secret, "--image-opts", target,
                                 *small]))
                if args.stall_writes:
                    stall = snapshot_stall(drivers, gateway, setup.gateways, args.stall_writes)
            finally:
                for driver in drivers.values():
                    driver.close()
                gateway.stop()
    print(f"tgt -> sheep directly vs tgt -> local gateway -> sheep: {args.mib} MiB, "
          f"median of {args.rounds} (indicative: shared machine)")
    print(f"{'op':<10} {'path':<8} {'rate':>14} {'x direct':>9}")
    for op in ("write", "read", "4k-writes"):
        base_t = statistics.median(results[(op, "direct")])
        for path in ("direct", "gateway"):
            t = statistics.median(results[(op, path)])
            rate = f"{200 / t:8.0f} IOPS" if op == "4k-writes" else f"{args.mib / t:7.1f} MiB/s"
            print(f"{op:<10} {path:<8} {rate:>14} {base_t / t:9.2f}")
    if stall:
        print_stall(stall, args.stall_writes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
