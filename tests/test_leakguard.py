"""The information leakage guard (fixproxy.leakguard), sans-IO: order ownership, cross-session
references, blocked deliveries, spoofing, bounded memory, the leakage index and order round trips;
then the same guard inside a `SessionInspector`, bytes in and decisions out.

A blocked delivery cannot be provoked through the real ATS of the end-to-end tests (a correct
matching engine never sends one session's ExecutionReport to another): it is tested here, where
the ATS side is a byte string (see tests/test_kpis.py for what is driven with real traffic).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from fixproxy.codec import Decoder, Message, encode
from fixproxy.events import Direction, Outcome
from fixproxy.leakguard import LeakGuard
from fixproxy.metrics import LATENCY_BUCKETS
from fixproxy.policy import SessionPolicy, ValidationMode
from fixproxy.reasons import Reason, Refusal
from fixproxy.session import ReadResult, SessionInspector, SessionState, utc_timestamp

A, B = "OMS1", "OMS2"


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def get(**tags: str) -> Callable[[bytes], bytes | None]:
    """A message's field lookup, from keyword arguments: get(t11="C1", t37="O1")."""
    fields = {k[1:].encode(): v.encode() for k, v in tags.items()}
    return fields.get


class Guarded:
    """A LeakGuard on a fake clock, with the calls the inspector makes, one line each."""

    def __init__(self, **kw: object) -> None:
        self.clock = FakeClock()
        self.guard = LeakGuard(clock=self.clock, **kw)  # type: ignore[arg-type]

    def order(self, session: str, clordid: str) -> Refusal | None:  # NewOrderSingle
        return self.guard.inbound(session, b"D", get(t11=clordid), self.clock())

    def cancel(self, session: str, clordid: str, orig: str, order_id: str | None = None) -> Refusal | None:
        tags = {"t11": clordid, "t41": orig} | ({"t37": order_id} if order_id else {})
        return self.guard.inbound(session, b"F", get(**tags), self.clock())

    def replace(self, session: str, clordid: str, orig: str) -> Refusal | None:
        return self.guard.inbound(session, b"G", get(t11=clordid, t41=orig), self.clock())

    def status(self, session: str, clordid: str, order_id: str | None = None) -> Refusal | None:
        tags = {"t11": clordid} | ({"t37": order_id} if order_id else {})
        return self.guard.inbound(session, b"H", get(**tags), self.clock())

    def report(self, session: str, clordid: str | None, order_id: str, msg_type: bytes = b"8") -> Refusal | None:
        tags = {"t37": order_id} | ({"t11": clordid} if clordid else {})
        return self.guard.outbound(session, msg_type, get(**tags), self.clock())

    def round_trips(self) -> tuple[float, float]:
        """(count, sum) of the NewOrderSingle -> first ExecutionReport histogram."""
        rt = self.guard.round_trips
        return sum(rt[:-1]), rt[-1]


def reason(refusal: Refusal | None) -> Reason | None:
    return None if refusal is None else refusal.reason


# -- ownership and cross-session references ------------------------------------------------------------


def test_order_id_learned_from_the_owners_first_execution_report() -> None:
    g = Guarded()
    assert g.order(A, "C1") is None
    assert g.report(A, "C1", "O1") is None  # the ATS's OrderID for A's order: A owns O1 now
    refused = g.cancel(B, "B-C1", "B-ORIG", order_id="O1")
    assert reason(refused) is Reason.LEAK_CROSS_SESSION_REF and refused.tag == 37  # type: ignore[union-attr]
    assert reason(g.status(B, "B-S1", order_id="O1")) is Reason.LEAK_CROSS_SESSION_REF
    # The owner names its own order freely, by OrderID and ClOrdID.
    assert g.cancel(A, "C2", "C1", order_id="O1") is None
    assert g.status(A, "C1", order_id="O1") is None
    assert g.guard.cross_refs == 2


def test_clordid_only_another_session_used_is_a_cross_reference() -> None:
    g = Guarded()
    assert g.order(A, "C1") is None
    for refused, tag in ((g.cancel(B, "B-1", "C1"), 41), (g.replace(B, "B-2", "C1"), 41), (g.status(B, "C1"), 11)):
        assert reason(refused) is Reason.LEAK_CROSS_SESSION_REF
        assert refused.tag == tag  # type: ignore[union-attr]
    # An OrderID nobody owns yet ("NONE", or not learned) is not a reference to anyone's order.
    assert g.cancel(A, "C2", "C1", order_id="NONE") is None
    assert g.status(B, "B-UNKNOWN", order_id="O-UNKNOWN") is None


def test_same_clordid_used_independently_by_two_sessions_is_not_a_cross_reference() -> None:
    """ClOrdIDs are unique per session only: two sessions may well both use "X"."""
    g = Guarded()
    assert g.order(A, "X") is None
    assert g.order(B, "X") is None
    assert g.report(A, "X", "OA") is None
    assert g.report(B, "X", "OB") is None
    assert g.cancel(A, "XA-C", "X") is None
    assert g.cancel(B, "XB-C", "X") is None
    assert g.status(A, "X", order_id="OA") is None
    assert g.status(B, "X", order_id="OB") is None
    # Each session's OrderID is still its own.
    assert reason(g.cancel(B, "XB-C2", "X", order_id="OA")) is Reason.LEAK_CROSS_SESSION_REF
    assert g.guard.cross_refs == 1 and g.guard.blocked == 0


def test_new_clordid_of_a_cancel_colliding_with_another_sessions_is_not_a_reference() -> None:
    """The ClOrdID (11) of a cancel or replace is the request's own new identifier; only its
    OrigClOrdID (41) names an order. A fresh id that happens to equal another session's ClOrdID
    refers to nothing, exactly as a NewOrderSingle reusing it does not."""
    g = Guarded()
    assert g.order(A, "A-7") is None
    assert g.order(B, "B-1") is None
    assert g.cancel(B, "A-7", "B-1") is None
    assert g.replace(B, "A-7", "B-1") is None
    assert g.guard.cross_refs == 0
    # ... and that cancel's reply goes to B, which now uses "A-7" too.
    assert g.report(B, "A-7", "OB-1") is None


# -- blocked deliveries --------------------------------------------------------------------------------


def test_execution_report_to_a_non_owner_is_blocked() -> None:
    g = Guarded()
    assert g.order(A, "C1") is None
    assert g.report(A, "C1", "O1") is None
    refused = g.report(B, "C1", "O1")  # A's order, about to reach B
    assert reason(refused) is Reason.LEAK_BLOCKED_DELIVERY and refused.tag == 37  # type: ignore[union-attr]
    assert reason(g.report(B, None, "O1")) is Reason.LEAK_BLOCKED_DELIVERY  # by OrderID alone
    assert reason(g.report(B, "C1", "NONE", b"9")) is Reason.LEAK_BLOCKED_DELIVERY  # by ClOrdID alone
    assert reason(g.report(B, "C1", "O-NEW")) is Reason.LEAK_BLOCKED_DELIVERY
    assert g.guard.blocked == 4
    # A receives its own reports; B receives reports for orders nobody else owns.
    assert g.report(A, "C1", "O1") is None
    assert g.report(B, "B-UNSOLICITED", "O-B") is None
    # Only replies to orders are inspected.
    assert g.guard.outbound(B, b"0", get(t11="C1", t37="O1"), g.clock()) is None


def test_order_id_is_not_learned_from_a_blocked_report() -> None:
    g = Guarded()
    assert g.order(A, "C1") is None
    assert reason(g.report(B, "C1", "O1")) is Reason.LEAK_BLOCKED_DELIVERY
    assert g.report(A, "C1", "O1") is None  # O1 is A's, learned from A's report only
    assert reason(g.cancel(B, "B-1", "B-ORIG", order_id="O1")) is Reason.LEAK_CROSS_SESSION_REF


# -- spoofing ------------------------------------------------------------------------------------------


def test_on_behalf_of_and_deliver_to_must_be_allowed() -> None:
    g = Guarded().guard
    now = 1.0
    refused = g.inbound(A, b"D", get(t11="C1", t115="OMS2"), now)
    assert reason(refused) is Reason.SPOOFING and refused.tag == 115  # type: ignore[union-attr]
    refused = g.inbound(A, b"0", get(t128="ATS2"), now)  # any message type, not only orders
    assert reason(refused) is Reason.SPOOFING and refused.tag == 128  # type: ignore[union-attr]
    desks = frozenset({b"DESK-1"})
    assert g.inbound(A, b"D", get(t11="C2", t115="DESK-1"), now, desks) is None
    assert g.inbound(A, b"D", get(t11="C3", t128="DESK-1"), now, desks) is None
    assert reason(g.inbound(A, b"D", get(t11="C4", t115="DESK-2"), now, desks)) is Reason.SPOOFING
    assert g.spoofing == 3
    # A refused order is not claimed: C1 stays unknown, so B may use it.
    assert g.inbound(B, b"F", get(t11="B-1", t41="C1"), now) is None


# -- memory: count and age -----------------------------------------------------------------------------


def test_memory_bounded_by_max_orders() -> None:
    g = Guarded(max_orders=3)
    for i in range(5):
        assert g.order(A, f"C{i}") is None
        assert g.report(A, f"C{i}", f"O{i}") is None
    # The oldest are forgotten, ClOrdIDs and OrderIDs alike; the newest three are still A's.
    assert g.cancel(B, "B-1", "C0") is None
    assert g.cancel(B, "B-2", "B-ORIG", order_id="O1") is None
    assert reason(g.cancel(B, "B-3", "C4")) is Reason.LEAK_CROSS_SESSION_REF
    assert reason(g.cancel(B, "B-4", "B-ORIG", order_id="O4")) is Reason.LEAK_CROSS_SESSION_REF
    assert g.guard.orders == 3 and len(g.guard._clordids) <= 3 and len(g.guard._orderids) <= 3


def test_a_clordid_two_sessions_use_is_forgotten_one_claim_at_a_time() -> None:
    """ClOrdIDs are unique per session only: A and B may both use X. At the bound, the oldest claim
    goes first -- A's use of X -- and B's stays, with everything it implies."""
    g = Guarded(max_orders=3)
    assert g.order(A, "X") is None
    g.clock.advance(1)
    assert g.order(B, "X") is None
    assert g.order(A, "Y") is None
    assert g.guard.orders == 3
    assert g.report(A, "X", "OX", msg_type=b"9") is None  # both own X: A's reply is A's
    g.clock.advance(1)
    assert g.order(A, "Z") is None  # a fourth claim: A's X, the oldest, is forgotten
    assert g.guard.orders == 3
    assert reason(g.cancel(A, "A-2", "X")) is Reason.LEAK_CROSS_SESSION_REF  # X is B's alone now
    assert g.report(B, "X", "OX3") is None
    assert reason(g.report(A, "X", "OX2")) is Reason.LEAK_BLOCKED_DELIVERY
    count, total = g.round_trips()
    assert count == 2 and abs(total - 2.0) < 1e-9  # A's X and B's X, each answered after 1 s
    g.clock.advance(100_000)
    g.guard.expire()
    assert g.guard.orders == 0 and not g.guard._clordids


def test_expire_forgets_orders_older_than_max_age() -> None:
    g = Guarded(max_age=60.0)
    assert g.order(A, "OLD") is None
    assert g.report(A, "OLD", "O-OLD") is None  # answered: its round trip is recorded
    assert g.order(A, "OLD-UNANSWERED") is None
    g.clock.advance(30)
    assert g.order(A, "NEW") is None
    assert g.report(A, "NEW", "O-NEW") is None
    g.clock.advance(31)  # OLD and OLD-UNANSWERED are 61 s old, NEW 31 s
    g.guard.expire()
    assert g.cancel(B, "B-1", "OLD") is None
    assert g.cancel(B, "B-2", "OLD-UNANSWERED") is None
    assert g.cancel(B, "B-3", "B-ORIG", order_id="O-OLD") is None
    assert reason(g.cancel(B, "B-4", "NEW")) is Reason.LEAK_CROSS_SESSION_REF
    assert reason(g.cancel(B, "B-5", "B-ORIG", order_id="O-NEW")) is Reason.LEAK_CROSS_SESSION_REF
    g.clock.advance(60)
    g.guard.expire()
    assert g.cancel(B, "B-6", "NEW") is None
    assert not g.guard._orderids and all(e[0] == B for e in g.guard._clordids.values())  # only B's cancels


def test_expire_with_the_clock_the_inspector_uses() -> None:
    """The proxy builds its guard with the default clock, and the inspector hands it `now` from
    its own default clock (wall time): expiry must compare like with like."""
    guard = LeakGuard(max_age=60.0)
    two_minutes_ago = time.time() - 120
    assert guard.inbound(A, b"D", get(t11="C1"), two_minutes_ago) is None
    assert guard.outbound(A, b"8", get(t11="C1", t37="O1"), two_minutes_ago) is None
    guard.expire()
    assert guard.inbound(B, b"F", get(t11="B-1", t41="C1", t37="O1"), time.time()) is None


# -- the leakage index and round trips ------------------------------------------------------------------


def test_leakage_index_counts_within_the_window_only() -> None:
    g = Guarded(window=300.0)
    assert g.guard.index() == 0.0
    assert g.order(A, "C1") is None
    assert g.cancel(B, "B-1", "C1") is not None  # t = 0
    g.clock.advance(200)
    assert g.guard.inbound(B, b"D", get(t11="B-2", t115="OMS1"), g.clock()) is not None  # t = 200
    assert g.guard.index() == 2 * 60.0 / 300.0  # refusals per minute over the window
    g.clock.advance(150)  # t = 350: the first one left the window
    assert g.guard.index() == 60.0 / 300.0
    g.clock.advance(151)
    assert g.guard.index() == 0.0


def test_round_trip_recorded_once_per_clordid() -> None:
    g = Guarded()
    assert g.order(A, "C1") is None
    g.clock.advance(0.004)
    assert g.report(A, "C1", "O1") is None  # New
    g.clock.advance(0.004)
    assert g.report(A, "C1", "O1") is None  # Fill: not a second round trip
    count, total = g.round_trips()
    assert count == 1 and abs(total - 0.004) < 1e-9
    rt = g.guard.round_trips  # bucket counts by metrics.LATENCY_BUCKETS, then +Inf, then the sum
    assert len(rt) == len(LATENCY_BUCKETS) + 2
    assert rt[LATENCY_BUCKETS.index(0.005)] == 1
    # Another session's order with the same ClOrdID has its own round trip.
    assert g.order(B, "C1") is None
    assert g.report(B, "C1", "O2") is None
    assert g.round_trips()[0] == 2
    # A cancel's or replace's reply is no order round trip: NewOrderSingle only.
    assert g.cancel(A, "C1-CXL", "C1") is None
    assert g.replace(A, "C1-RPL", "C1") is None
    g.clock.advance(0.004)
    assert g.report(A, "C1-CXL", "O1") is None
    assert g.report(A, "C1-RPL", "O1") is None
    assert g.round_trips()[0] == 2
    # A report that is blocked, or that answers no known order, is no round trip.
    assert g.report(B, "UNKNOWN", "O3") is None
    assert g.order(A, "C9") is None
    assert g.report(B, "C9", "O9") is not None
    assert g.round_trips()[0] == 2


# -- inside the session inspector: what each side actually receives ---------------------------------------


def _policy(name: str) -> SessionPolicy:
    return SessionPolicy(name=name, begin_string="FIX.4.4", sender_comp_id=name, target_comp_id="ATS",
                         validation=ValidationMode.OFF)


class Side:
    """One session through a SessionInspector sharing `guard`; both engines reduced to numbering."""

    def __init__(self, name: str, guard: LeakGuard) -> None:
        self.name = name
        state = SessionState(_policy(name))
        self.insp = SessionInspector(lambda _msg: state, source="127.0.0.1", leak_guard=guard)
        self.oms_seq = 1
        self.ats_seq = 1
        assert self.oms(b"A", (98, 0), (108, 30)).logon is not None
        assert self.ats(b"A", (98, 0), (108, 30)).to_initiator

    def oms(self, mt: bytes, *body: tuple[object, object]) -> ReadResult:
        raw = encode("FIX.4.4", [(35, mt), (49, self.name), (56, "ATS"), (34, self.oms_seq),
                                 (52, utc_timestamp()), *body])  # type: ignore[list-item]
        self.oms_seq += 1
        return self.insp.from_initiator(raw, time.perf_counter())

    def ats(self, mt: bytes, *body: tuple[object, object]) -> ReadResult:
        raw = encode("FIX.4.4", [(35, mt), (49, "ATS"), (56, self.name), (34, self.ats_seq),
                                 (52, utc_timestamp()), *body])  # type: ignore[list-item]
        self.ats_seq += 1
        return self.insp.from_acceptor(raw, time.perf_counter())


def decoded(chunks: Iterable[bytes]) -> list[Message]:
    items = Decoder().feed(b"".join(chunks))
    assert all(isinstance(m, Message) for m in items)
    return items  # type: ignore[return-value]


def _report(clordid: str, order_id: str) -> list[tuple[object, object]]:
    return [(37, order_id), (11, clordid), (17, f"E-{clordid}"), (150, "0"), (39, "0"), (55, "VOD.L"),
            (54, "1"), (38, "100"), (151, "100"), (14, "0"), (6, "0")]


def test_inspector_blocked_report_becomes_gapfill_to_oms_and_reject_to_ats() -> None:
    guard = LeakGuard()
    a, b = Side(A, guard), Side(B, guard)
    assert decoded(a.oms(b"D", (11, "C1"), (55, "VOD.L"), (54, "1"), (38, "100"), (40, "1")).to_acceptor)
    assert decoded(a.ats(b"8", *_report("C1", "O1")).to_initiator)[0].msg_type == b"8"  # A's own: delivered

    seq = b.ats_seq
    res = b.ats(b"8", *_report("C1", "O1"))  # A's order, on B's session: never delivered
    [to_oms] = decoded(res.to_initiator)
    assert to_oms.msg_type == b"4" and to_oms.get(b"123") == b"Y" and to_oms.get(b"34") == b"%d" % seq
    assert to_oms.get(b"36") == b"%d" % (seq + 1)
    assert b"C1" not in b"".join(res.to_initiator) and b"O1" not in b"".join(res.to_initiator)
    [to_ats] = decoded(res.to_acceptor)
    assert to_ats.msg_type == b"3" and to_ats.get(b"45") == b"%d" % seq and to_ats.get(b"372") == b"8"
    [ev] = res.events
    assert ev.reason is Reason.LEAK_BLOCKED_DELIVERY and ev.outcome is Outcome.REFUSED
    assert ev.session == B and ev.direction is Direction.OUTBOUND
    stats = b.insp.stats[Direction.OUTBOUND]
    assert (stats.received, stats.forwarded, stats.refused) == (2, 1, 1)  # Logon forwarded, report refused
    assert res.forwarded == [] and res.close is None
    # The session goes on: B's next report is delivered, renumbered over the Reject the proxy sent.
    assert decoded(b.ats(b"8", *_report("B-1", "OB-1")).to_initiator)[0].get(b"11") == b"B-1"


def test_inspector_cross_reference_and_spoofing_refused_toward_the_oms() -> None:
    guard = LeakGuard()
    a, b = Side(A, guard), Side(B, guard)
    a.oms(b"D", (11, "C1"), (55, "VOD.L"), (54, "1"), (38, "100"), (40, "1"))
    a.ats(b"8", *_report("C1", "O1"))
    for body, why in (
        ([(11, "B-C1"), (41, "C1"), (55, "VOD.L"), (54, "1"), (38, "100")], Reason.LEAK_CROSS_SESSION_REF),
        ([(37, "O1"), (11, "B-C2"), (41, "B-X"), (55, "VOD.L"), (54, "1")], Reason.LEAK_CROSS_SESSION_REF),
        ([(115, "OMS1"), (11, "B-C3"), (55, "VOD.L"), (54, "1"), (38, "100"), (40, "1")], Reason.SPOOFING),
    ):
        seq = b.oms_seq
        mt = b"D" if why is Reason.SPOOFING else b"F"
        res = b.oms(mt, *body)  # type: ignore[arg-type]
        [gap] = decoded(res.to_acceptor)  # the ATS gets a GapFill in its place, never the request
        assert gap.msg_type == b"4" and gap.get(b"123") == b"Y"
        [rej] = decoded(res.to_initiator)
        assert rej.msg_type == b"3" and rej.get(b"45") == b"%d" % seq and rej.get(b"372") == mt
        assert [e.reason for e in res.events] == [why]
    assert guard.cross_refs == 2 and guard.spoofing == 1 and guard.index() > 0
