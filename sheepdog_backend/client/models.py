"""Client-side value types."""

from __future__ import annotations

from dataclasses import dataclass, field

from sheepdog_backend.protocol.inode import InodeHeader


def decode_text(raw: bytes) -> str:
    """Names and tags are UTF-8 on the wire; undecodable bytes survive a round
    trip through ``encode_text`` (surrogateescape)."""
    return raw.decode("utf-8", errors="surrogateescape")


def encode_text(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    return text.encode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class VdiInfo:
    """One inode as the client sees it (working VDI or snapshot)."""

    name: str
    tag: str
    vid: int
    size: int
    snap_id: int
    parent_vid: int
    is_snapshot: bool
    nr_copies: int
    copy_policy: int
    block_size_shift: int
    create_time: int
    snap_ctime: int
    store_policy: int = 0
    used: int | None = None    # bytes in objects this inode owns (list with usage)
    shared: int | None = None  # bytes in objects inherited from an ancestor
    # the inode header this was read from: a client call given this VdiInfo
    # back (``known=``) starts from it instead of looking the VDI up again
    header: InodeHeader | None = field(default=None, compare=False, repr=False)

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift

    @property
    def is_clone(self) -> bool:
        return self.snap_id == 1 and self.parent_vid != 0 and not self.is_snapshot

    @classmethod
    def from_header(cls, hdr: InodeHeader, *, used: int | None = None,
                    shared: int | None = None) -> VdiInfo:
        return cls(name=decode_text(hdr.name), tag=decode_text(hdr.tag), vid=hdr.vdi_id,
                   size=hdr.vdi_size, snap_id=hdr.snap_id, parent_vid=hdr.parent_vdi_id,
                   is_snapshot=hdr.is_snapshot, nr_copies=hdr.nr_copies,
                   copy_policy=hdr.copy_policy, block_size_shift=hdr.block_size_shift,
                   create_time=hdr.create_time, snap_ctime=hdr.snap_ctime,
                   store_policy=hdr.store_policy, used=used, shared=shared,
                   header=hdr)
