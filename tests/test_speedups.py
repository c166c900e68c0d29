"""The C accelerator (fixproxy/_speedups.c) against the pure-Python reference, on the same inputs.

The accelerator may only make the common case faster: for any byte stream, any chunking and any
limits, the decoder must return the same messages and errors with it and without it, and every
message must get the same `check_syntax` verdict, fields, index and dictionary verdict.
"""

from __future__ import annotations

import gc
import hashlib
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fixproxy import codec, dictionary
from fixproxy.codec import Decoder, FrameError, Limits, Message, encode
from tests.fixgen import FIX42, FIX44, FIXT11, field_bytes, frame, real_messages


def test_speedups_are_built_and_used() -> None:
    """`make test` builds the extension: the suite must exercise it, not silently fall back."""
    assert codec.SPEEDUPS and codec._scan is not None
    real = real_messages(FIX44)
    first, msg = Decoder().feed(real["logon"] + real["new_order_single"])
    assert isinstance(first, Message) and first._checked_with is None  # a new BeginString: Python's path
    assert isinstance(msg, Message)
    assert msg._checked_with is codec.DEFAULT_LIMITS  # split by C, under the decoder's limits
    assert msg._index is None  # built when asked for, not by the scanner
    assert msg.index()[b"11"] == b"ORD-1"
    # Not tracked by the garbage collector (nothing in a Message can lead back to it): its walks
    # skip the messages the audit trail holds until its next flush. Python's Messages still are.
    assert not gc.is_tracked(msg) and not gc.is_tracked(msg.tags) and not gc.is_tracked(msg.values)
    assert gc.is_tracked(first)


def _decode(chunks: list[bytes], limits: Limits, pure: bool) -> list[tuple]:
    saved = codec._scan
    if pure:
        codec._scan = None
    try:
        d = Decoder(limits)
        items: list = []
        for c in chunks:
            items.extend(d.feed(c))
        out: list[tuple] = []
        for it in items:
            if isinstance(it, FrameError):
                out.append(("error", it.reason, it.detail, it.skipped))
                continue
            refusal = it.check_syntax(limits)
            verdict = None if refusal is None else (refusal.reason, refusal.text, refusal.tag)
            fields = None if refusal is not None else (it.tags, it.values, it.index(), it.fields)
            out.append(("msg", it.raw, it.begin_string, it.msg_type, it.body_start, it.trailer_start,
                        verdict, fields))
        out.append(("buffered", d.buffered))
        return out
    finally:
        codec._scan = saved


def _chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


_REAL = [raw for v in (FIX42, FIX44, FIXT11) for raw in real_messages(v).values()]

# Bodies that frame fine but that only the careful path may judge.
_TRICKY_BODIES = [
    field_bytes([(35, "D"), (49, "A"), (49, "B")]),  # repeated header tag
    field_bytes([(35, "D"), (58, "a=b")]),  # '=' inside a value: legal
    field_bytes([(35, "D"), (58, "")]),  # empty value
    field_bytes([(35, "D"), ("058", "x")]),  # leading zero
    field_bytes([(35, "D"), (123456, "x")]),  # 6-digit tag
    field_bytes([(35, "D"), (9, "5")]),  # envelope tag in the body
    field_bytes([(35, "D"), (95, "3"), (96, "a\x01b")]),  # data field holding SOH
    field_bytes([(35, "D"), (95, "9"), (96, "a")]),  # data field of the wrong length
    b"35=D\x0149=A\x01x\x01",  # a field without '='
    b"35=D\x0149=A\x01=v\x01",  # an empty tag
    b"35=D\x0155=A\x01\x01",  # an empty field
    field_bytes([(35, "D"), (447, "D"), (448, "X"), (447, "C")]),  # a repeated group tag: allowed
    field_bytes([(35, "D")] + [(58, "x")] * 1100),  # more fields than max_fields
]
_TRICKY = [frame(FIX44, b) for b in _TRICKY_BODIES] + [
    frame(FIX44, field_bytes([(35, "0")]), check="999"),
    frame(FIX44, field_bytes([(35, "0")]), body_length="7x"),
    frame(FIX44, field_bytes([(35, "0")]), body_length=3),
    frame(FIX44, field_bytes([(35, "0")]), body_length=30),
    frame("FIX.4.3", field_bytes([(35, "0")])),
    frame("FIX.9.9", field_bytes([(35, "0")])),
    b"garbage before\x01" + _REAL[0],
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.integers(0, len(_REAL) + len(_TRICKY) - 1), min_size=1, max_size=12),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    max_fields=st.sampled_from([1024, 8]),
    max_tag_digits=st.sampled_from([5, 3, 7]),
    max_size=st.sampled_from([65536, 200]),
)
def test_same_verdicts_with_and_without_c(picks: list[int], flips: list[tuple[int, int]], cuts: list[int],
                                          max_fields: int, max_tag_digits: int, max_size: int) -> None:
    pool = _REAL + _TRICKY
    data = bytearray(b"".join(pool[i] for i in picks))
    for at, byte in flips:
        data[at % len(data)] = byte
    chunks = _chunk(bytes(data), cuts)
    limits = Limits(max_message_size=max_size, max_fields=max_fields, max_tag_digits=max_tag_digits)
    assert _decode(chunks, limits, pure=False) == _decode(chunks, limits, pure=True)


def test_every_tricky_case_agrees_in_one_read_and_byte_by_byte() -> None:
    for raw in _REAL + _TRICKY:
        for chunks in ([raw], [raw[i:i + 1] for i in range(len(raw))]):
            assert _decode(chunks, codec.DEFAULT_LIMITS, pure=False) == _decode(
                chunks, codec.DEFAULT_LIMITS, pure=True), raw


def test_c_split_is_not_trusted_under_other_limits() -> None:
    """A message split under one Limits is checked again under another (the verdict may differ)."""
    raw = frame(FIX44, field_bytes([(35, "0"), (49, "A"), (56, "B"), (34, "1"), (12345, "x")]))
    msg = Decoder().feed(raw)[0]
    assert isinstance(msg, Message) and msg.check_syntax() is None
    refusal = msg.check_syntax(Limits(max_tag_digits=4))
    assert refusal is not None and refusal.reason.value == "bad_tag"


_VALUES = st.one_of(
    st.sampled_from([b"0", b"1", b"-1", b"1.5", b"-.5", b"5.", b".", b"-", b"1.2.3", b"", b"007",
                     b"18446744073709551615", b"18446744073709551616", b"0018446744073709551615",
                     b"2147483648", b"20240315-13:45:30.123", b"Y", b"N", b"A B", b"abc"]),
    st.binary(max_size=24),
)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_VALUES, min_size=1, max_size=12), data=st.data())
def test_plan_checks_agree(values: list[bytes], data: st.DataObject) -> None:
    """Every check code the plans use, in C and in Python, on the same values."""
    enum = frozenset({b"1", b"2", b"Y", b"abc"})
    args = {
        dictionary._C_NONE: None,
        dictionary._C_ENUM: enum,
        dictionary._C_UINT: dictionary._UINT64_MAX,
        dictionary._C_INT: None,
        dictionary._C_FLOAT: None,
        dictionary._C_FUNC: lambda v: v.startswith(b"2024"),
        dictionary._C_MULTI: enum,
        dictionary._C_COUNT: b"1",
    }
    checks = tuple((i, code, args[code]) for i in range(len(values))
                   for code in [data.draw(st.sampled_from(sorted(args)))])
    c = dictionary._plan_passes(checks, values)
    assert c == dictionary._py_plan_passes(checks, values)
    for check in checks:  # each check on its own too: one failing check must not hide another
        assert dictionary._plan_passes((check,), values) == \
            dictionary._py_plan_passes((check,), values)


def _verdict(r: object) -> object:
    return None if r is None else (r.reason, r.text, r.tag)  # type: ignore[attr-defined]


def test_inspector_validator_agrees_with_validate_before_and_after_its_plans_exist() -> None:
    """`DataDictionary.validator` inlines the plan fast path: every verdict must equal `validate`'s,
    on the first message of a shape (no plan yet) and on later ones (plan hit), good values or bad."""
    from fixproxy.codec import encode, replace_fields
    from fixproxy.dictionary import load_for_version

    for begin in (FIX42, FIX44, FIXT11):
        dd = load_for_version(begin)
        real = real_messages(begin)
        bad_values = {b"54": b"Z", b"38": b"abc", b"44": b"1.2.3", b"60": b"2024-bad", b"40": b"", b"59": b"9"}
        for mode in ("strict", "lenient"):
            check = dd.validator(mode)
            for raw in [*real.values(), encode(begin, [(35, "D"), (49, "A"), (56, "B"), (34, 2), (9999, "x")])]:
                variants = [raw]
                first = Decoder().feed(raw + raw)[1]  # the second one: split by C
                assert isinstance(first, Message)
                for tag, val in bad_values.items():
                    if val and first.check_syntax() is None and tag in first.index():
                        variants.append(replace_fields(first, {tag: val}))
                for v in variants:
                    for _ in range(2):  # without, then with the plan of this shape
                        msg = Decoder().feed(v + v)[1]
                        assert isinstance(msg, Message) and msg.check_syntax() is None
                        want = dd.validate(msg.msg_type, msg.fields, mode=mode)
                        assert _verdict(check(msg)) == _verdict(want), (mode, v)
    assert dictionary.load_for_version(FIX44).validator("off")(msg) is None


_TIMESTAMPS = st.one_of(
    st.sampled_from([b"20240315-13:45:30", b"20240315-13:45:30.123", b"20240315-13:45:30.123456789",
                     b"20241315-13:45:30", b"20240300-13:45:30", b"20240332-13:45:30", b"20240315-24:00:00",
                     b"20240315-23:60:00", b"20240315-23:59:60", b"20240315-23:59:61", b"20240315-13:45:30.",
                     b"20240315-13:45:30.1234567890", b"20240315 13:45:30", b"2024031-13:45:30", b"Y", b"N", b"YN",
                     b"", b"x", b"20240315-13:45:30.12a", b"\xff"]),
    st.binary(min_size=17, max_size=28),
    st.from_regex(rb"[0-9]{8}-[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,10})?", fullmatch=True),
)


@settings(max_examples=500, deadline=None)
@given(val=_TIMESTAMPS)
def test_timestamp_char_and_boolean_checks_done_in_c_agree(val: bytes) -> None:
    for fn in (dictionary._is_timestamp, dictionary._is_char, dictionary._is_boolean):
        checks = ((0, dictionary._C_FUNC, fn),)
        assert dictionary._plan_passes(checks, [val]) == \
            dictionary._py_plan_passes(checks, [val]), (fn, val)


# ---- audit rows -------------------------------------------------------------------------------

_SEQS = st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
                  st.binary(max_size=24), st.from_regex(rb"\A0{0,3}[0-9]{1,22}\Z"))
_MSG_TYPES = st.one_of(st.sampled_from([b"D", b"8", b"AE", b"0", b'"', b"\\", b"A\x01", b"\xe9", b""]),
                       st.binary(max_size=20), st.text(max_size=3))
_RAWS = st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(memoryview))
_OUTCOMES = st.sampled_from(["forwarded", "refused", "dropped", "forwarded\u00e9"])
_REASONS = st.one_of(st.none(), st.sampled_from(["checksum_mismatch", 'quo"te', "\u2603"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_SEQS, _MSG_TYPES, _RAWS, _OUTCOMES, _REASONS), max_size=12))
def test_audit_rows_same_text_as_python(items: list[tuple]) -> None:
    """The audit trail's rows and digest from C are the text audit.py renders, byte for byte."""
    from fixproxy import audit

    assert audit._audit_rows is not None  # built against OpenSSL here, so the suite exercises it
    assert audit._audit_rows(items, audit._row) == audit._rows(items)


def test_audit_rows_errors_are_raised_not_swallowed() -> None:
    from fixproxy import audit

    with pytest.raises(TypeError):
        audit._audit_rows([(1, b"D", b"x", "forwarded")], audit._row)  # a 4-tuple
    with pytest.raises(TypeError):
        audit._audit_rows([(1, b"D", "not bytes", "forwarded", None)], audit._row)

    def boom(item: tuple) -> str:
        raise RuntimeError("row failed")

    with pytest.raises(RuntimeError, match="row failed"):
        audit._audit_rows([(1, b"D", b"x", "refused", "r")], boom)
    # the common row never calls the Python function
    rows = audit._audit_rows([(b"007", b"D", b"x", "forwarded", None)], boom)
    assert rows == f'[[7,"D",1,"forwarded",null,"{hashlib.sha256(b"x").hexdigest()}"]]'


def test_audit_rows_take_forwarded_messages_as_python_does() -> None:
    """The proxy hands the trail its forwarded Messages themselves: MsgSeqNum as received (leading
    zeros, none at all), split by C or not split yet, the same text either way."""
    from fixproxy import audit

    hb = [(35, "0"), (49, "A"), (56, "B")]
    variants = [encode("FIX.4.4", [*hb, (34, seq), (52, "20240315-13:45:30")]) for seq in ("2", "0002", "77")]
    variants.append(encode("FIX.4.4", hb))  # no MsgSeqNum at all
    msgs = Decoder().feed(b"".join([variants[0], *variants]))[1:]  # the first one primes the C scanner
    unsplit = [Message(m.raw, m.begin_string, m.msg_type, m.body_start, m.trailer_start) for m in msgs]
    assert all(m._tags is not None for m in msgs) and all(m._tags is None for m in unsplit)
    items = [*msgs, (b"7", b"D", variants[0], "refused", "x"), *unsplit]
    assert audit._audit_rows(items, audit._row) == audit._rows(items)
    rows = json.loads(audit._audit_rows(items, audit._row))
    assert [r[0] for r in rows] == [2, 2, 77, None, 7, 2, 2, 77, None]


# ---- the session's header checks ----------------------------------------------------------------

_STEP = st.fixed_dictionaries({
    "who": st.sampled_from(["A", "B"]),
    "side": st.sampled_from(["oms", "oms", "oms", "ats"]),
    "mt": st.sampled_from(["D", "D", "D", "F", "G", "H", "8", "9", "0", "1", "j", "AE", "X", "4", "5"]),
    # mostly good headers (a session closes at most bad ones), each bad kind now and then
    "seq": st.sampled_from(["next"] * 40 + ["gap", "low", "low1", "zeros", "zeros", "none", "huge", "word"]),
    "possdup": st.sampled_from([None] * 12 + ["Y", "N"]),
    "comp": st.sampled_from(["ok"] * 30 + ["sender", "target"]),
    "extra": st.sampled_from([None] * 20 + ["115", "128", "dup11", "dup11"]),
    "time": st.sampled_from(["now"] * 20 + ["stale", "none", "short"]),
    "clordid": st.sampled_from(["C1", "C2", "C3", "C9"]),
    "orderid": st.sampled_from([None, "O1", "O2", "NONE"]),
})


def _session_world():
    from fixproxy.leakguard import LeakGuard
    from fixproxy.policy import RateLimit, SessionPolicy, ValidationMode
    from fixproxy.session import SessionInspector, SessionState

    clock = [1_710_000_000.0]
    guard = LeakGuard(clock=lambda: clock[0])
    dd = dictionary.load_for_version(b"FIX.4.4")
    states = {}
    for who in ("A", "B"):
        policy = SessionPolicy(name=f"OMS{who}", begin_string="FIX.4.4", sender_comp_id=f"OMS{who}",
                               target_comp_id="ATS",
                               validation=ValidationMode.OFF if who == "A" else ValidationMode.LENIENT,
                               allowed_inbound=["D", "F", "G", "H", "AE"] if who == "A" else None,
                               allowed_outbound=["8", "9", "j"] if who == "A" else None,
                               rate_limit=RateLimit(rate=5, burst=3, disconnect_after=4))
        states[who] = SessionState(policy)

    def connect(who: str) -> SessionInspector:  # a new connection of the session, as the proxy makes
        # A validates nothing (so every order reaches the leak guard) and allows a few MsgTypes; B
        # validates leniently and allows any MsgType. The dictionary check runs the same way on
        # both paths; what differs is what comes before and after it.
        return SessionInspector(lambda _m: states[who], validator=lambda p: dd.validator(p.validation.value),
                                clock=lambda: clock[0], leak_guard=guard)

    return clock, guard, connect


def _run_session_steps(steps: list[dict], fast: bool) -> list:
    from fixproxy import session
    from fixproxy.session import utc_timestamp

    saved = session._session_fast
    if not fast:
        session._session_fast = None
    try:
        clock, guard, connect = _session_world()
        insp = {}
        seqs = {}
        out: list = []

        def send(who: str, side: str, fields: list) -> None:
            raw = encode("FIX.4.4", fields)
            res = (insp[who].from_initiator if side == "oms" else insp[who].from_acceptor)(raw, 1.0)
            out.append((who, side, res.to_acceptor, res.to_initiator, [m.raw for m in res.forwarded],
                        [(m.raw, e.reason, e.outcome, e.detail) for m, e in res.refused],
                        [(e.reason, e.outcome, e.detail) for e in res.events], res.close and res.close.reason,
                        res.logon is not None))

        def logon(who: str) -> None:  # a new connection, both sides resetting their numbers
            insp[who] = connect(who)
            ts = utc_timestamp(clock[0])
            for side, me, other in (("oms", f"OMS{who}", "ATS"), ("ats", "ATS", f"OMS{who}")):
                send(who, side, [(35, "A"), (49, me), (56, other), (34, 1), (52, ts), (98, 0), (108, 30), (141, "Y")])
                seqs[(who, side)] = 2

        for who in ("A", "B"):
            logon(who)
        for step in steps:
            clock[0] += 0.05
            who, side = step["who"], step["side"]
            if insp[who].closed is not None:
                out.append(("closed", who, insp[who].closed.reason))
                logon(who)
            me, other = (f"OMS{who}", "ATS") if side == "oms" else ("ATS", f"OMS{who}")
            if step["comp"] == "sender":
                me = "EVIL"
            elif step["comp"] == "target":
                other = "EVIL"
            n = seqs[(who, side)]
            seq: object = {"next": n, "gap": n + 3, "low": max(1, n - 2), "low1": n - 1, "zeros": f"000{n}",
                           "none": None, "huge": "9" * 25, "word": "12a"}[step["seq"]]
            if step["seq"] in ("next", "zeros"):
                seqs[(who, side)] = n + 1
            elif step["seq"] == "gap":
                seqs[(who, side)] = n + 4
            now = utc_timestamp(clock[0])
            stale = utc_timestamp(clock[0] - 3600)
            st_value = {"now": now, "stale": stale, "none": None, "short": now[:10]}[step["time"]]
            fields: list = [(35, step["mt"]), (49, me), (56, other)]
            if seq is not None:
                fields.append((34, seq))
            if step["possdup"]:
                fields.append((43, step["possdup"]))
            if st_value is not None:
                fields.append((52, st_value))
            if step["extra"] in ("115", "128"):
                fields.append((int(step["extra"]), "SOMEONE"))
            cl, oid, t60 = (11, step["clordid"]), (37, step["orderid"] or "O1"), (60, now)
            fields += {  # the body of each type as FIX 4.4 has it, so that B's dictionary passes them
                "D": [cl, (21, "1"), (55, "VOD.L"), (54, "1"), t60, (38, 100), (40, "1")],
                "F": [(41, "C1"), cl, (55, "VOD.L"), (54, "1"), t60, (38, 100), oid],
                "G": [(41, "C1"), cl, (21, "1"), (55, "VOD.L"), (54, "1"), t60, (38, 100), (40, "1"), oid],
                "H": [cl, (55, "VOD.L"), (54, "1"), oid],
                "8": [oid, cl, (17, "E1"), (150, "0"), (39, "0"), (55, "VOD.L"), (54, "1"), (151, 100), (14, 0),
                      (6, 0)],
                "9": [oid, cl, (41, "C1"), (39, "8"), (434, "1")],
                "4": [(36, n + 5)],
            }.get(step["mt"], [cl])
            if step["orderid"] is None:
                fields = [f for f in fields if f[0] != 37]
            if step["extra"] == "dup11":
                fields.append((11, "C9"))
            send(who, side, fields)
        out.append((guard.blocked, guard.cross_refs, guard.spoofing, guard.orders, list(guard.round_trips),
                    {w: (i.stats[session.INBOUND].as_dict(), i.stats[session.OUTBOUND].as_dict(),
                         i.closed and i.closed.reason, i.logout_seen, i._ats_logon_seen) for w, i in insp.items()}))
        return out
    finally:
        session._session_fast = saved


def _steps(*changes: dict) -> list[dict]:
    """Scripted steps: an order of A's to the ATS, changed as given."""
    base = {"who": "A", "side": "oms", "mt": "D", "seq": "next", "possdup": None, "comp": "ok", "extra": None,
            "time": "now", "clordid": "C1", "orderid": None}
    return [base | c for c in changes]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_STEP, min_size=1, max_size=60))
# Cases a random mix may take long to meet, each the undoing of one of session_fast's conditions:
@example(_steps({"who": "B", "mt": "4"}, {"who": "B"}))  # SequenceReset-Reset: the next number moves
@example(_steps({}, {}, {}, {}, {"possdup": "Y"}, {"possdup": "Y"}))  # PossDup: no rate limit
@example(_steps({"extra": "dup11"}, {"side": "ats", "mt": "8", "clordid": "C9", "orderid": "O1"}))  # last 11
@example(_steps({}, {"seq": "low1"}))  # one below the next number
@example(_steps({"who": "B", "mt": "A"}, {"who": "B", "side": "ats", "mt": "A"}))  # Logons inside the session
@example(_steps({"who": "B", "mt": "5"}, {"who": "B"}))  # Logout
@example(_steps({"extra": "115"}))  # OnBehalfOfCompID: the spoofing check
@example(_steps({"extra": "128"}))  # DeliverToCompID: the spoofing check
@example(_steps({"comp": "target"}))
@example(_steps({"time": "stale"}, {"time": "short"}))
def test_session_fast_path_decides_as_python_does(steps: list[dict]) -> None:
    """session_fast (C) may only skip work: for any mix of good and bad headers (CompIDs, MsgSeqNum
    gaps, repeats, leading zeros, PossDup, MsgTypes, OnBehalfOf, SendingTime) over two sessions
    sharing a leak guard, the inspector's output and counters are the same with it and without."""
    from fixproxy import session

    assert session._session_fast is not None
    assert _run_session_steps(steps, fast=True) == _run_session_steps(steps, fast=False)


def test_session_fast_takes_the_common_message() -> None:
    """The fast path is really taken for an ordinary order (else the test above proves nothing)."""
    from fixproxy import session

    calls = []
    saved = session._session_fast

    def spy(*args):
        r = saved(*args)
        calls.append(r)
        return r

    session._session_fast = spy
    try:
        _run_session_steps([{"who": "A", "side": "oms", "mt": "D", "seq": "next", "possdup": None, "comp": "ok",
                             "extra": None, "time": "now", "clordid": "C1", "orderid": None}], fast=True)
    finally:
        session._session_fast = saved
    assert calls[-1] == (2, b"C1", None, None)  # the order: MsgSeqNum 2, ClOrdID, no OrderID, no OrigClOrdID


def test_session_fast_refuses_wrong_argument_types() -> None:
    from fixproxy import session

    real = real_messages(FIX44)
    msg = Decoder().feed(real["logon"] + real["new_order_single"])[-1]  # split by the C scanner
    assert msg._tags is not None
    with pytest.raises(TypeError):
        session._session_fast(msg, b"OMS1", b"ATS", 1, [b"D"], None)  # a list, not a set
    with pytest.raises(TypeError):
        session._session_fast(msg, b"OMS1", b"ATS", 1, None, ("lo", "hi"))  # str bounds
    with pytest.raises(TypeError):
        session._session_fast(b"not a message", b"OMS1", b"ATS", 1, None, None)


def test_the_leak_guards_clordid_dict_stays_out_of_the_garbage_collector() -> None:
    """The leak guard's ClOrdID -> (session, time) dict holds up to a million orders. One tracked
    value makes a dict tracked, and every full collection then walked all of it (4-22 ms at 320k
    orders, the p99 at 50k msg/s): its pairs are made untracked in C, so the dict never is."""
    from fixproxy import leakguard

    pair = codec._speedups.untracked_pair
    assert leakguard._pair is pair
    t = pair("OMS1", 1.5)
    assert t == ("OMS1", 1.5) and type(t) is tuple and not gc.is_tracked(t)
    assert gc.is_tracked(pair("OMS1", []))  # an item that can hold a cycle: left tracked
    with pytest.raises(TypeError):
        pair("OMS1")
    guard = leakguard.LeakGuard(max_orders=50)
    for i in range(200):  # claims, evictions, a ClOrdID two sessions use, replies that mark it owned
        guard.claim("S1", b"%d" % i, 1.0 + i)
        if i % 7 == 0:
            guard.claim("S2", b"%d" % i, 2.0 + i)
        guard.reply("S1", b"%d" % i, b"X%d" % i, 3.0 + i)
    gc.collect()
    guard.claim("S1", b"after", 500.0)
    assert not gc.is_tracked(guard._clordids) and len(guard._clordids) <= 60
