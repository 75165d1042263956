"""``sheepdog-backend volume|snapshot|connect|disconnect|stats``: volumes from the shell.

Every command loads one backend (cli/common.py), runs driver calls and prints
a Result (cli/output.py).  Names are the VDI names and snapshot tags exactly as
``dog vdi list`` shows them, in the alphabet of protocol/naming.py; sizes given
are whole GiB, sizes shown are in human units.  A snapshot is named by its tag
or, as digits, by its snapshot id, the same rule as QEMU's
``sheepdog:///VOLUME#N``: ``--snapshot v1@s1`` is tag s1, ``v1@3`` is id 3.

Messages say what happened, not what was asked: a create of a volume that
exists says so, a delete of something absent says "already absent" (exit 0,
as the driver's idempotent API; ``--strict`` makes it exit 4), a listing of a
missing volume's snapshots exits 4.

Exit codes (``EXIT_CODES`` in cli/common.py): 0 success, 2 usage, 3
configuration or driver load error, 4 volume or snapshot not found, 5 invalid
input or backing image, 6 busy or already exists, 7 cluster unreachable,
unformatted or unavailable, 8 other storage error, 9 not supported.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sheepdog_backend.cli.common import (  # noqa: F401 (re-exported for scripts/tests)
    CONFIG_ENV,
    DEFAULT_CONFIG,
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_CONFLICT,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_UNAVAILABLE,
    EXIT_UNSUPPORTED,
    EXIT_USAGE,
    NotFound,
    UsageError,
    add_command,
    add_global_options,
    backend,
    exit_code_for,
    fail,
    setup_logging,
    split_snapshot,
)
from sheepdog_backend.cli.output import Result, human_size
from sheepdog_backend.exception import (
    InvalidInput,
    SheepdogError,
    SnapshotNotFound,
    VdiExists,
    VolumeNotFound,
)

if TYPE_CHECKING:  # the driver is imported only to run a command (fast usage errors)
    from sheepdog_backend.driver.base import Snapshot, Volume, VolumeDriver

GiB = 1 << 30
VOLUME_COLUMNS = ("name", "size_bytes", "used_bytes", "shared_bytes", "object_size",
                  "vid", "parent_vid", "copies", "created")
SNAPSHOT_COLUMNS = ("name", "tag", "snap_id", "size_bytes", "used_bytes", "shared_bytes",
                    "vid", "created")
HEADERS = {"size_bytes": "SIZE", "used_bytes": "USED", "shared_bytes": "SHARED",
           "object_size": "OBJECT", "parent_vid": "PARENT", "snap_id": "ID",
           "max_size": "MAX SIZE"}


def _gib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size is a whole number of GiB, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 GiB, got {value}")
    return value


def _add(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_: str,
         func: Callable[[VolumeDriver, argparse.Namespace], Result],
         names: dict[str, str] | None = None) -> argparse.ArgumentParser:
    return add_command(sub, name, help_, func, names=names)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    volume = subparsers.add_parser("volume", help="create, delete, grow, clone, manage "
                                   "volumes")
    vsub = volume.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _add(vsub, "create", "create a volume (empty, from a snapshot, or a backing "
             "reference)", _volume_create,
             {"name": "volume", "snapshot": "snapshot", "backing": "text"})
    p.add_argument("name", help="VDI name")
    p.add_argument("--size", type=_gib, help="GiB (default: the snapshot's size when "
                   "--snapshot is given; otherwise required)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--snapshot", metavar="VOLUME@SNAPSHOT",
                     help="clone this snapshot (copy-on-write); SNAPSHOT is a tag, or "
                     "digits for a snapshot id")
    src.add_argument("--backing", metavar="REF",
                     help="clone a snapshot reference: sheepdog://host:port/vdi#tag")
    p = _add(vsub, "delete", "delete a volume (refused while it has snapshots)",
             _volume_delete, {"name": "volume"})
    p.add_argument("name")
    p.add_argument("--strict", action="store_true",
                   help="exit 4 when the volume does not exist")
    p = _add(vsub, "extend", "grow a volume", _volume_extend, {"name": "volume"})
    p.add_argument("name")
    p.add_argument("--size", type=_gib, required=True, help="new size in GiB")
    _add(vsub, "list", "list volumes", _volume_list)
    p = _add(vsub, "show", "show a volume and its snapshots", _volume_show,
             {"name": "volume"})
    p.add_argument("name")
    p = _add(vsub, "clone", "copy a volume's current contents to a new volume",
             _volume_clone, {"source": "volume", "name": "volume"})
    p.add_argument("source")
    p.add_argument("name")
    p.add_argument("--size", type=_gib, help="GiB (default: the source's size)")
    p = _add(vsub, "revert", "make a volume's contents those of one of its snapshots",
             _volume_revert, {"name": "volume"})
    p.add_argument("name")
    p.add_argument("snapshot", help="snapshot tag, or digits for a snapshot id")
    p = _add(vsub, "manage", "adopt an existing VDI (made by dog or QEMU) as a volume",
             _volume_manage)
    p.add_argument("name", help="VDI name as dog vdi list shows it")
    p = _add(vsub, "unmanage", "stop managing a volume; its VDI stays as it is",
             _volume_unmanage, {"name": "volume"})
    p.add_argument("name")
    _add(vsub, "manageable", "list VDIs and whether they can be managed", _manageable)

    snapshot = subparsers.add_parser("snapshot", help="create, delete, list snapshots")
    ssub = snapshot.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = _add(ssub, "create", "snapshot a volume", _snapshot_create,
             {"volume": "volume", "snapshot": "tag"})
    p.add_argument("volume")
    p.add_argument("snapshot", help="tag (not only digits: digits name a snapshot id)")
    p = _add(ssub, "delete", "delete a snapshot", _snapshot_delete, {"volume": "volume"})
    p.add_argument("volume")
    p.add_argument("snapshot", help="tag, or digits for a snapshot id")
    p.add_argument("--strict", action="store_true",
                   help="exit 4 when the snapshot does not exist")
    p = _add(ssub, "list", "list snapshots (of one volume, or all)", _snapshot_list,
             {"volume": "volume"})
    p.add_argument("volume", nargs="?")

    p = _add(subparsers, "connect", "print how a hypervisor attaches a volume", _connect,
             {"name": "volume"})
    p.add_argument("name")
    p.add_argument("--format", choices=("json", "libvirt", "qemu", "blockdev"),
                   default="json", help="connection info JSON (os-brick/Nova), libvirt "
                   "<disk> XML, QEMU URI, or QEMU -blockdev JSON")
    p.add_argument("--host", default="cli", help="connector host name (default 'cli')")
    p = _add(subparsers, "disconnect", "undo connect for a host (terminate_connection)",
             _disconnect, {"name": "volume"})
    p.add_argument("name")
    p.add_argument("--host", default="cli", help="connector host name (default 'cli')")

    stats = subparsers.add_parser(
        "stats", help="print capacity and capabilities of every enabled backend",
        description="Capacity and capabilities of every enabled backend (or only "
        "--backend NAME), in Cinder's keys.")
    add_global_options(stats, top=False)
    stats.set_defaults(func=_stats)


# -- helpers -------------------------------------------------------------------


def _volume(name: str, size: int = 1) -> Volume:
    from sheepdog_backend.driver.base import Volume

    return Volume(id=name, size=size, name=name)


def _snapshot(volume: str, tag: str) -> Snapshot:
    from sheepdog_backend.driver.base import Snapshot

    return Snapshot(id=tag, volume=_volume(volume), name=tag)


def _connector(host: str) -> Any:
    from sheepdog_backend.driver.base import Connector

    return Connector(host=host)


def _inspect(driver: VolumeDriver, method: str) -> Callable[..., Any]:
    fn = getattr(driver, method, None)
    if fn is None:
        raise NotImplementedError(f"driver {type(driver).__name__} cannot {method}")
    return fn  # type: ignore[no-any-return]


def _size_gib(info: dict[str, Any]) -> int:
    return max(1, -(-int(info["size_bytes"]) // GiB))


def _find_volume(driver: VolumeDriver, name: str) -> dict[str, Any] | None:
    try:
        return _inspect(driver, "describe_volume")(_volume(name))  # type: ignore[no-any-return]
    except VolumeNotFound:
        return None


def _resolve_tag(driver: VolumeDriver, volume: str, snap: str) -> str:
    """The tag of ``snap``: itself, or for digits the tag of that snapshot id."""
    if not (snap.isascii() and snap.isdigit()):
        return snap
    snaps = _inspect(driver, "list_snapshots")(_volume(volume))
    for row in snaps:
        if int(row.get("snap_id", -1)) == int(snap):
            if not row.get("tag"):
                raise InvalidInput(f"snapshot id {snap} of volume {volume!r} has no tag; "
                                   "only tagged snapshots can be used here")
            return str(row["tag"])
    if _find_volume(driver, volume) is None and not snaps:
        raise VolumeNotFound(f"volume {volume!r} does not exist")
    raise SnapshotNotFound(f"volume {volume!r} has no snapshot with id {snap}")


def _with_human(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out.setdefault("object_size", 1 << int(row["block_size_shift"])
                   if row.get("block_size_shift") else None)
    return out


def _done(message: str, **data: Any) -> Result:
    return Result(message=message, data={"message": message, **data})


# -- commands ------------------------------------------------------------------


def _volume_create(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    existing = _find_volume(driver, args.name) if hasattr(driver, "describe_volume") \
        else None
    if args.snapshot:
        vol_name, snap = split_snapshot(args.snapshot)
        if vol_name == args.name:
            raise InvalidInput(f"volume {args.name!r} cannot be created from its own "
                               "snapshot")
        tag = _resolve_tag(driver, vol_name, snap)
        snap_obj = _snapshot(vol_name, tag)
        size = args.size or _size_gib(_inspect(driver, "describe_snapshot")(snap_obj))
        driver.create_volume_from_snapshot(_volume(args.name, size), snap_obj)
        what = f"from snapshot {vol_name}@{tag}"
    else:
        if args.size is None:
            raise UsageError("--size GiB is required unless --snapshot is given")
        size = args.size
        if existing is not None and existing["size_bytes"] != size * GiB:
            raise VdiExists(f"volume {args.name!r} already exists with "
                            f"{human_size(existing['size_bytes'])}, not {size} GiB")
        driver.create_volume(_volume(args.name, size), backing=args.backing)
        what = f"backed by {args.backing}" if args.backing else "empty"
    if existing is not None:
        return _done(f"volume {args.name} already exists ({human_size(existing['size_bytes'])}"
                     f"); nothing was created", volume=args.name, created=False)
    return _done(f"created volume {args.name} ({size} GiB, {what})", volume=args.name,
                 created=True)


def _volume_delete(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    if hasattr(driver, "describe_volume") and _find_volume(driver, args.name) is None:
        if args.strict:
            raise NotFound(f"volume {args.name!r} does not exist")
        return _done(f"volume {args.name} is already absent; nothing was deleted",
                     volume=args.name, deleted=False)
    driver.delete_volume(_volume(args.name))
    return _done(f"deleted volume {args.name}", volume=args.name, deleted=True)


def _volume_extend(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    info = _inspect(driver, "describe_volume")(_volume(args.name))
    current = int(info["size_bytes"])
    if args.size * GiB < current:
        raise InvalidInput(f"volume {args.name!r} is {human_size(current)}; it can only "
                           f"grow, not shrink to {args.size} GiB")
    if args.size * GiB == current:
        return _done(f"volume {args.name} is already {args.size} GiB; nothing changed",
                     volume=args.name, size_gib=args.size)
    driver.extend_volume(_volume(args.name), args.size)
    return _done(f"volume {args.name} grew from {human_size(current)} to {args.size} GiB",
                 volume=args.name, size_gib=args.size)


def _volume_list(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    lister = getattr(driver, "list_volumes", None)
    if lister is not None:
        rows = [_with_human(r) for r in lister()]
    else:
        rows = [{"name": v["reference"]["source-name"], "size_bytes": v["size"] * GiB}
                for v in driver.get_manageable_volumes()]
    return Result(rows=rows, columns=VOLUME_COLUMNS, headers=HEADERS,
                  message="no volumes")


def _volume_show(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    info = _with_human(_inspect(driver, "describe_volume")(_volume(args.name)))
    from sheepdog_backend.driver import sizing

    info.update(sizing.describe(int(info.get("block_size_shift") or 0),
                                int(info.get("store_policy") or 0)))
    record = dict(info)
    snaps = record.pop("snapshots", [])
    record["snapshots"] = ", ".join(f"{args.name}@{s['tag'] or s['snap_id']} (id {s['snap_id']})"
                                    for s in snaps) or "none"
    columns = [*VOLUME_COLUMNS, "block_size_shift", "max_size", "index", "copy_policy",
               "snapshots"]
    return Result(record=record, data=info, columns=[c for c in columns if c in record],
                  headers=HEADERS)


def _volume_clone(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    if args.source == args.name:
        raise InvalidInput(f"volume {args.name!r} cannot be cloned onto itself: name a new "
                           "target volume")
    size = args.size or _size_gib(_inspect(driver, "describe_volume")(_volume(args.source)))
    existing = _find_volume(driver, args.name) if hasattr(driver, "describe_volume") \
        else None
    driver.create_cloned_volume(_volume(args.name, size), _volume(args.source))
    if existing is not None:
        return _done(f"volume {args.name} already is a clone of {args.source} "
                     f"({size} GiB); nothing was copied", volume=args.name, created=False)
    return _done(f"cloned volume {args.source} to {args.name} ({size} GiB)",
                 volume=args.name, created=True)


def _volume_revert(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    tag = _resolve_tag(driver, args.name, args.snapshot)
    driver.revert_to_snapshot(_volume(args.name), _snapshot(args.name, tag))
    return _done(f"reverted volume {args.name} to snapshot {tag}", volume=args.name,
                 snapshot=tag)


def _volume_manage(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    ref = {"source-name": args.name}
    before = _find_volume(driver, args.name) if hasattr(driver, "describe_volume") else None
    update = driver.manage_existing(_volume(args.name), ref)
    size = int(update.get("size", 0))
    message = f"managing VDI {update.get('name', args.name)} as a volume of {size} GiB"
    if before is not None and int(before["size_bytes"]) != size * GiB:
        message += f" (grown from {human_size(before['size_bytes'])} to whole GiB)"
    return _done(message, volume=args.name, model_update=update)


def _volume_unmanage(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    if hasattr(driver, "describe_volume") and _find_volume(driver, args.name) is None:
        raise VolumeNotFound(f"volume {args.name!r} does not exist")
    driver.unmanage(_volume(args.name))
    return _done(f"volume {args.name} is no longer managed; its VDI and data are kept",
                 volume=args.name)


def _manageable(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    rows = [{"name": v["reference"].get("source-name"), "size_bytes": v["size"] * GiB,
             "safe_to_manage": v["safe_to_manage"], "reason": v.get("reason_not_safe"),
             "cinder_id": v.get("cinder_id")} for v in driver.get_manageable_volumes()]
    return Result(rows=rows, data=driver.get_manageable_volumes(),
                  columns=("name", "size_bytes", "safe_to_manage", "reason", "cinder_id"),
                  headers={"size_bytes": "SIZE", "safe_to_manage": "SAFE"},
                  message="no VDIs")


def _snapshot_create(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    existed = False
    lister = getattr(driver, "list_snapshots", None)
    if lister is not None:
        if _find_volume(driver, args.volume) is None:
            raise VolumeNotFound(f"volume {args.volume!r} does not exist")
        existed = any(s.get("tag") == args.snapshot for s in lister(_volume(args.volume)))
    driver.create_snapshot(_snapshot(args.volume, args.snapshot))
    ref = f"{args.volume}@{args.snapshot}"
    if existed:
        return _done(f"snapshot {ref} already exists; nothing was created", snapshot=ref,
                     created=False)
    return _done(f"created snapshot {ref}", snapshot=ref, created=True)


def _snapshot_delete(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    snap = args.snapshot
    try:
        tag = _resolve_tag(driver, args.volume, snap)
        if not (snap.isascii() and snap.isdigit()):
            from sheepdog_backend.protocol.naming import check_snapshot_tag

            check_snapshot_tag(tag)
        present = True
        if hasattr(driver, "describe_snapshot"):
            try:
                driver.describe_snapshot(_snapshot(args.volume, tag))
            except (SnapshotNotFound, VolumeNotFound):
                present = False
    except (SnapshotNotFound, VolumeNotFound):
        tag, present = snap, False
    ref = f"{args.volume}@{snap}"
    if not present:
        if args.strict:
            raise NotFound(f"snapshot {ref} does not exist")
        return _done(f"snapshot {ref} is already absent; nothing was deleted",
                     snapshot=ref, deleted=False)
    driver.delete_snapshot(_snapshot(args.volume, tag))
    return _done(f"deleted snapshot {args.volume}@{tag}", snapshot=f"{args.volume}@{tag}",
                 deleted=True)


def _snapshot_list(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    lister = _inspect(driver, "list_snapshots")
    rows = lister(_volume(args.volume) if args.volume else None)
    if args.volume and not rows and _find_volume(driver, args.volume) is None:
        raise VolumeNotFound(f"volume {args.volume!r} does not exist")
    return Result(rows=[_with_human(r) for r in rows], columns=SNAPSHOT_COLUMNS,
                  headers=HEADERS, message="no snapshots")


def _connect(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    from sheepdog_backend.driver import connection

    info = driver.initialize_connection(_volume(args.name), _connector(args.host))
    if args.format == "json":
        return Result(data=info, text=json.dumps(info, indent=2))
    forms = connection.renderings(info)
    if args.format == "blockdev":
        return Result(data=forms["blockdev"], text=json.dumps(forms["blockdev"]))
    return Result(data={args.format: forms[args.format]}, text=str(forms[args.format]))


def _disconnect(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    if hasattr(driver, "describe_volume") and _find_volume(driver, args.name) is None:
        raise VolumeNotFound(f"volume {args.name!r} does not exist")
    driver.terminate_connection(_volume(args.name), _connector(args.host))
    return _done(f"disconnected volume {args.name} from host {args.host} (Sheepdog keeps "
                 "no per-host export state; a hypervisor still attached keeps its access)",
                 volume=args.name, host=args.host)


STATS_COLUMNS = ("volume_backend_name", "total_capacity_gb", "free_capacity_gb",
                 "provisioned_capacity_gb", "total_volumes", "cluster_id", "error")


def _cluster_id(driver: VolumeDriver) -> str | None:
    """The cluster's creation time in hex (for sheepdog_cluster_id), when known."""
    client = getattr(driver, "client", None)
    if client is None or not hasattr(client, "cluster_info"):
        return None
    ctime = int(client.cluster_info().ctime)
    return f"{ctime:#x}" if ctime else None


def _stats(args: argparse.Namespace) -> int:
    """Stats of every enabled backend (or one), one row each; exit code of the
    worst failure, after printing the backends that answered."""
    from sheepdog_backend.cli.common import config_file, emit
    from sheepdog_backend.driver.loader import enabled_backends

    setup_logging(args)
    try:
        names = [args.backend] if getattr(args, "backend", None) else \
            enabled_backends(config_file(args), config_dir=getattr(args, "config_dir", None))
    except SheepdogError as exc:
        return fail(exc, args)
    rows: list[dict[str, Any]] = []
    worst = 0
    for name in names:
        try:
            with backend(args, name) as driver:
                rows.append({"volume_backend_name": name,
                             **driver.get_volume_stats(refresh=True),
                             "cluster_id": _cluster_id(driver), "error": None})
        except (SheepdogError, NotImplementedError) as exc:
            code = exit_code_for(exc)
            if len(names) == 1:
                return fail(exc, args)
            worst = max(worst, code)
            rows.append({"volume_backend_name": name, "error": f"{type(exc).__name__}: "
                         f"{exc}", "exit_code": code})
    emit(Result(rows=rows, columns=STATS_COLUMNS,
                headers={"volume_backend_name": "BACKEND", "total_capacity_gb": "TOTAL GiB",
                         "free_capacity_gb": "FREE GiB",
                         "provisioned_capacity_gb": "PROVISIONED GiB",
                         "total_volumes": "VOLUMES", "cluster_id": "CLUSTER ID"}), args)
    return worst
