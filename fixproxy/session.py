"""The session inspector: a sans-IO FIX session observer that decides what crosses the proxy.

One `SessionInspector` per OMS connection (and its ATS leg). Feed it the bytes read from either
side; it returns an `Outcome`: bytes to write to each side, security events, and whether to close.

The proxy is not a FIX engine. Valid messages are forwarded byte-exact. It speaks FIX itself only
to refuse, by the rules of the proxy issue:

- framing errors are dropped (FIX says the receiver ignores a garbled message); the receiver sees
  the gap and asks for a resend, and the resend is checked again;
- a well-framed message that a rule refuses is replaced, toward the receiver, by a
  SequenceReset-GapFill with the refused message's MsgSeqNum, and answered, toward the sender, by
  a Reject (or BusinessMessageReject / ExecutionReport, per policy);
- that answer takes a number in the reverse stream, so each direction keeps a `SeqTranslator`
  mapping the sender's MsgSeqNum to the number the receiver sees. It is the identity until the
  first refusal, and then only MsgSeqNum (34) and the fields that point into the other stream
  (45, 7/16, 36, 789) are rewritten, every other byte kept.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .codec import DEFAULT_LIMITS, Decoder, FrameError, Limits, Message, _speedups, decode_one, encode, replace_fields
from .events import Direction, Outcome, SecurityEvent
from .leakguard import ORDER_ENTRY, ORDER_REPLIES, LeakGuard
from .policy import ORDER_MSG_TYPES, SESSION_MSG_TYPES, Action, RejectStyle, SessionPolicy, TokenBucket
from .reasons import Reason, Refusal

INBOUND = Direction.INBOUND
OUTBOUND = Direction.OUTBOUND

# How many refused sequence numbers / proxy-sent messages each direction remembers for resends.
_REMEMBER = 10_000

_ADMIN_REJECT_TYPES = frozenset({b"3", b"j"})
_GUARDED = frozenset({b"D", b"F", b"G", b"H", b"8", b"9"})  # order flow the leak guard inspects
# The header checks of the common message in C (fixproxy/_speedups.c), else None: Python's path.
_session_fast = getattr(_speedups, "session_fast", None)
_CLOSED = Refusal(Reason.FLOOD, "the session was closed")  # _checks: closed, nothing more to do


def utc_timestamp(now: float | None = None) -> bytes:
    t = time.time() if now is None else now
    ms = int((t - int(t)) * 1000)
    return time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(t)).encode() + b".%03d" % ms


class SeqTranslator:
    """MsgSeqNum translation for one direction.

    Insertion i (a message the proxy sent toward this receiver) happened just before the sender's
    message number ``bounds[i]``; it sits at visible number ``bounds[i] + i``. A sender's message s
    is seen as ``s + #{i : bounds[i] <= s}``.
    """

    __slots__ = ("_own", "bounds", "positions")

    def __init__(self) -> None:
        self.bounds: list[int] = []
        self.positions: list[int] = []
        self._own: OrderedDict[int, list[tuple[bytes, bytes]]] = OrderedDict()

    @property
    def identity(self) -> bool:
        return not self.bounds

    def to_visible(self, s: int) -> int:
        return s + bisect_right(self.bounds, s)

    def first_sender_at_or_after(self, v: int) -> int:
        """The sender's number of the first sender message at visible position >= v."""
        return v - bisect_left(self.positions, v)

    def last_sender_at_or_before(self, v: int) -> int:
        i = bisect_left(self.positions, v)
        if i < len(self.positions) and self.positions[i] == v:
            return v - i - 1
        return v - i

    def is_own(self, v: int) -> bool:
        i = bisect_left(self.positions, v)
        return i < len(self.positions) and self.positions[i] == v

    def insert(self, next_sender_seq: int, fields: list[tuple[bytes, bytes]]) -> int:
        """Reserve the visible number for a proxy message sent now; remember it for resends."""
        if self.bounds and next_sender_seq < self.bounds[-1]:
            next_sender_seq = self.bounds[-1]  # the sender reset below us: keep the list sorted
        i = len(self.bounds)
        self.bounds.append(next_sender_seq)
        v = next_sender_seq + i
        self.positions.append(v)
        self._own[v] = fields
        if len(self._own) > _REMEMBER:
            self._own.popitem(last=False)
        return v

    def own_in_range(self, begin: int, end: int) -> list[int]:
        lo = bisect_left(self.positions, begin)
        hi = len(self.positions) if end <= 0 else bisect_right(self.positions, end)
        return self.positions[lo:hi]

    def own_fields(self, v: int) -> list[tuple[bytes, bytes]] | None:
        return self._own.get(v)

    def reset(self) -> None:
        self.bounds.clear()
        self.positions.clear()
        self._own.clear()


@dataclass
class SessionState:
    """What survives a reconnect of the same FIX session (the engines keep their sequence
    numbers across connections, so the translation must outlive the TCP connection)."""

    policy: SessionPolicy
    translators: dict[Direction, SeqTranslator] = field(
        default_factory=lambda: {INBOUND: SeqTranslator(), OUTBOUND: SeqTranslator()})
    next_seq: dict[Direction, int] = field(default_factory=lambda: {INBOUND: 1, OUTBOUND: 1})
    refused: dict[Direction, OrderedDict[int, Reason]] = field(
        default_factory=lambda: {INBOUND: OrderedDict(), OUTBOUND: OrderedDict()})
    connections: int = 0

    def reset(self) -> None:
        for d in (INBOUND, OUTBOUND):
            self.translators[d].reset()
            self.next_seq[d] = 1
            self.refused[d].clear()


class ReadResult:
    """What one read produced. Lists are appended in order; the I/O layer writes them."""

    __slots__ = ("close", "events", "forwarded", "logon", "refused", "to_acceptor", "to_initiator")

    def __init__(self) -> None:
        self.to_acceptor: list[bytes] = []
        self.to_initiator: list[bytes] = []
        # The messages of this read by fate (references, no copies): latency by MsgType and the
        # audit record of the read are built from them, off the per-message path.
        self.forwarded: list[Message] = []
        self.refused: list[tuple[Message, SecurityEvent]] = []
        self.events: list[SecurityEvent] = []
        self.close: Refusal | None = None  # close both legs after writing what is here
        self.logon: SessionState | None = None  # Logon accepted: connect the ATS leg, then write

    def out(self, to: Direction) -> list[bytes]:
        return self.to_acceptor if to is INBOUND else self.to_initiator


Authorise = Callable[[Message], "SessionState | Refusal"]
Validate = Callable[[Message], "Refusal | None"]  # the data-dictionary check, after check_syntax
Fast = tuple[int, "bytes | None", "bytes | None", "bytes | None"]  # session_fast: MsgSeqNum, 11, 37, 41


class Stats:
    """Per-direction counters for audit completeness: received = forwarded + refused + dropped."""

    __slots__ = ("dropped", "forwarded", "modified", "received", "refused", "shadowed")

    def __init__(self) -> None:
        self.received = 0
        self.forwarded = 0
        self.refused = 0
        self.dropped = 0
        self.shadowed = 0
        self.modified = 0  # rewrites that changed more than the translated numbers (never expected)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class SessionInspector:
    """Sans-IO FIX session inspector for one OMS connection and its ATS leg.

    `authorise` decides the initiator's Logon (identity binding, source, password) and returns the
    session's persistent state; `validator` builds the data-dictionary check for a policy (or None
    for validation off).
    """

    def __init__(self, authorise: Authorise, *, source: str | None = None,
                 limits: Limits = DEFAULT_LIMITS,
                 validator: Callable[[SessionPolicy], Validate | None] | None = None,
                 clock: Callable[[], float] = time.time, leak_guard: LeakGuard | None = None) -> None:
        self._authorise = authorise
        self._guard = leak_guard
        self._on_behalf: frozenset[bytes] | None = None
        self.logout_seen = False
        # Set by the proxy while the audit trail cannot be written and policy is fail-closed.
        self.refuse_orders: Refusal | None = None
        self._validator_for = validator
        self._validate: Validate | None = None
        self._clock = clock
        self.source = source
        self.limits = limits
        self.decoders = {INBOUND: Decoder(limits), OUTBOUND: Decoder(limits)}
        self.state: SessionState | None = None
        self.stats = {INBOUND: Stats(), OUTBOUND: Stats()}
        self.heartbeat_interval: int | None = None
        self.closed: Refusal | None = None
        self._bucket: TokenBucket | None = None
        self._comp = {INBOUND: (b"", b""), OUTBOUND: (b"", b"")}  # (49, 56) expected per direction
        self._allowed: dict[Direction, frozenset[bytes] | None] = {INBOUND: None, OUTBOUND: None}
        self._ats_logon_seen = False
        self._reset_by: Direction | None = None  # who sent a ResetSeqNumFlag Logon not yet answered

    # ------------------------------------------------------------------ public API (sans-IO)
    @property
    def session_name(self) -> str | None:
        return self.state.policy.name if self.state else None

    def from_initiator(self, data: bytes, received_at: float | None = None) -> ReadResult:
        return self._receive(INBOUND, data, received_at)

    def from_acceptor(self, data: bytes, received_at: float | None = None) -> ReadResult:
        return self._receive(OUTBOUND, data, received_at)

    def event(self, reason: Reason | None, outcome: Outcome, detail: str, *,
              direction: Direction | None = None, kind: str | None = None) -> SecurityEvent:
        return SecurityEvent(reason, outcome, detail, session=self.session_name, direction=direction,
                             source=self.source, kind=kind)

    # ------------------------------------------------------------------ the per-read loop
    def _receive(self, d: Direction, data: bytes, received_at: float | None) -> ReadResult:
        res = ReadResult()
        if self.closed is not None:
            return res
        stats = self.stats[d]
        now = self._clock()
        if self._bucket is not None and d is INBOUND:
            self._bucket.refill(now)
        if self._time_window is not None:
            self._window = self._time_window(now)  # one SendingTime window for the whole read
        for item in self.decoders[d].feed(data):
            stats.received += 1
            if type(item) is Message:
                self._message(d, item, res, now, received_at)
            else:
                assert isinstance(item, FrameError)
                stats.dropped += 1
                ev = self.event(item.reason, Outcome.DROPPED,
                                f"{item.detail} ({len(item.skipped)} bytes dropped)", direction=d)
                ev.received_at = received_at
                res.events.append(ev)
            if res.close is not None:
                self.closed = res.close
                break
        return res

    def _message(self, d: Direction, msg: Message, res: ReadResult, now: float,
                 received_at: float | None) -> None:
        state = self.state
        if state is None:
            self._logon(d, msg, res, received_at)
            return
        if msg._checked_with is self.limits and _session_fast is not None:
            sender, target = self._comp[d]
            fast = _session_fast(msg, sender, target, state.next_seq[d], self._allowed[d], self._window)
            if fast is not None:
                # The C scanner split and checked the syntax, and session_fast the header: the
                # CompIDs, MsgSeqNum in order (no PossDup), not Logon/SequenceReset/Logout, MsgType
                # allowed, no OnBehalfOf/DeliverTo, SendingTime in the window. The rest below.
                state.next_seq[d] = fast[0] + 1
                refusal = self._checks(d, msg, msg.msg_type, False, state, res, now, received_at, fast, None)
                if refusal is None:
                    self._forward(d, msg, res)
                elif refusal is not _CLOSED:
                    self._refuse(d, msg, refusal, res, now, received_at)
                return
        # check_syntax, unless the C scanner already checked it under these limits (the common case)
        refusal = None if msg._checked_with is self.limits else msg.check_syntax(self.limits)
        if refusal is not None:
            seq_b = _find_field(msg, b"34")
            if seq_b is not None and seq_b.isdigit() and int(seq_b) < state.next_seq[d] \
                    and _find_field(msg, b"43") != b"Y":
                # A GapFill at a number the receiver has passed is a sequence error on its side.
                refusal = Refusal(Reason.SEQNUM_TOO_LOW, f"MsgSeqNum too low, expecting {state.next_seq[d]} "
                                  f"but received {int(seq_b)}", 34)
                self._disconnect(d, msg, refusal, res, received_at)
                return
            self._refuse(d, msg, refusal, res, now, received_at)
            return
        idx = msg._index
        if idx is None:
            idx = msg.index()
        get = idx.get  # one dict, C-level lookups from here on
        sender, target = self._comp[d]
        if get(b"49") != sender or get(b"56") != target:
            self._disconnect(d, msg, Refusal(
                Reason.COMPID_MISMATCH,
                f"CompIDs {_s(get(b'49'))}->{_s(get(b'56'))} differ from the session's "
                f"{sender.decode()}->{target.decode()}", 49), res, received_at)
            return
        seq_b = get(b"34")
        if seq_b is None or not seq_b.isdigit():
            self._disconnect(d, msg, Refusal(Reason.MISSING_REQUIRED, "MsgSeqNum (34) missing or invalid",
                                             34), res, received_at)
            return
        seq = int(seq_b)
        mt = msg.msg_type
        possdup = get(b"43") == b"Y"
        nxt = state.next_seq[d]
        if possdup:
            # A GapFill carries no content: one resent over a refused number is forwarded, since
            # cutting it to that one number would leave the rest of its range missing.
            first = state.refused[d].get(seq) if mt != b"4" else None
            if first is not None:
                # A resend of a message we refused: gap-fill it again, never forward it.
                self._gap_fill(d, msg, seq, True, res, now)
                self.stats[d].refused += 1
                ev = self.event(first, Outcome.REFUSED, "Resend of a refused message gap-filled again",
                                direction=d)
                _fill(ev, msg, seq, received_at)
                res.events.append(ev)
                res.refused.append((msg, ev))
                return
        elif seq < nxt and not (mt == b"4" and get(b"123") != b"Y") and not (mt == b"A" and get(b"141") == b"Y"):
            self._disconnect(d, msg, Refusal(
                Reason.SEQNUM_TOO_LOW, f"MsgSeqNum too low, expecting {nxt} but received {seq}", 34),
                res, received_at)
            return
        if mt == b"A" and get(b"141") == b"Y":
            if self._reset_by is not None and self._reset_by is not d:
                # The answer to the other side's reset: the numbering restarted with the request;
                # resetting again would forget what the requester has sent since (its Logon).
                self._reset_by = None
            else:
                state.reset()
                self._reset_by = d
            nxt = state.next_seq[d]
        if not possdup:
            state.next_seq[d] = seq + 1 if seq >= nxt else nxt
        elif seq >= nxt and mt != b"4":  # a resend of a message the proxy never saw (dropped, garbled)
            state.next_seq[d] = seq + 1
        if mt == b"4":
            new = get(b"36")
            # Reset: the sender's next is NewSeqNo; GapFill: at least NewSeqNo (a live one skips).
            if new is not None and new.isdigit() and (get(b"123") != b"Y" or int(new) > state.next_seq[d]):
                state.next_seq[d] = int(new)
        if mt == b"A" and d is OUTBOUND:
            self._ats_logon_seen = True
        elif mt == b"5":
            self.logout_seen = True  # the close that follows is the session ending, not a failure
        # -- policy -----------------------------------------------------------------------------
        refusal = None
        allowed = self._allowed[d]
        if allowed is not None and mt not in allowed and mt not in SESSION_MSG_TYPES:
            refusal = Refusal(Reason.MSGTYPE_NOT_ALLOWED, f"MsgType {mt.decode()} not allowed", 35)
        else:
            refusal = self._checks(d, msg, mt, possdup, state, res, now, received_at, None, idx)
            if refusal is _CLOSED:
                return
        if refusal is None and not possdup and self._window is not None:
            st = get(b"52")
            lo, hi = self._window  # recomputed once a second, two byte compares here
            if st is None or not (lo <= st[:17] <= hi):
                refusal = Refusal(Reason.STALE_SENDING_TIME, "SendingTime accuracy problem", 52)
        if refusal is not None:
            self._refuse(d, msg, refusal, res, now, received_at)
            return
        self._forward(d, msg, res)

    def _checks(self, d: Direction, msg: Message, mt: bytes, possdup: bool, state: SessionState, res: ReadResult,
                now: float, received_at: float | None, fast: Fast | None,
                idx: dict[bytes, bytes] | None) -> Refusal | None:
        """The policy checks after the header's: dictionary, orders refused (audit down), leak guard,
        rate limit. The leak guard reads ClOrdID/OrderID/OrigClOrdID from `fast` (session_fast's
        answer) or from `idx` (the message's index). _CLOSED: the session was closed (flood)."""
        refusal = None
        if self._validate is not None:
            refusal = self._validate(msg)
        if refusal is None and self.refuse_orders is not None and d is INBOUND and mt in ORDER_MSG_TYPES:
            refusal = self.refuse_orders
        guard = self._guard
        if refusal is None and guard is not None:
            if fast is not None:  # no OnBehalfOf/DeliverTo: the spoofing check has nothing to see
                if mt in _GUARDED:
                    _, cl, oid, orig = fast
                    name = state.policy.name
                    if d is INBOUND:
                        if mt == b"D":
                            if cl is not None:
                                guard.claim(name, cl, now)
                        elif mt in ORDER_ENTRY:
                            refusal = guard.order_entry(name, mt, cl, oid, orig, now)
                    elif mt in ORDER_REPLIES:
                        refusal = guard.reply(name, cl, oid, now)
            elif idx is not None:
                if d is INBOUND:
                    if mt in _GUARDED or b"115" in idx or b"128" in idx:
                        refusal = guard.inbound(state.policy.name, mt, idx.get, now, self._on_behalf)
                elif mt in _GUARDED:
                    refusal = guard.outbound(state.policy.name, mt, idx.get, now)
        if refusal is None and d is INBOUND and self._bucket is not None and not possdup:
            bucket = self._bucket
            if bucket.tokens >= 1.0 and not bucket.refused_in_a_row:
                bucket.tokens -= 1.0  # TokenBucket.take(), inlined: this runs for every message
            elif not bucket.take():
                if bucket.refused_in_a_row > state.policy.rate_limit.disconnect_after:
                    self._disconnect(d, msg, Refusal(Reason.FLOOD, "Message flood: session closed"),
                                     res, received_at)
                    return _CLOSED
                refusal = Refusal(Reason.RATE_LIMITED, "Message rate limit exceeded")
        return refusal

    # ------------------------------------------------------------------ logon
    def _logon(self, d: Direction, msg: Message, res: ReadResult, received_at: float | None) -> None:
        if d is OUTBOUND:
            self._disconnect(d, msg, Refusal(Reason.BEFORE_LOGON, "ATS spoke before the OMS logged on"),
                             res, received_at)
            return
        if msg.msg_type != b"A":
            self._connection_refused(msg, Refusal(
                Reason.BEFORE_LOGON, f"First message must be Logon, got MsgType {msg.msg_type.decode()}"),
                res, received_at)
            return
        refusal = msg.check_syntax(self.limits)
        if refusal is not None:
            self._connection_refused(msg, refusal, res, received_at)
            return
        decided = self._authorise(msg)
        if isinstance(decided, Refusal):
            self._connection_refused(msg, decided, res, received_at)
            return
        state = decided
        policy = state.policy
        self.state = state
        sender = policy.sender_comp_id.encode()
        target = policy.target_comp_id.encode()
        self._comp = {INBOUND: (sender, target), OUTBOUND: (target, sender)}
        self._allowed = {
            INBOUND: _msgtypes(policy.allowed_inbound),
            OUTBOUND: _msgtypes(policy.allowed_outbound),
        }
        self._validate = self._validator_for(policy) if self._validator_for else None
        self._on_behalf = None if policy.allowed_on_behalf_of is None else frozenset(
            v.encode() for v in policy.allowed_on_behalf_of)
        self._bucket = TokenBucket(policy.rate_limit, self._clock())
        self._time_window = _TimeWindow(policy.sending_time_tolerance) if policy.sending_time_tolerance \
            else None
        self._window = self._time_window(self._clock()) if self._time_window is not None else None
        hb = msg.get(b"108")
        self.heartbeat_interval = int(hb) if hb is not None and hb.isdigit() else None
        state.connections += 1
        res.logon = state
        res.events.append(self.event(None, Outcome.INFO,
                                     f"Logon {policy.sender_comp_id}->{policy.target_comp_id} accepted",
                                     direction=INBOUND, kind="session.logon"))
        # The Logon itself goes through the normal path (sequence tracking, translation).
        self._message(d, msg, res, self._clock(), received_at)
        if res.close is not None:
            res.logon = None  # refused after all (e.g. SendingTime): do not open the ATS leg

    _time_window: _TimeWindow | None = None
    _window: tuple[bytes, bytes] | None = None  # the SendingTime bounds of the read being inspected

    # ------------------------------------------------------------------ forwarding
    def _forward(self, d: Direction, msg: Message, res: ReadResult) -> None:
        self.stats[d].forwarded += 1
        state = self.state
        assert state is not None
        tr = state.translators[d]
        other = state.translators[OUTBOUND if d is INBOUND else INBOUND]
        out = res.to_acceptor if d is INBOUND else res.to_initiator
        res.forwarded.append(msg)
        if not tr.bounds and not other.bounds:
            out.append(msg.raw)  # the common case: byte-exact
            return
        out.append(self._translate(d, msg, tr, other, res))

    def _translate(self, d: Direction, msg: Message, tr: SeqTranslator, other: SeqTranslator,
                   res: ReadResult) -> bytes:
        """Rewrite the numbers that refer to translated streams; keep every other byte."""
        get = msg.get
        changes: dict[bytes, bytes] = {}
        seq = int(get(b"34"))  # type: ignore[arg-type]  # checked by the caller
        v = tr.to_visible(seq)
        if v != seq:
            changes[b"34"] = b"%d" % v
        mt = msg.msg_type
        if mt == b"4":
            new = get(b"36")
            if new is not None and new.isdigit():
                n = int(new)
                if get(b"123") == b"Y" and n > seq:
                    # GapFill: the next number after the sender's n-1. When the proxy inserted a
                    # message just before n, that is the insertion, which a recovering receiver
                    # holds queued: jumping to n's own number would discard it. For the same
                    # reason the GapFill is cut around the proxy's application-level messages
                    # inside its range (session-level ones may be skipped: FIX never resends them).
                    nv = tr.to_visible(n - 1) + 1
                    start = v
                    for p in tr.own_in_range(v + 1, nv - 1):
                        own = tr.own_fields(p)
                        if own is None or own[0][1] in SESSION_MSG_TYPES:
                            continue
                        if p > start:
                            res.out(d).append(replace_fields(msg, {b"34": b"%d" % start, b"36": b"%d" % p}))
                        start = p + 1
                    if start != v:
                        changes[b"34"] = b"%d" % start
                else:
                    nv = tr.to_visible(n)
                if nv != n:
                    changes[b"36"] = b"%d" % nv
        elif mt == b"2":
            # ResendRequest: the range names the OTHER stream as this sender sees it.
            b, e = get(b"7"), get(b"16")
            if b is not None and e is not None and b.isdigit() and e.isdigit():
                begin, end = int(b), int(e)
                self._resend_own(d, begin, end, other, res)
                sb = other.first_sender_at_or_after(begin)
                se = 0 if end == 0 else other.last_sender_at_or_before(end)
                if sb != begin:
                    changes[b"7"] = b"%d" % sb
                if se != end:
                    changes[b"16"] = b"%d" % max(se, sb)
        elif mt in _ADMIN_REJECT_TYPES:
            ref = get(b"45")
            if ref is not None and ref.isdigit():
                s = other.last_sender_at_or_before(int(ref))
                if s != int(ref):
                    changes[b"45"] = b"%d" % s
        elif mt == b"A":
            nxt = get(b"789")
            if nxt is not None and nxt.isdigit():
                s = other.first_sender_at_or_after(int(nxt))
                if s != int(nxt):
                    changes[b"789"] = b"%d" % s
        if not changes:
            return msg.raw
        out = replace_fields(msg, changes)
        if not _only_changed(msg, out, changes):
            # Unauthorised modification: the rewrite touched more than the sequence numbers. Never
            # expected; counted and raised so an alert fires (the KPI's second half).
            self.stats[d].modified += 1
            res.events.append(self.event(None, Outcome.INFO, f"Rewrite of MsgSeqNum {seq} changed more than "
                                         f"{sorted(t.decode() for t in changes)}", direction=d,
                                         kind="integrity.modified_forward"))
        return out

    def _resend_own(self, d: Direction, begin: int, end: int, other: SeqTranslator, res: ReadResult) -> None:
        """The sender of a ResendRequest (direction d) asks for the other stream's messages
        begin..end; the ones the proxy sent itself are served by the proxy: session-level ones as a
        GapFill (FIX never resends admin messages), application ones resent with PossDupFlag=Y.
        Receivers queue out-of-order resends, so they may precede the engine's own resends."""
        own = other.own_in_range(begin, end)
        if not own:
            return
        back = OUTBOUND if d is INBOUND else INBOUND  # toward the ResendRequest's sender
        state = self.state
        assert state is not None
        sender, target = self._comp[back]
        begin_string = state.policy.begin_string.encode()
        for v in own:
            fields = other.own_fields(v)
            if fields is None or fields[0][1] in SESSION_MSG_TYPES:
                out = encode(begin_string, [(b"35", b"4"), (b"49", sender), (b"56", target), (b"34", b"%d" % v),
                                            (b"43", b"Y"), (b"52", utc_timestamp()), (b"122", utc_timestamp()),
                                            (b"123", b"Y"), (b"36", b"%d" % (v + 1))])
            else:
                body = dict(fields)
                orig = body.get(b"52", utc_timestamp())
                rest = [(t, val) for t, val in fields if t not in (b"35", b"49", b"56", b"34", b"52")]
                out = encode(begin_string, [(b"35", fields[0][1]), (b"49", sender), (b"56", target),
                                            (b"34", b"%d" % v), (b"43", b"Y"), (b"52", utc_timestamp()),
                                            (b"122", orig), *rest])
            res.out(back).append(out)

    # ------------------------------------------------------------------ refusing
    def _refuse(self, d: Direction, msg: Message, refusal: Refusal, res: ReadResult, now: float,
                received_at: float | None) -> None:
        state = self.state
        assert state is not None
        action = state.policy.action_for(refusal.reason)
        seq_b = _find_field(msg, b"34")
        if action is Action.SHADOW:
            self.stats[d].shadowed += 1
            ev = self.event(refusal.reason, Outcome.SHADOWED, refusal.text, direction=d)
            _fill(ev, msg, seq_b, received_at)
            res.events.append(ev)
            self._forward(d, msg, res)
            return
        if action is Action.DISCONNECT or seq_b is None or not seq_b.isdigit() or msg.msg_type == b"A" \
                or (d is INBOUND and not self._ats_logon_seen):
            self._disconnect(d, msg, refusal, res, received_at)
            return
        seq = int(seq_b)
        self.stats[d].refused += 1
        refused = state.refused[d]
        refused[seq] = refusal.reason
        if len(refused) > _REMEMBER:
            refused.popitem(last=False)
        possdup = _find_field(msg, b"43") == b"Y"
        if not possdup and seq >= state.next_seq[d]:
            state.next_seq[d] = seq + 1
        self._gap_fill(d, msg, seq, possdup, res, now)
        self._answer(d, msg, seq, refusal, res, now)
        ev = self.event(refusal.reason, Outcome.REFUSED, refusal.text, direction=d)
        _fill(ev, msg, seq, received_at)
        res.events.append(ev)
        res.refused.append((msg, ev))

    def _gap_fill(self, d: Direction, msg: Message, seq: int, possdup: bool, res: ReadResult,
                  now: float) -> None:
        """Toward the receiver: a SequenceReset-GapFill where the refused message would have been."""
        state = self.state
        assert state is not None
        v = state.translators[d].to_visible(seq)
        sender, target = self._comp[d]
        fields: list[tuple[bytes, bytes]] = [(b"35", b"4"), (b"49", sender), (b"56", target), (b"34", b"%d" % v)]
        if possdup:  # a resend is answered as a resend: PossDupFlag and OrigSendingTime
            orig = _find_field(msg, b"52") or utc_timestamp(now)
            fields += [(b"43", b"Y"), (b"52", utc_timestamp(now)), (b"122", orig)]
        else:
            fields.append((b"52", utc_timestamp(now)))
        fields += [(b"123", b"Y"), (b"36", b"%d" % (v + 1))]
        res.out(d).append(encode(msg.begin_string, fields))

    def _answer(self, d: Direction, msg: Message, seq: int, refusal: Refusal, res: ReadResult,
                now: float) -> None:
        """Toward the sender: what its counterparty's engine would have said."""
        state = self.state
        assert state is not None
        back = OUTBOUND if d is INBOUND else INBOUND
        tr = state.translators[back]
        sender, target = self._comp[back]
        mt = msg.msg_type
        style = state.policy.reject_style
        text = refusal.text.encode("latin-1", "replace")[:200]
        head = [(b"35", b"3"), (b"49", sender), (b"56", target)]
        if style is RejectStyle.EXECUTION_REPORT and mt in ORDER_MSG_TYPES and d is INBOUND:
            body = _exec_report_reject(msg, text, now)
            head[0] = (b"35", b"8") if mt == b"D" else (b"35", b"9")
        elif style is not RejectStyle.SESSION_REJECT and mt not in SESSION_MSG_TYPES \
                and refusal.reason.category.value not in ("syntax", "dictionary"):
            head[0] = (b"35", b"j")
            body = [(b"45", b"%d" % seq), (b"372", mt), (b"380", _bmr_reason(refusal.reason)), (b"58", text)]
            ref_id = _find_field(msg, b"11")
            if ref_id:
                body.insert(2, (b"379", ref_id))
        else:
            body = [(b"45", b"%d" % seq)]
            if refusal.tag is not None:
                body.append((b"371", b"%d" % refusal.tag))
            body += [(b"372", mt), (b"373", b"%d" % refusal.reason.session_reject_reason), (b"58", text)]
        nxt = state.next_seq[back]
        # Reserve the number now; fields include 34 only once it is known.
        fields_wo_seq = [*head, (b"52", utc_timestamp(now)), *body]
        v = tr.insert(nxt, fields_wo_seq)
        fields = [*head, (b"34", b"%d" % v), (b"52", utc_timestamp(now)), *body]
        res.out(back).append(encode(msg.begin_string, fields))

    def _disconnect(self, d: Direction, msg: Message | None, refusal: Refusal, res: ReadResult,
                    received_at: float | None) -> None:
        self.stats[d].refused += 1
        ev = self.event(refusal.reason, Outcome.DISCONNECTED, refusal.text, direction=d)
        if msg is not None:
            _fill(ev, msg, _find_field(msg, b"34"), received_at)
            res.refused.append((msg, ev))
        res.events.append(ev)
        res.close = refusal

    def _connection_refused(self, msg: Message, refusal: Refusal, res: ReadResult,
                            received_at: float | None) -> None:
        """Logon refused: close without a Logout and without touching the ATS (FIX security
        guidance: an unauthenticated peer learns nothing)."""
        self.stats[INBOUND].refused += 1
        ev = SecurityEvent(refusal.reason, Outcome.CONNECTION_REFUSED, refusal.text, session=None,
                           direction=INBOUND, source=self.source)
        _fill(ev, msg, _find_field(msg, b"34"), received_at)
        ev.session = f"{_s(_find_field(msg, b'49'))}->{_s(_find_field(msg, b'56'))}"
        res.events.append(ev)
        res.refused.append((msg, ev))
        res.close = refusal


# ---------------------------------------------------------------------------------------------
class _TimeWindow:
    """SendingTime tolerance as two fixed-format strings, recomputed once per second: a message's
    "YYYYMMDD-HH:MM:SS" prefix compares lexicographically, so the check is two byte compares."""

    __slots__ = ("_bounds", "_second", "tolerance")

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self._second = -1
        self._bounds = (b"", b"")

    def __call__(self, now: float) -> tuple[bytes, bytes]:
        sec = int(now)
        if sec != self._second:
            self._second = sec
            fmt = "%Y%m%d-%H:%M:%S"
            self._bounds = (time.strftime(fmt, time.gmtime(now - self.tolerance)).encode(),
                            time.strftime(fmt, time.gmtime(now + self.tolerance)).encode())
        return self._bounds


def _msgtypes(allowed: frozenset[str] | None) -> frozenset[bytes] | None:
    return None if allowed is None else frozenset(m.encode() for m in allowed)


def _s(b: bytes | None) -> str:
    return "?" if b is None else b.decode("latin-1")


def _only_changed(msg: Message, out: bytes, changes: dict[bytes, bytes]) -> bool:
    """The rewritten bytes hold exactly the original fields, in order, but for `changes`."""
    try:
        new = decode_one(out)
    except ValueError:
        return False
    if new.check_syntax() is not None or new.begin_string != msg.begin_string:
        return False
    old_fields, new_fields = msg.fields, new.fields
    if len(old_fields) != len(new_fields):
        return False
    pending = dict(changes)
    for (t1, v1), (t2, v2) in zip(old_fields, new_fields, strict=True):
        if t1 != t2:
            return False
        if v1 != v2 and pending.pop(t1, None) != v2:
            return False
    return True


def _find_field(msg: Message, tag: bytes) -> bytes | None:
    """A field's value without trusting the syntax (for refused messages)."""
    raw = msg.raw
    key = b"\x01" + tag + b"="
    i = raw.find(key, msg.body_start - 1, msg.trailer_start)
    if i < 0:
        return None
    start = i + len(key)
    end = raw.find(b"\x01", start)
    return raw[start:end] if end > start else None


def _fill(ev: SecurityEvent, msg: Message, seq: int | bytes | None, received_at: float | None) -> None:
    ev.msg_type = msg.msg_type
    if isinstance(seq, bytes):
        seq = int(seq) if seq.isdigit() else None
    ev.msg_seq_num = seq
    ev.received_at = received_at


def _bmr_reason(reason: Reason) -> bytes:
    # BusinessRejectReason (380): 3 unsupported message type, 6 not authorized, 0 other.
    if reason is Reason.MSGTYPE_NOT_ALLOWED:
        return b"3"
    if reason.category.value in ("policy", "auth"):
        return b"6"
    return b"0"


def _exec_report_reject(msg: Message, text: bytes, now: float) -> list[tuple[bytes, bytes]]:
    """An ExecutionReport (new order) or OrderCancelReject (cancel/replace) refusing an order."""
    cl = _find_field(msg, b"11") or b"NONE"
    if msg.msg_type != b"D":
        # OrderCancelReject: 37, 11, 41, 39, 434 (1 = cancel request, 2 = replace request), 102=99
        return [(b"37", b"NONE"), (b"11", cl), (b"41", _find_field(msg, b"41") or b"NONE"), (b"39", b"8"),
                (b"434", b"1" if msg.msg_type == b"F" else b"2"), (b"102", b"99"), (b"58", text)]
    fields = [(b"37", b"NONE"), (b"11", cl), (b"17", b"FIXPROXY-REJ-" + cl)]
    if msg.begin_string == b"FIX.4.2":
        fields.append((b"20", b"0"))
    fields += [(b"150", b"8"), (b"39", b"8"), (b"103", b"99"),
               (b"55", _find_field(msg, b"55") or b"NONE"), (b"54", _find_field(msg, b"54") or b"1"),
               (b"38", _find_field(msg, b"38") or b"0"), (b"151", b"0"), (b"14", b"0"), (b"6", b"0"),
               (b"60", utc_timestamp(now)), (b"58", text)]
    return fields
