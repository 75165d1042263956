"""The client's request sequences next to dog's for the same job (golden frames).

A scripted loopback peer answers every request the client sends with the
response real sheep gave dog for the identical request in the golden
transcript (inode reads are served from the inode images dog read).  Each
test then checks that the decisive requests (NEW_VDI, DEL_VDI, the tag write,
the data create and slot write) are byte-identical to dog's apart from the
request id, and that we move fewer bytes in total.  Where we differ on
purpose, the test says so:

* we read the first 568 bytes of an inode (every field a client uses) where
  dog reads 4,664 bytes or the whole 12,587,576-byte object;
* we skip dog's node-list / stat-cluster / cluster-info prelude (491 KB
  each): sheep fills in copies and object size itself when they are 0;
* create and clone read the new inode's 568-byte head once, to return a
  complete VdiInfo (dog prints nothing about the new VDI);
* resize writes the 8-byte vdi_size field instead of the whole header;
* delete clears [first, last] non-zero slot instead of dog's
  [first non-zero, last visited], and reads only the slot range.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.protocol.constants import SD_INODE_HEADER_SIZE, Flag, Opcode
from sheepdog_backend.protocol.header import ObjRequest, Request, Response
from sheepdog_backend.protocol.oid import is_vdi_obj
from tests.golden_frames import load_transcript
from tests.unit.client.loopback import PeerConn, ScriptedPeer


def _key(req: Request) -> bytes:
    return req.with_id(0).encode()


class GoldenResponder:
    def __init__(self, *transcripts: str) -> None:
        self.answers: dict[bytes, Response] = {}
        self.inodes: dict[int, bytes] = {}
        self.dog_bytes = 0
        self.dog_requests: list[Request] = []
        for i, name in enumerate(transcripts):
            t = load_transcript(name)
            for ex in t.exchanges():
                req = ex.request.request()
                assert ex.response is not None
                rsp = ex.response.response()
                self.answers.setdefault(_key(req), rsp)
                body = req.body
                if (req.opcode == Opcode.READ_OBJ and isinstance(body, ObjRequest)
                        and is_vdi_obj(body.oid) and body.offset == 0):
                    self.inodes.setdefault(body.oid, rsp.payload)
                if i == 0:  # the first transcript is the dog command we compare with
                    self.dog_requests.append(req)
                    self.dog_bytes += 96 + ex.request.payload_length + ex.response.payload_length
        self.our_bytes = 0
        self.after: Callable[[Request], None] = lambda req: None

    def answer(self, req: Request) -> Response:
        found = self.answers.get(_key(req))
        body = req.body
        if found is not None:
            rsp = Response(found.opcode, found.result, found.body, id=req.id,
                           epoch=found.epoch, payload=found.payload)
        elif req.opcode == Opcode.READ_OBJ and isinstance(body, ObjRequest) \
                and body.oid in self.inodes:
            image = self.inodes[body.oid]
            rsp = Response(req.opcode, id=req.id,
                           payload=image[body.offset:body.offset + req.data_length])
        elif req.opcode == Opcode.WRITE_OBJ and isinstance(body, ObjRequest) \
                and is_vdi_obj(body.oid):
            rsp = Response(req.opcode, id=req.id)
        else:
            raise AssertionError(f"no golden answer for {req}")
        self.after(req)
        return rsp

    def __call__(self, req: Request, conn: PeerConn) -> None:
        rsp = self.answer(req)
        self.our_bytes += len(req.encode()) + len(rsp.encode())
        conn.reply(rsp)

    def dog(self, opcode: int) -> list[Request]:
        return [r for r in self.dog_requests if r.opcode == opcode]


def run(responder: GoldenResponder, fn: Callable[[SheepdogClient], object]
        ) -> tuple[list[Request], object]:
    with ScriptedPeer(responder) as peer:
        with SheepdogClient([peer.address], retry=RetryPolicy(attempts=1)) as client:
            result = fn(client)
        assert not peer.errors, peer.errors
        return list(peer.requests), result


def ours(requests: list[Request], opcode: int) -> list[Request]:
    return [r for r in requests if r.opcode == opcode]


def same(a: Request, b: Request) -> bool:
    return _key(a) == _key(b)


def test_create_matches_dog_vdi_create() -> None:
    g = GoldenResponder("07-vdi-create", "12-vdi-write")
    sent, info = run(g, lambda c: c.create_vdi("test", 1 << 30))
    assert [r.opcode for r in sent] == [Opcode.NEW_VDI, Opcode.READ_OBJ]
    assert same(ours(sent, Opcode.NEW_VDI)[0], g.dog(Opcode.NEW_VDI)[0])
    assert sent[1].data_length == 568  # the new inode's head, for the VdiInfo
    assert info.vid == 0x7C2B25 and info.size == 1 << 30  # type: ignore[attr-defined]
    assert g.our_bytes < g.dog_bytes


def test_snapshot_matches_dog_vdi_snapshot() -> None:
    g = GoldenResponder("16-vdi-snapshot", "19-vdi-read-snapshot")
    snap_state = load_transcript("19-vdi-read-snapshot")
    after_images = GoldenResponder("19-vdi-read-snapshot").inodes
    # the new working inode 7c2b26 (its head is the same after dog's next write)
    after_images.update(GoldenResponder("18-vdi-write-after-snapshot").inodes)

    def switch(req: Request) -> None:
        if req.opcode == Opcode.NEW_VDI:
            g.inodes.update(after_images)  # the inode now carries snap_ctime
    g.after = switch
    sent, info = run(g, lambda c: c.snapshot_vdi("test", "snap1"))
    assert snap_state.exit_code == 0
    # dog: lookup(tag) -> NO_TAG, lookup(name), header, tag write, NEW_VDI(snapid=1);
    # we pipeline the two lookups, then read the new working inode's head (its
    # snap_id tells which inode this request froze) and the snapshot's head,
    # which carries our tag already, so no second tag write.
    assert [r.opcode for r in sent] == [Opcode.GET_VDI_INFO, Opcode.GET_VDI_INFO,
                                        Opcode.READ_OBJ, Opcode.WRITE_OBJ, Opcode.NEW_VDI,
                                        Opcode.READ_OBJ, Opcode.READ_OBJ]
    assert sent[5].body.oid == 0x807C2B2600000000  # type: ignore[attr-defined]
    for opcode in (Opcode.GET_VDI_INFO, Opcode.WRITE_OBJ, Opcode.NEW_VDI):
        for mine, dogs in zip(ours(sent, opcode), g.dog(opcode), strict=True):
            assert same(mine, dogs), (mine, dogs)
    assert sent[2].data_length == 568 < g.dog(Opcode.READ_OBJ)[0].data_length
    assert info.vid == 0x7C2B25 and info.is_snapshot and info.tag == "snap1"  # type: ignore[attr-defined]
    assert g.our_bytes < g.dog_bytes


def test_clone_matches_dog_vdi_clone() -> None:
    g = GoldenResponder("20-vdi-clone", "22-vdi-write-clone")
    sent, info = run(g, lambda c: c.clone_vdi("test", "snap1", "clone1"))
    assert [r.opcode for r in sent] == [Opcode.GET_VDI_INFO, Opcode.READ_OBJ, Opcode.NEW_VDI,
                                        Opcode.READ_OBJ]
    assert same(sent[0], g.dog(Opcode.GET_VDI_INFO)[0])
    assert same(sent[2], g.dog(Opcode.NEW_VDI)[0])
    # dog reads the whole 12.5 MB base inode; we read its head only
    assert sent[1].data_length == 568 and g.dog(Opcode.READ_OBJ)[0].data_length == 12587576
    assert info.parent_vid == 0x7C2B25 and info.name == "clone1"  # type: ignore[attr-defined]
    assert g.our_bytes * 1000 < g.dog_bytes


def test_resize_matches_dog_vdi_resize() -> None:
    g = GoldenResponder("24-vdi-resize-grow")
    sent, info = run(g, lambda c: c.resize_vdi("test", 2 << 30))
    assert [r.opcode for r in sent] == [Opcode.GET_VDI_INFO, Opcode.READ_OBJ, Opcode.WRITE_OBJ]
    assert same(sent[0], g.dog(Opcode.GET_VDI_INFO)[0])
    dog_read = g.inodes[next(iter(g.inodes))]
    dog_write = g.dog(Opcode.WRITE_OBJ)[0]
    mine = sent[2]
    assert isinstance(mine.body, ObjRequest) and isinstance(dog_write.body, ObjRequest)
    assert mine.body.oid == dog_write.body.oid and mine.flags == dog_write.flags
    # dog rewrites the whole 4664-byte header; the only bytes it changes are
    # vdi_size at 536..544, which is exactly what we write.
    assert len(dog_write.payload) == SD_INODE_HEADER_SIZE
    changed = [i for i in range(SD_INODE_HEADER_SIZE) if dog_write.payload[i] != dog_read[i]]
    assert changed and min(changed) >= 536 and max(changed) < 544
    assert mine.body.offset == 536 and mine.payload == dog_write.payload[536:544]
    assert info.size == 2 << 30  # type: ignore[attr-defined]
    assert g.our_bytes < g.dog_bytes


@pytest.mark.parametrize(("transcript", "name", "tag"), [
    ("31-vdi-delete-clone", "clone1", ""),
    ("33-vdi-delete-snapshot", "test", "snap1"),
    ("37-vdi-delete", "test", ""),
])
def test_delete_matches_dog_vdi_delete(transcript: str, name: str, tag: str) -> None:
    g = GoldenResponder(transcript)
    sent, deleted = run(g, lambda c: c.delete_vdi(name, tag))
    assert deleted is True
    assert same(ours(sent, Opcode.GET_VDI_INFO)[0], g.dog(Opcode.GET_VDI_INFO)[0])
    assert same(ours(sent, Opcode.DEL_VDI)[0], g.dog(Opcode.DEL_VDI)[0])
    assert sent[-1].opcode == Opcode.DEL_VDI
    writes, dog_writes = ours(sent, Opcode.WRITE_OBJ), g.dog(Opcode.WRITE_OBJ)
    assert len(writes) == len(dog_writes) == 1
    mine, dogs = writes[0], dog_writes[0]
    assert isinstance(mine.body, ObjRequest) and isinstance(dogs.body, ObjRequest)
    assert (mine.body.oid, mine.body.offset, mine.flags, mine.body.copies) == \
        (dogs.body.oid, dogs.body.offset, dogs.flags, dogs.body.copies)
    assert mine.flags == Flag.WRITE | Flag.DIRECT
    assert mine.payload == bytes(len(mine.payload)) and len(mine.payload) <= len(dogs.payload)
    # no whole-inode read: a 568-byte head and the slot range only
    assert all(r.data_length <= 4 * 512 + 4664 for r in ours(sent, Opcode.READ_OBJ))
    assert g.our_bytes * 1000 < g.dog_bytes


@pytest.mark.parametrize(("transcript", "offset"), [("12-vdi-write", 0),
                                                    ("13-vdi-write-offset-5M", 5 << 20)])
def test_write_matches_dog_vdi_write(transcript: str, offset: int) -> None:
    g = GoldenResponder(transcript)
    data = load_transcript(transcript).stdin
    sent, _ = run(g, lambda c: c.write("test", offset, data))
    assert same(ours(sent, Opcode.GET_VDI_INFO)[0], g.dog(Opcode.GET_VDI_INFO)[0])
    assert same(ours(sent, Opcode.CREATE_AND_WRITE_OBJ)[0], g.dog(Opcode.CREATE_AND_WRITE_OBJ)[0])
    assert same(ours(sent, Opcode.WRITE_OBJ)[0], g.dog(Opcode.WRITE_OBJ)[0])
    # the create goes out before its slot write, never pipelined with it
    kinds = [r.opcode for r in sent]
    assert kinds.index(Opcode.CREATE_AND_WRITE_OBJ) < kinds.index(Opcode.WRITE_OBJ)
    assert g.our_bytes * 1000 < g.dog_bytes
