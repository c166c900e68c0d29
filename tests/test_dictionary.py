"""fixproxy.dictionary: unit tests, and a differential test against QuickFIX (the `quickfix` package,
whose DataDictionary reads the same XML files).

Every message of the VALID and BROKEN corpora is validated by both; the verdicts (accepted /
refused) must agree, and a refusal's Reason must map to the QuickFIX exception class listed in
QF_EXCEPTIONS. The few places where QuickFIX 1.16 checks less than we do are listed, with the
reason, in KNOWN_DIFFERENCES (and asserted, so that a change on either side shows up).
"""

from __future__ import annotations

import timeit
from pathlib import Path

import pytest
import quickfix as fix
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fixproxy.dictionary import _C_GROUP, DataDictionary, load_for_version
from fixproxy.reasons import Reason, Refusal

SPECS = Path(__file__).resolve().parent.parent / "specs"
SOH = b"\x01"

FIX42, FIX44, FIXT = "FIX.4.2", "FIX.4.4", "FIXT.1.1"


# -- building messages -------------------------------------------------------------------------------


def _b(x: object) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode("latin-1")


def build(begin_string: str | bytes, fields: list[tuple[object, object]]) -> bytes:
    """A complete FIX message: 8, 9 (BodyLength) and 10 (CheckSum) filled in around ``fields``."""
    body = b"".join(_b(t) + b"=" + _b(v) + SOH for t, v in fields)
    msg = b"8=" + _b(begin_string) + SOH + b"9=" + str(len(body)).encode() + SOH + body
    return msg + b"10=" + b"%03d" % (sum(msg) % 256) + SOH


def split(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(BeginString, fields without 8/9/10), the way the framer hands them over (no data fields)."""
    pairs = [tuple(f.split(b"=", 1)) for f in raw[:-1].split(SOH)]
    assert pairs[0][0] == b"8" and pairs[1][0] == b"9" and pairs[-1][0] == b"10"
    return pairs[0][1], [(t, v) for t, v in pairs[2:-1]]  # type: ignore[misc]


def test_build_helper_matches_the_fix_spec() -> None:
    raw = build(FIX44, [(35, "0"), (49, "A"), (56, "B"), (34, "1"), (52, "20240101-00:00:00")])
    body = raw[raw.index(b"\x0135=") + 1 : raw.index(b"10=")]
    assert raw.startswith(b"8=FIX.4.4\x019=%d\x01" % len(body))
    assert raw.endswith(b"10=%03d\x01" % (sum(raw[: raw.index(b"10=")]) % 256))
    fix.Message(raw.decode(), True)  # QuickFIX checks BodyLength and CheckSum: raises if wrong


# -- the corpora ---------------------------------------------------------------------------------------

TS = "20240315-14:30:00.123"
T0 = "20240315-14:30:00"


def header(version: str, msg_type: str, *extra: tuple[object, object]) -> list[tuple[object, object]]:
    h: list[tuple[object, object]] = [(35, msg_type), (49, "CLIENT1"), (56, "VENUE"), (34, "17"), (52, TS)]
    if version == FIXT and msg_type not in QF_ADMIN:
        h.append((1128, "9"))  # ApplVerID = FIX50SP2
    return h + list(extra)


def msg(
    version: str, msg_type: str, body: list[tuple[object, object]], extra_header: tuple[tuple[object, object], ...] = ()
) -> tuple[str, list[tuple[object, object]]]:
    return version, header(version, msg_type, *extra_header) + body


QF_ADMIN = {"0", "1", "2", "3", "4", "5", "A"}  # QuickFIX's isAdminMsgType()

PARTIES_44 = [(453, "2"), (448, "TRADER1"), (447, "D"), (452, "11"), (448, "FIRM1"), (447, "D"), (452, "1")]
MD_ENTRIES = [(268, "2"), (269, "0"), (270, "187.2"), (271, "500"), (269, "1"), (270, "187.3"), (271, "300")]


# fmt: off  (corpus tables: one message per line group reads better than one field per line)
def _valid() -> dict[str, tuple[str, list[tuple[object, object]]]]:
    v: dict[str, tuple[str, list[tuple[object, object]]]] = {}
    for ver in (FIX42, FIX44, FIXT):
        k = {FIX42: "FIX42", FIX44: "FIX44", FIXT: "FIXT"}[ver]
        logon = [(98, "0"), (108, "30"), (141, "Y")] + ([(1137, "9")] if ver == FIXT else [])
        v[f"{k}-logon"] = msg(ver, "A", logon)
        v[f"{k}-heartbeat"] = msg(ver, "0", [(112, "TR-1")])
        v[f"{k}-heartbeat-empty"] = msg(ver, "0", [])
        v[f"{k}-test-request"] = msg(ver, "1", [(112, "TR-2")])
        v[f"{k}-resend-request"] = msg(ver, "2", [(7, "5"), (16, "0")])
        v[f"{k}-gap-fill"] = msg(ver, "4", [(123, "Y"), (36, "25")], ((43, "Y"), (122, T0)))
        v[f"{k}-reject"] = msg(
            ver,
            "3",
            [(45, "16"), (371, "54"), (372, "D"), (373, "5"), (58, "Value is incorrect (out of range) for this tag")],
        )
        v[f"{k}-logout"] = msg(ver, "5", [(58, "Goodbye")])
        handl = [(21, "1")] if ver != FIXT else []
        v[f"{k}-new-order-single"] = msg(
            ver,
            "D",
            [
                (1, "ACC-7"),
                (11, "ORD-1001"),
                *handl,
                (18, "1 5"),
                (55, "IBM"),
                (54, "1"),
                (60, T0),
                (38, "100"),
                (40, "2"),
                (44, "187.25"),
                (59, "0"),
                (58, "via fixproxy"),
            ],
        )
        v[f"{k}-cancel"] = msg(
            ver, "F", [(41, "ORD-1001"), (11, "ORD-1002"), (55, "IBM"), (54, "1"), (60, T0), (38, "100")]
        )
        v[f"{k}-cancel-replace"] = msg(
            ver,
            "G",
            [
                (41, "ORD-1001"),
                (11, "ORD-1003"),
                *handl,
                (55, "IBM"),
                (54, "1"),
                (60, T0),
                (38, "150"),
                (40, "2"),
                (44, "187.20"),
            ],
        )
        v[f"{k}-status"] = msg(ver, "H", [(37, "EX-1"), (11, "ORD-1001"), (55, "IBM"), (54, "1")])
        exec_trans = [(20, "0")] if ver == FIX42 else []
        v[f"{k}-execution-report"] = msg(
            ver,
            "8",
            [
                (6, "187.25"),
                (11, "ORD-1001"),
                (14, "100"),
                (17, "EXEC-1"),
                *exec_trans,
                (31, "187.25"),
                (32, "100"),
                (37, "EX-1"),
                (38, "100"),
                (39, "2"),
                (40, "2"),
                (44, "187.25"),
                (54, "1"),
                (55, "IBM"),
                (60, "20240315-14:30:00.123456"),
                (150, "2" if ver == FIX42 else "F"),
                (151, "0"),
            ],
        )
        lut = [(779, "20240315-14:30:00.123456789")] if ver == FIXT else []
        v[f"{k}-md-snapshot"] = msg(ver, "W", [(55, "IBM"), *lut, *MD_ENTRIES])
        v[f"{k}-md-snapshot-empty"] = msg(ver, "W", [(55, "IBM"), *lut, (268, "0")])
    # nested groups -----------------------------------------------------------------------------------
    v["FIX42-new-order-list-nested"] = msg(
        FIX42,
        "E",
        [
            (66, "LIST-1"),
            (394, "3"),
            (68, "2"),
            (73, "2"),
            (11, "L-1"),
            (67, "1"),
            (78, "2"),
            (79, "ALLOC-A"),
            (80, "60"),
            (79, "ALLOC-B"),
            (80, "40"),
            (21, "1"),
            (55, "IBM"),
            (54, "1"),
            (38, "100"),
            (40, "1"),
            (11, "L-2"),
            (67, "2"),
            (21, "1"),
            (55, "MSFT"),
            (54, "2"),
            (38, "50"),
            (40, "1"),
        ],
    )
    v["FIX44-new-order-single-nested"] = msg(
        FIX44,
        "D",
        [
            (11, "ORD-1001"),
            *PARTIES_44,
            (1, "ACC-7"),
            (78, "2"),
            (79, "ALLOC-A"),
            (539, "1"),
            (524, "NP1"),
            (525, "D"),
            (538, "4"),
            (80, "60"),
            (79, "ALLOC-B"),
            (539, "2"),
            (524, "NP2"),
            (525, "D"),
            (538, "4"),
            (524, "NP3"),
            (525, "D"),
            (538, "1"),
            (80, "40"),
            (21, "1"),
            (55, "IBM"),
            (54, "1"),
            (60, T0),
            (38, "100"),
            (40, "2"),
            (44, "187.25"),
            (59, "0"),
        ],
    )
    v["FIX44-execution-report-parties"] = msg(
        FIX44,
        "8",
        [
            (37, "EX-1"),
            (11, "ORD-1001"),
            *PARTIES_44,
            (17, "EXEC-2"),
            (150, "F"),
            (39, "1"),
            (55, "IBM"),
            (54, "1"),
            (38, "100"),
            (32, "40"),
            (31, "187.25"),
            (151, "60"),
            (14, "40"),
            (6, "187.25"),
            (60, T0),
        ],
    )
    v["FIX44-md-incremental-group-with-component"] = msg(
        FIX44,
        "X",
        [
            (268, "2"),
            (279, "0"),
            (269, "0"),
            (55, "IBM"),
            (270, "187.2"),
            (271, "500"),
            (279, "2"),
            (269, "1"),
            (55, "IBM"),
            (270, "187.3"),
            (271, "300"),
        ],
    )
    v["FIXT-new-order-single-nested"] = msg(
        FIXT,
        "D",
        [
            (11, "ORD-1001"),
            (453, "1"),
            (448, "TRADER1"),
            (447, "D"),
            (452, "11"),
            (802, "2"),
            (523, "DESK-9"),
            (803, "1"),
            (523, "LDN"),
            (803, "2"),
            (1, "ACC-7"),
            (55, "IBM"),
            (54, "1"),
            (60, T0),
            (38, "100"),
            (40, "2"),
            (44, "187.25"),
        ],
    )
    v["FIXT-md-snapshot-nested"] = msg(
        FIXT,
        "W",
        [
            (55, "IBM"),
            (779, TS),
            (268, "1"),
            (269, "0"),
            (270, "187.2"),
            (271, "500"),
            (453, "1"),
            (448, "MM1"),
            (447, "D"),
            (452, "1"),
        ],
    )
    v["FIX44-header-group-hops"] = msg(FIX44, "0", [], ((627, "2"), (628, "HUB1"), (629, T0), (628, "HUB2")))
    return v


VALID = _valid()

# Each broken message breaks one rule: (version, fields, our Reason, the tag we blame).
BROKEN: dict[str, tuple[str, list[tuple[object, object]], Reason, int | None]] = {}


def _broken(name: str, base: str, reason: Reason, tag: int | None, edit) -> None:
    version, fields = VALID[base]
    BROKEN[name] = (version, edit(list(fields)), reason, tag)


def _replace(tag: int, value: object):
    def edit(fields):
        i = [t for t, _ in fields].index(tag)
        return [*fields[:i], (tag, value), *fields[i + 1 :]]

    return edit


def _drop(tag: int, nth: int = 0):
    def edit(fields):
        idx = [i for i, (t, _) in enumerate(fields) if t == tag][nth]
        return fields[:idx] + fields[idx + 1 :]

    return edit


def _insert_after(tag: int, *new: tuple[object, object], nth: int = 0):
    def edit(fields):
        idx = [i for i, (t, _) in enumerate(fields) if t == tag][nth]
        return fields[: idx + 1] + list(new) + fields[idx + 1 :]

    return edit


# UNKNOWN_MSGTYPE
BROKEN["FIX44-unknown-msgtype"] = (FIX44, [(35, "ZZ"), *VALID["FIX44-heartbeat"][1][1:]], Reason.UNKNOWN_MSGTYPE, 35)
BROKEN["FIXT-unknown-msgtype"] = (FIXT, [(35, "ZZ"), *VALID["FIXT-heartbeat"][1][1:]], Reason.UNKNOWN_MSGTYPE, 35)
# UNKNOWN_TAG
_broken("FIX44-unknown-tag", "FIX44-new-order-single", Reason.UNKNOWN_TAG, 9999, _insert_after(55, (9999, "x")))
_broken(
    "FIX42-unknown-user-defined-tag", "FIX42-new-order-single", Reason.UNKNOWN_TAG, 5001, _insert_after(55, (5001, "x"))
)
_broken("FIXT-app-field-in-admin-message", "FIXT-logon", Reason.UNKNOWN_TAG, 55, _insert_after(108, (55, "IBM")))
# TAG_NOT_ALLOWED
_broken("FIX44-tag-not-allowed", "FIX44-heartbeat", Reason.TAG_NOT_ALLOWED, 44, _insert_after(112, (44, "1.5")))
_broken("FIX42-tag-not-allowed", "FIX42-cancel", Reason.TAG_NOT_ALLOWED, 40, _insert_after(38, (40, "2")))
_broken("FIXT-tag-not-allowed", "FIXT-status", Reason.TAG_NOT_ALLOWED, 44, _insert_after(54, (44, "1")))
# FIELD_OUT_OF_ORDER
_broken(
    "FIX44-header-after-body",
    "FIX44-new-order-single",
    Reason.FIELD_OUT_OF_ORDER,
    52,
    lambda f: [x for x in f if x[0] != 52] + [(52, TS)],
)
_broken(
    "FIX42-body-after-trailer",
    "FIX42-heartbeat",
    Reason.FIELD_OUT_OF_ORDER,
    112,
    _insert_after(52, (93, "2"), (89, "ab")),
)
_broken(
    "FIX44-smuggled-begin-string",
    "FIX44-new-order-single",
    Reason.FIELD_OUT_OF_ORDER,
    8,
    _insert_after(55, (8, "FIX.4.4")),
)
_broken(
    "FIX44-smuggled-checksum", "FIX44-new-order-single", Reason.FIELD_OUT_OF_ORDER, 10, _insert_after(55, (10, "123"))
)
_broken(
    "FIXT-header-after-body",
    "FIXT-execution-report",
    Reason.FIELD_OUT_OF_ORDER,
    34,
    lambda f: [x for x in f if x[0] != 34] + [(34, "17")],
)
# DUPLICATE_TAG
_broken("FIX44-duplicate-tag", "FIX44-new-order-single", Reason.DUPLICATE_TAG, 55, _insert_after(54, (55, "MSFT")))
_broken("FIX42-duplicate-header-tag", "FIX42-logon", Reason.DUPLICATE_TAG, 49, _insert_after(56, (49, "EVIL")))
_broken(
    "FIX44-duplicate-in-group-instance",
    "FIX44-md-snapshot",
    Reason.DUPLICATE_TAG,
    270,
    _insert_after(270, (270, "1.0")),
)
_broken("FIXT-duplicate-tag", "FIXT-cancel", Reason.DUPLICATE_TAG, 38, _insert_after(38, (38, "200")))
# MISSING_REQUIRED
_broken("FIX42-missing-symbol", "FIX42-new-order-single", Reason.MISSING_REQUIRED, 55, _drop(55))
_broken("FIX44-missing-sender", "FIX44-new-order-single", Reason.MISSING_REQUIRED, 49, _drop(49))
_broken("FIX44-missing-heartbtint", "FIX44-logon", Reason.MISSING_REQUIRED, 108, _drop(108))
_broken("FIX42-missing-in-group-instance", "FIX42-md-snapshot", Reason.MISSING_REQUIRED, 270, _drop(270, 1))
_broken("FIXT-missing-default-appl-ver", "FIXT-logon", Reason.MISSING_REQUIRED, 1137, _drop(1137))
_broken("FIXT-missing-side", "FIXT-execution-report", Reason.MISSING_REQUIRED, 54, _drop(54))
_broken("FIXT-admin-missing-seqnum", "FIXT-heartbeat", Reason.MISSING_REQUIRED, 34, _drop(34))
# INVALID_VALUE
_broken("FIX44-invalid-side", "FIX44-new-order-single", Reason.INVALID_VALUE, 54, _replace(54, "Z"))
_broken("FIX42-invalid-multi-value", "FIX42-new-order-single", Reason.INVALID_VALUE, 18, _replace(18, "1 Z"))
_broken("FIX42-multi-value-double-space", "FIX42-new-order-single", Reason.INVALID_VALUE, 18, _replace(18, "1  5"))
_broken("FIX44-invalid-int-enum", "FIX44-logon", Reason.INVALID_VALUE, 98, _replace(98, "9"))
_broken("FIXT-invalid-ord-type", "FIXT-new-order-single", Reason.INVALID_VALUE, 40, _replace(40, "z"))
# BAD_VALUE_FORMAT
_broken("FIX44-qty-not-a-number", "FIX44-new-order-single", Reason.BAD_VALUE_FORMAT, 38, _replace(38, "abc"))
_broken("FIX44-price-two-dots", "FIX44-new-order-single", Reason.BAD_VALUE_FORMAT, 44, _replace(44, "1.2.3"))
_broken("FIX44-price-exponent", "FIX44-new-order-single", Reason.BAD_VALUE_FORMAT, 44, _replace(44, "1e5"))
_broken(
    "FIX44-sending-time-month-13",
    "FIX44-new-order-single",
    Reason.BAD_VALUE_FORMAT,
    52,
    _replace(52, "20241315-14:30:00"),
)
_broken(
    "FIX44-timestamp-10-fraction-digits",
    "FIX44-new-order-single",
    Reason.BAD_VALUE_FORMAT,
    60,
    _replace(60, "20240315-14:30:00.1234567890"),
)
_broken("FIX44-negative-seqnum", "FIX44-heartbeat", Reason.BAD_VALUE_FORMAT, 34, _replace(34, "-1"))  # SEQNUM
_broken("FIX42-int-seqnum-not-a-number", "FIX42-heartbeat", Reason.BAD_VALUE_FORMAT, 34, _replace(34, "1a"))
_broken("FIX42-int-not-a-number", "FIX42-logon", Reason.BAD_VALUE_FORMAT, 108, _replace(108, "3O"))
_broken("FIX44-int-overflow", "FIX44-logon", Reason.BAD_VALUE_FORMAT, 108, _replace(108, "2147483648"))
_broken("FIX44-boolean-not-y-n", "FIX44-gap-fill", Reason.BAD_VALUE_FORMAT, 123, _replace(123, "T"))
_broken("FIXT-utc-time-only", "FIXT-new-order-single", Reason.BAD_VALUE_FORMAT, 60, _replace(60, "14:30:00"))
# REPEATING_GROUP_MISMATCH
_broken("FIX44-group-count-too-high", "FIX44-md-snapshot", Reason.REPEATING_GROUP_MISMATCH, 268, _replace(268, "3"))
_broken("FIX44-group-count-too-low", "FIX44-md-snapshot", Reason.REPEATING_GROUP_MISMATCH, 268, _replace(268, "1"))
_broken(
    "FIX44-group-member-outside-group",
    "FIX44-new-order-single",
    Reason.REPEATING_GROUP_MISMATCH,
    448,
    _insert_after(55, (448, "TRADER1")),
)
_broken(
    "FIX44-group-member-after-group",
    "FIX44-md-snapshot",
    Reason.REPEATING_GROUP_MISMATCH,
    269,
    lambda f: _replace(268, "1")([*f[:-3], (291, "1"), *f[-3:]]),
)
_broken(
    "FIX44-instance-not-starting-with-delimiter",
    "FIX44-md-snapshot",
    Reason.REPEATING_GROUP_MISMATCH,
    270,
    lambda f: [*f[:-6], (270, "187.2"), (269, "0"), (271, "500"), *f[-3:]],
)
_broken(
    "FIX42-nested-group-member-outside",
    "FIX42-new-order-list-nested",
    Reason.REPEATING_GROUP_MISMATCH,
    79,
    _insert_after(66, (79, "ALLOC-X")),
)
_broken("FIXT-group-count-too-high", "FIXT-md-snapshot", Reason.REPEATING_GROUP_MISMATCH, 268, _replace(268, "3"))
# GROUP_COUNT_EXCEEDED
_broken("FIX44-group-count-huge", "FIX44-md-snapshot", Reason.GROUP_COUNT_EXCEEDED, 268, _replace(268, "999999999"))
_broken("FIXT-group-count-huge", "FIXT-md-snapshot", Reason.GROUP_COUNT_EXCEEDED, 268, _replace(268, "1001"))

BROKEN["FIX44-char-two-bytes"] = (
    FIX44,
    [*header(FIX44, "B"), (148, "Headline"), (33, "1"), (58, "x"), (61, "12")],
    Reason.BAD_VALUE_FORMAT,
    61,
)  # News: Urgency (61) is a CHAR

# What QuickFIX raises for each of our reasons.
QF_EXCEPTIONS: dict[Reason, tuple[type[Exception], ...]] = {
    Reason.UNKNOWN_MSGTYPE: (fix.InvalidMessageType,),
    Reason.UNKNOWN_TAG: (fix.InvalidTagNumber,),
    Reason.TAG_NOT_ALLOWED: (fix.TagNotDefinedForMessage,),
    Reason.FIELD_OUT_OF_ORDER: (fix.TagOutOfOrder,),
    # In a group instance QuickFIX takes a repeated member as the start of a new instance, then
    # finds that instance without the delimiter (RequiredTagMissing) or one instance too many.
    Reason.DUPLICATE_TAG: (fix.RepeatedTag, fix.RequiredTagMissing, fix.RepeatingGroupCountMismatch),
    Reason.MISSING_REQUIRED: (fix.RequiredTagMissing,),
    Reason.INVALID_VALUE: (fix.IncorrectTagValue,),
    Reason.BAD_VALUE_FORMAT: (fix.IncorrectDataFormat,),
    # Group members are not message fields for QuickFIX: one outside its group is "not defined for
    # this message type". An instance not starting with its delimiter is split by QuickFIX into an
    # instance without the (required) delimiter and a second one: RequiredTagMissing or a count error.
    Reason.REPEATING_GROUP_MISMATCH: (
        fix.RepeatingGroupCountMismatch,
        fix.TagNotDefinedForMessage,
        fix.RequiredTagMissing,
    ),
    Reason.GROUP_COUNT_EXCEEDED: (fix.RepeatingGroupCountMismatch,),
}

# Where QuickFIX 1.16 legitimately checks less than we do: QuickFIX accepts, we refuse.
KNOWN_DIFFERENCES: dict[str, tuple[str, list[tuple[object, object]], Reason, int | None, str]] = {}


def _known(name: str, base: str, reason: Reason, tag: int | None, edit, why: str) -> None:
    version, fields = VALID[base]
    KNOWN_DIFFERENCES[name] = (version, edit(list(fields)), reason, tag, why)


_known(
    "local-mkt-date-format",
    "FIX44-new-order-single",
    Reason.BAD_VALUE_FORMAT,
    432,
    _insert_after(59, (432, "2024-03-15")),
    "QuickFIX's LOCALMKTDATE convertor is the string convertor: no format check",
)
_known(
    "month-year-format",
    "FIX44-new-order-single",
    Reason.BAD_VALUE_FORMAT,
    200,
    _insert_after(55, (200, "March")),
    "QuickFIX's MONTHYEAR convertor is the string convertor: no format check",
)
_known(
    "enum-inside-group",
    "FIX44-md-snapshot",
    Reason.INVALID_VALUE,
    269,
    _replace(269, "z"),
    "DataDictionary::iterate() does not descend into groups: no value checks on group members",
)
_known(
    "format-inside-group",
    "FIX44-md-snapshot",
    Reason.BAD_VALUE_FORMAT,
    270,
    _replace(270, "abc"),
    "DataDictionary::iterate() does not descend into groups: no format checks on group members",
)
_known(
    "nested-group-count",
    "FIX44-new-order-single-nested",
    Reason.REPEATING_GROUP_MISMATCH,
    539,
    _replace(539, "3"),
    "checkGroupCount() only runs on top-level fields: a nested NumInGroup is never compared",
)
_known(
    "fixt-app-missing-header-field",
    "FIXT-new-order-single",
    Reason.MISSING_REQUIRED,
    49,
    _drop(49),
    "for FIXT application messages QuickFIX checks required header fields against the application "
    "dictionary (FIX50SP2.xml), whose <header/> is empty",
)
_known(
    "timestamp-trailing-dot",
    "FIX44-new-order-single",
    Reason.BAD_VALUE_FORMAT,
    60,
    _replace(60, "20240315-14:30:00."),
    "QuickFIX's UtcTimeStampConvertor accepts a '.' followed by no fraction digits",
)
_known(
    "group-without-delimiter",
    "FIX44-execution-report-parties",
    Reason.REPEATING_GROUP_MISMATCH,
    447,
    lambda f: _insert_after(11, (453, "1"), (447, "D"), (452, "1"))([x for x in f if x[0] not in (453, 448, 447, 452)]),
    "QuickFIX opens a group instance on any member when the delimiter is absent; PartyID (448) is "
    "optional in FIX 4.4, so an instance without it passes",
)
_known(
    "header-group-count",
    "FIX44-header-group-hops",
    Reason.REPEATING_GROUP_MISMATCH,
    627,
    _replace(627, "1"),
    "checkGroupCount() is skipped for header and trailer fields: NoHops (627) is never compared",
)

# fmt: on


# -- the QuickFIX oracle -------------------------------------------------------------------------------


class QuickFix:
    def __init__(self) -> None:
        self.dd = {
            FIX42: fix.DataDictionary(str(SPECS / "FIX42.xml")),
            FIX44: fix.DataDictionary(str(SPECS / "FIX44.xml")),
        }
        self.transport = fix.DataDictionary(str(SPECS / "FIXT11.xml"))
        self.app = fix.DataDictionary(str(SPECS / "FIX50SP2.xml"))

    def verdict(self, raw: bytes) -> type[Exception] | None:
        """None if QuickFIX accepts the message, else the class of the exception it raises. The
        FIXT path is what Session::verify() does: admin messages against the transport dictionary,
        application messages against both."""
        begin_string, fields = split(raw)
        text = raw.decode("latin-1")
        try:
            if begin_string == b"FIXT.1.1":
                if fields[0][1].decode("latin-1") in QF_ADMIN:
                    self.transport.validate(fix.Message(text, self.transport, False))
                else:
                    m = fix.Message(text, self.transport, self.app, False)
                    fix.DataDictionary.validate(m, self.transport, self.app)
            else:
                dd = self.dd[begin_string.decode()]
                dd.validate(fix.Message(text, dd, False))
        except fix.FIXException as e:
            return type(e)
        return None


@pytest.fixture(scope="module")
def qf() -> QuickFix:
    return QuickFix()


def ours(raw: bytes, mode: str = "strict") -> Refusal | None:
    begin_string, fields = split(raw)
    return load_for_version(begin_string).validate(fields[0][1], fields, mode=mode)


# -- differential tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_corpus_accepted_by_both(name: str, qf: QuickFix) -> None:
    version, fields = VALID[name]
    raw = build(version, fields)
    assert ours(raw) is None
    assert qf.verdict(raw) is None


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_corpus_refused_by_both(name: str, qf: QuickFix) -> None:
    version, fields, reason, tag = BROKEN[name]
    raw = build(version, fields)
    refusal = ours(raw)
    assert refusal is not None, "accepted"
    assert (refusal.reason, refusal.tag) == (reason, tag), refusal
    assert refusal.text and "\x01" not in refusal.text
    qf_exc = qf.verdict(raw)
    assert qf_exc is not None, f"QuickFIX accepts it; we say {refusal}"
    assert issubclass(qf_exc, QF_EXCEPTIONS[reason]), f"QuickFIX raised {qf_exc.__name__}; we say {refusal}"


def test_broken_corpus_covers_every_dictionary_rule() -> None:
    assert {r for _, _, r, _ in BROKEN.values()} == set(QF_EXCEPTIONS)
    for version in (FIX42, FIX44, FIXT):
        assert sum(v == version for v, *_ in BROKEN.values()) >= 5


@pytest.mark.parametrize("name", sorted(KNOWN_DIFFERENCES))
def test_known_differences_with_quickfix(name: str, qf: QuickFix) -> None:
    version, fields, reason, tag, _why = KNOWN_DIFFERENCES[name]
    raw = build(version, fields)
    refusal = ours(raw)
    assert refusal is not None and (refusal.reason, refusal.tag) == (reason, tag), refusal
    assert qf.verdict(raw) is None, "QuickFIX now refuses it too: move the case to BROKEN"


# -- unit tests ----------------------------------------------------------------------------------------


def test_api_and_cache() -> None:
    dd = load_for_version(b"FIX.4.4")
    assert dd is load_for_version(b"FIX.4.4") is load_for_version(b"FIX.4.4", SPECS)
    assert dd.begin_string == b"FIX.4.4"
    assert load_for_version(b"FIX.4.2").begin_string == b"FIX.4.2"
    fixt = load_for_version(b"FIXT.1.1")
    assert fixt.begin_string == b"FIXT.1.1"
    assert dd.is_admin(b"A") and dd.is_admin(b"0") and not dd.is_admin(b"D") and not dd.is_admin(b"ZZ")
    assert fixt.is_admin(b"5") and not fixt.is_admin(b"8") and fixt.knows_msgtype(b"AE")
    assert dd.knows_msgtype(b"W") and not dd.knows_msgtype(b"ZZ") and not dd.knows_msgtype(b"")
    with pytest.raises(ValueError):
        load_for_version(b"FIX.4.3")  # no FIX43.xml shipped
    with pytest.raises(ValueError):
        load_for_version(b"garbage")


def test_load_one_or_two_files() -> None:
    dd = DataDictionary.load(SPECS / "FIX42.xml", max_group_count=5)
    assert dd.begin_string == b"FIX.4.2" and dd.max_group_count == 5
    fixt = DataDictionary.load(str(SPECS / "FIXT11.xml"), str(SPECS / "FIX50SP2.xml"))
    assert fixt.begin_string == b"FIXT.1.1" and fixt.knows_msgtype(b"A") and fixt.knows_msgtype(b"D")
    with pytest.raises(ValueError):
        DataDictionary.load(SPECS / "FIX50SP2.xml")  # an application dictionary needs its transport
    with pytest.raises(TypeError):
        DataDictionary.load()


def test_custom_field_as_specs_readme_says(tmp_path: Path) -> None:
    xml = (SPECS / "FIX44.xml").read_text()
    xml = xml.replace(
        " <fields>\n",
        " <fields>\n  <field number='5001' name='VenueAccountType' type='CHAR'>\n"
        "   <value enum='C' description='CLIENT' />\n   <value enum='H' description='HOUSE' />\n"
        "  </field>\n",
        1,
    )
    xml = xml.replace(
        "<message name='NewOrderSingle' msgtype='D' msgcat='app'>\n",
        "<message name='NewOrderSingle' msgtype='D' msgcat='app'>\n   <field name='VenueAccountType' required='N' />\n",
        1,
    )
    (tmp_path / "FIX44.xml").write_text(xml)
    dd = load_for_version(b"FIX.4.4", tmp_path)
    assert dd is not load_for_version(b"FIX.4.4")
    version, fields = VALID["FIX44-new-order-single"]
    _, pairs = split(build(version, _insert_after(59, (5001, "H"))(list(fields))))
    assert dd.validate(b"D", pairs) is None
    assert load_for_version(b"FIX.4.4").validate(b"D", pairs).reason is Reason.UNKNOWN_TAG  # type: ignore[union-attr]
    bad = [(t, b"X" if t == b"5001" else v) for t, v in pairs]
    assert dd.validate(b"D", bad) == Refusal(
        Reason.INVALID_VALUE, "Value is incorrect (out of range) for this tag: 5001 (VenueAccountType)", 5001
    )
    _, pairs = split(build(*VALID["FIX44-cancel"]))
    pairs.append((b"5001", b"H"))
    assert dd.validate(b"F", pairs).reason is Reason.TAG_NOT_ALLOWED  # type: ignore[union-attr]


def test_texts_name_the_field() -> None:
    version, fields, *_ = BROKEN["FIX42-missing-symbol"]
    assert ours(build(version, fields)) == Refusal(Reason.MISSING_REQUIRED, "Required tag missing: 55 (Symbol)", 55)
    version, fields, *_ = BROKEN["FIX44-unknown-msgtype"]
    assert ours(build(version, fields)) == Refusal(Reason.UNKNOWN_MSGTYPE, "Invalid MsgType: ZZ", 35)
    dd = load_for_version(b"FIX.4.4")
    r = dd.validate(b"\x00\xff", [(b"35", b"\x00\xff")])
    assert r is not None and r.reason is Reason.UNKNOWN_MSGTYPE and "\x00" not in r.text


def test_modes() -> None:
    dd = load_for_version(b"FIX.4.4")
    _, fields = split(build(*BROKEN["FIX44-unknown-tag"][:2]))
    assert dd.validate(b"D", fields, mode="off") is None
    assert dd.validate(b"D", fields, mode="lenient") is None
    assert dd.validate(b"D", fields).reason is Reason.UNKNOWN_TAG  # type: ignore[union-attr]
    # lenient: a tag the dictionary defines, but not for this message type, is still refused
    _, fields = split(build(*BROKEN["FIX44-tag-not-allowed"][:2]))
    assert dd.validate(b"0", fields, mode="lenient").reason is Reason.TAG_NOT_ALLOWED  # type: ignore[union-attr]
    # lenient: custom tags inside a group instance stay in the instance; duplicates are still refused
    version, fields = VALID["FIX44-md-snapshot"]
    f = _insert_after(270, (7001, "x"))(list(fields))
    assert ours(build(version, f), "lenient") is None
    assert ours(build(version, f), "strict").reason is Reason.UNKNOWN_TAG  # type: ignore[union-attr]
    f = _insert_after(55, (7001, "x"), (7001, "y"))(list(fields))
    assert ours(build(version, f), "lenient").reason is Reason.DUPLICATE_TAG  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        dd.validate(b"0", fields, mode="relaxed")


def test_group_count_ceiling_is_cheap_and_configurable() -> None:
    dd = DataDictionary.load(SPECS / "FIX44.xml", max_group_count=1)
    version, fields = VALID["FIX44-md-snapshot"]
    _, pairs = split(build(version, fields))
    r = dd.validate(b"W", pairs)
    assert r is not None and r.reason is Reason.GROUP_COUNT_EXCEEDED and r.tag == 268
    huge = [(t, b"9" * 5000 if t == b"268" else v) for t, v in pairs]  # no int() on 5000 digits
    assert load_for_version(b"FIX.4.4").validate(b"W", huge).reason is Reason.GROUP_COUNT_EXCEEDED  # type: ignore[union-attr]


# fmt: off
FORMAT_CASES = [
    (b"52", b"20240315-14:30:00", True), (b"52", b"20240315-14:30:00.123456789", True),
    (b"52", b"20240315-24:00:00", False), (b"52", b"20240315-23:59:60", True),
    (b"52", b"20240230-10:00:00", True),  # day 1-31, as QuickFIX; no calendar check
    (b"52", b"2024031514:30:00", False), (b"52", b"20240315-14:30", False),
    (b"38", b"100", True), (b"38", b"-1.5", True), (b"38", b".5", True), (b"38", b"5.", True),
    (b"38", b"-", False), (b"38", b".", False), (b"38", b"+5", False), (b"38", b"\xd9\xa3", False),
    (b"34", b"1", True), (b"34", b"007", True), (b"34", b"18446744073709551615", True),
    (b"34", b"18446744073709551616", False), (b"34", b"\xef\xbc\x91", False),
    (b"108", b"-30", True), (b"108", b"-2147483648", True), (b"108", b"-2147483649", False),
    (b"432", b"20240315", True), (b"432", b"20241301", False),
    (b"200", b"202403", True), (b"200", b"20240315", True), (b"200", b"202403w2", True), (b"200", b"2024", False),
]
# fmt: on


@pytest.mark.parametrize(("ftype_tag", "value", "ok"), FORMAT_CASES)
def test_value_formats(ftype_tag: bytes, value: bytes, ok: bool) -> None:
    dd = load_for_version(b"FIX.4.4")
    _, fields = split(build(*VALID["FIX44-new-order-single"]))
    if ftype_tag in (b"432", b"200"):
        fields.insert(-1, (ftype_tag, value))
    else:
        fields = [(t, value if t == ftype_tag else v) for t, v in fields]
    if ftype_tag == b"108":
        _, fields = split(build(*VALID["FIX44-logon"]))
        fields = [(t, value if t == ftype_tag else v) for t, v in fields]
    r = dd.validate(fields[0][1], fields)
    assert (r is None) == ok, r
    if not ok:
        assert r.reason is Reason.BAD_VALUE_FORMAT and r.tag == int(ftype_tag)


def test_first_violation_in_field_order() -> None:
    version, fields = VALID["FIX44-new-order-single"]
    f = _replace(54, "Z")(_replace(38, "abc")(_drop(11)(list(fields))))
    r = ours(build(version, f))
    assert r is not None and (r.reason, r.tag) == (Reason.INVALID_VALUE, 54)  # 54 comes before 38


def test_nested_group_resumes_parent_and_message() -> None:
    """After a nested group ends, the following fields belong to the parent instance, then the body."""
    version, fields = VALID["FIX44-new-order-single-nested"]
    assert ours(build(version, fields)) is None
    # 80 (AllocQty) after the nested group is still in the NoAllocs instance: twice is a duplicate
    f = _insert_after(80, (80, "1"))(list(fields))
    r = ours(build(version, f))
    assert r is not None and (r.reason, r.tag) == (Reason.DUPLICATE_TAG, 80)
    # a message ending inside a nested group
    r = ours(build(version, list(fields)[: list(fields).index((538, "1")) + 1]))
    assert r is not None and r.reason is Reason.MISSING_REQUIRED


# -- property tests: random mutations of the valid corpus ---------------------------------------------

_DICTS = {v: load_for_version(v.encode()) for v in (FIX42, FIX44, FIXT)}
# Field types QuickFIX does not check (string convertor or no convertor at all), or checks more
# loosely: LENGTH and NUMINGROUP accept a '-' sign; UTCTIMESTAMP accepts a trailing '.'.
_QF_LOOSE_TYPES = {"LOCALMKTDATE", "MONTHYEAR", "DAYOFMONTH", "TAGNUM", "LENGTH", "NUMINGROUP"}
_DATA_TYPES = {"DATA", "XMLDATA"}


def _ftype(version: str, msg_type: bytes, tag: bytes) -> str | None:
    spec = _DICTS[version]._messages.get(msg_type)
    f = spec.known.get(tag) if spec is not None else None
    return f.type if f is not None else None


def _depths(version: str, fields: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """For each field: its repeating-group nesting depth (0: not in a group; a NumInGroup field has
    the depth of the instance it is in) and the section (0 header, 1 body) of its outermost group,
    from the compiled tables."""
    spec = _DICTS[version]._messages[fields[0][1]]
    out, stack, section = [], [], 1
    for tag, _value in fields:
        while stack and tag not in stack[-1].members:
            stack.pop()
        e = stack[-1].members.get(tag) if stack else spec.lookup.get(tag)
        if not stack and e is not None:
            section = e[0]
        out.append((len(stack), section))
        if e is not None and e[1] == _C_GROUP:  # a NumInGroup: its members follow
            stack.append(e[2])
    return out


CORPUS = sorted(VALID)
_printable = st.binary(min_size=1, max_size=24).map(lambda b: bytes(32 + c % 95 for c in b))
_any_bytes = st.binary(min_size=0, max_size=40)
_SAMPLES = [
    b"0",
    b"1",
    b"-1",
    b"Y",
    b"N",
    b"1.5",
    b"-0",
    b"20240315",
    b"202403",
    b"20240315-14:30:00",
    b"14:30:00",
    b"999999999999",
    b"1 2",
    b"A",
    b"2147483648",
    b"00000000000000000001",
]


@st.composite
def mutation(draw, families=("value", "drop", "dup", "tag")):
    """(version, original fields, mutated fields, family, index of the mutated field)."""
    version, fields = VALID[draw(st.sampled_from(CORPUS))]
    original = split(build(version, fields))[1]
    pairs = list(original)
    family = draw(st.sampled_from(families))
    i = draw(st.integers(1, len(pairs) - 1)) if len(pairs) > 1 else 0
    if family == "value":
        orig = pairs[i][1]
        value = draw(
            st.one_of(
                _printable,
                st.sampled_from(_SAMPLES),
                st.integers(0, len(orig)).map(lambda k, o=orig: o[:k] + o[k + 1 :] if k < len(o) else o + b"0"),
            )
        )
        assume(value)
        pairs[i] = (pairs[i][0], value)
    elif family == "drop":
        del pairs[i]
    elif family == "dup":
        pairs.insert(i + 1, pairs[i])
    else:
        tag = draw(st.one_of(st.integers(1, 1200), st.integers(5000, 5010), st.integers(1, 99999)))
        pairs[i] = (str(tag).encode(), pairs[i][1])
    return version, original, pairs, family, i


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutation(), junk=_any_bytes, junk_tag=st.binary(min_size=1, max_size=12))
def test_mutations_never_crash(case, junk: bytes, junk_tag: bytes) -> None:
    version, _original, pairs, _family, i = case
    dd = _DICTS[version]
    i = min(i, len(pairs) - 1)
    for mode in ("strict", "lenient"):
        for fields in (
            pairs,
            [*pairs[:i], (pairs[i][0], junk), *pairs[i + 1 :]],  # any bytes, SOH and empty too
            [*pairs[:i], (junk_tag, pairs[i][1]), *pairs[i + 1 :]],
            pairs[:i],
            [],
        ):
            r = dd.validate(pairs[0][1], fields, mode=mode)
            assert r is None or (isinstance(r, Refusal) and isinstance(r.text, str) and r.text)
        r = dd.validate(junk, pairs, mode=mode)
        assert r is None or isinstance(r, Refusal)


def _qf_comparable(
    version: str, original: list[tuple[bytes, bytes]], pairs: list[tuple[bytes, bytes]], family: str, i: int
) -> bool:
    """The mutations on which QuickFIX and we must agree; the others hit a KNOWN_DIFFERENCES case."""
    msg_type = original[0][1]
    depth, section = _depths(version, original)[i]
    if depth > (1 if family == "dup" else 0) or (depth and section == 0):
        # QuickFIX checks no values inside groups, opens instances its own way, and never compares
        # the count of a nested group or of a header group
        return False
    if family in ("value", "tag"):
        tag, value = pairs[i]
        ftype = _ftype(version, msg_type, tag)
        if ftype in _QF_LOOSE_TYPES or ftype in _DATA_TYPES:
            return False
        if ftype == "UTCTIMESTAMP" and value.endswith(b"."):
            return False
        entry = _DICTS[version]._messages[msg_type].lookup.get(tag)
        if entry is not None and entry[1] == _C_GROUP and value.startswith(b"-"):
            return False  # QuickFIX reads NumInGroup "-0" as 0
    # QuickFIX does not check the required header fields of FIXT application messages
    fixt_app_header = (
        version == FIXT
        and msg_type.decode() not in QF_ADMIN
        and family in ("drop", "tag")
        and original[i][0] in (b"49", b"56", b"34", b"52")
    )
    return not fixt_app_header


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutation())
def test_mutations_agree_with_quickfix(case, qf: QuickFix) -> None:
    version, original, pairs, family, i = case
    assume(_qf_comparable(version, original, pairs, family, i))
    raw = build(version, pairs)
    refusal = _DICTS[version].validate(pairs[0][1], pairs)
    qf_exc = qf.verdict(raw)
    assert (refusal is None) == (qf_exc is None), (family, pairs[i] if i < len(pairs) else None, refusal, qf_exc)


_NO_PLANS: dict[str, DataDictionary] = {}


def _no_plans(version: str) -> DataDictionary:
    """The same dictionary with validate()'s fast path (cached plans) switched off."""
    if version not in _NO_PLANS:
        dd = load_for_version(version.encode())
        _NO_PLANS[version] = nd = DataDictionary.load(*dd.paths)
        nd.max_plans = 0
    return _NO_PLANS[version]


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutation())
def test_fast_path_gives_the_full_scan_verdict(case) -> None:
    """The plan cached for a tag sequence must never change a verdict, refusal text included."""
    version, original, pairs, _family, _i = case
    dd, slow = _DICTS[version], _no_plans(version)
    for mode in ("strict", "lenient"):
        assert dd.validate(original[0][1], original, mode=mode) is None  # warms the plan
        for fields in (pairs, original):
            assert dd.validate(fields[0][1], fields, mode=mode) == slow.validate(fields[0][1], fields, mode=mode)


def test_fast_path_is_not_fooled_by_tags_containing_the_key_separator() -> None:
    """Tags come from a framer and cannot contain "=", but validate() must not rely on it."""
    dd = DataDictionary.load(SPECS / "FIX44.xml")
    _, pairs = split(build(*VALID["FIX44-new-order-single"]))
    assert dd.validate(b"D", pairs, mode="lenient") is None  # plan for ... 55, 54 ...
    i = [t for t, _ in pairs].index(b"55")
    assert pairs[i + 1][0] == b"54"
    merged = [*pairs[:i], (b"55=54", pairs[i][1]), *pairs[i + 2 :]]  # same joined key, one field less
    assert dd.validate(b"D", merged, mode="lenient") is not None
    pairs.append((b"7001", b"x"))
    assert dd.validate(b"D", pairs, mode="lenient") is None
    # a plan is never made when a tag holds "=": two such messages could share a key and a count
    odd = [*pairs[:-1], (b"7001=7002", b"x")]
    assert dd.validate(b"D", odd, mode="lenient") is None
    assert not [k for k in dd._messages[b"D"].plans[1] if b"7001=7002" in k]


def test_fast_path_plans_are_bounded_and_reset_with_the_group_ceiling() -> None:
    dd = DataDictionary.load(SPECS / "FIX44.xml")
    dd.max_plans = 3
    version, fields = VALID["FIX44-md-snapshot"]
    for n in range(1, 8):
        pairs = split(build(version, fields[:-7] + [(268, n)] + [(269, "0"), (270, "1")] * n))[1]
        assert dd.validate(b"W", pairs) is None
        assert len(dd._messages[b"W"].plans[0]) <= 3
    dd.max_group_count = 2  # the cached plan for 7 entries must not outlive the new ceiling
    assert dd.validate(b"W", pairs).reason is Reason.GROUP_COUNT_EXCEEDED  # type: ignore[union-attr]


def test_timing_report(capsys) -> None:
    """Not an assertion: prints µs per validate() (cached plan: the same field list again and again)."""
    for name in (
        "FIX44-new-order-single",
        "FIX44-execution-report",
        "FIX44-md-snapshot",
        "FIXT-new-order-single-nested",
    ):
        version, fields = VALID[name]
        raw = build(version, fields)
        dd = _DICTS[version]
        pairs = split(raw)[1]
        mt = pairs[0][1]
        n = 20000
        t = min(timeit.repeat(lambda dd=dd, mt=mt, pairs=pairs: dd.validate(mt, pairs), number=n, repeat=3)) / n
        with capsys.disabled():
            print(f"\n  {name}: {len(raw)} bytes, {len(pairs)} fields: {t * 1e6:.2f} µs/validate")
