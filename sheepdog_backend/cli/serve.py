"""``sheepdog-backend serve``: run the embedded Sheepdog-compatible server.

Formats a new data directory with one copy unless ``--no-format`` (then
``dog cluster format`` does it), logs one line at start and one at stop, and
stops cleanly on SIGINT/SIGTERM.  The limits (``--memory-budget``,
``--max-connections``, ``--idle-timeout``, ``--send-timeout``) bound what
clients can make the server hold (server/server.py).

``--check`` checks a stopped data directory instead of serving it (orphaned
objects, stale slots of deleted VDIs, missing objects, a pending journal,
stray temp files; server/check.py) and exits 0 when it is clean, 1 when not;
``--repair`` also fixes what can be fixed and reports what is left.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from sheepdog_backend.cli.common import memory_size, positive_int
from sheepdog_backend.protocol.constants import SD_LISTEN_PORT, SD_MAX_COPIES

LOG = logging.getLogger("sheepdog_backend.serve")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"port must be in 1..65535 (or 0 for any free port), got {value}")
    return value


def _copies(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"copies must be a number, got {text!r}") from None
    if not 1 <= value <= SD_MAX_COPIES:
        raise argparse.ArgumentTypeError(f"copies must be in 1..{SD_MAX_COPIES}, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a timeout must be a number of seconds, "
                                         f"got {text!r}") from None
    if not 0 <= value <= 86400 or value != value:
        raise argparse.ArgumentTypeError(f"a timeout must be in 0..86400 seconds "
                                         f"(0: none), got {text}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the embedded Sheepdog-compatible server",
        description="Serve the Sheepdog 1.0 protocol from a local data directory.")
    parser.add_argument("--data-dir", required=True, help="directory holding the objects")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, action="append", dest="ports",
                        help=f"port to listen on; repeat for several gateways; 0 picks a "
                        f"free port, and the start line names the ports really bound "
                        f"(default {SD_LISTEN_PORT})")
    parser.add_argument("--copies", type=_copies, default=1,
                        help="copies when formatting a new data directory (default 1)")
    parser.add_argument("--no-format", action="store_true",
                        help="leave a new data directory unformatted")
    parser.add_argument("--no-sync", action="store_true",
                        help="do not fsync before replying (tests only: loses data on crash)")
    from sheepdog_backend.server import server as net

    limits = parser.add_argument_group("limits")
    limits.add_argument("--memory-budget", type=memory_size, default=net.DEFAULT_MEMORY_BUDGET,
                        help="bytes of requests and replies in flight across all clients "
                        "before the server stops reading (default 256M)")
    limits.add_argument("--max-connections", type=lambda t: positive_int(t, "max-connections"),
                        default=net.DEFAULT_MAX_CONNECTIONS,
                        help=f"connections served at once; more are closed at once "
                        f"(default {net.DEFAULT_MAX_CONNECTIONS})")
    limits.add_argument("--idle-timeout", type=_seconds, default=net.DEFAULT_IDLE_TIMEOUT,
                        help="close a connection that sends nothing for this long while "
                        "nothing is in flight; 0: never (default 300)")
    limits.add_argument("--send-timeout", type=_seconds, default=net.DEFAULT_SEND_TIMEOUT,
                        help="close a connection whose client reads none of a reply for "
                        "this long; 0: never (default 60)")
    check = parser.add_mutually_exclusive_group()
    check.add_argument("--check", action="store_true",
                       help="check the (stopped) data directory instead of serving it")
    check.add_argument("--repair", action="store_true",
                       help="check the (stopped) data directory and fix what can be fixed")
    parser.set_defaults(func=run)


def run_check(args: argparse.Namespace) -> int:
    import os

    from sheepdog_backend.exception import DataDirBusy
    from sheepdog_backend.server.check import check_data_dir

    if not os.path.isdir(args.data_dir):
        print(f"sheepdog-backend serve: error: no data directory at {args.data_dir}",
              file=sys.stderr)
        return 2
    try:
        report = check_data_dir(args.data_dir, repair=args.repair)
    except DataDirBusy as exc:
        print(f"sheepdog-backend serve: error: {exc}", file=sys.stderr)
        return 1
    print(f"{report.data_dir}: {report.inodes} inodes ({report.deleted_inodes} deleted), "
          f"{report.data_objects} data objects")
    for finding in report.repaired:
        print(f"repaired {finding}")
    for finding in report.findings:
        fix = "" if finding.repairable else " (not repairable)"
        print(f"found {finding}{fix}")
    if report.clean:
        print("clean")
        return 0
    hint = "" if args.repair else "; --repair fixes the repairable ones"
    print(f"{len(report.findings)} problems{hint}")
    return 1


def run(args: argparse.Namespace) -> int:
    from sheepdog_backend.exception import DataDirBusy
    from sheepdog_backend.server.embedded import EmbeddedServer

    if args.check or args.repair:
        return run_check(args)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ports = args.ports or [SD_LISTEN_PORT]
    fixed = [port for port in ports if port]
    if len(set(fixed)) != len(fixed):
        print("sheepdog-backend serve: error: a port is given twice", file=sys.stderr)
        return 2
    server = EmbeddedServer(args.data_dir, host=args.host, ports=ports, copies=args.copies,
                            format=not args.no_format, sync=not args.no_sync,
                            memory_budget=args.memory_budget,
                            max_connections=args.max_connections,
                            idle_timeout=args.idle_timeout, send_timeout=args.send_timeout)
    try:
        server.start()
    except (OSError, DataDirBusy) as exc:
        print(f"sheepdog-backend serve: error: cannot serve {args.data_dir} on "
              f"{args.host} {ports}: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    LOG.info("serving %s on %s (sync %s)", args.data_dir, " ".join(server.gateways),
             "off" if args.no_sync else "on")
    sys.stdout.flush()
    while not done.wait(0.5):
        pass
    server.stop()
    LOG.info("stopped serving %s", args.data_dir)
    return 0
