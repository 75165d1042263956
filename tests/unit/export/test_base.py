"""IQNs, derived CHAP credentials, export records and what tgt's Sheepdog
store can carry."""

from __future__ import annotations

import json
import re

import pytest

from sheepdog_backend.exception import GatewayUnusable, InvalidInput
from sheepdog_backend.export.base import (
    ANY_INITIATOR,
    MAX_IQN,
    ExportRecord,
    chap_credentials,
    check_backing_name,
    check_gateway,
    target_iqn,
    validate_prefix,
)
from sheepdog_backend.export.manager import ExportSettings, snapshot_clone_name

PREFIX = "iqn.2010-10.org.openstack:"
IQN_CHARS = re.compile(r"^[a-z0-9.:-]+$")


def test_plain_name_keeps_its_iqn() -> None:
    assert target_iqn(PREFIX, "volume-1234") == PREFIX + "volume-1234"


@pytest.mark.parametrize("name", ["Vol_A", "Vol_a", "vol a", "\u00e9t\u00e9", "x" * 400,
                                  "a/b", "vol-A"])
def test_folded_names_stay_valid_and_distinct(name: str) -> None:
    iqn = target_iqn(PREFIX, name)
    assert IQN_CHARS.match(iqn) and len(iqn) <= MAX_IQN
    assert iqn.startswith(PREFIX)
    assert iqn != target_iqn(PREFIX, name + "x")


def test_case_variants_do_not_share_an_iqn() -> None:
    assert target_iqn(PREFIX, "vol-a") != target_iqn(PREFIX, "Vol-a")


@pytest.mark.parametrize("prefix", ["", "iqn.2010.org:", "IQN.2010-10.org:", "foo",
                                    "iqn.2010-10.org.openstack: x"])
def test_bad_prefix_refused(prefix: str) -> None:
    with pytest.raises(InvalidInput):
        validate_prefix(prefix)
    with pytest.raises(InvalidInput):
        target_iqn(prefix, "v")


def test_chap_is_deterministic_per_key_and_iqn() -> None:
    user, secret = chap_credentials("k1", PREFIX + "v1")
    assert (user, secret) == chap_credentials("k1", PREFIX + "v1")
    assert secret != chap_credentials("k1", PREFIX + "v2")[1]
    assert secret != chap_credentials("k2", PREFIX + "v1")[1]
    assert len(secret) == 24
    assert secret.isalnum() and user.isalnum()
    with pytest.raises(InvalidInput):
        chap_credentials("", PREFIX + "v1")


def test_chap_on_without_a_key_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="sheepdog_export_chap_key"):
        ExportSettings(chap=True, chap_key="")
    ExportSettings(chap=False)  # no CHAP, no key needed


@pytest.mark.parametrize("name", ["a:b", "a,b", "a=b", "a b", "caf\u00e9", "t\tab"])
def test_names_tgt_cannot_carry_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="cannot be exported through tgt"):
        check_backing_name(name)


def test_gateway_rules() -> None:
    assert check_gateway("127.0.0.1", 7000) == ("127.0.0.1", 7000)
    assert check_gateway("127.0.0.1", 9999) == ("127.0.0.1", 9999)
    with pytest.raises(GatewayUnusable, match=r"only 4 digits.*port 1710"):
        check_gateway("127.0.0.1", 17100)
    with pytest.raises(GatewayUnusable, match="IPv6"):
        check_gateway("::1", 7000)


def test_record_round_trip_and_garbage() -> None:
    rec = ExportRecord(vdi="v", iqn=PREFIX + "v", gateway="127.0.0.1:7000", readonly=True,
                       initiators=("iqn.1993-08.org.debian:01:a",),
                       source={"volume": "base", "tag": "t"},
                       attachments={"iqn.1993-08.org.debian:01:a": 2})
    assert ExportRecord.decode(rec.encode()) == rec
    assert ExportRecord.decode(rec.encode() + b"\0\0") == rec  # attribute padding
    with pytest.raises(InvalidInput):
        ExportRecord.decode(b"{not json")
    with pytest.raises(InvalidInput):
        ExportRecord.decode(b'{"vdi": "v"}')
    with pytest.raises(InvalidInput):
        ExportRecord.decode(rec.encode().replace(b'": 2}', b'": "two"}'))


def test_record_names_the_portal_of_its_tgtd() -> None:
    """A central record names the portal of the tgtd that holds its target; one
    written before that reads with none (any host then acts on it, as then)."""
    rec = ExportRecord(vdi="v", iqn=PREFIX + "v", gateway="127.0.0.1:7000",
                       portal="10.0.0.5:3260")
    assert json.loads(rec.encode())["portal"] == "10.0.0.5:3260"
    assert ExportRecord.decode(rec.encode()) == rec
    older = rec.with_changes(portal="")
    assert "portal" not in json.loads(older.encode())
    assert ExportRecord.decode(older.encode()).portal == ""


A, B = "iqn.1993-08.org.debian:01:a", "iqn.1993-08.org.debian:01:b"
V1 = (b'{"chap": true, "gateway": "127.0.0.1:7000", "initiators": [%s], '
      b'"iqn": "iqn.2010-10.org.openstack:v", "readonly": false, "v": 1, "vdi": "v"}')


def test_version_1_records_read_as_one_attachment_each() -> None:
    """Records written before attachments were counted: each listed initiator
    is one attachment; none listed is one attachment of any initiator."""
    named = ExportRecord.decode(V1 % b'"%s", "%s"' % (A.encode(), B.encode()))
    assert named.attachments == {A: 1, B: 1} and named.acl == (A, B)
    anyone = ExportRecord.decode(V1 % b"")
    assert anyone.attachments == {ANY_INITIATOR: 1} and anyone.acl == ()
    # and what version 2 writes, a version-1 reader still takes its ACL from
    written = json.loads(named.attaching(A).encode())
    assert written["initiators"] == [A, B] and written["attachments"] == {A: 2, B: 1}


def test_attachments_are_counted_per_initiator() -> None:
    rec = ExportRecord(vdi="v", iqn=PREFIX + "v", gateway="g:1")
    rec = rec.attaching(A).attaching(B).attaching(A)  # host A has two instances
    assert (rec.attached, rec.acl) == (3, (A, B))
    rec, ended = rec.ending(A)
    assert ended == A and rec.attachments == {A: 1, B: 1} and rec.acl == (A, B)
    rec, ended = rec.ending(A)
    assert ended == A and rec.attachments == {B: 1} and rec.acl == (B,)
    same, ended = rec.ending(A)  # twice: nothing left of A, nothing changes
    assert ended is None and same == rec
    same, ended = rec.ending("iqn.1993-08.org.debian:01:stranger")
    assert ended is None and same == rec
    rec, ended = rec.ending(B)
    assert ended == B and rec.attached == 0 and rec.initiators == ()


def test_forced_detach_ends_only_what_it_can_tell() -> None:
    rec = ExportRecord(vdi="v", iqn=PREFIX + "v", gateway="g:1").attaching(A).attaching(B)
    same, ended = rec.ending(None)  # two named hosts: which one? neither
    assert ended is None and same == rec
    only, ended = rec.ending(B)[0].ending(None)  # the only attachment left
    assert ended == A and only.attached == 0
    mixed = rec.attaching(None)  # a host that named no initiator: ACL ALL
    assert mixed.acl == ()
    after, ended = mixed.ending(None)
    assert ended == ANY_INITIATOR and after.acl == (A, B) and after.attached == 2


def test_allowed_initiator_without_attachment() -> None:
    """create_export allows the initiator; initialize_connection attaches."""
    rec = ExportRecord(vdi="v", iqn=PREFIX + "v", gateway="g:1").attaching(A).allowing(B)
    assert rec.acl == (A, B) and rec.attachments == {A: 1}
    assert rec.unattached().acl == (A,)
    dropped, ended = rec.ending(B)
    assert ended is None and dropped.acl == (A,) and dropped.attachments == {A: 1}


def test_snapshot_clone_names_are_exportable_and_distinct() -> None:
    a = snapshot_clone_name("vol", "s:1")
    assert check_backing_name(a) == a
    assert a != snapshot_clone_name("vol", "s:2") != snapshot_clone_name("vol2", "s:1")
