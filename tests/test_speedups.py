"""The C accelerator (fixproxy/_speedups.c) against the pure-Python reference, on the same inputs.

The accelerator may only make the common case faster: for any byte stream, any chunking and any
limits, the decoder must return the same messages and errors with it and without it, and every
message must get the same `check_syntax` verdict, fields, index and dictionary verdict.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixproxy import codec, dictionary
from fixproxy.codec import Decoder, FrameError, Limits, Message
from tests.fixgen import FIX42, FIX44, FIXT11, field_bytes, frame, real_messages


def test_speedups_are_built_and_used() -> None:
    """`make test` builds the extension: the suite must exercise it, not silently fall back."""
    assert codec.SPEEDUPS and codec._scan is not None
    real = real_messages(FIX44)
    first, msg = Decoder().feed(real["logon"] + real["new_order_single"])
    assert isinstance(first, Message) and first._checked_with is None  # a new BeginString: Python's path
    assert isinstance(msg, Message)
    assert msg._checked_with is codec.DEFAULT_LIMITS  # split by C, under the decoder's limits
    assert msg.index()[b"11"] == b"ORD-1"


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
    for whole in (True, False):
        assert audit._audit_rows(items, audit._row, whole) == audit._rows(items, whole)


def test_audit_rows_errors_are_raised_not_swallowed() -> None:
    from fixproxy import audit

    with pytest.raises(TypeError):
        audit._audit_rows([(1, b"D", b"x", "forwarded")], audit._row, True)  # a 4-tuple
    with pytest.raises(TypeError):
        audit._audit_rows([(1, b"D", "not bytes", "forwarded", None)], audit._row, True)

    def boom(item: tuple) -> str:
        raise RuntimeError("row failed")

    with pytest.raises(RuntimeError, match="row failed"):
        audit._audit_rows([(1, b"D", b"x", "refused", "r")], boom, False)
    # the common row never calls the Python function
    rows, whole = audit._audit_rows([(b"007", b"D", b"x", "forwarded", None)], boom, True)
    assert rows.startswith('[[7,"D",1,"forwarded",null,"') and whole == hashlib.sha256(b"x").hexdigest()
