"""Coherent creates with a scripted cluster: a create whose object exists
becomes a write of the same bytes (copy-on-write dropped), one whose object
is absent stays a create, a second create of an object waits for the first's
answer, and what this gateway created is known without asking."""

from __future__ import annotations

import threading

from sheepdog_backend.gateway.coherence import CoherentCreates
from sheepdog_backend.protocol.constants import Flag, Opcode, Result
from sheepdog_backend.protocol.header import ObjRequest, Request, Response, result_response
from sheepdog_backend.protocol.oid import vid_to_data_oid

OID = vid_to_data_oid(0x10, 4)
PARENT = vid_to_data_oid(0x0F, 4)


class Cluster:
    """Answers READ_OBJ probes: SUCCESS for the oids in ``objects``."""

    def __init__(self, *objects: int) -> None:
        self.objects = set(objects)
        self.probes: list[int] = []

    def forward(self, request: Request) -> Response:
        assert request.opcode == Opcode.READ_OBJ and request.data_length == 1
        body = request.body
        assert isinstance(body, ObjRequest)
        self.probes.append(body.oid)
        if body.oid in self.objects:
            return Response(Opcode.READ_OBJ, payload=b"\0", id=request.id)
        return result_response(request, int(Result.NO_OBJ))


def cow_create(payload: bytes = b"data") -> Request:
    return Request(Opcode.CREATE_AND_WRITE_OBJ,
                   ObjRequest(oid=OID, cow_oid=PARENT, copies=3, offset=4096),
                   flags=Flag.WRITE | Flag.COW | Flag.DIRECT, id=42,
                   data_length=len(payload), payload=payload)


def test_a_create_of_an_existing_object_is_written_in_place() -> None:
    cluster = Cluster(OID)
    creates = CoherentCreates(cluster.forward)
    sent, token = creates.prepare(cow_create())
    assert token is None and cluster.probes == [OID]
    assert sent.opcode == Opcode.WRITE_OBJ and sent.id == 42 and sent.payload == b"data"
    body = sent.body
    assert isinstance(body, ObjRequest)
    assert (body.oid, body.offset, body.copies, body.cow_oid) == (OID, 4096, 3, 0)
    assert sent.flags == Flag.WRITE | Flag.DIRECT  # COW dropped: the object has its copy
    assert creates.as_writes == 1


def test_a_create_of_an_absent_object_stays_a_create_and_is_then_known() -> None:
    cluster = Cluster()
    creates = CoherentCreates(cluster.forward)
    request = cow_create()
    sent, token = creates.prepare(request)
    assert sent is request and token == OID
    creates.finish(OID, True)
    again, token = creates.prepare(cow_create(b"more"))
    assert again.opcode == Opcode.WRITE_OBJ and token is None
    assert cluster.probes == [OID]  # known from the first create's answer


def test_a_failed_create_is_not_remembered() -> None:
    cluster = Cluster()
    creates = CoherentCreates(cluster.forward)
    _sent, token = creates.prepare(cow_create())
    assert token == OID
    creates.finish(OID, False)
    sent, token = creates.prepare(cow_create())
    assert sent.opcode == Opcode.CREATE_AND_WRITE_OBJ and cluster.probes == [OID, OID]


def test_a_second_create_waits_for_the_first_and_becomes_a_write() -> None:
    cluster = Cluster()
    creates = CoherentCreates(cluster.forward, wait_timeout=10.0)
    _sent, token = creates.prepare(cow_create())
    assert token == OID
    seen: list[Request] = []
    second = threading.Thread(target=lambda: seen.append(creates.prepare(cow_create())[0]))
    second.start()
    second.join(0.2)
    assert second.is_alive() and not seen  # waits while the first is in flight
    creates.finish(OID, True)
    second.join(5)
    assert seen and seen[0].opcode == Opcode.WRITE_OBJ


def test_a_probe_that_cannot_tell_lets_the_create_through() -> None:
    def refuse(request: Request) -> Response:
        return result_response(request, int(Result.NETWORK_ERROR))
    creates = CoherentCreates(refuse)
    sent, token = creates.prepare(Request(Opcode.CREATE_AND_WRITE_OBJ, ObjRequest(oid=OID),
                                          flags=Flag.WRITE, data_length=1, payload=b"x"))
    assert sent.opcode == Opcode.CREATE_AND_WRITE_OBJ and token == OID
