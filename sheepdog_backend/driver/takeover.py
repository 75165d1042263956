"""Finishing or undoing what a dead lease holder left half-done.

How it works: every operation that changes a volume holds its lease, and
the lease record names the operation and, where dying half-way would leave
something behind, what that is (``details`` of ``core.hold``).  A driver
that takes over the expired lease of a dead or stopped holder
(client/lease.py) calls ``recover`` with the record before its own operation
starts:

* ``create_snapshot`` (detail: the tag): it tags the working inode before
  NEW_VDI; dying in between leaves the tag on the working VDI, where a repeat
  of the call would find it taken - the tag is cleared (undone);
* ``create_cloned_volume`` (detail on the source: the temporary snapshot's
  tag): dying between the temporary snapshot and its deletion leaves it on the
  source - it is deleted (a clone already made stays: a repeat of the call
  accepts it);
* a revert keeps its own record, which every operation finishes first
  (driver/revert.py); the other operations are single requests or repeat
  cleanly.

Stateless.
"""

from __future__ import annotations

import logging
from typing import Any

from sheepdog_backend.driver import clones
from sheepdog_backend.driver.core import DriverCore

LOG = logging.getLogger(__name__)


def recover(core: DriverCore, name: str, fields: dict[str, Any]) -> None:
    """Undo what the dead holder of ``name``'s lease (its record ``fields``)
    left behind, holding the lease now."""
    op, detail = fields.get("op"), fields.get("detail")
    if not isinstance(detail, str) or not detail:
        return
    if op == "create_snapshot" and core.client.remove_stray_tag(name, detail):
        LOG.warning("volume %s: cleared the tag %r a snapshot left on it when its process "
                    "died", name, detail)
    elif op == "create_cloned_volume" and clones.is_temp_tag_of(name, detail) \
            and clones.drop_temp(core, name, detail):
        LOG.warning("volume %s: deleted the temporary snapshot %s a clone left when its "
                    "process died", name, detail)
