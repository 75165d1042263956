"""What every backend command of ``sheepdog-backend`` shares.

How it works: a command is registered with ``add_command`` and a function
``(driver, args) -> Result``.  ``run`` validates the names the command takes
(``names``: argument -> kind) before anything else, loads one backend from the
ini file (``--config-file``/``--config-dir``, default ``$SHEEPDOG_BACKEND_CONFIG``
or /etc/sheepdog-backend/sheepdog-backend.conf; ``--backend``, default the
first of enabled_backends), sets it up, checks that its cluster can serve
(an unformatted or unreachable cluster fails every command with exit 7 and
says how to fix it), runs the function and prints its Result (cli/output.py).
Every error is one line on stderr (``--json``/``-f json``: a JSON object) and
an exit code from ``EXIT_CODES``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sheepdog_backend.cli.output import FORMATS, Result, render
from sheepdog_backend.exception import (
    ConfigError,
    DriverLoadError,
    InvalidBackingImage,
    InvalidInput,
    NoTag,
    NoVdi,
    ReconcileConflict,
    RetryExhausted,
    ServerError,
    ServerUnavailable,
    SheepdogError,
    SnapshotNotFound,
    TransportError,
    VdiExists,
    VolumeIsBusy,
    VolumeNotFound,
    WaitForFormat,
)
from sheepdog_backend.protocol.naming import check_snapshot_tag, check_volume_name, to_bytes

if TYPE_CHECKING:  # the driver (oslo.config, stevedore) is imported only to run a command
    from sheepdog_backend.driver.base import VolumeDriver

DEFAULT_CONFIG = "/etc/sheepdog-backend/sheepdog-backend.conf"
CONFIG_ENV = "SHEEPDOG_BACKEND_CONFIG"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_NOT_FOUND = 4
EXIT_INVALID = 5
EXIT_CONFLICT = 6
EXIT_UNAVAILABLE = 7
EXIT_STORAGE = 8
EXIT_UNSUPPORTED = 9
EXIT_CODES: list[tuple[int, tuple[type[BaseException], ...]]] = [
    (EXIT_CONFIG, (ConfigError, DriverLoadError)),
    (EXIT_NOT_FOUND, (VolumeNotFound, SnapshotNotFound, NoVdi, NoTag)),
    (EXIT_INVALID, (InvalidInput, InvalidBackingImage)),
    (EXIT_CONFLICT, (VolumeIsBusy, VdiExists, ReconcileConflict)),
    (EXIT_UNAVAILABLE, (TransportError, RetryExhausted, ServerUnavailable)),
    (EXIT_STORAGE, (ServerError, SheepdogError)),
    (EXIT_UNSUPPORTED, (NotImplementedError,)),
]
EXIT_HELP = ("exit codes: 0 ok, 2 usage, 3 configuration/driver load, 4 not found, "
             "5 invalid input or backing image, 6 busy or exists, 7 cluster unreachable, "
             "unformatted or unavailable, 8 other storage error, 9 not supported by the "
             "driver")
FORMAT_HINT = ("format it: for the embedded server start 'sheepdog-backend serve' without "
               "--no-format; for a real cluster run 'dog cluster format' on one node (dog "
               "comes with Sheepdog, e.g. Debian's 'sheepdog' package)")

LOG = logging.getLogger("sheepdog_backend.cli")
Command = Callable[["VolumeDriver", argparse.Namespace], Result]


def exit_code_for(exc: BaseException) -> int:
    for code, classes in EXIT_CODES:
        if isinstance(exc, classes):
            return code
    return EXIT_STORAGE


class UsageError(Exception):
    """A command line that parses but cannot mean anything (exit 2)."""


class NotFound(VolumeNotFound):
    """Raised by ``--strict`` commands when what they were to remove is absent."""


# -- global options --------------------------------------------------------------


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before the command (``top``) and after it.  After the
    command they default to SUPPRESS so they do not undo the ones given first."""
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--config-file", default=default(None), metavar="FILE",
                        help=f"ini file (default ${CONFIG_ENV} or {DEFAULT_CONFIG})")
    parser.add_argument("--config-dir", default=default(None), metavar="DIR",
                        help="also read every *.conf in DIR, in name order, after the "
                        "file (as oslo tools do); later values win")
    parser.add_argument("--backend", default=default(None), metavar="NAME",
                        help="backend section (default: first of enabled_backends)")
    parser.add_argument("-f", "--output-format", dest="output", choices=FORMATS,
                        default=default("table"),
                        help="table (default), json, value (bare values for shell "
                        "scripts) or csv")
    parser.add_argument("-c", "--column", dest="columns", action="append",
                        default=default(None), metavar="COLUMN",
                        help="print only this column (repeat for more)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="same as -f json")
    parser.add_argument("-v", "--verbose", dest="log_level", action="store_const",
                        const="INFO", default=default(None),
                        help="log what the driver does (INFO) to stderr")
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="log everything (DEBUG) and print a traceback on errors")


def wants_json(args: argparse.Namespace | None, argv: list[str] | None = None) -> bool:
    if args is not None:
        return bool(getattr(args, "json", False) or getattr(args, "output", "") == "json")
    argv = argv or []
    for i, item in enumerate(argv):
        if item == "--json" or item in ("-fjson", "--output-format=json"):
            return True
        if item in ("-f", "--output-format") and i + 1 < len(argv) and argv[i + 1] == "json":
            return True
    return False


def setup_logging(args: argparse.Namespace) -> None:
    level = "DEBUG" if getattr(args, "debug", False) else getattr(args, "log_level", None)
    if level:
        logging.basicConfig(stream=sys.stderr, level=level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def print_error(message: str, error: str, code: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": error, "message": message, "exit_code": code}),
              file=sys.stderr)
    else:
        print(f"sheepdog-backend: error: {message}", file=sys.stderr)


def fail(exc: BaseException, args: argparse.Namespace | None) -> int:
    code = exit_code_for(exc)
    if args is not None and getattr(args, "debug", False):
        traceback.print_exception(exc, file=sys.stderr)
    message = str(exc)
    if isinstance(exc, WaitForFormat) and "serve" not in message:
        message = f"{message}. {FORMAT_HINT}" if message else FORMAT_HINT
    print_error(message, type(exc).__name__, code, wants_json(args))
    return code


# -- commands --------------------------------------------------------------------


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                help_: str, func: Command, *, names: dict[str, str] | None = None,
                check_cluster: bool = True) -> argparse.ArgumentParser:
    """A backend command.  ``names`` maps argument dests to 'volume', 'tag' or
    'snapshot' (VOLUME@TAG) for validation before the backend is loaded."""
    parser = sub.add_parser(name, help=help_, description=help_, epilog=EXIT_HELP)
    add_global_options(parser, top=False)
    parser.set_defaults(func=lambda args: run(args, func, names or {}, check_cluster))
    return parser


def config_file(args: argparse.Namespace) -> str:
    return str(getattr(args, "config_file", None) or os.environ.get(CONFIG_ENV)
               or DEFAULT_CONFIG)


def split_snapshot(text: str) -> tuple[str, str]:
    """``VOLUME@SNAPSHOT`` -> (volume, snapshot); the snapshot is everything after
    the first ``@`` (volume names cannot hold one).  Digits mean a snapshot id."""
    volume, sep, tag = text.partition("@")
    if not sep or not volume or not tag:
        raise InvalidInput(f"{text!r} must be VOLUME@SNAPSHOT (a tag, or digits for a "
                           "snapshot id)")
    check_volume_name(volume)
    if not (tag.isascii() and tag.isdigit()):
        check_snapshot_tag(tag)
    return volume, tag


def validate_names(args: argparse.Namespace, names: dict[str, str]) -> None:
    for dest, kind in names.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if kind == "volume":
            check_volume_name(value)
        elif kind == "tag":
            check_snapshot_tag(value)
        elif kind == "snapshot":
            split_snapshot(value)
        elif kind == "text":
            to_bytes(value)


@contextmanager
def backend(args: argparse.Namespace, name: str | None = None,
            check_cluster: bool = True) -> Iterator[VolumeDriver]:
    """One loaded, set-up (and checked) backend, closed afterwards."""
    from sheepdog_backend.driver.loader import load_backend

    driver = load_backend(config_file(args), name if name is not None
                          else getattr(args, "backend", None),
                          config_dir=getattr(args, "config_dir", None))
    try:
        driver.do_setup()
        if check_cluster:
            driver.check_for_setup_error()
        yield driver
    finally:
        driver.close()


def run(args: argparse.Namespace, func: Command, names: dict[str, str],
        check_cluster: bool = True) -> int:
    setup_logging(args)
    try:
        validate_names(args, names)
        with backend(args, check_cluster=check_cluster) as driver:
            result = func(driver, args)
    except UsageError as exc:
        print_error(str(exc), "UsageError", EXIT_USAGE, wants_json(args))
        return EXIT_USAGE
    except (SheepdogError, NotImplementedError) as exc:
        return fail(exc, args)
    emit(result, args)
    return result.exit_code


def emit(result: Result, args: argparse.Namespace) -> None:
    fmt = "json" if wants_json(args) else getattr(args, "output", "table")
    render(result, fmt, getattr(args, "columns", None) or [], sys.stdout)


def positive_int(text: str, what: str) -> int:
    """An argument that must be a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{what} must be at least 1, got {value}")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def memory_size(text: str) -> int:
    """A memory budget in bytes with an optional K/M/G (binary) suffix, 1M at least."""
    unit = text[-1:].upper() if text[-1:].isalpha() else ""
    number = text[:-1] if unit else text
    if unit not in _UNITS or not number.isdigit() or int(number) * _UNITS[unit] < 1 << 20:
        raise argparse.ArgumentTypeError(
            f"the memory budget must be a size of at least 1M (e.g. 256M, 2G), got {text!r}")
    return int(number) * _UNITS[unit]
