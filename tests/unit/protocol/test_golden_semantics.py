"""Decoded golden frames against what dog printed and was asked to do.

Each test takes one captured dog command and checks the decoded fields
against the command line, stdin, stdout or stderr of that command: a wrong
offset or width in the codec shows up as a value that disagrees with dog.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import pytest

from sheepdog_backend.protocol.bitmap import VidBitmap
from sheepdog_backend.protocol.constants import (
    CLUSTER_INFO_SIZE,
    NODE_LIST_BUFFER,
    SD_INODE_HEADER_SIZE,
    SD_INODE_LIST_READ_SIZE,
    SD_INODE_SIZE,
    VID_BITMAP_SIZE,
    ClusterFlag,
    ClusterStatus,
    Flag,
    Opcode,
    Result,
    flat_max_vdi_size,
    result_message,
)
from sheepdog_backend.protocol.header import (
    ClusterRequest,
    NodeResponse,
    ObjRequest,
    VdiRequest,
    VdiResponse,
)
from sheepdog_backend.protocol.inode import (
    OFFSET_TAG,
    InodeHeader,
    decode_slots,
    slot_offset,
)
from sheepdog_backend.protocol.naming import (
    attr_id,
    decode_lookup_payload,
    encode_name,
    encode_name_tag,
    pad_field,
    sd_hash_vdi,
)
from sheepdog_backend.protocol.oid import (
    oid_to_index,
    oid_to_vid,
    vid_to_attr_oid,
    vid_to_data_oid,
    vid_to_vdi_oid,
)
from sheepdog_backend.protocol.structs import (
    ClusterInfo,
    VdiAttr,
    decode_epoch_logs,
    decode_node_list,
)
from tests.golden_frames import Exchange, Transcript, load_transcript, load_transcripts

SUFFIX = {"K": 10, "M": 20, "G": 30, "T": 40}


def dog_size(text: str) -> int:
    """dog's size argument: a number with an optional binary K/M/G/T suffix."""
    if text[-1] in SUFFIX:
        return int(text[:-1]) << SUFFIX[text[-1]]
    return int(text)


def only(exchanges: list[Exchange]) -> Exchange:
    assert len(exchanges) == 1, exchanges
    return exchanges[0]


def rsp(ex: Exchange):  # type: ignore[no-untyped-def]
    assert ex.response is not None
    return ex.response.response()


# ---------------------------------------------------------------------------
# Cluster and node commands
# ---------------------------------------------------------------------------


def test_cluster_info_unformatted_prints_the_result_message() -> None:
    t = load_transcript("01-cluster-info-unformatted")
    stats = t.exchanges_for(Opcode.STAT_CLUSTER)
    assert len(stats) == 2
    for ex in stats:
        assert rsp(ex).result == Result.WAIT_FOR_FORMAT and rsp(ex).payload == b""
    assert t.stdout.splitlines()[0] == (
        "Cluster status: " + result_message(Result.WAIT_FOR_FORMAT))
    # dog sized its second STAT_CLUSTER from the response epoch (0): no buffer.
    second = stats[1].request.request()
    assert isinstance(second.body, ClusterRequest)
    assert second.body.nodes_nr == 1 and second.data_length == 0


def test_cluster_format_request_matches_command_line() -> None:
    t = load_transcript("03-cluster-format")
    assert t.argv[-2:] == ["-c", "1"]
    ex = only(t.exchanges_for(Opcode.MAKE_FS))
    req = ex.request.request()
    assert isinstance(req.body, ClusterRequest)
    assert req.flags == Flag.WRITE and req.payload == b"plain\0"
    assert req.body.copies == 1 and req.body.copy_policy == 0
    assert req.body.flags == ClusterFlag.AUTO_VNODES and req.body.block_size_shift == 0
    assert rsp(ex).result == Result.SUCCESS and rsp(ex).epoch == 1
    assert t.stdout == "using backend plain store\n"
    # the ctime dog chose is the cluster's creation time reported later
    info = ClusterInfo.decode(
        only(load_transcript("07-vdi-create").exchanges_for(Opcode.CLUSTER_INFO))
        .response.payload())  # type: ignore[union-attr]
    assert info.ctime == req.body.ctime
    # a §7.2 timestamp: seconds in the high half, nanoseconds below 10^9
    assert req.body.ctime & 0xFFFFFFFF < 10**9


def test_cluster_info_epoch_log_matches_stdout() -> None:
    t = load_transcript("04-cluster-info")
    prelude, full = t.exchanges_for(Opcode.STAT_CLUSTER)
    # prelude: nodes_nr 0, 48 bytes, one record without nodes
    (rec0,) = decode_epoch_logs(rsp(prelude).payload, 0)
    assert rec0.nr_nodes == 0 and rec0.time == 0
    # full: nodes_nr = 1 (one node), data_length = epoch * (48 + 80)
    req = full.request.request()
    assert isinstance(req.body, ClusterRequest) and req.body.nodes_nr == 1
    assert req.data_length == rsp(prelude).epoch * (48 + 80)
    (record,) = decode_epoch_logs(rsp(full).payload, 1)
    assert rsp(full).result == Result.SUCCESS
    assert record.epoch == rsp(full).epoch == 1
    assert record.drv_name == b"plain" and record.nr_copies == 1
    assert record.flags == ClusterFlag.AUTO_VNODES and record.disable_recovery == 0
    assert rec0.ctime == record.ctime
    lines = t.stdout.splitlines()
    assert lines[0] == "Cluster status: running, auto-recovery enabled"
    created = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(record.ctime >> 32))
    assert lines[2] == f"Cluster created at {created}"
    (node,) = record.nodes
    epoch_time = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.time))
    assert lines[-1] == (f"{epoch_time} {record.epoch:6d} "
                         f"[{node.nid.addr}:{node.nid.port}:{node.nr_vnodes}]")
    assert lines[-1] == "2026-11-24 11:35:43      1 [127.0.0.1:7100:128]"


def test_node_list_matches_stdout() -> None:
    t = load_transcript("05-node-list")
    ex = t.exchanges_for(Opcode.GET_NODE_LIST)[0]
    assert ex.request.request().data_length == NODE_LIST_BUFFER
    body = rsp(ex).body
    assert isinstance(body, NodeResponse) and body.nr_nodes == 1
    nodes = decode_node_list(rsp(ex).payload, body.nr_nodes)
    rows = [line.split() for line in t.stdout.splitlines()[1:]]
    assert len(rows) == len(nodes) == 1
    for idx, (row, node) in enumerate(zip(rows, nodes, strict=True)):
        assert row == [str(idx), f"{node.nid.addr}:{node.nid.port}",
                       str(node.nr_vnodes), str(node.zone)]
    node = nodes[0]
    assert (node.nid.addr, node.nid.port, node.nr_vnodes, node.zone) == (
        "127.0.0.1", 7100, 128, 0)
    assert node.nid.encode()[:16] == bytes(12) + b"\x7f\0\0\x01"  # IPv4 layout (§11.1)


def test_node_info_capacity_figures() -> None:
    """STAT_SHEEP went to the node's own address (not captured); what the
    capture proves: one node, nothing used, VDI total 0 since the in-use
    bitmap is empty, and a store size below the node's advertised space."""
    t = load_transcript("06-node-info")
    ex = t.exchanges_for(Opcode.GET_NODE_LIST)[0]
    (node,) = decode_node_list(rsp(ex).payload, 1)
    node_line, total_line = t.stdout.splitlines()
    idx, size, used, avail, pct = node_line.split()
    assert (idx, used, pct) == ("0", "0", "0%") and size == avail
    assert total_line.split() == ["Total", size, used, avail, pct, "0"]
    assert 0.99 * node.space < int(size) <= node.space
    bitmap = only(t.exchanges_for(Opcode.READ_VDIS)).response
    assert bitmap is not None and bitmap.summary is not None
    assert bitmap.summary.matches(VidBitmap().to_bytes())


def test_cluster_info_payload_after_format() -> None:
    ex = only(load_transcript("07-vdi-create").exchanges_for(Opcode.CLUSTER_INFO))
    assert ex.request.request().data_length == CLUSTER_INFO_SIZE
    info = ClusterInfo.decode(rsp(ex).payload)
    assert info.proto_ver == 0x0A and info.epoch == 1 and info.nr_nodes == 1
    assert info.status == ClusterStatus.OK and info.default_store == b"plain"
    assert info.nr_copies == 1 and info.copy_policy == 0 and info.block_size_shift == 22
    assert info.flags == ClusterFlag.AUTO_VNODES
    (node,) = info.nodes
    assert (node.nid.addr, node.nid.port, node.nr_vnodes) == ("127.0.0.1", 7100, 128)


def test_vdi_create_before_format() -> None:
    t = load_transcript("02-vdi-create-before-format")
    info = ClusterInfo.decode(rsp(only(t.exchanges_for(Opcode.CLUSTER_INFO))).payload)
    assert info.ctime == 0 and info.epoch == 0 and info.status == ClusterStatus.WAIT
    assert info.flags == ClusterFlag.AUTO_VNODES and info.default_store == b""
    assert t.exit_code == 1 and not t.exchanges_for(Opcode.NEW_VDI)
    assert t.stderr.strip() == (
        f"Failed to create VDI {t.argv[-2]}: {result_message(Result.WAIT_FOR_FORMAT)}")


# ---------------------------------------------------------------------------
# VDI create / snapshot / clone / resize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["07-vdi-create", "08-vdi-create-duplicate",
                                  "09-vdi-create-copies2-order20", "10-vdi-create-prealloc",
                                  "38-vdi-create-again"])
def test_new_vdi_fields_match_command_line(name: str) -> None:
    t = load_transcript(name)
    argv = t.argv[3:]
    opts: dict[str, str] = {}
    while argv[0].startswith("-"):
        if argv[0] == "-P":
            opts["-P"] = ""
            argv = argv[1:]
        else:
            opts[argv[0]], argv = argv[1], argv[2:]
    vdi_name, size = argv
    ex = only(t.exchanges_for(Opcode.NEW_VDI))
    req = ex.request.request()
    assert isinstance(req.body, VdiRequest)
    assert req.flags == Flag.WRITE and req.payload == encode_name(vdi_name)
    assert req.body.vdi_size == dog_size(size)
    assert req.body.copies == int(opts.get("-c", "0"))
    assert req.body.block_size_shift == int(opts.get("-z", "0"))
    assert (req.body.base_vdi_id, req.body.snapid, req.body.copy_policy,
            req.body.store_policy, req.body.type) == (0, 0, 0, 0, 0)
    body = rsp(ex).body
    assert isinstance(body, VdiResponse)
    if t.exit_code == 0:
        assert rsp(ex).result == Result.SUCCESS
        assert body.copies == (int(opts["-c"]) if "-c" in opts else 1)  # cluster: 1 copy
        assert body.block_size_shift == int(opts.get("-z", "22"))
    else:
        assert rsp(ex).result == Result.VDI_EXIST
        assert t.stderr.strip() == (
            f"Failed to create VDI {vdi_name}: {result_message(Result.VDI_EXIST)}")


def test_prealloc_creates_every_object_and_maps_its_slot() -> None:
    t = load_transcript("10-vdi-create-prealloc")
    vid = rsp(only(t.exchanges_for(Opcode.NEW_VDI))).body.vdi_id  # type: ignore[union-attr]
    inode_read = only(t.exchanges_for(Opcode.READ_OBJ))
    inode = InodeHeader.decode(rsp(inode_read).payload)
    assert inode.vdi_id == vid and inode.name == b"pre" and inode.vdi_size == 8 << 20
    creates = t.exchanges_for(Opcode.CREATE_AND_WRITE_OBJ)
    slots = t.exchanges_for(Opcode.WRITE_OBJ)
    assert len(creates) == len(slots) == inode.count_data_objs == 2
    for idx, (create, slot) in enumerate(zip(creates, slots, strict=True)):
        c = create.request.request()
        s = slot.request.request()
        assert isinstance(c.body, ObjRequest) and isinstance(s.body, ObjRequest)
        assert c.flags == s.flags == Flag.WRITE | Flag.DIRECT
        assert c.body.oid == vid_to_data_oid(vid, idx) and c.payload == b""
        assert s.body.oid == vid_to_vdi_oid(vid) and s.body.offset == slot_offset(idx)
        assert s.body.offset == 4664 + 4 * idx
        assert s.payload == vid.to_bytes(4, "little")
        assert c.body.copies == s.body.copies == inode.nr_copies


def test_snapshot_writes_tag_at_256_then_new_vdi() -> None:
    t = load_transcript("16-vdi-snapshot")
    tag = t.argv[t.argv.index("-s") + 1]
    lookup_tag, lookup_plain = t.exchanges_for(Opcode.GET_VDI_INFO)
    assert decode_lookup_payload(lookup_tag.request.request().payload) == (b"test", tag.encode())
    assert rsp(lookup_tag).result == Result.NO_TAG
    vid = rsp(lookup_plain).body.vdi_id  # type: ignore[union-attr]
    header_read = only(t.exchanges_for(Opcode.READ_OBJ))
    assert header_read.request.request().data_length == SD_INODE_HEADER_SIZE
    inode = InodeHeader.decode(rsp(header_read).payload)
    assert inode.vdi_id == vid and not inode.is_snapshot
    write = only(t.exchanges_for(Opcode.WRITE_OBJ)).request.request()
    assert isinstance(write.body, ObjRequest)
    assert write.body.oid == vid_to_vdi_oid(vid)
    assert write.body.offset == OFFSET_TAG == 256
    assert write.payload == pad_field(tag.encode(), 256)
    new = only(t.exchanges_for(Opcode.NEW_VDI))
    body = new.request.request().body
    assert isinstance(body, VdiRequest)
    assert (body.vdi_size, body.base_vdi_id, body.snapid, body.copies,
            body.block_size_shift) == (inode.vdi_size, vid, 1, inode.nr_copies,
                                       inode.block_size_shift)
    assert rsp(new).body.vdi_id == vid + 1  # type: ignore[union-attr]  # next free (§8.3)


def test_snapshot_duplicate_tag_sees_a_snapshot_inode() -> None:
    t = load_transcript("17-vdi-snapshot-duplicate-tag")
    inode = InodeHeader.decode(rsp(only(t.exchanges_for(Opcode.READ_OBJ))).payload)
    assert inode.is_snapshot and inode.tag == b"snap1" and inode.snap_id == 1
    assert t.exit_code == 1 and "tag (snap1) is existed" in t.stderr
    assert not t.exchanges_for(Opcode.WRITE_OBJ) and not t.exchanges_for(Opcode.NEW_VDI)


def test_clone_new_vdi_from_snapshot_inode() -> None:
    t = load_transcript("20-vdi-clone")
    lookup = only(t.exchanges_for(Opcode.GET_VDI_INFO))
    assert decode_lookup_payload(lookup.request.request().payload) == (b"test", b"snap1")
    base = InodeHeader.decode(rsp(only(t.exchanges_for(Opcode.READ_OBJ))).payload)
    assert base.is_snapshot and base.vdi_id == rsp(lookup).body.vdi_id  # type: ignore[union-attr]
    new = only(t.exchanges_for(Opcode.NEW_VDI))
    req = new.request.request()
    assert req.payload == encode_name("clone1")
    assert isinstance(req.body, VdiRequest)
    assert (req.body.vdi_size, req.body.base_vdi_id, req.body.snapid, req.body.copies,
            req.body.store_policy, req.body.block_size_shift) == (
        base.vdi_size, base.vdi_id, 0, base.nr_copies, base.store_policy,
        base.block_size_shift)
    clone = InodeHeader.decode(
        rsp(load_transcript("21-vdi-read-clone").exchanges_for(Opcode.READ_OBJ)[0]).payload)
    assert clone.vdi_id == rsp(new).body.vdi_id  # type: ignore[union-attr]
    assert clone.is_clone and clone.parent_vdi_id == base.vdi_id and clone.snap_id == 1


def test_clone_from_working_vdi_is_refused_by_dog() -> None:
    t = load_transcript("23-vdi-clone-from-current")
    assert t.frames == () and t.exit_code == 64
    assert "Only snapshot VDIs can be cloned" in t.stderr


def test_resize_rewrites_the_header_with_the_new_size() -> None:
    t = load_transcript("24-vdi-resize-grow")
    old = InodeHeader.decode(rsp(only(t.exchanges_for(Opcode.READ_OBJ))).payload)
    write = only(t.exchanges_for(Opcode.WRITE_OBJ)).request.request()
    assert isinstance(write.body, ObjRequest)
    assert write.flags == Flag.WRITE | Flag.DIRECT and write.body.offset == 0
    assert write.body.oid == vid_to_vdi_oid(old.vdi_id)
    new = InodeHeader.decode(write.payload)
    assert new.vdi_size == dog_size(t.argv[-1]) == 2 << 30
    assert new == old.evolve(vdi_size=new.vdi_size)
    assert write.payload == new.encode()


def test_resize_refusals() -> None:
    shrink = load_transcript("25-vdi-resize-shrink")
    inode = InodeHeader.decode(rsp(only(shrink.exchanges_for(Opcode.READ_OBJ))).payload)
    assert inode.vdi_size == 2 << 30 > dog_size(shrink.argv[-1])
    assert "Shrinking VDIs is not implemented" in shrink.stderr
    large = load_transcript("26-vdi-resize-too-large")
    inode = InodeHeader.decode(rsp(only(large.exchanges_for(Opcode.READ_OBJ))).payload)
    limit = flat_max_vdi_size(inode.block_size_shift)
    assert dog_size(large.argv[-1]) > limit
    assert f"This volume's max size is {limit}" in large.stderr


# ---------------------------------------------------------------------------
# Data: write / read
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["12-vdi-write", "13-vdi-write-offset-5M",
                                  "18-vdi-write-after-snapshot", "22-vdi-write-clone"])
def test_write_sends_stdin_to_the_right_object_and_maps_the_slot(name: str) -> None:
    t = load_transcript(name)
    vdi_name, offset, length = t.argv[3], int(t.argv[4]), int(t.argv[5])
    lookup = only(t.exchanges_for(Opcode.GET_VDI_INFO))
    assert decode_lookup_payload(lookup.request.request().payload) == (vdi_name.encode(), b"")
    vid = rsp(lookup).body.vdi_id  # type: ignore[union-attr]
    inode_read = only(t.exchanges_for(Opcode.READ_OBJ))
    assert inode_read.request.request().data_length == SD_INODE_SIZE
    assert inode_read.response is not None and inode_read.response.summary is not None
    head = inode_read.response.summary.head
    inode = InodeHeader.decode(head)
    assert inode.vdi_id == vid and inode.name == vdi_name.encode()
    idx, in_obj = divmod(offset, inode.object_size)
    old_slot = decode_slots(head[slot_offset(idx):slot_offset(idx) + 4])[0]
    create = only(t.exchanges_for(Opcode.CREATE_AND_WRITE_OBJ)).request.request()
    assert isinstance(create.body, ObjRequest)
    assert create.payload == t.stdin and len(t.stdin) == length
    assert create.body.oid == vid_to_data_oid(vid, idx) and create.body.offset == in_obj
    assert create.body.copies == inode.nr_copies
    if old_slot:  # inherited from the parent: copy-on-write from its object
        assert old_slot != vid
        assert create.flags == Flag.WRITE | Flag.COW
        assert create.body.cow_oid == vid_to_data_oid(old_slot, idx)
    else:
        assert create.flags == Flag.WRITE and create.body.cow_oid == 0
    slot = only(t.exchanges_for(Opcode.WRITE_OBJ)).request.request()
    assert isinstance(slot.body, ObjRequest)
    assert slot.body.oid == vid_to_vdi_oid(vid)
    assert slot.body.offset == 4664 + 4 * idx and slot.payload == vid.to_bytes(4, "little")


@pytest.mark.parametrize("name", ["14-vdi-read", "15-vdi-read-unallocated",
                                  "19-vdi-read-snapshot", "21-vdi-read-clone"])
def test_read_returns_what_dog_printed(name: str) -> None:
    t = load_transcript(name)
    args = [a for a in t.argv[3:]]
    tag = b""
    if "-s" in args:
        i = args.index("-s")
        tag = args[i + 1].encode()
        del args[i:i + 2]
    vdi_name, offset, length = args[0], int(args[1]), int(args[2])
    lookup = only(t.exchanges_for(Opcode.GET_VDI_INFO))
    assert decode_lookup_payload(lookup.request.request().payload) == (vdi_name.encode(), tag)
    vid = rsp(lookup).body.vdi_id  # type: ignore[union-attr]
    reads = t.exchanges_for(Opcode.READ_OBJ)
    inode_read, data_reads = reads[0], reads[1:]
    assert inode_read.response is not None and inode_read.response.summary is not None
    head = inode_read.response.summary.head
    inode = InodeHeader.decode(head)
    assert inode.vdi_id == vid and inode.tag == tag
    idx, in_obj = divmod(offset, inode.object_size)
    owner = decode_slots(head[slot_offset(idx):slot_offset(idx) + 4])[0] if idx < 882 else 0
    if owner:
        (read,) = data_reads
        req = read.request.request()
        assert isinstance(req.body, ObjRequest)
        assert req.body.oid == vid_to_data_oid(owner, idx)
        assert req.body.offset == in_obj and req.data_length == length
        data = rsp(read).payload
    else:  # unallocated: dog fills zeros without asking
        assert data_reads == []
        data = bytes(length)
    assert data == t.stdout.encode("latin-1")


# ---------------------------------------------------------------------------
# vdi list: inode headers and slot arrays against dog's raw output
# ---------------------------------------------------------------------------


def list_rows(t: Transcript) -> list[str]:
    """Rebuild dog's `vdi list -r` lines from the inode and index reads."""
    rows = []
    reads = t.exchanges_for(Opcode.READ_OBJ)
    i = 0
    while i < len(reads):
        hreq = reads[i].request.request()
        assert isinstance(hreq.body, ObjRequest)
        assert hreq.body.offset == 0 and hreq.data_length == SD_INODE_LIST_READ_SIZE
        assert hreq.flags == Flag.DIRECT
        payload = rsp(reads[i]).payload
        inode = InodeHeader.decode(payload)
        assert hreq.body.oid == vid_to_vdi_oid(inode.vdi_id)
        ireq = reads[i + 1].request.request()
        assert isinstance(ireq.body, ObjRequest)
        assert ireq.body.oid == hreq.body.oid and ireq.body.offset == SD_INODE_HEADER_SIZE
        assert ireq.data_length == 4 * inode.count_data_objs
        index = rsp(reads[i + 1]).payload
        slots = decode_slots(index)
        # the 8 bytes after the header (read for a B-tree header) are slots 0-1
        assert payload[4664:4672] == index[:8]
        own = sum(1 for s in slots if s == inode.vdi_id)
        shared = sum(1 for s in slots if s and s != inode.vdi_id)
        kind = "s" if inode.is_snapshot else "c" if inode.is_clone else "="
        snap = inode.snap_id if inode.is_snapshot else 0
        rows.append(f"{kind} {inode.name.decode()} {snap} {inode.vdi_size} "
                    f"{own * inode.object_size} {shared * inode.object_size} "
                    f"{inode.create_time >> 32} {inode.vdi_id:x} {inode.nr_copies} "
                    f"{inode.tag.decode()} {inode.block_size_shift}")
        i += 2
    return rows


@pytest.mark.parametrize("name", ["11-vdi-list-raw", "27-vdi-list-raw-2", "28-vdi-list-one",
                                  "39-vdi-list-raw-3"])
def test_vdi_list_rows_match_stdout(name: str) -> None:
    t = load_transcript(name)
    wanted = t.argv[4] if len(t.argv) > 4 else None
    rows = [r for r in list_rows(t) if wanted is None or r.split()[1] == wanted]
    assert rows == t.stdout.splitlines()


@pytest.mark.parametrize("name", ["11-vdi-list-raw", "27-vdi-list-raw-2", "39-vdi-list-raw-3"])
def test_vdi_list_reads_exactly_the_live_vids_of_the_bitmaps(name: str) -> None:
    """The inodes dog read are the in-use vids minus the deleted ones; the
    bitmaps rebuilt from them (plus the deleted vids) hash to the capture."""
    t = load_transcript(name)
    read_vids = [oid_to_vid(ex.request.request().body.oid)  # type: ignore[union-attr]
                 for ex in t.exchanges_for(Opcode.READ_OBJ)][::2]
    assert read_vids == sorted(read_vids)
    stdout_vids = [int(line.split()[7], 16) for line in t.stdout.splitlines()]
    assert stdout_vids == read_vids
    in_use = only(t.exchanges_for(Opcode.READ_VDIS)).response
    deleted = only(t.exchanges_for(Opcode.READ_DEL_VDIS)).response
    assert in_use is not None and in_use.summary is not None
    assert deleted is not None and deleted.summary is not None
    deleted_vids = DELETED_BEFORE.get(name, set())
    assert in_use.summary.matches(VidBitmap.from_vids(set(read_vids) | deleted_vids).to_bytes())
    assert deleted.summary.matches(VidBitmap.from_vids(deleted_vids).to_bytes())
    pages = {vid // 8 // 4096 * 4096 for vid in set(read_vids) | deleted_vids}
    assert set(in_use.summary.nonzero_pages) == pages


# vids deleted (DEL_VDI) before each listing: clone1 (31), snapshot (33), test (37)
DELETED_BEFORE = {"39-vdi-list-raw-3": {0x7C2B25, 0x7C2B26, 0xC8F989}}


# ---------------------------------------------------------------------------
# Errors: stderr carries the result code's message
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "result"), [
    ("29-vdi-read-missing", Result.NO_VDI),
    ("30-vdi-snapshot-missing", Result.NO_VDI),
    ("32-vdi-delete-missing", Result.NO_VDI),
    ("34-vdi-delete-snapshot-missing", Result.NO_TAG),
])
def test_lookup_errors_match_stderr(name: str, result: Result) -> None:
    t = load_transcript(name)
    ex = only(t.exchanges_for(Opcode.GET_VDI_INFO))
    assert rsp(ex).result == result and rsp(ex).payload == b""
    assert t.stderr.strip().endswith(": " + result_message(result))


def test_every_error_in_stderr_comes_from_a_response() -> None:
    for t in load_transcripts():
        for ex in t.exchanges():
            result = rsp(ex).result
            if result not in (Result.SUCCESS, Result.WAIT_FOR_FORMAT, Result.NO_TAG):
                assert result_message(result) in t.stderr, t.name


# ---------------------------------------------------------------------------
# Delete and attributes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["31-vdi-delete-clone", "33-vdi-delete-snapshot",
                                  "37-vdi-delete"])
def test_delete_zeroes_the_slots_then_deletes(name: str) -> None:
    t = load_transcript(name)
    lookup = only(t.exchanges_for(Opcode.GET_VDI_INFO))
    vid = rsp(lookup).body.vdi_id  # type: ignore[union-attr]
    inode_read = only(t.exchanges_for(Opcode.READ_OBJ))
    assert inode_read.request.request().flags == 0
    assert inode_read.response is not None and inode_read.response.summary is not None
    inode = InodeHeader.decode(inode_read.response.summary.head)
    assert inode.vdi_id == vid
    slots = decode_slots(inode_read.response.summary.head[4664:4664 + 4 * inode.count_data_objs])
    nonzero = [i for i, s in enumerate(slots) if s]
    write = only(t.exchanges_for(Opcode.WRITE_OBJ)).request.request()
    assert isinstance(write.body, ObjRequest)
    assert write.flags == Flag.WRITE | Flag.DIRECT and write.body.oid == vid_to_vdi_oid(vid)
    assert write.body.offset == slot_offset(nonzero[0])
    assert write.payload == bytes(4 * (inode.count_data_objs - nonzero[0]))
    delete = only(t.exchanges_for(Opcode.DEL_VDI))
    assert delete.request.request().payload == lookup.request.request().payload
    assert rsp(delete).result == Result.SUCCESS
    assert rsp(delete).body.vdi_id == vid  # type: ignore[union-attr]


def test_setattr_and_getattr() -> None:
    t = load_transcript("35-vdi-setattr")
    ex = only(t.exchanges_for(Opcode.GET_VDI_ATTR))
    req = ex.request.request()
    assert req.flags == Flag.WRITE | Flag.CREAT and req.data_length == 66320
    attr = VdiAttr.decode(req.payload)
    _, _, vdi_name, key, value = t.argv[1:]
    assert (attr.name, attr.tag, attr.snap_id, attr.key, attr.value, attr.value_len) == (
        vdi_name.encode(), b"", 0, key.encode(), value.encode(), len(value))
    body = rsp(ex).body
    assert isinstance(body, VdiResponse)
    assert body.vdi_id == sd_hash_vdi(b"test")  # the hash, not the working vid (7c2b26)
    assert body.attr_id == attr_id(attr.name, attr.tag, attr.snap_id, attr.key)

    g = load_transcript("36-vdi-getattr")
    get_ex = only(g.exchanges_for(Opcode.GET_VDI_ATTR))
    assert get_ex.request.request().flags == Flag.WRITE
    gbody = rsp(get_ex).body
    assert isinstance(gbody, VdiResponse) and gbody.attr_id == body.attr_id
    read = only(g.exchanges_for(Opcode.READ_OBJ))
    rbody = read.request.request().body
    assert isinstance(rbody, ObjRequest)
    assert rbody.oid == vid_to_attr_oid(gbody.vdi_id, gbody.attr_id)
    assert oid_to_index(rbody.oid) == gbody.attr_id
    stored = VdiAttr.decode(rsp(read).payload)
    assert stored.value[:stored.value_len].decode() == g.stdout == value
    working = InodeHeader.decode(
        rsp(load_transcript("25-vdi-resize-shrink").exchanges_for(Opcode.READ_OBJ)[0]).payload)
    assert stored.ctime == working.create_time  # server fills in the VDI's create_time


# ---------------------------------------------------------------------------
# Names to vids: a model of §8.3 replayed over the whole capture
# ---------------------------------------------------------------------------


@dataclass
class Vdi:
    name: bytes
    tag: bytes
    snap_id: int
    snapshot: bool = False
    deleted: bool = False


class LookupModel:
    """In-use set plus per-vid name/tag/snap_id; lookup as in §8.3."""

    def __init__(self) -> None:
        self.vdis: dict[int, Vdi] = {}

    def first_clear(self, start: int) -> int:
        vid = start
        while vid in self.vdis:
            vid += 1
        return vid

    def lookup(self, name: bytes, tag: bytes = b"", snapid: int = 0) -> tuple[int, int]:
        """(result, vid or free vid)."""
        start = sd_hash_vdi(name)
        end = self.first_clear(start)
        if end == start:
            return Result.NO_VDI, start
        with_tag = bool(tag) or snapid != 0
        working_seen = False
        for vid in range(end - 1, start - 1, -1):
            vdi = self.vdis[vid]
            if vdi.deleted or vdi.name != name:  # deleted inodes have empty names
                continue
            if with_tag:
                if not vdi.snapshot:
                    working_seen = True
                elif (vdi.tag and vdi.tag == tag) or snapid == vdi.snap_id:
                    return Result.SUCCESS, vid
                continue
            if vdi.snapshot:
                return Result.NO_VDI, end
            return Result.SUCCESS, vid
        return (Result.NO_TAG if working_seen else Result.NO_VDI), end


def test_names_hash_to_the_vids_the_server_gave() -> None:
    model = LookupModel()
    checked: Counter[int] = Counter()
    for t in load_transcripts():
        for ex in t.exchanges():
            req = ex.request.request()
            res = rsp(ex)
            op = req.opcode
            if op == Opcode.MAKE_FS:
                model = LookupModel()
            elif op in (Opcode.GET_VDI_INFO, Opcode.DEL_VDI):
                assert isinstance(req.body, VdiRequest) and isinstance(res.body, VdiResponse)
                name, tag = decode_lookup_payload(req.payload)
                result, vid = model.lookup(name, tag, req.body.snapid)
                assert res.result == result, (t.name, name, tag)
                if result == Result.SUCCESS:
                    assert res.body.vdi_id == vid
                    # §8.3: the found vid sits in the probe chain that starts at the hash
                    assert sd_hash_vdi(name) <= vid < model.first_clear(sd_hash_vdi(name))
                    if op == Opcode.DEL_VDI:
                        model.vdis[vid].deleted = True
            elif op == Opcode.NEW_VDI:
                assert isinstance(req.body, VdiRequest) and isinstance(res.body, VdiResponse)
                name = req.payload.rstrip(b"\0")
                result, found = model.lookup(name)
                start = sd_hash_vdi(name)
                free = model.first_clear(start)
                if req.body.snapid == 0:
                    if result == Result.SUCCESS:
                        assert res.result == Result.VDI_EXIST
                        continue
                    assert res.result == Result.SUCCESS and res.body.vdi_id == free
                    model.vdis[free] = Vdi(name, b"", 1)
                else:
                    assert result == Result.SUCCESS and req.body.base_vdi_id == found
                    assert res.result == Result.SUCCESS and res.body.vdi_id == free
                    model.vdis[found].snapshot = True
                    model.vdis[free] = Vdi(name, b"", model.vdis[found].snap_id + 1)
                # linear probing: the first clear vid at or after the hash
                assert free >= start and all(v in model.vdis for v in range(start, free))
            elif op == Opcode.WRITE_OBJ:
                assert isinstance(req.body, ObjRequest)
                if req.body.oid >> 63 and req.body.offset == OFFSET_TAG:
                    model.vdis[oid_to_vid(req.body.oid)].tag = req.payload.rstrip(b"\0")
            elif op == Opcode.GET_VDI_ATTR:
                attr = VdiAttr.decode(req.payload)
                assert model.lookup(attr.name, attr.tag, attr.snap_id)[0] == Result.SUCCESS
                assert res.body.vdi_id == sd_hash_vdi(attr.name)  # type: ignore[union-attr]
            elif op in (Opcode.READ_VDIS, Opcode.READ_DEL_VDIS):
                vids = (set(model.vdis) if op == Opcode.READ_VDIS
                        else {v for v, d in model.vdis.items() if d.deleted})
                assert ex.response is not None and ex.response.summary is not None
                assert ex.response.summary.length == VID_BITMAP_SIZE
                assert ex.response.summary.matches(VidBitmap.from_vids(vids).to_bytes()), t.name
            else:
                continue
            checked[op] += 1
    assert set(checked) == {Opcode.MAKE_FS, Opcode.NEW_VDI, Opcode.GET_VDI_INFO, Opcode.DEL_VDI,
                            Opcode.GET_VDI_ATTR, Opcode.READ_VDIS, Opcode.READ_DEL_VDIS,
                            Opcode.WRITE_OBJ}, checked
    # the final state: test was re-created after its family was deleted
    assert model.lookup(b"test") == (Result.SUCCESS, 0x7C2B27)
    assert sorted(v for v, d in model.vdis.items() if d.deleted) == [
        0x7C2B25, 0x7C2B26, 0xC8F989]


def test_hash_vectors_from_the_capture() -> None:
    for name, vid in [(b"test", 0x7C2B25), (b"small", 0x98998C), (b"pre", 0xA1EDC6),
                      (b"clone1", 0xC8F989)]:
        assert sd_hash_vdi(name) == vid
    assert encode_name_tag("test", "snap1")[256:261] == b"snap1"
