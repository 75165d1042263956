"""Capture helper: a frame transcript recorded live from the real sheep (dog and
QEMU 5.2 through a loopback recording proxy), decoded by our codec.

Every frame must decode, name an opcode the codec knows, re-encode byte for
byte, pair with a response of the same opcode, and the payloads our codec has a
struct for must decode too.  A frame kind a new sheep/dog/QEMU sends that the
codec does not know fails here, not in a user's hands.  The golden frames in
tests/data/golden stay as they are; this transcript is recorded anew each run.
"""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

from sheepdog_backend.protocol.constants import CLUSTER_INFO_SIZE, SD_INODE_HEADER_SIZE, Opcode
from sheepdog_backend.protocol.header import decode_request
from sheepdog_backend.protocol.inode import InodeHeader
from sheepdog_backend.protocol.oid import is_vdi_obj
from sheepdog_backend.protocol.structs import (
    ClusterInfo,
    decode_epoch_logs,
    decode_node_list,
    decode_vdi_states,
)
from tests.interop.capture import RecordingProxy, Transcript
from tests.interop.conftest import Target
from tests.realsheep import SheepCluster, require


def _dog_session(proxy: Target) -> None:
    """The dog commands a user runs in a volume's life, through the proxy."""
    data = bytes(range(256)) * 4096  # 1 MiB
    for args, stdin in [
        (("cluster", "info", "-v"), None), (("node", "list"), None),
        (("vdi", "create", "cap", "8M"), None), (("vdi", "write", "cap", "0", "1M"), data),
        (("vdi", "read", "cap", "0", "1M"), None), (("vdi", "snapshot", "-s", "t1", "cap"), None),
        (("vdi", "clone", "-s", "t1", "cap", "cap-c"), None),
        (("vdi", "resize", "cap-c", "12M"), None), (("vdi", "list", "-r"), None),
        (("vdi", "tree"), None), (("vdi", "setattr", "cap", "k", "v"), None),
        (("vdi", "getattr", "cap", "k"), None), (("vdi", "lock", "list"), None),
        (("vdi", "object", "map", "cap"), None), (("vdi", "delete", "cap-c"), None),
        (("vdi", "delete", "-s", "t1", "cap"), None), (("vdi", "delete", "cap"), None),
        (("node", "recovery"), None),
    ]:
        proxy.dog(*args, input=stdin)


def _qemu_session(proxy: Target) -> None:
    qemu_img, qemu_io = require("qemu-img"), require("qemu-io")
    uri = f"sheepdog:{proxy.host}:{proxy.port}:capq"
    subprocess.run([qemu_img, "create", "-f", "raw", uri, "8M"], check=True,
                   capture_output=True, timeout=60)
    subprocess.run([qemu_io, "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c",
                    "read -P 0x5a 0 1M", uri], check=True, capture_output=True, timeout=60)
    subprocess.run([qemu_img, "snapshot", "-c", "qs", uri], check=True,
                   capture_output=True, timeout=60)
    proxy.dog("vdi", "delete", "-s", "qs", "capq")
    proxy.dog("vdi", "delete", "capq")


def _check_payload(opcode: int, request_oid: int | None, payload: bytes,
                   nr_nodes: int, nodes_nr: int) -> None:
    if opcode == Opcode.GET_NODE_LIST:
        assert len(decode_node_list(payload, nr_nodes)) == nr_nodes
    elif opcode == Opcode.CLUSTER_INFO:
        assert len(payload) == CLUSTER_INFO_SIZE
        ClusterInfo.decode(payload)
    elif opcode == Opcode.STAT_CLUSTER and payload:
        decode_epoch_logs(payload, nodes_nr)
    elif opcode == Opcode.GET_VDI_COPIES:
        decode_vdi_states(payload)
    elif (opcode == Opcode.READ_OBJ and request_oid is not None and is_vdi_obj(request_oid)
          and len(payload) >= SD_INODE_HEADER_SIZE):
        header = InodeHeader.decode(payload[:SD_INODE_HEADER_SIZE])
        assert header.vdi_id == (request_oid >> 32) & 0xFFFFFF


def _check_transcript(transcript: Transcript) -> Counter[str]:
    assert not transcript.failures, transcript.failures
    assert transcript.requests and len(transcript.requests) == len(transcript.responses)
    kinds: Counter[str] = Counter()
    for raw, (_, request) in zip(transcript.raw_requests, transcript.requests, strict=True):
        op = Opcode(request.opcode)  # a kind the codec knows, or ValueError
        assert request.encode() == raw, f"{op.name} request does not re-encode"
        kinds[f"req {op.name}"] += 1
    pending = list(transcript.requests)
    for raw, (conn, response) in zip(transcript.raw_responses, transcript.responses, strict=True):
        # dog and QEMU keep replies in request order per connection here.
        index = next(i for i, (c, q) in enumerate(pending)
                     if c == conn and q.id == response.id and q.opcode == response.opcode)
        _, request = pending.pop(index)
        op = Opcode(response.opcode)
        assert response.encode() == raw, f"{op.name} response does not re-encode"
        oid = getattr(request.body, "oid", None)
        nr_nodes = getattr(response.body, "nr_nodes", 0)
        if response.ok:
            _check_payload(op, oid, response.payload, nr_nodes,
                           getattr(request.body, "nodes_nr", 0))
        kinds[f"rsp {op.name}"] += 1
    return kinds


def test_transcript_from_real_sheep_decodes_frame_by_frame(real_node: SheepCluster,
                                                           real_target: Target) -> None:
    with RecordingProxy((real_target.host, real_target.port)) as proxy:
        through = Target("real", proxy.host, proxy.port)
        _dog_session(through)
        _qemu_session(through)
    kinds = _check_transcript(proxy.transcript())
    # The session really exercised the frame kinds a volume's life uses.
    for op in (Opcode.NEW_VDI, Opcode.GET_VDI_INFO, Opcode.DEL_VDI, Opcode.READ_OBJ,
               Opcode.WRITE_OBJ, Opcode.CREATE_AND_WRITE_OBJ, Opcode.GET_VDI_ATTR,
               Opcode.READ_VDIS, Opcode.GET_NODE_LIST, Opcode.CLUSTER_INFO,
               Opcode.GET_VDI_COPIES):
        assert kinds[f"req {op.name}"] > 0 and kinds[f"rsp {op.name}"] > 0, op.name


def test_transcript_checker_catches_an_unknown_frame_kind(real_target: Target) -> None:
    """The checker is not vacuous: a frame with an opcode the codec does not
    know (here: the same bytes with opcode 0x7e) fails it."""
    with RecordingProxy((real_target.host, real_target.port)) as proxy:
        Target("real", proxy.host, proxy.port).dog("node", "list")
    transcript = proxy.transcript()
    _check_transcript(transcript)
    conn, _ = transcript.requests[0]
    raw = bytearray(transcript.raw_requests[0])
    raw[1] = 0x7E
    transcript.requests[0] = (conn, decode_request(bytes(raw)))
    transcript.raw_requests[0] = bytes(raw)
    with pytest.raises(ValueError):
        _check_transcript(transcript)
