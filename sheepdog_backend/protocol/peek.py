"""Header fields read in place, for code that relays frames without decoding them.

The wire engine (sheepdog_backend.engine) and the gateway's relay look at a
few fields of every 48-byte header while it still sits in a receive buffer:
the lengths (to frame the stream), the opcode and id (to route and match),
the result and epoch of an answer, and an object request's oid and offset.
These layouts read them with one ``unpack_from`` each, without building the
typed messages of header.py; ``result_header`` builds the 48 bytes of an
answer that carries only a result.

Pure code: bytes in, tuples out.  No sockets, clocks or logging.
"""

from __future__ import annotations

import struct

from sheepdog_backend.protocol.constants import HEADER_SIZE, Flag

# proto_ver u8, opcode u8, flags u16, epoch u32, id u32, data_length u32 (header.COMMON)
REQUEST_HEAD = struct.Struct("<BBHIII")
# the same, then the result u32 of a response
RESPONSE_HEAD = struct.Struct("<BBHIIII")
# an object request's oid u64 and cow_oid u64 (bytes 16-31), and its offset u32 (40-43)
OBJ_OIDS = struct.Struct("<QQ")
OBJ_OFFSET = struct.Struct("<I")
_OBJ_OIDS_AT = 16
_OBJ_OFFSET_AT = 40
_RESULT_TAIL = bytes(HEADER_SIZE - RESPONSE_HEAD.size)

WRITE = int(Flag.WRITE)  # a request carries data_length payload bytes
PIGGYBACK = int(Flag.PIGGYBACK)  # ... and gets as many back


def object_target(header: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(oid, cow_oid, offset) of an object request's header."""
    oid, cow = OBJ_OIDS.unpack_from(header, _OBJ_OIDS_AT)
    (offset,) = OBJ_OFFSET.unpack_from(header, _OBJ_OFFSET_AT)
    return oid, cow, offset


def result_header(opcode: int, request_id: int, result: int, epoch: int = 0) -> bytes:
    """The 48 bytes of an answer carrying only ``result`` (empty union, no
    payload), as header.result_response encodes it."""
    return RESPONSE_HEAD.pack(0, opcode, 0, epoch, request_id, 0, result) + _RESULT_TAIL
