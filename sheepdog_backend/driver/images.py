"""Backing references and image files: parse, inspect, refuse what is unsafe.

Backing references (``create_volume(..., backing=...)``) name a Sheepdog
snapshot to clone copy-on-write.  Three spellings are parsed:

* QEMU's URI ``sheepdog://host:port/vdi#tag`` (``#N`` = snapshot id N,
  ``[v6]:port`` for IPv6, no host = this cluster);
* QEMU's legacy ``sheepdog:[host:port:]vdi[:tag]``;
* glance_store's ``sheepdog://host:port:image`` (and ``sheepdog://image``).
  glance_store kept images as plain (working) VDIs; such a reference is
  accepted only when that VDI has a snapshot, and the newest snapshot is the
  base (Glance images are immutable, so a snapshot taken after upload holds the
  image).  ``parse_backing_reference`` marks these with ``latest_snapshot``.

Everything else (paths, other schemes, a reference without a tag, bad ports or
names) raises ``InvalidBackingImage`` saying why.  Whether the host belongs to
this cluster and the snapshot exists is checked by the driver, which knows its
gateways.

Image files are inspected with oslo.utils' format inspector before any
converter sees them: raw (also GPT/MBR disks and ISO images, which are raw
bytes) is copied as is; qcow2 that passes every safety check (no backing file,
no external data file, no unknown feature bits) is converted to raw by
``qemu-img convert -f qcow2`` when qemu-img is installed; every other format,
and any file that fails a safety check, is refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, cast
from urllib.parse import unquote

from sheepdog_backend.driver.addresses import parse_gateway
from sheepdog_backend.exception import InvalidBackingImage, InvalidInput
from sheepdog_backend.protocol.naming import validate_name, validate_tag

RAW_LIKE = frozenset({"raw", "gpt", "iso"})
CONVERTIBLE = frozenset({"qcow2"})


@dataclass(frozen=True)
class BackingReference:
    """A parsed reference. ``host`` None means "this cluster's default"."""

    original: str
    vdi: str
    tag: str = ""
    snapid: int = 0
    host: str | None = None
    port: int | None = None
    latest_snapshot: bool = False  # glance_store form: use the newest snapshot

    @property
    def describes(self) -> str:
        snap = self.tag or (f"snapshot id {self.snapid}" if self.snapid else "newest snapshot")
        return f"VDI {self.vdi!r} ({snap})"


def _bad(ref: object, why: str) -> InvalidBackingImage:
    return InvalidBackingImage(f"backing image {ref!r} rejected: {why}")


def parse_backing_reference(ref: str) -> BackingReference:
    """Parse one of the three spellings; InvalidBackingImage for anything else."""
    if not isinstance(ref, str):
        raise _bad(ref, "a backing reference must be a string")
    text = ref.strip()
    if not text:
        raise _bad(ref, "empty reference")
    if "\0" in text:
        raise _bad(ref, "contains a NUL byte")
    if text.startswith(("/", "./", "../", "~")) or (":" not in text and "/" in text):
        raise _bad(ref, "a file path is not a Sheepdog snapshot; only snapshots of this "
                   "cluster can back a volume")
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise _bad(ref, "no scheme: expected sheepdog://host:port/vdi#tag")
    if scheme.lower() != "sheepdog":
        raise _bad(ref, f"scheme {scheme!r} is not sheepdog: only snapshots of this "
                   "Sheepdog cluster can back a volume")
    try:
        if rest.startswith("//"):
            body = rest[2:]
            if "/" in body.split("#", 1)[0]:
                return _parse_uri(ref, body)
            return _parse_glance(ref, body)
        return _parse_legacy(ref, rest)
    except InvalidInput as exc:
        raise _bad(ref, str(exc)) from None


def _snapshot_part(ref: str, fragment: str) -> tuple[str, int]:
    if fragment.isdigit() and int(fragment) != 0:
        snapid = int(fragment)
        if snapid >= 1 << 32:
            raise _bad(ref, f"snapshot id {fragment} is out of range")
        return "", snapid
    validate_tag(fragment)
    return fragment, 0


def _finish(ref: str, vdi: str, fragment: str | None, host: str | None,
            port: int | None) -> BackingReference:
    if not vdi:
        raise _bad(ref, "no VDI name")
    validate_name(vdi)
    if not fragment:
        raise _bad(ref, f"VDI {vdi!r} is named without a snapshot tag: a working VDI "
                   "changes under its clones, only a snapshot can be a base")
    tag, snapid = _snapshot_part(ref, fragment)
    return BackingReference(ref, vdi, tag, snapid, host, port)


def _parse_uri(ref: str, body: str) -> BackingReference:
    """``[host[:port]]/vdi[#tag]`` after ``sheepdog://``."""
    authority, _, path = body.partition("/")
    vdi_part, _, fragment = path.partition("#")
    if "?" in vdi_part:
        raise _bad(ref, "query strings are not part of a sheepdog URI")
    host: str | None = None
    port: int | None = None
    if authority:
        host, port = parse_gateway(authority)
    return _finish(ref, unquote(vdi_part, errors="strict"), unquote(fragment, errors="strict"),
                   host, port)


def _parse_glance(ref: str, body: str) -> BackingReference:
    """glance_store: ``host:port:image`` or ``image`` after ``sheepdog://``."""
    if "#" in body:
        raise _bad(ref, "glance_store references carry no tag; use "
                   "sheepdog://host:port/vdi#tag to name a snapshot")
    if body.startswith("["):
        end = body.find("]")
        if end < 0:
            raise _bad(ref, "unclosed '[' in IPv6 address")
        tail = body[end + 1:]
        port_s, sep, image = tail[1:].partition(":")
        if not tail.startswith(":") or not sep:
            raise _bad(ref, "expected sheepdog://host:port:image")
        host, port = parse_gateway(body[:end + 1] + ":" + port_s)
    elif ":" in body:
        parts = body.split(":", 2)
        if len(parts) != 3:
            raise _bad(ref, "expected sheepdog://host:port:image")
        host, port = parse_gateway(parts[0] + ":" + parts[1])
        image = parts[2]
    else:
        host, port, image = None, None, body
    if not image:
        raise _bad(ref, "no image name")
    validate_name(image)
    return BackingReference(ref, image, host=host, port=port, latest_snapshot=True)


def _parse_legacy(ref: str, rest: str) -> BackingReference:
    """QEMU's ``[host:port:]vdi[:tag]``: with two or more ':' the first two
    fields are host and port."""
    fields = rest.split(":")
    host: str | None = None
    port: int | None = None
    if len(fields) >= 3:
        host, port = parse_gateway(fields[0] + ":" + fields[1])
        fields = fields[2:]
    vdi = fields[0]
    fragment = ":".join(fields[1:]) if len(fields) > 1 else None
    return _finish(ref, vdi, fragment, host, port)


# --------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInspection:
    path: str
    format: str          # detected format name (oslo.utils)
    virtual_size: int    # bytes the volume needs
    file_size: int

    @property
    def raw_like(self) -> bool:
        return self.format in RAW_LIKE


class _ReadOnly:
    """File-object view whose close() leaves the underlying file open."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._f = fileobj

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)


def inspect_fileobj(fileobj: IO[bytes], path: str) -> ImageInspection:
    """Detect the format of an open file and run its safety checks."""
    from oslo_utils.imageutils import format_inspector  # ~0.5 s to import: only when used

    size = os.fstat(fileobj.fileno()).st_size
    fileobj.seek(0)
    wrapper = format_inspector.InspectWrapper(cast(IO[bytes], _ReadOnly(fileobj)))
    try:
        while True:
            chunk = wrapper.read(65536)
            if not chunk:
                wrapper.close()
                break
            if wrapper.format is not None:
                break
        fmt = wrapper.format
    except format_inspector.ImageFormatError as exc:
        raise InvalidBackingImage(f"image {path}: cannot tell its format safely: {exc}") \
            from None
    finally:
        fileobj.seek(0)
    if fmt is None:
        raise InvalidBackingImage(f"image {path}: format could not be determined")
    try:
        fmt.safety_check()
    except format_inspector.SafetyCheckFailed as exc:
        reasons = "; ".join(f"{name}: {err}" for name, err in sorted(exc.failures.items()))
        raise InvalidBackingImage(f"image {path} ({fmt}) is unsafe: {reasons}") from None
    except format_inspector.ImageFormatError as exc:
        raise InvalidBackingImage(f"image {path} ({fmt}) cannot be checked: {exc}") from None
    name = str(fmt)
    if name in RAW_LIKE:
        return ImageInspection(path, name, size, size)
    if name in CONVERTIBLE:
        if fmt.virtual_size <= 0:
            raise InvalidBackingImage(f"image {path} (qcow2) has no virtual size")
        return ImageInspection(path, name, fmt.virtual_size, size)
    raise InvalidBackingImage(f"image {path}: format {name} is not supported; raw and "
                              "qcow2 are (convert it with qemu-img first)")


def inspect_image(path: str) -> ImageInspection:
    """Open ``path`` and inspect it (see ``inspect_fileobj``)."""
    with open_image(path) as f:
        return inspect_fileobj(f, path)


@contextmanager
def open_image(path: str) -> Iterator[IO[bytes]]:
    """Open a regular image file for reading (no devices, FIFOs or dirs).
    O_NONBLOCK keeps a FIFO from blocking the open; it is cleared after the
    type check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InvalidInput(f"image file {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"image file {path} cannot be opened: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"image file {path} is not a regular file")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def find_qemu_img(configured: str = "qemu-img") -> str | None:
    return shutil.which(configured)


@contextmanager
def raw_view(fileobj: IO[bytes], inspection: ImageInspection, *, qemu_img: str | None,
             work_dir: str | None = None) -> Iterator[IO[bytes]]:
    """A raw file object with the image's contents: the file itself when it is
    raw, else a temporary raw conversion (qcow2 only, after inspection).

    The converter reads the already-open, already-inspected file through
    /dev/fd, so swapping the path after inspection cannot smuggle another file
    in."""
    if inspection.raw_like:
        fileobj.seek(0)
        yield fileobj
        return
    if inspection.format not in CONVERTIBLE:
        raise InvalidBackingImage(f"image {inspection.path}: {inspection.format} cannot be "
                                  "converted")
    if qemu_img is None:
        raise InvalidBackingImage(f"image {inspection.path} is qcow2 and qemu-img is not "
                                  "installed: only raw images can be imported")
    fd = fileobj.fileno()
    source = f"/dev/fd/{fd}" if os.path.exists(f"/dev/fd/{fd}") else inspection.path
    with tempfile.TemporaryDirectory(prefix="sheepdog-import-", dir=work_dir) as tmp:
        target = os.path.join(tmp, "image.raw")
        cmd = [qemu_img, "convert", "-q", "-f", "qcow2", "-O", "raw", source, target]
        proc = subprocess.run(cmd, pass_fds=(fd,), capture_output=True, text=True,
                              check=False, timeout=3600)
        if proc.returncode != 0:
            raise InvalidBackingImage(f"image {inspection.path}: qemu-img convert failed: "
                                      f"{proc.stderr.strip() or proc.returncode}")
        size = os.path.getsize(target)
        if size != inspection.virtual_size:
            raise InvalidBackingImage(
                f"image {inspection.path}: conversion produced {size} bytes, the header "
                f"announced {inspection.virtual_size}")
        with open(target, "rb") as raw:
            yield raw
