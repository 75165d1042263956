"""The local gateway's cost: QEMU through tgt talking to a real sheep
directly, next to the same through `sheepdog-backend gateway`, and QEMU 5.2's
own Sheepdog driver talking to the sheep, in one run (issue 24).

First issue 24's table: five `qemu-img bench -t none` jobs (4 KiB write and
read at depth 1, 4 KiB write at depth 16, 1 MiB write and read at depth 4;
_qemu_bench.py) on three paths: QEMU 5.2's own driver straight to the sheep
(`sheepdog:127.0.0.1:PORT:VDI`; its qemu-img found as tests/realsheep.py
finds it: SHEEPDOG_QEMU_IMG, SHEEPDOG_INTEROP_BIN or PATH; the column says
why when absent), QEMU 7.2 (Debian's, libiscsi, CHAP on) -> tgt -> sheep,
QEMU 7.2 -> tgt -> gateway -> sheep (TCP on both hops, as before), the same
with unix sockets on both hops (tgt reaches the gateway on its ``--unix``
socket through ``sheepdog_export_gateway_socket``, the gateway reaches the
node on the node's own STORE_DIR/sock through ``--node-socket``), and, for a
fair look at the last one, tgt straight to the node's unix socket (a LU made
here, open to any initiator), and the yardstick of any relay: tgt through a
plain relay (socat, _relay.py: parses nothing, judges nothing) to the node's
unix socket, when socat is on PATH.  Each path has its own 256 MiB VDI,
created preallocated and written whole with random data once before the
jobs, so writes go to allocated objects and reads read data.  --rounds
rounds, the order of the paths rotated each round; medians, the ratios
(RATIOS: each the median of the rounds' own ratios, so the machine's drift
over minutes cancels), and the time each relaying path adds to every 4 KiB
request (1/IOPS through it minus 1/IOPS through tgt straight to the node,
each depth-1 job, median over rounds).  The gateways are separate
`sheepdog-backend gateway` processes (_gateway_proc.py), as tgt meets them.

Then the same N MiB of random data written to a fresh (unallocated) 1 GiB
volume with `qemu-img convert -n -m 16 -W` and read back with `qemu-img dd
bs=4M` (checked byte for byte), through tgt to the node and through the
gateway process, median of --rounds: the allocating-write and streaming
figures the jobs above do not cover.  (The former "200 small 4 KiB writes
by one qemu-io" figure is gone: it measured the 4 KiB depth-1 write job
again, with qemu-io's start and the iSCSI login inside the timing.)

Then the guest's stall per snapshot, both paths: the snapshot race of
tests/gateway_race.py (--stall-writes 64 KiB writes by qemu-io over half as
many 4 MiB objects, a snapshot of the volume every 0.1 s, through the
gateway or straight to the node), the guest's longest and median write next
to the same writes without snapshots, the acknowledged writes lost, and the
gateway's longest write split into its requests.  This part runs an
in-process gateway: the split needs its request trace.

The machine is shared: treat the numbers as indicative.  Needs the real
sheep/dog, tgtd/tgtadm and Debian's qemu-img/qemu-io; exits 0 with the
reason when any is missing.  Takes 2-3 minutes here at the defaults.

Run: .venv/bin/python benchmarks/bench_gateway.py [--rounds R] [--jobs-scale F]
     [--mib N] [--stall-writes W]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import _creates  # type: ignore[import-not-found]
import _gateway_proc  # type: ignore[import-not-found]  # benchmarks/ is not a package
import _qemu_bench  # type: ignore[import-not-found]
import _relay  # type: ignore[import-not-found]
import _tgt  # type: ignore[import-not-found]

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.driver.base import BackendConfiguration, Volume
from sheepdog_backend.driver.sheepdog import SheepdogDriver
from sheepdog_backend.export.tgt import Tgtadm, TgtTargets
from sheepdog_backend.gateway import Gateway

if TYPE_CHECKING:
    from tests.gateway_race import RaceResult

MiB = 1 << 20
# The table's ratios: issue 24's (the gateway, over TCP as before and over
# unix sockets, against tgt straight to the node's port), and the unix-socket
# gateway against tgt straight to the node's own socket.
# The plain relay (socat, _relay.py) is the yardstick: what a relay process
# between tgt and the node's socket costs before it does anything of ours.
RATIOS = (("gateway", "tgt"), ("gw-unix", "tgt"), ("gw-unix", "tgt-unix"),
          ("tgt-unix", "tgt"), ("socat", "tgt-unix"), ("gw-unix", "socat"))
DIRECT = ("tgt", "tgt-unix")  # tgt straight to the node: what the added latency is over


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


JOB_VDI_MIB = 256


def say(text: str) -> None:
    """Progress, on stderr (the tables go to stdout)."""
    print(text, file=sys.stderr, flush=True)


def job_paths(setup: _tgt.Setup, drivers: dict[str, SheepdogDriver],
              stack: contextlib.ExitStack, unix_lu: Callable[[str], str] | None = None,
              relay_lu: Callable[[str], str] | None = None
              ) -> tuple[list[_qemu_bench.Path], str]:
    """The jobs' paths, each on its own preallocated VDI filled with data
    (the iSCSI ones attached until ``stack`` closes; ``unix_lu(vdi)`` makes a
    LU of ``vdi`` on the node's unix socket and returns its IQN, ``relay_lu``
    the same through the plain relay), and why QEMU 5.2's column is missing
    ("" when it is there)."""
    from tests.realsheep import find_program  # needs pytest: lazily
    qemu52 = find_program("qemu-img")
    client = drivers["direct"].client
    block = os.urandom(4 * MiB)

    def filled(key: str) -> str:
        """The job VDI of path ``key``: preallocated, written whole."""
        name = f"jobs-{key}"
        client.create_vdi(name, JOB_VDI_MIB * MiB, prealloc=True)
        for offset in range(0, JOB_VDI_MIB * MiB, len(block)):
            client.write(name, offset, block)
        return name

    paths = []
    why = ""
    if qemu52 is not None:
        paths.append(_qemu_bench.Path("qemu52", "QEMU 5.2's own Sheepdog driver", qemu52, (
            "-f", "raw", f"sheepdog:{setup.gateways[0]}:{filled('qemu52')}")))
    else:
        why = ("no QEMU < 6.0 qemu-img (set SHEEPDOG_QEMU_IMG or SHEEPDOG_INTEROP_BIN, "
               "or put it on PATH)")
    for key, title, make_lu in (
            ("tgt-unix", "tgt -> sheep, unix socket", unix_lu),  # straight to the node's socket
            ("socat", "tgt -> socat -> sheep, unix sockets", relay_lu)):
        if make_lu is None:
            continue
        iqn = make_lu(filled(key))
        target = f"driver=iscsi,transport=tcp,portal={setup.tgtd.portal},target={iqn},lun=1"
        paths.append(_qemu_bench.Path(key, title, _tgt.QEMU_IMG, ("--image-opts", target)))
    for key, title in (("tgt", "QEMU 7.2 -> tgt -> sheep"),
                       ("gateway", "-> tgt -> gateway -> sheep"),
                       ("gw-unix", "-> tgt -> gateway -> sheep, unix sockets")):
        if key not in drivers:
            continue
        name = filled(key)
        vol = Volume(id=name, size=1, name=name)
        data = stack.enter_context(_tgt.exported(drivers[key], vol))["data"]
        # qemu-img bench takes no --object: the CHAP secret goes in the image
        # options (a throwaway secret of this run's own tgtd)
        target = ",".join(f"{k}={str(v).replace(',', ',,')}" for k, v in (
            ("driver", "iscsi"), ("transport", "tcp"), ("portal", data["target_portal"]),
            ("target", data["target_iqn"]), ("lun", data["target_lun"]),
            ("user", data["auth_username"]), ("password", data["auth_password"])))
        paths.append(_qemu_bench.Path(key, title, _tgt.QEMU_IMG, ("--image-opts", target)))
    return paths, why


def print_jobs(results: _qemu_bench.Results, paths: list[_qemu_bench.Path], why: dict[str, str],
               rounds: int, scale: float) -> None:
    print(f"issue 24's jobs: qemu-img bench -t none on preallocated {JOB_VDI_MIB} MiB VDIs, "
          f"median of {rounds} rounds, path order rotated each round, requests x{scale:g} "
          "(indicative: shared machine); a ratio is the median of each round's own ratio, "
          "lowest-highest in brackets")
    for column, reason in why.items():
        print(f"({column}: not measured: {reason})")
    print(_qemu_bench.table(results, paths, RATIOS))
    keys = {p.key for p in paths}
    for slow, fast in RATIOS:
        if slow in keys and fast in keys and fast in DIRECT and slow not in DIRECT:
            added = _qemu_bench.added_latency(results, slow, fast)
            print(f"added latency per 4 KiB request, {slow} minus {fast} (1/IOPS, median of "
                  "the rounds): " + ", ".join(f"{label.split(',')[0]}: {us:.0f} us"
                                              for label, us in added.items()))


def convert_rounds(drivers: dict[str, SheepdogDriver], src: Path, out: Path, mib: int,
                   rounds: int) -> dict[tuple[str, str], list[float]]:
    """(op, path) -> seconds per round of the convert write and dd read."""
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for path in (["direct", "gateway"] if r % 2 == 0 else ["gateway", "direct"]):
            name = f"bench-{path}-{r}"
            vol = Volume(id=name, size=1, name=name)
            drivers[path].create_volume(vol)
            with _tgt.attached(drivers[path], vol) as (target, secret):
                results.setdefault(("write", path), []).append(
                    _tgt.qemu_write(secret, target, src))
                results.setdefault(("read", path), []).append(
                    _tgt.qemu_read(secret, target, out, mib))
                if out.read_bytes()[:mib * MiB] != src.read_bytes():
                    raise RuntimeError(f"{path}: the bytes read back differ")
    return results


def print_convert(results: dict[tuple[str, str], list[float]], mib: int, rounds: int) -> None:
    print(f"\nfresh volume: qemu-img convert -n -m 16 -W of {mib} MiB, qemu-img dd bs=4M back, "
          f"tgt -> sheep vs tgt -> gateway -> sheep, median of {rounds}")
    print(f"{'op':<10} {'path':<8} {'rate':>14} {'x direct':>9}")
    for op in ("write", "read"):
        base_t = statistics.median(results[(op, "direct")])
        for path in ("direct", "gateway"):
            t = statistics.median(results[(op, path)])
            print(f"{op:<10} {path:<8} {f'{mib / t:7.1f} MiB/s':>14} {base_t / t:9.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32,
                        help="MiB of the convert/dd figure, a multiple of 4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs-scale", type=float, default=1.0,
                        help="requests of each qemu-img bench job, times this (0: skip the "
                        "jobs)")
    parser.add_argument("--stall-writes", type=int, default=200,
                        help="writes of the snapshot stall race (0: skip it)")
    parser.add_argument("--creates", type=int, default=64,
                        help="object creates of the coherent-create cost (0: skip it)")
    args = parser.parse_args()
    if (args.mib < 4 or args.mib % 4 or args.rounds < 1 or args.stall_writes < 0
            or not 0 <= args.jobs_scale <= 100 or not 0 <= args.creates <= 1000):
        parser.error("--mib must be a positive multiple of 4, --rounds at least 1, "
                     "--jobs-scale 0..100, --creates 0..1000 and --stall-writes not negative")
    stall: dict[str, RaceResult] = {}
    creates: dict[str, float] = {}
    jobs: _qemu_bench.Results = {}
    size = args.mib * MiB
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
            gateway = stack.enter_context(_gateway_proc.GatewayProcess(
                setup.gateways, Path(tmp) / "gateway.log"))
            local = gateway.address
            # the same gateway, reached by tgt on its unix socket and reaching
            # the node on the node's own (--node-socket)
            node_socket = str(setup.cluster.nodes[0].store / "sock")
            gw_socket = str(Path(tmp) / "gateway.sock")
            unix_gateway = stack.enter_context(_gateway_proc.GatewayProcess(
                setup.gateways, Path(tmp) / "gateway-unix.log", args=(
                    "--unix", gw_socket,
                    "--node-socket", f"{setup.gateways[0]}={node_socket}")))
            drivers: dict[str, SheepdogDriver] = {}
            base = setup.iscsi_options()
            drivers["direct"] = SheepdogDriver(BackendConfiguration(
                {**base, "sheepdog_gateways": setup.gateways}), backend_name="direct")
            stack.callback(drivers["direct"].close)
            drivers["gateway"] = SheepdogDriver(BackendConfiguration(
                {**base, "sheepdog_gateways": [local], "sheepdog_export_gateway": local}),
                backend_name="gateway")
            stack.callback(drivers["gateway"].close)
            drivers["gw-unix"] = SheepdogDriver(BackendConfiguration(
                {**base, "sheepdog_gateways": [unix_gateway.address],
                 "sheepdog_export_gateway": unix_gateway.address,
                 "sheepdog_export_gateway_socket": gw_socket}), backend_name="gw-unix")
            stack.callback(drivers["gw-unix"].close)

            def unix_lu(vdi: str, sock: str = node_socket) -> str:
                iqn = f"iqn.2010-10.org.openstack:bench-{vdi}"
                targets = TgtTargets(Tgtadm(control_port=setup.tgtd.control_port))
                targets.create(iqn, f"unix:{sock}:{vdi}")
                stack.callback(targets.remove, iqn)
                return iqn
            why: dict[str, str] = {}
            paths: list[_qemu_bench.Path] = []
            if args.jobs_scale:
                with contextlib.ExitStack() as attached:
                    say("bench_gateway: preparing the jobs' VDIs")
                    relay_lu: Callable[[str], str] | None = None
                    try:
                        relay = stack.enter_context(_relay.plain_relay(  # outlives the LUs
                            str(Path(tmp) / "socat.sock"), node_socket))
                        relay_lu = functools.partial(unix_lu, sock=relay)
                    except _relay.Unavailable as exc:
                        why["the plain relay"] = str(exc)
                    paths, qemu52_why = job_paths(setup, {"direct": drivers["direct"],
                                                          "tgt": drivers["direct"],
                                                          "gateway": drivers["gateway"],
                                                          "gw-unix": drivers["gw-unix"]},
                                                  attached, unix_lu, relay_lu)
                    if qemu52_why:
                        why["QEMU 5.2's own driver"] = qemu52_why
                    jobs = _qemu_bench.run_jobs(paths, args.rounds, args.jobs_scale,
                                                progress=say)
            say("bench_gateway: convert/dd on fresh volumes")
            convert = convert_rounds(drivers, src, out, args.mib, args.rounds)
            if args.stall_writes or args.creates:
                from tests.realsheep import free_port
                traced = Gateway(setup.gateways, port=free_port(),
                                 trace=20 * args.stall_writes + 1000).start()
                stack.callback(traced.stop)
            if args.creates:
                say("bench_gateway: the cost of coherent creates (in-process gateway)")
                creates = _creates.create_costs(traced, setup.gateways, args.creates,
                                                args.rounds)
            if args.stall_writes:
                say("bench_gateway: the snapshot stall (in-process gateway with its trace)")
                at = f"127.0.0.1:{traced.port}"
                stall_driver = SheepdogDriver(BackendConfiguration(
                    {**base, "sheepdog_gateways": [at], "sheepdog_export_gateway": at}),
                    backend_name="stall")
                stack.callback(stall_driver.close)
                stall = snapshot_stall({"direct": drivers["direct"], "gateway": stall_driver},
                                       traced, setup.gateways, args.stall_writes)
    if jobs:
        print_jobs(jobs, paths, why, args.rounds, args.jobs_scale)
    print_convert(convert, args.mib, args.rounds)
    if creates:
        _creates.print_creates(creates, args.creates, args.rounds)
    if stall:
        print_stall(stall, args.stall_writes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
