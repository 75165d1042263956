"""A name's snapshots found from its lookup and probe chain (no bitmaps) are
exactly those dog lists, through snapshots, rollback, re-creation and
deletion of the working VDI, on the embedded server and a real sheep."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest

from sheepdog_backend.client import Ask, RetryPolicy, SheepdogClient
from sheepdog_backend.client.vdi import CHAIN_READ_LIMIT, chain_through
from sheepdog_backend.exception import ProtocolError
from sheepdog_backend.protocol.constants import SD_NR_VDIS
from sheepdog_backend.testing.fixtures import EmbeddedServer
from tests.realsheep import SheepCluster

MiB = 1 << 20


def test_chain_through_wraps_to_one() -> None:
    assert chain_through(10, 10) == [10]
    assert chain_through(10, 13) == [10, 11, 12, 13]
    top = SD_NR_VDIS - 1
    assert chain_through(top - 1, 2) == [top - 1, top, 1, 2]


def test_chain_through_never_builds_a_span_past_its_limit() -> None:
    """A working VDI's id comes from the server: a corrupted reply naming a vid
    far down the chain (or outside the 24-bit space) must not build a list of
    millions of vids (the client fuzz test hit MemoryError in list_snapshots)."""
    assert chain_through(10, 10 + CHAIN_READ_LIMIT) is None
    assert chain_through(SD_NR_VDIS - 5, CHAIN_READ_LIMIT) is None
    assert len(chain_through(10, 9 + CHAIN_READ_LIMIT) or []) == CHAIN_READ_LIMIT
    for bad in (0, SD_NR_VDIS, 0xFFFF_FFFF):
        with pytest.raises(ProtocolError):
            chain_through(10, bad)


def history(client: SheepdogClient) -> Iterator[tuple[str, list[str]]]:
    """Steps on VDI 'fam' (with neighbours) and the snapshot tags expected after each."""
    client.create_vdi("fam", 8 * MiB)
    client.create_vdi("other", 8 * MiB)
    yield "created", []
    client.set_attr("fam", KEY, b"first")
    yield "an attribute", []
    client.delete_attr("fam", KEY)  # the record's object stays, its name cleared
    yield "the attribute deleted", []
    client.set_attr("fam", KEY, b"second")  # lands on the same object again
    client.snapshot_vdi("fam", "s1")
    client.snapshot_vdi("other", "o1")
    client.snapshot_vdi("fam", "s2")
    yield "two snapshots", ["s1", "s2"]
    client.rollback_vdi("fam", "s1")
    yield "rolled back", ["s1", "s2"]
    client.delete_vdi("fam")
    yield "working deleted", ["s1", "s2"]
    snapid = client.list_snapshots("fam")[-1].snap_id
    client.set_attr("fam", OTHER_KEY, b"x" * 5000, snapid=snapid)
    client.delete_attr("fam", KEY, snapid=snapid)
    yield "attributes changed without a working VDI", ["s1", "s2"]
    client.create_vdi("fam", 8 * MiB)
    client.snapshot_vdi("fam", "s3")
    yield "created again", ["s1", "s2", "s3"]
    client.delete_vdi("fam", "s2")
    yield "one snapshot deleted", ["s1", "s3"]


KEY, OTHER_KEY = "sheepdog-backend.revert-intent", "sheepdog-backend.export"


def check_survey(client: SheepdogClient, step: str, want: list[str]) -> None:
    """The survey (one pipelined lookup + attribute reads, then headers) says
    what the separate calls say: the working VDI, the snapshot a tag names,
    the family's snapshots, and the attributes read directly from their
    objects equal GET_VDI_ATTR's answer (through a snapshot while the name
    has no working VDI)."""
    working = client.find_vdi("fam")
    found = client.survey("fam", tag="s1", keys=(KEY, OTHER_KEY), family=True)
    assert found.working == working, step
    assert found.tagged == client.find_vdi("fam", "s1"), step
    assert [v.tag for v in found.snapshots] == want, step
    snapid = 0 if working is not None else client.list_snapshots("fam")[-1].snap_id
    assert found.attrs == {KEY: client.get_attr("fam", KEY, snapid=snapid),
                           OTHER_KEY: client.get_attr("fam", OTHER_KEY, snapid=snapid)}, step
    # several names in the same two trips: each answer is its own survey's
    other, fam, again = client.surveys([Ask("other", "o1", look=False),
                                        Ask("fam", "s1", (KEY, OTHER_KEY), family=True),
                                        Ask("other", family=True)])
    assert fam == found, step
    assert other.working is None, step  # not looked up
    assert other.tagged == client.find_vdi("other", "o1"), step
    assert again.working == client.find_vdi("other"), step
    assert again.snapshots == client.list_snapshots("other"), step


def run_history(client: SheepdogClient, dog_tags: Callable[[], list[str]] | None) -> None:
    for step, want in history(client):
        got = [v.tag for v in client.list_snapshots("fam")]
        assert got == want, step
        check_survey(client, step, want)
        if dog_tags is not None:
            assert sorted(dog_tags()) == sorted(want), step
    assert [v.tag for v in client.list_snapshots("other")] == ["o1"]


def test_family_on_the_embedded_server(embedded_server: EmbeddedServer) -> None:
    with SheepdogClient(embedded_server.gateways, retry=RetryPolicy(attempts=2)) as client:
        run_history(client, None)


def test_family_on_a_real_sheep_matches_dog(real_sheep: SheepCluster,
                                            tmp_path: pathlib.Path) -> None:
    def dog_tags() -> list[str]:
        out = real_sheep.run_dog("vdi", "list", "-r", "fam").stdout
        # -r: "s NAME SNAPID SIZE USED SHARED CTIME VID COPIES TAG SHIFT" for snapshots
        return [line.split()[9] for line in out.splitlines()
                if line.startswith("s ") and line.split()[1] == "fam"]

    with SheepdogClient(real_sheep.gateways, retry=RetryPolicy(attempts=2)) as client:
        run_history(client, dog_tags)


@pytest.mark.parametrize("n", [40])
def test_many_neighbours_on_the_chain(embedded_server: EmbeddedServer, n: int) -> None:
    """VDIs created between a name's snapshots (nearby chains run into each
    other) are read but not listed as its snapshots."""
    with SheepdogClient(embedded_server.gateways) as client:
        client.create_vdi("base", 8 * MiB)
        for i in range(n):
            client.create_vdi(f"n{i}", 8 * MiB)
            if i % 10 == 0:
                client.snapshot_vdi("base", f"t{i}")
        assert [v.tag for v in client.list_snapshots("base")] == [f"t{i}" for i in
                                                                  range(0, n, 10)]
