"""Bad input at every public entry point (issue 9, "Build with it"): one table of
driver methods, CLI commands, ini options, backing references, image files and
frames fed to the readers, each with the exact error type it must get, and a
check that nothing changed on the cluster (every VDI, tag, size and vid as
before, and the server's object files untouched)."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sheepdog_backend.client import SheepdogClient
from sheepdog_backend.client.lease_records import ANCHOR
from sheepdog_backend.driver.base import Connector, Snapshot, Volume, VolumeDriver
from sheepdog_backend.driver.loader import load_backend
from sheepdog_backend.exception import (
    ConfigError,
    DriverLoadError,
    HyperVolumeUnsupported,
    InvalidBackingImage,
    InvalidInput,
    InvalidPayload,
    MessageTooLarge,
    ProtocolError,
    SnapshotNotFound,
    VdiExists,
    VolumeIsBusy,
    VolumeNotFound,
)
from sheepdog_backend.protocol.framing import RequestReader, ResponseReader
from sheepdog_backend.protocol.naming import decode_lookup_payload, sd_hash_vdi
from sheepdog_backend.protocol.oid import VDI_ATTR_BIT, VDI_BIT, oid_to_vid
from sheepdog_backend.protocol.structs import ClusterInfo, EpochLog
from sheepdog_backend.testing.fixtures import EmbeddedServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
GiB = 1 << 30


@dataclass
class Env:
    driver: VolumeDriver
    server: EmbeddedServer
    tmp: pathlib.Path
    ini: str


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Env], object]
    error: type[BaseException]
    match: str = ""


def vol(name: str, size: int = 1) -> Volume:
    return Volume(id=name, size=size, name=name)


def snap(volume: str, tag: str) -> Snapshot:
    return Snapshot(id=tag, volume=vol(volume), name=tag)


def create_hyper(env: Env, size: int, **kwargs: Any) -> object:
    with SheepdogClient(env.server.gateways) as client:
        return client.create_vdi("h2", size, hyper=True, **kwargs)


def file_with(env: Env, name: str, data: bytes) -> str:
    path = env.tmp / name
    path.write_bytes(data)
    return str(path)


def qcow2_header(*, backing: bool = False, features: int = 0) -> bytes:
    """A qcow2 v3 header of a 1 GiB image (oslo's inspector reads it)."""
    header = bytearray(4096)
    backing_name = b"/etc/passwd"
    struct.pack_into(">4sIQIIQIIQQIIQQQQII", header, 0, b"QFI\xfb", 3,
                     104 if backing else 0, len(backing_name) if backing else 0, 16, GiB,
                     0, 1, 3 * 65536, 65536, 1, 0, 2 * 65536, features, 0, 0, 4, 112)
    if backing:
        header[104:104 + len(backing_name)] = backing_name
    return bytes(header) + bytes(65536 * 3)


def ini_case(env: Env, body: str) -> object:
    path = env.tmp / "bad.conf"
    path.write_text(body)
    return load_backend(str(path))


def ini_with(option: str) -> Callable[[Env], object]:
    return lambda env: ini_case(env, "[DEFAULT]\nenabled_backends = b\n\n[b]\n"
                                f"sheepdog_gateways = {env.server.gateways[0]}\n{option}\n")


def _backing(ref: str) -> Callable[[Env], object]:
    return lambda env: env.driver.create_volume(vol("bk"), backing=ref)


def feed(reader: RequestReader | ResponseReader, data: bytes) -> object:
    reader.feed(data)
    return reader.next_message()


def header(*, flags: int = 0, data_length: int = 0) -> bytes:
    """A 48-byte request header (sheepdog-protocol.md §3); flags 1 = WRITE."""
    return struct.pack("<BBHIII", 0x02, 0x01, flags, 0, 1, data_length) + bytes(32)


def _twice(reader: ResponseReader, data: bytes) -> object:
    reader.feed(data)
    try:
        reader.next_message()
    except MessageTooLarge:
        pass
    return reader.next_message()


def response(*, data_length: int = 0) -> bytes:
    return struct.pack("<BBHIII", 0x02, 0x01, 0, 0, 1, data_length) + bytes(32)


REFS = ["rbd:pool/img@s", "/var/lib/images/base.img", "file:///etc/passwd",
        "http://example.com/img", "", "sheepdog:///base-vol", "sheepdog:///base-vol#nosnap",
        "sheepdog://10.9.9.9:7000/base-vol#s1", "sheepdog:///nosuch#s1",
        "sheepdog:base-vol", "sheepdog://[::1/base-vol#s1"]

CASES: list[Case] = [
    # -- driver methods: names --------------------------------------------------------
    Case("create-empty-name", lambda e: e.driver.create_volume(vol("")), InvalidInput),
    Case("create-no-name-no-id", lambda e: e.driver.create_volume(
        Volume(id="", size=1, name=None)), InvalidInput, "id"),
    Case("snapshot-no-name-no-id", lambda e: e.driver.create_snapshot(
        Snapshot(id="", volume=vol("base-vol"), name=None)), InvalidInput, "id"),
    Case("create-not-utf8", lambda e: e.driver.create_volume(vol("\udcff\udcfe")),
         InvalidInput, "not valid UTF-8"),
    Case("create-newline", lambda e: e.driver.create_volume(vol("a\nb")), InvalidInput,
         "control"),
    Case("create-del-char", lambda e: e.driver.create_volume(vol("a\x7fb")), InvalidInput),
    Case("create-at-sign", lambda e: e.driver.create_volume(vol("a@b")), InvalidInput, "@"),
    Case("create-hash", lambda e: e.driver.create_volume(vol("a#b")), InvalidInput, "#"),
    Case("create-256-bytes", lambda e: e.driver.create_volume(vol("x" * 256)), InvalidInput,
         "255"),
    Case("create-nul", lambda e: e.driver.create_volume(vol("a\0b")), InvalidInput),
    Case("snapshot-digits-tag", lambda e: e.driver.create_snapshot(snap("base-vol", "12")),
         InvalidInput, "only digits"),
    Case("snapshot-newline-tag", lambda e: e.driver.create_snapshot(snap("base-vol", "a\nb")),
         InvalidInput),
    Case("snapshot-not-a-snapshot", lambda e: e.driver.create_snapshot("s1"),  # type: ignore[arg-type]
         InvalidInput),
    Case("delete-snapshot-not-a-snapshot", lambda e: e.driver.delete_snapshot(
        "s1"), InvalidInput),  # type: ignore[arg-type]
    Case("clone-from-not-a-snapshot", lambda e: e.driver.create_volume_from_snapshot(
        vol("c"), "s1"), InvalidInput),  # type: ignore[arg-type]
    Case("revert-to-not-a-snapshot", lambda e: e.driver.revert_to_snapshot(
        vol("base-vol"), "s1"), InvalidInput),  # type: ignore[arg-type]
    Case("clone-of-not-a-volume", lambda e: e.driver.create_cloned_volume(
        vol("c"), "base-vol"), InvalidInput),  # type: ignore[arg-type]
    Case("volume-not-a-volume", lambda e: e.driver.delete_volume("base-vol"),  # type: ignore[arg-type]
         InvalidInput),
    # -- driver methods: sizes and state ------------------------------------------------
    Case("create-size-0", lambda e: e.driver.create_volume(vol("z", 0)), InvalidInput),
    Case("create-size-negative", lambda e: e.driver.create_volume(vol("z", -1)), InvalidInput),
    Case("create-size-float", lambda e: e.driver.create_volume(vol("z", 1.5)),  # type: ignore[arg-type]
         InvalidInput),
    Case("create-size-text", lambda e: e.driver.create_volume(vol("z", "1")),  # type: ignore[arg-type]
         InvalidInput),
    Case("create-size-bool", lambda e: e.driver.create_volume(vol("z", True)), InvalidInput),
    Case("create-beyond-2-pib", lambda e: e.driver.create_volume(vol("z", 3 << 20)),
         InvalidInput, "set sheepdog_hyper_volumes = true"),
    Case("create-exists-other-size", lambda e: e.driver.create_volume(vol("base-vol", 2)),
         VdiExists, "already exists with 1 GiB, not 2 GiB"),
    Case("extend-shrink", lambda e: e.driver.extend_volume(vol("grown"), 1), InvalidInput,
         "is 2 GiB; it can only grow, not shrink to 1 GiB"),
    Case("clone-smaller-than-source", lambda e: e.driver.create_cloned_volume(
        vol("c", 1), vol("grown", 2)), InvalidInput, "source 'grown' (2 GiB)"),
    # -- hyper volumes: what Sheepdog 1.0 cannot do with them ------------------------------
    Case("hyper-snapshot", lambda e: e.driver.create_snapshot(snap("hyper-vol", "s")),
         HyperVolumeUnsupported, "cannot snapshot it, so it cannot have snapshots"),
    Case("hyper-clone", lambda e: e.driver.create_cloned_volume(
        vol("c", 6 << 10), vol("hyper-vol", 5 << 10)), HyperVolumeUnsupported, "clones"),
    Case("hyper-revert", lambda e: e.driver.revert_to_snapshot(
        vol("hyper-vol", 5 << 10), snap("hyper-vol", "s")), HyperVolumeUnsupported, "reverts"),
    Case("hyper-attach", lambda e: e.driver.initialize_connection(
        vol("hyper-vol"), Connector(host="h")), HyperVolumeUnsupported, "cannot be attached"),
    Case("hyper-extend-past-16-pib", lambda e: e.driver.extend_volume(
        vol("hyper-vol"), (16 << 20) + 1), HyperVolumeUnsupported, "at most 16 PiB"),
    Case("hyper-client-too-large", lambda e: create_hyper(e, (1 << 54) + 1), InvalidInput,
         "16 PiB"),
    Case("hyper-client-object-size", lambda e: create_hyper(e, 1 << 40, block_size_shift=25),
         InvalidInput, "4 MiB objects"),
    Case("extend-missing", lambda e: e.driver.extend_volume(vol("nosuch"), 2), VolumeNotFound),
    Case("extend-past-object-cap", lambda e: e.driver.extend_volume(vol("base-vol"), 5 << 10),
         InvalidInput, "create a new volume"),
    Case("snapshot-of-missing", lambda e: e.driver.create_snapshot(snap("nosuch", "s")),
         VolumeNotFound),
    Case("delete-with-snapshots", lambda e: e.driver.delete_volume(vol("base-vol")),
         VolumeIsBusy),
    Case("clone-from-missing-snapshot",
         lambda e: e.driver.create_volume_from_snapshot(vol("c"), snap("base-vol", "nosnap")),
         SnapshotNotFound),
    Case("clone-smaller-than-snapshot",
         lambda e: e.driver.create_volume_from_snapshot(vol("c", 1), snap("grown", "g1")),
         InvalidInput),
    Case("revert-missing-snapshot",
         lambda e: e.driver.revert_to_snapshot(vol("base-vol"), snap("base-vol", "nosnap")),
         SnapshotNotFound),
    Case("revert-missing-volume",
         lambda e: e.driver.revert_to_snapshot(vol("nosuch"), snap("nosuch", "s1")),
         VolumeNotFound),
    Case("connect-missing", lambda e: e.driver.initialize_connection(vol("nosuch"),
                                                                     Connector(host="h")),
         VolumeNotFound),
    Case("manage-no-source-name", lambda e: e.driver.manage_existing(vol("m"), {}),
         InvalidInput),
    Case("manage-not-a-dict", lambda e: e.driver.manage_existing(vol("m"), "base-vol"),  # type: ignore[arg-type]
         InvalidInput),
    Case("manage-name-outside-alphabet",
         lambda e: e.driver.manage_existing(vol("m"), {"source-name": "made@by-dog"}),
         InvalidInput, "@"),
    Case("manage-missing-vdi",
         lambda e: e.driver.manage_existing(vol("m"), {"source-name": "nosuch"}),
         VolumeNotFound),
    # -- backing references ------------------------------------------------------------
    *(Case(f"backing-{i}", _backing(ref), InvalidBackingImage) for i, ref in enumerate(REFS)),
    # -- image files -------------------------------------------------------------------
    Case("image-missing-file",
         lambda e: e.driver.copy_image_to_volume(vol("imgdst"), str(e.tmp / "absent")),
         InvalidInput),
    Case("image-directory", lambda e: e.driver.copy_image_to_volume(vol("imgdst"), str(e.tmp)),
         InvalidInput),
    Case("image-device", lambda e: e.driver.copy_image_to_volume(vol("imgdst"), "/dev/null"),
         InvalidInput),
    Case("image-qcow2-backing-file", lambda e: e.driver.copy_image_to_volume(
        vol("imgdst"), file_with(e, "b.qcow2", qcow2_header(backing=True))),
         InvalidBackingImage),
    Case("image-qcow2-unknown-features", lambda e: e.driver.copy_image_to_volume(
        vol("imgdst"), file_with(e, "f.qcow2", qcow2_header(features=1 << 40))),
         InvalidBackingImage),
    Case("image-vmdk", lambda e: e.driver.copy_image_to_volume(
        vol("imgdst"), file_with(e, "d.vmdk", b"KDMV" + bytes(1 << 16))), InvalidBackingImage),
    Case("image-larger-than-volume", lambda e: e.driver.copy_image_to_volume(
        vol("imgdst"), _sparse(e, GiB + 4096)), InvalidInput),
    Case("image-into-missing-volume", lambda e: e.driver.copy_image_to_volume(
        vol("nosuch"), file_with(e, "small.raw", b"x" * 4096)), VolumeNotFound),
    Case("export-into-missing-dir", lambda e: e.driver.copy_volume_to_image(
        vol("base-vol"), str(e.tmp / "nodir" / "out.raw")), InvalidInput),
    # -- ini options -------------------------------------------------------------------
    Case("ini-port-range", ini_with("sheepdog_store_port = 99999"), ConfigError, "65535"),
    Case("ini-unknown-option", ini_with("sheepdog_gatways = x"), ConfigError, "did you mean"),
    Case("ini-bad-gateway", ini_with("sheepdog_gateways = host:notaport"), ConfigError),
    Case("ini-erasure-code", ini_with("sheepdog_erasure_code = 3:2"), ConfigError),
    Case("ini-copies-and-ec", ini_with("sheepdog_copies = 2\nsheepdog_erasure_code = 4:2"),
         ConfigError),
    Case("ini-template", ini_with("volume_name_template = vol"), ConfigError, "%s"),
    Case("ini-shift-19", ini_with("sheepdog_block_size_shift = 19"), ConfigError),
    Case("ini-cluster-id", ini_with("sheepdog_cluster_id = xyz"), ConfigError),
    Case("ini-max-size-negative", ini_with("sheepdog_max_volume_size = -1"), ConfigError),
    Case("ini-inline-comment", ini_with("sheepdog_store_address = 10.0.0.1  # comment"),
         ConfigError),
    Case("ini-default-backend-option", lambda e: ini_case(
        e, "[DEFAULT]\nenabled_backends = b\nsheepdog_copies = 2\n\n[b]\n"), ConfigError,
         "backend_defaults"),
    Case("ini-default-unknown", lambda e: ini_case(
        e, "[DEFAULT]\nenabled_backends = b\nmade_up = 1\n\n[b]\n"), ConfigError),
    Case("ini-no-section", lambda e: ini_case(e, "[DEFAULT]\nenabled_backends = b\n"),
         ConfigError),
    Case("ini-no-backends", lambda e: ini_case(e, "[DEFAULT]\n"), ConfigError),
    Case("ini-bad-driver", ini_with("volume_driver = nosuch"), DriverLoadError),
    Case("ini-not-a-driver", ini_with("volume_driver = os.path.join"), DriverLoadError),
    Case("ini-not-ini", lambda e: ini_case(e, "\x00\x01 not an ini [[["), ConfigError),
    # -- frames fed to the readers and the client's decoders ------------------------------
    Case("frame-request-too-large",
         lambda e: feed(RequestReader(), header(flags=1, data_length=0xFFFFFFFF)),
         MessageTooLarge),
    Case("frame-response-too-large",
         lambda e: feed(ResponseReader(), response(data_length=0xFFFFFFFF)), MessageTooLarge),
    Case("frame-reader-stays-failed", lambda e: _twice(ResponseReader(),
                                                       response(data_length=0xFFFFFFFF)),
         MessageTooLarge),
    Case("decode-short-cluster-info", lambda e: ClusterInfo.decode(b"x" * 10), ProtocolError),
    Case("decode-cluster-info-nodes", lambda e: ClusterInfo.decode(
        b"\x0a\x00\xff\x7f" + bytes(491564)), ProtocolError, "nr_nodes"),
    Case("decode-empty-epoch-log", lambda e: EpochLog.decode(b"", 0), ProtocolError),
    Case("decode-lookup-payload", lambda e: decode_lookup_payload(b"v" * 100), InvalidPayload),
]


def _sparse(env: Env, size: int) -> str:
    path = env.tmp / "sparse.raw"
    with path.open("wb") as f:
        f.truncate(size)
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("bad")
    with EmbeddedServer(tmp / "data") as server:
        ini = tmp / "b.conf"
        ini.write_text(f"[DEFAULT]\nenabled_backends = b\n\n[b]\nsheepdog_gateways = "
                       f"{server.gateways[0]}\nsheepdog_retry_attempts = 2\n"
                       "sheepdog_retry_deadline = 5\n"
                       # leases released when a call ends, so no_lease_held can tell
                       "sheepdog_lease_reuse = 0\n")
        driver = load_backend(str(ini))
        driver.do_setup()
        driver.check_for_setup_error()
        driver.create_volume(vol("base-vol"))
        driver.create_snapshot(snap("base-vol", "s1"))
        driver.create_volume(vol("grown", 2))
        driver.create_snapshot(snap("grown", "g1"))
        driver.create_volume(vol("imgdst"))
        with SheepdogClient(server.gateways) as client:
            client.create_vdi("hyper-vol", 5 << 40, hyper=True)
        try:
            yield Env(driver, server, tmp, str(ini))
        finally:
            driver.close()


def lease_files(env: Env) -> dict[pathlib.Path, bool]:
    """The objects of the volume leases' bookkeeping (client/lease.py: the
    anchor VDI's inode and attribute records), each with True while its
    record is live (held): the first byte of a released record is cleared."""
    with SheepdogClient(env.server.gateways) as client:
        anchors = {v.vid for v in client.list_vdis() if v.name == ANCHOR}
    out = {}
    for p in pathlib.Path(env.server.data_dir).rglob("*"):
        try:
            oid = int(p.name, 16)
        except ValueError:
            continue
        if oid & VDI_ATTR_BIT and oid_to_vid(oid) == sd_hash_vdi(ANCHOR.encode()):
            out[p] = p.read_bytes()[:1] not in (b"", b"\0")
        elif oid & VDI_BIT and oid_to_vid(oid) in anchors:
            out[p] = False
    return out


def cluster_state(env: Env) -> tuple[Any, ...]:
    """The VDIs and object files, but for the leases' bookkeeping: taking and
    releasing a lease leaves a released record, a lock rather than a change
    (no_lease_held checks that nothing stays held)."""
    leases = lease_files(env)
    with SheepdogClient(env.server.gateways) as client:
        vdis = sorted((v.name, v.tag, v.vid, v.size, v.snap_id, v.parent_vid)
                      for v in client.list_vdis() if v.name != ANCHOR)
    files = sorted((p.relative_to(env.server.data_dir).as_posix(), p.stat().st_size)
                   for p in pathlib.Path(env.server.data_dir).rglob("*") if p.is_file()
                   and "obj" in p.as_posix() and p not in leases)
    return tuple(vdis), tuple(files)


def no_lease_held(env: Env) -> bool:
    return not any(lease_files(env).values())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_its_exact_error_and_changes_nothing(env: Env, case: Case) -> None:
    before = cluster_state(env)
    with pytest.raises(Exception) as info:
        case.call(env)
    assert type(info.value) is case.error, f"{case.id}: {type(info.value).__name__}: " \
        f"{info.value}"
    assert case.match in str(info.value), str(info.value)
    assert str(info.value), "the error must say why"
    assert cluster_state(env) == before
    assert no_lease_held(env)


# More CLI cases, each through a real subprocess, are in test_cli_operator.py.
CLI_CASES: list[tuple[str, list[str], int, str]] = [
    ("empty-name", ["volume", "create", "", "--size", "1"], 5, "InvalidInput"),
    ("size-zero", ["volume", "create", "v", "--size", "0"], 2, "UsageError"),
    ("delete-busy", ["volume", "delete", "base-vol"], 6, "VolumeIsBusy"),
    ("backing-rbd", ["volume", "create", "x", "--size", "1", "--backing", "rbd:a/b@c"], 5,
     "InvalidBackingImage"),
    ("image-device", ["image", "import", "x", "/dev/null"], 5, "InvalidInput"),
]


def test_cli_bad_input_exit_codes_and_error_types(env: Env) -> None:
    before = cluster_state(env)
    environ = {k: v for k, v in os.environ.items() if k != "SHEEPDOG_BACKEND_CONFIG"}
    for case_id, argv, code, error in CLI_CASES:
        done = subprocess.run([sys.executable, "-m", "sheepdog_backend", "--json",
                               "--config-file", env.ini, *argv], capture_output=True,
                              text=True, timeout=60, cwd=ROOT, env=environ, check=False,
                              errors="replace")
        assert done.returncode == code, (case_id, done.stderr)
        assert json.loads(done.stderr.strip().splitlines()[-1])["error"] == error, \
            (case_id, done.stderr)
    assert cluster_state(env) == before
    assert no_lease_held(env)
