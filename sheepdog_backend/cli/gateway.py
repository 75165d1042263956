"""``sheepdog-backend gateway``: the local Sheepdog-protocol gateway for tgt.

Listens on a unix socket and/or a TCP port <= 9999 on 127.0.0.1, forwards
every request to the cluster nodes given with ``--cluster`` (plus the ones
the cluster reports) on one event loop (``--max-connections`` and
``--memory-budget`` bound what it serves), logs one line at start and stop, writes per-volume I/O
counters as JSON to ``--stats-file`` every ``--stats-interval`` seconds (and
at stop), and stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from types import FrameType

from sheepdog_backend.cli.common import memory_size, positive_int
from sheepdog_backend.engine.engine import DEFAULT_MAX_CONNECTIONS, DEFAULT_MEMORY_BUDGET
from sheepdog_backend.exception import SheepdogError

LOG = logging.getLogger("sheepdog_backend.gateway")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "gateway", help="run a local Sheepdog gateway for tgt (failover, safe snapshots)",
        description="Serve the Sheepdog protocol on a unix socket or a low port and "
        "forward every request to the cluster, failing over between its nodes; "
        "snapshots taken through it are safe for the writers behind it.")
    parser.add_argument("--cluster", action="append", required=True, metavar="HOST:PORT",
                        help="a cluster node to forward to; repeat for several")
    parser.add_argument("--node-socket", action="append", default=[],
                        metavar="HOST:PORT=PATH",
                        help="reach the --cluster node HOST:PORT, when it runs on this host, "
                        "through its unix socket PATH (the sheep's STORE_DIR/sock): "
                        "object I/O skips the TCP stack; checked to belong to the same "
                        "cluster; repeat for several")
    parser.add_argument("--unix", metavar="PATH",
                        help="unix socket to listen on (tgt: unix:PATH:VDI)")
    parser.add_argument("--port", type=int,
                        help="TCP port on --host to listen on, 1-9999 (tgt reads 4 digits)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address of the TCP listener (default 127.0.0.1)")
    parser.add_argument("--drain-timeout", type=float, default=5.0,
                        help="longest a snapshot waits for answered creates' slot writes")
    parser.add_argument("--replay-budget", type=_mib, default=256, metavar="MIB",
                        help="MiB of writes kept during a cluster recovery to send again "
                        "once it is done (sheep 1.0 can lose them on one copy); past it "
                        "writes wait for the recovery; 0 turns this off (default 256)")
    parser.add_argument("--max-connections", type=lambda t: positive_int(t, "max-connections"),
                        default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                        help="client connections served at once (default "
                        f"{DEFAULT_MAX_CONNECTIONS}; tgt opens up to 17 per LU); more are "
                        "closed at once and logged")
    parser.add_argument("--memory-budget", type=memory_size, default=DEFAULT_MEMORY_BUDGET,
                        metavar="SIZE", help="bytes held at most for requests and replies "
                        "in flight, all clients together (default 256M)")
    parser.add_argument("--no-lane", dest="lane", action="store_false",
                        help="relay every request in Python: no compiled lane for the "
                        "steady-state reads and writes (slower; for comparison)")
    parser.add_argument("--stats-file", metavar="PATH",
                        help="write per-volume I/O counters here as JSON")
    parser.add_argument("--stats-interval", type=float, default=10.0,
                        help="seconds between stats writes and log lines (default 10)")
    parser.set_defaults(func=run)


def _mib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} MiB: the budget cannot be negative")
    return value


def _write_stats(path: str, stats: dict[str, object]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(stats, out, indent=1, sort_keys=True)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    from sheepdog_backend.gateway import Gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        gateway = Gateway(args.cluster, unix_path=args.unix, port=args.port, host=args.host,
                          drain_timeout=args.drain_timeout,
                          replay_budget=args.replay_budget << 20,
                          max_connections=args.max_connections,
                          memory_budget=args.memory_budget,
                          node_sockets=args.node_socket, lane=args.lane)
        gateway.start()
    except SheepdogError as exc:
        print(f"sheepdog-backend gateway: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sheepdog-backend gateway: error: cannot listen on "
              f"{args.unix or ''} {args.port or ''}: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    LOG.info("gateway on %s forwarding to %s", gateway.address, " ".join(args.cluster))
    sys.stdout.flush()
    try:
        while not done.wait(max(0.5, args.stats_interval)):
            stats = gateway.stats()
            if args.stats_file:
                _write_stats(args.stats_file, stats)
            wire = stats["wire"]
            LOG.info("gateway stats: %d volume(s), %d snapshot(s), %d re-applied slot(s), "
                     "%d connection(s), %d upstream(s), %d refused",
                     len(stats["vdis"]), stats["snapshots"], stats["reapplied_slots"],
                     wire.get("connections", 0), wire.get("upstreams", 0),
                     wire.get("refused", 0))
    finally:
        stats = gateway.stats()
        gateway.stop()
        if args.stats_file:
            _write_stats(args.stats_file, stats)
        LOG.info("gateway on %s stopped", gateway.address)
    return 0
