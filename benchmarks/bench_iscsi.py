"""Throughput through iSCSI (tgt's Sheepdog store, QEMU 7.2's libiscsi) next
to `dog vdi write/read` and our client, on one real sheep, in one run.

For each path the same N MiB of non-zero data are written to a fresh 1 GiB
volume, then read back:

* dog:     `dog vdi write VOL 0 N < file`, `dog vdi read VOL 0 N > file`
* client:  SheepdogClient.write_from_file / read_to_file (default io window)
* iscsi:   `qemu-img convert -n -m 16 -W` from the file to the exported LU
           through tgtd (CHAP on), `qemu-img dd bs=4M` from the LU back to a file
           (checked byte for byte); tgtd runs
           with its default 16 I/O threads, one sheep connection each.

Each figure is the median of --rounds runs; ratios are to dog.  The machine
is shared: treat the numbers as indicative.  Needs the real sheep/dog
(SHEEPDOG_INTEROP_BIN or PATH), tgtd/tgtadm and Debian's qemu-img with
qemu-block-extra; exits 0 with the reason when any is missing.

Run: .venv/bin/python benchmarks/bench_iscsi.py [--mib N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sheepdog_backend.driver import attach  # noqa: E402
from sheepdog_backend.driver.base import BackendConfiguration, Connector, Volume  # noqa: E402
from sheepdog_backend.driver.sheepdog import SheepdogDriver  # noqa: E402

MiB = 1 << 20
QEMU_IMG = "/usr/bin/qemu-img"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(argv: list[str], **kw: object) -> None:
    kw.setdefault("stdout", subprocess.DEVNULL)
    proc = subprocess.run(argv, stderr=subprocess.PIPE, timeout=600, check=False,
                          **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {proc.stderr[-500:]!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="a multiple of 4")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.mib < 4 or args.mib % 4 or args.rounds < 1:
        parser.error("--mib must be a positive multiple of 4 and --rounds at least 1")
    try:
        import _pytest.outcomes

        from tests.realsheep import SheepCluster
        from tests.tgtd import TgtDaemon
    except ImportError as exc:
        print(f"bench_iscsi: skipped: {exc}")
        return 0
    if not os.path.exists(QEMU_IMG):
        print(f"bench_iscsi: skipped: {QEMU_IMG} (qemu-utils) not installed")
        return 0
    size = args.mib * MiB
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-iscsi-") as tmp:
        src = Path(tmp) / "src.raw"
        src.write_bytes(os.urandom(size))
        out = Path(tmp) / "out.raw"
        try:
            cluster = SheepCluster(Path(tmp) / "sheep", nodes=1).start()
            tgtd = TgtDaemon(Path(tmp) / "tgtd").start()
        except (_pytest.outcomes.Skipped, RuntimeError) as exc:
            print(f"bench_iscsi: skipped: {exc}")
            return 0
        try:
            conf = BackendConfiguration({
                "sheepdog_gateways": cluster.gateways, "sheepdog_attach_protocol": "iscsi",
                "target_port": tgtd.portal_port, "sheepdog_tgt_control_port": tgtd.control_port,
                "sheepdog_export_chap_key": "bench-key"})
            driver = SheepdogDriver(conf, backend_name="bench")
            connector = Connector(host="bench", initiator=None)
            for r in range(args.rounds):
                names = {tool: f"bench-{tool}-{r}" for tool in ("dog", "client", "iscsi")}
                for name in names.values():
                    driver.create_volume(Volume(id=name, size=1, name=name))
                dog = names["dog"]
                results.setdefault(("write", "dog"), []).append(timed(lambda: run(
                    [cluster.dog, "vdi", "write", dog, "0", str(size), "-a", "127.0.0.1",
                     "-p", str(cluster.nodes[0].port)], stdin=src.open("rb"))))
                results.setdefault(("read", "dog"), []).append(timed(lambda: run(
                    [cluster.dog, "vdi", "read", dog, "0", str(size), "-a", "127.0.0.1",
                     "-p", str(cluster.nodes[0].port)], stdout=out.open("wb"))))
                cli = names["client"]
                with src.open("rb") as f:
                    results.setdefault(("write", "client"), []).append(
                        timed(lambda: driver.client.write_from_file(cli, f)))
                with out.open("wb") as f:
                    results.setdefault(("read", "client"), []).append(
                        timed(lambda: driver.client.read_to_file(cli, f, length=size)))
                vol = Volume(id=names["iscsi"], size=1, name=names["iscsi"])
                info = attach.initialize_connection(driver.core, vol, connector)
                data = info["data"]
                target = (f"driver=iscsi,transport=tcp,portal={data['target_portal']},"
                          f"target={data['target_iqn']},lun=1,user={data['auth_username']},"
                          "password-secret=chap")
                secret = f"secret,id=chap,data={data['auth_password']}"
                results.setdefault(("write", "iscsi"), []).append(timed(lambda: run(
                    [QEMU_IMG, "convert", "--object", secret, "-n", "-m", "16", "-W",
                     "-f", "raw", "--target-image-opts", str(src), target])))
                # qemu-img dd reads exactly N MiB (convert would copy the whole 1 GiB LU)
                results.setdefault(("read", "iscsi"), []).append(timed(lambda: run(
                    [QEMU_IMG, "dd", "--image-opts", "--object", secret, "-O", "raw",
                     "bs=4M", f"count={args.mib // 4}", f"if={target}", f"of={out}"])))
                if out.stat().st_size < size or out.open("rb").read(size) != src.read_bytes():
                    raise RuntimeError("the bytes read through iSCSI differ from those written")
                attach.terminate_connection(driver.core, vol, connector)
            driver.close()
        finally:
            tgtd.stop()
            cluster.stop()
    print(f"iSCSI through tgt vs dog vs our client: {args.mib} MiB, median of "
          f"{args.rounds} (indicative: shared machine)")
    print(f"{'op':<6} {'path':<7} {'MiB/s':>8} {'x dog':>7}")
    for op in ("write", "read"):
        base = statistics.median(results[(op, "dog")])
        for tool in ("dog", "client", "iscsi"):
            t = statistics.median(results[(op, tool)])
            print(f"{op:<6} {tool:<7} {args.mib / t:8.1f} {base / t:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
