"""The session inspector, bytes in and decisions out: no sockets, no engines, no event loop.

Two small engine models stand on either side of a `SessionInspector`: the OMS (initiator) and the
ATS (acceptor). Each numbers what it sends, checks the MsgSeqNum of everything it receives the way
a FIX engine does, and answers ResendRequests from what it sent (application messages resent with
PossDupFlag, session-level runs gap-filled). The property every test ends with: neither engine
ever sees a sequence error, whatever the proxy refused, inserted or renumbered on the way.

A ResendRequest from a model is checked as a *replay*: every number of the requested range must
come back once, either as the same message it received the first time (same content, PossDupFlag
set) or inside a GapFill that only skips session-level messages. That is what a receiver recovering
a real gap needs, so a replay that passes here is one a recovering engine can use. In the tests
that drop garbled messages on purpose, the models recover the way QuickFIX does: hold what came
too early, ask from the gap to infinity, answer the other side's ResendRequest at once.

Audit counters (`SessionInspector.stats`): every message read is exactly one of forwarded, refused
(GapFill + answer, or a close) or dropped (framing). `shadowed` counts the shadowed ones among the
forwarded: received == forwarded + refused + dropped, shadowed <= forwarded.
"""

from __future__ import annotations

import calendar
from collections import deque
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixproxy.codec import Decoder, Message, encode
from fixproxy.events import Direction, Outcome
from fixproxy.policy import Action, RateLimit, RejectStyle, SessionPolicy, ValidationMode
from fixproxy.reasons import Reason, Refusal
from fixproxy.session import ReadResult, SeqTranslator, SessionInspector, SessionState, utc_timestamp

FIX44 = "FIX.4.4"
T0 = float(calendar.timegm((2024, 3, 15, 13, 45, 30)))  # the fake clock's start

SESSION_TYPES = frozenset({b"0", b"1", b"2", b"3", b"4", b"5", b"A"})
# Header and trailer fields that a resend or a renumbering legitimately changes.
VOLATILE = frozenset({b"8", b"9", b"10", b"34", b"43", b"52", b"122"})

Field = tuple[bytes | str | int, bytes | str | int]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def decode(chunks: Iterable[bytes]) -> list[Message]:
    """What the inspector wrote to one side, as messages; everything it writes must frame."""
    dec = Decoder()
    items = dec.feed(b"".join(chunks))
    assert all(isinstance(i, Message) for i in items), items
    assert dec.buffered == 0
    return items  # type: ignore[return-value]


def fields_of(raw: bytes) -> list[tuple[bytes, bytes]]:
    """All (tag, value) pairs, envelope included: a plain split, independent of the codec."""
    return [tuple(f.split(b"=", 1)) for f in raw.split(b"\x01")[:-1]]  # type: ignore[misc]


def content(raw: bytes) -> list[tuple[bytes, bytes]]:
    return [(t, v) for t, v in fields_of(raw) if t not in VOLATILE]


def same_except(original: bytes, out: bytes, changed: dict[bytes, bytes]) -> None:
    """`out` is `original` with exactly the `changed` values, every other field identical and in
    the same order; BodyLength and CheckSum right (it decoded)."""
    decode([out])
    a, b = fields_of(original), fields_of(out)
    assert [t for t, _ in a] == [t for t, _ in b]
    for (tag, va), (_, vb) in zip(a, b, strict=True):
        if tag in (b"9", b"10"):
            continue
        assert vb == changed.get(tag, va), (tag, va, vb)


def policy(**kw: object) -> SessionPolicy:
    base: dict[str, object] = {
        "name": "OMS1", "begin_string": FIX44, "sender_comp_id": "OMS1", "target_comp_id": "ATS",
        "validation": ValidationMode.OFF,
        "allowed_inbound": frozenset({"D", "F", "G"}), "allowed_outbound": frozenset({"8", "9"}),
    }
    base.update(kw)
    return SessionPolicy(**base)  # type: ignore[arg-type]


def is_proxy_reject(raw: bytes) -> bool:
    f = dict(fields_of(raw))
    return f[b"35"] in (b"3", b"j") or f.get(b"17", b"").startswith(b"FIXPROXY-REJ")


class Engine:
    """A FIX engine reduced to its sequence numbers: what it sends, what it expects, what it
    resends. Errors are recorded, not raised, so that a test can show all of them."""

    def __init__(self, sender: str, target: str, clock: Callable[[], float], *,
                 gapfill_app: bool = False) -> None:
        self.sender = sender.encode()
        self.target = target.encode()
        self.clock = clock
        self.gapfill_app = gapfill_app  # answer resends of application messages with a GapFill
        self.next_out = 1
        self.sent: dict[int, list[tuple[bytes, bytes]]] = {}  # own MsgSeqNum -> fields from 35
        self.expected = 1
        self.received: dict[int, bytes] = {}  # MsgSeqNum as seen -> raw, first acceptance
        self.app: list[bytes] = []  # application messages accepted, in order
        self.errors: list[str] = []
        self.replay: tuple[int, int] | None = None  # the range of the last ResendRequest sent
        self.replayed: dict[int, list[bytes]] = {}
        self.duplicates = 0
        # Gap handling: off, a gap is an error; on, the engine queues and asks (for tests that
        # drop garbled messages on purpose).
        self.auto_recover = False
        self.recovering = False
        self.queue: dict[int, Message] = {}
        self.gaps = 0

    # ---- sending ---------------------------------------------------------------------------
    def msg(self, mt: str | bytes, *body: Field, seq: int | None = None, possdup: bool = False,
            orig: bytes | None = None, sending_time: bytes | None = None, sender: bytes | None = None
            ) -> bytes:
        """A message from this engine; numbered (and remembered for resends) unless `seq`."""
        s = self.next_out if seq is None else seq
        fields: list[Field] = [(35, mt), (49, sender or self.sender), (56, self.target), (34, s)]
        if possdup:
            fields.append((43, "Y"))
        fields.append((52, sending_time or utc_timestamp(self.clock())))
        if orig is not None:
            fields.append((122, orig))
        fields += body
        raw = encode(FIX44, fields)
        if seq is None:
            self.sent[s] = fields_of(raw)[2:-1]
            self.next_out += 1
        return raw

    def logon(self, *, reset: bool = False) -> bytes:
        return self.msg("A", (98, 0), (108, 30), *([(141, "Y")] if reset else []))

    def heartbeat(self) -> bytes:
        return self.msg("0")

    def order(self, clordid: str, symbol: str = "AAPL") -> bytes:
        return self.msg("D", (11, clordid), (1, "ACCT-7"), (55, symbol), (54, 1),
                        (60, "20240315-13:45:30.000"), (38, 100), (40, 2), (44, "150.25"), (59, 0))

    def exec_report(self, execid: str, clordid: str = "ORD-1") -> bytes:
        return self.msg("8", (37, "EX-1"), (11, clordid), (17, execid), (150, "F"), (39, 1), (55, "AAPL"),
                        (54, 1), (38, 100), (32, 40), (31, "150.25"), (151, 60), (14, 40), (6, "150.25"))

    def resend_request(self, begin: int, end: int = 0) -> bytes:
        """Ask for a past range again, and check the replay when it has come back."""
        self.replay = (begin, end if 0 < end < self.expected else self.expected - 1)
        self.replayed = {}
        return self.msg("2", (7, begin), (16, end))

    # ---- receiving -------------------------------------------------------------------------
    def receive(self, chunks: Iterable[bytes]) -> list[bytes]:
        """Process what arrived; returns what this engine sends in reply (resends)."""
        out: list[bytes] = []
        for m in decode(chunks):
            out += self._one(m)
        return out

    def _one(self, m: Message) -> list[bytes]:
        g = m.get
        if (g(b"49"), g(b"56")) != (self.target, self.sender):
            self.errors.append(f"CompIDs {g(b'49')!r}->{g(b'56')!r}")
        seq = int(g(b"34"))  # type: ignore[arg-type]
        mt = m.msg_type
        possdup = g(b"43") == b"Y"
        if mt == b"4" and g(b"123") != b"Y":  # SequenceReset-Reset: MsgSeqNum ignored
            new = int(g(b"36"))  # type: ignore[arg-type]
            if new < self.expected:
                self.errors.append(f"SequenceReset-Reset to {new} below expected {self.expected}")
            self.expected = new
            return []
        if seq < self.expected:
            if not possdup:
                self.errors.append(f"MsgSeqNum too low: expected {self.expected}, received {seq}")
            else:
                self.duplicates += 1
                self.replayed.setdefault(seq, []).append(m.raw)
            return []
        if seq > self.expected:
            if not self.auto_recover:
                self.errors.append(f"Gap: expected {self.expected}, received {seq} ({mt.decode()})")
                self.expected = seq  # resynchronise so that one fault is reported once
            else:  # what an engine does: hold it, ask for the gap (once), go on when it is filled
                self.queue.setdefault(seq, m)
                # A ResendRequest is answered at once, whatever its number (FIX), or two engines
                # recovering at the same time would wait for each other.
                out = self._answer(m) if mt == b"2" else []
                if not self.recovering:
                    self.recovering = True
                    self.gaps += 1
                    out.append(self.msg("2", (7, self.expected), (16, 0)))
                return out
        out = self._accept(m)
        while self.queue:
            for k in [k for k in self.queue if k < self.expected]:
                skipped = self.queue.pop(k)
                if skipped.msg_type not in SESSION_TYPES and skipped.get(b"43") != b"Y":
                    self.errors.append(f"Queued application message {k} skipped by a GapFill")
            nxt = self.queue.pop(self.expected, None)
            if nxt is None:
                break
            self._accept(nxt)  # a queued ResendRequest was answered when it arrived
        if not self.queue:
            self.recovering = False
        return out

    def _accept(self, m: Message) -> list[bytes]:
        g = m.get
        seq = int(g(b"34"))  # type: ignore[arg-type]
        self.received[seq] = m.raw
        if m.msg_type == b"4":
            new = int(g(b"36"))  # type: ignore[arg-type]
            if new < seq:
                self.errors.append(f"GapFill {seq} -> {new} goes backwards")
            self.expected = max(new, self.expected)  # NewSeqNo == MsgSeqNum: a no-op (QuickFIX)
            return []
        self.expected = seq + 1
        if m.msg_type not in SESSION_TYPES:
            self.app.append(m.raw)
        return self._answer(m) if m.msg_type == b"2" else []

    def _answer(self, rr: Message) -> list[bytes]:
        return self.answer_resend(int(rr.get(b"7")), int(rr.get(b"16")))  # type: ignore[arg-type]

    def answer_resend(self, begin: int, end: int) -> list[bytes]:
        """Resend begin..end: application messages with PossDupFlag=Y and OrigSendingTime, runs
        of session-level messages as one GapFill (the FIX rule)."""
        last = self.next_out - 1
        if begin > last:
            # Nothing to resend. QuickFIX answers with a GapFill from BeginSeqNo to its next
            # number, which is a no-op when they are equal: proxies must pass it through.
            return [self._gap_fill(begin, self.next_out)]
        if end == 0 or end > last:
            end = last
        out: list[bytes] = []
        run: int | None = None
        for s in range(begin, end + 1):
            fields = self.sent.get(s)
            if fields is None or fields[0][1] in SESSION_TYPES or self.gapfill_app:
                if run is None:
                    run = s
                continue
            if run is not None:
                out.append(self._gap_fill(run, s))
                run = None
            head = dict(fields)
            rest = [(t, v) for t, v in fields if t not in (b"35", b"49", b"56", b"34", b"52")]
            out.append(self.msg(head[b"35"], *rest, seq=s, possdup=True, orig=head[b"52"]))
        if run is not None:
            out.append(self._gap_fill(run, end + 1))
        return out

    def _gap_fill(self, seq: int, new: int) -> bytes:
        now = utc_timestamp(self.clock())
        return self.msg("4", (123, "Y"), (36, new), seq=seq, possdup=True, orig=now)

    def check_replay(self, *, peer_gapfills_app: bool = False) -> None:
        """The last ResendRequest's range came back whole, in the numbering first received."""
        assert self.replay is not None
        begin, end = self.replay
        cursor = begin
        while cursor <= end:
            got = self.replayed.get(cursor)
            if not got:
                self.errors.append(f"Replay hole at {cursor} (range {begin}..{end})")
                cursor += 1
                continue
            if len(got) > 1:
                self.errors.append(f"{cursor} replayed {len(got)} times")
            m = decode(got[:1])[0]
            if m.msg_type == b"4":
                new = int(m.get(b"36"))  # type: ignore[arg-type]
                for v in range(cursor, new):
                    orig = self.received.get(v)
                    if orig is None or orig.split(b"\x0135=", 1)[1][:2] in (b"3\x01", b"4\x01"):
                        continue
                    mt = dict(fields_of(orig))[b"35"]
                    if mt not in SESSION_TYPES and (is_proxy_reject(orig) or not peer_gapfills_app):
                        self.errors.append(f"Replay GapFill {cursor}->{new} swallows application message {v}")
                cursor = max(new, cursor + 1)
            else:
                orig = self.received.get(cursor)
                if orig is None or content(orig) != content(m.raw):
                    self.errors.append(f"Replay of {cursor} differs from the original")
                if m.get(b"43") != b"Y":
                    self.errors.append(f"Replay of {cursor} without PossDupFlag")
                cursor += 1
        self.replay = None


class Harness:
    """An inspector between the two models; what it writes is delivered at once, and whatever the
    models answer (resends) goes back through it."""

    def __init__(self, pol: SessionPolicy | None = None, *, clock: FakeClock | None = None,
                 authorise: Callable[[Message], SessionState | Refusal] | None = None,
                 oms_gapfill_app: bool = False, ats_gapfill_app: bool = False) -> None:
        self.clock = clock or FakeClock()
        self.state = SessionState(pol or policy())
        self.insp = SessionInspector(authorise or (lambda _m: self.state), clock=self.clock, source="10.0.0.7")
        self.oms = Engine("OMS1", "ATS", self.clock, gapfill_app=oms_gapfill_app)
        self.ats = Engine("ATS", "OMS1", self.clock, gapfill_app=ats_gapfill_app)
        self.events: list = []
        self.to_ats: list[bytes] = []  # every byte string the ATS received
        self.to_oms: list[bytes] = []
        self.closed: Refusal | None = None
        self._pending: deque[tuple[Engine, list[bytes]]] = deque()
        self._pumping = False

    def from_oms(self, raw: bytes) -> ReadResult:
        res = self.insp.from_initiator(raw)
        self._deliver(res)
        return res

    def from_ats(self, raw: bytes) -> ReadResult:
        res = self.insp.from_acceptor(raw)
        self._deliver(res)
        return res

    def _deliver(self, res: ReadResult) -> None:
        self.events += res.events
        if res.close is not None:
            self.closed = res.close
        self.to_oms += res.to_initiator
        self.to_ats += res.to_acceptor
        # One FIFO for both sides: each stream is delivered in the order the proxy wrote it, even
        # when an engine's answer makes the proxy write more before the earlier bytes arrived.
        self._pending.append((self.oms, res.to_initiator))
        self._pending.append((self.ats, res.to_acceptor))
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._pending:
                eng, chunks = self._pending.popleft()
                for raw in eng.receive(chunks):
                    (self.from_oms if eng is self.oms else self.from_ats)(raw)
        finally:
            self._pumping = False

    def logon(self) -> None:
        res = self.from_oms(self.oms.logon())
        assert res.logon is self.state and res.close is None
        res = self.from_ats(self.ats.logon())
        assert res.close is None and len(res.to_initiator) == 1

    def reconnect(self, *, reset: bool = False) -> None:
        """The OMS reconnects: a new inspector on the same persistent state; both engines keep
        their numbers, or start again at 1 when the Logon says ResetSeqNumFlag=Y."""
        self.insp = SessionInspector(self.insp._authorise, clock=self.clock, source="10.0.0.7")
        if reset:
            for eng in (self.oms, self.ats):
                eng.next_out = eng.expected = 1
                eng.sent.clear()
                eng.received.clear()
        res = self.from_oms(self.oms.logon(reset=reset))
        assert res.logon is self.state and res.close is None
        res = self.from_ats(self.ats.logon(reset=reset))
        assert res.close is None and len(res.to_initiator) == 1

    def assert_clean(self) -> None:
        assert self.oms.errors == [], self.oms.errors
        assert self.ats.errors == [], self.ats.errors
        assert self.closed is None, self.closed

    def outcomes(self) -> list[tuple[Reason | None, Outcome]]:
        return [(e.reason, e.outcome) for e in self.events if e.outcome is not Outcome.INFO]


def one(res_list: list[bytes]) -> Message:
    msgs = decode(res_list)
    assert len(msgs) == 1, msgs
    return msgs[0]


def quote_request(eng: Engine, tag: str) -> bytes:
    """An OMS message of a type the policy does not allow (QuoteRequest), marked with `tag`."""
    return eng.msg("R", (131, tag), (146, 1), (55, "AAPL"), (58, tag))


def news(eng: Engine, tag: str) -> bytes:
    """An ATS message of a type the policy does not allow outbound (News), marked with `tag`."""
    return eng.msg("B", (148, tag), (58, tag))


# --------------------------------------------------------------------------------------------------
# 1. Logon first
# --------------------------------------------------------------------------------------------------
def test_first_message_must_be_logon() -> None:
    h = Harness()
    res = h.from_oms(h.oms.order("ORD-1"))
    assert res.close is not None and res.close.reason is Reason.BEFORE_LOGON
    assert res.to_acceptor == [] and res.to_initiator == [] and res.logon is None
    assert [(e.reason, e.outcome) for e in res.events] == [(Reason.BEFORE_LOGON, Outcome.CONNECTION_REFUSED)]
    # Closed: nothing more is read.
    assert h.insp.from_initiator(h.oms.logon()).to_acceptor == []


def test_ats_speaking_first_is_closed() -> None:
    h = Harness()
    res = h.from_ats(h.ats.logon())
    assert res.close is not None and res.close.reason is Reason.BEFORE_LOGON
    assert res.to_initiator == [] and res.to_acceptor == []


def test_logon_refused_by_the_authoriser() -> None:
    refusal = Refusal(Reason.BAD_CREDENTIALS, "Bad credentials for OMS1", 554)
    h = Harness(authorise=lambda _m: refusal)
    res = h.from_oms(h.oms.logon())
    assert res.close is refusal and res.logon is None
    assert res.to_acceptor == [] and res.to_initiator == []  # no Logout either: it learns nothing
    (ev,) = res.events
    assert ev.outcome is Outcome.CONNECTION_REFUSED and ev.reason is Reason.BAD_CREDENTIALS
    assert ev.session == "OMS1->ATS" and ev.source == "10.0.0.7" and ev.msg_type == b"A"
    assert h.insp.stats[Direction.INBOUND].refused == 1
    assert h.insp.state is None


def test_logon_with_bad_syntax_is_refused() -> None:
    h = Harness()
    bad = encode(FIX44, [(35, "A"), (49, "OMS1"), (56, "ATS"), (34, 1), (52, utc_timestamp(T0)), (34, 7),
                         (98, 0), (108, 30)])  # MsgSeqNum twice: two parsers could disagree
    res = h.from_oms(bad)
    assert res.close is not None and res.close.reason is Reason.DUPLICATE_TAG
    assert res.to_acceptor == [] and res.to_initiator == [] and res.logon is None
    assert res.events[0].outcome is Outcome.CONNECTION_REFUSED


# --------------------------------------------------------------------------------------------------
# 2. Happy path: byte-exact
# --------------------------------------------------------------------------------------------------
def test_happy_path_is_byte_exact() -> None:
    h = Harness()
    logon = h.oms.logon()
    res = h.from_oms(logon)
    assert res.to_acceptor == [logon] and res.logon is h.state
    assert [e.kind for e in res.events] == ["session.logon"]
    assert h.insp.heartbeat_interval == 30 and h.insp.session_name == "OMS1"
    ats_logon = h.ats.logon()
    assert h.from_ats(ats_logon).to_initiator == [ats_logon]
    for i in range(20):
        order = h.oms.order(f"ORD-{i}")
        assert h.from_oms(order).to_acceptor == [order]
        er = h.ats.exec_report(f"EXEC-{i}", f"ORD-{i}")
        assert h.from_ats(er).to_initiator == [er]
        hb = h.oms.heartbeat()
        assert h.from_oms(hb).to_acceptor == [hb]
    assert h.state.translators[Direction.INBOUND].identity
    assert h.state.translators[Direction.OUTBOUND].identity
    assert len(h.ats.app) == 20 and len(h.oms.app) == 20
    assert h.outcomes() == []
    h.assert_clean()


def test_several_messages_in_one_read_and_split_reads() -> None:
    h = Harness()
    h.logon()
    orders = [h.oms.order(f"ORD-{i}") for i in range(5)]
    blob = b"".join(orders)
    res = h.insp.from_initiator(blob[:37])
    assert res.to_acceptor == []
    res = h.insp.from_initiator(blob[37:])
    assert res.to_acceptor == orders
    h.ats.receive(res.to_acceptor)
    h.assert_clean()


# --------------------------------------------------------------------------------------------------
# 3. Refusal inbound: GapFill toward the ATS, Reject toward the OMS, renumbering after
# --------------------------------------------------------------------------------------------------
def test_inbound_refusal_gap_fills_rejects_and_renumbers() -> None:
    h = Harness()
    h.logon()
    for i in range(3):
        h.from_oms(h.oms.order(f"ORD-{i}"))
        h.from_ats(h.ats.exec_report(f"EXEC-{i}", f"ORD-{i}"))
    refused_seq = h.oms.next_out
    res = h.from_oms(quote_request(h.oms, "SECRET-Q1"))
    gf = one(res.to_acceptor)
    assert gf.msg_type == b"4" and gf.get(b"123") == b"Y"
    assert gf.get(b"34") == b"%d" % refused_seq and gf.get(b"36") == b"%d" % (refused_seq + 1)
    assert (gf.get(b"49"), gf.get(b"56")) == (b"OMS1", b"ATS") and gf.get(b"43") is None
    rej = one(res.to_initiator)
    assert rej.msg_type == b"3" and (rej.get(b"49"), rej.get(b"56")) == (b"ATS", b"OMS1")
    assert rej.get(b"45") == b"%d" % refused_seq and rej.get(b"373") == b"11"
    assert rej.get(b"372") == b"R" and rej.get(b"371") == b"35" and b"not allowed" in rej.get(b"58")
    assert rej.get(b"34") == b"%d" % h.ats.next_out  # it took the ATS's next number
    (ev,) = res.events
    assert (ev.reason, ev.outcome, ev.direction) == (Reason.MSGTYPE_NOT_ALLOWED, Outcome.REFUSED, Direction.INBOUND)
    assert ev.msg_type == b"R" and ev.msg_seq_num == refused_seq

    # After it: ATS -> OMS shifted by one, OMS -> ATS untouched.
    for i in range(50):
        er = h.ats.exec_report(f"EXEC-x{i}")
        out = h.from_ats(er).to_initiator
        assert len(out) == 1
        same_except(er, out[0], {b"34": b"%d" % (h.ats.next_out - 1 + 1)})
        order = h.oms.order(f"ORD-x{i}")
        assert h.from_oms(order).to_acceptor == [order]
    h.assert_clean()
    assert all(b"SECRET" not in raw for raw in h.to_ats)


def test_offsets_accumulate_over_interleaved_refusals() -> None:
    """Refusals both ways, interleaved with 50 messages each way: each stream is shifted by the
    number of Rejects the proxy has sent into it, every other field is byte-exact."""
    h = Harness()
    h.logon()
    oms_refused = ats_refused = 0
    for i in range(50):
        if i % 7 == 3:
            res = h.from_oms(quote_request(h.oms, f"SECRETO-{i}"))
            oms_refused += 1
            assert one(res.to_acceptor).get(b"34") == b"%d" % (h.oms.next_out - 1 + ats_refused)
            assert one(res.to_initiator).get(b"34") == b"%d" % (h.ats.next_out + oms_refused - 1)
        if i % 9 == 5:
            res = h.from_ats(news(h.ats, f"SECRETA-{i}"))
            ats_refused += 1
            assert one(res.to_initiator).get(b"34") == b"%d" % (h.ats.next_out - 1 + oms_refused)
            assert one(res.to_acceptor).get(b"34") == b"%d" % (h.oms.next_out + ats_refused - 1)
        order = h.oms.order(f"ORD-{i}")
        (out,) = h.from_oms(order).to_acceptor
        if ats_refused:
            same_except(order, out, {b"34": b"%d" % (h.oms.next_out - 1 + ats_refused)})
        else:
            assert out == order
        er = h.ats.exec_report(f"EXEC-{i}")
        (out,) = h.from_ats(er).to_initiator
        if oms_refused:
            same_except(er, out, {b"34": b"%d" % (h.ats.next_out - 1 + oms_refused)})
        else:
            assert out == er
    assert (oms_refused, ats_refused) == (7, 5)
    h.assert_clean()
    assert len(h.oms.app) == 50 and len(h.ats.app) == 50
    assert all(b"SECRETO" not in raw for raw in h.to_ats)
    assert all(b"SECRETA" not in raw for raw in h.to_oms)


# --------------------------------------------------------------------------------------------------
# 4. Refusal outbound
# --------------------------------------------------------------------------------------------------
def test_outbound_refusal_mirrors() -> None:
    h = Harness()
    h.logon()
    h.from_oms(h.oms.order("ORD-1"))
    refused_seq = h.ats.next_out
    res = h.from_ats(news(h.ats, "SECRET-NEWS"))
    gf = one(res.to_initiator)
    assert gf.msg_type == b"4" and gf.get(b"34") == b"%d" % refused_seq
    assert gf.get(b"36") == b"%d" % (refused_seq + 1) and (gf.get(b"49"), gf.get(b"56")) == (b"ATS", b"OMS1")
    rej = one(res.to_acceptor)
    assert rej.msg_type == b"3" and rej.get(b"45") == b"%d" % refused_seq and rej.get(b"373") == b"11"
    assert (rej.get(b"49"), rej.get(b"56")) == (b"OMS1", b"ATS")
    assert rej.get(b"34") == b"%d" % h.oms.next_out
    assert res.events[0].direction is Direction.OUTBOUND
    for i in range(30):
        order = h.oms.order(f"ORD-x{i}")
        (out,) = h.from_oms(order).to_acceptor
        same_except(order, out, {b"34": b"%d" % h.oms.next_out})  # next_out - 1 + 1
        er = h.ats.exec_report(f"EXEC-{i}")
        assert h.from_ats(er).to_initiator == [er]
    h.assert_clean()
    assert all(b"SECRET" not in raw for raw in h.to_oms)


def test_reject_from_the_ats_is_translated() -> None:
    """The ATS's own Reject points into the OMS stream as the ATS sees it: RefSeqNum (45) maps back."""
    h = Harness()
    h.logon()
    h.from_ats(news(h.ats, "N1"))  # the proxy's Reject to the ATS shifts OMS -> ATS by one
    order = h.oms.order("ORD-1")
    (fwd,) = h.from_oms(order).to_acceptor
    ats_seen = int(one([fwd]).get(b"34"))  # type: ignore[arg-type]
    assert ats_seen == h.oms.next_out  # = the OMS's number + 1
    rej = h.ats.msg("3", (45, ats_seen), (373, 5), (58, "no"))
    (out,) = h.from_ats(rej).to_initiator
    assert one([out]).get(b"45") == b"%d" % (h.oms.next_out - 1)
    h.assert_clean()


# --------------------------------------------------------------------------------------------------
# 5. ResendRequest across proxy insertions
# --------------------------------------------------------------------------------------------------
def _build_history(h: Harness, n: int = 12, refuse_at: Iterable[int] = (3, 4, 8)) -> None:
    h.logon()
    for i in range(n):
        if i in refuse_at:
            h.from_oms(quote_request(h.oms, f"SECRET-{i}"))
        h.from_oms(h.oms.order(f"ORD-{i}"))
        h.from_ats(h.ats.exec_report(f"EXEC-{i}", f"ORD-{i}"))


@pytest.mark.parametrize("end", [0, 11, -1])
def test_resend_request_from_the_oms_is_mapped_and_answered(end: int) -> None:
    h = Harness()
    _build_history(h)
    tr = h.state.translators[Direction.OUTBOUND]
    assert len(tr.positions) == 3
    begin = tr.positions[0] + 1  # after the first Reject: 7 maps one lower
    if end == -1:
        end = h.oms.expected - 1
    rr = h.oms.resend_request(begin, end)
    res = h.insp.from_initiator(rr)
    # Toward the OMS: the proxy's own positions in the range, as GapFills (they were Rejects).
    own = decode(res.to_initiator)
    in_range = [p for p in tr.positions if p >= begin and (end == 0 or p <= end)]
    assert [int(m.get(b"34")) for m in own] == in_range  # type: ignore[arg-type]
    for m in own:
        assert m.msg_type == b"4" and m.get(b"43") == b"Y" and m.get(b"123") == b"Y"
        assert m.get(b"36") == b"%d" % (int(m.get(b"34")) + 1)  # type: ignore[arg-type]
    # Toward the ATS: the range in the ATS's numbering.
    (fwd,) = decode(res.to_acceptor)
    exp_begin = tr.first_sender_at_or_after(begin)
    exp_end = 0 if end == 0 else tr.last_sender_at_or_before(end)
    assert fwd.get(b"7") == b"%d" % exp_begin and fwd.get(b"16") == b"%d" % exp_end
    assert exp_begin < begin
    # The ATS answers; its resends come through translated; the replay is whole.
    n = len(h.to_oms)
    h._deliver(res)
    resent = [m for m in decode(h.to_oms[n:]) if m.msg_type == b"8"]
    assert resent and all(m.get(b"43") == b"Y" and m.get(b"122") for m in resent)
    tr_out = h.state.translators[Direction.OUTBOUND]
    for m in resent:  # renumbered past the Rejects before them, the body as the ATS sent it
        v = int(m.get(b"34"))  # type: ignore[arg-type]
        s = tr_out.last_sender_at_or_before(v)
        assert v == tr_out.to_visible(s) and v > s
        assert m.get(b"17") == dict(h.ats.sent[s])[b"17"]
    h.oms.check_replay()
    h.assert_clean()
    assert h.oms.duplicates > 0
    # Life goes on.
    h.from_ats(h.ats.exec_report("EXEC-after"))
    h.from_oms(h.oms.order("ORD-after"))
    h.assert_clean()


def test_resend_request_from_the_ats_across_outbound_refusals() -> None:
    h = Harness()
    h.logon()
    for i in range(10):
        if i in (2, 5):
            h.from_ats(news(h.ats, f"SECRET-{i}"))
        h.from_oms(h.oms.order(f"ORD-{i}"))
        h.from_ats(h.ats.exec_report(f"EXEC-{i}", f"ORD-{i}"))
    h.from_ats(h.ats.resend_request(2, 0))
    h.ats.check_replay()
    h.assert_clean()
    assert all(b"SECRET" not in raw for raw in h.to_oms)


def test_resend_request_for_proxy_positions_only() -> None:
    """A range that holds nothing but the proxy's own Reject is answered by the proxy alone."""
    h = Harness()
    h.logon()
    h.from_oms(h.oms.order("ORD-1"))
    h.from_ats(h.ats.exec_report("EXEC-1"))
    h.from_oms(quote_request(h.oms, "SECRET"))  # the proxy's Reject is the last the OMS got
    (pos,) = h.state.translators[Direction.OUTBOUND].positions
    res = h.insp.from_initiator(h.oms.resend_request(pos, 0))
    (own,) = decode(res.to_initiator)
    assert own.get(b"34") == b"%d" % pos and own.msg_type == b"4"
    (fwd,) = decode(res.to_acceptor)
    assert fwd.get(b"7") == b"%d" % h.ats.next_out  # nothing of the ATS's is in the range
    h._deliver(res)  # the ATS model answers as QuickFIX does: GapFill N -> N, a no-op
    h.oms.check_replay()
    assert h.state.next_seq[Direction.OUTBOUND] == h.ats.next_out
    h.from_ats(h.ats.exec_report("EXEC-3"))
    h.from_oms(quote_request(h.oms, "SECRET-2"))
    h.from_ats(h.ats.exec_report("EXEC-4"))
    h.assert_clean()


def test_resent_business_rejects_are_resent_not_gap_filled() -> None:
    """An application-level answer (BusinessMessageReject) is resent by the proxy as itself."""
    h = Harness(policy(reject_style=RejectStyle.BUSINESS_REJECT))
    _build_history(h, 8, refuse_at=(2, 5))
    res = h.insp.from_initiator(h.oms.resend_request(2, 0))
    own = decode(res.to_initiator)
    assert [m.msg_type for m in own] == [b"j", b"j"]
    assert all(m.get(b"43") == b"Y" and m.get(b"122") is not None for m in own)
    h._deliver(res)
    h.oms.check_replay()
    h.assert_clean()


def test_resend_of_the_logon_range_keeps_proxy_execution_report() -> None:
    """The ATS gap-fills its Logon; the proxy's ExecutionReport right after it must survive the
    GapFill (a recovering OMS holds it queued: a NewSeqNo past it would discard it)."""
    h = Harness(policy(reject_style=RejectStyle.EXECUTION_REPORT, allowed_inbound=frozenset({"F"})))
    h.logon()
    h.from_oms(h.oms.order("ORD-1"))  # D not allowed: refused with an ExecutionReport
    h.from_ats(h.ats.exec_report("EXEC-1"))
    h.from_oms(h.oms.resend_request(1, 0))
    h.oms.check_replay()
    h.assert_clean()


def test_gap_fill_over_a_proxy_business_reject_is_cut_around_it() -> None:
    """The ATS gap-fills a run of its session messages (Logon, ResendRequest) with the proxy's
    BusinessMessageReject between them: the GapFill reaches the OMS in two pieces, around it."""
    h = Harness(policy(reject_style=RejectStyle.BUSINESS_REJECT, allowed_inbound=frozenset({"D"})))
    h.logon()
    h.from_oms(h.oms.msg("G", (41, "ORD-1"), (11, "ORD-2"), (55, "AAPL")))  # BMR toward the OMS: 2
    h.from_ats(h.ats.resend_request(1, 0))  # ATS 2 (session level), seen as 3
    h.ats.check_replay()
    n = len(h.to_oms)
    h.from_oms(h.oms.resend_request(1, 0))
    got = decode(h.to_oms[n:])
    assert [(m.msg_type, m.get(b"34"), m.get(b"36")) for m in got] == [
        (b"j", b"2", None),  # the proxy's own, resent by the proxy
        (b"4", b"1", b"2"), (b"4", b"3", b"4"),  # the ATS's GapFill 1 -> 3, cut around it
    ]
    assert all(m.get(b"43") == b"Y" for m in got)
    h.oms.check_replay()
    h.assert_clean()


# --------------------------------------------------------------------------------------------------
# 6. PossDup resends of refused and forwarded messages
# --------------------------------------------------------------------------------------------------
def test_possdup_resend_of_refused_message_is_gap_filled_again() -> None:
    h = Harness()
    h.logon()
    h.from_oms(h.oms.order("ORD-1"))
    refused = quote_request(h.oms, "SECRET-QR")
    seq = h.oms.next_out - 1
    h.from_oms(refused)
    h.from_oms(h.oms.order("ORD-2"))
    h.from_ats(h.ats.exec_report("EXEC-1"))
    # The ATS asks again; the OMS model resends the QuoteRequest with PossDupFlag=Y.
    res = h.from_ats(h.ats.resend_request(seq, seq))
    h.ats.check_replay()
    h.assert_clean()
    assert all(b"SECRET" not in raw for raw in h.to_ats)
    refused_events = [e for e in h.events if e.outcome is Outcome.REFUSED]
    assert len(refused_events) == 2 and refused_events[1].detail.startswith("Resend of a refused")
    assert refused_events[1].msg_seq_num == seq
    assert one(res.to_initiator).msg_type == b"2"  # the ResendRequest, forwarded
    # Direct: a hand-made PossDup resend of it is gap-filled, with PossDupFlag and OrigSendingTime.
    again = h.oms.msg("R", (131, "SECRET-QR"), (146, 1), (55, "AAPL"), seq=seq, possdup=True,
                      orig=b"20240315-13:45:30.000")
    res = h.insp.from_initiator(again)
    gf = one(res.to_acceptor)
    assert gf.msg_type == b"4" and gf.get(b"43") == b"Y" and gf.get(b"122") == b"20240315-13:45:30.000"
    assert gf.get(b"34") == b"%d" % seq and res.to_initiator == []  # answered once already


def test_possdup_resend_of_forwarded_message_is_forwarded_translated() -> None:
    h = Harness()
    h.logon()
    h.from_ats(news(h.ats, "N"))  # OMS -> ATS now shifted by one
    order = h.oms.order("ORD-1")
    seq = h.oms.next_out - 1
    h.from_oms(order)
    again = h.oms.msg("D", *h.oms.sent[seq][5:], seq=seq, possdup=True, orig=b"20240315-13:45:30.000")
    res = h.insp.from_initiator(again)
    (out,) = res.to_acceptor
    same_except(again, out, {b"34": b"%d" % (seq + 1)})
    h._deliver(res)
    h.assert_clean()
    assert h.ats.duplicates == 1


def test_gap_fill_resend_over_a_refused_message_is_forwarded() -> None:
    """An OMS that does not resend stale orders gap-fills them (DoNotSend). Its GapFill over a range
    holding a refused message must reach the ATS as is, not be cut to the refused number."""
    h = Harness(oms_gapfill_app=True)
    h.logon()
    h.from_oms(h.oms.order("ORD-1"))
    first = h.oms.next_out
    h.from_oms(quote_request(h.oms, "SECRET"))
    for i in range(3):
        h.from_oms(h.oms.order(f"ORD-x{i}"))
    h.from_ats(h.ats.resend_request(first, 0))
    h.ats.check_replay(peer_gapfills_app=True)
    h.from_oms(h.oms.order("ORD-after"))
    h.assert_clean()


# --------------------------------------------------------------------------------------------------
# 7. Sequence numbers
# --------------------------------------------------------------------------------------------------
def test_seqnum_too_low_closes() -> None:
    h = Harness()
    h.logon()
    h.from_oms(h.oms.order("ORD-1"))
    res = h.from_oms(h.oms.msg("D", (11, "ORD-old"), seq=2))
    assert res.close is not None and res.close.reason is Reason.SEQNUM_TOO_LOW
    assert res.to_acceptor == []
    assert res.events[-1].outcome is Outcome.DISCONNECTED and res.events[-1].reason is Reason.SEQNUM_TOO_LOW


def test_seqnum_too_low_with_possdup_passes() -> None:
    h = Harness()
    h.logon()
    h.from_oms(h.oms.order("ORD-1"))
    dup = h.oms.msg("D", (11, "ORD-1"), seq=2, possdup=True, orig=b"20240315-13:45:30.000")
    res = h.from_oms(dup)
    assert res.close is None and res.to_acceptor == [dup]
    h.assert_clean()


def test_sequence_reset_reset_with_lower_seqnum_moves_expectation() -> None:
    h = Harness()
    h.logon()
    for i in range(4):
        h.from_oms(h.oms.order(f"ORD-{i}"))
    reset = h.oms.msg("4", (36, 20), seq=2)  # MsgSeqNum is ignored in Reset mode
    res = h.from_oms(reset)
    assert res.close is None and res.to_acceptor == [reset]
    assert h.state.next_seq[Direction.INBOUND] == 20
    h.oms.next_out = 20
    order = h.oms.order("ORD-20")
    assert h.from_oms(order).to_acceptor == [order]
    res = h.from_oms(h.oms.msg("D", (11, "ORD-low"), seq=15))
    assert res.close is not None and res.close.reason is Reason.SEQNUM_TOO_LOW


def test_gap_forward_is_allowed_and_tracked() -> None:
    """A MsgSeqNum above the expected one passes (the receiver asks for the gap)."""
    h = Harness()
    h.logon()
    h.oms.next_out = 10
    order = h.oms.order("ORD-10")
    res = h.insp.from_initiator(order)
    assert res.to_acceptor == [order]
    assert h.state.next_seq[Direction.INBOUND] == 11


def test_syntax_refusal_with_low_seqnum_does_not_gap_fill_the_past() -> None:
    """A well-framed message with bad syntax is refused by GapFill + Reject; one whose MsgSeqNum is
    below the expected one and not PossDup is the SEQNUM_TOO_LOW close, not a GapFill into the
    receiver's past (which the receiver would answer with its own disconnect)."""
    h = Harness()
    h.logon()
    for i in range(3):
        h.from_oms(h.oms.order(f"ORD-{i}"))
    bad = h.oms.msg("D", (11, "A"), (55, "X"), (55, "Y"), (44, ""))  # empty value
    res = h.from_oms(bad)
    assert res.close is None
    assert one(res.to_acceptor).msg_type == b"4"
    assert one(res.to_initiator).get(b"373") == b"4"
    h.assert_clean()
    low = h.oms.msg("D", (11, "A"), (44, ""), seq=2)
    res = h.from_oms(low)
    assert res.close is not None and res.close.reason is Reason.SEQNUM_TOO_LOW
    assert h.ats.errors == [] and h.oms.errors == []


def test_live_gap_fill_moves_the_next_number() -> None:
    """A GapFill sent live (not PossDup) skips numbers: the sender's next is its NewSeqNo, so a
    Reject the proxy sends toward the receiver afterwards must be numbered after the skip."""
    h = Harness()
    h.logon()
    h.from_oms(h.oms.order("ORD-1"))
    new = h.oms.next_out + 4
    gf = h.oms.msg("4", (123, "Y"), (36, new))
    h.oms.next_out = new
    h.from_oms(gf)
    h.from_ats(news(h.ats, "N"))  # Reject toward the ATS
    h.from_oms(h.oms.order("ORD-2"))
    h.assert_clean()


def test_possdup_message_beyond_the_tracked_number_moves_it() -> None:
    """The first the proxy sees of a number may be its PossDup resend (the original was garbled
    and dropped): a Reject inserted afterwards must not reuse that number."""
    h = Harness()
    h.logon()
    for i in range(3):
        h.from_ats(h.ats.exec_report(f"EXEC-{i}"))
    lost = h.ats.exec_report("EXEC-lost")
    assert h.from_ats(lost[:-4] + b"000\x01").events[0].outcome is Outcome.DROPPED
    # The OMS asks for a past range with no end: the ATS resends the lost one too.
    h.from_oms(h.oms.resend_request(2, 0))
    h.oms.check_replay()
    assert b"EXEC-lost" in h.oms.app[-1]
    h.from_oms(quote_request(h.oms, "SECRET"))  # a Reject toward the OMS
    h.from_ats(h.ats.exec_report("EXEC-next"))
    h.assert_clean()


# --------------------------------------------------------------------------------------------------
# 8. CompIDs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["oms", "ats"])
def test_compid_change_mid_session_closes(who: str) -> None:
    h = Harness()
    h.logon()
    if who == "oms":
        res = h.from_oms(h.oms.msg("D", (11, "X"), sender=b"OMS2"))
        assert res.to_acceptor == []
    else:
        res = h.from_ats(h.ats.msg("8", (11, "X"), sender=b"ATS2"))
        assert res.to_initiator == []
    assert res.close is not None and res.close.reason is Reason.COMPID_MISMATCH
    assert res.events[-1].outcome is Outcome.DISCONNECTED


# --------------------------------------------------------------------------------------------------
# 9. Rate limit
# --------------------------------------------------------------------------------------------------
def test_rate_limit_refuses_then_floods() -> None:
    clock = FakeClock()
    h = Harness(policy(rate_limit=RateLimit(rate=1, burst=5, disconnect_after=10)), clock=clock)
    h.logon()  # takes a token
    clock.advance(1.0)  # back to a full bucket of 5
    for i in range(5):
        order = h.oms.order(f"ORD-{i}")
        assert h.from_oms(order).to_acceptor == [order]
    for i in range(10):
        res = h.from_oms(h.oms.order(f"SECRET-{i}"))
        assert res.close is None
        assert one(res.to_acceptor).msg_type == b"4"
        rej = one(res.to_initiator)
        assert rej.msg_type == b"3" and rej.get(b"373") == b"99" and b"rate" in rej.get(b"58")
        assert res.events[0].reason is Reason.RATE_LIMITED and res.events[0].outcome is Outcome.REFUSED
    h.assert_clean()
    res = h.from_oms(h.oms.order("SECRET-11"))
    assert res.close is not None and res.close.reason is Reason.FLOOD
    assert res.to_acceptor == [] and res.events[-1].outcome is Outcome.DISCONNECTED
    assert all(b"SECRET" not in raw for raw in h.to_ats)


def test_rate_limit_refills_with_the_clock() -> None:
    clock = FakeClock()
    h = Harness(policy(rate_limit=RateLimit(rate=1, burst=5, disconnect_after=10)), clock=clock)
    h.logon()
    for i in range(4):
        h.from_oms(h.oms.order(f"ORD-{i}"))
    res = h.from_oms(h.oms.order("ORD-4"))
    assert res.events and res.events[0].reason is Reason.RATE_LIMITED
    clock.advance(2.0)  # two tokens back
    for i in range(2):
        order = h.oms.order(f"ORD-r{i}")
        assert h.from_oms(order).to_acceptor == [order]
    res = h.from_oms(h.oms.order("ORD-r2"))
    assert res.events and res.events[0].reason is Reason.RATE_LIMITED
    h.assert_clean()


def test_rate_limit_is_inbound_only_and_spares_possdup() -> None:
    clock = FakeClock()
    h = Harness(policy(rate_limit=RateLimit(rate=1, burst=2, disconnect_after=100)), clock=clock)
    h.logon()
    for i in range(10):
        er = h.ats.exec_report(f"EXEC-{i}")
        assert h.from_ats(er).to_initiator == [er]
    h.from_oms(h.oms.order("ORD-1"))
    dup = h.oms.msg("D", (11, "ORD-1"), seq=2, possdup=True, orig=b"20240315-13:45:30.000")
    assert h.from_oms(dup).to_acceptor == [dup]
    h.assert_clean()


# --------------------------------------------------------------------------------------------------
# 10. Shadow and disconnect actions
# --------------------------------------------------------------------------------------------------
def test_shadow_mode_forwards_byte_exact() -> None:
    h = Harness(policy(actions={Reason.MSGTYPE_NOT_ALLOWED: Action.SHADOW}))
    h.logon()
    qr = quote_request(h.oms, "QR")
    res = h.from_oms(qr)
    assert res.to_acceptor == [qr] and res.to_initiator == [] and res.close is None
    (ev,) = res.events
    assert ev.outcome is Outcome.SHADOWED and ev.reason is Reason.MSGTYPE_NOT_ALLOWED
    assert h.state.translators[Direction.OUTBOUND].identity
    st = h.insp.stats[Direction.INBOUND]
    assert st.shadowed == 1 and st.forwarded == 2 and st.refused == 0
    h.assert_clean()


def test_disconnect_action_closes() -> None:
    h = Harness(policy(actions={Reason.MSGTYPE_NOT_ALLOWED: Action.DISCONNECT}))
    h.logon()
    res = h.from_oms(quote_request(h.oms, "SECRET"))
    assert res.close is not None and res.close.reason is Reason.MSGTYPE_NOT_ALLOWED
    assert res.to_acceptor == [] and res.to_initiator == []
    assert res.events[-1].outcome is Outcome.DISCONNECTED
    assert h.insp.from_initiator(h.oms.order("ORD-1")).to_acceptor == []  # closed


# --------------------------------------------------------------------------------------------------
# 11. Reject styles
# --------------------------------------------------------------------------------------------------
def test_business_reject_style() -> None:
    h = Harness(policy(reject_style=RejectStyle.BUSINESS_REJECT))
    h.logon()
    res = h.from_oms(quote_request(h.oms, "QR-1"))
    bmr = one(res.to_initiator)
    assert bmr.msg_type == b"j" and bmr.get(b"380") == b"3" and bmr.get(b"372") == b"R"
    assert bmr.get(b"45") == b"2" and bmr.get(b"58")
    h.assert_clean()


def test_execution_report_style() -> None:
    h = Harness(policy(reject_style=RejectStyle.EXECUTION_REPORT, allowed_inbound=frozenset({"F"})))
    h.logon()
    res = h.from_oms(h.oms.order("ORD-77", "MSFT"))
    er = one(res.to_initiator)
    assert er.msg_type == b"8" and er.get(b"39") == b"8" and er.get(b"150") == b"8"
    assert er.get(b"11") == b"ORD-77" and er.get(b"55") == b"MSFT" and er.get(b"17") == b"FIXPROXY-REJ-ORD-77"
    assert one(res.to_acceptor).msg_type == b"4"
    # A refused cancel gets an OrderCancelReject; a type that is not an order gets a BMR.
    h2 = Harness(policy(reject_style=RejectStyle.EXECUTION_REPORT, allowed_inbound=frozenset({"D"})))
    h2.logon()
    res = h2.from_oms(h2.oms.msg("G", (41, "ORD-1"), (11, "ORD-2"), (55, "AAPL")))
    ocr = one(res.to_initiator)
    assert ocr.msg_type == b"9" and ocr.get(b"434") == b"2" and ocr.get(b"41") == b"ORD-1"
    res = h2.from_oms(quote_request(h2.oms, "QR"))
    assert one(res.to_initiator).msg_type == b"j"
    h.assert_clean()
    h2.assert_clean()


# --------------------------------------------------------------------------------------------------
# 12. Framing errors
# --------------------------------------------------------------------------------------------------
def test_bad_checksum_is_dropped_silently() -> None:
    h = Harness()
    h.logon()
    good = h.oms.order("ORD-1")
    bad = good[:-4] + (b"000" if not good.endswith(b"=000\x01") else b"001") + b"\x01"
    h.oms.next_out -= 1  # the model's message 2 never arrived
    res = h.insp.from_initiator(bad)
    assert res.to_acceptor == [] and res.to_initiator == [] and res.close is None
    (ev,) = res.events
    assert ev.outcome is Outcome.DROPPED and ev.reason is Reason.BAD_CHECKSUM
    st = h.insp.stats[Direction.INBOUND]
    assert st.dropped == 1 and st.received == 2 and st.forwarded == 1
    # Re-sent correctly (as the receiver's ResendRequest would have it), it passes.
    good = h.oms.order("ORD-1")
    assert h.from_oms(good).to_acceptor == [good]
    h.assert_clean()


def test_dropped_message_is_recovered_by_resend_across_refusals() -> None:
    """A garbled ATS message is dropped; the OMS sees the gap, asks for it, and gets it, with the
    proxy's own insertions in the right places."""
    h = Harness()
    h.logon()
    h.from_oms(quote_request(h.oms, "SECRET-1"))  # an insertion toward the OMS
    er = h.ats.exec_report("EXEC-1")
    h.insp.from_acceptor(er[:-2] + b"X\x01")  # garbled: checksum not three digits
    er2 = h.ats.exec_report("EXEC-2")
    res = h.insp.from_acceptor(er2)
    (fwd,) = decode(res.to_initiator)
    gap_at = h.oms.expected
    assert int(fwd.get(b"34")) == gap_at + 1  # type: ignore[arg-type]
    # The OMS model notices the gap and asks for it.
    rr = h.oms.resend_request(gap_at, 0)
    h.oms.received[gap_at + 1] = fwd.raw  # what it has already (queued by a real engine)
    h.oms.expected = gap_at
    res = h.insp.from_initiator(rr)
    h._deliver(res)
    assert gap_at in h.oms.received and b"EXEC-1" in h.oms.received[gap_at]
    h.assert_clean()


# --------------------------------------------------------------------------------------------------
# 13. SendingTime
# --------------------------------------------------------------------------------------------------
def test_stale_sending_time_is_refused() -> None:
    clock = FakeClock()
    h = Harness(clock=clock)
    h.logon()
    stale = h.oms.msg("D", (11, "SECRET-STALE"), sending_time=utc_timestamp(T0 - 3600))
    res = h.from_oms(stale)
    assert res.close is None and one(res.to_acceptor).msg_type == b"4"
    rej = one(res.to_initiator)
    assert rej.get(b"373") == b"10" and rej.get(b"371") == b"52"
    assert res.events[0].reason is Reason.STALE_SENDING_TIME
    future = h.ats.msg("8", (11, "X"), sending_time=utc_timestamp(T0 + 600))
    res = h.from_ats(future)
    assert one(res.to_acceptor).get(b"373") == b"10"
    # Within tolerance and PossDup (OrigSendingTime is old by nature) both pass.
    ok = h.oms.msg("D", (11, "ORD-ok"), sending_time=utc_timestamp(T0 + 100))
    (out,) = h.from_oms(ok).to_acceptor
    same_except(ok, out, {b"34": b"%d" % h.oms.next_out})  # after the Reject to the ATS: +1
    dup = h.oms.msg("D", (11, "ORD-ok"), seq=h.oms.next_out - 1, possdup=True,
                    sending_time=utc_timestamp(T0 - 3600), orig=utc_timestamp(T0 - 3700))
    assert len(h.from_oms(dup).to_acceptor) == 1
    h.assert_clean()
    assert all(b"SECRET" not in raw for raw in h.to_ats)


def test_stale_logon_is_refused_without_touching_the_ats() -> None:
    """A Logon cannot be gap-filled: the ATS would see a SequenceReset as its first message."""
    h = Harness()
    res = h.from_oms(h.oms.msg("A", (98, 0), (108, 30), sending_time=utc_timestamp(T0 - 3600)))
    assert res.close is not None and res.close.reason is Reason.STALE_SENDING_TIME
    assert res.to_acceptor == [] and res.to_initiator == []
    assert res.logon is None


def test_refusal_before_the_ats_logon_closes() -> None:
    """An OMS that pipelines a refused message right after its Logon cannot be answered: the
    Reject would be numbered before the ATS's Logon (its engine would see a Reject as message 1).
    The session is closed instead; a valid pipelined message still passes."""
    h = Harness()
    h.from_oms(h.oms.logon())
    order = h.oms.order("ORD-1")
    assert h.from_oms(order).to_acceptor == [order]
    res = h.from_oms(quote_request(h.oms, "SECRET"))
    assert res.close is not None and res.close.reason is Reason.MSGTYPE_NOT_ALLOWED
    assert res.to_acceptor == [] and res.to_initiator == []
    assert res.events[-1].outcome is Outcome.DISCONNECTED


# --------------------------------------------------------------------------------------------------
# 14. Audit completeness
# --------------------------------------------------------------------------------------------------
def test_audit_counters_add_up() -> None:
    """Every message read is counted once as forwarded, refused or dropped. A shadowed message is
    forwarded too: `shadowed` is a subset of `forwarded`, not a fourth outcome."""
    h = Harness(policy(actions={Reason.STALE_SENDING_TIME: Action.SHADOW}))
    h.logon()
    for i in range(20):
        h.from_oms(h.oms.order(f"ORD-{i}"))
        if i % 5 == 1:
            h.from_oms(quote_request(h.oms, "Q"))
            h.from_ats(news(h.ats, "N"))
        if i % 6 == 2:
            h.from_oms(h.oms.msg("D", (11, "S"), sending_time=utc_timestamp(T0 - 3600)))  # shadowed
        if i % 4 == 3:
            bad = h.ats.exec_report("E")
            h.ats.next_out -= 1
            h.from_ats(bad[:-3] + b"XX\x01")
        h.from_ats(h.ats.exec_report(f"EXEC-{i}"))
    h.from_ats(h.ats.resend_request(3, 0))  # resends of refused messages are refused again
    for d in Direction:
        s = h.insp.stats[d]
        assert s.received == s.forwarded + s.refused + s.dropped, (d, s.as_dict())
        assert s.shadowed <= s.forwarded
    s_in, s_out = h.insp.stats[Direction.INBOUND], h.insp.stats[Direction.OUTBOUND]
    assert s_in.shadowed == 3 and s_in.refused >= 8 and s_out.refused == 4 and s_out.dropped == 5
    evs = h.outcomes()
    assert sum(o is Outcome.REFUSED for _, o in evs) == s_in.refused + s_out.refused
    assert sum(o is Outcome.DROPPED for _, o in evs) == s_in.dropped + s_out.dropped
    assert sum(o is Outcome.SHADOWED for _, o in evs) == s_in.shadowed + s_out.shadowed


def test_audit_counters_on_close() -> None:
    h = Harness()
    h.logon()
    res = h.insp.from_initiator(h.oms.order("A") + h.oms.msg("D", (11, "B"), seq=1) + h.oms.order("C"))
    assert res.close is not None
    s = h.insp.stats[Direction.INBOUND]
    assert s.received == s.forwarded + s.refused + s.dropped == 3  # the one after the close: unread


# --------------------------------------------------------------------------------------------------
# 15. ResetSeqNumFlag
# --------------------------------------------------------------------------------------------------
def test_logon_with_reset_seq_num_flag_resets_translation() -> None:
    h = Harness()
    _build_history(h, 6, refuse_at=(1, 3))
    assert not h.state.translators[Direction.OUTBOUND].identity
    # Reconnect with ResetSeqNumFlag: a new inspector, the same persistent state.
    insp = SessionInspector(lambda _m: h.state, clock=h.clock)
    h.insp = insp
    h.oms = Engine("OMS1", "ATS", h.clock)
    h.ats = Engine("ATS", "OMS1", h.clock)
    logon = h.oms.logon(reset=True)
    res = h.from_oms(logon)
    assert res.to_acceptor == [logon]
    assert h.state.translators[Direction.OUTBOUND].identity and h.state.translators[Direction.INBOUND].identity
    assert h.state.refused[Direction.INBOUND] == {}
    ats_logon = h.ats.logon(reset=True)
    assert h.from_ats(ats_logon).to_initiator == [ats_logon]
    for i in range(5):
        order = h.oms.order(f"ORD-{i}")
        assert h.from_oms(order).to_acceptor == [order]
        er = h.ats.exec_report(f"EXEC-{i}")
        assert h.from_ats(er).to_initiator == [er]
    h.assert_clean()


def test_reset_logon_answer_does_not_reset_again() -> None:
    """OMS Logon 141=Y (its number 1), ATS Logon 141=Y (its number 1): the ATS's answer must not
    reset the OMS -> ATS numbering again, or a Reject the proxy sends the ATS right after (here
    for a TradingSessionStatus the policy does not allow) would reuse number 1."""
    h = Harness()
    _build_history(h, 4, refuse_at=(1,))
    h.reconnect(reset=True)
    res = h.from_ats(h.ats.msg("h", (336, "1"), (340, "2")))
    assert one(res.to_acceptor).get(b"34") == b"2"
    h.from_oms(h.oms.order("ORD-after"))
    h.from_ats(h.ats.exec_report("EXEC-after"))
    h.assert_clean()


def test_reconnect_without_reset_keeps_translating() -> None:
    h = Harness()
    _build_history(h, 6, refuse_at=(1, 3))
    oms_next, ats_next = h.oms.next_out, h.ats.next_out
    oms_expected, ats_expected = h.oms.expected, h.ats.expected
    h.insp = SessionInspector(lambda _m: h.state, clock=h.clock)
    h.oms.expected, h.ats.expected = oms_expected, ats_expected
    assert (h.oms.next_out, h.ats.next_out) == (oms_next, ats_next)
    logon = h.oms.msg("A", (98, 0), (108, 30), (789, oms_expected))
    res = h.from_oms(logon)
    (fwd,) = decode(res.to_acceptor)
    # NextExpectedMsgSeqNum points into the ATS stream: mapped to the ATS's numbering.
    assert int(fwd.get(b"789")) == h.state.translators[Direction.OUTBOUND].first_sender_at_or_after(
        oms_expected)  # type: ignore[arg-type]
    assert int(fwd.get(b"789")) == h.ats.next_out
    h.from_ats(h.ats.logon())
    h.from_oms(h.oms.order("ORD-again"))
    h.from_ats(h.ats.exec_report("EXEC-again"))
    h.assert_clean()


# --------------------------------------------------------------------------------------------------
# SeqTranslator against a brute-force model
# --------------------------------------------------------------------------------------------------
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=30))
@settings(max_examples=150, deadline=None)
def test_translator_matches_brute_force(steps: list[int]) -> None:
    """Build a visible stream: sender messages 1, 2, 3, ... with proxy insertions between them."""
    tr = SeqTranslator()
    visible: list[tuple[str, int]] = []  # ("s", sender seq) or ("p", k)
    s = 1
    for k, inserts in enumerate(steps):
        for _ in range(inserts % 3):
            v = tr.insert(s, [(b"35", b"3")])
            visible.append(("p", k))
            assert v == len(visible)
        visible.append(("s", s))
        s += 1
    for pos, (kind, n) in enumerate(visible, start=1):
        assert tr.is_own(pos) == (kind == "p")
        if kind == "s":
            assert tr.to_visible(n) == pos
        after = next((x for kk, x in visible[pos - 1:] if kk == "s"), s)
        assert tr.first_sender_at_or_after(pos) == after
        before = next((x for kk, x in reversed(visible[:pos]) if kk == "s"), 0)
        assert tr.last_sender_at_or_before(pos) == before
    assert tr.own_in_range(1, 0) == [p for p, (kind, _) in enumerate(visible, start=1) if kind == "p"]


# --------------------------------------------------------------------------------------------------
# The property: random interleavings, no sequence error, no refused content across
# --------------------------------------------------------------------------------------------------
ACTIONS = st.lists(
    st.tuples(st.sampled_from(["order", "exec", "oms_refused", "ats_refused", "oms_resend", "ats_resend",
                               "oms_heartbeat", "ats_heartbeat", "reconnect"]),
              st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=10_000)),
    min_size=1, max_size=40)


@given(ACTIONS, st.sampled_from(list(RejectStyle)), st.booleans())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_interleavings_keep_both_engines_in_sequence(actions: list[tuple[str, int, int]],
                                                            style: RejectStyle, gapfill_app: bool) -> None:
    run_interleaving(actions, style, gapfill_app)


def run_interleaving(actions: list[tuple[str, int, int]], style: RejectStyle, gapfill_app: bool) -> None:
    h = Harness(policy(reject_style=style, allowed_inbound=frozenset({"D", "F"})),
                oms_gapfill_app=gapfill_app)
    h.logon()
    for n, (kind, a, b) in enumerate(actions, start=1):
        if kind == "order":
            h.from_oms(h.oms.order(f"ORD-{n}"))
        elif kind == "exec":
            h.from_ats(h.ats.exec_report(f"EXEC-{n}"))
        elif kind == "oms_refused":
            h.from_oms(quote_request(h.oms, f"SECRETO-{n}") if a % 2 else h.oms.msg(
                "G", (41, "ORD-1"), (11, f"SECRETO-{n}"), (55, "AAPL")))
        elif kind == "ats_refused":
            h.from_ats(news(h.ats, f"SECRETA-{n}"))
        elif kind == "oms_heartbeat":
            h.from_oms(h.oms.heartbeat())
        elif kind == "ats_heartbeat":
            h.from_ats(h.ats.heartbeat())
        elif kind == "reconnect":
            h.reconnect(reset=a % 3 == 0)
        else:
            eng = h.oms if kind == "oms_resend" else h.ats
            last = eng.expected - 1
            begin = 1 + a % last
            end = 0 if b % 3 == 0 else begin + b % (last - begin + 1)
            if kind == "oms_resend":
                h.from_oms(eng.resend_request(begin, end))
                eng.check_replay()
            else:
                h.from_ats(eng.resend_request(begin, end))
                eng.check_replay(peer_gapfills_app=gapfill_app)
        h.assert_clean()
    # What the proxy refused never reaches the other side (the sender may see it echoed back).
    assert all(b"SECRETO" not in raw for raw in h.to_ats)
    assert all(b"SECRETA" not in raw for raw in h.to_oms)
    for d in Direction:
        s = h.insp.stats[d]
        assert s.received == s.forwarded + s.refused + s.dropped


DROP_ACTIONS = st.lists(
    st.tuples(st.sampled_from(["order", "exec", "oms_refused", "ats_refused", "oms_garbled", "ats_garbled",
                               "oms_resend", "ats_resend"]),
              st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=10_000)),
    min_size=1, max_size=40)


def garble(raw: bytes) -> bytes:
    """The same message with a wrong CheckSum: dropped by the proxy."""
    good = raw[-4:-1]
    return raw[:-4] + (b"000" if good != b"000" else b"001") + b"\x01"


@given(DROP_ACTIONS, st.sampled_from(list(RejectStyle)))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_drops_are_recovered_and_every_message_arrives_once(actions: list[tuple[str, int, int]],
                                                                    style: RejectStyle) -> None:
    run_with_drops(actions, style)


def run_with_drops(actions: list[tuple[str, int, int]], style: RejectStyle) -> None:
    """Garbled messages are dropped; the receiver sees the gap, asks, and the resend is checked
    again. In the end each side has received every application message the other sent and the
    proxy allowed, once, in order, and nothing the proxy refused."""
    h = Harness(policy(reject_style=style, allowed_inbound=frozenset({"D", "F"})))
    h.logon()
    h.oms.auto_recover = h.ats.auto_recover = True
    garbled = {Direction.INBOUND: 0, Direction.OUTBOUND: 0}
    for n, (kind, a, b) in enumerate(actions, start=1):
        if kind == "order":
            h.from_oms(h.oms.order(f"ORD-{n}"))
        elif kind == "exec":
            h.from_ats(h.ats.exec_report(f"EXEC-{n}"))
        elif kind == "oms_refused":
            h.from_oms(quote_request(h.oms, f"SECRETO-{n}"))
        elif kind == "ats_refused":
            h.from_ats(news(h.ats, f"SECRETA-{n}"))
        elif kind == "oms_garbled":
            garbled[Direction.INBOUND] += 1
            h.from_oms(garble(h.oms.order(f"ORD-{n}") if a % 3 else quote_request(h.oms, f"SECRETO-{n}")))
        elif kind == "ats_garbled":
            garbled[Direction.OUTBOUND] += 1
            h.from_ats(garble(h.ats.exec_report(f"EXEC-{n}") if a % 3 else news(h.ats, f"SECRETA-{n}")))
        else:
            eng = h.oms if kind == "oms_resend" else h.ats
            last = eng.expected - 1
            begin = 1 + a % last
            end = 0 if b % 3 == 0 else begin + b % (last - begin + 1)
            (h.from_oms if eng is h.oms else h.from_ats)(eng.resend_request(begin, end))
            eng.check_replay()
        assert not h.oms.recovering and not h.ats.recovering
        h.assert_clean()
    # Flush: a message each way reveals any gap left at the end.
    h.from_oms(h.oms.heartbeat())
    h.from_ats(h.ats.heartbeat())
    h.assert_clean()
    assert h.ats.gaps <= garbled[Direction.INBOUND] and h.oms.gaps <= garbled[Direction.OUTBOUND]

    def app_sent(eng: Engine, allowed: frozenset[bytes]) -> list[list[tuple[bytes, bytes]]]:
        return [[(t, v) for t, v in f if t not in VOLATILE] for _, f in sorted(eng.sent.items())
                if f[0][1] in allowed]

    def app_received(eng: Engine) -> list[list[tuple[bytes, bytes]]]:
        return [content(raw) for raw in eng.app if not is_proxy_reject(raw)]

    assert app_received(h.ats) == app_sent(h.oms, frozenset({b"D", b"F"}))
    assert app_received(h.oms) == app_sent(h.ats, frozenset({b"8"}))
    assert all(b"SECRETO" not in raw for raw in h.to_ats)
    assert all(b"SECRETA" not in raw for raw in h.to_oms)
    for d in Direction:
        s = h.insp.stats[d]
        assert s.received == s.forwarded + s.refused + s.dropped
        assert s.dropped == garbled[d]
