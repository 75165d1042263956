"""Sheepdog 1.0 wire constants: opcodes, flags, result codes, sizes.

Values come from sheepdog-protocol.md (§3-§7, §15) and were checked against
frames captured from a real Sheepdog 1.0 node.
"""

from __future__ import annotations

import enum

SD_PROTO_VER = 0x02
SD_SHEEP_PROTO_VER = 0x0A
SD_LISTEN_PORT = 7000
HEADER_SIZE = 48

SD_MAX_VDI_LEN = 256
SD_MAX_VDI_TAG_LEN = 256
SD_MAX_VDI_ATTR_KEY_LEN = 256
SD_MAX_VDI_ATTR_VALUE_LEN = 65536
SD_NR_VDIS = 1 << 24
VID_BITMAP_SIZE = SD_NR_VDIS // 8  # 2,097,152 bytes
SD_MAX_COPIES = 31
SD_DEFAULT_COPIES = 3
SD_DEFAULT_BLOCK_SIZE_SHIFT = 22
SD_MIN_BLOCK_SIZE_SHIFT = 20
SD_MAX_BLOCK_SIZE_SHIFT = 31
SD_INODE_DATA_INDEX = 1 << 20
SD_INODE_HEADER_SIZE = 4664
SD_INODE_INDEX_OFFSET = SD_INODE_HEADER_SIZE
SD_INODE_GREF_OFFSET = SD_INODE_HEADER_SIZE + 4 * SD_INODE_DATA_INDEX  # 4,198,968
SD_INODE_SIZE = SD_INODE_GREF_OFFSET + 8 * SD_INODE_DATA_INDEX  # 12,587,576
SD_INODE_LOOKUP_SIZE = 568  # what sheep reads for lookups (up to btree_counter)
SD_INODE_LIST_READ_SIZE = 4672  # dog's parse_vdi read: header + B-tree header
SD_ATTR_OBJ_SIZE = 66320
SD_BTREE_NODE_SIZE = 1 << 22
SD_LEDGER_OBJ_SIZE = 1 << 22
SD_MAX_VDI_SIZE = 1 << 54  # hyper volume
SD_MAX_NODES = 6144
SD_NODE_SIZE = 80
SD_NODE_ID_SIZE = 40
NODE_LIST_BUFFER = SD_MAX_NODES * SD_NODE_SIZE  # 491,520: what dog offers
CLUSTER_INFO_SIZE = 48 + SD_MAX_NODES * SD_NODE_SIZE  # 491,568
EPOCH_LOG_HEADER_SIZE = 48
VDI_STATE_SIZE = 1428
SD_MAX_PARTICIPANTS = 31
STORE_NAME_LEN = 16
INDEX_HEADER_MAGIC = 0x6274


def flat_max_vdi_size(block_size_shift: int) -> int:
    """Largest VDI a flat (non-hyper) inode can describe with this object size."""
    return SD_INODE_DATA_INDEX << block_size_shift


class Opcode(enum.IntEnum):
    """Request opcodes (§5). Values >= 0x80 need proto_ver 0x0a."""

    CREATE_AND_WRITE_OBJ = 0x01
    READ_OBJ = 0x02
    WRITE_OBJ = 0x03
    REMOVE_OBJ = 0x04
    DISCARD_OBJ = 0x05
    NEW_VDI = 0x11
    LOCK_VDI = 0x12
    RELEASE_VDI = 0x13
    GET_VDI_INFO = 0x14
    READ_VDIS = 0x15
    FLUSH_VDI = 0x16
    DEL_VDI = 0x17
    GET_CLUSTER_DEFAULT = 0x18
    GET_NODE_LIST = 0x82
    MAKE_FS = 0x84
    SHUTDOWN = 0x85
    STAT_SHEEP = 0x86
    STAT_CLUSTER = 0x87
    GET_VDI_ATTR = 0x89
    FORCE_RECOVER = 0x8A
    GET_STORE_LIST = 0x90
    SNAPSHOT = 0x91
    RESTORE = 0x92
    GET_SNAP_FILE = 0x93
    CLEANUP = 0x94
    STAT_RECOVERY = 0x97
    FLUSH_DEL_CACHE = 0x98
    NOTIFY_VDI_DEL = 0x99
    KILL_NODE = 0x9A
    CREATE_AND_WRITE_PEER = 0xA3
    READ_PEER = 0xA4
    WRITE_PEER = 0xA5
    REMOVE_PEER = 0xA6
    ENABLE_RECOVER = 0xA8
    DISABLE_RECOVER = 0xA9
    GET_VDI_COPIES = 0xAB
    NOTIFY_VDI_ADD = 0xAF
    DELETE_CACHE = 0xB0
    MD_INFO = 0xB1
    MD_PLUG = 0xB2
    MD_UNPLUG = 0xB3
    GET_HASH = 0xB4
    REWEIGHT = 0xB5
    STAT = 0xB8
    GET_LOGLEVEL = 0xB9
    SET_LOGLEVEL = 0xBA
    EXIST = 0xBD
    CLUSTER_INFO = 0xBE
    ALTER_CLUSTER_COPY = 0xBF
    ALTER_VDI_COPY = 0xC0
    DECREF_OBJ = 0xC1
    DECREF_PEER = 0xC2
    REPAIR_REPLICA = 0xC5
    OIDS_EXIST = 0xC6
    VDI_STATE_CHECKPOINT_CTL = 0xC7
    INODE_COHERENCE = 0xC8
    READ_DEL_VDIS = 0xC9
    GET_RECOVERY = 0xCA
    SET_RECOVERY = 0xCB
    SET_VNODES = 0xCC
    GET_VNODES = 0xCD

    @property
    def is_internal(self) -> bool:
        return self >= 0x80


def proto_ver_for(opcode: int) -> int:
    """The proto_ver dog sends for an opcode (§2.5)."""
    return SD_SHEEP_PROTO_VER if opcode >= 0x80 else SD_PROTO_VER


class Flag(enum.IntFlag):
    """Request flags (u16 at offset 2, §3.5)."""

    NONE = 0
    WRITE = 0x0001
    COW = 0x0002
    CACHE = 0x0004
    DIRECT = 0x0008
    PIGGYBACK = 0x0010
    TGT = 0x0020
    FWD = 0x0040
    RECOVERY = 0x0080
    CREAT = 0x0100  # same bit as WILDCARD
    EXCL = 0x0200
    DEL = 0x0400


class ClusterFlag(enum.IntFlag):
    """Cluster flags (MAKE_FS, cluster_info, epoch_log; §3.6)."""

    NONE = 0
    STRICT = 0x0001
    DISKMODE = 0x0002
    AUTO_VNODES = 0x0004
    USE_LOCK = 0x0008
    RECYCLE_VID = 0x0010
    AVOID_DISKFULL = 0x0020


class ClusterStatus(enum.IntEnum):
    """cluster_info.status values (§11.5)."""

    OK = 1
    WAIT = 2
    SHUTDOWN = 3
    KILLED = 4


class LockState(enum.IntEnum):
    UNLOCKED = 1
    LOCKED = 2
    SHARED = 3


class LockType(enum.IntEnum):
    NORMAL = 0
    SHARED = 1


class Result(enum.IntEnum):
    """Result codes (u32 at response offset 16, §4)."""

    SUCCESS = 0x00
    UNKNOWN = 0x01
    NO_OBJ = 0x02
    EIO = 0x03
    VDI_EXIST = 0x04
    INVALID_PARMS = 0x05
    SYSTEM_ERROR = 0x06
    VDI_LOCKED = 0x07
    NO_VDI = 0x08
    NO_BASE_VDI = 0x09
    VDI_READ = 0x0A
    VDI_WRITE = 0x0B
    BASE_VDI_READ = 0x0C
    BASE_VDI_WRITE = 0x0D
    NO_TAG = 0x0E
    STARTUP = 0x0F
    VDI_NOT_LOCKED = 0x10
    SHUTDOWN = 0x11
    NO_MEM = 0x12
    FULL_VDI = 0x13
    VER_MISMATCH = 0x14
    NO_SPACE = 0x15
    WAIT_FOR_FORMAT = 0x16
    WAIT_FOR_JOIN = 0x17
    JOIN_FAILED = 0x18
    HALT = 0x19
    READONLY = 0x1A
    INODE_INVALIDATED = 0x1D
    OLD_NODE_VER = 0x81
    NEW_NODE_VER = 0x82
    NOT_FORMATTED = 0x83
    INVALID_CTIME = 0x84
    INVALID_EPOCH = 0x85
    NETWORK_ERROR = 0x86
    NO_CACHE = 0x87
    BUFFER_SMALL = 0x88
    FORCE_RECOVER = 0x89
    NO_STORE = 0x8A
    NO_SUPPORT = 0x8B
    NODE_IN_RECOVERY = 0x8C
    KILLED = 0x8D
    OID_EXIST = 0x8E
    AGAIN = 0x8F
    STALE_OBJ = 0x90
    CLUSTER_ERROR = 0x91
    VDI_NOT_EMPTY = 0x92
    NOT_FOUND = 0x93
    INCOMPLETE = 0x94
    COLLECTING_CINFO = 0x95
    GATEWAY_MODE = 0x97
    INVALID_VNODES_STRATEGY = 0x98
    NO_CHECKPOINT_ENTRY = 0x99


# The messages dog prints for each result (sd_strerror), used to check the
# golden transcripts' stderr and to give our own errors the familiar wording.
RESULT_MESSAGES: dict[int, str] = {
    Result.SUCCESS: "Success",
    Result.UNKNOWN: "Unknown error",
    Result.NO_OBJ: "No object found",
    Result.EIO: "I/O error",
    Result.VDI_EXIST: "VDI exists already",
    Result.INVALID_PARMS: "Invalid parameters",
    Result.SYSTEM_ERROR: "System error",
    Result.VDI_LOCKED: "VDI is already locked",
    Result.NO_VDI: "No VDI found",
    Result.NO_BASE_VDI: "No base VDI found",
    Result.VDI_READ: "Failed to read from requested VDI",
    Result.VDI_WRITE: "Failed to write to requested VDI",
    Result.BASE_VDI_READ: "Failed to read from base VDI",
    Result.BASE_VDI_WRITE: "Failed to write to base VDI",
    Result.NO_TAG: "Failed to find requested tag",
    Result.STARTUP: "System is still booting",
    Result.VDI_NOT_LOCKED: "VDI isn't locked",
    Result.SHUTDOWN: "System is shutting down",
    Result.NO_MEM: "Out of memory on server",
    Result.FULL_VDI: "Maximum number of VDIs reached",
    Result.VER_MISMATCH: "Protocol version mismatch",
    Result.NO_SPACE: "Server has no space for new objects",
    Result.WAIT_FOR_FORMAT: "Waiting for cluster to be formatted",
    Result.WAIT_FOR_JOIN: "Waiting for other nodes to join cluster",
    Result.JOIN_FAILED: "Node has failed to join cluster",
    Result.HALT: "IO has halted as there are not enough living nodes",
    Result.READONLY: "Object is read-only",
    Result.INODE_INVALIDATED: "Inode object is invalidated",
    Result.OLD_NODE_VER: "Request has an old epoch",
    Result.NEW_NODE_VER: "Request has a new epoch",
    Result.NOT_FORMATTED: "Cluster has not been formatted",
    Result.INVALID_CTIME: "Creation times differ",
    Result.INVALID_EPOCH: "Invalid epoch",
    Result.NETWORK_ERROR: "Network error between sheep",
    Result.NO_CACHE: "No cache object found",
    Result.BUFFER_SMALL: "The buffer is too small",
    Result.FORCE_RECOVER: "Cluster is running/halted and cannot be force recovered",
    Result.NO_STORE: "Targeted backend store is not found",
    Result.NO_SUPPORT: "Operation is not supported by backend store",
    Result.NODE_IN_RECOVERY: "Targeted node is in recovery",
    Result.KILLED: "Node is killed",
    Result.OID_EXIST: "Object ID exists already",
    Result.AGAIN: "Ask to try again",
    Result.STALE_OBJ: "Object may be stale",
    Result.CLUSTER_ERROR: "Cluster driver error",
    Result.VDI_NOT_EMPTY: "VDI is not empty",
    Result.NOT_FOUND: "Cannot find requested item",
    Result.INCOMPLETE: "Object is not complete",
    Result.COLLECTING_CINFO: "Collecting cluster information, try again",
    Result.GATEWAY_MODE: "Targeted node is gateway only",
    Result.INVALID_VNODES_STRATEGY: "Invalid vnodes strategy",
    Result.NO_CHECKPOINT_ENTRY: "No checkpoint entry",
}


def result_message(code: int) -> str:
    return RESULT_MESSAGES.get(code, f"Invalid error code {code:#x}")
