"""``make demo``: one volume's life on an embedded Sheepdog-compatible server.

How it works: the demo starts an ``EmbeddedServer`` in a temporary directory
(port 0: the kernel picks a free one), copies the ini file given with
``--config`` into that directory with every gateway port rewritten to the
server's real one, loads the backends through the driver loader (entry point
``sheepdog_backend.volume_drivers``), walks a volume through create, write,
snapshot, clone, extend, revert, connection info, stats and delete, checking
the bytes at each step, and stops the server by its own handle.  Exit status 0
only when every check held.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from sheepdog_backend.driver import connection
from sheepdog_backend.driver.addresses import format_gateway
from sheepdog_backend.driver.base import Connector, Snapshot, Volume, VolumeDriver
from sheepdog_backend.driver.loader import load_backends
from sheepdog_backend.exception import VolumeIsBusy

MiB = 1 << 20
GiB = 1 << 30
_PORT_LINE = re.compile(r"^(\s*sheepdog_store_port\s*=\s*).*$", re.MULTILINE)
_GATEWAYS_LINE = re.compile(r"^(\s*sheepdog_gateways\s*=\s*)(.*)$", re.MULTILINE)
_ADDRESS_LINE = re.compile(r"^(\s*sheepdog_store_address\s*=\s*).*$", re.MULTILINE)


class DemoFailed(Exception):
    pass


def rewrite_config(text: str, host: str, port: int) -> str:
    """The ini text with every gateway pointing at ``host:port``."""
    gateway = format_gateway(host, port)
    text = _GATEWAYS_LINE.sub(lambda m: m.group(1) + gateway, text)
    text = _ADDRESS_LINE.sub(lambda m: m.group(1) + host, text)
    return _PORT_LINE.sub(lambda m: m.group(1) + str(port), text)


def pattern(seed: str, length: int) -> bytes:
    block = (seed.encode() + b"|") * (4096 // (len(seed) + 1) + 1)
    return (block * (length // len(block) + 1))[:length]


class Demo:
    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.step_no = 0

    def step(self, title: str) -> None:
        self.step_no += 1
        self.out(f"\n[{self.step_no:2d}] {title}")

    def say(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self.out(f"     {line}")

    def check(self, ok: bool, what: str) -> None:
        self.say(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            raise DemoFailed(what)

    def run(self, config: str) -> int:
        from sheepdog_backend.server.embedded import EmbeddedServer

        with tempfile.TemporaryDirectory(prefix="sheepdog-demo-") as tmp:
            self.step("Start an embedded Sheepdog-compatible server")
            server = EmbeddedServer(os.path.join(tmp, "data"), copies=1)
            server.start()
            try:
                host, port = server.addresses[0]
                self.say(f"listening on {server.gateways[0]}, data in {tmp}/data")
                ini = os.path.join(tmp, "backends.conf")
                with open(config, encoding="utf-8") as src:
                    text = rewrite_config(src.read(), host, port)
                with open(ini, "w", encoding="utf-8") as dst:
                    dst.write(text)
                self.say(f"{config} copied to {ini} with the gateway set to "
                         f"{server.gateways[0]}")
                self.walk(ini)
            finally:
                self.step("Stop the server")
                server.stop()
                self.say("stopped")
        return 0

    def walk(self, ini: str) -> None:
        self.step("Load the backends from the ini file (stevedore entry points)")
        drivers = load_backends(ini)
        try:
            for name, drv in drivers.items():
                drv.do_setup()
                drv.check_for_setup_error()
                self.say(f"[{name}] {type(drv).__module__}.{type(drv).__name__} "
                         f"v{drv.VERSION}: cluster reachable and formatted")
            self.volume_life(next(iter(drivers.values())))
            self.step("Stats of every backend")
            for name, drv in drivers.items():
                stats = drv.get_volume_stats(refresh=True)
                self.say(f"[{name}] " + ", ".join(
                    f"{k}={stats[k]}" for k in ("volume_backend_name", "total_capacity_gb",
                                                "free_capacity_gb", "total_volumes")))
        finally:
            for drv in drivers.values():
                drv.close()

    def volume_life(self, drv: VolumeDriver) -> None:
        data = drv.data_access()
        run = time.strftime("%H%M%S")
        vol = Volume(id=f"demo-{run}", size=1, name=f"demo-{run}")
        snap = Snapshot(id="before-change", volume=vol, name="before-change")
        clone = Volume(id=f"demo-{run}-clone", size=2, name=f"demo-{run}-clone")
        first, second = pattern("first", 64 * 1024), pattern("second", 64 * 1024)
        offsets = (0, 5 * MiB + 123, GiB - 64 * 1024)

        self.step(f"Create volume {vol.name} (1 GiB, thin)")
        drv.create_volume(vol)
        self.check(data.exists(vol) and data.size_bytes(vol) == GiB,
                   f"{vol.name} exists with {GiB} bytes")
        self.check(data.read(vol, 5 * MiB, 4096) == bytes(4096), "a new volume reads zeros")

        self.step("Write a pattern at three offsets (start, inside an object, last 64 KiB)")
        for off in offsets:
            data.write(vol, off, first)
        self.check(all(data.read(vol, off, len(first)) == first for off in offsets),
                   "every pattern reads back")

        self.step(f"Snapshot it as {snap.name!r}, then overwrite the volume")
        drv.create_snapshot(snap)
        for off in offsets:
            data.write(vol, off, second)
        self.check(data.snapshot_exists(snap), "the snapshot exists")
        self.check(data.read(vol, 0, len(second)) == second, "the volume holds the new data")

        self.step(f"Clone the snapshot into {clone.name} (2 GiB, copy-on-write)")
        drv.create_volume_from_snapshot(clone, snap)
        self.check(data.size_bytes(clone) == 2 * GiB, "the clone is 2 GiB")
        self.check(all(data.read(clone, off, len(first)) == first for off in offsets),
                   "the clone holds the snapshot's bytes, not the later overwrite")
        self.check(data.read(clone, GiB + MiB, 4096) == bytes(4096),
                   "the grown part reads zeros")

        self.step(f"Extend {vol.name} to 2 GiB")
        drv.extend_volume(vol, 2)
        self.check(data.size_bytes(vol) == 2 * GiB, "the volume is 2 GiB")
        self.check(data.read(vol, 0, len(second)) == second, "its data is intact")

        self.step(f"Revert {vol.name} to {snap.name!r}")
        drv.revert_to_snapshot(vol, snap)
        self.check(all(data.read(vol, off, len(first)) == first for off in offsets),
                   "the volume holds the snapshot's bytes again")
        self.check(data.size_bytes(vol) == 2 * GiB, "and keeps its 2 GiB")

        self.step("Connection info for a hypervisor")
        info = drv.initialize_connection(vol, Connector(host="demo-host"))
        forms = connection.renderings(info)
        self.say("os-brick / Nova: " + json.dumps(info))
        self.say("QEMU URI:        " + forms["qemu"])
        self.say("QEMU blockdev:   " + json.dumps(forms["blockdev"]))
        self.say("libvirt disk:")
        self.say(forms["libvirt"])
        drv.terminate_connection(vol, Connector(host="demo-host"))

        self.step("Stats")
        stats = drv.get_volume_stats(refresh=True)
        self.say(json.dumps(stats, indent=2, sort_keys=True))
        self.check(stats["total_volumes"] >= 2, "stats count both volumes")

        self.step("Delete everything")
        drv.delete_volume(clone)
        try:
            drv.delete_volume(vol)
        except VolumeIsBusy as exc:
            self.say(f"deleting {vol.name} before its snapshot is refused: {exc}")
        else:
            self.check(False, "deleting a volume that has a snapshot is refused")
        drv.delete_snapshot(snap)
        drv.delete_volume(vol)
        self.check(not data.exists(vol) and not data.exists(clone)
                   and not data.snapshot_exists(snap), "volume, clone and snapshot are gone")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sheepdog_backend.demo",
                                     description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default="etc/sheepdog-backend-demo.conf",
                        help="ini file whose backends the demo uses (gateway ports are "
                        "rewritten to the embedded server's)")
    args = parser.parse_args(argv)
    demo = Demo()
    try:
        return demo.run(args.config)
    except DemoFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"\ndemo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
