"""A local Sheepdog-protocol gateway for tgt (and any Sheepdog client).

``Gateway`` listens on a unix socket or a low TCP port on the export host and
forwards every request to the cluster with failover (``forward``), makes
snapshots safe for the writers behind it (``snapshots``) and counts I/O per
volume (``stats``).  Layers: cli -> gateway -> client -> protocol, and
gateway -> server's wire loop.
"""

from sheepdog_backend.gateway.forward import SAFE_OPS, Forwarder
from sheepdog_backend.gateway.gateway import MAX_TGT_PORT, Gateway, check_listen
from sheepdog_backend.gateway.snapshots import SnapshotGuard
from sheepdog_backend.gateway.stats import IoStats

__all__ = ["MAX_TGT_PORT", "SAFE_OPS", "Forwarder", "Gateway", "IoStats", "SnapshotGuard",
           "check_listen"]
