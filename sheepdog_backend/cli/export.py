"""``sheepdog-backend export create|delete|list|check|sync`` and
``connect --protocol``: iSCSI exports through tgt from the shell.

The backend is loaded like every command (``--config-file``, ``--backend``);
exports use its target options (target_prefix, target_ip_address/port,
sheepdog_tgtadm_path, sheepdog_tgt_control_port, use_chap_auth,
sheepdog_export_chap_key) whatever its ``sheepdog_attach_protocol``.  ``sync``
is what to run after tgtd restarted (tgtd keeps targets in memory only): it
re-creates every recorded export, moves those whose gateway is dead, and
removes targets under the prefix that no volume records.  Exit codes are ``volume``'s.

Attachments follow the driver's rule (driver/attach.py): every ``export
create`` (and ``connect --protocol iscsi``) is one attachment of its
``--initiator`` (or of any initiator, with CHAP, when none is named) on the
volume's one target; every ``export delete`` ends one, and the target goes with
the last; ``export delete --all`` removes the export whatever it still counts.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sheepdog_backend.cli.common import add_command, run
from sheepdog_backend.cli.output import Result
from sheepdog_backend.driver.base import Connector, Snapshot, Volume, VolumeDriver
from sheepdog_backend.exception import ConfigError

EXPORT_COLUMNS = ("vdi", "iqn", "gateway", "initiators", "problems")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = subparsers.add_parser("export", help="export volumes over iSCSI through tgt")
    esub = export.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(action: str, help_: str, func: Any,
            names: dict[str, str] | None = None) -> argparse.ArgumentParser:
        return add_command(esub, action, help_, func, names=names)

    p = add("create", "export a volume (or a snapshot, read-only) and print its "
            "connection info", _create, {"name": "volume", "snapshot": "tag"})
    p.add_argument("name", help="VDI name")
    p.add_argument("--snapshot", metavar="TAG", help="export this snapshot read-only "
                   "(through a temporary clone)")
    p.add_argument("--initiator", metavar="IQN", help="allow only this initiator "
                   "(repeat the command to add more); default: any initiator with CHAP")
    p = add("delete", "end one attachment of a volume's export (the target goes with "
            "the last), or the whole export with --all", _delete,
            {"name": "volume", "snapshot": "tag"})
    p.add_argument("name")
    p.add_argument("--snapshot", metavar="TAG")
    p.add_argument("--initiator", metavar="IQN", help="the attachment's initiator "
                   "(default: one made without --initiator, or the only one)")
    p.add_argument("--all", action="store_true", help="remove the export whatever "
                   "attachments it still has (hosts still logged in lose the disk)")
    add("list", "list recorded exports and whether tgtd serves them", _list)
    p = add("check", "check one export: target present, gateway alive", _check,
            {"name": "volume"})
    p.add_argument("name")
    add("sync", "re-create every recorded export on tgtd (after a restart), move "
        "those on dead gateways, drop unrecorded targets", _sync)

    connect = subparsers.choices.get("connect")
    if isinstance(connect, argparse.ArgumentParser):
        connect.add_argument("--protocol", choices=("sheepdog", "iscsi"), default=None,
                             help="attach protocol (default: the backend's "
                             "sheepdog_attach_protocol); iscsi exports the volume")
        connect.add_argument("--initiator", metavar="IQN", default=None,
                             help="connector initiator name (iscsi ACL)")
        connect.set_defaults(func=lambda args: run(args, _connect, {"name": "volume"}))


def _attach(driver: VolumeDriver) -> Any:
    from sheepdog_backend.driver import attach
    from sheepdog_backend.driver.sheepdog import SheepdogDriver

    if not isinstance(driver, SheepdogDriver):
        raise ConfigError(f"backend {driver.backend_name}: exports need the sheepdog "
                          f"driver, not {type(driver).__name__}")
    return attach, driver


def _volume(name: str) -> Volume:
    return Volume(id=name, size=1, name=name)


def _create(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    attach, drv = _attach(driver)
    connector = Connector(host="cli", initiator=args.initiator)
    if args.snapshot:
        snap = Snapshot(id=args.snapshot, volume=_volume(args.name), name=args.snapshot)
        info = attach.initialize_connection_snapshot(drv.core, snap, connector)
    else:
        info = attach.initialize_connection(drv.core, _volume(args.name), connector)
    return Result(data=info, text=json.dumps(info, indent=2))


def _delete(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    attach, drv = _attach(driver)
    mgr = attach.manager(drv.core)
    what = f"{args.name}@{args.snapshot}" if args.snapshot else args.name
    if args.all:
        gone = (mgr.unexport_snapshot(args.name, args.snapshot) if args.snapshot
                else mgr.unexport(args.name))
        message = f"export of {what} removed" if gone else f"{what} was not exported"
        return Result(message=message, data={"message": message, "removed": gone})
    if args.snapshot:
        done = mgr.detach_snapshot(args.name, args.snapshot, initiator=args.initiator)
    else:
        done = mgr.detach(args.name, initiator=args.initiator)
    who = args.initiator or "a host that named no initiator"
    if not done.exported:
        message = f"{what} was not exported"
    elif done.target_removed:
        message = f"export of {what} removed (its last attachment ended)"
    elif done.ended is not None:
        message = (f"one attachment of {what} ended; {done.remaining} remain, the "
                   "target stays")
    else:
        message = (f"nothing changed: {what} has no attachment of {who} "
                   f"({done.remaining} remain); name one with --initiator, or remove "
                   "the whole export with --all")
    return Result(message=message, data={
        "message": message, "removed": done.target_removed, "exported": done.exported,
        "ended": done.ended, "remaining": done.remaining})


def _list(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    attach, drv = _attach(driver)
    mgr = attach.manager(drv.core)
    rows = [mgr.check(rec.vdi) for rec in mgr.records()]
    return Result(rows=rows, data=rows, columns=_columns(rows), message="no exports")


def _check(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    attach, drv = _attach(driver)
    found = attach.manager(drv.core).check(args.name)
    return Result(record=found, data=found)


def _sync(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    attach, drv = _attach(driver)
    done = attach.manager(drv.core).sync()
    return Result(data=done, text=json.dumps(done, indent=2))


def _connect(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    from sheepdog_backend.driver import connection
    from sheepdog_backend.driver.connection import connection_info

    connector = Connector(host=args.host, initiator=args.initiator)
    volume = _volume(args.name)
    if args.protocol == "iscsi":
        attach, drv = _attach(driver)
        info = attach.initialize_connection(drv.core, volume, connector)
    elif args.protocol == "sheepdog":
        attach, drv = _attach(driver)
        drv.describe_volume(volume)  # VolumeNotFound when absent
        info = connection_info(args.name, list(drv.client.gateways_by_health()))
    else:
        info = driver.initialize_connection(volume, connector)
    if args.format == "json":
        return Result(data=info, text=json.dumps(info, indent=2))
    form = connection.renderings(info)[args.format]
    return Result(data=form if args.format == "blockdev" else {args.format: form},
                  text=form if isinstance(form, str) else json.dumps(form))


def _columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    keys = [k for k in EXPORT_COLUMNS if any(k in row for row in rows)]
    return tuple(keys) or tuple(rows[0]) if rows else EXPORT_COLUMNS
