"""The real dog, the same commands on a real sheep and on the embedded server.

Both servers start unformatted; every step runs one dog command on each and
compares exit code, stdout and stderr after masking only what legitimately
differs between two clusters: times (ctimes, dates), addresses/ports and the
nodes' capacities.  VDI ids are not masked: they are a hash of the name, so
they must match too.  Steps are ordered (a module's state builds up), each
test function is one stage of a volume's life.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.exception import VdiLocked
from sheepdog_backend.server.embedded import EmbeddedServer
from tests.interop.conftest import Target
from tests.realsheep import SheepCluster, require

MiB = 1 << 20
DATA = bytes((i * 7 + i // 4096) & 0xFF for i in range(MiB))

_DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}(:\d{2})?")
_CREATED = re.compile(r"^Cluster created at .*$", re.M)
_CLOCK = re.compile(r"\b\d{2}:\d{2}:\d{2}\b")
_CAPACITY = re.compile(r"\b\d+(\.\d+)? [KMGTP]B\b")
_USE = re.compile(r"\s*\d+%")


@dataclass(frozen=True)
class Outcome:
    rc: int
    stdout: bytes
    stderr: str


def _mask_sizes(text: str) -> str:
    """`dog node info` rows with Size and Avail masked, Used and Use% kept."""
    out = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 5 and fields[0].strip() and fields[0] != "Id":
            fields[1] = fields[3] = "CAP"
        out.append("\t".join(fields))
    return "\n".join(out)


def _mask(target: Target, text: str, *, capacity: bool | str) -> str:
    # ports differ in length: the padding after an address does too
    text = re.sub(re.escape(target.gateway) + " *", "ADDR ", text)
    text = text.replace(f":{target.port}:", ":PORT:")
    text = text.replace(f"port:{target.port}", "port:PORT")  # `vdi lock list` owners
    text = _CREATED.sub("Cluster created at TIME", text)
    text = _DATE.sub("DATE", text)
    text = _CLOCK.sub("CLOCK", text)
    # `vdi list -r`: the 6th field is the creation time in seconds.
    text = re.sub(r"^([=sc] \S+ \d+ \d+ \d+ \d+ )\d+ ", r"\1CTIME ", text, flags=re.M)
    if capacity == "sizes":
        return _mask_sizes(text)
    if capacity:
        lines = [line if line.startswith("Total virtual") else _USE.sub("N%", _CAPACITY.sub(
            "CAP", line)) for line in text.splitlines()]
        text = "\n".join(lines)
    return text


def run(target: Target, args: tuple[str, ...], stdin: bytes | None,
        capacity: bool | str) -> Outcome:
    proc = target.dog(*args, input=stdin, check=False)
    stdout = proc.stdout
    if args[:2] != ("vdi", "read"):
        stdout = _mask(target, stdout.decode(errors="replace"), capacity=capacity).encode()
    return Outcome(proc.returncode,
                   stdout, _mask(target, proc.stderr.decode(errors="replace"),
                                 capacity=capacity))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, Target]]:
    """An unformatted real node and an unformatted embedded server."""
    require("dog")
    with SheepCluster(tmp_path_factory.mktemp("sbs-real"), nodes=1, format=False) as real:
        server = EmbeddedServer(tmp_path_factory.mktemp("sbs-emb") / "sheep", format=False)
        server.start()
        try:
            host, port = server.addresses[0]
            node = real.nodes[0]
            yield Target("real", node.host, node.port), Target("embedded", host, port)
        finally:
            server.stop()


def same(pair: tuple[Target, Target], *args: str, stdin: bytes | None = None,
         capacity: bool | str = False) -> Outcome:
    """Run `dog args` on both servers; assert equal outcomes; return the real one."""
    real, emb = pair
    a = run(real, args, stdin, capacity)
    b = run(emb, args, stdin, capacity)
    assert (b.rc, b.stderr) == (a.rc, a.stderr), f"dog {' '.join(args)}"
    if a.stdout != b.stdout:
        if args[:2] == ("vdi", "read"):
            raise AssertionError(f"dog {' '.join(args)}: bytes differ")
        assert b.stdout.decode() == a.stdout.decode(), f"dog {' '.join(args)}"
    return a


def test_unformatted_cluster(pair: tuple[Target, Target]) -> None:
    assert "Waiting for cluster to be formatted" in same(pair, "cluster", "info").stdout.decode()
    same(pair, "node", "list")
    assert same(pair, "node", "info", capacity=True).rc != 0
    same(pair, "vdi", "list")
    assert same(pair, "vdi", "create", "early", "4M").rc != 0


def test_cluster_format_and_info(pair: tuple[Target, Target]) -> None:
    assert same(pair, "cluster", "format", "-c", "1", "-l").rc == 0
    assert "running" in same(pair, "cluster", "info").stdout.decode()
    same(pair, "cluster", "info", "-v")
    same(pair, "node", "list")
    same(pair, "node", "info", capacity=True)
    # Used is the node's own objects (none yet), not the rest of the filesystem
    assert "\t0.0 MB\t" in same(pair, "node", "info", capacity="sizes").stdout.decode()


def test_vdi_create_write_read_list(pair: tuple[Target, Target]) -> None:
    assert same(pair, "vdi", "create", "vol", "12M").rc == 0
    assert same(pair, "vdi", "create", "vol", "12M").rc != 0  # exists
    same(pair, "vdi", "create", "-c", "1", "-z", "23", "big-obj", "16M")
    same(pair, "vdi", "create", "-P", "prealloc", "8M")
    same(pair, "vdi", "create", "-y", "hyper", "5T")
    assert same(pair, "vdi", "create", "huge", "5T").rc != 0  # needs -y
    assert same(pair, "vdi", "write", "vol", "0", "1M", stdin=DATA).rc == 0
    same(pair, "vdi", "write", "vol", str(5 * MiB - 4096), "8192", stdin=DATA[:8192])
    assert same(pair, "vdi", "read", "vol", "0", "1M").stdout == DATA
    assert same(pair, "vdi", "read", "vol", str(5 * MiB - 4096), "8192").stdout == DATA[:8192]
    same(pair, "vdi", "read", "vol", str(11 * MiB), "1M")  # never written: zeros
    assert same(pair, "vdi", "read", "vol", "100M", "16").rc != 0
    assert same(pair, "vdi", "read", "missing", "0", "16").rc != 0
    same(pair, "vdi", "list")
    same(pair, "vdi", "list", "-r")
    same(pair, "vdi", "list", "vol")
    same(pair, "node", "info", capacity=True)  # total virtual image size


def test_vdi_snapshot_clone_resize_tree(pair: tuple[Target, Target]) -> None:
    assert same(pair, "vdi", "snapshot", "-s", "s1", "vol").rc == 0
    assert same(pair, "vdi", "snapshot", "-s", "s1", "vol").rc != 0  # tag taken
    same(pair, "vdi", "write", "vol", "0", "4096", stdin=b"\xee" * 4096)
    same(pair, "vdi", "snapshot", "vol")
    assert same(pair, "vdi", "clone", "-s", "s1", "vol", "kid").rc == 0
    assert same(pair, "vdi", "clone", "-s", "s1", "vol", "kid").rc != 0
    assert same(pair, "vdi", "clone", "-s", "nosuch", "vol", "kid2").rc != 0
    assert same(pair, "vdi", "read", "kid", "0", "1M").stdout == DATA
    assert same(pair, "vdi", "read", "-s", "s1", "vol", "0", "1M").stdout == DATA
    assert same(pair, "vdi", "read", "vol", "0", "4096").stdout == b"\xee" * 4096
    assert same(pair, "vdi", "resize", "kid", "20M").rc == 0
    assert same(pair, "vdi", "resize", "kid", "4M").rc != 0  # shrinking
    assert same(pair, "vdi", "resize", "kid", "5T").rc != 0
    same(pair, "vdi", "read", "kid", "16M", "1M")
    same(pair, "vdi", "list")
    same(pair, "vdi", "list", "-r")
    same(pair, "vdi", "tree")
    same(pair, "vdi", "graph")
    same(pair, "vdi", "object", "map", "kid")
    same(pair, "vdi", "object", "location", "vol")
    same(pair, "vdi", "object", "location", "-i", "1", "vol")


def test_vdi_attributes(pair: tuple[Target, Target]) -> None:
    assert same(pair, "vdi", "setattr", "vol", "color", "blue").rc == 0
    assert same(pair, "vdi", "getattr", "vol", "color").stdout == b"blue"
    assert same(pair, "vdi", "getattr", "vol", "missing").rc != 0
    assert same(pair, "vdi", "setattr", "-x", "vol", "color", "red").rc != 0
    same(pair, "vdi", "setattr", "vol", "color", "green")
    assert same(pair, "vdi", "getattr", "vol", "color").stdout == b"green"
    blob = bytes(range(32, 127)) * 40  # from stdin, 3800 bytes
    same(pair, "vdi", "setattr", "vol", "blob", stdin=blob)
    assert same(pair, "vdi", "getattr", "vol", "blob").stdout == blob
    assert same(pair, "vdi", "setattr", "-d", "vol", "color").rc == 0
    assert same(pair, "vdi", "getattr", "vol", "color").rc != 0
    assert same(pair, "vdi", "getattr", "missing", "color").rc != 0


def test_vdi_lock_list_and_unlock(pair: tuple[Target, Target]) -> None:
    """A VDI locked by a client (as QEMU does) is listed, relocking fails,
    `dog vdi lock unlock` frees it (the cluster was formatted with -l)."""
    same(pair, "vdi", "lock", "list")
    assert same(pair, "vdi", "lock", "unlock", "kid").rc != 0  # not locked
    for target in pair:
        with SheepdogClient([target.gateway], retry=RetryPolicy(attempts=1)) as client:
            client.lock_vdi("kid")
            with pytest.raises(VdiLocked):
                client.lock_vdi("kid")
    listed = same(pair, "vdi", "lock", "list").stdout.decode()
    assert "kid" in listed
    assert same(pair, "vdi", "lock", "unlock", "kid").rc == 0
    assert "kid" not in same(pair, "vdi", "lock", "list").stdout.decode()
    for target in pair:
        with SheepdogClient([target.gateway], retry=RetryPolicy(attempts=1)) as client:
            client.release_vdi(client.lock_vdi("kid").vid)


def test_vdi_check(pair: tuple[Target, Target]) -> None:
    assert same(pair, "vdi", "check", "vol").rc == 0
    same(pair, "vdi", "check", "kid")
    same(pair, "vdi", "check", "-s", "s1", "vol")
    assert same(pair, "cluster", "check").rc == 0


def test_vdi_delete_and_rollback(pair: tuple[Target, Target]) -> None:
    assert same(pair, "vdi", "rollback", "-f", "-s", "s1", "vol").rc == 0
    assert same(pair, "vdi", "read", "vol", "0", "1M").stdout == DATA
    assert same(pair, "vdi", "delete", "kid").rc == 0
    # dog exits 0 when there is nothing to delete, saying so
    assert "No VDI found" in same(pair, "vdi", "delete", "kid").stderr
    assert "Failed to find requested tag" in same(pair, "vdi", "delete", "-s", "nosuch",
                                                  "vol").stderr
    assert same(pair, "vdi", "delete", "-s", "s1", "vol").rc == 0
    same(pair, "vdi", "list", "-r")
    assert same(pair, "vdi", "delete", "vol").rc == 0
    same(pair, "vdi", "list", "-r")
    same(pair, "vdi", "tree")
    same(pair, "node", "info", capacity=True)


def test_cluster_reformat(pair: tuple[Target, Target]) -> None:
    """Formatting a non-empty cluster asks first; with "yes" it wipes it."""
    same(pair, "cluster", "format", "-c", "1", stdin=b"no\n")
    assert same(pair, "vdi", "list", "-r").stdout
    assert same(pair, "cluster", "format", "-c", "1", stdin=b"yes\n").rc == 0
    assert same(pair, "vdi", "list", "-r").stdout == b""
    same(pair, "cluster", "info", "-v")
