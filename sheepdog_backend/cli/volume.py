"""``sheepdog-backend volume|snapshot|connect|stats``: volumes from the shell.

Every command loads one backend from an ini file (``--config-file``, default
``$SHEEPDOG_BACKEND_CONFIG`` or /etc/sheepdog-backend/sheepdog-backend.conf;
``--backend``, default the first of enabled_backends) through the driver
loader, runs one driver call and prints the result (``--json`` for scripts).
Names are the VDI names and snapshot tags exactly as ``dog vdi list`` shows
them; sizes are GiB.

Exit codes (``EXIT_CODES``): 0 success, 2 usage, 3 configuration or driver
load error, 4 volume or snapshot not found, 5 invalid input or backing image,
6 busy or already exists, 7 cluster unreachable or unavailable, 8 other
storage error, 9 operation not supported by the configured driver.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from sheepdog_backend.driver.base import Connector, Snapshot, Volume, VolumeDriver
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
)

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


def exit_code_for(exc: BaseException) -> int:
    for code, classes in EXIT_CODES:
        if isinstance(exc, classes):
            return code
    return EXIT_STORAGE


def _gib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size is a whole number of GiB, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 GiB, got {value}")
    return value


EXIT_HELP = ("exit codes: 0 ok, 2 usage, 3 configuration/driver load, 4 not found, "
             "5 invalid input or backing image, 6 busy or exists, 7 cluster unreachable, "
             "8 other storage error, 9 not supported by the driver")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", default=None, metavar="FILE",
                        help=f"ini file (default ${CONFIG_ENV} or {DEFAULT_CONFIG})")
    parser.add_argument("--backend", default=None, metavar="NAME",
                        help="backend section (default: first of enabled_backends)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _add(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str,
         func: Callable[[VolumeDriver, argparse.Namespace], Any]) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=help_, epilog=EXIT_HELP)
    _common(parser)
    parser.set_defaults(func=lambda args: run(args, func))
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    volume = subparsers.add_parser("volume", help="create, delete, grow, clone volumes")
    vsub = volume.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _add(vsub, "create", "create a volume (empty, from a snapshot, or a backing "
             "reference)", _volume_create)
    p.add_argument("name", help="VDI name")
    p.add_argument("--size", type=_gib, help="GiB (default: the snapshot's size when "
                   "--snapshot is given; otherwise required)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--snapshot", metavar="VOLUME@SNAPSHOT",
                     help="clone this snapshot (copy-on-write)")
    src.add_argument("--backing", metavar="REF",
                     help="clone a snapshot reference: sheepdog://host:port/vdi#tag")
    p = _add(vsub, "delete", "delete a volume (refused while it has snapshots)",
             _volume_delete)
    p.add_argument("name")
    p = _add(vsub, "extend", "grow a volume", _volume_extend)
    p.add_argument("name")
    p.add_argument("--size", type=_gib, required=True, help="new size in GiB")
    _add(vsub, "list", "list volumes", _volume_list)
    p = _add(vsub, "show", "show a volume and its snapshots", _volume_show)
    p.add_argument("name")
    p = _add(vsub, "clone", "copy a volume's current contents to a new volume",
             _volume_clone)
    p.add_argument("source")
    p.add_argument("name")
    p.add_argument("--size", type=_gib, help="GiB (default: the source's size)")
    p = _add(vsub, "revert", "make a volume's contents those of one of its snapshots",
             _volume_revert)
    p.add_argument("name")
    p.add_argument("snapshot", help="snapshot tag")

    snapshot = subparsers.add_parser("snapshot", help="create, delete, list snapshots")
    ssub = snapshot.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _add(ssub, "create", "snapshot a volume", _snapshot_create)
    p.add_argument("volume")
    p.add_argument("snapshot", help="tag")
    p = _add(ssub, "delete", "delete a snapshot", _snapshot_delete)
    p.add_argument("volume")
    p.add_argument("snapshot", help="tag")
    p = _add(ssub, "list", "list snapshots (of one volume, or all)", _snapshot_list)
    p.add_argument("volume", nargs="?")

    p = _add(subparsers, "connect", "print how a hypervisor attaches a volume", _connect)
    p.add_argument("name")
    p.add_argument("--format", choices=("json", "libvirt", "qemu", "blockdev"),
                   default="json", help="connection info JSON (os-brick/Nova), libvirt "
                   "<disk> XML, QEMU URI, or QEMU -blockdev JSON")
    p.add_argument("--host", default="cli", help="connector host name (default 'cli')")
    _add(subparsers, "stats", "print the backend's capacity and capabilities", _stats)


# -- running -----------------------------------------------------------------


def _config_file(args: argparse.Namespace) -> str:
    return str(args.config_file or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def run(args: argparse.Namespace,
        func: Callable[[VolumeDriver, argparse.Namespace], Any]) -> int:
    from sheepdog_backend.driver.loader import load_backend

    try:
        driver = load_backend(_config_file(args), args.backend)
    except (SheepdogError, NotImplementedError) as exc:
        return _fail(exc, args)
    try:
        driver.do_setup()
        result = func(driver, args)
    except (SheepdogError, NotImplementedError) as exc:
        return _fail(exc, args)
    finally:
        driver.close()
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif isinstance(result, str):
        print(result)
    elif result is not None:
        _print_human(result)
    return EXIT_OK


def _fail(exc: BaseException, args: argparse.Namespace) -> int:
    code = exit_code_for(exc)
    if getattr(args, "json", False):
        print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                          "exit_code": code}), file=sys.stderr)
    else:
        print(f"sheepdog-backend: error: {exc}", file=sys.stderr)
    return code


def _print_human(result: Any) -> None:
    if isinstance(result, dict) and "message" in result and len(result) <= 2:
        print(result["message"])
        return
    if isinstance(result, list):
        if not result:
            print("(none)")
        for row in result:
            print(_row(row))
        return
    if isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        for key, value in result.items():
            if key == "snapshots" and isinstance(value, list):
                print(f"{key:<{width}}  {len(value)}")
                for snap in value:
                    print(f"  {_row(snap)}")
            else:
                print(f"{key:<{width}}  {value}")


def _row(row: Any) -> str:
    if isinstance(row, dict) and "name" in row:
        tag = f"@{row['tag']}" if row.get("is_snapshot") else ""
        size = row.get("size_gib")
        text = f"{row['name']}{tag}  " + (f"{size:g} GiB" if isinstance(size, (int, float))
                                          else "? GiB")
        if "vid" in row:
            text += f"  vid {row['vid']:#x}  copies {row.get('copies')}"
        return text
    return str(row)


def _volume(name: str, size: int = 1) -> Volume:
    return Volume(id=name, size=size, name=name)


def _snapshot(volume: str, tag: str) -> Snapshot:
    return Snapshot(id=tag, volume=_volume(volume), name=tag)


def _inspect(driver: VolumeDriver, method: str) -> Callable[..., Any]:
    fn = getattr(driver, method, None)
    if fn is None:
        raise NotImplementedError(f"driver {type(driver).__name__} cannot {method}")
    return fn  # type: ignore[no-any-return]


def _size_gib(info: dict[str, Any]) -> int:
    return max(1, -(-int(info["size_bytes"]) // (1 << 30)))


# -- commands ------------------------------------------------------------------


def _volume_create(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    if args.snapshot:
        vol_name, sep, tag = args.snapshot.partition("@")
        if not sep or not vol_name or not tag:
            raise InvalidInput(f"--snapshot {args.snapshot!r} must be VOLUME@SNAPSHOT")
        snap = _snapshot(vol_name, tag)
        size = args.size or _size_gib(_inspect(driver, "describe_snapshot")(snap))
        driver.create_volume_from_snapshot(_volume(args.name, size), snap)
        what = f"from snapshot {vol_name}@{tag}"
    else:
        if args.size is None:
            raise InvalidInput("--size is required (GiB) unless --snapshot is given")
        size = args.size
        driver.create_volume(_volume(args.name, size), backing=args.backing)
        what = f"backed by {args.backing}" if args.backing else "empty"
    return {"message": f"created volume {args.name} ({size} GiB, {what})",
            "volume": args.name}


def _volume_delete(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    driver.delete_volume(_volume(args.name))
    return {"message": f"deleted volume {args.name}", "volume": args.name}


def _volume_extend(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    driver.extend_volume(_volume(args.name), args.size)
    return {"message": f"volume {args.name} is now {args.size} GiB", "volume": args.name}


def _volume_list(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    lister = getattr(driver, "list_volumes", None)
    if lister is not None:
        return lister()
    return [{"name": v["reference"]["source-name"], "size_gib": v["size"]}
            for v in driver.get_manageable_volumes()]


def _volume_show(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    return _inspect(driver, "describe_volume")(_volume(args.name))


def _volume_clone(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    size = args.size or _size_gib(_inspect(driver, "describe_volume")(_volume(args.source)))
    driver.create_cloned_volume(_volume(args.name, size), _volume(args.source))
    return {"message": f"cloned volume {args.source} to {args.name} ({size} GiB)",
            "volume": args.name}


def _volume_revert(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    driver.revert_to_snapshot(_volume(args.name), _snapshot(args.name, args.snapshot))
    return {"message": f"reverted volume {args.name} to snapshot {args.snapshot}",
            "volume": args.name}


def _snapshot_create(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    driver.create_snapshot(_snapshot(args.volume, args.snapshot))
    return {"message": f"created snapshot {args.volume}@{args.snapshot}",
            "snapshot": f"{args.volume}@{args.snapshot}"}


def _snapshot_delete(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    driver.delete_snapshot(_snapshot(args.volume, args.snapshot))
    return {"message": f"deleted snapshot {args.volume}@{args.snapshot}",
            "snapshot": f"{args.volume}@{args.snapshot}"}


def _snapshot_list(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    lister = _inspect(driver, "list_snapshots")
    return lister(_volume(args.volume) if args.volume else None)


def _connect(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    from sheepdog_backend.driver import connection

    info = driver.initialize_connection(_volume(args.name), Connector(host=args.host))
    if args.format == "json":
        return info if args.json else json.dumps(info, indent=2)
    forms = connection.renderings(info)
    if args.format == "libvirt":
        return forms["libvirt"] if not args.json else {"libvirt": forms["libvirt"]}
    if args.format == "qemu":
        return forms["qemu"] if not args.json else {"qemu": forms["qemu"]}
    if args.json:
        return forms["blockdev"]
    return json.dumps(forms["blockdev"])


def _stats(driver: VolumeDriver, args: argparse.Namespace) -> Any:
    return driver.get_volume_stats(refresh=True)
