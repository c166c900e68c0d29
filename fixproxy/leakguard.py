"""Information leakage guard: which session owns which order, and refusals when order data would
cross sessions. Sans-IO, shared by every session of the proxy.

A dark pool's worst failure is one participant's flow reaching another. The guard learns
ownership from the order flow itself: a NewOrderSingle's ClOrdID belongs to the session that sent
it, and the OrderID the ATS assigns in its first ExecutionReport to that session belongs to it too.
Then:
- a cancel, replace or status request (F/G/H) naming an OrderID (37) another session owns, or an
  OrigClOrdID (41) / ClOrdID only another session has used, is refused (LEAK_CROSS_SESSION_REF);
- an ExecutionReport or OrderCancelReject about to be delivered to a session that does not own
  its order is blocked, never delivered (LEAK_BLOCKED_DELIVERY);
- OnBehalfOfCompID (115) / DeliverToCompID (128) values the session is not entitled to are
  refused (SPOOFING).
ClOrdIDs are unique per session only, so they are keyed by (session, ClOrdID); OrderIDs are
assigned by the ATS and keyed alone. Memory is bounded by count and age (oldest forgotten first).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable

from .codec import _speedups
from .metrics import LATENCY_BUCKETS
from .reasons import Reason, Refusal

ORDER_ENTRY = frozenset({b"F", b"G", b"H"})
ORDER_REPLIES = frozenset({b"8", b"9"})

Get = Callable[[bytes], "bytes | None"]


def _tuple_pair(a: str, b: float) -> tuple[str, float]:
    return (a, b)


# (session, time) for the ClOrdID dict: with the C accelerator an untracked tuple, so that the dict
# of up to a million of them stays out of the garbage collector's full collections (see _speedups.c).
_pair: Callable[[str, float], tuple[str, float]] = getattr(_speedups, "untracked_pair", None) or _tuple_pair
_SHARED = "shared"  # the value in LeakGuard._clordids of a ClOrdID several sessions use (not a GC object)


class LeakGuard:
    def __init__(self, *, max_orders: int = 1_000_000, max_age: float = 86_400.0, window: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        # `clock` must be the clock of the `now` the callers pass (SessionInspector's: wall time),
        # since expire() compares the two.
        self.max_orders = max_orders
        self.max_age = max_age
        self.window = window
        self._clock = clock
        # ClOrdID -> (session, time the order was sent) when one session uses it (the common case),
        # or _SHARED when several do (ClOrdIDs are unique per session only; their {session: time}
        # in _shared). The time is negated once the order's first reply has been seen (the round
        # trip is recorded once; the age is kept for expiry). One plain dict: one lookup and one
        # insert per NewOrderSingle.
        self._clordids: dict[bytes, tuple[str, float] | str] = {}
        # ClOrdIDs several sessions use: {session: time} here, and _SHARED in _clordids. Not in
        # _clordids itself: a dict among its values would make the garbage collector walk all of it
        # (see _pair).
        self._shared: dict[bytes, dict[str, float]] = {}
        # The ClOrdIDs in claim order (age order), one entry per claim: the oldest is forgotten
        # first, in O(1). (An OrderedDict did the same with a tuple key per order and a second dict
        # for the owners: twice the inserts. A plain dict's own order would not do: removing its
        # oldest entry with next(iter(d)) scans the holes earlier removals left, 32 µs per order at
        # 100k orders, measured.)
        self._claims: deque[bytes] = deque()
        self._orderids: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._recent: deque[tuple[float, str]] = deque()  # (time, kind) for the leakage index
        # NewOrderSingle -> first ExecutionReport: counts per LATENCY_BUCKETS bucket, then +Inf, then
        # the sum (constant memory; exported by the metrics collector)
        self.round_trips: list[float] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        self.blocked = 0
        self.cross_refs = 0
        self.spoofing = 0

    # ---- inbound: OMS -> ATS ------------------------------------------------------------------
    def inbound(self, session: str, msg_type: bytes, get: Get, now: float,
                on_behalf_of: frozenset[bytes] | None = None) -> Refusal | None:
        if get(b"115") is not None or get(b"128") is not None:
            spoof = self._spoofing(get, on_behalf_of)
            if spoof is not None:
                return spoof
        if msg_type == b"D":
            cl = get(b"11")
            if cl is not None:
                self.claim(session, cl, now)
            return None
        if msg_type in ORDER_ENTRY:
            return self.order_entry(session, msg_type, get(b"11"), get(b"37"), get(b"41"), now)
        return None

    def order_entry(self, session: str, msg_type: bytes, cl: bytes | None, oid: bytes | None,
                    orig: bytes | None, now: float) -> Refusal | None:
        """A cancel, replace or status request (F/G/H) by its ClOrdID, OrderID and OrigClOrdID:
        what `inbound` does once the spoofing check has passed (the session's C fast path reads
        the three fields itself)."""
        if oid is not None and oid != b"NONE":
            owner = self._orderids.get(oid)
            if owner is not None and owner[0] != session:
                return self._cross(f"OrderID {oid.decode('latin-1')} belongs to another session", 37)
        # The order a request names: OrigClOrdID for a cancel/replace (its own ClOrdID is a new
        # identifier, which may equal another session's as a NewOrderSingle's may), the ClOrdID for
        # a status request.
        ref, tag = (cl, 11) if msg_type == b"H" else (orig, 41)
        if ref is not None and not self._owns(session, ref) and self._used_by_other(ref, session):
            return self._cross(f"ClOrdID {ref.decode('latin-1')} belongs to another session", tag)
        if cl is not None and msg_type != b"H":
            self.claim(session, cl, -now)  # owned, but its reply is no order round trip
        return None

    # ---- outbound: ATS -> OMS -----------------------------------------------------------------
    def outbound(self, session: str, msg_type: bytes, get: Get, now: float) -> Refusal | None:
        if msg_type not in ORDER_REPLIES:
            return None
        return self.reply(session, get(b"11"), get(b"37"), now)

    def reply(self, session: str, cl: bytes | None, oid: bytes | None, now: float) -> Refusal | None:
        """An ExecutionReport or OrderCancelReject to `session`, by its ClOrdID and OrderID."""
        if oid is not None and oid != b"NONE":
            owner = self._orderids.get(oid)
            if owner is not None and owner[0] != session:
                return self._block(f"Order {oid.decode('latin-1')} of another session")
        owned = False
        if cl is not None:
            entry = self._clordids.get(cl)
            if type(entry) is tuple:
                sent = entry[1] if entry[0] == session else None
            else:
                sent = None if entry is None else self._shared[cl].get(session)
            if sent is None:
                if entry is not None:  # another session's ClOrdID, not this one's
                    return self._block(f"ClOrdID {cl.decode('latin-1')} of another session")
            else:
                owned = True
                if sent > 0.0:
                    rt = now - sent  # first reply: NewOrderSingle -> ExecutionReport
                    self.round_trips[bisect_left(LATENCY_BUCKETS, rt)] += 1
                    self.round_trips[-1] += rt
                    if type(entry) is tuple:
                        self._clordids[cl] = _pair(session, -sent)
                    else:
                        self._shared[cl][session] = -sent
        if owned and oid is not None and oid != b"NONE" and oid not in self._orderids:
            self._orderids[oid] = (session, now)
            if len(self._orderids) > self.max_orders:
                self._orderids.popitem(last=False)
        return None

    # ---- the leakage index --------------------------------------------------------------------
    def outside_allow_list(self) -> None:
        """Access from an address outside a session's allow-list (refused at Logon by the
        authoriser, not here): part of the index too."""
        self._recent.append((self._clock(), "source_not_allowed"))

    def index(self) -> float:
        """Leakage-relevant refusals per minute over the sliding window (0 is the target)."""
        now = self._clock()
        q = self._recent
        while q and q[0][0] < now - self.window:
            q.popleft()
        return len(q) * 60.0 / self.window

    def expire(self) -> None:
        """Forget orders older than max_age (called by the proxy's timer, not per message)."""
        limit = self._clock() - self.max_age
        while self._orderids:
            _, (_, t) = next(iter(self._orderids.items()))
            if t >= limit:
                break
            self._orderids.popitem(last=False)
        claims = self._claims
        while claims:
            entry = self._clordids[claims[0]]
            t = entry[1] if type(entry) is tuple else min(abs(v) for v in self._shared[claims[0]].values())
            if abs(t) >= limit:
                break
            self._forget_oldest()

    @property
    def orders(self) -> int:
        """(session, ClOrdID) pairs held."""
        return len(self._claims)

    # ---- internals ----------------------------------------------------------------------------
    def claim(self, session: str, cl: bytes, now: float) -> None:
        """`session` uses ClOrdID `cl` from `now` (negative: owned, no round trip to time)."""
        clordids = self._clordids
        entry = clordids.get(cl)
        if entry is None:
            clordids[cl] = _pair(session, now)
        elif type(entry) is tuple:
            if entry[0] == session:
                return
            self._shared[cl] = {entry[0]: entry[1], session: now}
            clordids[cl] = _SHARED
        else:
            shared = self._shared[cl]
            if session in shared:
                return
            shared[session] = now
        claims = self._claims
        claims.append(cl)
        if len(claims) > self.max_orders:
            self._forget_oldest()

    def _owns(self, session: str, cl: bytes) -> bool:
        entry = self._clordids.get(cl)
        if type(entry) is tuple:
            return entry[0] == session
        return entry is not None and session in self._shared[cl]

    def _used_by_other(self, cl: bytes, session: str) -> bool:
        """Some other session uses ClOrdID `cl`, and `session` does not."""
        entry = self._clordids.get(cl)
        if type(entry) is tuple:
            return entry[0] != session
        return entry is not None and session not in self._shared[cl]

    def _forget_oldest(self) -> None:
        """Forget the oldest claim: the first in _claims (the ClOrdID's oldest session, when several
        sessions use it: claims are appended in time order)."""
        cl = self._claims.popleft()
        entry = self._clordids[cl]
        if type(entry) is tuple:
            del self._clordids[cl]
            return
        shared = self._shared[cl]
        oldest = min(shared, key=lambda s: abs(shared[s]))
        del shared[oldest]
        if len(shared) == 1:
            ((session, t),) = shared.items()
            del self._shared[cl]
            self._clordids[cl] = _pair(session, t)

    def _spoofing(self, get: Get, allowed: frozenset[bytes] | None) -> Refusal | None:
        for tag in (b"115", b"128"):
            val = get(tag)
            if val is not None and (allowed is None or val not in allowed):
                self.spoofing += 1
                self._recent.append((self._clock(), "spoofing"))
                return Refusal(Reason.SPOOFING, f"{'OnBehalfOfCompID' if tag == b'115' else 'DeliverToCompID'} "
                               f"{val.decode('latin-1')} not allowed for this session", int(tag))
        return None

    def _cross(self, text: str, tag: int) -> Refusal:
        self.cross_refs += 1
        self._recent.append((self._clock(), "cross_ref"))
        return Refusal(Reason.LEAK_CROSS_SESSION_REF, text, tag)

    def _block(self, text: str) -> Refusal:
        self.blocked += 1
        self._recent.append((self._clock(), "blocked_delivery"))
        return Refusal(Reason.LEAK_BLOCKED_DELIVERY, text, 37)
