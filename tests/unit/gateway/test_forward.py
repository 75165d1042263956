"""The Forwarder against a scripted node on loopback: right after a node died
a real sheep answers NO_OBJ for an object until recovery moved a copy to its
new place; the gateway must retry such an answer to the writer's I/O (tgt
turns it into a SCSI error) and answer NO_OBJ at once otherwise."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sheepdog_backend.client import RetryPolicy, SheepdogClient
from sheepdog_backend.client import requests as rq
from sheepdog_backend.gateway.forward import EpochWatch, Forwarder
from sheepdog_backend.protocol.constants import Result
from sheepdog_backend.protocol.framing import DEFAULT_MAX_PAYLOAD
from sheepdog_backend.protocol.header import Request, Response, response_body_class
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid
from sheepdog_backend.protocol.structs import NodeId
from sheepdog_backend.server.server import SheepServer

V = 0x1234


@dataclass
class _State:
    node_id: NodeId
    epoch: int = 1


class ScriptedNode:
    """Answers each request with the next (result, epoch) of ``script``,
    then SUCCESS at the last epoch; records the opcodes it saw."""

    def __init__(self, script: list[tuple[int, int]]) -> None:
        self.script = list(script)
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self._state = _State(NodeId("127.0.0.1", 0))
        self.seen: list[int] = []
        self.lock = threading.Lock()

    @property
    def state(self) -> _State:
        return self._state

    def handle(self, request: Request) -> Response:
        with self.lock:
            self.seen.append(request.opcode)
            if self.script:
                result, self._state.epoch = self.script.pop(0)
            else:
                result = Result.SUCCESS
        payload = bytes(request.data_length) if (
            result == Result.SUCCESS and not request.has_payload) else b""
        return Response(request.opcode, result=result, epoch=self._state.epoch,
                        body=response_body_class(request.opcode)(), id=request.id,
                        payload=payload)


@pytest.fixture
def node() -> Iterator[tuple[ScriptedNode, Forwarder]]:
    scripted = ScriptedNode([])
    server = SheepServer(scripted, ports=[0], workers=2)
    server.start()
    client = SheepdogClient([f"127.0.0.1:{server.listeners[0].address[1]}"],
                            connect_timeout=2.0, request_timeout=10.0)
    try:
        yield scripted, Forwarder(client.cluster, RetryPolicy(
            attempts=5, base_backoff=0.01, max_backoff=0.02, deadline=10.0))
    finally:
        client.close()
        server.stop()


def _prime(scripted: ScriptedNode, fwd: Forwarder, script: list[tuple[int, int]]) -> None:
    """One answered request at epoch 1 (the baseline), then ``script``."""
    assert fwd.forward(rq.read_obj(vid_to_vdi_oid(V), 0, 8)).ok
    scripted.script = list(script)
    scripted.seen.clear()


def test_no_obj_to_a_write_after_the_epoch_rose_is_retried(
        node: tuple[ScriptedNode, Forwarder]) -> None:
    scripted, fwd = node
    _prime(scripted, fwd, [(Result.NO_OBJ, 2), (Result.NO_OBJ, 2)])
    write = rq.write_obj(vid_to_data_oid(V, 3), 0, b"\x42" * 512)
    response = fwd.forward(write)
    assert response.result == Result.SUCCESS and response.id == write.id
    assert len(scripted.seen) == 3  # two NO_OBJ answers, then the write landed


@pytest.mark.parametrize("request_", [
    rq.read_obj(vid_to_data_oid(V, 3), 0, 512),
    rq.write_obj(vid_to_vdi_oid(V), 4096, b"\0" * 4),  # tgt's slot write
    rq.create_and_write_obj(vid_to_data_oid(V, 3), 0, b"x", cow_oid=vid_to_data_oid(V - 1, 3)),
], ids=["data-read", "inode-write", "cow-create"])
def test_other_io_of_existing_objects_is_retried_too(
        node: tuple[ScriptedNode, Forwarder], request_: Request) -> None:
    scripted, fwd = node
    _prime(scripted, fwd, [(Result.NO_OBJ, 2)])
    assert fwd.forward(request_).result == Result.SUCCESS
    assert len(scripted.seen) == 2


def test_no_obj_without_an_epoch_rise_is_answered_at_once(
        node: tuple[ScriptedNode, Forwarder]) -> None:
    scripted, fwd = node
    _prime(scripted, fwd, [(Result.NO_OBJ, 1)])
    assert fwd.forward(rq.write_obj(vid_to_data_oid(V, 3), 0, b"x")).result == Result.NO_OBJ
    assert len(scripted.seen) == 1


def test_an_inode_read_during_recovery_is_answered_at_once(
        node: tuple[ScriptedNode, Forwarder]) -> None:
    """dog's listing reads inodes that may be gone and expects NO_OBJ quickly."""
    scripted, fwd = node
    _prime(scripted, fwd, [(Result.NO_OBJ, 2)])
    assert fwd.forward(rq.read_obj(vid_to_vdi_oid(V + 1), 0, 8)).result == Result.NO_OBJ
    assert len(scripted.seen) == 1


def test_a_plain_create_answered_no_obj_is_not_retried(
        node: tuple[ScriptedNode, Forwarder]) -> None:
    scripted, fwd = node
    _prime(scripted, fwd, [(Result.NO_OBJ, 2)])
    assert fwd.forward(rq.create_and_write_obj(vid_to_data_oid(V, 3), 0, b"x")
                       ).result == Result.NO_OBJ
    assert len(scripted.seen) == 1


def test_when_the_retries_run_out_the_nodes_no_obj_goes_back(
        node: tuple[ScriptedNode, Forwarder]) -> None:
    scripted, fwd = node
    _prime(scripted, fwd, [(Result.NO_OBJ, 2)] * 10)
    write = rq.write_obj(vid_to_data_oid(V, 3), 0, b"x")
    response = fwd.forward(write)
    assert response.result == Result.NO_OBJ and response.id == write.id
    assert len(scripted.seen) == 5  # the policy's attempts


def test_the_recovery_window_ends() -> None:
    now = [100.0]
    watch = EpochWatch(window=10.0, clock=lambda: now[0])
    watch.observe(4)
    assert not watch.recovering()  # the first epoch seen is the baseline
    watch.observe(5)
    now[0] += 9.0
    assert watch.recovering()
    watch.observe(3)  # an older node's answer neither rises nor resets
    now[0] += 2.0
    assert not watch.recovering()
