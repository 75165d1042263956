"""The message broker between Cinder services in separate processes, for tests.

How it works: Cinder's services talk through oslo.messaging over a broker
(RabbitMQ); the tests have none, and the ``fake://`` transport carries
messages only within one process.  ``Broker`` stands in for it: the process
that runs Cinder's API and scheduler (cluster_run.py) listens on a loopback
port and each cinder-volume service (cluster_service.py) connects with a
``ServiceLink``.  In every process ``install`` replaces
``cinder.rpc.get_client``, so each RPC client Cinder builds is a
``BusClient`` that sends one JSON line per message.  Routing is the
broker's: topic ``cinder-scheduler`` goes to the scheduler in the broker's
process; ``cinder-volume.<cluster>`` to one live service of that cluster, in
turn (RabbitMQ hands a shared queue's messages out round robin), unless the
test ``pin``s one; ``cinder-volume.<host>`` to that service; a fanout to
every service.  Arguments and results are serialised by Cinder's own RPC
serializer (versioned objects as primitives, the context as a dict), as
oslo.messaging does.  A ``call`` waits for its reply, a ``cast`` does not;
a handler's exception of ``cinder.exception`` comes back as itself, any
other as oslo.messaging's RemoteError.  Each message is handled in a thread
of its own (green threads: every process here is monkey-patched).

Shared state: ``Peer._pending`` (message id -> reply slot) under
``Peer._lock``; the broker's services, turn and pin under the same lock; a
link's writes under its own lock.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from oslo_serialization import jsonutils

LOG = logging.getLogger(__name__)
SCHEDULER, VOLUME = "cinder-scheduler", "cinder-volume"
Post = Callable[[dict[str, Any], bool], Any]


class Link:
    """One JSON-lines connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.lock = threading.Lock()

    def send(self, doc: dict[str, Any]) -> None:
        data = jsonutils.dumps(doc).encode() + b"\n"
        with self.lock:
            self.sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        line = self.reader.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def serializer() -> Any:
    from cinder import rpc
    from cinder.objects import base

    return rpc.RequestContextSerializer(base.CinderObjectSerializer())


class BusClient:
    """What ``cinder.rpc.get_client`` returns here: oslo.messaging's RPCClient
    as Cinder's rpcapi modules use it (prepare, cast, call, can_send_version)."""

    def __init__(self, post: Post, target: Any, codec: Any) -> None:
        self.post, self.target, self.codec = post, target, codec

    def prepare(self, **kwargs: Any) -> BusClient:
        for option in ("timeout", "retry", "call_monitor_timeout", "version_cap"):
            kwargs.pop(option, None)
        return BusClient(self.post, self.target(**kwargs), self.codec)

    def can_send_version(self, version: str | None = None) -> bool:
        return True  # every service here runs the same Cinder

    def cast(self, ctxt: Any, method: str, **kwargs: Any) -> None:
        self.post(self._message(ctxt, method, kwargs), False)

    def call(self, ctxt: Any, method: str, **kwargs: Any) -> Any:
        return self.codec.deserialize_entity(
            ctxt, self.post(self._message(ctxt, method, kwargs), True))

    def _message(self, ctxt: Any, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"topic": self.target.topic, "server": self.target.server,
                "fanout": bool(self.target.fanout), "method": method,
                "ctxt": self.codec.serialize_context(ctxt),
                "args": {k: self.codec.serialize_entity(ctxt, v) for k, v in kwargs.items()}}


def install(post: Post) -> None:
    """Every RPC client Cinder builds from now on in this process sends through ``post``."""
    from cinder import rpc

    def get_client(target: Any, version_cap: str | None = None,
                   serializer: Any = None) -> BusClient:
        return BusClient(post, target, rpc.RequestContextSerializer(serializer))

    rpc.get_client = get_client


def failed(exc: Exception) -> dict[str, Any]:
    """The reply document of a handler that raised ``exc``."""
    return {"error": {"module": type(exc).__module__, "class": type(exc).__name__,
                      "message": str(exc)}}


def handle(endpoint: Any, msg: dict[str, Any]) -> dict[str, Any]:
    """Run ``msg`` on ``endpoint`` (a manager): its reply document."""
    codec = serializer()
    ctxt = codec.deserialize_context(msg["ctxt"])
    try:
        args = {k: codec.deserialize_entity(ctxt, v) for k, v in msg["args"].items()}
        return {"result": codec.serialize_entity(ctxt, getattr(endpoint, msg["method"])(
            ctxt, **args))}
    except Exception as exc:
        LOG.exception("%s failed", msg["method"])
        return failed(exc)


def result_of(reply: dict[str, Any]) -> Any:
    """The result in a reply document, or its exception raised."""
    error = reply.get("error")
    if error is None:
        return reply.get("result")
    from cinder import exception
    from oslo_messaging import RemoteError

    cls = getattr(exception, error["class"], None) if error["module"] == exception.__name__ \
        else None
    if isinstance(cls, type) and issubclass(cls, exception.CinderException):
        raise cls(message=error["message"])
    raise RemoteError(exc_type=error["class"], value=error["message"])


class Peer:
    """Replies awaited by this process's calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}

    def send(self, link: Link, msg: dict[str, Any], wait: bool, timeout: float = 120.0) -> Any:
        if not wait:
            link.send(msg)
            return None
        done: tuple[threading.Event, list[dict[str, Any]]] = (threading.Event(), [])
        with self._lock:
            msg = dict(msg, id=next(self._ids))
            self._pending[msg["id"]] = done
        try:
            link.send(msg)
            if not done[0].wait(timeout):
                raise TimeoutError(f"no reply to {msg['method']} within {timeout} s")
        finally:
            with self._lock:
                self._pending.pop(msg["id"], None)
        return result_of(done[1][0])

    def replied(self, msg: dict[str, Any]) -> None:
        with self._lock:
            waiter = self._pending.get(msg["re"])
        if waiter is not None:
            waiter[1].append(msg)
            waiter[0].set()

    @staticmethod
    def serve(link: Link | None, msg: dict[str, Any],
              run: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Run ``msg`` in a thread of its own; reply on ``link`` when it is a call."""
        def work() -> None:
            reply = run(msg)
            if link is not None and "id" in msg:
                link.send(dict(reply, re=msg["id"]))
        threading.Thread(target=work, daemon=True).start()


class ServiceLink(Peer):
    """A cinder-volume service's connection to the broker."""

    def __init__(self, port: int, hello: dict[str, Any]) -> None:
        super().__init__()
        self.link = Link(socket.create_connection(("127.0.0.1", port)))
        self.link.send(hello)
        self.commands: dict[str, Callable[..., Any]] = {}
        self.endpoint: Any = None

    def post(self, msg: dict[str, Any], wait: bool) -> Any:
        return self.send(self.link, msg, wait)

    def event(self, name: str, **fields: Any) -> None:
        """Tell the broker (the test) something happened here."""
        self.link.send({"event": name, **fields})

    def _run(self, msg: dict[str, Any]) -> dict[str, Any]:
        command = self.commands.get(msg["method"])
        if command is None:
            return handle(self.endpoint, msg)
        return {"result": command(**msg["args"])}

    def serve_forever(self) -> None:
        while (msg := self.link.receive()) is not None:
            if "re" in msg:
                self.replied(msg)
            else:
                self.serve(self.link, msg, self._run)


class Broker(Peer):
    """The broker, in the process of Cinder's API and scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(120.0)  # a service that never comes is an error
        self.port = self.listener.getsockname()[1]
        self.scheduler: Any = None
        self.services: dict[str, dict[str, Any]] = {}  # host -> hello, link
        self.events: list[dict[str, Any]] = []
        self.routed: dict[str, dict[str, int]] = {}  # method -> host -> count
        self._turn = itertools.count()
        self._pin: str | None = None
        self._changed = threading.Condition(self._lock)

    def accept(self, count: int) -> None:
        """Take ``count`` services' connections (their hello first)."""
        for _ in range(count):
            sock, _ = self.listener.accept()
            sock.settimeout(None)
            link = Link(sock)
            hello = link.receive()
            assert hello is not None, "a service hung up before its hello"
            with self._lock:
                self.services[hello["host"]] = dict(hello, link=link)
            threading.Thread(target=self._read, args=(hello["host"], link),
                             daemon=True).start()

    def pin(self, host: str | None) -> None:
        """Hand every cluster message to ``host`` (None: in turn again)."""
        with self._lock:
            self._pin = host

    def wait_event(self, name: str, timeout: float = 120.0, **fields: Any) -> dict[str, Any]:
        """The first event ``name`` with ``fields``; RuntimeError when the
        service named by ``host`` hangs up first."""
        def found(kind: str, want: dict[str, Any]) -> dict[str, Any] | None:
            return next((e for e in self.events if e["event"] == kind and all(
                e.get(k) == v for k, v in want.items())), None)

        def gone() -> bool:
            return "host" in fields and name != "gone" and found(
                "gone", {"host": fields["host"]}) is not None
        with self._changed:
            if not self._changed.wait_for(lambda: found(name, fields) or gone(), timeout):
                raise TimeoutError(f"no event {name} {fields} within {timeout} s")
            event = found(name, fields)
            if event is None:
                raise RuntimeError(f"service {fields['host']} hung up before {name}")
            return event

    def command(self, host: str, name: str, **args: Any) -> Any:
        """Run a test command of service ``host`` (cluster_service.py)."""
        return self.send(self.services[host]["link"], {"method": name, "args": args,
                                                       "topic": "", "server": host,
                                                       "fanout": False, "ctxt": {}}, True)

    def _targets(self, msg: dict[str, Any]) -> list[str]:
        topic = str(msg["topic"])
        with self._lock:
            live = sorted(self.services)
            if msg["fanout"]:
                return live
            queue = topic.partition(".")[2]
            hosts = [h for h in live if queue in (h, self.services[h].get("cluster"))]
            if queue in hosts:
                return [queue]
            if self._pin in hosts:
                return [str(self._pin)]
            if not hosts:
                raise RuntimeError(f"no live service listens on {topic}")
            return [hosts[next(self._turn) % len(hosts)]]

    def post(self, msg: dict[str, Any], wait: bool) -> Any:
        """Send a message of this process (or relayed from a service)."""
        if msg["topic"] == SCHEDULER:
            if wait:
                return result_of(handle(self.scheduler, msg))
            self.serve(None, msg, lambda m: handle(self.scheduler, m))
            return None
        results = []
        for host in self._targets(msg):
            with self._lock:
                counts = self.routed.setdefault(msg["method"], {})
                counts[host] = counts.get(host, 0) + 1
                link = self.services[host]["link"]
            results.append(self.send(link, msg, wait))
        return results[0] if wait and results else None

    def _relay(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"result": self.post(msg, "id" in msg)}
        except Exception as exc:
            return failed(exc)

    def _read(self, host: str, link: Link) -> None:
        try:
            while (msg := link.receive()) is not None:
                if "re" in msg:
                    self.replied(msg)
                elif "event" in msg:
                    with self._changed:
                        self.events.append(dict(msg, host=host))
                        self._changed.notify_all()
                else:  # a service's own RPC: the scheduler's, or another service's
                    self.serve(link, msg, self._relay)
        except OSError:
            pass
        finally:
            with self._changed:
                self.services.pop(host, None)
                self.events.append({"event": "gone", "host": host})
                self._changed.notify_all()
