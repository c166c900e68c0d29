"""The FIX codec: framing, integrity checks, syntax checks, resynchronisation, bounded buffering.

Properties (hypothesis) first, then one test per limit and reason code, then the corpus in
tests/data/corpus (regenerate with tests/data/corpus/make_corpus.py).
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest
from fixgen import (
    FIX42,
    FIX44,
    FIXT11,
    VERSIONS,
    Builder,
    body_of,
    field_bytes,
    frame,
    heartbeat,
    parse_fields,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixproxy.codec import (
    _SINGLE_HEADER_TAGS,
    DATA_LENGTH_TAGS,
    DEFAULT_LIMITS,
    SOH,
    Decoder,
    FrameError,
    Limits,
    Message,
    checksum,
    decode_one,
    encode,
    replace_fields,
)
from fixproxy.reasons import Category, Reason

CORPUS = Path(__file__).parent / "data" / "corpus"
T = "20240315-13:45:30.123"

# Examples per property: the whole file stays well under 30 s on a shared machine. For a longer
# hunt: FIXPROXY_CODEC_EXAMPLES_SCALE=20 pytest tests/test_codec.py
_SCALE = int(os.environ.get("FIXPROXY_CODEC_EXAMPLES_SCALE", "1"))
FAST = settings(max_examples=200 * _SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=60 * _SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
STREAMS = settings(SLOW, max_examples=80 * _SCALE)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def feed_all(data: bytes, decoder: Decoder | None = None,
             chunks: list[int] | None = None) -> list[Message | FrameError]:
    """Feed `data` whole, or cut at the offsets in `chunks`, and return every event."""
    d = decoder or Decoder()
    if chunks is None:
        return d.feed(data)
    out: list[Message | FrameError] = []
    prev = 0
    for cut in [*sorted(chunks), len(data)]:
        out += d.feed(data[prev:cut])
        prev = cut
    return out


def raws(events: list[Message | FrameError]) -> list[bytes]:
    return [e.raw for e in events if isinstance(e, Message)]


def refusals(events: list[Message | FrameError]) -> list[Reason]:
    """The reason of every refused event: FrameErrors, and Messages failing check_syntax."""
    out = []
    for e in events:
        if isinstance(e, FrameError):
            out.append(e.reason)
        else:
            r = e.check_syntax()
            if r is not None:
                out.append(r.reason)
    return out


def only_refusal(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Reason:
    """Decode `data`; it must hold exactly one refusal (valid messages aside): return its reason."""
    d = Decoder(limits)
    events = d.feed(data)
    found = []
    for e in events:
        if isinstance(e, FrameError):
            found.append(e.reason)
        else:
            r = e.check_syntax(limits)
            if r is not None:
                found.append(r.reason)
    assert len(found) == 1, events
    return found[0]


def event_bytes(e: Message | FrameError) -> bytes:
    return e.raw if isinstance(e, Message) else e.skipped


def nos44(**kw: object) -> bytes:
    return Builder(FIX44, seq=2).new_order_single(**kw)  # type: ignore[arg-type]


def hdr(msg_type: str = "D", seq: int = 2) -> list[tuple[object, object]]:
    return [(35, msg_type), (49, "OMS1"), (56, "EXCH"), (34, seq), (52, T)]


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------

_EXCLUDED_TAGS = {8, 9, 10, 35} | {int(t) for t in DATA_LENGTH_TAGS}
_SINGLE = {int(t) for t in _SINGLE_HEADER_TAGS}
_PRINTABLE = st.lists(st.integers(0x20, 0x7E), min_size=1, max_size=24).map(bytes)
# Without '=': a message of these takes check_syntax's fast path (unless it has a data field).
_PLAIN = _PRINTABLE.map(lambda b: b.replace(b"=", b"-"))
_ANY_BUT_SOH = st.binary(min_size=1, max_size=24).map(lambda b: b.replace(SOH, b"\x02"))
# Pieces that look like framing, to put inside data fields and garbage.
_TRICKY = (b"\x0110=000\x01", b"8=FIX.4.4\x019=5\x01", b"\x01\x01", b"==", b"\x0135=D\x01",
           b"8=FIX", b"8=", b"9=", b"\x01", b"10=", b"35=")

tags = st.integers(1, 99999).filter(lambda t: t not in _EXCLUDED_TAGS)
values = st.one_of(_PRINTABLE, _ANY_BUT_SOH)
msg_types = st.one_of(st.sampled_from(["0", "1", "2", "3", "4", "5", "A", "D", "F", "G", "8", "W",
                                       "AE", "BE", "U1"]).map(str.encode), _PRINTABLE)
data_values = st.lists(st.one_of(st.binary(max_size=8), st.sampled_from(_TRICKY)),
                       min_size=1, max_size=6).map(lambda parts: b"".join(parts) + b"\x01=")


@st.composite
def fix_fields(draw: st.DrawFn, max_fields: int = 60) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(BeginString, fields from 35= on) of a valid message: 1..max_fields random fields after
    MsgType, single-instance header tags at most once, optionally a 95/96 data field pair."""
    begin = draw(st.sampled_from([FIX42, FIX44, FIXT11]))
    value_style = draw(st.sampled_from([_PLAIN, values]))
    body = draw(st.lists(st.tuples(tags, value_style), min_size=1, max_size=max_fields))
    fields: list[tuple[bytes, bytes]] = [(b"35", draw(msg_types))]
    seen: set[int] = set()
    for tag, value in body:
        if tag in _SINGLE:
            if tag in seen:
                continue
            seen.add(tag)
        fields.append((str(tag).encode(), value))
    if draw(st.booleans()):
        data = draw(data_values)
        at = draw(st.integers(1, len(fields)))
        fields[at:at] = [(b"95", str(len(data)).encode()), (b"96", data)]
    return begin, fields


def fix_message(max_fields: int = 60) -> st.SearchStrategy[bytes]:
    return fix_fields(max_fields).map(lambda bf: encode(bf[0], bf[1]))


garbage = st.lists(st.one_of(st.binary(max_size=12), st.sampled_from(_TRICKY),
                             st.sampled_from([b"8=FIX.4.4\x019=99999999\x01", b"8=FIX.4.2\x019=60\x01",
                                              b"8=FIXT.1.1\x019=123456789012\x01"])),
                   max_size=8).map(b"".join)


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------

@FAST
@given(fix_fields())
def test_valid_message_round_trips_byte_exact(bf: tuple[bytes, list[tuple[bytes, bytes]]]) -> None:
    begin, fields = bf
    raw = encode(begin, fields)
    events = Decoder().feed(raw)
    assert len(events) == 1 and isinstance(events[0], Message), events
    msg = events[0]
    assert msg.raw == raw
    assert msg.begin_string == begin
    assert msg.msg_type == fields[0][1]
    assert msg.fields == fields  # lazy split, before any syntax check
    fresh = decode_one(raw)
    assert fresh.check_syntax() is None
    assert fresh.fields == fields  # split by check_syntax
    assert fresh.tags == [t for t, _ in fields] and fresh.values == [v for _, v in fields]
    assert fresh.body == raw[raw.index(b"\x0135=") + 1:raw.rindex(b"\x0110=") + 1]
    assert fresh.get(b"35") == fields[0][1]


@STREAMS
@given(st.lists(st.tuples(fix_message(20), garbage), min_size=1, max_size=5), st.data())
def test_chunking_does_not_change_the_result(items: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    stream = b"".join(m + g for m, g in items)
    whole_d = Decoder()
    whole = whole_d.feed(stream)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    chunk_d = Decoder()
    chunked = feed_all(stream, chunk_d, cuts)
    byte_d = Decoder()
    bytewise = feed_all(stream, byte_d, list(range(len(stream))))
    assert raws(chunked) == raws(whole)
    assert raws(bytewise) == raws(whole)
    # Every byte is accounted for exactly once: in a message, in a FrameError, or still buffered.
    for d, events in ((whole_d, whole), (chunk_d, chunked), (byte_d, bytewise)):
        assert b"".join(map(event_bytes, events)) + d._buf == stream
    # Garbage between messages costs nothing but itself, unless it holds a header of its own.
    if not any(b"8=FIX" in g for _, g in items):
        assert raws(whole) == [m for m, _ in items]


# After the altered message come F, then more (distinct) valid messages. While the decoder is left
# waiting (a BodyLength made longer), it is given heartbeats, up to more than max_message_size.
FILLER_MSGS = [heartbeat(seq) for seq in range(5000, 6100)]
assert sum(map(len, FILLER_MSGS)) > Limits().max_message_size


def _assert_resynchronised(altered: bytes, original: bytes, follower: bytes) -> None:
    """`altered` (a broken `original`) then `follower` and more valid messages: nothing but the
    original or those messages passes, and each of those is decoded, except one the decoder cannot
    see: a message that starts inside a frame delimited by its (wrong) BodyLength which then failed
    its CheckSum -- the decoder resumes after such a frame instead of rescanning it -- or inside a
    frame whose CheckSum matched by chance and that check_syntax refuses."""
    d = Decoder()
    tail = [follower, heartbeat(4000), heartbeat(4001)]
    events = d.feed(altered + b"".join(tail))
    i = 0
    while d.buffered:
        batch = FILLER_MSGS[i:i + 8]
        assert batch, "still waiting after more than max_message_size bytes"
        events += d.feed(b"".join(batch))
        tail += batch
        i += 8
    # The altered message itself is refused (or, after an insertion before or after it, comes out
    # byte-identical).
    first = events[0]
    assert (isinstance(first, FrameError) or first.raw == original
            or first.check_syntax() is not None), (altered, events)
    allowed = {original, *tail}
    passed = set()
    swallowing = []  # (start, end) offsets of the frames that may hide a valid message
    offset = 0
    for e in events:
        size = len(event_bytes(e))
        if isinstance(e, Message):
            if e.check_syntax() is None:
                assert e.raw in allowed, (altered, e)
                passed.add(offset)
            else:
                swallowing.append((offset, offset + size))
        elif e.reason is Reason.BAD_CHECKSUM:
            swallowing.append((offset, offset + size))
        offset += size
    start = len(altered)
    for v in tail:
        if start not in passed:
            assert any(a < start < b for a, b in swallowing), (altered, v, events)
        start += len(v)


@SLOW
@given(fix_message(12), fix_message(6), st.randoms(use_true_random=False))
def test_single_byte_change_is_never_accepted(msg: bytes, follower: bytes, rnd: random.Random) -> None:
    for i in range(len(msg)):
        new = rnd.choice([b for b in range(256) if b != msg[i]])
        altered = msg[:i] + bytes((new,)) + msg[i + 1:]
        _assert_resynchronised(altered, msg, follower)


@SLOW
@given(fix_message(12), fix_message(6))
def test_truncated_message_is_never_accepted(msg: bytes, follower: bytes) -> None:
    for k in range(1, len(msg)):
        _assert_resynchronised(msg[:k], msg, follower)


@SLOW
@given(fix_message(12), fix_message(6), st.randoms(use_true_random=False))
def test_inserted_byte_is_never_accepted(msg: bytes, follower: bytes, rnd: random.Random) -> None:
    for i in range(len(msg) + 1):
        altered = msg[:i] + bytes((rnd.randrange(256),)) + msg[i:]
        _assert_resynchronised(altered, msg, follower)


@STREAMS
@given(st.lists(st.one_of(garbage, fix_message(10), st.binary(max_size=300)), max_size=12),
       st.sampled_from([64, 100, 300, 65536]))
def test_buffer_never_exceeds_max_message_size(chunks: list[bytes], max_size: int) -> None:
    limits = Limits(max_message_size=max_size)
    d = Decoder(limits)
    fed = b""
    events: list[Message | FrameError] = []
    for chunk in chunks:
        events += d.feed(chunk)
        fed += chunk
        assert d.buffered <= limits.max_message_size
    assert b"".join(map(event_bytes, events)) + d._buf == fed
    for m in events:
        if isinstance(m, Message):
            assert len(m.raw) <= max_size


@FAST
@given(fix_fields(30), st.integers(0, 10**9), st.booleans(), st.data())
def test_replace_fields_rewrites_only_the_given_tags(bf: tuple[bytes, list[tuple[bytes, bytes]]],
                                                     new_seq: int, also_time: bool,
                                                     data: st.DataObject) -> None:
    begin, fields = bf
    fields = [f for f in fields if f[0] not in (b"34", b"52")]
    at = data.draw(st.integers(1, len(fields)))
    if fields[at - 1][0] == b"95":
        at += 1  # not between a length field and its data field
    fields[at:at] = [(b"34", b"7"), (b"52", T.encode())]
    raw = encode(begin, fields)
    msg = decode_one(raw)
    assert msg.check_syntax() is None
    changes = {b"34": str(new_seq).encode()}
    if also_time:
        changes[b"52"] = b"20250101-00:00:00.000"
    out = replace_fields(msg, changes)
    expected = [(t, changes.get(t, v)) for t, v in fields]
    assert out == encode(begin, expected)  # 9= and 10= recomputed, every other byte kept
    new = decode_one(out)
    assert new.check_syntax() is None
    assert new.fields == expected
    assert new.begin_string == begin


@FAST
@given(st.binary(max_size=2000), st.integers(0, 300))
def test_checksum_is_sum_mod_256(data: bytes, start: int) -> None:
    assert checksum(data) == sum(data) % 256
    start = min(start, len(data))
    assert checksum(data, start) == sum(data[start:]) % 256
    assert checksum(memoryview(data), 0, len(data) // 2) == sum(data[:len(data) // 2]) % 256


# ---------------------------------------------------------------------------------------------
# framing limits, one reason each
# ---------------------------------------------------------------------------------------------

def test_body_length_non_numeric() -> None:
    body = body_of(nos44())
    assert only_refusal(frame(FIX44, body, body_length="1x5")) is Reason.BAD_BODY_LENGTH
    assert only_refusal(frame(FIX44, body, body_length="")) is Reason.BAD_BODY_LENGTH
    assert only_refusal(frame(FIX44, body, body_length="-5")) is Reason.BAD_BODY_LENGTH


def test_body_length_too_many_digits() -> None:
    body = body_of(nos44())
    limit = Limits().max_body_length_digits
    padded = b"0" * (limit + 1 - len(str(len(body)))) + str(len(body)).encode()
    assert only_refusal(frame(FIX44, body, body_length=padded)) is Reason.BAD_BODY_LENGTH
    # At the limit, leading zeros are just digits.
    ok = b"0" * (limit - len(str(len(body)))) + str(len(body)).encode()
    assert refusals(Decoder().feed(frame(FIX44, body, body_length=ok))) == []


def test_declared_oversize_is_refused_from_the_header_alone() -> None:
    d = Decoder()
    events = d.feed(b"8=FIX.4.4\x019=99999999\x01")
    assert [e.reason for e in events if isinstance(e, FrameError)] == [Reason.OVERSIZE]
    assert d.buffered < 16
    # ... and what follows is a fresh start.
    nos = nos44()
    assert raws(d.feed(b"35=D\x01" + b"x" * 1000 + nos)) == [nos]


def test_body_length_short() -> None:
    nos = nos44()
    body = body_of(nos)
    events = Decoder().feed(frame(FIX44, body, body_length=len(body) - 1) + nos)
    assert refusals(events) == [Reason.BAD_BODY_LENGTH]
    assert raws(events) == [nos]


def test_body_length_long() -> None:
    nos = nos44()
    body = body_of(nos)
    d = Decoder()
    events = d.feed(frame(FIX44, body, body_length=len(body) + 3))
    assert events == [] and d.buffered > 0  # waiting: the message could still be longer
    events = d.feed(nos)
    assert refusals(events) == [Reason.BAD_BODY_LENGTH]
    assert raws(events) == [nos]


def test_checksum_wrong() -> None:
    nos = nos44()
    good = int(nos[-4:-1])
    events = Decoder().feed(nos[:-4] + b"%03d\x01" % ((good + 1) % 256) + nos)
    assert refusals(events) == [Reason.BAD_CHECKSUM]
    assert raws(events) == [nos]


def test_checksum_non_numeric() -> None:
    nos = nos44()
    assert only_refusal(nos[:-4] + b"1A3\x01") is Reason.BAD_CHECKSUM
    assert only_refusal(nos[:-4] + b" 12\x01") is Reason.BAD_CHECKSUM


@pytest.mark.parametrize("digits", [b"1", b"12", b"1234", b""])
def test_checksum_not_three_digits(digits: bytes) -> None:
    # Fixed: this was reported as BAD_BODY_LENGTH although 10= is exactly where BodyLength points.
    nos = nos44()
    events = Decoder().feed(nos[:-4] + digits + b"\x01" + nos)
    assert refusals(events) == [Reason.BAD_CHECKSUM]
    assert raws(events) == [nos]


def test_checksum_missing() -> None:
    # Without 10=NNN, BodyLength points at something else: indistinguishable from a wrong length.
    nos = nos44()
    events = Decoder().feed(nos[:nos.rindex(b"\x0110=") + 1] + nos)
    assert refusals(events) == [Reason.BAD_BODY_LENGTH]
    assert raws(events) == [nos]


def test_garbage_before_begin_string() -> None:
    nos = nos44()
    events = Decoder().feed(b"\x00\xffHELLO 8=FI 9=\x01" + nos)
    assert refusals(events) == [Reason.GARBLED]
    assert events[0].skipped == b"\x00\xffHELLO 8=FI 9=\x01"  # type: ignore[union-attr]
    assert raws(events) == [nos]


def test_nul_byte_is_not_a_header() -> None:
    # Fixed: the initial fast-path prefix b"\x00" matched a NUL byte, so "\x00<len>\x0135=..." with
    # a right CheckSum was accepted as a message with no 8= and no 9= (BeginString b"").
    body = b"35=0\x0149=OMS1\x0156=EXCH\x0134=1\x0152=" + T.encode() + b"\x01"
    raw = b"\x00" + str(len(body)).encode() + b"\x01" + body
    raw += b"10=%03d\x01" % checksum(raw)
    events = Decoder().feed(raw)
    assert raws(events) == []
    assert refusals(events) == [Reason.GARBLED]


@pytest.mark.parametrize("begin", [b"FIX.5.0", b"FIX.4.9", b"fix.4.4", b"FIXT.1.2", b""])
def test_unknown_begin_string(begin: bytes) -> None:
    assert only_refusal(frame(begin, body_of(nos44()))) is Reason.BAD_BEGIN_STRING


def test_begin_string_restricted_per_decoder() -> None:
    d = Decoder(begin_strings=[FIX44])
    nos42 = Builder(FIX42).new_order_single()
    nos = nos44()
    events = d.feed(nos42 + nos)
    assert refusals(events) == [Reason.BAD_BEGIN_STRING]
    assert raws(events) == [nos]
    with pytest.raises(ValueError):
        Decoder(begin_strings=[])


def test_begin_string_unterminated() -> None:
    assert only_refusal(b"8=FIX.4.4.4.4.4.4.4.4.4.4.4\x019=5\x0135=0\x01") is Reason.GARBLED


def test_body_length_not_second() -> None:
    assert only_refusal(b"8=FIX.4.4\x0135=0\x019=5\x01" + b"x" * 20) is Reason.GARBLED


def test_msg_type_not_third() -> None:
    raw = frame(FIX44, field_bytes([(49, "OMS1"), (35, "0"), (56, "EXCH"), (34, 2), (52, T)]))
    assert only_refusal(raw) is Reason.GARBLED


def test_msg_type_not_third_is_seen_before_the_body_arrives() -> None:
    d = Decoder()
    events = d.feed(b"8=FIX.4.4\x019=900\x0149=")
    assert refusals(events) == [Reason.GARBLED]
    assert d.buffered < 8


def test_empty_msg_type() -> None:
    raw = frame(FIX44, field_bytes([(35, ""), (49, "OMS1"), (56, "EXCH"), (34, 2), (52, T)]))
    assert only_refusal(raw) is Reason.GARBLED


def test_message_over_max_message_size() -> None:
    small = Limits(max_message_size=200)
    big = Builder(FIX44).new_order_single(account="A" * 100)
    assert len(big) > 200
    assert only_refusal(big, small) is Reason.OVERSIZE
    # Exactly at the limit is accepted; one byte more is not.
    exact = Limits(max_message_size=len(big))
    assert refusals(Decoder(exact).feed(big)) == []
    assert only_refusal(big, Limits(max_message_size=len(big) - 1)) is Reason.OVERSIZE
    # The default limit, with a real 70 kB message.
    huge = encode(FIX44, [*hdr("B"), (148, "x"), (58, "y" * 70_000)])
    assert only_refusal(huge) is Reason.OVERSIZE


# ---------------------------------------------------------------------------------------------
# syntax, one reason each
# ---------------------------------------------------------------------------------------------

def test_too_many_fields() -> None:
    limits = Limits(max_fields=10)
    ten = encode(FIX44, [*hdr("0"), *((20000 + i, "v") for i in range(5))])
    assert decode_one(ten).check_syntax(limits) is None
    eleven = encode(FIX44, [*hdr("0"), *((20000 + i, "v") for i in range(6))])
    assert only_refusal(eleven, limits) is Reason.TOO_MANY_FIELDS
    default = encode(FIX44, [*hdr("0"), *((20000 + i, "v") for i in range(1020))])
    assert only_refusal(default) is Reason.TOO_MANY_FIELDS


def _nos_with(*extra: tuple[object, object]) -> bytes:
    return encode(FIX44, [*hdr(), (11, "ORD-1"), *extra, (55, "AAPL"), (54, 1), (60, T), (38, 100),
                          (40, 1)])


@pytest.mark.parametrize("tag", [b"0", b"054", b"00", b"100000", b"5A", b"", b"-5", b" 55", b"\xff"])
def test_bad_tag(tag: bytes) -> None:
    raw = _nos_with((tag, "x"))
    assert only_refusal(raw) is Reason.BAD_TAG


def test_tag_digits_limit_is_configurable() -> None:
    raw = _nos_with((12345, "x"))
    assert decode_one(raw).check_syntax() is None
    assert decode_one(raw).check_syntax(Limits(max_tag_digits=4)).reason is Reason.BAD_TAG  # type: ignore[union-attr]


@pytest.mark.parametrize("tag", [58, 1, 34])
def test_empty_value(tag: int) -> None:
    assert only_refusal(_nos_with((tag, ""))) is Reason.EMPTY_VALUE


@pytest.mark.parametrize(("text", "reason"), [
    ("hello\x01world", Reason.SOH_IN_VALUE),  # no '=' after the SOH
    ("hello world\x01", Reason.SOH_IN_VALUE),  # empty "field" between two SOH
    ("call me\x01x=1", Reason.BAD_TAG),  # looks like tag=value, the tag is not a number
    ("abc\x01=def", Reason.BAD_TAG),  # empty tag
    ("a=100\x01200", Reason.SOH_IN_VALUE),  # fixed: the fast split read this as 58=a, 100=200
    ("x=1=2\x01y", Reason.SOH_IN_VALUE),
    ("\x01", Reason.EMPTY_VALUE),  # 58=<SOH><SOH>: 58 has no value
])
def test_soh_injected_into_text_is_refused(text: str, reason: Reason) -> None:
    raw = _nos_with((58, text))
    assert only_refusal(raw) is reason


def test_equals_in_values_cannot_shift_tags() -> None:
    # Fixed: counting '=' against fields let a value with an extra '=' and a field without one
    # cancel out, pairing tags with the wrong values on the fast path.
    raw = encode(FIX44, [*hdr(), (58, "p=49"), (100, "EVIL"), (55, "AAPL")])
    msg = decode_one(raw)
    assert msg.check_syntax() is None
    assert msg.get(b"58") == b"p=49" and msg.get(b"100") == b"EVIL"
    shifted = encode(FIX44, [*hdr(), (58, "a=100\x01200"), (55, "AAPL")])
    m2 = decode_one(shifted)
    assert m2.check_syntax().reason is Reason.SOH_IN_VALUE  # type: ignore[union-attr]
    assert (b"100", b"200") not in m2.fields


def test_fields_of_an_unchecked_body_terminate() -> None:
    # Fixed: without check_syntax, a body ending in a field with no '=' looped forever in
    # `fields`, and a data-length tag with a non-numeric value raised ValueError.
    last = encode(FIX44, [*hdr(), (58, "a\x01b")])
    for raw in (last, _nos_with((58, "a\x01b")), _nos_with((95, "abc")), _nos_with((58, "a=b\x01c"))):
        assert decode_one(raw).check_syntax() is not None
        msg = decode_one(raw)
        assert msg.fields[0] == (b"35", b"D")
        assert msg.get(b"49") == b"OMS1"


def test_data_field_may_hold_soh_and_equals() -> None:
    data = b"8=FIX.4.4\x019=5\x0110=000\x01a=b\x01"
    raw = encode(FIX44, [*hdr("A", 1), (98, 0), (108, 30), (95, len(data)), (96, data), (141, "Y")])
    msg = decode_one(raw)
    assert msg.check_syntax() is None
    assert (b"96", data) in msg.fields
    assert msg.get(b"141") == b"Y"


@pytest.mark.parametrize(("length", "data", "reason"), [
    (5, b"ab\x01c=def", Reason.BAD_DATA_LENGTH),  # too short: the data goes on past the length
    (9, b"ab\x01c=def", Reason.BAD_DATA_LENGTH),  # too long: runs into the next field
    (1, b"ab", Reason.BAD_DATA_LENGTH),
    (0, b"a", Reason.BAD_DATA_LENGTH),
    ("x", b"a", Reason.BAD_DATA_LENGTH),  # length not a number
    ("1234567890", b"a", Reason.BAD_DATA_LENGTH),  # more than 9 digits
    ("", b"a", Reason.EMPTY_VALUE),
])
def test_data_field_with_wrong_length(length: object, data: bytes, reason: Reason) -> None:
    raw = encode(FIX44, [*hdr("A", 1), (98, 0), (95, length), (96, data), (108, 30)])
    assert only_refusal(raw) is reason


def test_length_field_without_data_field() -> None:
    at_end = encode(FIX44, [*hdr("A", 1), (98, 0), (108, 30), (95, 3)])
    assert only_refusal(at_end) is Reason.BAD_DATA_LENGTH
    other_next = encode(FIX44, [*hdr("A", 1), (98, 0), (95, 3), (108, 30), (96, "abc")])
    assert only_refusal(other_next) is Reason.BAD_DATA_LENGTH


@pytest.mark.parametrize("tag", [49, 56, 34, 52, 35, 43, 115, 128])
def test_duplicate_header_tag(tag: int) -> None:
    raw = encode(FIX44, [*hdr("D"), (43, "N"), (115, "X"), (128, "Y"), (11, "ORD-1"), (tag, "Z")])
    refusal = decode_one(raw).check_syntax()
    assert refusal is not None and refusal.reason is Reason.DUPLICATE_TAG and refusal.tag == tag


@pytest.mark.parametrize(("tag", "value"), [(10, "123"), (9, "5"), (8, "FIX.4.4")])
def test_envelope_tag_in_body_is_a_duplicate(tag: int, value: str) -> None:
    # Fixed: "10=" (or 8=, 9=) inside the body passed; an engine that reads fields up to the
    # first 10= would see a different, shorter message than the proxy checked.
    raw = _nos_with((tag, value))
    assert only_refusal(raw) is Reason.DUPLICATE_TAG
    with_group = _nos_with((453, 2), (448, "A"), (448, "B"), (tag, value))
    assert only_refusal(with_group) is Reason.DUPLICATE_TAG


def test_repeated_group_tag_is_left_to_the_dictionary() -> None:
    raw = Builder(FIX44).new_order_single(parties=(("A", "D", 1), ("B", "D", 3)))
    msg = decode_one(raw)
    assert msg.check_syntax() is None
    assert [v for t, v in msg.fields if t == b"448"] == [b"A", b"B"]


def test_message_fed_one_byte_at_a_time() -> None:
    nos = nos44()
    d = Decoder()
    for i in range(len(nos) - 1):
        assert d.feed(nos[i:i + 1]) == []
        assert d.buffered == i + 1
    events = d.feed(nos[-1:])
    assert raws(events) == [nos] and d.buffered == 0
    assert events[0].check_syntax() is None  # type: ignore[union-attr]


def test_versions_may_alternate_in_one_stream() -> None:
    msgs = [Builder(v, seq=i).heartbeat() for i, v in enumerate([FIX44, FIX42, FIXT11, FIX44, FIX44])]
    events = Decoder().feed(b"".join(msgs))
    assert raws(events) == msgs
    assert [e.begin_string for e in events] == [FIX44, FIX42, FIXT11, FIX44, FIX44]  # type: ignore[union-attr]


def test_large_message_checksum_path() -> None:
    # Above 256 bytes the checksum is summed in chunks.
    for size in (200, 250, 256, 257, 600, 5000):
        raw = encode(FIX44, [*hdr("B"), (148, "headline"), (58, "t" * size)])
        assert refusals(Decoder().feed(raw)) == []
        bad = raw[:-4] + b"%03d\x01" % ((int(raw[-4:-1]) + 1) % 256)
        assert only_refusal(bad) is Reason.BAD_CHECKSUM


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------

VALID_FILES = sorted((CORPUS / "valid").glob("*.fix"))
BROKEN_FILES = sorted((CORPUS / "broken").glob("*.fix"))
# The reasons the codec itself detects (GROUP_COUNT_EXCEEDED needs the dictionary).
CODEC_REASONS = {r for r in Reason if r.category in (Category.FRAMING, Category.SYNTAX)} - {
    Reason.GROUP_COUNT_EXCEEDED}


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.name)
def test_valid_corpus(path: Path) -> None:
    raw = path.read_bytes()
    d = Decoder()
    events = d.feed(raw)
    assert len(events) == 1 and isinstance(events[0], Message), events
    assert events[0].raw == raw and d.buffered == 0
    assert events[0].check_syntax() is None
    if b"\x0195=" not in raw:
        assert events[0].fields == parse_fields(raw)[2:-1]


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda p: p.name)
def test_broken_corpus(path: Path) -> None:
    expected = Reason(path.name.split("-", 1)[0])
    d = Decoder()
    events = d.feed(path.read_bytes())
    assert refusals(events) == [expected], events
    assert d.buffered == 0
    # One byte at a time: the same refusal first. What is left of the broken message after the
    # decoder resynchronised then arrives as garbage; a kept "8" that turns out to start "8=100"
    # (from 38=100) is reported as a bad BeginString rather than garbled.
    data = path.read_bytes()
    bytewise = feed_all(data, Decoder(), list(range(len(data))))
    found = refusals(bytewise)
    assert found[0] is expected, bytewise
    assert set(found[1:]) <= {expected, Reason.GARBLED, Reason.BAD_BEGIN_STRING}, bytewise
    assert raws(bytewise) == raws(events)


def test_corpus_covers_every_codec_reason() -> None:
    assert {Reason(p.name.split("-", 1)[0]) for p in BROKEN_FILES} == CODEC_REASONS
    versions = {p.name.split("-", 1)[0] for p in VALID_FILES}
    assert versions == set(VERSIONS)


def test_corpus_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.build()
    on_disk = {p.relative_to(CORPUS).as_posix(): p.read_bytes() for p in VALID_FILES + BROKEN_FILES}
    assert on_disk == files, "run: python tests/data/corpus/make_corpus.py"


def test_valid_corpus_passes_quickfix() -> None:
    """The valid corpus is real-shaped: QuickFIX parses and validates every file against the
    dictionaries in specs/."""
    import quickfix as qf
    specs = Path(__file__).parents[1] / "specs"
    dd = {FIX42: qf.DataDictionary(str(specs / "FIX42.xml")),
          FIX44: qf.DataDictionary(str(specs / "FIX44.xml"))}
    fixt = qf.DataDictionary(str(specs / "FIXT11.xml"))
    fix50 = qf.DataDictionary(str(specs / "FIX50SP2.xml"))
    session_types = {b"0", b"1", b"2", b"3", b"4", b"5", b"A"}
    for path in VALID_FILES:
        raw = path.read_bytes()
        msg = decode_one(raw)
        text = raw.decode("latin-1")
        if msg.begin_string == FIXT11:
            app = fixt if msg.msg_type in session_types else fix50
            qf.DataDictionary.validate(qf.Message(text, fixt, app, True), fixt, app)
        else:
            d = dd[msg.begin_string]
            d.validate(qf.Message(text, d, True))
