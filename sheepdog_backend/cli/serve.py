"""``sheepdog-backend serve``: run the embedded Sheepdog-compatible server.

Formats a new data directory with one copy unless ``--no-format`` (then
``dog cluster format`` does it), logs one line at start and one at stop, and
stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sheepdog_backend.server.embedded import EmbeddedServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ports = args.ports or [SD_LISTEN_PORT]
    fixed = [port for port in ports if port]
    if len(set(fixed)) != len(fixed):
        print("sheepdog-backend serve: error: a port is given twice", file=sys.stderr)
        return 2
    server = EmbeddedServer(args.data_dir, host=args.host, ports=ports, copies=args.copies,
                            format=not args.no_format, sync=not args.no_sync)
    try:
        server.start()
    except OSError as exc:
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
