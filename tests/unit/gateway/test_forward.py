"""The Forwarder's answer when a node dies under a request (no network: a
scripted cluster).  A real sheep 1.0 answers NO_OBJ for a WRITE_OBJ of an
object that exists right after a node died; tgt turns NO_OBJ into a SCSI
medium error (qemu-io exit 1), so the gateway must retry it while the cluster
may be recovering, and only then."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.client.transport import Connection, mark
from sheepdog_backend.exception import ConnectionClosed
from sheepdog_backend.gateway.forward import Forwarder
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.header import Request, Response
from sheepdog_backend.protocol.oid import vid_to_data_oid, vid_to_vdi_oid

T = TypeVar("T")
Step = Callable[[Request], Response]


def closed(request: Request) -> Response:
    raise mark(ConnectionClosed("node killed with the request in flight"), True)


def answer(result: int, epoch: int = 2) -> Step:
    return lambda request: Response(opcode=request.opcode, result=result, epoch=epoch)


class ScriptedCluster:
    """Each attempt takes the next step of the script."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.calls = 0
        self.address = "127.0.0.1:7000"

    def call(self, request: Request) -> Response:
        self.calls += 1
        return self.steps.pop(0)(request)

    def run(self, fn: Callable[[Connection], T], *, deadline: float | None = None) -> T:
        return fn(cast(Connection, self))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def forwarder(cluster: ScriptedCluster, clock: Clock, window: float = 60.0) -> Forwarder:
    retry = RetryPolicy(attempts=10, base_backoff=0.05, max_backoff=1.0, deadline=30.0,
                        sleep=clock.sleep, clock=clock)
    return Forwarder(cast(Cluster, cluster), retry, recovery_window=window, clock=clock)


WRITE = rq.write_obj(vid_to_data_oid(0x4E3A5A, 0), 327680, b"\x06" * 4096)


def test_no_obj_after_a_node_died_under_a_write_is_retried_not_answered() -> None:
    # Fails on the code before: the NO_OBJ went back to tgt as the answer.
    clock = Clock()
    cluster = ScriptedCluster(closed, answer(Result.NO_OBJ), answer(Result.NO_OBJ),
                              answer(Result.SUCCESS))
    fwd = forwarder(cluster, clock)
    response = fwd.forward(WRITE)
    assert response.result == Result.SUCCESS and response.id == WRITE.id
    assert cluster.calls == 4 and fwd.recovery_retries == 2


def test_no_obj_after_the_epoch_rose_is_retried_for_reads_and_creates() -> None:
    clock = Clock()
    read = rq.read_obj(vid_to_data_oid(0x4E3A5A, 3), 0, 4096)
    create = rq.create_and_write_obj(vid_to_data_oid(0x4E3A5A, 4), 0, b"x" * 512)
    cluster = ScriptedCluster(answer(Result.SUCCESS, epoch=1),
                              answer(Result.NO_OBJ, epoch=2), answer(Result.SUCCESS),
                              answer(Result.NO_OBJ), answer(Result.SUCCESS))
    fwd = forwarder(cluster, clock)
    assert fwd.forward(WRITE).ok
    assert fwd.forward(read).ok  # epoch 1 -> 2: a node left or joined
    assert fwd.forward(create).ok
    assert fwd.recovery_retries == 2


def test_no_obj_of_a_steady_cluster_is_the_answer_at_once() -> None:
    clock = Clock()
    cluster = ScriptedCluster(answer(Result.NO_OBJ), answer(Result.SUCCESS))
    fwd = forwarder(cluster, clock)
    assert fwd.forward(WRITE).result == Result.NO_OBJ
    assert cluster.calls == 1


def test_no_obj_long_after_a_node_failure_and_of_exist_is_the_answer() -> None:
    clock = Clock()
    cluster = ScriptedCluster(closed, answer(Result.SUCCESS), answer(Result.NO_OBJ),
                              answer(Result.NO_OBJ))
    fwd = forwarder(cluster, clock, window=60.0)
    assert fwd.forward(WRITE).ok
    exist = Request(Opcode.EXIST, rq.read_obj(vid_to_vdi_oid(1), 0, 0).body)
    assert fwd.forward(exist).result == Result.NO_OBJ  # "absent" is EXIST's answer
    clock.now += 61
    assert not fwd.may_be_recovering()
    assert fwd.forward(WRITE).result == Result.NO_OBJ
    assert cluster.calls == 4


def test_no_obj_once_the_cluster_recovered_from_a_failure_is_the_answer_at_once() -> None:
    # Fails on the code before: within the window the NO_OBJ of a create's
    # existence read (coherence.py) was retried until the retry deadline,
    # after the cluster had recovered too (a real sheep: recovered in 3 s,
    # each object created in the next minute stalled the guest 30 s).
    clock = Clock()
    probe = rq.read_obj(vid_to_data_oid(0x4E3A5A, 9), 0, 1)
    cluster = ScriptedCluster(closed, answer(Result.SUCCESS), answer(Result.NO_OBJ),
                              answer(Result.SUCCESS), answer(Result.NO_OBJ))
    fwd = forwarder(cluster, clock)
    still = [True]
    fwd.recovering = lambda: still[0]
    assert fwd.forward(WRITE).ok  # a node died under it: the replay's window opens
    assert fwd.forward(probe).ok  # recovering: NO_OBJ retried
    assert fwd.recovery_retries == 1
    still[0] = False  # every node reported the recovery done
    started = clock.now
    assert not fwd.may_be_recovering()
    assert fwd.forward(probe).result == Result.NO_OBJ
    assert clock.now == started  # answered without a retry's wait
    assert cluster.calls == 5 and fwd.recovery_retries == 1


def test_no_obj_that_outlasts_the_retry_deadline_is_answered_no_obj() -> None:
    clock = Clock()
    cluster = ScriptedCluster(closed, *[answer(Result.NO_OBJ)] * 20)
    fwd = forwarder(cluster, clock)
    response = fwd.forward(WRITE)
    assert response.result == Result.NO_OBJ
    assert cluster.calls == 10  # the policy's attempts, then the cluster's answer


def test_each_change_is_told_with_the_epoch_before_it() -> None:
    clock = Clock()
    cluster = ScriptedCluster(answer(Result.SUCCESS, epoch=3), answer(Result.SUCCESS, epoch=3),
                              closed, answer(Result.SUCCESS, epoch=3),
                              answer(Result.SUCCESS, epoch=4))
    fwd = forwarder(cluster, clock)
    told: list[int | None] = []
    fwd.on_change = told.append
    assert fwd.forward(WRITE).ok and fwd.forward(WRITE).ok
    assert told == []  # a steady epoch is no change
    assert fwd.forward(WRITE).ok  # a node died under it, then epoch 3 again
    assert fwd.forward(WRITE).ok  # 3 -> 4
    assert told == [3, 3]
