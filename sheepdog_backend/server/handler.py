"""The request handler: one decoded Request in, one Response out, no sockets.

How it works: ``Handler.handle`` applies sheep's gating (§2.5: proto_ver,
unknown opcode, unformatted cluster), then calls the op function, which
returns a (response union, payload) pair or raises one of the shared
ServerError classes; the error's ``.code`` becomes the result (and an error
may carry a ``.body`` union, as sheep sends for NEW_VDI and LOCK_VDI
failures).  The response header follows §2.3/§16.3: proto_ver 0, flags 0,
epoch = our epoch, opcode and id echoed, and a payload never longer than the
request's buffer nor present for a WRITE request without PIGGYBACK.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections.abc import Callable

from sheepdog_backend.exception import (
    InvalidParameters,
    NoObject,
    NoSpace,
    ServerError,
    ServerIOError,
    SystemError_,
    VersionMismatch,
    WaitForFormat,
)
from sheepdog_backend.protocol.constants import (
    SD_PROTO_VER,
    SD_SHEEP_PROTO_VER,
    Flag,
    Opcode,
    Result,
)
from sheepdog_backend.protocol.framing import DEFAULT_MAX_PAYLOAD
from sheepdog_backend.protocol.header import (
    HashResponse,
    ObjRequest,
    Request,
    Response,
    ResponseBody,
    response_body_class,
)
from sheepdog_backend.protocol.oid import oid_is_valid
from sheepdog_backend.protocol.structs import NodeId
from sheepdog_backend.server import cluster, objects, vdis
from sheepdog_backend.server.state import ServerState, request_body

LOG = logging.getLogger(__name__)

Op = Callable[[Request], "tuple[ResponseBody | None, bytes]"]

# Ops served while the cluster is unformatted (§5 "force").
FORCE_OPS = frozenset({
    Opcode.READ_VDIS, Opcode.GET_CLUSTER_DEFAULT, Opcode.GET_NODE_LIST, Opcode.MAKE_FS,
    Opcode.STAT_CLUSTER, Opcode.GET_STORE_LIST, Opcode.GET_VDI_COPIES, Opcode.GET_LOGLEVEL,
    Opcode.SET_LOGLEVEL, Opcode.EXIST, Opcode.CLUSTER_INFO, Opcode.READ_DEL_VDIS,
})


def _none(fn: Callable[[Request], None]) -> Op:
    def op(request: Request) -> tuple[ResponseBody | None, bytes]:
        fn(request)
        return None, b""
    return op


def _payload(fn: Callable[[Request], bytes]) -> Op:
    def op(request: Request) -> tuple[ResponseBody | None, bytes]:
        return None, fn(request)
    return op


def _body(fn: Callable[[Request], ResponseBody]) -> Op:
    def op(request: Request) -> tuple[ResponseBody | None, bytes]:
        return fn(request), b""
    return op


def _obsolete_flush(request: Request) -> None:
    raise InvalidParameters("FLUSH_VDI is obsolete")


def _get_hash(state: ServerState, request: Request) -> HashResponse:
    """GET_HASH (``dog vdi check`` / ``cluster check``): the SHA-1 of the whole
    object as this node stores it, zero-padded to its nominal size, as sheep's
    plain store computes it; NO_OBJ when this node does not hold it."""
    oid = request_body(request, ObjRequest).oid
    if not oid_is_valid(oid):
        raise InvalidParameters(f"invalid object id {oid:#018x}")
    data = state.store.read(oid, 0, objects.object_size(state, oid))
    if data is None:
        raise NoObject()
    return HashResponse(digest=hashlib.sha1(data, usedforsecurity=False).digest())


class Handler:
    """Answers Sheepdog requests from a ServerState; thread-safe."""

    def __init__(self, state: ServerState, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.state = state
        self.max_payload = max_payload
        self._loglevel = [6]
        s = state
        self.ops: dict[int, Op] = {
            Opcode.CREATE_AND_WRITE_OBJ: _none(lambda r: objects.create_and_write(s, r)),
            Opcode.READ_OBJ: _payload(lambda r: objects.read_obj(s, r, self.max_payload)),
            Opcode.WRITE_OBJ: _none(lambda r: objects.write_obj(s, r)),
            Opcode.REMOVE_OBJ: _none(lambda r: objects.remove_obj(s, r)),
            Opcode.DISCARD_OBJ: _none(lambda r: objects.discard_obj(s, r)),
            Opcode.EXIST: _none(lambda r: objects.exist(s, r)),
            Opcode.GET_HASH: _body(lambda r: _get_hash(s, r)),
            Opcode.NEW_VDI: _body(lambda r: vdis.new_vdi(s, r)),
            Opcode.LOCK_VDI: _body(lambda r: vdis.lock_vdi(s, r)),
            Opcode.RELEASE_VDI: _body(lambda r: vdis.release_vdi(s, r)),
            Opcode.GET_VDI_INFO: _body(lambda r: vdis.get_vdi_info(s, r)),
            Opcode.DEL_VDI: _body(lambda r: vdis.del_vdi(s, r)),
            Opcode.GET_VDI_ATTR: _body(lambda r: vdis.get_vdi_attr(s, r)),
            Opcode.READ_VDIS: _payload(lambda r: cluster.read_bitmap(s, r, deleted=False)),
            Opcode.READ_DEL_VDIS: _payload(lambda r: cluster.read_bitmap(s, r, deleted=True)),
            Opcode.FLUSH_VDI: _none(_obsolete_flush),
            Opcode.GET_CLUSTER_DEFAULT: _body(lambda r: cluster.cluster_default(s)),
            Opcode.GET_NODE_LIST: lambda r: cluster.node_list(s, r),
            Opcode.MAKE_FS: _none(lambda r: cluster.make_fs(s, r)),
            Opcode.STAT_SHEEP: _body(lambda r: cluster.stat_sheep(s)),
            Opcode.STAT_CLUSTER: _payload(
                lambda r: cluster.stat_cluster(s, r, self.max_payload)),
            Opcode.GET_STORE_LIST: _payload(cluster.store_list),
            Opcode.STAT_RECOVERY: _payload(cluster.stat_recovery),
            Opcode.GET_VDI_COPIES: _payload(lambda r: cluster.vdi_copies(s, r)),
            Opcode.CLUSTER_INFO: _payload(lambda r: cluster.cluster_info(s, r)),
            Opcode.DELETE_CACHE: _none(lambda r: None),
            Opcode.FLUSH_DEL_CACHE: _none(lambda r: None),
            Opcode.GET_LOGLEVEL: _payload(lambda r: cluster.loglevel(r, self._loglevel)),
            Opcode.SET_LOGLEVEL: _payload(lambda r: cluster.loglevel(r, self._loglevel)),
        }

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], *, sync: bool = True,
             node: NodeId | None = None) -> Handler:
        return cls(ServerState(data_dir, sync=sync, node=node))

    def _gate(self, request: Request) -> Op:
        pv = request.effective_proto_ver
        if request.opcode >= 0x80:
            if pv != SD_SHEEP_PROTO_VER:
                raise VersionMismatch()
        elif pv > SD_PROTO_VER:
            raise VersionMismatch()
        op = self.ops.get(request.opcode)
        if op is None:
            raise InvalidParameters(f"unknown opcode {request.opcode:#x}")
        if not self.state.config.formatted and request.opcode not in FORCE_OPS:
            raise WaitForFormat()
        return op

    def handle(self, request: Request) -> Response:
        body: ResponseBody | None = None
        payload = b""
        try:
            op = self._gate(request)
            body, payload = op(request)
            result = int(Result.SUCCESS)
        except ServerError as exc:
            result = int(exc.code)
            body = getattr(exc, "body", None)
            payload = b""
        except OSError as exc:
            LOG.warning("opcode %#x failed: %s", request.opcode, exc)
            result = int(NoSpace.code if exc.errno == errno.ENOSPC else ServerIOError.code)
        limit = request.data_length
        if request.flags & Flag.WRITE and not request.flags & Flag.PIGGYBACK:
            limit = 0
        if len(payload) > limit:
            LOG.error("opcode %#x produced %d bytes for a %d-byte buffer", request.opcode,
                      len(payload), limit)
            result, payload = int(SystemError_.code), b""
        if body is None:
            body = response_body_class(request.opcode)()
        return Response(opcode=request.opcode, result=result, body=body, id=request.id,
                        epoch=self.state.epoch, payload=payload)
