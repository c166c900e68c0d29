"""End to end: real QuickFIX engines on both sides of fixproxy, mutual TLS on both legs.

    OrderEntry (QuickFIX initiator) -> TlsBridge.client -> fixproxy -> TlsBridge.server -> MatchingEngine

Every assertion is about what a real, independent FIX engine saw: fills received, no sequence
errors, no Rejects, the bytes the ATS logged. No timing is asserted: waits are generous and only
outcomes count.

One `Stack` is shared by the module (distinct CompIDs per test); the failover test needs two ATS
endpoints and starts its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import NO_BRUTEFORCE
from helpers import handshake_refused as _refused_at_handshake
from helpers import wait as _wait

from fixproxy.certs import revoke
from fixproxy.demo import Stack
from fixproxy.engines import FixMessage, MatchingEngine, OrderEntry, format_price, utc_timestamp
from fixproxy.events import Outcome, SecurityEvent
from fixproxy.reasons import Reason

WAIT = 20.0  # generous: the machine is noisy; only outcomes are asserted

# engines.py's definition of a fatal sequence problem ("MsgSeqNum too high" is a gap, healed by a
# ResendRequest), applied to one session of an engine that serves several.
_SEQUENCE_ERROR = re.compile(r"MsgSeqNum too low|NextExpectedMsgSeqNum too high")

SESSIONS = {
    "OMS1": {},  # plain flow; keeps trading through the reload
    "OMS2": {},  # its certificate is revoked by the reload test
    "OMSH": {"allowed_inbound": ["D", "F", "G"]},  # OrderStatusRequest (H) refused
    "OMSR": {},  # resend after a disconnect
    "OMS42": {"begin_string": "FIX.4.2"},
    "OMS50": {"begin_string": "FIXT.1.1"},
    "OMSL": {},  # a normal Logout
}

# Refused handshakes count toward the brute-force block of 127.0.0.1, which would end every other
# test here: the reload test makes a few on purpose (and OMS2's engine retries until stopped).


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("e2e"), list(SESSIONS), sessions=SESSIONS, extra=NO_BRUTEFORCE)
    try:
        s.start(oms=False)
        yield s
    finally:
        s.stop()


# -- helpers ----------------------------------------------------------------------------------------


def ats_key(stack: Stack, compid: str) -> str:
    return f"{stack.sessions[compid].get('begin_string', 'FIX.4.4')}:ATS->{compid}"


def session_errors(engine: MatchingEngine | OrderEntry, session: str) -> list[str]:
    """`sequence_errors()` restricted to one session (the ATS engine is shared by the tests)."""
    found = [e.text for e in engine.events(session) if _SEQUENCE_ERROR.search(e.text)]
    found += [
        f"received Logout: {m.get(58)}"
        for m in engine.logouts
        if m.session == session and _SEQUENCE_ERROR.search(m.get(58) or "")
    ]
    return found


def received(engine: MatchingEngine | OrderEntry, session: str, msg_type: str) -> list[FixMessage]:
    return engine.messages(msg_type, session)


def start_oms(stack: Stack, compid: str) -> OrderEntry:
    oms = stack.start_oms(compid)
    assert oms.wait_logged_on(WAIT), f"{compid} did not log on through the proxy: {oms.event_texts()[-5:]}"
    return oms


def fills(oms: OrderEntry) -> set[str]:
    return {r.cl_ord_id for r in oms.exec_reports if r.ord_status == "2"}


def news(oms: OrderEntry, prefix: str) -> set[str]:
    return {r.cl_ord_id for r in oms.exec_reports if r.exec_type == "0" and r.cl_ord_id.startswith(prefix)}


def send_orders(oms: OrderEntry, prefix: str, n: int, start: int = 0) -> set[str]:
    ids = {f"{prefix}{i:03d}" for i in range(start, start + n)}
    for cl in sorted(ids):
        oms.send_new_order(cl, "VOD.L", "1", 100, 10.5)
    return ids


def wait_filled(oms: OrderEntry, ids: set[str]) -> None:
    ok = oms.wait_for(lambda: ids <= fills(oms), WAIT)
    assert ok, f"not filled: {sorted(ids - fills(oms))}; events: {oms.event_texts()[-8:]}"


def events(stack: Stack, reason: Reason, session: str | None = None) -> list[SecurityEvent]:
    assert stack.proxy is not None
    return [e for e in stack.proxy.events() if e.reason is reason and (session is None or e.session == session)]


def logon_events(stack: Stack, session: str) -> list[SecurityEvent]:
    assert stack.proxy is not None
    return [e for e in stack.proxy.events() if e.kind == "session.logon" and e.session == session]


def logon_responses(oms: OrderEntry) -> int:
    return sum(1 for t in oms.event_texts() if t == "Received logon response")


# -- 1. the plain flow -------------------------------------------------------------------------------


def test_orders_fill_and_bytes_are_forwarded_unchanged(stack: Stack) -> None:
    oms = start_oms(stack, "OMS1")
    ats = stack.ats[0]
    key = ats_key(stack, "OMS1")
    ids = send_orders(oms, "E2E-", 20)
    wait_filled(oms, ids)
    assert news(oms, "E2E-") == ids  # a New and a Fill for each
    assert {m.get(11) for m in received(ats, key, "D")} == ids
    assert oms.sequence_errors() == [] and session_errors(ats, key) == []
    assert oms.rejects == [] and received(ats, key, "3") == [] and received(ats, key, "j") == []
    assert oms.errors == [] and ats.errors == []

    # No refusal happened on this session: every byte the OMS wrote is what the ATS read, and back.
    sent = {m.get(11): m.raw for m in oms.outgoing() if m.msg_type == "D"}
    got = {m.get(11): m.raw for m in ats.incoming() if m.session == key and m.msg_type == "D"}
    assert sent.keys() == ids and got == sent
    ats_sent = [m.raw for m in ats.outgoing() if m.session == key and m.msg_type == "8"]
    oms_got = [m.raw for m in oms.incoming() if m.msg_type == "8"]
    assert len(oms_got) == 40 and oms_got == ats_sent


# -- 2. a refusal mid-session, then a reconnect through the translation --------------------------------


def _unsolicited_report(cl_ord_id: str) -> list[tuple[int, str]]:
    """An ExecutionReport the ATS sends on its own (a status push), valid FIX 4.4."""
    return [
        (35, "8"),
        (37, "O-PUSH"),
        (11, cl_ord_id),
        (17, f"E-{cl_ord_id}"),
        (150, "I"),
        (39, "0"),
        (55, "VOD.L"),
        (54, "1"),
        (38, format_price(100)),
        (40, "2"),
        (151, format_price(100)),
        (14, "0"),
        (6, "0"),
        (60, utc_timestamp()),
        (44, "10.5"),
    ]


def test_refusal_mid_session_then_relogon_resyncs(stack: Stack) -> None:
    oms = start_oms(stack, "OMSH")
    ats = stack.ats[0]
    key = ats_key(stack, "OMSH")
    wait_filled(oms, send_orders(oms, "H1-", 3))

    h_seq = oms.next_sender_seq_num()
    oms.send_status("H1-000", "VOD.L", "1")
    assert oms.wait_for(lambda: any(m.get(45) == str(h_seq) for m in oms.rejects), WAIT)
    reject = next(m for m in oms.rejects if m.get(45) == str(h_seq))
    assert reject.msg_type == "3" and reject.get(373) == "11" and reject.get(372) == "H"
    # The ATS got a GapFill in the status request's place, never the request.
    assert ats.wait_for(
        lambda: any(m.get(34) == str(h_seq) and m.get(123) == "Y" for m in received(ats, key, "4")), WAIT
    )
    assert not any(m.msg_type == "H" for m in ats.incoming() if m.session == key)

    wait_filled(oms, send_orders(oms, "H2-", 3))
    assert oms.sequence_errors() == [] and session_errors(ats, key) == []
    # Neither engine saw even a gap: the GapFill and the Reject took their numbers in sequence.
    assert oms.sequence_gaps() == [] and [e for e in ats.sequence_gaps() if key in e] == []
    assert oms.logouts == [] and received(ats, key, "5") == []
    assert len(oms.rejects) == 1

    # The OMS logs out and comes back on its persistent store (ResetOnLogon=N). While it is away the
    # ATS pushes a report and the OMS queues an order: both streams have a gap to heal by resend,
    # through the proxy's translation (the OMS's incoming numbers are one ahead of the ATS's).
    oms.stop()
    stack.oms_bridges["OMSH"].stop()
    assert ats.wait_for(lambda: key not in ats.logged_on_sessions(), WAIT)
    ats.send_raw(_unsolicited_report("H-PUSH"), session=key)
    oms = stack.start_oms("OMSH")
    queued = send_orders(oms, "H3-", 1)  # not logged on yet: stored, sent as a resend
    assert oms.wait_logged_on(WAIT)
    assert oms.wait_for(lambda: any(r.cl_ord_id == "H-PUSH" for r in oms.exec_reports), WAIT)
    wait_filled(oms, queued | send_orders(oms, "H3-", 3, start=1))

    assert oms.sequence_errors() == [] and session_errors(ats, key) == []
    assert [m for m in oms.logouts if m.get(58)] == []  # only the clean logout we asked for, if any
    assert oms.rejects == [] and received(ats, key, "3") == []
    # Both gaps were healed by resends (PossDupFlag=Y), not skipped.
    push = next(r for r in oms.exec_reports if r.cl_ord_id == "H-PUSH")
    assert push.message.get(43) == "Y"
    assert any(m.get(43) == "Y" for m in received(ats, key, "D") if m.get(11) in queued)
    assert not any(m.msg_type == "H" for m in ats.incoming() if m.session == key)


# -- 3. resend after a disconnect ----------------------------------------------------------------------


def test_fills_sent_while_disconnected_arrive_by_resend(stack: Stack) -> None:
    oms = start_oms(stack, "OMSR")
    ats = stack.ats[0]
    key = ats_key(stack, "OMSR")
    wait_filled(oms, send_orders(oms, "R0-", 2))

    ats.auto_fill = False  # the orders rest; their fills are sent while the OMS is cut off
    try:
        resting = send_orders(oms, "R1-", 10)
        assert oms.wait_for(lambda: resting <= news(oms, "R1-"), WAIT)
        assert stack.proxy is not None
        killed = stack.proxy.call(stack.proxy.proxy.kill_session("OMSR"))
        assert killed == {"killed": 1}
        for cl in sorted(resting):
            order = next(o for o in ats.orders() if o.cl_ord_id == cl)
            ats.send_raw(
                [
                    (35, "8"),
                    (37, order.order_id),
                    (11, cl),
                    (17, f"EF-{cl}"),
                    (150, "F"),
                    (39, "2"),
                    (55, "VOD.L"),
                    (54, "1"),
                    (38, "100"),
                    (40, "2"),
                    (151, "0"),
                    (14, "100"),
                    (6, "10.5"),
                    (32, "100"),
                    (31, "10.5"),
                    (60, utc_timestamp()),
                    (44, "10.5"),
                ],
                session=key,
            )
    finally:
        ats.auto_fill = True

    # QuickFIX reconnects on its own (ReconnectInterval) and asks for what it missed.
    wait_filled(oms, resting)
    assert oms.logged_on()
    resent = [r for r in oms.exec_reports if r.cl_ord_id in resting and r.ord_status == "2"]
    assert len(resent) == len(resting)
    # Every fill was written after the proxy had closed both legs: each one came as a resend.
    assert all(r.message.get(43) == "Y" for r in resent)
    assert oms.sequence_gaps()  # the OMS saw the gap and asked for it
    wait_filled(oms, send_orders(oms, "R2-", 2))
    assert oms.sequence_errors() == [] and session_errors(ats, key) == []
    assert oms.rejects == []


# -- 4. other FIX versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("compid", ["OMS42", "OMS50"])
def test_fix42_and_fixt11_trade(stack: Stack, compid: str) -> None:
    oms = start_oms(stack, compid)
    ats = stack.ats[0]
    key = ats_key(stack, compid)
    wait_filled(oms, send_orders(oms, f"{compid}-", 1))
    assert oms.sequence_errors() == [] and session_errors(ats, key) == []
    assert oms.rejects == [] and received(ats, key, "3") == []
    oms.stop()
    stack.oms_bridges[compid].stop()


# -- 6. reload under traffic -----------------------------------------------------------------------


def test_reload_with_revoked_certificate_closes_only_that_session(stack: Stack) -> None:
    assert stack.proxy is not None and stack.proxy.proxy is not None
    oms1 = stack.oms.get("OMS1") or start_oms(stack, "OMS1")
    assert oms1.wait_logged_on(WAIT)
    oms2 = start_oms(stack, "OMS2")
    wait_filled(oms2, send_orders(oms2, "RV2-", 1))

    revoke(stack.pki, stack.pki.clients["OMS2"][0])
    result = stack.proxy.call(stack.proxy.proxy.reload())
    assert result["closed"] == ["OMS2"]
    closed = [e for e in events(stack, Reason.TLS_REVOKED, "OMS2") if e.outcome is Outcome.DISCONNECTED]
    assert len(closed) == 1
    assert oms2.wait_for(lambda: not oms2.logged_on(), WAIT)
    oms2.stop()
    stack.oms_bridges["OMS2"].stop()

    # OMS1 trades on, on the same connection.
    logons = len(logon_events(stack, "OMS1"))
    wait_filled(oms1, send_orders(oms1, "RV1-", 5))
    assert oms1.logged_on() and len(logon_events(stack, "OMS1")) == logons
    assert oms1.sequence_errors() == []

    # A new connection with OMS2's certificate is refused during the handshake.
    before = len(events(stack, Reason.TLS_REVOKED))
    ctx = stack.client_context("OMS2")
    assert _refused_at_handshake(stack.proxy_port, ctx)
    assert _wait(lambda: len(events(stack, Reason.TLS_REVOKED)) > before)
    refused = events(stack, Reason.TLS_REVOKED)[-1]
    assert refused.outcome is Outcome.CONNECTION_REFUSED and refused.session is None


# -- 5. failover to a standby ATS, and back -------------------------------------------------------------


def test_failover_drill_to_the_standby_and_back(tmp_path: Path) -> None:
    """Two ATS endpoints sharing one store (RefreshOnLogon=Y). The primary runs in this process,
    the standby in a child process (QuickFIX allows one live SessionID per process)."""
    stack = Stack(tmp_path, ["FO1"], ats_count=2, sessions={"FO1": {}}, extra=NO_BRUTEFORCE)
    try:
        stack.start()
        assert stack.proxy is not None and stack.proxy.proxy is not None
        proxy = stack.proxy
        oms = stack.oms["FO1"]
        assert oms.wait_logged_on(WAIT)
        wait_filled(oms, send_orders(oms, "FO-A", 3))

        for drill, endpoint in ((1, 1), (2, 0)):
            logons = logon_responses(oms)
            result = proxy.call(proxy.proxy.failover_drill())
            assert result == {"active": endpoint, "closed": 1}
            # QuickFIX reconnects by itself (ReconnectInterval); the proxy sends it to the other endpoint.
            back = oms.wait_for(lambda n=logons: logon_responses(oms) > n and oms.logged_on(), WAIT)
            assert back, oms.event_texts()[-6:]
            wait_filled(oms, send_orders(oms, f"FO-{'BC'[drill - 1]}", 3))
            history = proxy.sync(lambda: [dict(h) for h in proxy.proxy.failover.history])
            assert len(history) == drill
            assert history[-1]["trigger"] == "drill" and history[-1]["endpoint"] == endpoint
            assert history[-1]["seconds"] > 0

        assert oms.sequence_errors() == [] and oms.rejects == []
        assert session_errors(stack.ats[0], "FIX.4.4:ATS->FO1") == []  # type: ignore[arg-type]
        standby_log = (tmp_path / "ats1-log").glob("*ATS-FO1.event*")
        standby_events = "".join(p.read_text() for p in standby_log)
        assert "Received logon request" in standby_events
        assert not _SEQUENCE_ERROR.search(standby_events), standby_events
    finally:
        stack.stop()


def test_a_normal_logout_is_not_an_upstream_failure(stack: Stack) -> None:
    """After a Logout exchange the ATS closes its connection: the session ended, nothing failed,
    so no failover is recorded and the recovery-time KPI is not skewed."""
    assert stack.proxy is not None and stack.proxy.proxy is not None
    proxy = stack.proxy.proxy
    before = stack.proxy.sync(lambda: (len(proxy.failover.history), proxy.failover.pending_since))
    raw = stack.raw_client("OMSL")
    try:
        assert raw.logon() is not None
        raw.send("5", [(58, "end of day")])
        assert raw.wait_for(lambda m: m.msg_type == b"5", WAIT) is not None
        assert raw.closed_by_peer(WAIT)
    finally:
        raw.close()
    assert _wait(lambda: stack.proxy.sync(lambda: not any(
        lk.inspector and lk.inspector.session_name == "OMSL" for lk in proxy.links)))
    after = stack.proxy.sync(lambda: (len(proxy.failover.history), proxy.failover.pending_since))
    assert after == before == (before[0], None)
