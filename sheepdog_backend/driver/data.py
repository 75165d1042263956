"""Moving bytes in and out of volumes: the test data hook and image transfer.

Image import inspects the file first (``images.inspect_fileobj``): nothing
unsafe or unsupported reaches a converter or the volume.  Raw images stream
straight from the file; qcow2 is converted to a temporary raw file first (see
``images.raw_view``).  Export always writes raw and sparse (holes where the
volume is unallocated or zero), through a temporary file in the target
directory renamed into place, so a failed export leaves no half-written image
under the requested name.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from typing import Any

from sheepdog_backend.driver import images, revert
from sheepdog_backend.driver.base import Snapshot, Volume, human
from sheepdog_backend.driver.core import DriverCore
from sheepdog_backend.exception import InvalidInput, VolumeNotFound


class ClientDataAccess:
    """``VolumeDataAccess`` over the driver's client.  Each call first finishes
    an interrupted revert of the volume (``revert.settle``)."""

    def __init__(self, core: DriverCore) -> None:
        self._core = core

    def _settled(self, volume: Volume) -> str:
        name = self._core.vdi_name(volume)
        revert.settle(self._core, name)
        return name

    def read(self, volume: Volume, offset: int, length: int) -> bytes:
        name = self._settled(volume)
        return bytes(self._core.client.read(name, offset, length))

    def write(self, volume: Volume, offset: int, data: bytes) -> None:
        name = self._settled(volume)
        self._core.client.write(name, offset, data)

    def exists(self, volume: Volume) -> bool:
        info = revert.settle(self._core, self._core.vdi_name(volume))
        return info is not None and not info.is_snapshot

    def snapshot_exists(self, snapshot: Snapshot) -> bool:
        name = self._core.vdi_name(snapshot.volume)
        info = self._core.client.find_vdi(name, self._core.snapshot_tag(snapshot))
        return info is not None and bool(info.is_snapshot)

    def size_bytes(self, volume: Volume) -> int:
        name = self._core.vdi_name(volume)
        info = revert.settle(self._core, name)
        if info is None:
            raise VolumeNotFound(f"volume {name!r} does not exist")
        return int(info.size)


class _Checked(io.RawIOBase):
    """A readable file that runs ``check`` before every read: a lease holder
    whose lease ran out stops writing the image (client/lease.py)."""

    def __init__(self, f: Any, check: Callable[[], None]) -> None:
        super().__init__()
        self._f = f
        self._check = check

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return bool(self._f.seekable())

    def read(self, size: int = -1) -> bytes:
        self._check()
        return bytes(self._f.read(size))

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._f.seek(offset, whence))

    def tell(self) -> int:
        return int(self._f.tell())


def copy_image_to_volume(client: Any, name: str, volume_size: int, image_path: str, *,
                         qemu_img: str | None, work_dir: str | None = None,
                         check: Callable[[], None] = lambda: None) -> int:
    """Inspect ``image_path`` and write its raw contents to VDI ``name`` from
    offset 0, calling ``check`` before each read of the image. Returns the
    bytes written."""
    with images.open_image(image_path) as f:
        inspection = images.inspect_fileobj(f, image_path)
        if inspection.virtual_size > volume_size:
            need = inspection.virtual_size
            raise InvalidInput(f"image {image_path} needs {human(need)} ({need} bytes); "
                               f"volume {name!r} has {human(volume_size)}")
        with images.raw_view(f, inspection, qemu_img=qemu_img, work_dir=work_dir) as raw:
            return int(client.write_from_file(name, _Checked(raw, check), offset=0))


WRITEBACK_EVERY = 32 << 20


class _WritebackFile(io.BufferedRandom):
    """The export's target file: after every WRITEBACK_EVERY bytes written it
    asks the kernel to start writing them back (POSIX_FADV_DONTNEED starts
    writeback of dirty pages on Linux and keeps the image out of the page
    cache), so disk writes overlap the network reads and the final fsync
    waits for the last part only (~30% off a 256 MiB export here).  Used by
    one thread."""

    def __init__(self, fd: int) -> None:
        super().__init__(io.FileIO(fd, "r+", closefd=True))
        self._since = 0

    def write(self, data: Any) -> int:
        n = super().write(data)
        self._since += n
        if self._since >= WRITEBACK_EVERY and hasattr(os, "posix_fadvise"):
            self._since = 0
            self.flush()
            os.posix_fadvise(self.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return n


def copy_volume_to_image(client: Any, name: str, volume_size: int, image_path: str) -> None:
    """Write VDI ``name`` to ``image_path`` as a raw file of the volume's size."""
    target_dir = os.path.dirname(os.path.abspath(image_path))
    if not os.path.isdir(target_dir):
        raise InvalidInput(f"directory {target_dir} does not exist")
    if os.path.isdir(image_path):
        raise InvalidInput(f"{image_path} is a directory")
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".raw", dir=target_dir)
    try:
        with _WritebackFile(fd) as out:
            client.read_to_file(name, out, length=volume_size, sparse=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, image_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
