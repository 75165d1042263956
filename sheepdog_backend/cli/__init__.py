"""The ``sheepdog-backend`` command.

Each subcommand group lives in its own module under ``sheepdog_backend.cli``
and exposes ``register(subparsers)``; a group registers a ``func`` default that
takes the parsed arguments and returns the exit code.

Framework: plain argparse, with the conventions of OpenStack's cliff added
where operators expect them (cli/common.py, cli/output.py): global options
before or after the command (``--config-file``, ``--config-dir``,
``--backend``, ``-f table|json|value|csv``, ``-c COLUMN``, ``--json``, ``-v``,
``--debug``), ``--version``, help per command.  cliff itself was weighed and
not taken: its App turns every exception into exit 1 and we document 0, 2-9;
it pulls cmd2, autopage and PrettyTable for an interactive shell we do not
want; and ``serve``/``check`` are long-running processes, not Lister/ShowOne
results.  Usage errors exit 2 and follow ``--json`` like every other error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from sheepdog_backend import __version__

# Modules that contribute subcommands, in help order.
_GROUPS = ("serve", "volume", "image", "check", "export",
           "gateway",  # gateway: the local gateway for tgt (issue 15)
           "agent")  # agent: the compute-host agent of the local export mode (issue 26)


class _Parser(argparse.ArgumentParser):
    """argparse that prints usage errors as the other errors (``--json`` too)."""

    argv: list[str] = []

    def error(self, message: str) -> NoReturn:
        from sheepdog_backend.cli.common import EXIT_USAGE, print_error, wants_json

        if wants_json(None, _Parser.argv):
            print_error(f"{self.prog}: {message}", "UsageError", EXIT_USAGE, True)
        else:
            self.print_usage(sys.stderr)
            print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    from sheepdog_backend.cli.common import add_global_options

    parser = _Parser(
        prog="sheepdog-backend",
        description="Sheepdog volumes from the command line, an embedded Sheepdog-compatible "
        "server, and the driver conformance suite.")
    parser.add_argument("--version", action="version",
                        version=f"sheepdog-backend {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    args_list = list(sys.argv[1:] if argv is None else argv)
    _Parser.argv = args_list
    parser = build_parser()
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return int(func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
