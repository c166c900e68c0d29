"""Every refusal fixproxy makes, end to end: real TLS, the real proxy, a real QuickFIX ATS behind it,
and a hostile client (`RawFixClient`) that writes whatever bytes it is told to.

Each test checks what the client saw (closed, Reject, ResendRequest, fills), what the ATS saw (a
GapFill, never the refused message, no contact at all for refused connections) and the security
event with its reason code (`stack.proxy.events()`).

One `Stack` serves the module, one CompID per test (the ATS keeps sequence numbers per session).
Refused handshakes count toward the brute-force block of 127.0.0.1, so the shared proxy runs with
a high threshold; the brute-force test starts its own proxy with the default one, last.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import handshake_refused, started_stack, wait

from fixproxy import tls as tlsmod
from fixproxy.certs import init_dev_pki, issue_client_cert, revoke
from fixproxy.codec import Message
from fixproxy.demo import Stack
from fixproxy.events import Outcome, SecurityEvent
from fixproxy.rawclient import RawFixClient
from fixproxy.reasons import Reason
from fixproxy.session import utc_timestamp

WAIT = 15.0  # generous: the machine is noisy; only outcomes are asserted

SESSIONS: dict[str, dict[str, Any]] = {
    "OMS1": {},  # impersonated with OMS2's certificate; target of refused connections
    "OMS2": {},
    "RMT": {"allowed_inbound": ["D"]},  # anything but NewOrderSingle is refused
    "RRATE": {"rate": 5, "burst": 5, "disconnect_after": 20},
    "RCMP": {},  # CompID change mid-session
    "RCS": {},  # bad checksum, recovered by resend
    "RSOH": {},  # SOH inside a value
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with started_stack(tmp_path_factory.mktemp("refusals"), SESSIONS) as s:
        yield s


# -- helpers ----------------------------------------------------------------------------------------


def events(stack: Stack, reason: Reason | None = None, *, kind: str | None = None) -> list[SecurityEvent]:
    assert stack.proxy is not None
    return [
        e for e in stack.proxy.events() if (reason is None or e.reason is reason) and (kind is None or e.kind == kind)
    ]


def wait_event(stack: Stack, reason: Reason, before: int = 0, **match: Any) -> SecurityEvent:
    """The first event with `reason` after the first `before` ones, once it is recorded."""

    def find() -> SecurityEvent | None:
        new = events(stack, reason)[before:]
        return next((e for e in new if all(getattr(e, k) == v for k, v in match.items())), None)

    ev = wait(find)
    assert ev is not None, f"no {reason.value} event {match}; recent: {events(stack)[-5:]}"
    return ev


class AtsContact:
    """Did anything reach the ATS (its TLS bridge, its QuickFIX engine) while this was open?"""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.connections = stack.ats_bridges[0].connections
        self.logons = len(stack.ats[0].messages("A"))

    def none(self) -> bool:
        return (
            self.stack.ats_bridges[0].connections == self.connections
            and len(self.stack.ats[0].messages("A")) == self.logons
        )


def logged_on(stack: Stack, compid: str, **kw: Any) -> RawFixClient:
    raw = stack.raw_client(compid, **kw)
    assert raw.logon() is not None, f"{compid}: no Logon answer"
    return raw


def order_fields(cl_ord_id: str, text: str | None = None) -> list[tuple[Any, Any]]:
    fields: list[tuple[Any, Any]] = [
        (11, cl_ord_id),
        (21, "1"),
        (55, "VOD.L"),
        (54, "1"),
        (60, utc_timestamp()),
        (38, 100),
        (40, "2"),
        (44, "10.5"),
    ]
    if text is not None:
        fields.append((58, text))
    return fields


def filled(raw: RawFixClient, cl_ord_id: str) -> Message | None:
    return raw.wait_for(
        lambda m: m.msg_type == b"8" and m.get(b"11") == cl_ord_id.encode() and m.get(b"39") == b"2", WAIT
    )


def reject_for(raw: RawFixClient, seq: int) -> Message | None:
    return raw.wait_for(lambda m: m.msg_type == b"3" and m.get(b"45") == b"%d" % seq, WAIT)


def gap_filled_at_ats(stack: Stack, compid: str, seq: int) -> bool:
    key = f"FIX.4.4:ATS->{compid}"
    return stack.ats[0].wait_for(
        lambda: any(m.get(34) == str(seq) and m.get(123) == "Y" for m in stack.ats[0].messages("4", key)), WAIT
    )


def ats_sequence_errors(stack: Stack, compid: str) -> list[str]:
    key = f"FIX.4.4:ATS->{compid}"
    return [
        e.text
        for e in stack.ats[0].events(key)
        if "MsgSeqNum too low" in e.text or "NextExpectedMsgSeqNum too high" in e.text
    ]


# -- TLS handshake refusals ----------------------------------------------------------------------------


def test_no_client_certificate(stack: Stack) -> None:
    contact, before = AtsContact(stack), len(events(stack, Reason.TLS_NO_CERT))
    ctx = tlsmod.client_context(None, None, stack.pki.ca_cert)
    assert handshake_refused(stack.proxy_port, ctx)
    ev = wait_event(stack, Reason.TLS_NO_CERT, before)
    assert ev.outcome is Outcome.CONNECTION_REFUSED and ev.source == "127.0.0.1"
    assert contact.none()


def test_certificate_from_an_unknown_ca(stack: Stack, tmp_path: Path) -> None:
    foreign = init_dev_pki(tmp_path / "foreign", ["OMS1"])  # same CompID, another CA
    cert, key = foreign.clients["OMS1"]
    contact, before = AtsContact(stack), len(events(stack, Reason.TLS_UNKNOWN_CA))
    assert handshake_refused(stack.proxy_port, tlsmod.client_context(cert, key, stack.pki.ca_cert))
    assert wait_event(stack, Reason.TLS_UNKNOWN_CA, before).outcome is Outcome.CONNECTION_REFUSED
    assert contact.none()


def test_expired_certificate(stack: Stack) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    cert, key = issue_client_cert(
        stack.pki, "OMS1", name="oms1-expired", not_before=past - timedelta(days=30), not_after=past
    )
    contact, before = AtsContact(stack), len(events(stack, Reason.TLS_EXPIRED))
    assert handshake_refused(stack.proxy_port, tlsmod.client_context(cert, key, stack.pki.ca_cert))
    assert wait_event(stack, Reason.TLS_EXPIRED, before).outcome is Outcome.CONNECTION_REFUSED
    assert contact.none()


def test_revoked_certificate(stack: Stack) -> None:
    assert stack.proxy is not None
    cert, key = issue_client_cert(stack.pki, "OMS1", name="oms1-revoked")  # the standard one stays valid
    ctx = tlsmod.client_context(cert, key, stack.pki.ca_cert)
    revoke(stack.pki, cert)
    stack.proxy.call(stack.proxy.proxy.reload())  # the proxy reads the new CRL
    contact, before = AtsContact(stack), len(events(stack, Reason.TLS_REVOKED))
    assert handshake_refused(stack.proxy_port, ctx)
    assert wait_event(stack, Reason.TLS_REVOKED, before).outcome is Outcome.CONNECTION_REFUSED
    assert contact.none()


def test_handshake_too_slow(stack: Stack) -> None:
    """A TCP connection that never starts TLS is closed after handshake_timeout (3 s here)."""
    contact, before = AtsContact(stack), len(events(stack, Reason.HANDSHAKE_TIMEOUT))
    with socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=WAIT) as sock:
        sock.settimeout(WAIT)
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    assert closed, f"not closed within {WAIT} s"
    assert wait_event(stack, Reason.HANDSHAKE_TIMEOUT, before).outcome is Outcome.CONNECTION_REFUSED
    assert contact.none()


# -- Logon refusals ------------------------------------------------------------------------------------


def test_certificate_of_another_compid(stack: Stack) -> None:
    """OMS2's certificate logging on as OMS1: closed without a Logout, the ATS never contacted."""
    contact, before = AtsContact(stack), len(events(stack, Reason.COMPID_NOT_BOUND))
    raw = stack.raw_client("OMS2", sender="OMS1")
    try:
        raw.send("A", [(98, 0), (108, 30)])
        assert raw.closed_by_peer(WAIT)
        assert raw.received == []  # not a byte: no Logout, no Reject
    finally:
        raw.close()
    ev = wait_event(stack, Reason.COMPID_NOT_BOUND, before)
    assert ev.outcome is Outcome.CONNECTION_REFUSED and ev.session == "OMS1->ATS"
    assert contact.none()


def test_unknown_session(stack: Stack) -> None:
    contact, before = AtsContact(stack), len(events(stack, Reason.UNKNOWN_SESSION))
    raw = stack.raw_client("OMS2", sender="GHOST")
    try:
        raw.send("A", [(98, 0), (108, 30)])
        assert raw.closed_by_peer(WAIT)
        assert raw.received == []
    finally:
        raw.close()
    ev = wait_event(stack, Reason.UNKNOWN_SESSION, before)
    assert ev.outcome is Outcome.CONNECTION_REFUSED and ev.session == "GHOST->ATS"
    assert contact.none()


def test_message_before_logon(stack: Stack) -> None:
    contact, before = AtsContact(stack), len(events(stack, Reason.BEFORE_LOGON))
    raw = stack.raw_client("OMS1")
    try:
        raw.send("D", order_fields("EARLY-1"))
        assert raw.closed_by_peer(WAIT)
        assert raw.received == []
    finally:
        raw.close()
    ev = wait_event(stack, Reason.BEFORE_LOGON, before)
    assert ev.outcome is Outcome.CONNECTION_REFUSED and ev.msg_type == b"D"
    assert contact.none()
    assert not any(m.get(11) == "EARLY-1" for m in stack.ats[0].incoming())


# -- refusals inside a session -------------------------------------------------------------------------


def test_msgtype_not_allowed(stack: Stack) -> None:
    raw = logged_on(stack, "RMT")
    try:
        seq = raw.seq
        raw.send("H", [(11, "ANY"), (55, "VOD.L"), (54, "1")])  # OrderStatusRequest: not allowed here
        rej = reject_for(raw, seq)
        assert rej is not None
        assert rej.get(b"373") == b"11" and rej.get(b"372") == b"H"
        ev = wait_event(stack, Reason.MSGTYPE_NOT_ALLOWED, session="RMT")
        assert ev.outcome is Outcome.REFUSED and ev.msg_type == b"H" and ev.msg_seq_num == seq
        assert gap_filled_at_ats(stack, "RMT", seq)
        assert not any(m.msg_type == "H" for m in stack.ats[0].incoming())
        # The session goes on, in sequence on both sides.
        raw.send("D", order_fields("RMT-1"))
        assert filled(raw, "RMT-1") is not None
        assert ats_sequence_errors(stack, "RMT") == []
        assert not any(m.msg_type == b"5" for m in raw.received)
    finally:
        raw.close()


def test_rate_limit_then_flood(stack: Stack) -> None:
    raw = logged_on(stack, "RRATE")  # rate 5/s, burst 5 (the Logon took one token)
    try:
        ids = [f"RATE-{i}" for i in range(12)]
        first = raw.seq
        raw.send_raw(b"".join(raw.build("D", order_fields(cl)) for cl in ids))
        seqs = {cl: first + i for i, cl in enumerate(ids)}

        def settled(cl: str) -> bool:  # every order is either filled or answered by a Reject
            return any(
                (m.msg_type == b"8" and m.get(b"11") == cl.encode() and m.get(b"39") == b"2")
                or (m.msg_type == b"3" and m.get(b"45") == b"%d" % seqs[cl])
                for m in raw.received
            )

        raw.wait_for(lambda m: all(settled(cl) for cl in ids), WAIT)
        assert all(settled(cl) for cl in ids)
        rejects = [m for m in raw.received if m.msg_type == b"3"]
        assert rejects, "nothing was rate limited"
        assert len(rejects) < len(ids), "nothing got through"
        assert all(m.get(b"58") == b"Message rate limit exceeded" for m in rejects)
        assert len(events(stack, Reason.RATE_LIMITED)) >= len(rejects)
        assert wait_event(stack, Reason.RATE_LIMITED, session="RRATE").outcome is Outcome.REFUSED
        for m in rejects:  # each refused order left a GapFill at the ATS, never reached it
            seq = int(m.get(b"45"))  # type: ignore[arg-type]
            cl = next(c for c, s in seqs.items() if s == seq)
            assert gap_filled_at_ats(stack, "RRATE", seq)
            assert not any(o.get(11) == cl for o in stack.ats[0].messages("D"))
        assert ats_sequence_errors(stack, "RRATE") == []

        # Past disconnect_after refusals in a row: a flood, and the session is closed.
        burst = b"".join(raw.build("D", order_fields(f"FLOOD-{i}")) for i in range(200))
        with contextlib.suppress(OSError):  # the proxy may close while we are still writing
            raw.send_raw(burst)
        assert raw.closed_by_peer(WAIT)
    finally:
        raw.close()
    assert wait_event(stack, Reason.FLOOD, session="RRATE").outcome is Outcome.DISCONNECTED


def test_compid_change_mid_session(stack: Stack) -> None:
    raw = logged_on(stack, "RCMP")
    try:
        raw.send("D", order_fields("CMP-1"))
        assert filled(raw, "CMP-1") is not None
        raw.send("D", order_fields("CMP-2"), sender="OMS1")
        assert raw.closed_by_peer(WAIT)
    finally:
        raw.close()
    ev = wait_event(stack, Reason.COMPID_MISMATCH, session="RCMP")
    assert ev.outcome is Outcome.DISCONNECTED
    assert not any(m.get(11) == "CMP-2" for m in stack.ats[0].incoming())


def test_bad_checksum_is_dropped_and_recovered_by_resend(stack: Stack) -> None:
    raw = logged_on(stack, "RCS")
    try:
        seq = raw.seq
        fields = order_fields("CS-1")
        good = raw.build("D", fields)
        raw.send_raw(good[:-4] + b"000\x01")  # CheckSum 000: the proxy drops it (FIX: ignore garbled)
        ev = wait_event(stack, Reason.BAD_CHECKSUM, session="RCS")
        assert ev.outcome is Outcome.DROPPED
        # The ATS sees the gap with the next message and asks for that number again.
        raw.send("0", [])
        ask = raw.wait_for(lambda m: m.msg_type == b"2", WAIT)
        assert ask is not None and ask.get(b"7") == b"%d" % seq
        raw.send("D", fields, seq=seq, possdup=True)
        fill = filled(raw, "CS-1")
        assert fill is not None
        assert [m.get(43) for m in stack.ats[0].messages("D", "FIX.4.4:ATS->RCS")] == ["Y"]
        assert ats_sequence_errors(stack, "RCS") == []
        assert not any(m.msg_type in (b"3", b"5") for m in raw.received)
    finally:
        raw.close()


def test_soh_inside_a_text_field(stack: Stack) -> None:
    raw = logged_on(stack, "RSOH")
    try:
        seq = raw.seq
        raw.send("D", order_fields("SOH-1", text="abc\x01def"))  # well framed: the length counts it
        rej = reject_for(raw, seq)
        assert rej is not None and rej.get(b"373") == b"6"
        ev = wait_event(stack, Reason.SOH_IN_VALUE, session="RSOH")
        assert ev.outcome is Outcome.REFUSED and ev.msg_seq_num == seq
        assert gap_filled_at_ats(stack, "RSOH", seq)
        assert not any(m.get(11) == "SOH-1" for m in stack.ats[0].incoming())
        raw.send("D", order_fields("SOH-2"))
        assert filled(raw, "SOH-2") is not None
        assert ats_sequence_errors(stack, "RSOH") == []
    finally:
        raw.close()


# -- brute force: last, on its own proxy (it blocks 127.0.0.1) ---------------------------------------


def test_bruteforce_blocks_the_source(stack: Stack, tmp_path: Path) -> None:
    del stack  # the shared stack stays up; this one has the default threshold (5 a minute)
    bf = Stack(tmp_path, ["BF1"], sessions={"BF1": {}})
    try:
        bf.start(oms=False)
        assert bf.proxy is not None
        no_cert = tlsmod.client_context(None, None, bf.pki.ca_cert)
        for _ in range(6):
            assert handshake_refused(bf.proxy_port, no_cert)
        ev = wait(lambda: next(iter(events(bf, kind="auth.bruteforce")), None))
        assert ev is not None and ev.source == "127.0.0.1"
        assert len(events(bf, Reason.TLS_NO_CERT)) == 6

        # Now even a valid certificate is turned away, before TLS.
        assert handshake_refused(bf.proxy_port, bf.client_context("BF1"))
        blocked = wait_event(bf, Reason.SOURCE_BLOCKED, outcome=Outcome.CONNECTION_REFUSED)
        assert blocked.source == "127.0.0.1"
        assert bf.ats_bridges[0].connections == 0

        assert bf.proxy.call(bf.proxy.proxy.unblock_source("127.0.0.1")) == {"unblocked": True}
        raw = logged_on(bf, "BF1")
        raw.close()
    finally:
        bf.stop()
