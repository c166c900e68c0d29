"""`fixproxy replay`: play a captured FIX session again, live through a proxy or offline through
the proxy's own checks.

Captures
--------
`read_capture` detects the format of each file:

- ``quickfix``: a QuickFIX message log (``*.messages.log`` / ``*.messages.current.log``), one
  message per entry, ``YYYYMMDD-HH:MM:SS.fffffffff : 8=FIX...`` with SOH inside;
- ``raw``: a binary stream of concatenated messages (what a tap on the socket sees), no timestamps;
- ``text-pipe``, ``text-caret``, ``text-soh``: text logs, one message per line, with SOH written as
  ``|``, as ``^A``, or kept; a line may start with a timestamp (``20260302-09:30:00.123``,
  ISO 8601, or epoch seconds), followed by ``" : "``, ``" "`` or nothing, then ``8=FIX``. Blank
  lines and lines starting with ``#`` are skipped.

A file that is none of these is a `CaptureError` naming the file and line. Messages are framed by
the codec's `Decoder` (after the separators are converted back to SOH). A ``|`` is converted only
where it separates fields (followed by ``<tag>=`` or ending the line), so a literal ``|`` in a Text
(58) survives. BodyLength (9) and CheckSum (10) are recomputed only when they fail because of
the conversion: when each is right for the text as written (a tool computed them over the
``|``/``^A`` form) but wrong once converted; the message is then flagged ``repaired``. Anything
else that does not frame (a wrong CheckSum in both forms, a BodyLength that fits neither) is kept
byte for byte with its ``frame_error``: a hostile capture stays hostile.

Sessions
--------
`split_sessions` groups messages by CompID pair. The initiator side (the OMS, whose messages are
replayed) is the one named by ``--session``, else the sender of the pair's first Logon, else the
sender of its first order message (D/F/G/H), else of its first message. The other direction is
only compared against (what the ATS answered then). Give one side's log: the OMS's and the ATS's
logs of the same session together hold every message twice.

Offline (``--offline --config FILE``)
-------------------------------------
`replay_offline` feeds each session, in capture order, to a `SessionInspector` built exactly as
`fixproxy.proxy.FixProxy` builds one: the proxy's validator (`FixProxy._validator`), the config's
limits, one `LeakGuard` shared by all sessions, an `Authoriser` over the config's sessions. The
initiator's messages go in as ``from_initiator``, the acceptor's as ``from_acceptor``. What cannot
be known from a capture is assumed to pass and the report says so: the client certificate is
treated as bound to the session's CompIDs and the source address as allowed. The inspector's clock
is the capture's time of each message (its SendingTime when the file has no timestamps), so rate
limits and the SendingTime window see the original pace. A new Logon from the initiator starts a
new connection; after a disconnect the rest of that connection is not inspected (counted). A
capture without a Logon gets a synthetic one; a capture without any acceptor message gets a
synthetic acceptor Logon answer (the proxy closes a session whose initiator offends before the
ATS has logged on). The report lists refusals by reason, direction and outcome, with examples.

Live (``--target HOST:PORT``)
-----------------------------
`replay_live` connects as the OMS would (TLS with a client certificate, or plain), sends its own
Logon built from the captured one (fresh 34/52; 789 dropped), waits for the answer and then sends
the captured application messages; captured session-level messages (Logon, Heartbeat,
TestRequest, ResendRequest, Reject, SequenceReset, Logout) are not replayed, nor PossDup copies of
messages already replayed. It is a replayer, not a FIX engine:

- it answers TestRequest with a Heartbeat (112) and sends a Heartbeat when it has sent nothing
  for HeartBtInt, so the session stays up;
- it answers a ResendRequest by gap-filling (35=4, 123=Y, 43=Y) the numbers that carried no
  application message (its own session messages, captured gaps, garbled frames, and messages the
  proxy refused: the proxy has already put a GapFill in their place) and by sending PossDup copies
  (43=Y, 122) of the other application messages in the range, because gap-filling those would make
  an ATS skip orders it has queued (QuickFIX does). A garbled message covered by a ResendRequest
  is counted as ``dropped`` (the proxy ignored it, as FIX says);
- it never sends a ResendRequest, does not check the ATS's sequence numbers, and does not resend
  after a reconnect: a connection lost mid-replay ends the replay (reported).

After the last message it waits until every sent message has an answer and no application
message has moved for a second (at most ``--wait`` seconds), then logs out.

Sequence numbers: by default each message keeps its captured MsgSeqNum when that continues the
session (a captured gap, left by session messages not replayed, is gap-filled first); a message
whose number is already used (the replayer's own Heartbeats take numbers too) is renumbered, and
so is everything after it. ``--renumber`` renumbers every message contiguously. When the
counterparty answers the Logon with "MsgSeqNum too low, expecting N", the replayer reconnects at
N; when the connection is closed at Logon without a word (the proxy does that for a number it
has seen before, and for a certificate not bound to the CompIDs) it reconnects once with
ResetSeqNumFlag (141=Y) and numbers from 1 (which resets the ATS's numbers too). Rewrites go
through `codec.replace_fields` (9 and 10 recomputed, every other byte kept). A garbled message
is sent as captured; when it has a wrong CheckSum and must be renumbered or refreshed, it is
rewritten and its CheckSum is broken again by the same amount. ``--refresh-sending-time``
rewrites SendingTime (52) and TransactTime (60) to now, in the captured format (the proxy's
SendingTime window is 120 s by default: a replay of an old capture needs it).

The live report counts each sent message once by its first answer: refused (Reject 35=3 and
BusinessMessageReject 35=j naming its MsgSeqNum or ClOrdID, ExecutionReport with OrdStatus 8 that
is not a status report, OrderCancelReject), answered (any other answer), unanswered, or dropped;
``accepted`` is everything not refused or dropped. Refusals are grouped by MsgType, 373 and Text.
Latency is send → first answer per ClOrdID. The ATS side of the capture is compared per ClOrdID
(same outcome or not). ClOrdIDs are sent as captured: replaying the same capture twice to the
same ATS makes it refuse duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import ssl
import time
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .codec import SOH, Decoder, FrameError, Limits, Message, checksum, encode, replace_fields
from .events import Direction, Outcome

if TYPE_CHECKING:
    from .config import ProxyConfig

# Session-level message types: not replayed live (the replayer speaks its own session layer).
SESSION_TYPES = frozenset({"0", "1", "2", "3", "4", "5", "A"})
ORDER_ENTRY = frozenset({"D", "F", "G", "H"})
_BLOCKING = (Outcome.DROPPED, Outcome.REFUSED, Outcome.DISCONNECTED, Outcome.CONNECTION_REFUSED)
# Capture decoding: generous limits (a capture is read, not defended against).
_CAPTURE_LIMITS = Limits(max_message_size=1 << 20, max_fields=100_000)

ProgressFn = Callable[[int, int, float], None]  # (done, total, messages per second)


class CaptureError(Exception):
    """A file that is not a FIX capture: ``str()`` is ``"<problem> (<file>:<line>)"``."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        self.where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{problem} ({self.where})")


class ReplayError(Exception):
    """A replay that could not run: `usage` when the arguments are at fault (no such session, one
    to choose), else the connection or the Logon failed."""

    def __init__(self, text: str, *, usage: bool = False) -> None:
        super().__init__(text)
        self.usage = usage


# ================================================================================================
# Reading captures
# ================================================================================================


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    """One message of a capture. `raw` is SOH-delimited FIX; `time` the capture's timestamp (epoch
    seconds, None when the file has none); `frame_error` the codec's reason when the bytes do not
    frame (kept as captured); `repaired` when 9/10 were recomputed after separator conversion."""

    time: float | None
    raw: bytes
    sender: str | None
    target: str | None
    msg_type: str | None
    seq: int | None
    where: str = ""
    frame_error: str | None = None
    repaired: bool = False

    def get(self, tag: bytes) -> bytes | None:
        return _field(self.raw, tag)

    @property
    def possdup(self) -> bool:
        return self.get(b"43") == b"Y"

    @property
    def sending_time(self) -> float | None:
        v = self.get(b"52")
        return _parse_fix_time(v) if v else None

    @property
    def when(self) -> float | None:
        """The capture time, else the SendingTime."""
        return self.time if self.time is not None else self.sending_time


def _field(raw: bytes, tag: bytes) -> bytes | None:
    """The first value of `tag` in the header or body, without trusting the syntax."""
    key = SOH + tag + b"="
    i = raw.find(key)
    if i < 0:
        return None
    start = i + len(key)
    end = raw.find(SOH, start)
    return raw[start:] if end < 0 else raw[start:end]


def _captured(raw: bytes, t: float | None, where: str, frame_error: str | None = None,
              repaired: bool = False) -> CapturedMessage:
    def text(tag: bytes) -> str | None:
        v = _field(raw, tag)
        return v.decode("latin-1") if v is not None else None

    seq = _field(raw, b"34")
    return CapturedMessage(t, raw, text(b"49"), text(b"56"), text(b"35"),
                           int(seq) if seq is not None and seq.isdigit() and len(seq) < 12 else None,
                           where, frame_error, repaired)


_FIX_TIME = re.compile(rb"(\d{4})(\d\d)(\d\d)-(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?")
_ISO_TIME = re.compile(rb"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
                       rb"(Z|[+-]\d\d:?\d\d)?")
_EPOCH = re.compile(rb"(\d{9,11})(?:\.(\d{1,9}))?")


def _epoch(parts: Sequence[bytes | None], frac: bytes | None, tz: bytes | None = None) -> float | None:
    try:
        y, mo, d, h, mi, s = (int(p) for p in parts)  # type: ignore[arg-type]
        t = datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()
    except ValueError:
        return None
    if frac:
        t += int(frac) / 10 ** len(frac)
    if tz and tz != b"Z":
        sign = -1 if tz[:1] == b"-" else 1
        digits = tz[1:].replace(b":", b"")
        t -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return t


def _parse_fix_time(value: bytes) -> float | None:
    """A FIX UTCTimestamp (YYYYMMDD-HH:MM:SS[.f...]) as epoch seconds."""
    m = _FIX_TIME.fullmatch(value)
    return _epoch(m.groups()[:6], m.group(7)) if m else None


def _parse_prefix_time(prefix: bytes) -> float | None:
    """The timestamp at the start of a text log line, in any of the formats documented above."""
    p = prefix.strip().rstrip(b":").strip()
    if not p:
        return None
    for word in (p, p.split()[0]):
        m = _FIX_TIME.fullmatch(word)
        if m:
            return _epoch(m.groups()[:6], m.group(7))
    m = _ISO_TIME.match(p)
    if m:
        return _epoch(m.groups()[:6], m.group(7), m.group(8))
    m = _EPOCH.fullmatch(p.split()[0])
    if m:
        return int(m.group(1)) + (int(m.group(2)) / 10 ** len(m.group(2)) if m.group(2) else 0.0)
    return None


_QF_PREFIX = re.compile(rb"^(\d{8}-\d\d:\d\d:\d\d(?:\.\d{1,9})?) : ", re.M)
_LINE_END_CHECKSUM = re.compile(rb"\x0110=[^\x01\r\n]*\x01\r?\n")
_PIPE_SEPARATOR = re.compile(rb"\|(?=[0-9]{1,5}=)|\|\s*$")


def detect_format(data: bytes) -> str:
    """``quickfix``, ``raw``, ``text-soh``, ``text-pipe`` or ``text-caret`` (see the module doc);
    ``unknown`` when no line holds a FIX message."""
    head = data[:1 << 16]
    if b"8=FIX" not in head:
        return "unknown"
    first = next((ln for ln in head.splitlines() if ln.strip() and not ln.lstrip().startswith(b"#")), b"")
    if SOH in head:
        if _QF_PREFIX.match(first) and b"8=FIX" in first:
            return "quickfix"
        if data.startswith(b"8=FIX") and _LINE_END_CHECKSUM.search(head) is None:
            return "raw"
        return "text-soh"
    if b"8=FIX" not in head:
        return "unknown"
    line = next((ln for ln in head.splitlines() if b"8=FIX" in ln), b"")
    if b"^A" in line:
        return "text-caret"
    if b"|" in line:
        return "text-pipe"
    return "unknown"


def read_capture(path: str | Path) -> list[CapturedMessage]:
    """Every message of one capture file, in file order (see the module doc for the formats); []
    for an empty file."""
    p = Path(path)
    name = str(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CaptureError(name, None, f"cannot read the capture: {exc.strerror or exc}") from None
    if not data.strip():
        return []  # an empty log (QuickFIX's GLOBAL.messages.current.log): nothing to replay
    fmt = detect_format(data)
    if fmt == "quickfix":
        return _read_quickfix(data, name)
    if fmt == "raw":
        return _read_raw(data, name)
    if fmt.startswith("text-"):
        return _read_text(data, name, {"text-soh": SOH, "text-pipe": b"|", "text-caret": b"^A"}[fmt])
    lineno = _first_bad_line(data)
    raise CaptureError(name, lineno, "not a FIX capture: no FIX message (8=FIX...) in a QuickFIX log, "
                       "raw SOH stream or |/^A text log format")


def _first_bad_line(data: bytes) -> int:
    for i, ln in enumerate(data.splitlines(), 1):
        if ln.strip() and not ln.lstrip().startswith(b"#") and b"8=FIX" not in ln:
            return i
    return 1


def _frame_one(raw: bytes) -> tuple[bytes, str | None]:
    """(bytes, None) when `raw` is exactly one valid message, else (raw, frame error reason)."""
    items = Decoder(_CAPTURE_LIMITS).feed(raw)
    if len(items) == 1 and isinstance(items[0], Message) and len(items[0].raw) == len(raw):
        return raw, None
    err = next((i for i in items if isinstance(i, FrameError)), None)
    return raw, err.reason.value if err is not None else "garbled"


def _read_quickfix(data: bytes, name: str) -> list[CapturedMessage]:
    out: list[CapturedMessage] = []
    starts = list(_QF_PREFIX.finditer(data))
    if not starts or data[:starts[0].start()].strip():
        raise CaptureError(name, 1, "not a QuickFIX message log line (YYYYMMDD-HH:MM:SS.fff : 8=FIX...)")
    line_of = _line_counter(data)
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(data)
        raw = data[m.end():end].rstrip(b"\r\n")
        lineno = line_of(m.start())
        if not raw.startswith(b"8=FIX"):
            raise CaptureError(name, lineno, "QuickFIX log entry without a FIX message (8=FIX...)")
        raw, err = _frame_one(raw)
        out.append(_captured(raw, _parse_prefix_time(m.group(1)), f"{name}:{lineno}", err))
    return out


def _line_counter(data: bytes) -> Callable[[int], int]:
    state = [0, 1]  # offset counted up to, line number there

    def line_at(offset: int) -> int:
        state[1] += data.count(b"\n", state[0], offset)
        state[0] = offset
        return state[1]

    return line_at


def _read_raw(data: bytes, name: str) -> list[CapturedMessage]:
    out: list[CapturedMessage] = []
    decoder = Decoder(_CAPTURE_LIMITS)
    offset = 0
    for item in decoder.feed(data):
        raw = item.raw if isinstance(item, Message) else item.skipped
        err = None if isinstance(item, Message) else item.reason.value
        if raw.strip(b"\r\n \t"):
            out.append(_captured(raw, None, f"{name}@{offset}", err))
        offset += len(raw)
    if decoder.buffered:
        out.append(_captured(data[offset:], None, f"{name}@{offset}", "garbled"))
    return out


def _convert(text: bytes, sep: bytes) -> bytes:
    if sep == b"|":
        return _PIPE_SEPARATOR.sub(b"\x01", text.rstrip())
    return text.rstrip().replace(sep, SOH)


def _read_text(data: bytes, name: str, sep: bytes) -> list[CapturedMessage]:
    out: list[CapturedMessage] = []
    for lineno, line in enumerate(data.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(b"#"):
            continue
        i = line.find(b"8=FIX")
        if i < 0:
            raise CaptureError(name, lineno, "line without a FIX message (8=FIX...)")
        t = _parse_prefix_time(line[:i])
        text = line[i:].rstrip()
        raw = text if sep == SOH else _convert(text, sep)
        if not raw.endswith(SOH):
            raw += SOH  # some tools drop the separator after 10=NNN
        raw, err = _frame_one(raw)
        repaired = False
        if err is not None and sep != SOH:
            fixed = _repair(text, raw, sep)
            if fixed is not None:
                raw, err, repaired = fixed, None, True
        out.append(_captured(raw, t, f"{name}:{lineno}", err, repaired))
    if not out:
        raise CaptureError(name, 1, "no FIX message in the file")
    return out


def _repair(text: bytes, raw: bytes, sep: bytes) -> bytes | None:
    """Recompute 9/10 of a converted message when they were computed over the text form: each must
    be right in the text form or in the converted one, and at least one only in the text form."""
    def envelope(b: bytes, s: bytes) -> tuple[int, int, int, int] | None:
        """(declared body length, actual body length, declared checksum, actual checksum)."""
        m = re.match(rb"8=[^" + re.escape(s[:1]) + rb"]*" + re.escape(s) + rb"9=(\d{1,9})" + re.escape(s), b)
        t = b.rfind(s + b"10=")
        if m is None or t < m.end():
            return None
        cs = b[t + len(s) + 3:].rstrip(s).rstrip()
        if not cs.isdigit() or len(cs) != 3:
            return None
        return int(m.group(1)), t + len(s) - m.end(), int(cs), checksum(b, 0, t + len(s))

    if not text.endswith(sep):
        text += sep
    in_text, in_raw = envelope(text, sep), envelope(raw, SOH)
    if in_text is None or in_raw is None:
        return None
    len_text, len_raw = in_text[0] == in_text[1], in_raw[0] == in_raw[1]
    cs_text, cs_raw = in_text[2] == in_text[3], in_raw[2] == in_raw[3]
    if not ((len_text or len_raw) and (cs_text or cs_raw)) or (len_raw and cs_raw):
        return None
    if not ((len_text and not len_raw) or (cs_text and not cs_raw)):
        return None
    # Rebuild the envelope around the converted body.
    m = re.match(rb"(8=[^\x01]*)\x019=\d+\x01", raw)
    t = raw.rfind(b"\x0110=")
    if m is None or t < m.end():
        return None
    body = raw[m.end():t + 1]
    out = m.group(1) + b"\x019=" + str(len(body)).encode() + SOH + body
    fixed = out + b"10=%03d\x01" % checksum(out)
    return fixed if _frame_one(fixed)[1] is None else None


def read_captures(paths: Iterable[str | Path]) -> list[CapturedMessage]:
    """Several files, concatenated in the order given; at least one message in all."""
    out: list[CapturedMessage] = []
    names = []
    for p in paths:
        names.append(str(p))
        out.extend(read_capture(p))
    if not out:
        raise CaptureError(", ".join(names), None, "no FIX message in the capture (empty files)")
    return out


# ================================================================================================
# Sessions
# ================================================================================================


@dataclass
class CapturedSession:
    """One FIX session of a capture. `sender`/`target` are the initiator's 49/56."""

    sender: str
    target: str
    messages: list[CapturedMessage]  # both directions, capture order
    how: str = ""  # how the initiator side was chosen

    @property
    def name(self) -> str:
        return f"{self.sender}->{self.target}"

    def is_initiator(self, m: CapturedMessage) -> bool:
        return m.sender == self.sender and m.target == self.target

    @property
    def initiator_messages(self) -> list[CapturedMessage]:
        return [m for m in self.messages if self.is_initiator(m)]

    @property
    def acceptor_messages(self) -> list[CapturedMessage]:
        return [m for m in self.messages if not self.is_initiator(m)]


def parse_session(text: str) -> tuple[str, str]:
    """``SENDER->TARGET`` as (sender, target)."""
    sender, sep, target = text.partition("->")
    if not sep or not sender or not target or "->" in target:
        raise ValueError(f"not SENDER->TARGET: {text!r}")
    return sender, target


def split_sessions(messages: Iterable[CapturedMessage], session: str | tuple[str, str] | None = None
                   ) -> list[CapturedSession]:
    """Group by CompID pair and choose each pair's initiator side (see the module doc). With
    `session` (``SENDER->TARGET``), only that session, with that side as the initiator."""
    groups: dict[tuple[str, str], list[CapturedMessage]] = {}
    orphans: list[CapturedMessage] = []
    last: tuple[str, str] | None = None
    for m in messages:
        if m.sender is None or m.target is None:
            if last is None:
                orphans.append(m)  # garbage before any message: goes with the first session
            else:
                groups[last].append(m)
            continue
        key = (min(m.sender, m.target), max(m.sender, m.target))
        if key not in groups:
            groups[key] = []
            if last is None and orphans:
                groups[key].extend(orphans)
                orphans = []
        groups[key].append(m)
        last = key
    wanted = parse_session(session) if isinstance(session, str) else session
    out = []
    for key, msgs in groups.items():
        if wanted is not None:
            if key != (min(wanted), max(wanted)):
                continue
            out.append(CapturedSession(wanted[0], wanted[1], msgs, "--session"))
            continue
        for how, pick in (("first Logon", lambda m: m.msg_type == "A"),
                          ("first order message", lambda m: m.msg_type in ORDER_ENTRY),
                          ("first message", lambda m: m.sender is not None)):
            first = next((m for m in msgs if pick(m)), None)
            if first is not None:
                out.append(CapturedSession(first.sender, first.target, msgs, how))  # type: ignore[arg-type]
                break
    if wanted is not None and not out:
        have = ", ".join(f"{a}<->{b}" for a, b in groups) or "none"
        raise ReplayError(f"no session {wanted[0]}->{wanted[1]} in the capture (sessions: {have})", usage=True)
    return out


# ================================================================================================
# Offline: what the proxy would have refused
# ================================================================================================


@dataclass
class Finding:
    """One security decision of the offline replay."""

    session: str
    direction: str  # inbound (from the initiator) / outbound (from the acceptor)
    outcome: str  # dropped / refused / disconnected / connection_refused / shadowed
    reason: str
    msg_type: str | None
    seq: int | None
    text: str
    where: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class OfflineSession:
    name: str  # the policy's name, else SENDER->TARGET
    initiator: str
    how: str
    policy: str | None
    from_initiator: int = 0
    from_acceptor: int = 0
    connections: int = 0
    not_inspected: int = 0  # after a disconnect, before the next Logon
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class OfflineReport:
    files: list[str]
    messages: int
    sessions: list[OfflineSession]
    findings: list[Finding]
    notes: list[str]

    @property
    def blocked(self) -> int:
        """Messages and connections the proxy would have stopped (shadowed ones pass)."""
        return sum(1 for f in self.findings if f.outcome != Outcome.SHADOWED.value)

    def counts(self) -> list[tuple[str, str, str, int]]:
        """(reason, direction, outcome, count), most frequent first."""
        c = Counter((f.reason, f.direction, f.outcome) for f in self.findings)
        return [(r, d, o, n) for (r, d, o), n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(f.reason for f in self.findings))

    def examples(self, per_reason: int = 3) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = defaultdict(list)
        for f in self.findings:
            if len(out[f.reason]) < per_reason:
                out[f.reason].append(f)
        return dict(out)

    def as_dict(self, examples: int = 3) -> dict[str, Any]:
        return {
            "mode": "offline",
            "files": self.files,
            "messages": self.messages,
            "blocked": self.blocked,
            "by_reason": self.by_reason(),
            "counts": [{"reason": r, "direction": d, "outcome": o, "count": n} for r, d, o, n in self.counts()],
            "examples": {r: [f.as_dict() for f in fs] for r, fs in self.examples(examples).items()},
            "sessions": [dataclasses.asdict(s) for s in self.sessions],
            "notes": self.notes,
        }

    def text(self, examples: int = 3) -> str:
        lines = [f"offline replay: {self.messages} messages, {len(self.sessions)} session"
                 f"{'s' if len(self.sessions) != 1 else ''} ({', '.join(self.files)})"]
        lines += [f"note: {n}" for n in self.notes]
        for s in self.sessions:
            st = s.stats
            lines.append(
                f"session {s.name} ({s.initiator}, initiator by {s.how}; policy {s.policy or 'none'}): "
                f"{s.from_initiator} from the initiator, {s.from_acceptor} from the acceptor, "
                f"{s.connections} connection{'s' if s.connections != 1 else ''}")
            for d in ("inbound", "outbound"):
                if d in st:
                    lines.append(f"  {d:8} " + ", ".join(f"{k} {v}" for k, v in st[d].items()))
            if s.not_inspected:
                lines.append(f"  {s.not_inspected} messages not inspected (the proxy had closed the connection)")
            lines += [f"  note: {n}" for n in s.notes]
        if not self.findings:
            lines.append("would have blocked: nothing (0 refusals)")
            return "\n".join(lines)
        shadowed = len(self.findings) - self.blocked
        lines.append(f"would have blocked {self.blocked}" + (f" (and flagged {shadowed} in shadow mode)"
                                                             if shadowed else "") + ":")
        for r, d, o, n in self.counts():
            lines.append(f"  {n:6}  {r:28} {d:8} {o}")
        lines.append("examples:")
        for reason, fs in self.examples(examples).items():
            for f in fs:
                seq = f"34={f.seq}" if f.seq is not None else "34=?"
                lines.append(f"  {reason}: {f.session} {f.direction} 35={f.msg_type or '?'} {seq}: {f.text} "
                             f"({f.where})")
        return "\n".join(lines)


class _Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _proxy_validator(config: ProxyConfig) -> Callable[[Any], Any]:
    """The validator factory the proxy uses (`FixProxy._validator`), without starting a proxy."""
    from .proxy import FixProxy

    shim = types.SimpleNamespace(config=config, _validators={})
    return lambda policy: FixProxy._validator(shim, policy)  # type: ignore[arg-type]


def replay_offline(messages: Sequence[CapturedMessage], config: ProxyConfig, *, session: str | None = None,
                   files: Sequence[str] = (), progress: ProgressFn | None = None) -> OfflineReport:
    """Run a capture through the proxy's validation and policy; report what would be refused."""
    from .access import Authoriser, Peer
    from .leakguard import LeakGuard
    from .session import SessionInspector

    clock = _Clock()
    # Offline the certificate and the source address are unknown: treat the peer as bound and
    # the source as allowed (no binding check: require_identity off and a non-TLS peer).
    policies = [dataclasses.replace(p, allowed_sources=()) for p in config.sessions]
    authoriser = Authoriser(policies, config.bindings, require_identity=False)
    peer = Peer(source="capture", tls=False)
    guard = LeakGuard(clock=clock)
    validator = _proxy_validator(config)

    def authorise(msg: Any) -> Any:
        return authoriser.authorise(msg, peer)

    notes = ["identity binding (client certificate <-> CompIDs) and source addresses cannot be checked "
             "offline: the peer is treated as bound and its source as allowed"]
    if not config.sessions:
        notes.append("the configuration has no [[sessions]]: every Logon is refused")
    findings: list[Finding] = []
    reports: list[OfflineSession] = []
    sessions = split_sessions(messages, session)
    total = sum(len(s.messages) for s in sessions)
    done = 0
    started = last_progress = time.monotonic()
    for sess in sessions:
        policy = authoriser.policies.get((sess.sender, sess.target))
        rep = OfflineSession(name=policy.name if policy else sess.name, initiator=sess.name, how=sess.how,
                             policy=policy.name if policy else None)
        reports.append(rep)
        stats = {d: Counter() for d in ("inbound", "outbound")}
        has_acceptor = any(not sess.is_initiator(m) for m in sess.messages)
        insp: SessionInspector | None = None
        last_time: float | None = None

        def retire(i: SessionInspector | None, stats: dict[str, Counter[str]] = stats) -> None:
            if i is None:
                return
            for d, st in i.stats.items():
                stats[d.value].update(st.as_dict())
            if i.state is not None:  # what FixProxy.forget does when a connection ends
                i.state.connections = max(0, i.state.connections - 1)

        def feed(i: SessionInspector, m: CapturedMessage, raw: bytes, inbound: bool, rep: OfflineSession = rep) -> None:
            res = i.from_initiator(raw) if inbound else i.from_acceptor(raw)
            for ev in res.events:
                if ev.outcome not in _BLOCKING and ev.outcome is not Outcome.SHADOWED:
                    continue
                mt = ev.msg_type.decode("latin-1") if ev.msg_type else m.msg_type
                seq = ev.msg_seq_num if ev.msg_seq_num is not None else m.seq
                d = ev.direction.value if ev.direction else ("inbound" if inbound else "outbound")
                findings.append(Finding(rep.name, d, ev.outcome.value, ev.reason.value if ev.reason else "",
                                        mt, seq, ev.detail, m.where))

        def answer_logon(i: SessionInspector, logon: CapturedMessage, rep: OfflineSession = rep,
                         has_acceptor: bool = has_acceptor) -> None:
            """No acceptor side in the capture: answer the Logon as the ATS would have."""
            if has_acceptor or i.state is None or i.closed is not None:
                return
            answer = _synthetic_logon_answer(logon, i.state.next_seq[Direction.OUTBOUND])
            feed(i, logon, answer, False)
            if not any("synthetic acceptor Logon" in n for n in rep.notes):
                rep.notes.append("the capture has no acceptor messages: a synthetic acceptor Logon answered "
                                 "each Logon")

        for m in sess.messages:
            done += 1
            if progress is not None and done % 1000 == 0 and time.monotonic() - last_progress >= 1.0:
                last_progress = time.monotonic()
                progress(done, total, done / max(1e-9, last_progress - started))
            t = m.when
            if t is None:
                t = last_time if last_time is not None else time.time()
            last_time = clock.now = t
            inbound = sess.is_initiator(m)
            if inbound:
                rep.from_initiator += 1
            else:
                rep.from_acceptor += 1
            if inbound and m.msg_type == "A" and m.frame_error is None and insp is not None:
                retire(insp)  # a new Logon: a new connection
                insp = None
            if insp is None:
                if not inbound:
                    rep.not_inspected += 1
                    continue
                insp = SessionInspector(authorise, source=peer.source, limits=config.limits, validator=validator,
                                        clock=clock, leak_guard=guard)
                rep.connections += 1
                if m.msg_type != "A" or m.frame_error is not None:
                    logon = _captured(_synthetic_logon(m, sess), m.when, m.where)
                    rep.notes.append(f"no Logon before {m.where}: a synthetic Logon (34={logon.seq}) was "
                                     "inspected first")
                    feed(insp, m, logon.raw, True)
                    answer_logon(insp, logon)
            if insp.closed is not None:
                rep.not_inspected += 1
                continue
            feed(insp, m, m.raw, inbound)
            if inbound and m.msg_type == "A":
                answer_logon(insp, m)
        retire(insp)
        rep.stats = {d: {k: st.get(k, 0) for k in ("received", "forwarded", "refused", "dropped", "shadowed")}
                     for d, st in stats.items() if st.get("received", 0) or d == "inbound"}
    return OfflineReport(list(files), len(messages), reports, findings, notes)


def _synthetic_logon(first: CapturedMessage, sess: CapturedSession) -> bytes:
    begin = _begin_string(first.raw) or b"FIX.4.4"
    seq = max((first.seq or 1) - 1, 0)
    stamp = datetime.fromtimestamp(first.when or time.time(), UTC).strftime("%Y%m%d-%H:%M:%S.%f")[:-3]
    return encode(begin, [(35, "A"), (49, sess.sender), (56, sess.target), (34, seq), (52, stamp),
                          (98, "0"), (108, "30")])


def _synthetic_logon_answer(logon: CapturedMessage, seq: int) -> bytes:
    begin = _begin_string(logon.raw) or b"FIX.4.4"
    fields: list[tuple[Any, Any]] = [(35, "A"), (49, logon.target or ""), (56, logon.sender or ""), (34, seq),
                                     (52, logon.get(b"52") or b"20000101-00:00:00"), (98, "0"),
                                     (108, logon.get(b"108") or b"30")]
    if logon.get(b"141") == b"Y":
        fields.append((141, "Y"))
    return encode(begin, fields)


def _begin_string(raw: bytes) -> bytes | None:
    if not raw.startswith(b"8="):
        return None
    end = raw.find(SOH)
    return raw[2:end] if end > 2 else None


# ================================================================================================
# Live
# ================================================================================================


@dataclass
class Refused:
    msg_type: str  # of the answer: 3, j, 8, 9
    session_reject_reason: int | None
    text: str
    count: int = 0

    @property
    def key(self) -> str:
        srr = f" 373={self.session_reject_reason}" if self.session_reject_reason is not None else ""
        return f"35={self.msg_type}{srr}: {self.text}"


@dataclass
class LiveReport:
    session: str
    target: str
    tls: bool
    files: list[str]
    total: int = 0  # application messages to replay
    sent: int = 0
    answered: int = 0
    unanswered: int = 0
    refused: int = 0
    dropped: int = 0  # garbled frames the ATS asked for again (gap-filled)
    garbled_sent: int = 0
    skipped_duplicates: int = 0  # captured PossDup copies of messages already replayed
    renumbered: int = 0
    gap_filled: int = 0  # numbers gap-filled (captured gaps and resend answers)
    resend_requests: int = 0  # ResendRequests answered
    resent: int = 0  # PossDup copies sent in answer to ResendRequests
    heartbeats: int = 0
    refusals: list[Refused] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)  # MsgType -> count (everything received)
    exec_status: dict[str, int] = field(default_factory=dict)  # OrdStatus of ExecutionReports
    fills: int = 0
    latency: dict[str, float] = field(default_factory=dict)  # seconds: p50 p90 p99 max, and count
    versus_capture: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0  # Logon to Logout
    send_seconds: float = 0.0  # first to last application message
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.sent - self.refused - self.dropped

    def refused_by(self) -> dict[str, int]:
        return {r.key: r.count for r in self.refusals}

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mode"] = "live"
        d["accepted"] = self.accepted
        d["refused_by"] = self.refused_by()
        return d

    def text(self) -> str:
        rate = self.sent / self.send_seconds if self.send_seconds > 0 else 0.0
        lines = [
            f"live replay of {self.session} to {self.target} ({'TLS' if self.tls else 'plaintext'}) from "
            f"{', '.join(self.files) or 'the capture'}: {self.total} application messages",
            f"sent {self.sent}/{self.total} in {self.send_seconds:.2f} s ({rate:.0f} msg/s; {self.duration:.2f} s "
            f"from Logon to Logout); renumbered {self.renumbered}, gap-filled {self.gap_filled}, "
            f"ResendRequests {self.resend_requests} (resent {self.resent}), heartbeats {self.heartbeats}"
            + (f", skipped {self.skipped_duplicates} captured PossDup copies" if self.skipped_duplicates else ""),
            f"accepted {self.accepted} (answered {self.answered}, no answer {self.unanswered}); refused "
            f"{self.refused}; dropped {self.dropped}" + (f" (garbled frames sent: {self.garbled_sent})"
                                                         if self.garbled_sent else ""),
        ]
        if self.refusals:
            lines.append("refused by reason:")
            lines += [f"  {r.count:6}  {r.key}" for r in sorted(self.refusals, key=lambda r: -r.count)]
        names = {"8": "ExecutionReport", "9": "OrderCancelReject", "3": "Reject", "j": "BusinessMessageReject"}
        lines.append("answers: " + (", ".join(f"{names.get(k, '35=' + k)} {v}" for k, v in sorted(
            self.answers.items())) or "none") + f"; fills {self.fills}")
        if self.exec_status:
            lines.append("ExecutionReports by OrdStatus: " + ", ".join(
                f"{_ORD_STATUS.get(k, k)} {v}" for k, v in sorted(self.exec_status.items())))
        if self.latency:
            lat = self.latency
            lines.append(f"latency send -> first answer ({int(lat['count'])} ClOrdIDs): " + "  ".join(
                f"{k} {lat[k] * 1000:.2f} ms" for k in ("p50", "p90", "p99", "max")))
        else:
            lines.append("latency: no ClOrdID answered")
        vc = self.versus_capture
        if vc.get("compared"):
            lines.append(f"versus the capture: {vc['same']} same outcome, {vc['different']} different "
                         f"(of {vc['compared']} ClOrdIDs answered in the capture)")
            for ex in vc.get("examples", []):
                lines.append(f"  {ex['cl_ord_id']}: captured {ex['captured']}, now {ex['now']}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


_ORD_STATUS = {"0": "New", "1": "PartiallyFilled", "2": "Filled", "4": "Canceled", "5": "Replaced",
               "6": "PendingCancel", "8": "Rejected", "A": "PendingNew", "C": "Expired", "E": "PendingReplace"}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99 and the max; {} for no values."""
    if not values:
        return {}
    s = sorted(values)
    n = len(s)

    def rank(p: float) -> float:
        return s[max(0, min(n - 1, math.ceil(p * n / 100) - 1))]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": s[-1], "count": float(n)}


def _utc_ms() -> bytes:
    return _now_like(b"00000000-00:00:00.000", time.time())


def _now_like(old: bytes, now: float) -> bytes:
    """Now, as a UTCTimestamp with as many fraction digits as `old`."""
    dot = old.find(b".")
    digits = len(old) - dot - 1 if dot >= 0 else 0
    base = time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(now)).encode()
    if digits <= 0:
        return base
    frac = f"{now - int(now):.9f}"[2:2 + digits]
    return base + b"." + frac.encode()


@dataclass
class _Sent:
    seq: int
    data: bytes
    cl_ord_id: bytes | None
    captured: CapturedMessage
    at: float  # time.monotonic() when written
    outcome: str | None = None  # refused / answered (by its first answer)


class _LiveReplay:
    def __init__(self, sess: CapturedSession, host: str, port: int, ssl_context: ssl.SSLContext | None, *,
                 server_hostname: str | None, speed: float | None, renumber: bool, refresh_sending_time: bool,
                 wait: float, logon_timeout: float, connect_timeout: float, progress: ProgressFn | None,
                 report: LiveReport) -> None:
        self.sess = sess
        self.host, self.port = host, port
        self.ctx = ssl_context
        self.server_hostname = server_hostname
        self.speed = speed
        self.renumber = renumber
        self.refresh = refresh_sending_time
        self.wait = wait
        self.logon_timeout = logon_timeout
        self.connect_timeout = connect_timeout
        self.progress = progress
        self.report = report
        init = sess.initiator_messages
        self.begin = next((b for b in (_begin_string(m.raw) for m in init) if b), b"FIX.4.4")
        self.logon = next((m for m in init if m.msg_type == "A" and m.frame_error is None), None)
        hb = self.logon.get(b"108") if self.logon else None
        self.heartbeat = int(hb) if hb and hb.isdigit() and int(hb) > 0 else 30
        self.plan = self._plan(init)
        report.total = len(self.plan)
        self.next_out = 1
        self.sent: dict[int, _Sent] = {}  # our MsgSeqNum -> what was sent (application messages)
        self.by_cl: dict[bytes, list[_Sent]] = {}  # ClOrdID -> the messages sent with it, in order
        self.garbled: set[int] = set()
        self.refusals: dict[tuple[str, int | None, str], Refused] = {}
        self.answers: Counter[str] = Counter()
        self.exec_status: Counter[str] = Counter()
        self.first_reply: dict[bytes, float] = {}  # ClOrdID -> latency
        self.final: dict[bytes, str] = {}  # ClOrdID -> outcome class now
        self.writer: asyncio.StreamWriter | None = None
        self.last_sent = 0.0  # anything, for Heartbeats
        self.last_activity = 0.0  # application messages either way, for the end of the replay
        self.logged_on = asyncio.Event()
        self.closed = asyncio.Event()
        self.logout_text: str | None = None
        self.logout_seen = asyncio.Event()
        self.pending: set[int] = set()

    # ---- what to send ----------------------------------------------------------------------
    def _plan(self, init: list[CapturedMessage]) -> list[CapturedMessage]:
        plan = []
        seen: set[int] = set()
        for m in init:
            if m.frame_error is None and m.msg_type in SESSION_TYPES:
                if m.msg_type == "A" and m.get(b"141") == b"Y":
                    seen.clear()
                continue
            if m.frame_error is None and m.possdup and m.seq is not None and m.seq in seen:
                self.report.skipped_duplicates += 1
                continue
            if m.seq is not None and m.frame_error is None:
                seen.add(m.seq)
            plan.append(m)
        return plan

    # ---- I/O ---------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        writer = self.writer
        if writer is None or writer.is_closing():
            return
        writer.write(data)
        self.last_sent = time.monotonic()

    def build(self, msg_type: str, fields: Iterable[tuple[Any, Any]], *, seq: int | None = None) -> bytes:
        if seq is None:
            seq = self.next_out
            self.next_out += 1
        head = [(35, msg_type), (49, self.sess.sender), (56, self.sess.target), (34, seq),
                (52, _utc_ms())]
        return encode(self.begin, [*head, *fields])

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(asyncio.open_connection(
                self.host, self.port, ssl=self.ctx,
                server_hostname=(self.server_hostname or self.host) if self.ctx is not None else None),
                self.connect_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise ReplayError(f"cannot connect to {self.host}:{self.port}: {_short(exc)}") from None

    async def run(self) -> LiveReport:
        rep = self.report
        started = time.monotonic()
        # The Logon: captured numbers first; "too low, expecting N" -> N; a silent close -> reset.
        first_seq = self.logon.seq if self.logon and self.logon.seq else max(
            1, min((m.seq for m in self.plan if m.seq), default=2) - 1)
        reset = bool(self.logon and self.logon.get(b"141") == b"Y")
        attempts = [(1 if reset else first_seq, reset)]
        reader_task = None
        while True:
            seq, reset = attempts[-1]
            reader, writer = await self.connect()
            self.writer = writer
            self.logged_on.clear()
            self.closed.clear()
            self.logout_seen.clear()
            self.logout_text = None
            reader_task = asyncio.get_running_loop().create_task(self.read_loop(reader))
            self.next_out = seq
            self.write(self.build("A", self.logon_fields(reset)))
            waiters = [asyncio.ensure_future(e.wait()) for e in (self.logged_on, self.closed, self.logout_seen)]
            await asyncio.wait(waiters, timeout=self.logon_timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if self.logged_on.is_set():
                break
            await self.close_connection(reader_task)
            text = self.logout_text
            expecting = re.search(r"expecting (\d+)", text or "")
            if expecting and len(attempts) < 3 and int(expecting.group(1)) > seq:
                attempts.append((int(expecting.group(1)), False))
                rep.notes.append(f"Logon at 34={seq} refused ({text}): logged on again at 34={attempts[-1][0]}")
                continue
            if text is None and self.closed.is_set() and not reset and len(attempts) < 3:
                attempts.append((1, True))
                rep.notes.append(f"connection closed at Logon (34={seq}) without a Logout: logged on again with "
                                 "ResetSeqNumFlag (141=Y), numbering from 1")
                continue
            if self.closed.is_set():
                why = f"Logout: {text}" if text else "the connection was closed without a Logout (certificate " \
                      "not bound to the CompIDs, unknown session, source not allowed?)"
            else:
                why = f"no Logon answer within {self.logon_timeout:.0f} s"
            raise ReplayError(f"Logon {self.sess.name} refused: {why}")
        hb_task = asyncio.get_running_loop().create_task(self.heartbeat_loop())
        try:
            await self.send_all(started)
            await self.await_answers()
            if not self.closed.is_set():
                self.write(self.build("5", [(58, "replay finished")]))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.logout_seen.wait(), 2.0)
        finally:
            hb_task.cancel()
            await self.close_connection(reader_task)
        rep.duration = time.monotonic() - started
        self.finish()
        return rep

    async def close_connection(self, reader_task: asyncio.Task[None] | None) -> None:
        writer = self.writer
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)
        if reader_task is not None:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader_task

    def logon_fields(self, reset: bool) -> list[tuple[Any, Any]]:
        skip = {b"8", b"9", b"10", b"35", b"49", b"56", b"34", b"52", b"43", b"122", b"789", b"369", b"141"}
        fields: list[tuple[Any, Any]] = []
        if self.logon is not None:
            msg = Decoder(_CAPTURE_LIMITS).feed(self.logon.raw)[0]
            assert isinstance(msg, Message)
            msg.check_syntax(_CAPTURE_LIMITS)
            fields = [(t, v) for t, v in msg.fields if t not in skip]
        else:
            fields = [(98, "0"), (108, str(self.heartbeat))]
        if reset:
            fields.append((141, "Y"))
        return fields

    # ---- sending --------------------------------------------------------------------------------
    async def send_all(self, started: float) -> None:
        rep = self.report
        base = next((m.when for m in self.plan if m.when is not None), None)
        t0 = time.monotonic()
        if self.speed is not None and base is None:
            rep.notes.append("the capture has no timestamps: sent as fast as possible")
        stale = next((m.sending_time for m in self.plan if m.sending_time), None)
        if not self.refresh and stale is not None and time.time() - stale > 120:
            rep.notes.append(f"the captured SendingTime (52) is {time.time() - stale:.0f} s old: the proxy and the "
                             "ATS may refuse it as stale (--refresh-sending-time)")
        try:
            await self._send_plan(t0, base)
        finally:
            rep.send_seconds = time.monotonic() - t0

    async def _send_plan(self, t0: float, base: float | None) -> None:
        rep = self.report
        last_progress = t0
        for i, m in enumerate(self.plan):
            if self.closed.is_set():
                rep.notes.append(f"the connection was closed after {rep.sent} of {rep.total} messages"
                                 + (f" (Logout: {self.logout_text})" if self.logout_text else ""))
                break
            if self.speed is not None and base is not None and m.when is not None:
                delay = t0 + (m.when - base) / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.send_captured(m)
            if i % 64 == 63:
                await self.drain()
            await asyncio.sleep(0)  # let the reader run: answers are timed when they are read
            now = time.monotonic()
            if self.progress is not None and now - last_progress >= 1.0:
                last_progress = now
                self.progress(rep.sent, rep.total, rep.sent / max(1e-9, now - t0))
        await self.drain()

    async def drain(self) -> None:
        if self.writer is not None:
            try:
                await self.writer.drain()
            except (ConnectionError, OSError):
                self.closed.set()

    def send_captured(self, m: CapturedMessage) -> None:
        rep = self.report
        changes: dict[bytes, bytes] = {}
        now = time.time()
        if self.refresh:
            for tag in (b"52", b"60"):
                old = m.get(tag)
                if old:
                    changes[tag] = _now_like(old, now)
        if m.frame_error is not None:
            seq = m.seq
            data = m.raw
            if seq is not None and (seq != self.next_out or changes) and m.frame_error == "bad_checksum":
                n = self.next_out if (self.renumber or seq < self.next_out) else seq
                rewritten = _rewrite_bad_checksum(m.raw, {**changes, b"34": b"%d" % n})
                if rewritten is not None:
                    self.gap_fill_to(n)
                    data, seq = rewritten, n
                    rep.renumbered += n != m.seq
            if seq is not None and seq == self.next_out:
                self.next_out += 1
                self.garbled.add(seq)
            rep.garbled_sent += 1
            self.write(data)
            self.last_activity = time.monotonic()
            rep.sent += 1
            return
        captured_seq = m.seq
        if self.renumber or captured_seq is None or captured_seq < self.next_out:
            n = self.next_out
        else:
            n = captured_seq
            self.gap_fill_to(n)
        self.next_out = n + 1
        if n != captured_seq:
            changes[b"34"] = b"%d" % n
            rep.renumbered += 1
        msg = _decode(m.raw)
        data = m.raw
        if changes:
            try:
                data = replace_fields(msg, changes)
            except (KeyError, ValueError):  # fields a careful split cannot pair: send it as captured
                rep.notes.append(f"{m.where}: could not rewrite {sorted(t.decode() for t in changes)}; sent as "
                                 "captured")
        cl = _field(data, b"11")
        entry = _Sent(n, data, cl, m, time.monotonic())
        self.sent[n] = entry
        self.pending.add(n)
        if cl is not None:
            self.by_cl.setdefault(cl, []).append(entry)
        self.write(data)
        self.last_activity = time.monotonic()
        rep.sent += 1

    def gap_fill_to(self, n: int) -> None:
        """A captured gap (session messages not replayed): SequenceReset-GapFill up to `n`."""
        if n > self.next_out:
            self.write(self.build("4", [(123, "Y"), (36, n)], seq=self.next_out))
            self.report.gap_filled += n - self.next_out
            self.next_out = n

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.heartbeat / 2))
            if time.monotonic() - self.last_sent >= self.heartbeat and not self.closed.is_set():
                self.write(self.build("0", []))
                self.report.heartbeats += 1

    async def await_answers(self) -> None:
        """Until every message is answered and the line has been quiet a moment, or `wait` s."""
        deadline = time.monotonic() + self.wait
        quiet = min(1.0, self.wait)
        while not self.closed.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if not self.pending and now - self.last_activity >= quiet:
                break
            await asyncio.sleep(0.05)

    # ---- receiving --------------------------------------------------------------------------
    async def read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = Decoder(_CAPTURE_LIMITS)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                now = time.monotonic()
                for item in decoder.feed(data):
                    if isinstance(item, Message):
                        try:
                            self.on_message(item, now)
                        except Exception as exc:  # a malformed answer must not end the replay
                            self.report.notes.append(f"could not interpret an answer ({_short(exc)})")
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.closed.set()

    def on_message(self, msg: Message, now: float) -> None:
        if msg.check_syntax(_CAPTURE_LIMITS) is not None:
            return
        mt = msg.msg_type.decode("latin-1")
        get = msg.get
        if mt == "A":
            self.logged_on.set()
            return
        if mt == "1":
            self.write(self.build("0", [(112, get(b"112") or b"TEST")]))
            self.report.heartbeats += 1
            return
        if mt == "2":
            b, e = get(b"7"), get(b"16")
            if b and e and b.isdigit() and e.isdigit():
                self.answer_resend(int(b), int(e))
            return
        if mt == "5":
            t = get(b"58")
            self.logout_text = t.decode("latin-1") if t else None
            self.logout_seen.set()
            return
        if mt in ("0", "4"):
            return
        self.last_activity = now
        self.answers[mt] += 1
        target: _Sent | None = None
        refused = False
        text = (get(b"58") or b"").decode("latin-1")
        if mt in ("3", "j"):
            ref = get(b"45")
            target = self.sent.get(int(ref)) if ref and ref.isdigit() else None
            if target is None and mt == "j":
                target = self.sent_with(get(b"379"), mt, None)
            refused = True
        elif mt in ("8", "9"):
            status = (get(b"39") or b"").decode("latin-1")
            exec_type = get(b"150")
            target = self.sent_with(get(b"11"), mt, exec_type)
            if mt == "8":
                self.exec_status[status] += 1
                if exec_type in (b"F", b"1", b"2"):  # Trade (4.4+), Partial fill / Fill (4.2)
                    self.report.fills += 1
                refused = status == "8" and exec_type != b"I"
            else:
                refused = True
            if target is not None and target.cl_ord_id is not None:
                self.final[target.cl_ord_id] = "refused" if refused else _status_class(mt, status)
        if target is None:
            if mt == "3" and len(self.report.notes) < 20:
                self.report.notes.append(f"Reject of a session message of the replayer (45={_s(get(b'45'))}): {text}")
            return
        if target.cl_ord_id is not None:
            self.first_reply.setdefault(target.cl_ord_id, now - target.at)
            if mt in ("3", "j"):
                self.final[target.cl_ord_id] = "refused"
        if target.outcome is None:
            target.outcome = "refused" if refused else "answered"
            self.pending.discard(target.seq)
            if refused:
                srr = get(b"373")
                key = (mt, int(srr) if srr and srr.isdigit() else None, text)
                r = self.refusals.get(key)
                if r is None:
                    r = self.refusals[key] = Refused(mt, key[1], text)
                r.count += 1

    def sent_with(self, cl: bytes | None, mt: str, exec_type: bytes | None) -> _Sent | None:
        """The message an answer naming ClOrdID `cl` is about: a status report answers an
        OrderStatusRequest, an OrderCancelReject a cancel/replace, other reports the order (or the
        cancel/replace that took that ClOrdID); the oldest one not answered yet, else the last."""
        entries = self.by_cl.get(cl) if cl else None
        if not entries:
            return None
        if mt == "8" and exec_type == b"I":
            preferred = [e for e in entries if e.captured.msg_type == "H"]
        elif mt == "9":
            preferred = [e for e in entries if e.captured.msg_type in ("F", "G")]
        else:
            preferred = [e for e in entries if e.captured.msg_type != "H"]
        for group in (preferred, entries):
            for e in group:
                if e.outcome is None:
                    return e
        return (preferred or entries)[-1]

    def answer_resend(self, begin: int, end: int) -> None:
        """Gap-fill what carried no application message; PossDup copies of what did."""
        last = self.next_out - 1
        if end == 0 or end > last:
            end = last
        n = begin
        now = _utc_ms()
        self.report.resend_requests += 1

        def carries(n: int) -> bool:  # an application message the receiver may still need
            e = self.sent.get(n)
            return e is not None and e.outcome != "refused"  # a refused one was gap-filled by the proxy

        while n <= end:
            entry = self.sent.get(n)
            if entry is not None and carries(n):
                self.write(_possdup_copy(entry.data, now))
                self.report.resent += 1
                n += 1
                continue
            start = n
            while n <= end and not carries(n):
                if n in self.garbled:
                    self.garbled.discard(n)
                    self.report.dropped += 1
                n += 1
            self.write(self.build("4", [(43, "Y"), (122, now), (123, "Y"), (36, n)], seq=start))
            self.report.gap_filled += n - start

    # ---- the report ---------------------------------------------------------------------------
    def finish(self) -> None:
        rep = self.report
        rep.refused = sum(1 for s in self.sent.values() if s.outcome == "refused")
        rep.answered = sum(1 for s in self.sent.values() if s.outcome == "answered")
        rep.unanswered = sum(1 for s in self.sent.values() if s.outcome is None)
        rep.unanswered += max(0, rep.garbled_sent - rep.dropped)
        rep.refusals = sorted(self.refusals.values(), key=lambda r: (-r.count, r.key))
        rep.answers = dict(self.answers)
        rep.exec_status = dict(self.exec_status)
        rep.latency = percentiles(list(self.first_reply.values()))
        rep.versus_capture = self.compare()

    def compare(self) -> dict[str, Any]:
        """Per ClOrdID: the outcome class in the capture (the acceptor's answers) versus now."""
        captured: dict[bytes, str] = {}
        by_seq: dict[int, bytes] = {}
        for m in self.sess.initiator_messages:
            cl = m.get(b"11")
            if cl is not None and m.seq is not None:
                by_seq[m.seq] = cl
        for m in self.sess.acceptor_messages:
            mt = m.msg_type
            if mt in ("8", "9"):
                cl = m.get(b"11")
                status = (m.get(b"39") or b"").decode("latin-1")
                if cl is not None:
                    refused = mt == "9" or (status == "8" and m.get(b"150") != b"I")
                    captured[cl] = "refused" if refused else _status_class(mt, status)
            elif mt in ("3", "j"):
                ref = m.get(b"45")
                cl = by_seq.get(int(ref)) if ref and ref.isdigit() else None
                if cl is not None:
                    captured[cl] = "refused"
        same = different = 0
        examples = []
        for cl, outcome in captured.items():
            if cl not in self.by_cl:
                continue
            now = self.final.get(cl, "no answer")
            if now == outcome:
                same += 1
            else:
                different += 1
                if len(examples) < 5:
                    examples.append({"cl_ord_id": cl.decode("latin-1"), "captured": outcome, "now": now})
        return {"compared": same + different, "same": same, "different": different, "examples": examples}


def _status_class(mt: str, status: str) -> str:
    if mt == "9":
        return "refused"
    return _ORD_STATUS.get(status, f"OrdStatus {status}")


def _decode(raw: bytes) -> Message:
    items = Decoder(_CAPTURE_LIMITS).feed(raw)
    msg = items[0] if items else None
    if not isinstance(msg, Message):
        raise ValueError("not a FIX message")
    msg.check_syntax(_CAPTURE_LIMITS)  # splits the fields (a message that fails is still sent as captured)
    return msg


def _possdup_copy(data: bytes, now: bytes) -> bytes:
    """A PossDup resend of a message we sent: 43=Y, 52 now, 122 its original SendingTime."""
    msg = _decode(data)
    fields = msg.fields
    orig = msg.get(b"52") or now
    rest = [(t, v) for t, v in fields if t not in (b"35", b"49", b"56", b"34", b"43", b"52", b"122", b"97")]
    head = [(b"35", msg.msg_type), (b"49", msg.get(b"49") or b""), (b"56", msg.get(b"56") or b""),
            (b"34", msg.get(b"34") or b"0"), (b"43", b"Y"), (b"52", now), (b"122", orig)]
    return encode(msg.begin_string, [*head, *rest])


def _rewrite_bad_checksum(raw: bytes, changes: dict[bytes, bytes]) -> bytes | None:
    """Rewrite fields of a message whose only fault is its CheckSum, and break the new CheckSum by
    the same amount (the proxy must still see a bad CheckSum)."""
    t = raw.rfind(b"\x0110=")
    if t < 0:
        return None
    declared = raw[t + 4:t + 7]
    if not declared.isdigit() or raw[t + 7:] != SOH:
        return None
    correct = checksum(raw, 0, t + 1)
    delta = (int(declared) - correct) % 256 or 1
    fixed = raw[:t + 1] + b"10=%03d\x01" % correct
    items = Decoder(_CAPTURE_LIMITS).feed(fixed)
    if len(items) != 1 or not isinstance(items[0], Message):
        return None
    msg = items[0]
    if msg.check_syntax(_CAPTURE_LIMITS) is not None:
        return None
    try:
        new = replace_fields(msg, {k: v for k, v in changes.items() if msg.get(k) is not None})
    except KeyError:
        return None
    good = int(new[-4:-1])
    return new[:-4] + b"%03d\x01" % ((good + delta) % 256)


def _s(v: bytes | None) -> str:
    return "?" if v is None else v.decode("latin-1")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def replay_live(messages: Sequence[CapturedMessage], host: str, port: int, ssl_context: ssl.SSLContext | None,
                *, server_hostname: str | None = "localhost", session: str | None = None,
                speed: float | None = None, renumber: bool = False, refresh_sending_time: bool = False,
                wait: float = 5.0, logon_timeout: float = 10.0, connect_timeout: float = 10.0,
                progress: ProgressFn | None = None, files: Sequence[str] = ()) -> LiveReport:
    """Replay the initiator side of one captured session to `host:port` (see the module doc).

    `speed`: None sends as fast as possible, 1.0 at the captured pace, 2.0 twice as fast.
    `ssl_context`: a client context (with the client certificate), or None for plaintext.
    Raises `ReplayError` when the session cannot be chosen, the connection fails or the Logon is
    refused."""
    sessions = split_sessions(messages, session)
    if not sessions:
        raise ReplayError("no FIX session in the capture", usage=True)
    if len(sessions) > 1:
        names = ", ".join(s.name for s in sessions)
        raise ReplayError(f"the capture holds {len(sessions)} sessions ({names}): choose one with --session",
                          usage=True)
    sess = sessions[0]
    report = LiveReport(session=sess.name, target=f"{host}:{port}", tls=ssl_context is not None, files=list(files))
    live = _LiveReplay(sess, host, port, ssl_context, server_hostname=server_hostname, speed=speed,
                       renumber=renumber, refresh_sending_time=refresh_sending_time, wait=wait,
                       logon_timeout=logon_timeout, connect_timeout=connect_timeout, progress=progress,
                       report=report)
    if not live.plan:
        raise ReplayError(f"session {sess.name} has no application message to replay", usage=True)
    return asyncio.run(live.run())


def write_json(report: OfflineReport | LiveReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
