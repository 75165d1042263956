"""VDI names, tags and the name-to-vid hash (sheepdog-protocol.md §8.1, §9.7).

Names and tags travel as NUL-padded 256-byte fields.  A name may hold any byte
except NUL and at most 255 bytes (so a terminator always fits).  Sheep would
accept a 256-byte tag without NUL (it compares the whole field), but dog and
QEMU print tags as C strings, so we hold tags to 255 bytes as well.

Two levels of rules:

* ``validate_name`` / ``validate_tag``: what the wire can carry (any byte but
  NUL, at most 255 bytes).  The client uses them, so it can still address a VDI
  that ``dog`` created with an odd name.
* ``check_volume_name`` / ``check_snapshot_tag``: the alphabet of names the
  driver and the CLI accept from a user, chosen so that every name can be
  written in each form that addresses it: our CLI's ``VOLUME@TAG``, QEMU's
  ``sheepdog://host:port/VOLUME#TAG`` and a shell argument.  A name is valid
  UTF-8 text, 1-255 bytes, without control characters (C0, DEL, C1, U+2028/
  U+2029, so no newline can forge a line of output).  A volume name also
  holds no ``@`` (it separates volume and tag on the CLI) and no ``#`` (it
  starts the tag in a URI).  A tag may hold ``@`` and ``#`` (everything after
  the first separator is the tag) but is not made of digits only: in both
  ``VOLUME@N`` and ``sheepdog:///VOLUME#N`` digits name the snapshot *id*, as
  QEMU reads them.  Cinder's ``volume-<uuid>`` / ``snapshot-<uuid>`` fit.
"""

from __future__ import annotations

from sheepdog_backend.exception import InvalidInput, InvalidPayload
from sheepdog_backend.protocol.constants import SD_MAX_VDI_LEN, SD_MAX_VDI_TAG_LEN, SD_NR_VDIS

FNV1A_64_INIT = 0xCBF29CE484222325
FNV_64_PRIME = 0x100000001B3
_U64 = (1 << 64) - 1
NAME_FIELD = SD_MAX_VDI_LEN
TAG_FIELD = SD_MAX_VDI_TAG_LEN


def fnv1a_64(data: bytes, h: int = FNV1A_64_INIT) -> int:
    for byte in data:
        h ^= byte
        h = (h * FNV_64_PRIME) & _U64
    return h


def sd_hash_vdi(name: bytes) -> int:
    """Starting vid of a name's probe chain: FNV-1a-64 low 24 bits, 0 -> 1."""
    name = name.split(b"\0", 1)[0]
    vid = fnv1a_64(name) & (SD_NR_VDIS - 1)
    return vid or 1


def to_bytes(value: str | bytes) -> bytes:
    """UTF-8 bytes of a name; InvalidInput for text that is not valid UTF-8
    (e.g. argv bytes that Python kept as surrogate escapes)."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{_shown(value)} is not valid UTF-8 text") from None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"a name must be text, got {type(value).__name__}")
    return bytes(value)


def _shown(value: str) -> str:
    """A name as it can be printed safely (escapes, no raw control bytes)."""
    return ascii(value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")) \
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value) else ascii(value)


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029)


def _check_text(value: str | bytes, what: str) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw_value = bytes(value)
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"a {what} must be valid UTF-8, got {raw_value!r}") from None
    if not isinstance(value, str):
        raise InvalidInput(f"a {what} must be text, got {type(value).__name__}")
    raw = to_bytes(value)
    if not raw:
        raise InvalidInput(f"a {what} must not be empty")
    if len(raw) > SD_MAX_VDI_LEN - 1:
        raise InvalidInput(f"a {what} is at most {SD_MAX_VDI_LEN - 1} bytes, got {len(raw)}")
    bad = next((c for c in value if _is_control(c)), None)
    if bad is not None:
        raise InvalidInput(f"a {what} must not contain control characters: {value!a} "
                           f"holds {bad!a}")
    return value


def check_volume_name(name: str | bytes) -> str:
    """A volume (VDI) name a user may give; InvalidInput with the reason otherwise."""
    text = _check_text(name, "volume name")
    for char, why in (("@", "it separates volume and snapshot in VOLUME@SNAPSHOT"),
                      ("#", "it starts the snapshot in sheepdog://host:port/VOLUME#TAG")):
        if char in text:
            raise InvalidInput(f"volume name {text!r} must not contain {char!r}: {why}")
    return text


def check_snapshot_tag(tag: str | bytes) -> str:
    """A snapshot tag a user may give; InvalidInput with the reason otherwise."""
    text = _check_text(tag, "snapshot tag")
    if text.isascii() and text.isdigit():
        raise InvalidInput(f"snapshot tag {text!r} is only digits: VOLUME@{text} and "
                           f"sheepdog:///VOLUME#{text} mean snapshot id {text}; add a "
                           "letter")
    return text


def validate_name(name: str | bytes) -> bytes:
    """A VDI name as bytes; InvalidInput when empty, too long or holding NUL."""
    raw = to_bytes(name)
    if not raw:
        raise InvalidInput("a VDI name must not be empty")
    if b"\0" in raw:
        raise InvalidInput("a VDI name must not contain NUL bytes")
    if len(raw) > SD_MAX_VDI_LEN - 1:
        raise InvalidInput(
            f"a VDI name is at most {SD_MAX_VDI_LEN - 1} bytes, got {len(raw)}")
    return raw


def validate_tag(tag: str | bytes) -> bytes:
    """A snapshot tag as bytes (may be empty: no tag)."""
    raw = to_bytes(tag)
    if b"\0" in raw:
        raise InvalidInput("a snapshot tag must not contain NUL bytes")
    if len(raw) > SD_MAX_VDI_TAG_LEN - 1:
        raise InvalidInput(
            f"a snapshot tag is at most {SD_MAX_VDI_TAG_LEN - 1} bytes, got {len(raw)}")
    return raw


def pad_field(value: bytes, size: int) -> bytes:
    if len(value) > size:
        raise InvalidInput(f"value of {len(value)} bytes does not fit a {size}-byte field")
    return value + bytes(size - len(value))


def encode_name(name: str | bytes) -> bytes:
    """256-byte payload of NEW_VDI / GET_VDI_INFO by name."""
    return pad_field(validate_name(name), NAME_FIELD)


def encode_name_tag(name: str | bytes, tag: str | bytes = b"") -> bytes:
    """512-byte payload: name field then tag field."""
    return encode_name(name) + pad_field(validate_tag(tag), TAG_FIELD)


def decode_field(field: bytes) -> bytes:
    """Bytes before the first NUL of a fixed-size string field."""
    return bytes(field).split(b"\0", 1)[0]


def decode_lookup_payload(payload: bytes) -> tuple[bytes, bytes]:
    """(name, tag) from a 256- or 512-byte lookup payload.

    Raises InvalidPayload (a ProtocolError and a ValueError) for other sizes."""
    if len(payload) not in (NAME_FIELD, NAME_FIELD + TAG_FIELD):
        raise InvalidPayload(f"lookup payload must be 256 or 512 bytes, got {len(payload)}")
    name = decode_field(payload[:NAME_FIELD])
    tag = decode_field(payload[NAME_FIELD:]) if len(payload) > NAME_FIELD else b""
    return name, tag


def attr_id(name_field: bytes, tag_field: bytes, snap_id: int, key_field: bytes) -> int:
    """Attribute id (§9.7): FNV-1a-64 over name, tag, snap_id LE32, key; low 32 bits."""
    h = fnv1a_64(pad_field(name_field, NAME_FIELD))
    h = fnv1a_64(pad_field(tag_field, TAG_FIELD), h)
    h = fnv1a_64(snap_id.to_bytes(4, "little"), h)
    h = fnv1a_64(pad_field(key_field, 256), h)
    return h & 0xFFFFFFFF
