"""The ``sheepdog-backend`` command.

Each subcommand group lives in its own module under ``sheepdog_backend.cli``
and exposes ``register(subparsers)``; a group registers a ``func`` default that
takes the parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands, in help order.
_GROUPS = ("serve", "volume", "check", "export",  # export: adds connect --protocol
           "gateway")  # gateway: the local gateway for tgt (issue 15)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sheepdog-backend",
        description="Sheepdog volumes from the command line, an embedded Sheepdog-compatible "
        "server, and the driver conformance suite.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        try:
            module = importlib.import_module(f"sheepdog_backend.cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sheepdog_backend.cli.{group}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
