"""Loader for the golden frames captured from a real Sheepdog 1.0 node.

Import it from any test as ``from tests.golden_frames import ...`` (``tests``
is a package and pytest puts the project root on ``sys.path``).

How it works: each ``tests/data/golden/dog-1.0/NN-name.json`` file is one
``dog`` command with every frame dog and sheep exchanged (format in the
README next to the files).  ``load_transcripts()`` returns them in capture
order as ``Transcript`` objects; each ``Frame`` keeps the raw 48-byte header
and either the whole payload (``frame.data``) or, for payloads over 64 KiB,
a ``Summary`` (length, sha256, first 8192 bytes, non-zero 4 KiB pages).

``frame.payload()`` gives payload bytes for both kinds: the real bytes, or
for a summary the head padded with zeros to the full length.  That synthetic
payload is byte-exact only when ``frame.summary.head_is_complete`` (every
non-zero page lies inside the head); otherwise only its length and head are
real.  ``frame.decode()`` runs the codec on header + ``payload()`` and returns
a ``Request`` or ``Response``; ``Exchange`` pairs a request with the response
that followed it on the same connection.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from sheepdog_backend.protocol.header import (
    Request,
    RequestHeader,
    Response,
    ResponseHeader,
    decode_request,
    decode_request_header,
    decode_response,
    decode_response_header,
)

GOLDEN_ROOT = Path(__file__).resolve().parent / "data" / "golden"
DOG_1_0 = GOLDEN_ROOT / "dog-1.0"
PAGE = 4096
MAX_LISTED_PAGES = 64  # the capture lists at most this many non-zero pages

Direction = Literal["req", "rsp"]


@dataclass(frozen=True)
class Summary:
    """A payload over 64 KiB, kept as length, digest, head and non-zero pages."""

    length: int
    sha256: str
    head: bytes
    nonzero_pages: tuple[int, ...]  # byte offsets of non-zero 4 KiB pages

    @property
    def head_is_complete(self) -> bool:
        """True when every non-zero byte lies in ``head`` (head + zeros is exact)."""
        return len(self.nonzero_pages) < MAX_LISTED_PAGES and all(
            min(page + PAGE, self.length) <= len(self.head) for page in self.nonzero_pages)

    def synthesize(self) -> bytes:
        """``head`` padded with zeros to ``length``."""
        return self.head + bytes(self.length - len(self.head))

    def matches(self, data: bytes) -> bool:
        """True when ``data`` is the captured payload (same length and sha256)."""
        return len(data) == self.length and hashlib.sha256(data).hexdigest() == self.sha256


@dataclass(frozen=True)
class Frame:
    """One message on the wire: 48-byte header plus payload (or its summary)."""

    transcript: str
    index: int  # position in the file's frame list
    conn: int
    dir: Direction
    header: bytes
    data: bytes | None  # None when summarised
    summary: Summary | None

    @property
    def is_request(self) -> bool:
        return self.dir == "req"

    @property
    def payload_length(self) -> int:
        return self.summary.length if self.summary is not None else len(self.data or b"")

    @property
    def opcode(self) -> int:
        return self.header[1]

    def payload(self) -> bytes:
        """The payload: real bytes, or a summary's head padded with zeros."""
        if self.summary is not None:
            return self.summary.synthesize()
        return self.data or b""

    @property
    def payload_is_exact(self) -> bool:
        return self.summary is None or self.summary.head_is_complete

    def wire(self) -> bytes:
        """Header + payload() as they would appear in the TCP stream."""
        return self.header + self.payload()

    def decode_header(self) -> RequestHeader | ResponseHeader:
        if self.is_request:
            return decode_request_header(self.header)
        return decode_response_header(self.header)

    def decode(self) -> Request | Response:
        if self.is_request:
            return decode_request(self.wire())
        return decode_response(self.wire())

    def request(self) -> Request:
        message = self.decode()
        assert isinstance(message, Request), f"{self} is not a request"
        return message

    def response(self) -> Response:
        message = self.decode()
        assert isinstance(message, Response), f"{self} is not a response"
        return message

    def __str__(self) -> str:
        return f"{self.transcript}#{self.index}({self.dir} op={self.opcode:#04x})"


@dataclass(frozen=True)
class Exchange:
    """A request and the response that followed it on the same connection."""

    request: Frame
    response: Frame | None  # None if the capture ended first


@dataclass(frozen=True)
class Transcript:
    """One golden file: a dog command, its output and its frames."""

    name: str  # file stem, e.g. "07-vdi-create"
    path: Path
    command: str
    stdin: bytes
    exit_code: int
    stdout: str
    stderr: str
    frames: tuple[Frame, ...]

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)

    @property
    def connections(self) -> list[int]:
        return sorted({frame.conn for frame in self.frames})

    def frames_for(self, conn: int, direction: Direction) -> list[Frame]:
        return [f for f in self.frames if f.conn == conn and f.dir == direction]

    def stream(self, conn: int, direction: Direction) -> bytes:
        """Every frame of one direction of one connection, concatenated."""
        return b"".join(f.wire() for f in self.frames_for(conn, direction))

    def exchanges(self) -> list[Exchange]:
        """Request/response pairs in order (dog is synchronous per connection)."""
        out: list[Exchange] = []
        pending: dict[int, list[Frame]] = {}
        by_request: dict[int, Frame | None] = {}
        order: list[Frame] = []
        for frame in self.frames:
            if frame.is_request:
                pending.setdefault(frame.conn, []).append(frame)
                by_request[id(frame)] = None
                order.append(frame)
            else:
                queue = pending.get(frame.conn)
                if not queue:
                    raise ValueError(f"{frame}: response without a request")
                by_request[id(queue.pop(0))] = frame
        for req in order:
            out.append(Exchange(req, by_request[id(req)]))
        return out

    def exchanges_for(self, opcode: int) -> list[Exchange]:
        return [ex for ex in self.exchanges() if ex.request.opcode == opcode]


def _frame(transcript: str, index: int, raw: dict[str, object]) -> Frame:
    direction = raw["dir"]
    if direction not in ("req", "rsp"):
        raise ValueError(f"{transcript}#{index}: bad dir {direction!r}")
    header = bytes.fromhex(str(raw["hdr"]))
    if "data" in raw:
        data: bytes | None = bytes.fromhex(str(raw["data"]))
        summary = None
    else:
        pages = raw["nonzero_4k_pages"]
        assert isinstance(pages, list)
        summary = Summary(int(str(raw["data_len"])), str(raw["data_sha256"]),
                          bytes.fromhex(str(raw["data_head"])),
                          tuple(int(p) for p in pages))
        data = None
    conn = raw["conn"]
    assert isinstance(conn, int)
    return Frame(transcript, index, conn, direction, header, data, summary)


@cache
def load_transcript(name: str) -> Transcript:
    """Load ``dog-1.0/<name>.json`` (``name`` with or without ``.json``)."""
    path = DOG_1_0 / (name if name.endswith(".json") else f"{name}.json")
    raw = json.loads(path.read_text())
    stem = path.stem
    frames = tuple(_frame(stem, i, f) for i, f in enumerate(raw["frames"]))
    return Transcript(stem, path, raw["command"], bytes.fromhex(raw["stdin_hex"]),
                      raw["exit_code"], raw["stdout"], raw["stderr"], frames)


def transcript_names() -> list[str]:
    """File stems in capture order (the cluster state carries from one to the next)."""
    return sorted(p.stem for p in DOG_1_0.glob("*.json"))


def load_transcripts() -> list[Transcript]:
    return [load_transcript(name) for name in transcript_names()]


def iter_frames() -> Iterator[Frame]:
    for transcript in load_transcripts():
        yield from transcript.frames
