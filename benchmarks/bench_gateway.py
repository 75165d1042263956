"""The local gateway's cost: tgt's LU talking to a real sheep directly next
to the same LU through `sheepdog-backend gateway` (TCP port), in one run.

For each path the same N MiB of random data are written to a fresh exported
1 GiB volume with `qemu-img convert -n -m 16 -W` (QEMU 7.2, libiscsi, CHAP
on) and read back with `qemu-img dd bs=4M` (checked byte for byte); then
`qemu-io` does 200 small 4 KiB writes one after another (latency-bound: every
request crosses the gateway once more).  Each figure is the median of
--rounds runs; "x direct" is the gateway's speed over the direct path's.
The machine is shared: treat the numbers as indicative.  Needs the real
sheep/dog, tgtd/tgtadm and Debian's qemu-img/qemu-io; exits 0 with the
reason when any is missing.

Run: .venv/bin/python benchmarks/bench_gateway.py [--mib N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sheepdog_backend.driver import attach  # noqa: E402
from sheepdog_backend.driver.base import BackendConfiguration, Connector, Volume  # noqa: E402
from sheepdog_backend.driver.sheepdog import SheepdogDriver  # noqa: E402
from sheepdog_backend.gateway import Gateway  # noqa: E402

MiB = 1 << 20
QEMU_IMG, QEMU_IO = "/usr/bin/qemu-img", "/usr/bin/qemu-io"


def timed(argv: list[str]) -> float:
    """Seconds ``argv`` ran; RuntimeError when it failed."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, timeout=600, check=False, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0 or "failed" in proc.stdout:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {proc.stderr[-500:]!r}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32, help="a multiple of 4")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.mib < 4 or args.mib % 4 or args.rounds < 1:
        parser.error("--mib must be a positive multiple of 4 and --rounds at least 1")
    try:
        import _pytest.outcomes

        from tests.realsheep import SheepCluster, free_port
        from tests.tgtd import TgtDaemon
    except ImportError as exc:
        print(f"bench_gateway: skipped: {exc}")
        return 0
    if not (os.path.exists(QEMU_IMG) and os.path.exists(QEMU_IO)):
        print("bench_gateway: skipped: Debian's qemu-img/qemu-io (qemu-utils) not installed")
        return 0
    size = args.mib * MiB
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        src = Path(tmp) / "src.raw"
        src.write_bytes(os.urandom(size))
        out = Path(tmp) / "out.raw"
        try:
            cluster = SheepCluster(Path(tmp) / "sheep", nodes=1).start()
            tgtd = TgtDaemon(Path(tmp) / "tgtd").start()
        except (_pytest.outcomes.Skipped, RuntimeError) as exc:
            print(f"bench_gateway: skipped: {exc}")
            return 0
        gateway = Gateway(cluster.gateways, port=free_port()).start()
        local = f"127.0.0.1:{gateway.port}"
        drivers: dict[str, SheepdogDriver] = {}
        try:
            base = {"sheepdog_attach_protocol": "iscsi", "target_port": tgtd.portal_port,
                    "sheepdog_tgt_control_port": tgtd.control_port,
                    "sheepdog_export_chap_key": "bench-key"}
            drivers["direct"] = SheepdogDriver(BackendConfiguration(
                {**base, "sheepdog_gateways": cluster.gateways}), backend_name="direct")
            drivers["gateway"] = SheepdogDriver(BackendConfiguration(
                {**base, "sheepdog_gateways": [local], "sheepdog_export_gateway": local}),
                backend_name="gateway")
            connector = Connector(host="bench", initiator=None)
            for r in range(args.rounds):
                for path, driver in drivers.items():
                    name = f"bench-{path}-{r}"
                    vol = Volume(id=name, size=1, name=name)
                    driver.create_volume(vol)
                    data = attach.initialize_connection(driver, vol, connector)["data"]
                    target = (f"driver=iscsi,transport=tcp,portal={data['target_portal']},"
                              f"target={data['target_iqn']},lun=1,"
                              f"user={data['auth_username']},password-secret=chap")
                    secret = f"secret,id=chap,data={data['auth_password']}"
                    results.setdefault(("write", path), []).append(timed(
                        [QEMU_IMG, "convert", "--object", secret, "-n", "-m", "16", "-W",
                         "-f", "raw", "--target-image-opts", str(src), target]))
                    results.setdefault(("read", path), []).append(timed(
                        [QEMU_IMG, "dd", "--image-opts", "--object", secret, "-O", "raw",
                         "bs=4M", f"count={args.mib // 4}", f"if={target}", f"of={out}"]))
                    if out.read_bytes()[:size] != src.read_bytes():
                        raise RuntimeError(f"{path}: the bytes read back differ")
                    small = [a for i in range(200)
                             for a in ("-c", f"write -P 7 {i * 4096} 4k")]
                    results.setdefault(("4k-writes", path), []).append(timed(
                        [QEMU_IO, "--object", secret, "--image-opts", target, *small]))
                    attach.terminate_connection(driver, vol, connector)
        finally:
            for driver in drivers.values():
                driver.close()
            gateway.stop()
            tgtd.stop()
            cluster.stop()
    print(f"tgt -> sheep directly vs tgt -> local gateway -> sheep: {args.mib} MiB, "
          f"median of {args.rounds} (indicative: shared machine)")
    print(f"{'op':<10} {'path':<8} {'rate':>14} {'x direct':>9}")
    for op in ("write", "read", "4k-writes"):
        base_t = statistics.median(results[(op, "direct")])
        for path in ("direct", "gateway"):
            t = statistics.median(results[(op, path)])
            rate = f"{200 / t:8.0f} IOPS" if op == "4k-writes" else f"{args.mib / t:7.1f} MiB/s"
            print(f"{op:<10} {path:<8} {rate:>14} {base_t / t:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
