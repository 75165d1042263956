"""Every configuration option of sheepdog-backend, and ``list_opts()`` for
``oslo-config-generator`` (entry point ``oslo.config.opts``).

The ini file is Cinder-shaped: ``[DEFAULT] enabled_backends = a,b`` and one
section per backend holding ``volume_driver`` and that backend's options
(``BACKEND_OPTS``).  A ``[backend_defaults]`` section may give values that every
backend section inherits unless it sets its own.  Options keep Cinder's names
where Cinder's Sheepdog driver had them.
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg, types

from sheepdog_backend.addresses import format_gateway, parse_gateway
from sheepdog_backend.exception import InvalidInput

DEFAULT_GROUP = "DEFAULT"
BACKEND_DEFAULTS_GROUP = "backend_defaults"


class GatewayAddress(types.String):
    """``host:port``, ``[v6]:port`` or ``host`` (port 7000), normalised to
    ``host:port`` with IPv6 in brackets."""

    def __init__(self) -> None:
        super().__init__(type_name="gateway address (host:port)")

    def __call__(self, value: Any) -> str:
        text = super().__call__(value)
        try:
            return format_gateway(*parse_gateway(text))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GatewayAddress)

    def __hash__(self) -> int:
        return hash(GatewayAddress)


class ErasureCode(types.String):
    """``D:P``: D data strips (2, 4, 8 or 16) and P parity strips (1-15)."""

    def __init__(self) -> None:
        super().__init__(type_name="erasure code (D:P)")

    def __call__(self, value: Any) -> str:
        text = super().__call__(value).strip()
        try:
            parse_erasure_code(text)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ErasureCode)

    def __hash__(self) -> int:
        return hash(ErasureCode)


def parse_erasure_code(text: str) -> tuple[int, int]:
    """``"4:2"`` -> (4, 2); InvalidInput for anything Sheepdog cannot store."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidInput(f"erasure code {text!r} must look like D:P, e.g. 4:2")
    data, parity = int(parts[0]), int(parts[1])
    if data not in (2, 4, 8, 16):
        raise InvalidInput(f"erasure code {text!r}: data strips must be 2, 4, 8 or 16")
    if not 1 <= parity <= 15:
        raise InvalidInput(f"erasure code {text!r}: parity strips must be 1-15")
    return data, parity


def _object_size(shift: int) -> str:
    size = 1 << shift
    return f"{size >> 30} GiB objects" if size >= 1 << 30 else f"{size >> 20} MiB objects"


_SHIFT_CHOICES = [(0, "the cluster's default"),
                  *((shift, _object_size(shift)) for shift in range(20, 32))]

DEFAULT_OPTS = [
    cfg.ListOpt(
        "enabled_backends", default=[],
        help="Names of the backend sections to load, in order, e.g. 'fast,bulk'. Each name "
        "needs a section of that name holding volume_driver and the backend's options. "
        "Tools that take --backend use the first one when none is named."),
]

DRIVER_OPTS = [
    cfg.StrOpt(
        "volume_driver", default="sheepdog",
        help="Driver of this backend: a name registered in the "
        "'sheepdog_backend.volume_drivers' entry-point namespace (built in: 'sheepdog') or "
        "a dotted path 'package.module.ClassName' to a VolumeDriver subclass."),
    cfg.StrOpt(
        "volume_backend_name",
        help="Name the backend reports in its stats (volume_backend_name). Defaults to the "
        "section name."),
]

SHEEPDOG_OPTS = [
    cfg.HostAddressOpt(
        "sheepdog_store_address", default="127.0.0.1",
        help="IP address or host name of the Sheepdog gateway (a sheep daemon). Used only "
        "when sheepdog_gateways is empty (Cinder's option)."),
    cfg.PortOpt(
        "sheepdog_store_port", default=7000, min=1,
        help="Port of the gateway named by sheepdog_store_address. Used only when "
        "sheepdog_gateways is empty (Cinder's option)."),
    cfg.ListOpt(
        "sheepdog_gateways", item_type=GatewayAddress(), default=[],
        help="Gateways of one Sheepdog cluster as host:port ([v6]:port for IPv6), tried in "
        "order with failover. When set it replaces sheepdog_store_address/port. Every "
        "gateway must belong to the same cluster: a backing image is accepted only from "
        "these addresses (or nodes the cluster lists)."),
    cfg.IntOpt(
        "sheepdog_copies", default=0, min=0, max=31,
        help="Replicas of each new volume's objects. 0 uses the cluster's default (set by "
        "'dog cluster format --copies'). Cannot be combined with sheepdog_erasure_code. "
        "More copies than the cluster has zones makes writes fail."),
    cfg.Opt(
        "sheepdog_erasure_code", type=ErasureCode(), default=None,
        help="Store new volumes with erasure code D:P (D data strips: 2, 4, 8 or 16; P parity "
        "strips: 1-15) instead of replicas. Needs at least D+P zones. Unset uses "
        "replication (sheepdog_copies). Cannot be combined with sheepdog_copies > 0."),
    cfg.IntOpt(
        "sheepdog_block_size_shift", default=0, choices=_SHIFT_CHOICES,
        help="Object size of new volumes as a power of two: 22 means 4 MiB objects (the "
        "Sheepdog default), 20..31 allowed, for every new volume. 0 chooses per volume: "
        "the cluster's default, or the smallest larger size that holds the volume (and "
        "sheepdog_max_volume_size). Larger objects allow larger volumes (max size = 2^20 "
        "objects) but copy-on-write copies whole objects."),
    cfg.FloatOpt(
        "sheepdog_connect_timeout", default=5.0, min=0.1, max=300.0,
        help="Seconds to wait for a TCP connection to one gateway before trying the next."),
    cfg.FloatOpt(
        "sheepdog_request_timeout", default=30.0, min=0.1, max=3600.0,
        help="Seconds to wait for the reply to one request. A request that times out is "
        "retried only when repeating it is safe (reads, lookups, deletes, reconciled "
        "creates), within sheepdog_retry_deadline."),
    cfg.IntOpt(
        "sheepdog_retry_attempts", default=5, min=1, max=100,
        help="Attempts per operation (1 = no retry) when a gateway is down or the cluster "
        "is in a transient state (starting up, waiting for nodes, halted). Each retry "
        "moves to the next healthy gateway, with exponential backoff and jitter."),
    cfg.FloatOpt(
        "sheepdog_retry_deadline", default=60.0, min=0.1, max=3600.0,
        help="Total seconds one operation may spend retrying, whatever is left of "
        "sheepdog_retry_attempts; whichever runs out first ends the retries."),
    cfg.IntOpt(
        "sheepdog_io_window", default=16, min=1, max=256,
        help="Object requests kept in flight per connection during image import/export "
        "and volume copies. Higher helps on high-latency links; each in-flight request "
        "holds up to one object (block_size_shift) in memory."),
    cfg.IntOpt(
        "sheepdog_pool_size", default=4, min=1, max=64,
        help="Connections kept open per gateway."),
    cfg.StrOpt(
        "volume_name_template", default="volume-%s",
        help="VDI name of a volume that has no explicit name: '%%s' is the volume id. "
        "Must contain exactly one '%%s'. Changing it hides existing volumes from the "
        "driver (their VDIs keep the old names)."),
    cfg.StrOpt(
        "snapshot_name_template", default="snapshot-%s",
        help="Snapshot tag of a snapshot that has no explicit name: '%%s' is the snapshot "
        "id. Must contain exactly one '%%s'."),
    cfg.FloatOpt(
        "max_over_subscription_ratio", default=20.0, min=1.0, max=1000.0,
        help="Reported in stats: how far provisioned (thin) capacity may exceed the real "
        "capacity. Volumes are always thin in Sheepdog; the scheduler enforces the ratio."),
    cfg.IntOpt(
        "reserved_percentage", default=0, min=0, max=100,
        help="Reported in stats: percentage of capacity the scheduler keeps free."),
    cfg.StrOpt(
        "image_conversion_dir",
        help="Directory for temporary raw files when a qcow2 image is converted before "
        "import. Defaults to the system temporary directory. Needs room for the image's "
        "virtual size (the file is sparse)."),
    cfg.StrOpt(
        "qemu_img_path", default="qemu-img",
        help="qemu-img executable used only to convert qcow2 images that passed "
        "inspection to raw. When it is not found, only raw images are accepted."),
]

# -- cli engineer's block: per-volume object size (driver/sizing.py) ----------
SIZING_OPTS = [
    cfg.IntOpt(
        "sheepdog_max_volume_size", default=0, min=0, max=2 * 1024 * 1024,
        help="Largest size in GiB a volume of this backend may be created or extended to "
        "(0 = no ceiling). When sheepdog_block_size_shift is 0, each new volume gets the "
        "smallest object size that holds this ceiling (or its own size, if larger), so "
        "it can later be extended that far: 4 MiB objects hold 4 TiB, each doubling "
        "doubles that, 2 GiB objects hold 2 PiB. Larger objects make the first write "
        "after a snapshot copy more data. Without a ceiling a volume can grow only to "
        "what its object size holds; extending past that fails with the reason."),
    cfg.BoolOpt(
        "sheepdog_hyper_volumes", default=False,
        help="Create a volume too large for Sheepdog's flat index (2 PiB with 2 GiB "
        "objects, or what sheepdog_block_size_shift allows when set) as a hyper volume: "
        "B-tree index, 4 MiB objects, up to 16 PiB. Sheepdog 1.0 cannot snapshot hyper "
        "volumes, so they have no snapshots, clones or reverts, and QEMU's and tgt's "
        "Sheepdog drivers cannot read them, so they cannot be attached (all refused with "
        "the reason); this backend reads and writes them, extends them up to 16 PiB and "
        "deletes them. Off: such a volume is refused."),
    cfg.StrOpt(
        "sheepdog_cluster_id", default=None, regex=r"^(0x)?[0-9a-fA-F]{1,16}$",
        help="The Sheepdog cluster this backend belongs to: its creation time in hex, as "
        "'sheepdog-backend stats' prints it (cluster_id). A gateway of any other cluster "
        "is refused even when it is the only one that answers. Unset: every gateway "
        "that answers at set-up must report the same cluster, and the first one that "
        "answers defines it for failover."),
]

# -- export (iSCSI through tgt; sheepdog_backend/export) ---------------------

EXPORT_OPTS = [
    cfg.StrOpt(
        "sheepdog_attach_protocol", default="sheepdog", choices=[
            ("sheepdog", "QEMU's native Sheepdog driver (QEMU <= 5.2, libvirt < 8.8)"),
            ("iscsi", "an iSCSI target per attached volume on tgtd (any current host)")],
        help="How hypervisors reach volumes: connection info, libvirt XML and stats "
        "(storage_protocol) follow it."),
    cfg.StrOpt(
        "target_helper", default="tgtadm", choices=[("tgtadm", "Linux SCSI target (tgt)")],
        help="Target daemon that exports volumes over iSCSI (Cinder's option)."),
    cfg.StrOpt(
        "target_prefix", default="iqn.2010-10.org.openstack:",
        help="IQN prefix of per-volume targets; the VDI name follows it (Cinder's option)."),
    cfg.HostAddressOpt(
        "target_ip_address", default="127.0.0.1",
        help="Address initiators reach tgtd's iSCSI portal at (Cinder's option)."),
    cfg.PortOpt(
        "target_port", default=3260,
        help="Port of tgtd's iSCSI portal (Cinder's option)."),
    cfg.StrOpt(
        "sheepdog_tgtadm_path", default="tgtadm",
        help="tgtadm executable that drives tgtd."),
    cfg.PortOpt(
        "sheepdog_tgt_control_port", default=0,
        help="tgtd management port (tgtd -C N); 0 is tgtd's default channel."),
    cfg.StrOpt(
        "sheepdog_export_root_helper", default="",
        help="Command prefixed to tgtadm, e.g. 'sudo' (empty: run tgtadm directly)."),
    cfg.BoolOpt(
        "use_chap_auth", default=True,
        help="Protect each target with CHAP; the per-volume user and secret derive from "
        "sheepdog_export_chap_key (Cinder's option)."),
    cfg.StrOpt(
        "sheepdog_export_chap_key", secret=True,
        help="Secret key CHAP credentials are derived from (HMAC-SHA256 per target IQN), "
        "so they survive restarts without a database. Required when use_chap_auth is on "
        "and volumes are exported. Changing it changes every volume's secret."),
    # gateway (issue 15): tgt talks to a local Sheepdog gateway, not to a node
    cfg.StrOpt(
        "sheepdog_export_gateway", default="",
        help="HOST:PORT (port <= 9999) of a local 'sheepdog-backend gateway' that tgt's "
        "LUs go through instead of one cluster node: it fails over between nodes and "
        "makes snapshots safe for the writer. When sheepdog_gateways also names it, "
        "exported volumes may be snapshotted and cloned while attached. Empty: LUs use "
        "a cluster node directly."),
    cfg.StrOpt(
        "sheepdog_export_gateway_socket", default="",
        help="Absolute path of the unix socket of that same local gateway (its --unix; "
        "at most 107 bytes, no ':', ',', '=', whitespace or control characters, which "
        "tgt cannot carry). When set, tgt's LUs reach the gateway through it "
        "(unix:PATH:VDI), cheaper per request than TCP; sheepdog_export_gateway still "
        "names the gateway (HOST:PORT) for the driver's own requests, the probe and the "
        "export records, and must be set too. LUs made through TCP are re-pointed by "
        "the next ensure/sync (and back when it is unset). Empty: LUs use TCP."),
    # issue 26: exports on the compute host (sheepdog_backend/export/local.py, agent/)
    cfg.StrOpt(
        "sheepdog_export_mode", default="central", choices=[
            ("central", "the host that runs initialize_connection makes the target on its "
             "own tgtd, its LU through sheepdog_export_gateway"),
            ("local", "each compute host's 'sheepdog-backend agent' makes the targets of "
             "its own attachments on its own tgtd, through its own gateway")],
        help="Where iSCSI targets live (with sheepdog_attach_protocol = iscsi). In local "
        "mode initialize_connection records the attachment for the connector's host on "
        "the cluster and waits until that host's agent made the target; the connection "
        "info points at the portal the agent registered. No host is special: any "
        "cinder-volume can attach or detach any volume."),
    cfg.FloatOpt(
        "sheepdog_export_agent_timeout", default=30.0, min=0.5, max=3600.0,
        help="Local export mode: seconds initialize_connection waits for the compute "
        "host's agent to make the target (and a detach of a snapshot's temporary clone "
        "for the agents to drop it) before failing with ExportAgentTimeout, naming the "
        "host; the attachment it recorded is then taken back."),
]

# -- volume leases (client/lease.py): one process at a time per volume ---------

LEASE_OPTS = [
    cfg.FloatOpt(
        "sheepdog_lease_duration", default=30.0, min=0.5, max=3600.0,
        help="Seconds a volume lease lasts unless renewed. Every operation that changes a "
        "volume (create, delete, snapshot, clone, extend, revert, manage, image import) "
        "holds the volume's lease on the cluster, so drivers in any number of processes "
        "and hosts act on one volume one at a time. A holder stops before its next step "
        "once its lease has run out (five sixths of this after it was last renewed, on "
        "its own clock: a paused process does not act after waking); another process "
        "takes a dead holder's lease over after seeing it unchanged for seven sixths of "
        "this, and finishes or undoes what the holder left half-done. Longer: a crashed "
        "holder blocks its volumes longer; shorter: a pause of this long (a suspended VM, "
        "SIGSTOP) costs the operation (LeaseLost)."),
    cfg.FloatOpt(
        "sheepdog_lease_renew_interval", default=10.0, min=0.05, max=1800.0,
        help="Seconds between renewals of a held lease (a background thread rewrites its "
        "record, one object write, for as long as the operation runs, e.g. an image "
        "import). At most half of sheepdog_lease_duration."),
    cfg.FloatOpt(
        "sheepdog_lease_reuse", default=1.0, min=0.0, max=1800.0,
        help="Seconds a lease stays held after it was taken, so that further operations "
        "of this driver on the volume in that time use it again instead of taking it "
        "again (taking and releasing are two cluster operations, several ms each on a "
        "real node). Another process waits at most this long plus the operation "
        "running. 0 releases the lease at the end of every operation. At most half of "
        "sheepdog_lease_duration."),
    cfg.FloatOpt(
        "sheepdog_lease_wait", default=120.0, min=1.0, max=86400.0,
        help="Seconds an operation waits for a volume whose lease another process holds "
        "before it fails (LeaseTimeout, a VolumeIsBusy naming the holder). At least "
        "twice sheepdog_lease_duration, so that a dead holder's lease is taken over."),
]

BACKEND_OPTS = DRIVER_OPTS + SHEEPDOG_OPTS + SIZING_OPTS + EXPORT_OPTS + LEASE_OPTS


def validate_template(name: str, template: str) -> None:
    """InvalidInput unless ``template % 'x'`` works with exactly one ``%s``."""
    if template.replace("%%", "").count("%s") != 1 or template.replace(
            "%%", "").replace("%s", "").count("%"):
        raise InvalidInput(f"{name} {template!r} must contain exactly one %s and no "
                           "other % directive")


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options per sample-file section. Backend sections are named by the user; the
    sample shows their options under [backend_defaults], which every backend
    section inherits from."""
    return [
        (DEFAULT_GROUP, list(DEFAULT_OPTS)),
        (BACKEND_DEFAULTS_GROUP, list(BACKEND_OPTS)),
    ]


def default_values() -> dict[str, Any]:
    """Every backend option at its default value."""
    return {opt.dest: opt.default for opt in BACKEND_OPTS}
