"""A scripted Sheepdog node on the wire engine, for engine and relay tests.

``FakeNode()`` listens on 127.0.0.1 (a free port) and answers on the loop:
READ_OBJ with ``data_length`` bytes of ``fill``, WRITE_OBJ and
CREATE_AND_WRITE_OBJ by remembering the payload (``writes``), EXIST and
FLUSH_VDI with SUCCESS, anything else with INVALID_PARMS (so the client's
cluster-identity check does not judge it).  ``script`` maps an opcode to what
the next request of it gets instead: a result code, "close" (the connection
is closed without an answer), "hold" (never answered, until ``release``),
"cut" (the answer's header and half its payload, then the connection is closed);
requests whose data length is in ``hold_lengths`` are held too.
``requests`` counts what arrived by opcode.  The test stops it (context
manager); everything runs on the node's loop thread, so the test reads the
counters only after what it waits for.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter, deque
from types import TracebackType

from sheepdog_backend.engine.conn import Downstream, Frame
from sheepdog_backend.engine.engine import Engine
from sheepdog_backend.protocol.constants import Opcode, Result
from sheepdog_backend.protocol.framing import ResponseReader
from sheepdog_backend.protocol.header import Response, response_body_class
from sheepdog_backend.protocol.peek import result_header

Action = int | str


class FakeNode:
    def __init__(self, fill: bytes = b"\x5a", epoch: int = 1) -> None:
        self.fill = fill
        self.epoch = epoch
        self.script: dict[int, deque[Action]] = {}
        self.requests: Counter[int] = Counter()
        self.writes: list[tuple[int, bytes]] = []  # (opcode, payload)
        self.held: list[tuple[Downstream, Frame]] = []
        self.hold_lengths: set[int] = set()  # requests of these data lengths are held
        self.lock = threading.Lock()
        self.engine = Engine(self, ports=[0], name="fakenode")

    @property
    def address(self) -> str:
        host, port = self.engine.addresses[0]
        return f"{host}:{port}"

    def then(self, opcode: int, *actions: Action) -> FakeNode:
        with self.lock:
            self.script.setdefault(int(opcode), deque()).extend(actions)
        return self

    # -- the service -----------------------------------------------------------

    def on_request(self, conn: Downstream, frame: Frame) -> None:
        op = frame.opcode
        with self.lock:
            self.requests[op] += 1
            queue = self.script.get(op)
            action: Action | None = queue.popleft() if queue else None
            if frame.data_length in self.hold_lengths:
                action = "hold"
        if action == "close":
            conn.close()
            return
        if action == "hold":
            self.held.append((conn, frame))
            return
        if action == "cut":  # the header and half the payload, then the connection goes
            length = frame.data_length
            header = Response(opcode=op, body=response_body_class(op)(), id=frame.id,
                              epoch=self.epoch, data_length=length).encode_header()
            conn.sock.sendall(header + (self.fill * length)[:length // 2])
            conn.close()
            return
        if isinstance(action, int):
            conn.send(result_header(op, frame.id, action, self.epoch), b"", frame.cost)
            return
        self.answer(conn, frame)

    def answer(self, conn: Downstream, frame: Frame) -> None:
        op = frame.opcode
        payload = b""
        result = Result.SUCCESS
        if op == Opcode.READ_OBJ:
            payload = (self.fill * frame.data_length)[:frame.data_length]
        elif op in (Opcode.WRITE_OBJ, Opcode.CREATE_AND_WRITE_OBJ):
            self.writes.append((op, bytes(frame.payload)))
        elif op not in (Opcode.EXIST, Opcode.FLUSH_VDI):
            result = Result.INVALID_PARMS
        header = Response(opcode=op, result=result, body=response_body_class(op)(),
                          id=frame.id, epoch=self.epoch, payload=payload).encode_header()
        conn.send(header, payload, frame.cost)

    def on_close(self, conn: Downstream) -> None:
        pass

    def release(self) -> None:
        """Answer every held request (the ones whose connection still lives)."""
        def answer_all() -> None:
            held, self.held = self.held, []
            for conn, frame in held:
                self.answer(conn, frame)
        self.engine.loop.run_in_loop(answer_all)

    # -- running -----------------------------------------------------------------

    def start(self) -> FakeNode:
        self.engine.start()
        return self

    def stop(self) -> None:
        self.engine.stop()

    def __enter__(self) -> FakeNode:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def read_answers(sock: socket.socket, count: int) -> list[Response]:
    """The next ``count`` answers on ``sock`` (AssertionError at EOF before)."""
    reader = ResponseReader()
    out: list[Response] = []
    while len(out) < count:
        data = sock.recv(1 << 20)
        assert data, f"EOF after {len(out)} of {count} answers"
        reader.feed(data)
        out.extend(reader)
    return out
