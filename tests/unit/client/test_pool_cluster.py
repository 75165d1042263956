"""Connection pool (destroy on failure) and gateway cluster (health, failover)."""

from __future__ import annotations

import socket

import pytest

from sheepdog_backend.client import requests as rq
from sheepdog_backend.client.cluster import Cluster
from sheepdog_backend.client.pool import ConnectionPool
from sheepdog_backend.client.transport import Connection, parse_address, request_was_sent
from sheepdog_backend.client.vdi import check
from sheepdog_backend.exception import (
    ConnectionClosed,
    InvalidInput,
    NoGatewayAvailable,
    NoVdi,
    ProtocolError,
    Shutdown,
)
from sheepdog_backend.protocol.constants import Result
from sheepdog_backend.protocol.header import Request, Response, VdiResponse
from tests.unit.client.loopback import PeerConn, ScriptedPeer


def ok(req: Request, conn: PeerConn) -> None:
    result = Result.NO_VDI if req.payload.startswith(b"missing") else Result.SUCCESS
    conn.reply(Response(req.opcode, id=req.id, result=result, body=VdiResponse(vdi_id=7)))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def lookup(conn: Connection, name: str = "x") -> int:
    body = check(conn.call(rq.get_vdi_info(name))).body
    assert isinstance(body, VdiResponse)
    return body.vdi_id


def test_pool_reuses_after_success_and_server_error() -> None:
    with ScriptedPeer(ok) as peer:
        pool = ConnectionPool(parse_address(peer.address))
        with pool.connection() as conn:
            assert lookup(conn) == 7
        with pytest.raises(NoVdi), pool.connection() as conn:
            lookup(conn, "missing")
        with pool.connection() as conn:
            assert lookup(conn) == 7
        assert pool.opened == 1 and pool.destroyed == 0 and len(peer.conns) == 1
        pool.close()


def test_pool_destroys_failed_connection() -> None:
    def flaky(req: Request, conn: PeerConn) -> None:
        if req.payload.startswith(b"cut"):
            conn.close()
        else:
            ok(req, conn)
    with ScriptedPeer(flaky) as peer:
        pool = ConnectionPool(parse_address(peer.address))
        with pytest.raises(ConnectionClosed), pool.connection() as conn:
            lookup(conn, "cut")
        assert pool.destroyed == 1 and pool.idle == 0
        with pool.connection() as conn:
            assert lookup(conn) == 7
        assert pool.opened == 2
        pool.close()


def test_pool_drops_connection_left_with_requests_in_flight() -> None:
    with ScriptedPeer(ok) as peer:
        pool = ConnectionPool(parse_address(peer.address))
        with pool.connection() as conn:
            conn.send(rq.get_vdi_info("x"))  # never waited for
        assert pool.idle == 0 and pool.destroyed == 1
        pool.close()


def test_pool_keeps_at_most_max_idle() -> None:
    with ScriptedPeer(ok) as peer:
        pool = ConnectionPool(parse_address(peer.address), max_idle=1)
        with pool.connection() as a, pool.connection() as b:
            assert a is not b
            lookup(a), lookup(b)
        assert pool.idle == 1
        pool.close()


def test_cluster_fails_over_to_next_gateway_and_tracks_health() -> None:
    dead = f"127.0.0.1:{free_port()}"
    with ScriptedPeer(ok) as peer:
        cluster = Cluster([dead, peer.address], connect_timeout=1)
        assert cluster.run(lookup) == 7
        order = [str(h.address) for h in cluster.ordered()]
        assert order == [peer.address, dead]  # the dead one went to the back
        bad = cluster.health(parse_address(dead))
        assert bad.failures == 1 and bad.dead_until > 0 and "ConnectFailed" in bad.last_error
        assert cluster.health(parse_address(peer.address)).successes == 1
        cluster.close()


def test_cluster_all_dead_is_no_gateway_available_unsent() -> None:
    cluster = Cluster([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"],
                      connect_timeout=1)
    with pytest.raises(NoGatewayAvailable) as info:
        cluster.run(lookup)
    assert not request_was_sent(info.value)
    assert all(h.failures == 1 for h in cluster.ordered())
    cluster.close()


def test_cluster_does_not_resend_after_the_request_left() -> None:
    calls: list[str] = []

    def cutter(req: Request, conn: PeerConn) -> None:
        calls.append("a")
        conn.close()
    with ScriptedPeer(cutter) as first, ScriptedPeer(ok) as second:
        cluster = Cluster([first.address, second.address])
        with pytest.raises(ConnectionClosed):
            cluster.run(lookup)
        assert calls == ["a"] and second.requests == []  # not silently sent twice
        assert str(cluster.ordered()[0].address) == second.address
        cluster.close()


def test_node_state_refusal_marks_gateway() -> None:
    def shutting(req: Request, conn: PeerConn) -> None:
        conn.reply(Response(req.opcode, id=req.id, result=Result.SHUTDOWN))
    with ScriptedPeer(shutting) as peer:
        cluster = Cluster([peer.address])
        with pytest.raises(Shutdown):
            cluster.run(lookup)
        assert cluster.health(parse_address(peer.address)).failures == 1
        cluster.close()


def test_protocol_error_marks_gateway() -> None:
    def garbage(req: Request, conn: PeerConn) -> None:
        conn.reply(Response(req.opcode, id=req.id + 1))
    with ScriptedPeer(garbage) as peer:
        cluster = Cluster([peer.address])
        with pytest.raises(ProtocolError):
            cluster.run(lookup)
        assert cluster.health(parse_address(peer.address)).failures == 1
        cluster.close()


def test_dead_gateway_recovers_after_its_backoff() -> None:
    now = [100.0]
    with ScriptedPeer(ok) as peer:
        cluster = Cluster([peer.address], clock=lambda: now[0], dead_base=1.0)
        cluster.mark_failed(parse_address(peer.address), RuntimeError("x"))
        assert cluster.ordered()[0].dead_until == 101.0
        assert cluster.run(lookup) == 7  # a dead-marked gateway is still tried
        assert cluster.health(parse_address(peer.address)).failures == 0
        cluster.close()


@pytest.mark.parametrize("kwargs", [{"pool_size": 0}, {"connect_timeout": 0},
                                    {"request_timeout": -1}])
def test_cluster_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidInput):
        Cluster(["127.0.0.1"], **kwargs)  # type: ignore[arg-type]


def test_cluster_needs_a_gateway() -> None:
    with pytest.raises(InvalidInput):
        Cluster([])
