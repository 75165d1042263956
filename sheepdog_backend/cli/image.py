"""``sheepdog-backend image import|export``: image files in and out of volumes.

How it works: ``import`` inspects the file with the driver's safe inspection
(driver/images.py: raw, or qcow2 without backing/data files or unknown
features) before anything is created, creates the volume when it does not
exist (the image's virtual size rounded up to GiB, or ``--size``), and calls
the driver's ``copy_image_to_volume``; a volume it created is deleted again
when the copy fails.  ``export`` calls ``copy_volume_to_image`` (raw; the driver
writes a temporary file renamed into place) and, for ``--format qcow2``,
converts that with ``qemu-img convert -O qcow2`` (which leaves zeros out).

Progress: while the driver copies, a monitor thread samples how far it got
(for import, the read position of the driver's open image file, from
/proc/self/fdinfo; for export, the size of the temporary file) and draws a
bar on stderr, only when stderr is a terminal.  Nothing is shared with the
copying thread but the file system; the bar stops before the result is
printed.  The result line gives bytes, time and throughput.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sheepdog_backend.cli.common import add_command
from sheepdog_backend.cli.output import Result, human_size
from sheepdog_backend.exception import InvalidInput, SheepdogError, VolumeNotFound

if TYPE_CHECKING:  # the driver is imported only to run a command
    from sheepdog_backend.driver.base import VolumeDriver

GiB = 1 << 30


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = subparsers.add_parser("image", help="import an image file into a volume, or "
                                  "export a volume to a file")
    isub = image.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add_command(isub, "import", "write a raw or qcow2 image file into a volume "
                    "(created when absent)", _import, names={"name": "volume"})
    p.add_argument("name", help="volume (VDI) name")
    p.add_argument("file", help="image file (raw or qcow2; inspected before use)")
    p.add_argument("--size", type=int, default=None, metavar="GiB",
                   help="size of the volume to create (default: the image's virtual size "
                   "rounded up to GiB)")
    p = add_command(isub, "export", "write a volume to an image file", _export,
                    names={"name": "volume"})
    p.add_argument("name", help="volume (VDI) name")
    p.add_argument("file", help="image file to write")
    p.add_argument("--format", dest="image_format", choices=("raw", "qcow2"),
                   default="raw", help="raw (default) or qcow2 (through qemu-img)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")


# -- progress --------------------------------------------------------------------


def _fd_position(path: str) -> int | None:
    """Largest read position of this process's open fds on ``path``."""
    best: int | None = None
    for entry in glob.glob("/proc/self/fd/*"):
        try:
            if os.path.realpath(os.readlink(entry)) != path:
                continue
            with open(f"/proc/self/fdinfo/{os.path.basename(entry)}", encoding="ascii") as f:
                for line in f:
                    if line.startswith("pos:"):
                        pos = int(line.split()[1])
                        best = pos if best is None else max(best, pos)
        except (OSError, ValueError):
            continue
    return best


class Progress:
    """A progress bar on ``stream`` fed by ``sample()`` (bytes done so far)."""

    def __init__(self, label: str, total: int, sample: Callable[[], int | None],
                 stream: Any = None, interval: float = 0.2) -> None:
        self.label, self.total, self.sample = label, max(1, total), sample
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start = time.monotonic()

    def _line(self, done: int) -> str:
        frac = min(1.0, done / self.total)
        width = 30
        bar = "#" * int(frac * width)
        rate = done / max(1e-6, time.monotonic() - self.start)
        return (f"\r{self.label} [{bar:<{width}}] {frac * 100:5.1f}% "
                f"{human_size(done)} / {human_size(self.total)} {human_size(rate)}/s ")

    def _loop(self) -> None:
        last = 0
        while not self._stop.wait(self.interval):
            done = self.sample()
            if done is not None:
                last = max(last, done)
            self.stream.write(self._line(last))
            self.stream.flush()

    def __enter__(self) -> Progress:
        if getattr(self.stream, "isatty", lambda: False)():
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if exc[0] is None:
                self.stream.write(self._line(self.total))
            self.stream.write("\n")
            self.stream.flush()


def _throughput(verb: str, size: int, seconds: float, what: str) -> str:
    rate = size / max(seconds, 1e-6)
    return f"{verb} {human_size(size)} {what} in {seconds:.1f} s ({human_size(rate)}/s)"


# -- import ----------------------------------------------------------------------


def _import(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    from sheepdog_backend.driver import images
    from sheepdog_backend.driver.base import Volume

    path = os.path.realpath(args.file)
    inspection = images.inspect_image(args.file)  # refuses unsafe files before any change
    volume = Volume(id=args.name, size=1, name=args.name)
    describe = getattr(driver, "describe_volume", None)
    created = False
    try:
        info = describe(volume) if describe is not None else None
    except VolumeNotFound:
        info = None
    if info is None:
        size = args.size if args.size is not None else max(
            1, -(-inspection.virtual_size // GiB))
        if size < 1 or size * GiB < inspection.virtual_size:
            raise InvalidInput(f"--size {size} GiB is smaller than the image "
                               f"({human_size(inspection.virtual_size)})")
        volume = Volume(id=args.name, size=size, name=args.name)
        driver.create_volume(volume)
        created = True
    elif args.size is not None:
        raise InvalidInput(f"volume {args.name!r} exists already "
                           f"({human_size(info['size_bytes'])}); --size applies only to a "
                           "volume the import creates")
    start = time.monotonic()
    try:
        with Progress(f"import {args.name}", inspection.virtual_size,
                      lambda: _fd_position(path)):
            driver.copy_image_to_volume(volume, args.file)
    except BaseException:
        if created:
            try:
                driver.delete_volume(volume)
            except SheepdogError:
                pass
        raise
    seconds = time.monotonic() - start
    what = f"({inspection.format}) into {'new ' if created else ''}volume {args.name}"
    message = _throughput("imported", inspection.virtual_size, seconds, what)
    return Result(message=message, data={
        "message": message, "volume": args.name, "created": created,
        "format": inspection.format, "bytes": inspection.virtual_size,
        "seconds": round(seconds, 3)})


# -- export ----------------------------------------------------------------------


def _newest_temp(directory: str) -> int | None:
    sizes = []
    for entry in glob.glob(os.path.join(directory, ".export-*")):
        try:
            sizes.append(os.stat(entry).st_size)
        except OSError:
            continue
    return max(sizes) if sizes else None


@contextmanager
def _qcow2_target(path: str, qemu_img: str) -> Iterator[str]:
    """A raw file path to export to; converted to qcow2 at ``path`` on success."""
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(prefix=".export-qcow2-", dir=directory) as tmp:
        raw = os.path.join(tmp, "volume.raw")
        yield raw
        out = os.path.join(tmp, "volume.qcow2")
        proc = subprocess.run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", raw,
                               out], capture_output=True, text=True, check=False,
                              timeout=3600)
        if proc.returncode != 0:
            raise InvalidInput(f"qemu-img convert to qcow2 failed: "
                               f"{proc.stderr.strip() or proc.returncode}")
        os.replace(out, path)


def _export(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    from sheepdog_backend.driver import images
    from sheepdog_backend.driver.base import Volume

    path = args.file
    if os.path.isdir(path):
        raise InvalidInput(f"{path} is a directory")
    if os.path.lexists(path) and not args.force:
        raise InvalidInput(f"{path} exists: pass --force to overwrite it")
    volume = Volume(id=args.name, size=1, name=args.name)
    describe = getattr(driver, "describe_volume", None)
    size = int(describe(volume)["size_bytes"]) if describe is not None else 0
    qemu_img = None
    if args.image_format == "qcow2":
        configured = getattr(driver.configuration, "qemu_img_path", None) or "qemu-img"
        qemu_img = images.find_qemu_img(configured)
        if qemu_img is None:
            raise InvalidInput(f"qcow2 export needs qemu-img ({configured!r} not found; "
                               "install qemu-utils or export raw)")
    directory = os.path.dirname(os.path.abspath(path))
    start = time.monotonic()
    with Progress(f"export {args.name}", size,
                  lambda: _newest_temp(directory) if qemu_img is None
                  else _newest_temp_in(directory)):
        if qemu_img is None:
            driver.copy_volume_to_image(volume, path)
        else:
            with _qcow2_target(path, qemu_img) as raw:
                driver.copy_volume_to_image(volume, raw)
    seconds = time.monotonic() - start
    written = os.stat(path)
    message = _throughput("exported", size, seconds,
                          f"of volume {args.name} to {path} ({args.image_format}, "
                          f"{human_size(written.st_blocks * 512)} allocated)")
    return Result(message=message, data={
        "message": message, "volume": args.name, "file": path,
        "format": args.image_format, "bytes": size,
        "allocated_bytes": written.st_blocks * 512, "seconds": round(seconds, 3)})


def _newest_temp_in(directory: str) -> int | None:
    sizes = [s for d in glob.glob(os.path.join(directory, ".export-qcow2-*"))
             if (s := _newest_temp(d)) is not None]
    return max(sizes) if sizes else None
