"""Backing references and image-file inspection."""

from __future__ import annotations

import os
import pathlib
import shutil
import struct
import subprocess

import pytest

from sheepdog_backend.driver import images
from sheepdog_backend.driver.images import BackingReference, parse_backing_reference
from sheepdog_backend.exception import InvalidBackingImage, InvalidInput


@pytest.mark.parametrize("ref,expected", [
    ("sheepdog://127.0.0.1:7000/base#gold",
     dict(vdi="base", tag="gold", host="127.0.0.1", port=7000)),
    ("sheepdog://[::1]:7001/base#gold", dict(vdi="base", tag="gold", host="::1", port=7001)),
    ("sheepdog://node1/base#gold", dict(vdi="base", tag="gold", host="node1", port=7000)),
    ("sheepdog:///base#gold", dict(vdi="base", tag="gold", host=None, port=None)),
    ("sheepdog://127.0.0.1:7000/base#3", dict(vdi="base", tag="", snapid=3)),
    ("sheepdog://h:7000/a%20b#t%231", dict(vdi="a b", tag="t#1")),
    ("sheepdog:base:gold", dict(vdi="base", tag="gold", host=None)),
    ("sheepdog:10.0.0.1:7000:base:gold",
     dict(vdi="base", tag="gold", host="10.0.0.1", port=7000)),
    ("sheepdog://127.0.0.1:7000:image-id",
     dict(vdi="image-id", tag="", host="127.0.0.1", port=7000, latest_snapshot=True)),
    ("sheepdog://[::1]:7000:image-id", dict(vdi="image-id", host="::1", latest_snapshot=True)),
    ("sheepdog://image-id", dict(vdi="image-id", host=None, latest_snapshot=True)),
])
def test_accepted_spellings(ref: str, expected: dict[str, object]) -> None:
    parsed = parse_backing_reference(ref)
    assert isinstance(parsed, BackingReference)
    for key, value in expected.items():
        assert getattr(parsed, key) == value, key


@pytest.mark.parametrize("ref,why", [
    ("/var/lib/images/base.img", "file path"),
    ("images/base.img", "file path"),
    ("./base.img", "file path"),
    ("file:///var/lib/images/base.img", "scheme 'file'"),
    ("rbd:volumes/base@snap", "scheme 'rbd'"),
    ("http://127.0.0.1/base.img", "scheme 'http'"),
    ("base", "no scheme"),
    ("", "empty"),
    ("sheepdog://", "no image name"),
    ("sheepdog://127.0.0.1:7000/#gold", "no VDI name"),
    ("sheepdog://127.0.0.1:notaport/base#gold", "not a number"),
    ("sheepdog://127.0.0.1:70000/base#gold", "outside 1-65535"),
    ("sheepdog://127.0.0.1:7000/base", "without a snapshot tag"),
    ("sheepdog:base", "without a snapshot tag"),
    ("sheepdog:127.0.0.1:7000:base", "without a snapshot tag"),
    ("sheepdog://127.0.0.1:7000/" + "a" * 256 + "#t", "at most 255 bytes"),
    ("sheepdog://127.0.0.1:7000/base#" + "t" * 256, "at most 255 bytes"),
    ("sheepdog://127.0.0.1:7000:img#tag", "carry no tag"),
    ("sheepdog://[::1/base#t", "unclosed"),
    ("sheepdog://h:7000/base?x=1#t", "query"),
    ("sheepdog://h:7000/base#4294967296", "out of range"),
])
def test_rejected_references_say_why(ref: str, why: str) -> None:
    with pytest.raises(InvalidBackingImage, match="rejected: .*" + why.replace("(", r"\(")):
        parse_backing_reference(ref)


def test_non_string_reference() -> None:
    with pytest.raises(InvalidBackingImage):
        parse_backing_reference(42)  # type: ignore[arg-type]


# -- image files ---------------------------------------------------------------

def qcow2_header(*, size: int = 1 << 30, version: int = 3, backing_offset: int = 0,
                 incompatible: int = 0) -> bytes:
    """A qcow2 header as qemu writes it (big-endian, 104 bytes for v3)."""
    head = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", version, backing_offset,
                       0 if not backing_offset else 8, 16, size, 0, 0, 0x30000, 0x10000,
                       1, 0, 0)
    if version >= 3:
        head += struct.pack(">QQQII", incompatible, 0, 0, 4, 104)
    return head.ljust(4096, b"\0")


def write(tmp_path: pathlib.Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_raw_image(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "disk.raw", os.urandom(3 * 65536 + 17))
    info = images.inspect_image(path)
    assert info.format == "raw" and info.raw_like
    assert info.virtual_size == 3 * 65536 + 17


def test_clean_qcow2_header(tmp_path: pathlib.Path) -> None:
    info = images.inspect_image(write(tmp_path, "ok.qcow2", qcow2_header(size=5 << 20)))
    assert info.format == "qcow2" and info.virtual_size == 5 << 20 and not info.raw_like


@pytest.mark.parametrize("kwargs,reason", [
    (dict(backing_offset=512), "backing_file"),
    (dict(incompatible=1 << 2), "data_file"),
    (dict(incompatible=1 << 40), "unknown_features"),
    (dict(version=1), "unknown_features"),
])
def test_unsafe_qcow2_rejected(tmp_path: pathlib.Path, kwargs: dict[str, int],
                               reason: str) -> None:
    path = write(tmp_path, "bad.qcow2", qcow2_header(**kwargs))
    with pytest.raises(InvalidBackingImage, match=f"is unsafe: .*{reason}"):
        images.inspect_image(path)


def test_unsupported_format_rejected(tmp_path: pathlib.Path) -> None:
    # A VMDK sparse header ("KDMV", version 1): recognised, safe or not, never imported.
    vmdk = bytearray(4096)
    struct.pack_into("<4sII", vmdk, 0, b"KDMV", 1, 0)
    with pytest.raises(InvalidBackingImage):
        images.inspect_image(write(tmp_path, "x.vmdk", bytes(vmdk)))


def test_not_a_regular_file(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="not a regular file"):
        images.inspect_image(str(fifo))  # and does not block on the open
    with pytest.raises(InvalidInput, match=r"not a regular file|cannot be opened"):
        images.inspect_image(str(tmp_path))
    with pytest.raises(InvalidInput, match="does not exist"):
        images.inspect_image(str(tmp_path / "absent"))


def test_qcow2_without_qemu_img_is_refused(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "ok.qcow2", qcow2_header(size=1 << 20))
    with images.open_image(path) as f:
        info = images.inspect_fileobj(f, path)
        with pytest.raises(InvalidBackingImage, match="qemu-img is not installed"):
            with images.raw_view(f, info, qemu_img=None):
                pass


def _qemu_img() -> str:
    found = shutil.which("qemu-img")
    if found is None:
        print("SKIP reason: qemu-img (qemu-utils) is not installed")
        pytest.skip("qemu-img (qemu-utils) is not installed")
    return found


def test_qcow2_converted_after_inspection(tmp_path: pathlib.Path) -> None:
    qemu_img = _qemu_img()
    raw = tmp_path / "src.raw"
    payload = os.urandom(70000)
    with open(raw, "wb") as fh:
        fh.truncate(4 << 20)
        fh.seek(1 << 20)
        fh.write(payload)
    qcow = tmp_path / "src.qcow2"
    subprocess.run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(qcow)], check=True, timeout=60)
    with images.open_image(str(qcow)) as f:
        info = images.inspect_fileobj(f, str(qcow))
        assert info.format == "qcow2" and info.virtual_size == 4 << 20
        with images.raw_view(f, info, qemu_img=qemu_img, work_dir=str(tmp_path)) as out:
            data = out.read()
    assert len(data) == 4 << 20
    assert data[1 << 20:(1 << 20) + len(payload)] == payload
    assert data[:1 << 20] == bytes(1 << 20)


@pytest.mark.parametrize("option", ["backing", "data_file"])
def test_real_unsafe_qcow2_rejected(tmp_path: pathlib.Path, option: str) -> None:
    qemu_img = _qemu_img()
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(1 << 20))
    image = tmp_path / "evil.qcow2"
    if option == "backing":
        cmd = [qemu_img, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
               str(image)]
    else:
        cmd = [qemu_img, "create", "-q", "-f", "qcow2", "-o", f"data_file={base}",
               str(image), "1M"]
    subprocess.run(cmd, check=True, timeout=60)
    with pytest.raises(InvalidBackingImage, match="is unsafe"):
        images.inspect_image(str(image))
