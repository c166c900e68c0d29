"""Adversarial inputs through a RUNNING proxy: real TLS, the real proxy, a real QuickFIX ATS.

Complements test_proxy_refusals.py (which covers: no/expired/revoked/foreign certificate, handshake
timeout, CompID not bound, unknown session, message before Logon, MsgType not allowed, rate limit,
CompID change mid-session, CheckSum 000, SOH inside a length-counted text field, brute force) and
test_codec.py (the decoder in isolation). Every case here asserts the refusal's reason code in the
security events and that the offending message never reached the ATS.

Framing errors (BodyLength, CheckSum, garbage) are dropped without consuming a sequence number, so
each such case resends a good order with the same MsgSeqNum and checks it is filled: the session
survives the attack. One module-scoped `Stack`, one CompID per case.

The decoder properties of tests/fuzz_decoder.py (atheris, `make fuzz`) are also checked here with
hypothesis, fast.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import started_stack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixproxy import tls as tlsmod
from fixproxy.codec import Decoder, FrameError, Limits, Message, decode_one, encode
from fixproxy.demo import Stack
from fixproxy.events import Outcome, SecurityEvent
from fixproxy.rawclient import RawFixClient
from fixproxy.reasons import Reason
from fixproxy.session import utc_timestamp

WAIT = 15.0

CASES = [
    "ABLSHORT",
    "ABLLONG",
    "ABLHUGE",
    "ABLNAN",
    "ACSMISS",
    "ACSNAN",
    "AGARB",
    "ASPLIT",
    "ATAGS",
    "ABIG",
    "ASOH",
    "ATAG0",
    "ATAG7",
    "AREP",
    "AGRP",
    "AGRPHUGE",
    "ASEQ",
    "ASTALE",
    "AFUT",
    "ARESEND",
    "ACHURN",
]
SESSIONS: dict[str, dict[str, Any]] = {c: {} for c in CASES}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with started_stack(tmp_path_factory.mktemp("adversarial"), SESSIONS) as s:
        yield s


# -- helpers ----------------------------------------------------------------------------------------


def wait(predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def events(stack: Stack, reason: Reason | None = None) -> list[SecurityEvent]:
    assert stack.proxy is not None
    return [e for e in stack.proxy.events() if reason is None or e.reason is reason]


def wait_event(stack: Stack, reason: Reason, **match: Any) -> SecurityEvent:
    def find() -> SecurityEvent | None:
        return next((e for e in events(stack, reason) if all(getattr(e, k) == v for k, v in match.items())), None)

    ev = wait(find)
    assert ev is not None, f"no {reason.value} event {match}; recent: {events(stack)[-5:]}"
    return ev


def order_fields(cl_ord_id: str, *extra: tuple[Any, Any]) -> list[tuple[Any, Any]]:
    return [
        (11, cl_ord_id),
        (21, "1"),
        (55, "VOD.L"),
        (54, "1"),
        (60, utc_timestamp()),
        (38, 100),
        (40, "2"),
        (44, "10.5"),
        *extra,
    ]


def logged_on(stack: Stack, compid: str) -> RawFixClient:
    raw = stack.raw_client(compid)
    assert raw.logon() is not None, f"{compid}: no Logon answer"
    return raw


def filled(raw: RawFixClient, cl_ord_id: str) -> Message | None:
    return raw.wait_for(
        lambda m: m.msg_type == b"8" and m.get(b"11") == cl_ord_id.encode() and m.get(b"39") == b"2", WAIT
    )


def at_ats(stack: Stack, cl_ord_id: str) -> bool:
    """Did anything carrying this ClOrdID reach the ATS's socket (before QuickFIX's validation)?"""
    return any(m.get(11) == cl_ord_id for m in stack.ats[0].incoming())


def body_length(data: bytes) -> int:
    m = re.search(rb"\x019=(\d+)\x01", data)
    assert m is not None
    return int(m.group(1))


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- framing: dropped, the session survives --------------------------------------------------------


def _set_length(value: Callable[[int], bytes]) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        n = body_length(data)
        return data.replace(b"\x019=%d\x01" % n, b"\x019=" + value(n) + b"\x01", 1)

    return mutate


FRAMING: list[tuple[str, Callable[[bytes], bytes], Reason]] = [
    ("ABLSHORT", _set_length(lambda n: b"%d" % (n - 5)), Reason.BAD_BODY_LENGTH),
    ("ABLLONG", _set_length(lambda n: b"%d" % (n + 5)), Reason.BAD_BODY_LENGTH),
    ("ABLHUGE", _set_length(lambda n: b"99999999"), Reason.OVERSIZE),  # refused from the header alone
    ("ABLNAN", _set_length(lambda n: b"abc"), Reason.BAD_BODY_LENGTH),
    ("ACSMISS", lambda d: d[:-7], Reason.BAD_BODY_LENGTH),  # no 10= where BodyLength points
    ("ACSNAN", lambda d: d[:-4] + b"ab\x01", Reason.BAD_CHECKSUM),
    ("AGARB", lambda d: b"\x16\x03\x01GARBAGE\x01xx=yy\x01" + d, Reason.GARBLED),  # the order after it is good
]


@pytest.mark.parametrize(("compid", "mutate", "reason"), FRAMING, ids=[c for c, _, _ in FRAMING])
def test_framing_lie_is_dropped(stack: Stack, compid: str, mutate: Callable[[bytes], bytes], reason: Reason) -> None:
    raw = logged_on(stack, compid)
    try:
        seq = raw.seq
        bad = mutate(raw.build("D", order_fields(f"{compid}-BAD"), seq=seq))
        raw.send_raw(bad)
        time.sleep(0.2)  # a separate read (a BodyLength too long waits for more bytes, then resyncs)
        # The dropped frame consumed no number: a good order at the same MsgSeqNum goes through.
        # (Garbage is dropped up to the next 8=, so the order behind it went through with it.)
        raw.send_raw(raw.build("D", order_fields(f"{compid}-OK"), seq=seq + 1 if compid == "AGARB" else seq))
        raw.seq = seq + 2 if compid == "AGARB" else seq + 1
        ev = wait_event(stack, reason, session=compid)
        assert ev.outcome is Outcome.DROPPED
        assert filled(raw, f"{compid}-OK") is not None
        if compid == "AGARB":
            # The garbage was dropped, the order right behind it (same write) was not.
            assert filled(raw, f"{compid}-BAD") is not None
        else:
            assert not at_ats(stack, f"{compid}-BAD")
        assert not any(m.msg_type == b"5" for m in raw.received)
    finally:
        raw.close()


def test_one_byte_per_tcp_send_is_accepted(stack: Stack) -> None:
    raw = logged_on(stack, "ASPLIT")
    try:
        data = raw.build("D", order_fields("SPLIT-1"))
        for i in range(len(data)):
            raw.send_raw(data[i : i + 1])  # TCP_NODELAY: one TLS record, one segment each
        assert filled(raw, "SPLIT-1") is not None
    finally:
        raw.close()


def test_ten_thousand_tags(stack: Stack) -> None:
    raw = logged_on(stack, "ATAGS")
    try:
        seq = raw.seq
        raw.send("D", order_fields("TAGS-1", *[(58, "x")] * 10_000))  # 50 kB: under the size limit
        rej = raw.wait_for(lambda m: m.msg_type == b"3" and m.get(b"45") == b"%d" % seq, WAIT)
        assert rej is not None
        ev = wait_event(stack, Reason.TOO_MANY_FIELDS, session="ATAGS")
        assert ev.outcome is Outcome.REFUSED
        assert not at_ats(stack, "TAGS-1")
        raw.send("D", order_fields("TAGS-2"))
        assert filled(raw, "TAGS-2") is not None
    finally:
        raw.close()


def test_ten_megabyte_field_keeps_memory_bounded(stack: Stack) -> None:
    raw = logged_on(stack, "ABIG")
    try:
        seq = raw.seq
        big = raw.build("D", order_fields("BIG-1", (58, "x" * 10_000_000)), seq=seq)
        before = rss_kb()
        raw.send_raw(big)
        ev = wait_event(stack, Reason.OVERSIZE, session="ABIG")
        assert ev.outcome is Outcome.DROPPED
        raw.send_raw(raw.build("D", order_fields("BIG-2"), seq=seq))
        raw.seq = seq + 1
        assert filled(raw, "BIG-2") is not None
        after = rss_kb()
        print(f"\nproxy process RSS around a 10 MB field: {before} kB -> {after} kB (+{after - before} kB)")
        assert after - before < 50_000
        assert not at_ats(stack, "BIG-1")
        del big
    finally:
        raw.close()


# -- syntax and dictionary: refused with a Reject, GapFill at the ATS ------------------------------

REFUSED: list[tuple[str, list[tuple[Any, Any]], Reason]] = [
    # SOH injected raw into a Text value, so it parses as a second ClOrdID: two parsers, two orders.
    ("ASOH", [(58, "abc\x0111=SPOOF")], Reason.DUPLICATE_TAG),
    ("ATAG0", [(0, "x")], Reason.BAD_TAG),
    ("ATAG7", [(1234567, "x")], Reason.BAD_TAG),
    ("AREP", [(58, "a"), (58, "b")], Reason.DUPLICATE_TAG),
    ("AGRP", [(78, 2), (79, "A1"), (80, 10)], Reason.REPEATING_GROUP_MISMATCH),
    ("AGRPHUGE", [(78, 999_999_999), (79, "A1"), (80, 10)], Reason.GROUP_COUNT_EXCEEDED),
]


@pytest.mark.parametrize(("compid", "extra", "reason"), REFUSED, ids=[c for c, _, _ in REFUSED])
def test_malformed_field_is_refused(stack: Stack, compid: str, extra: list[tuple[Any, Any]], reason: Reason) -> None:
    raw = logged_on(stack, compid)
    try:
        seq = raw.seq
        raw.send("D", order_fields(f"{compid}-1", *extra))
        rej = raw.wait_for(lambda m: m.msg_type == b"3" and m.get(b"45") == b"%d" % seq, WAIT)
        assert rej is not None
        ev = wait_event(stack, reason, session=compid)
        assert ev.outcome is Outcome.REFUSED and ev.msg_seq_num == seq
        assert not at_ats(stack, f"{compid}-1") and not at_ats(stack, "SPOOF")
        raw.send("D", order_fields(f"{compid}-2"))
        assert filled(raw, f"{compid}-2") is not None
    finally:
        raw.close()


# -- session layer ----------------------------------------------------------------------------------


def test_seqnum_too_low_without_possdup_disconnects(stack: Stack) -> None:
    raw = logged_on(stack, "ASEQ")
    try:
        raw.send("D", order_fields("SEQ-1"))
        assert filled(raw, "SEQ-1") is not None
        raw.send("D", order_fields("SEQ-2"), seq=2)  # 2 was SEQ-1's number; no PossDupFlag
        assert raw.closed_by_peer(WAIT)
    finally:
        raw.close()
    assert wait_event(stack, Reason.SEQNUM_TOO_LOW, session="ASEQ").outcome is Outcome.DISCONNECTED
    assert not at_ats(stack, "SEQ-2")


@pytest.mark.parametrize(("compid", "offset"), [("ASTALE", -3600.0), ("AFUT", 3600.0)], ids=["stale", "future"])
def test_sending_time_out_of_tolerance(stack: Stack, compid: str, offset: float) -> None:
    raw = logged_on(stack, compid)
    try:
        seq = raw.seq
        raw.seq += 1
        st_ = utc_timestamp(time.time() + offset)
        msg = encode(
            "FIX.4.4", [(35, "D"), (49, compid), (56, "ATS"), (34, seq), (52, st_), *order_fields(f"{compid}-1")]
        )
        raw.send_raw(msg)
        rej = raw.wait_for(lambda m: m.msg_type == b"3" and m.get(b"45") == b"%d" % seq, WAIT)
        assert rej is not None and rej.get(b"373") == b"10"
        assert wait_event(stack, Reason.STALE_SENDING_TIME, session=compid).outcome is Outcome.REFUSED
        assert not at_ats(stack, f"{compid}-1")
        raw.send("D", order_fields(f"{compid}-2"))
        assert filled(raw, f"{compid}-2") is not None
    finally:
        raw.close()


def test_resend_request_for_an_enormous_range(stack: Stack) -> None:
    """7=1 16=999999999: the proxy serves only the messages it sent itself in that range (none
    here) and forwards the request to the ATS; the ATS answers with what it actually sent (its
    Logon and the fills, admin ones as a GapFill): a handful of messages, not a flood."""
    raw = logged_on(stack, "ARESEND")
    try:
        for i in range(3):
            raw.send("D", order_fields(f"RS-{i}"))
            assert filled(raw, f"RS-{i}") is not None
        n_before = len(raw.received)
        raw.send("2", [(7, 1), (16, 999_999_999)])
        key = "FIX.4.4:ATS->ARESEND"
        assert stack.ats[0].wait_for(lambda: any(m.get(7) == "1" for m in stack.ats[0].messages("2", key)), WAIT)
        # The ATS's answer: PossDup copies / GapFills, ending at its last sent number.
        raw.wait_for(lambda m: m.msg_type == b"4", WAIT)
        raw.wait_for(lambda m: False, 1.5)  # collect whatever else the answer holds
        answer = raw.received[n_before:]
        print(
            f"\nResendRequest 1..999999999 answered by the ATS with {len(answer)} messages: "
            f"{[m.msg_type.decode() for m in answer]}"
        )
        assert 1 <= len(answer) <= 20
        assert all(m.get(b"43") == b"Y" for m in answer if m.msg_type != b"0")
        # The session is still usable.
        raw.send("D", order_fields("RS-after"))
        assert filled(raw, "RS-after") is not None
    finally:
        raw.close()


def test_logon_logout_churn(stack: Stack) -> None:
    """50 Logon/Logout cycles on one session. Each reconnect waits until the proxy has let go of
    the previous connection: a session has one live connection (max_connections), so a Logon racing
    the previous connection's teardown is refused, as it should be."""
    assert stack.proxy is not None and stack.proxy.proxy is not None
    proxy = stack.proxy.proxy

    def churn_links() -> list[Any]:
        return stack.proxy.sync(  # type: ignore[union-attr]
            lambda: [lk for lk in proxy.links if lk.inspector is not None and lk.inspector.session_name == "ACHURN"]
        )

    base = stack.proxy.sync(lambda: len(proxy.links))
    t0 = time.monotonic()
    for i in range(50):
        assert wait(lambda: not churn_links()), f"cycle {i}: previous connection still held"
        raw = stack.raw_client("ACHURN")
        try:
            try:
                ans = raw.logon(extra=[(141, "Y")])  # ResetSeqNumFlag: every cycle starts at 1
                assert ans is not None, f"cycle {i}: no Logon answer"
                raw.send("5", [])
                assert raw.wait_for(lambda m: m.msg_type == b"5", WAIT) is not None, f"cycle {i}: no Logout"
            except ConnectionError as exc:
                recent = [(e, e.detail) for e in events(stack) if e.session in ("ACHURN", "ACHURN->ATS")][-4:]
                raise AssertionError(f"cycle {i}: {exc}; recent events: {recent}") from exc
        finally:
            raw.close()
    elapsed = time.monotonic() - t0
    print(f"\n50 Logon/Logout cycles in {elapsed:.1f} s")
    assert wait(lambda: not churn_links()), f"links leaked: {churn_links()}"
    assert stack.proxy.sync(lambda: len(proxy.links)) <= base  # earlier tests' links may still be closing
    logons = [e for e in events(stack) if e.kind == "session.logon" and e.session == "ACHURN"]
    assert len(logons) == 50


# -- TLS --------------------------------------------------------------------------------------------


def test_tls_1_1_client_hello_is_refused(stack: Stack) -> None:
    before = len([e for e in events(stack) if e.outcome is Outcome.CONNECTION_REFUSED])
    cert, key = stack.pki.clients["ASPLIT"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL offer TLS 1.0/1.1 at all
    with (
        socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=WAIT) as sock,
        pytest.raises((ssl.SSLError, OSError)),
    ):
        ctx.wrap_socket(sock, server_hostname="localhost").recv(1)
    ev = wait(lambda: [e for e in events(stack) if e.outcome is Outcome.CONNECTION_REFUSED][before:])
    assert ev, "no refusal event for a TLS 1.1 ClientHello"
    assert ev[0].reason is Reason.TLS_PROTOCOL_VERSION, ev[0]
    print(f"\nTLS 1.1 ClientHello: {ev[0].reason.value}: {ev[0].detail}")


def test_renegotiation_is_disabled(stack: Stack) -> None:
    """Python's ssl module cannot initiate a renegotiation (and TLS 1.3 has none); the proxy's
    server context forbids it for TLS 1.2 clients with OP_NO_RENEGOTIATION."""
    assert stack.proxy is not None and stack.proxy.proxy is not None
    ctx = stack.proxy.proxy._server_ctx
    assert ctx is not None
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert tlsmod is not None


# -- decoder properties (the fuzz target's, with hypothesis) ----------------------------------------

_CORPUS = sorted((Path(__file__).parent / "data" / "corpus" / "valid").glob("*.fix"))
_SEEDS = [p.read_bytes() for p in _CORPUS][:20] or [
    encode("FIX.4.4", [(35, "0"), (49, "A"), (56, "B"), (34, 1), (52, "20260101-00:00:00")])
]


def check_decoder(data: bytes, cuts: list[int], limits: Limits) -> None:
    dec = Decoder(limits)
    pos = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        if cut < pos:
            continue
        for item in dec.feed(data[pos:cut]):
            if isinstance(item, Message):
                item.check_syntax(limits)
                again = decode_one(item.raw, limits)
                assert again.raw == item.raw
            else:
                assert isinstance(item, FrameError)
        assert dec.buffered <= limits.max_message_size
        pos = cut


def _mutated(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(seed)
    for where, kind, what in edits:
        i = where % (len(out) + 1)
        if kind == 0:
            out[i:i] = what
        elif kind == 1:
            del out[i : i + len(what)]
        else:
            out[i : i + len(what)] = what
    return bytes(out)


_fix_bytes = st.sampled_from([b"\x01", b"=", b"8=FIX.4.4\x019=", b"10=", b"9=", b"35=D\x01", b"0", b"9"])
_edit = st.tuples(st.integers(0, 10_000), st.integers(0, 2), st.one_of(_fix_bytes, st.binary(max_size=8)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seeds=st.lists(st.sampled_from(_SEEDS), min_size=1, max_size=4),
    edits=st.lists(_edit, max_size=6),
    noise=st.binary(max_size=64),
    cuts=st.lists(st.integers(0, 100_000), max_size=8),
    small=st.booleans(),
)
def test_decoder_properties(
    seeds: list[bytes], edits: list[tuple[int, int, bytes]], noise: bytes, cuts: list[int], small: bool
) -> None:
    data = noise + _mutated(b"".join(seeds), edits)
    check_decoder(data, cuts, Limits(max_message_size=128, max_fields=16) if small else Limits())


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512), cuts=st.lists(st.integers(0, 1000), max_size=8))
def test_decoder_properties_random_bytes(data: bytes, cuts: list[int]) -> None:
    check_decoder(data, cuts, Limits(max_message_size=64))
