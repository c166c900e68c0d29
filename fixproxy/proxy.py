"""The asyncio layer: sockets, TLS, timers. It moves bytes between the OMS and ATS legs and does
what the sans-IO `SessionInspector` decides; it makes no FIX decision of its own.

Data path, top to bottom: `OmsLeg.data_received` -> `SessionInspector.from_initiator` ->
`Link.apply` -> `AtsLeg.transport.write` (and the mirror for the ATS side).

asyncio Protocols (not streams) keep the per-read cost to one callback; TLS is started with
`loop.start_tls` after the TCP accept so that a failed handshake can be classified and recorded
(an ssl= server hides those failures in the loop's exception handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from . import metrics as m
from . import tls as tlsmod
from .access import Authoriser, Peer, SourceGuard
from .audit import BadRecord, Item, VerifyResult
from .events import Direction, Outcome, SecurityEvent
from .kpis import AnomalyDetector, KpiCollector, LatencyStats
from .leakguard import LeakGuard
from .reasons import Reason, Refusal
from .session import ReadResult, SessionInspector

if TYPE_CHECKING:
    from .config import ProxyConfig
    from .policy import SessionPolicy
    from .recorder import Recorder

log = logging.getLogger("fixproxy")
AUDIT_VERIFY_INTERVAL = 300.0  # seconds between full verifications of the running proxy's audit trail
AUDIT_FLUSH_SECONDS = 0.005  # the audit flusher's period: short flushes keep the latency tail short
AUDIT_SLICE_MESSAGES = 16  # the flusher writes whole records holding about this many messages, then reads
READ_BUFFER_BYTES = 256 * 1024  # the TLS legs' shared read buffer (uvloop's largest TLS read)
SLOW_READER_SECONDS = 30.0  # a leg whose buffer stays full this long is closed (no HeartBtInt known)
_SNAPSHOT_METRICS = frozenset({m.MESSAGES, m.POISONING_ATTEMPTS, m.UNAUTHENTICATED_ACCESS, m.LEAKAGE_INDEX,
                               m.ENCRYPTION_COVERAGE, m.SESSION_UP, m.AUDIT_IN_FLIGHT, m.LATENCY_ANOMALIES,
                               m.HOSTILE_BLOCKED_RATIO, m.LEGITIMATE_DELIVERED_RATIO})
_CONTAINED = frozenset({Outcome.REFUSED, Outcome.DISCONNECTED, Outcome.CONNECTION_REFUSED, Outcome.DROPPED})
perf = time.perf_counter


@dataclass
class FailoverState:
    active: int = 0  # index into the upstream endpoints
    pending_since: float | None = None  # perf_counter() when the active upstream was lost
    trigger: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


class Link:
    """One OMS connection and its ATS leg."""

    __slots__ = (
        "ats",
        "closing",
        "early",
        "inspector",
        "last_read",
        "logged_on_at",
        "logon_deadline",
        "oms",
        "opened",
        "peer",
        "pending",
        "proxy",
        "source",
    )

    def __init__(self, proxy: FixProxy, source: str) -> None:
        self.proxy = proxy
        self.oms: _OmsSide = None  # type: ignore[assignment]  # set by the OMS leg's __init__
        self.ats: _AtsSide | None = None
        self.source = source
        self.peer: Peer | None = None
        self.inspector: SessionInspector | None = None
        self.pending: list[bytes] | None = None  # bytes for the ATS while its leg is being opened
        self.early: list[bytes] | None = None  # bytes read before the inspector was installed
        self.closing = False
        self.opened = perf()
        self.last_read = self.opened
        self.logon_deadline = self.opened + proxy.logon_timeout
        self.logged_on_at = 0.0

    # ---- the hot path ---------------------------------------------------------------------
    def from_oms(self, data: bytes) -> None:
        now = perf()
        self.last_read = now
        insp = self.inspector
        if insp is None:
            # Read before _accept installed the inspector: a peer may write right after connecting
            # (or right after its TLS Finished), before the accepting coroutine resumes. Kept, and
            # fed to the inspector once it exists; reading pauses meanwhile, so this stays one read.
            if self.early is None:
                self.early = []
                self.oms.pause("early")
            self.early.append(data)
            return
        proxy = self.proxy
        proxy.bytes_by_leg["oms"] += len(data)
        if proxy.write_ahead and proxy.audit.error is not None and self.audit_still_down():
            return
        self.apply(insp.from_initiator(data, now), now, "inbound")

    def from_ats(self, data: bytes) -> None:
        insp = self.inspector
        if insp is not None:
            now = perf()
            proxy = self.proxy
            proxy.bytes_by_leg["ats"] += len(data)
            if proxy.write_ahead and proxy.audit.error is not None and self.audit_still_down():
                return
            self.apply(insp.from_acceptor(data, now), now, "outbound")

    def audit_still_down(self) -> bool:
        """Write-ahead with the trail known to be unwritable: the read is not even inspected (its
        effects on the session state could not be delivered), the session is closed, and the
        engines resend once it is back. True when that happened."""
        if self.proxy.flush_audit():
            return False
        self.close(Refusal(Reason.AUDIT_UNAVAILABLE, "Audit trail unavailable: nothing is forwarded"), event=True)
        return True

    def apply(self, res: ReadResult, received_at: float, direction: str) -> None:
        proxy = self.proxy
        if proxy.audit is not None and (res.forwarded or res.refused):
            seq, count = proxy.audit_read(self, direction, received_at, res)
            if proxy.write_ahead and not proxy.flush_audit() and proxy.audit.written < seq:
                # Write-ahead: this read's record is not on disk, so nothing of it crosses; its
                # record (kept, written later) says so, and so do the counters. The session is
                # closed: the engines resynchronise by the FIX rules once it is back. (Only the
                # first read to meet the failure gets here; later ones are not even inspected.)
                n = proxy.audit.unforward(seq, count, Reason.AUDIT_UNAVAILABLE.value)
                insp = self.inspector
                if insp is not None:
                    st = insp.stats[Direction.INBOUND if direction == "inbound" else Direction.OUTBOUND]
                    st.forwarded -= n
                    st.refused += n
                self.close(Refusal(Reason.AUDIT_UNAVAILABLE, "Audit trail unavailable: read not forwarded"),
                           event=True)
                return
        if res.to_initiator:
            self.oms.write(res.to_initiator)
        if res.logon is not None:
            self.pending = []
            self.logged_on_at = time.monotonic()
            self.proxy.spawn(self.open_upstream())
        if res.to_acceptor:
            if self.pending is not None:
                self.pending.extend(res.to_acceptor)
            elif self.ats is not None:
                self.ats.write(res.to_acceptor)
                if self.proxy.failover.pending_since is not None:
                    self.proxy.recovered()
        if res.forwarded:
            # Every message of a read shares one latency: last byte read -> written to the other leg.
            latency = perf() - received_at
            proxy.latency.observe(direction, latency, [msg.msg_type for msg in res.forwarded])
            insp = self.inspector
            if insp is not None and insp.state is not None:
                name = insp.state.policy.name
                # One baseline per session and direction: request/response traffic alternates
                # directions, and a slowdown in one must not be diluted by the other.
                det = proxy.anomaly.get((name, direction))
                if det is None:
                    det = proxy.anomaly[(name, direction)] = proxy.new_anomaly_detector()
                if det.observe(latency):
                    res.events.append(SecurityEvent(
                        None, Outcome.INFO, f"Proxy latency {latency * 1e6:.0f} µs above mean + {det.k}sigma for "
                        f"{det.run} reads in a row (mean {det.mean * 1e6:.0f} µs)", session=name, source=self.source,
                        kind="latency.anomaly"))
        if res.events:
            proxy.record(res.events, self)
            for ev in res.events:  # time to respond: bytes read -> containment written
                if ev.received_at is not None and ev.outcome in _CONTAINED:
                    proxy.m_ttr.observe(perf() - ev.received_at)
        if res.close is not None:
            self.close(res.close)

    # ---- lifecycle ------------------------------------------------------------------------
    async def open_upstream(self) -> None:
        proxy = self.proxy
        self.oms.pause("connecting")  # nothing more from the OMS until its ATS leg exists
        try:
            ats = await proxy.connect_upstream(self)
        except Exception as exc:
            self.close(Refusal(Reason.UPSTREAM_UNAVAILABLE, f"No ATS endpoint reachable: {exc}"))
            return
        if self.closing:
            ats.transport.close()
            return
        self.ats = ats
        pending, self.pending = self.pending or [], None
        if pending:
            ats.write(pending)
            if proxy.failover.pending_since is not None:
                proxy.recovered()  # the Logon is the first message delivered to the new endpoint
        self.oms.resume("connecting")

    def close(self, refusal: Refusal | None = None, *, event: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        if event and refusal is not None:
            insp = self.inspector
            ev = SecurityEvent(refusal.reason, Outcome.DISCONNECTED, refusal.text,
                               session=insp.session_name if insp else None, source=self.source)
            self.proxy.record([ev], self)
        if self.oms is not None and hasattr(self.oms, "transport"):
            self.oms.transport.close()
        if self.ats is not None:
            self.ats.transport.close()
        self.proxy.forget(self)


class _Leg(asyncio.BaseProtocol):
    """Common to both legs: write batching and backpressure. (Each leg is an asyncio.Protocol over
    plain TCP and a BufferedProtocol over TLS: see ReadsIntoBuffer.)"""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.link: Link | None = None
        self.paused_for: set[str] = set()  # why reading is paused; resumed only when empty
        self.full_since: float | None = None  # perf_counter() since our write buffer toward it is full

    def write(self, chunks: list[bytes]) -> None:
        self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def pause(self, why: str) -> None:
        first = not self.paused_for
        self.paused_for.add(why)
        if first:
            with contextlib.suppress(AttributeError, RuntimeError):
                self.transport.pause_reading()

    def resume(self, why: str) -> None:
        if why not in self.paused_for:
            return
        self.paused_for.discard(why)
        if not self.paused_for:
            with contextlib.suppress(AttributeError, RuntimeError):
                self.transport.resume_reading()

    # Our write buffer toward this leg is full. Stop reading from BOTH legs: the other leg's
    # messages are forwarded into this buffer, and this leg's own messages draw the proxy's answers
    # (Rejects, GapFills) into it. So a peer that does not read cannot make the proxy's memory grow;
    # one that stays full past the idle limit is closed (SLOW_READER).
    def pause_writing(self) -> None:
        link = self.link
        if link is None:
            return
        self.full_since = perf()
        other = link.ats if self is link.oms else link.oms
        if other is not None:
            other.pause("peer_full")
        self.pause("own_full")

    def resume_writing(self) -> None:
        link = self.link
        if link is None:
            return
        self.full_since = None
        other = link.ats if self is link.oms else link.oms
        if other is not None:
            other.resume("peer_full")
        self.resume("own_full")


class _OmsSide(_Leg):
    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link
        link.oms = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        link = self.link
        assert link is not None
        transport.set_write_buffer_limits(high=link.proxy.config.write_buffer_limit)

    def data_received(self, data: bytes) -> None:
        self.link.from_oms(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        link = self.link
        if link is not None:
            link.close()


class _AtsSide(_Leg):
    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=self.link.proxy.config.write_buffer_limit)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.link.from_ats(data)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        link = self.link
        if link is not None and not link.closing:
            insp = link.inspector
            if insp is None or not insp.logout_seen:  # after a Logout, closing is the normal end
                link.proxy.upstream_lost(link)
            link.close()


class OmsLeg(_OmsSide, asyncio.Protocol):
    """The OMS leg over plain TCP: uvloop reads into a buffer of its own and hands over bytes."""


class AtsLeg(_AtsSide, asyncio.Protocol):
    """The ATS leg over plain TCP."""


class ReadsIntoBuffer(asyncio.BufferedProtocol):
    """For a leg over TLS (here, and the bench's relay and sink): the loop decrypts straight into
    one read buffer and the leg copies out what was read. With a plain Protocol, uvloop's TLS layer
    asks OpenSSL for 256 KiB per read and then once more to find it empty: two 256 KiB allocations
    per read, served with an mmap/munmap pair for many of them (see the README, Performance). Not
    for plain TCP: there uvloop already reads into one buffer of its own, and the Python get_buffer
    call per read cost ~10 % more CPU per message (measured, plain, 10k msg/s and saturation). A
    class with asyncio.Protocol among its bases is read as a plain Protocol by the TLS layer
    (asyncio's and uvloop's alike), so the TLS legs have none."""

    __slots__ = ()
    view: memoryview  # set by the class or the instance: one buffer per event loop

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.view[:nbytes].tobytes())  # type: ignore[attr-defined]


class TlsOmsLeg(ReadsIntoBuffer, _OmsSide):
    def __init__(self, link: Link) -> None:
        _OmsSide.__init__(self, link)
        self.view = link.proxy.read_view  # filled and copied out within one loop callback


class TlsAtsLeg(ReadsIntoBuffer, _AtsSide):
    def __init__(self, link: Link) -> None:
        _AtsSide.__init__(self, link)
        self.view = link.proxy.read_view


class FixProxy:
    """The running proxy: listener, upstream connections, reload, admin operations."""

    def __init__(self, config: ProxyConfig, recorder: Recorder | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        from .recorder import Recorder

        self.config = config
        self.registry = registry or CollectorRegistry()
        self.recorder = recorder or Recorder(registry=self.registry, jsonl=config.events_jsonl)
        self.links: set[Link] = set()
        # One read buffer for every TLS leg of this proxy (one event loop): each read is copied out
        # of it in the callback that filled it. Sized as uvloop's largest TLS read.
        self.read_view = memoryview(bytearray(READ_BUFFER_BYTES))
        self.by_source: dict[str, int] = defaultdict(int)
        self.guard = SourceGuard(config.auth.bruteforce_threshold, config.auth.block_seconds)
        self.authoriser = Authoriser(config.sessions, config.bindings, require_identity=not config.insecure)
        self.failover = FailoverState()
        self.listener: socket.socket | None = None
        self.logon_timeout = min((p.logon_timeout for p in config.sessions), default=10.0)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        self._revoked: frozenset[int] = frozenset()
        self._validators: dict[str, Any] = {}
        self._build_contexts(config)
        r = self.registry
        self.m_connections = Counter(m.CONNECTIONS, "Connections by leg and outcome", ["leg", "outcome"], registry=r)
        self.m_tls_refused = Counter(m.TLS_HANDSHAKES_REFUSED, "TLS handshakes refused", ["source", "reason"],
                                     registry=r)
        self.m_logons_refused = Counter(m.LOGONS_REFUSED, "Logons refused", ["source", "compid", "reason"],
                                        registry=r)
        self.m_sessions = Gauge(m.SESSIONS_ACTIVE, "Sessions logged on", ["session"], registry=r)
        self.m_failovers = Counter(m.FAILOVERS, "Upstream failovers", ["outcome", "trigger"], registry=r)
        self.m_mttr = Histogram(m.FAILOVER_RECOVERY, "Seconds from upstream loss to first message delivered",
                                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.m_reloads = Counter(m.CONFIG_RELOADS, "Configuration reloads", ["outcome"], registry=r)
        self.m_admin = Counter(m.ADMIN_OPERATIONS, "Admin operations", ["operation", "outcome"], registry=r)
        self.m_ttr = Histogram(m.TIME_TO_RESPOND, "Seconds from the offending bytes to containment written",
                               buckets=m.LATENCY_BUCKETS, registry=r)
        # KPI state read by KpiCollector at scrape time (the FIX path only adds to it).
        self.started_at = time.monotonic()
        self.leak_guard = LeakGuard()
        self.latency = LatencyStats()
        self.anomaly: dict[tuple[str, str], AnomalyDetector] = {}
        self.closed_stats: dict[tuple[str, str, str], float] = {}
        self.connected_seconds: dict[str, float] = {}
        self.connections_refused = 0
        self.bytes_by_leg: dict[str, int] = {"oms": 0, "ats": 0}
        self.certificates = _certificate_dates(config)
        self.m_admin_refused = Counter(m.ADMIN_REFUSED, "Admin operations refused", ["operation"], registry=r)
        self.m_admin_unlogged = Counter(m.ADMIN_UNLOGGED, "Admin operations whose audit record failed", registry=r)
        self.m_audit_records = Counter(m.AUDIT_RECORDS, "Audit records written", registry=r)
        self.m_audit_flush = Histogram(m.AUDIT_FLUSH, "Event-loop seconds of each audit flush that wrote records",
                                       buckets=m.LATENCY_BUCKETS, registry=r)
        self.m_audit_verify_failures = Counter(m.AUDIT_VERIFY_FAILURES, "Audit trail verifications that failed",
                                               registry=r)
        self.m_audit_verifications = Counter(m.AUDIT_VERIFICATIONS, "Audit trail verifications run, by result",
                                             ["result"], registry=r)
        self.m_audit_gaps = Counter(m.AUDIT_SEQUENCE_GAPS, "Audit trail verifications that found a sequence gap",
                                    registry=r)
        r.register(KpiCollector(self))
        self.audit: Any = None
        self.audit_down = False
        self._audit_logged_down = False
        self.write_ahead = False  # [audit] write_ahead: each read's record on disk before it is forwarded
        self.reuseport_workers = 0  # > 0: one of that many workers sharing the port (fixproxy.workers)
        self.mqtt: Any = None

    # ---- audit trail and MQTT (off the FIX path: per-read records, flushed by a task) ------------
    def _open_audit(self, config: ProxyConfig) -> None:
        self.audit = None
        self.write_ahead = config.audit is not None and config.audit.write_ahead
        if config.audit is None:
            return

        def on_checkpoint(cp: dict[str, Any]) -> None:
            # A copy of every checkpoint leaves the box as an event (MQTT / events file).
            self.recorder.submit([SecurityEvent(None, Outcome.INFO, f"Audit checkpoint {cp.get('head_seq')} "
                                                f"{cp.get('head_hash')}", session=None, kind="audit.checkpoint")])

        # background_sync: the checkpoints' fsyncs and HEAD.json never stall the event loop (an
        # fsync under load took tens of ms: the p99 of a 10k msg/s run with the audit trail on).
        self.audit = config.audit.open_trail(on_checkpoint=on_checkpoint, background_sync=True)
        self.recorder.add_sink(self.audit.record_events)

    def audit_read(self, link: Link, direction: str, received_at: float, res: ReadResult) -> tuple[int, int]:
        """The read's messages into the audit trail (their record's seq, and how many): every
        message's metadata; digests are computed at flush."""
        insp = link.inspector
        session = insp.session_name if insp is not None and insp.session_name else link.source
        # A forwarded message goes in as itself: the trail reads its MsgSeqNum (the digits received;
        # a forwarded message always has valid ones), MsgType and bytes when it writes the record,
        # off the per-read path.
        items: list[Item] = list(res.forwarded)
        for msg, ev in res.refused:
            items.append((ev.msg_seq_num, msg.msg_type, msg.raw, ev.outcome.value,
                          ev.reason.value if ev.reason else None))
        assert self.audit is not None
        return self.audit.append_messages(session, direction, received_at, items), len(items)

    def audit_admin(self, operation: str, operator: dict[str, Any], outcome: str, detail: str) -> None:
        """The admin channel's audit hook: metric, event and audit record for every operation."""
        self.m_admin.labels(operation, outcome).inc()
        if outcome == "refused":
            self.m_admin_refused.labels(operation).inc()
        self.recorder.submit([SecurityEvent(None, Outcome.INFO, f"{operation} by uid {operator.get('uid')} "
                                            f"({operator.get('user')}): {outcome} {detail}".strip(),
                                            session=None, kind=f"admin.{outcome}")])
        if self.audit is not None:
            try:
                self.audit.append("admin", operation=operation, operator=operator, outcome=outcome, detail=detail)
            except Exception:
                self.m_admin_unlogged.inc()
                log.exception("admin operation not audited")

    async def _audit_flusher(self) -> None:
        """Flush the audit trail in batches; when it cannot be written, fail closed (or not)."""
        while True:
            # Often, so that each flush is short: it runs on the event loop, and every read that
            # arrives meanwhile waits for it (every 50 ms gave a 6-14 ms p99 at 10k msg/s).
            await asyncio.sleep(AUDIT_FLUSH_SECONDS)
            # What was pending at the tick, in slices of whole records, letting the loop read
            # between them: a read that arrives during a flush waits for one slice, not the whole
            # flush (at 10k msg/s a whole flush held the loop for 100-250 us every 5 ms, at 50k
            # msg/s for 250 us-1 ms). Then, in one go, the little that came in meanwhile: a
            # checkpoint needs nothing pending, and under steady load slices alone never get there.
            audit = self.audit
            if audit is None:
                continue
            end = audit.last_seq
            ok = True
            while ok and audit.written < end and audit.pending:
                ok = self.flush_audit(AUDIT_SLICE_MESSAGES)
                if ok and audit.written < end:
                    await asyncio.sleep(0)
            if ok:
                self.flush_audit()

    def flush_audit(self, max_messages: int | None = None) -> bool:
        """Write what is pending in the audit trail (``max_messages``: a slice of it, see
        `AuditTrail.flush`) and follow its state: when it cannot be written, fail closed (per
        config) and say so once. True when the trail is writable (without a slice: when everything
        pending is written)."""
        audit = self.audit
        if audit is None:
            return True
        before = audit.written
        t0 = perf()
        try:
            audit.flush(max_messages)
        except Exception as exc:
            if audit.error is None:
                audit.error = exc
        if audit.written > before:
            self.m_audit_flush.observe(perf() - t0)
            self.m_audit_records.inc(audit.written - before)
        down = audit.error is not None
        if down != self._audit_logged_down:
            self._audit_logged_down = down
            if down:
                log.warning("audit trail cannot be written: %s", audit.error)
            else:
                log.warning("audit trail writable again")
        fail_closed = down and self.config.audit is not None and self.config.audit.fail_closed
        if fail_closed != self.audit_down:
            self.audit_down = fail_closed
            for link in list(self.links):
                if link.inspector is not None:
                    link.inspector.refuse_orders = (
                        Refusal(Reason.AUDIT_UNAVAILABLE, "Audit trail unavailable: orders refused")
                        if fail_closed else None)
            self.recorder.submit([SecurityEvent(
                Reason.AUDIT_UNAVAILABLE if fail_closed else None, Outcome.INFO,
                f"Audit trail {'unavailable: ' + str(audit.error) if fail_closed else 'writable again'}",
                session=None, kind="audit.unavailable" if fail_closed else "audit.available")])
        return not down

    async def verify_audit(self) -> bool:
        """Verify the whole trail, in a child process (`fixproxy audit verify --json`): it reads,
        parses and hashes every record, which in a thread of this process held the GIL against the
        event loop (a sixth of the proxy's time in the bench profile). A failure is an
        unauthorised-modification alert: counted, and raised as an event."""
        if self.audit is None or self.config.audit is None:
            return True
        cfg = self.config.audit
        pub = Path(str(cfg.signing_key) + ".pub")
        argv = [sys.executable, "-m", "fixproxy.cli", "audit", "verify", str(cfg.directory), "--json"]
        if pub.exists():
            argv += ["--pubkey", str(pub)]
        here = str(Path(__file__).resolve().parent.parent)  # this fixproxy, installed or not
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await proc.communicate()
        try:
            doc = json.loads(out)
        except ValueError:
            raise RuntimeError(f"audit verify did not run: {err.decode(errors='replace').strip()[-300:]}") from None
        bad = doc.get("first_bad")
        result = VerifyResult(**{**doc, "first_bad": BadRecord(**bad) if bad else None})
        self.m_audit_verifications.labels("ok" if result.ok else "failed").inc()
        if not result.ok:
            self.m_audit_verify_failures.inc()
            if result.problem and result.problem.startswith("gap"):
                self.m_audit_gaps.inc()
            self.recorder.submit([SecurityEvent(None, Outcome.INFO, f"Audit trail verification failed at record "
                                                f"{result.first_bad.seq if result.first_bad else '?'}: "
                                                f"{result.problem}", session=None,
                                                kind="audit.verification_failed")])
        return bool(result.ok)

    async def _audit_verifier(self) -> None:
        await asyncio.sleep(1.0)
        while True:
            try:
                await self.verify_audit()
            except Exception:
                log.exception("audit verification failed to run")
            await asyncio.sleep(AUDIT_VERIFY_INTERVAL)

    async def _start_mqtt(self, config: ProxyConfig) -> None:
        self.mqtt = None
        if config.mqtt is None:
            return
        from .mqtt import MqttPublisher

        self.mqtt = MqttPublisher.from_config(config.mqtt, config.instance, kpi_snapshot=self.kpi_snapshot)
        self.recorder.add_sink(self.mqtt.sink)
        await self.mqtt.start()

    def kpi_snapshot(self) -> dict[str, Any]:
        """A few headline KPIs for the MQTT snapshot topic (the full set is on /metrics)."""
        out: dict[str, Any] = {"instance": self.config.instance, "time": time.time()}
        for metric in self.registry.collect():
            if metric.name in _SNAPSHOT_METRICS:
                out[metric.name] = {
                    ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) or "value": sample.value
                    for sample in metric.samples if not sample.name.endswith(("_created", "_bucket"))}
        return out

    def new_anomaly_detector(self) -> AnomalyDetector:
        a = self.config.anomaly
        return (AnomalyDetector(k=a.k, n=a.n, warmup=a.warmup, alpha=a.alpha, repeat=a.repeat) if a is not None
                else AnomalyDetector())

    # ---- start / stop ---------------------------------------------------------------------
    def _build_contexts(self, config: ProxyConfig) -> None:
        """Build every TLS context first and swap them in together: a reload that fails half-way
        leaves the running contexts untouched."""
        server_ctx, revoked, client_ctx = None, frozenset[int](), None
        if not config.insecure:
            t = config.tls
            assert t is not None
            server_ctx = tlsmod.server_context(t.cert, t.key, t.ca, crl=t.crl, min_version=t.min_version)
            revoked = _revoked_serials(t.crl)
        up = config.upstream
        if not up.insecure:
            t = up.tls
            assert t is not None
            client_ctx = tlsmod.client_context(t.cert, t.key, t.ca, min_version=t.min_version)
        self._server_ctx, self._revoked, self._client_ctx = server_ctx, revoked, client_ctx

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.insecure:
            log.warning("OMS leg is plaintext (proxy.insecure = true): no certificates, no identity binding")
        if self.config.upstream.insecure:
            log.warning("ATS leg is plaintext (upstream.insecure = true)")
        await self.recorder.start()
        self._open_audit(self.config)
        await self._start_mqtt(self.config)
        host, port = self.config.listen
        if self.reuseport_workers:
            from .workers import listen_reuseport

            self.listener = listen_reuseport(host, port, self.reuseport_workers)
        else:
            self.listener = _listen(host, port)
        self.spawn(self._accept_loop(loop))
        self.spawn(self._timers())
        self.spawn(self._audit_flusher())
        if self.audit is not None:
            self.spawn(self._audit_verifier())
        if self.audit is not None:
            self.audit.append("config.loaded", source=str(self.config.source_path), sessions=len(self.config.sessions))
        log.info("fixproxy listening on %s:%d", host, self.port)

    @property
    def port(self) -> int:
        assert self.listener is not None
        return int(self.listener.getsockname()[1])

    async def _accept_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        # sock_accept + connect_accepted_socket(ssl=...) rather than create_server(ssl=...): the
        # handshake then fails here, where it can be classified and recorded, on uvloop as well.
        assert self.listener is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(self.listener)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            self.spawn(self._accept(loop, conn, str(addr[0])))

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for link in list(self.links):
            link.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.recorder.stop()  # last events reach the audit sink before it closes
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self.audit is not None:
            try:
                self.audit.close()
            except Exception:
                log.exception("audit trail not closed cleanly")

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- accepting ------------------------------------------------------------------------
    async def _accept(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, source: str) -> None:
        link = Link(self, source)
        if self.guard.is_blocked(source):
            conn.close()
            self._refuse_connection(link, Refusal(Reason.SOURCE_BLOCKED, f"Source {source} is blocked"))
            return
        if self.by_source[source] >= self.config.max_connections_per_source:
            conn.close()
            self._refuse_connection(link, Refusal(Reason.TOO_MANY_CONNECTIONS, f"Too many connections from {source}"))
            return
        self.links.add(link)
        self.by_source[source] += 1
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: (OmsLeg if self._server_ctx is None else TlsOmsLeg)(link), conn, ssl=self._server_ctx,
                ssl_handshake_timeout=self.config.handshake_timeout if self._server_ctx else None)
        except (TimeoutError, ConnectionAbortedError) as exc:
            # ssl_handshake_timeout aborts with ConnectionAbortedError (asyncio and uvloop alike)
            conn.close()
            self._refuse_connection(link, Refusal(Reason.HANDSHAKE_TIMEOUT, f"TLS handshake timed out: {_short(exc)}"))
            return
        except Exception as exc:
            conn.close()
            reason = tlsmod.classify_handshake_error(exc)
            self._refuse_connection(link, Refusal(reason, f"TLS handshake refused: {_short(exc)}"))
            return
        if link.closing:
            transport.close()
            return
        if self._server_ctx is None:
            link.peer = Peer(source=source, tls=False)
        else:
            sslobj = transport.get_extra_info("ssl_object")
            ident = tlsmod.peer_identity(sslobj) if sslobj is not None else None
            if ident is not None and ident.serial in self._revoked:
                self._refuse_connection(link, Refusal(Reason.TLS_REVOKED, "Client certificate revoked"))
                return
            link.peer = Peer(source=source, tls=True, san_uris=ident.san_uris if ident else (),
                             common_name=ident.common_name if ident else None,
                             fingerprint=ident.fingerprint_sha256 if ident else "")
        link.inspector = self._inspector(link)
        self.m_connections.labels("oms", "accepted").inc()
        early, link.early = link.early, None
        if early:
            link.oms.resume("early")
            link.from_oms(b"".join(early))

    def _inspector(self, link: Link) -> SessionInspector:
        peer = link.peer
        assert peer is not None

        def authorise(msg: Any) -> Any:
            return self.authoriser.authorise(msg, peer)

        insp = SessionInspector(authorise, source=link.source, limits=self.config.limits,
                                validator=self._validator, leak_guard=self.leak_guard)
        if self.audit_down:
            insp.refuse_orders = Refusal(Reason.AUDIT_UNAVAILABLE, "Audit trail unavailable: orders refused")
        return insp

    def _validator(self, policy: SessionPolicy) -> Any:
        from .policy import ValidationMode

        if policy.validation is ValidationMode.OFF:
            return None
        from .dictionary import load_for_version

        return load_for_version(policy.begin_string.encode()).validator(policy.validation.value)

    def _refuse_connection(self, link: Link, refusal: Refusal) -> None:
        source = link.source
        ev = SecurityEvent(refusal.reason, Outcome.CONNECTION_REFUSED, refusal.text, session=None,
                           direction=Direction.INBOUND, source=source, received_at=link.opened)
        events = [ev]
        if refusal.reason.category.value == "auth" and refusal.reason is not Reason.SOURCE_BLOCKED:
            self.m_tls_refused.labels(source, refusal.reason.value).inc()
            if self.guard.failure(source):
                events.append(SecurityEvent(Reason.SOURCE_BLOCKED, Outcome.INFO,
                                            f"Source {source} blocked for {self.guard.block_seconds:.0f} s "
                                            f"after repeated refusals", session=None, source=source,
                                            kind="auth.bruteforce"))
        self.m_connections.labels("oms", "refused").inc()
        self.connections_refused += 1
        self.recorder.submit(events)
        link.close()

    def forget(self, link: Link) -> None:
        if link in self.links:
            self.links.discard(link)
            self.by_source[link.source] -= 1
            if self.by_source[link.source] <= 0:
                del self.by_source[link.source]
        insp = link.inspector
        if insp is not None and insp.state is not None:
            insp.state.connections = max(0, insp.state.connections - 1)
            name = insp.state.policy.name
            self.m_sessions.labels(name).set(sum(
                1 for lk in self.links if lk.inspector and lk.inspector.session_name == name))
            if link.logged_on_at:
                self.connected_seconds[name] = self.connected_seconds.get(name, 0.0) + (
                    time.monotonic() - link.logged_on_at)
            for d, st in insp.stats.items():
                for outcome in ("received", "forwarded", "refused", "dropped", "shadowed", "modified"):
                    key = (name, d.value, outcome)
                    self.closed_stats[key] = self.closed_stats.get(key, 0) + getattr(st, outcome)
            insp.state = None  # counted once

    # ---- recording ------------------------------------------------------------------------
    def record(self, events: list[SecurityEvent], link: Link | None = None) -> None:
        for ev in events:
            if ev.outcome is Outcome.CONNECTION_REFUSED:
                src = ev.source or "?"
                if ev.reason is Reason.SOURCE_NOT_ALLOWED:
                    self.leak_guard.outside_allow_list()
                self.m_logons_refused.labels(src, (ev.session or "?").split("->")[0],
                                             ev.reason.value if ev.reason else "").inc()
                if ev.reason is not None and self.guard.failure(src):
                    events = [*events, SecurityEvent(Reason.SOURCE_BLOCKED, Outcome.INFO,
                                                     f"Source {src} blocked after repeated refusals",
                                                     session=None, source=src, kind="auth.bruteforce")]
            elif ev.kind == "session.logon" and link is not None and link.inspector is not None:
                name = link.inspector.session_name or "?"
                self.m_sessions.labels(name).inc()
        self.recorder.submit(events)

    # ---- upstream and failover --------------------------------------------------------------
    async def connect_upstream(self, link: Link) -> _AtsSide:
        loop = asyncio.get_running_loop()
        up = self.config.upstream
        n = len(up.endpoints)
        last: Exception | None = None
        for i in range(n):
            idx = (self.failover.active + i) % n
            host, port = up.endpoints[idx]
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(
                    lambda: (AtsLeg if self._client_ctx is None else TlsAtsLeg)(link), host, port,
                    ssl=self._client_ctx,
                    server_hostname=up.server_hostname if self._client_ctx else None,
                    ssl_handshake_timeout=self.config.handshake_timeout if self._client_ctx else None),
                    up.connect_timeout)
            except Exception as exc:
                last = exc
                log.warning("upstream %s:%d unreachable: %s", host, port, _short(exc))
                continue
            if idx != self.failover.active:
                self._switched(idx, "failure")
            self.m_connections.labels("ats", "connected").inc()
            return proto  # type: ignore[return-value]
        self.m_failovers.labels("failed", self.failover.trigger or "failure").inc()
        raise ConnectionError(_short(last) if last else "no endpoints")

    def _switched(self, idx: int, trigger: str) -> None:
        self.failover.active = idx
        if self.failover.pending_since is None:
            self.failover.pending_since = perf()
        self.failover.trigger = self.failover.trigger or trigger
        self.recorder.submit([SecurityEvent(None, Outcome.INFO, f"Upstream switched to endpoint {idx}",
                                            session=None, kind="failover.switch")])

    def upstream_lost(self, link: Link) -> None:
        """The active ATS endpoint dropped a live session: the next connection uses the next
        endpoint; the time until a message flows again is the recovery time (MTTR)."""
        if self.failover.pending_since is None:
            self.failover.pending_since = perf()
            self.failover.trigger = self.failover.trigger or "failure"
            n = len(self.config.upstream.endpoints)
            if n > 1:
                self.failover.active = (self.failover.active + 1) % n

    def recovered(self) -> None:
        fo = self.failover
        if fo.pending_since is None:
            return
        seconds = perf() - fo.pending_since
        self.m_mttr.observe(seconds)
        self.m_failovers.labels("ok", fo.trigger or "failure").inc()
        fo.history.append({"trigger": fo.trigger, "seconds": seconds, "endpoint": fo.active})
        self.recorder.submit([SecurityEvent(None, Outcome.INFO,
                                            f"Recovered on endpoint {fo.active} in {seconds * 1000:.1f} ms",
                                            session=None, kind="failover.recovered")])
        fo.pending_since = None
        fo.trigger = ""

    # ---- timers: logon deadline, idle sessions ----------------------------------------------
    async def _timers(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(0.5)
            ticks += 1
            if ticks % 120 == 0:
                self.leak_guard.expire()
            now = perf()
            for link in list(self.links):
                insp = link.inspector
                if insp is None or insp.state is None:
                    if now > link.logon_deadline and (insp is None or insp.state is None):
                        reason = Reason.HANDSHAKE_TIMEOUT if insp is None else Reason.LOGON_TIMEOUT
                        link.close(Refusal(reason, "No Logon before the deadline"), event=True)
                    continue
                hb = insp.heartbeat_interval
                limit = hb * insp.state.policy.idle_factor + 1.0 if hb else SLOW_READER_SECONDS
                slow = next((leg for leg in (link.oms, link.ats)
                             if leg is not None and leg.full_since is not None and now - leg.full_since > limit),
                            None)
                if slow is not None:
                    who = "OMS" if slow is link.oms else "ATS"
                    link.close(Refusal(Reason.SLOW_READER, f"{who} has not read what it was sent for {limit:.0f} s"),
                               event=True)
                elif hb and not link.oms.paused_for and now - link.last_read > limit:
                    # (while reading is paused by backpressure, silence is ours, not the peer's)
                    link.close(Refusal(Reason.IDLE_TIMEOUT, f"Nothing received for {limit:.0f} s"), event=True)

    # ---- admin operations (fixproxy.admin.AdminTarget) ------------------------------------
    async def reload(self) -> dict[str, Any]:
        from .config import load_config

        try:
            config = load_config(self.config.source_path)
            self._build_contexts(config)
        except Exception as exc:
            self.m_reloads.labels("refused").inc()
            if self.audit is not None:
                self.audit.append("config.reload", outcome="refused", detail=str(exc)[:500])
            self.recorder.submit([SecurityEvent(None, Outcome.INFO, f"Reload refused: {exc}", session=None,
                                                kind="config.reload_failed")])
            raise
        self.config = config
        self.certificates = _certificate_dates(config)  # rotated certificates: their own dates
        self.authoriser.update(config.sessions, config.bindings)
        closed = []
        for link in list(self.links):
            insp, peer = link.inspector, link.peer
            if insp is None or insp.state is None or peer is None:
                continue
            ident_serial = _peer_serial(link)
            policy = self.authoriser.policies.get(insp.state.policy.key)
            binding = self.authoriser.bindings.get(insp.state.policy.name)
            if ident_serial is not None and ident_serial in self._revoked:
                refusal = Refusal(Reason.TLS_REVOKED, "Client certificate revoked by reload")
            elif policy is None:
                refusal = Refusal(Reason.UNKNOWN_SESSION, "Session removed by reload")
            elif peer.tls and (binding is None or not binding.matches(peer.san_uris, peer.common_name,
                                                                       peer.fingerprint)):
                refusal = Refusal(Reason.COMPID_NOT_BOUND, "Certificate no longer bound after reload")
            else:
                continue
            closed.append(insp.session_name)
            link.close(refusal, event=True)
        self.m_reloads.labels("ok").inc()
        if self.audit is not None:
            self.audit.append("config.reload", outcome="ok", closed=closed, sessions=len(config.sessions))
        self.recorder.submit([SecurityEvent(None, Outcome.INFO, f"Configuration reloaded; closed {closed}",
                                            session=None, kind="config.reload")])
        return {"sessions": len(config.sessions), "closed": closed}

    async def status(self) -> dict[str, Any]:
        return {
            "instance": self.config.instance,
            "listen": f"{self.config.listen[0]}:{self.port}",
            "links": [{"source": lk.source, "session": lk.inspector.session_name if lk.inspector else None,
                       "stats": {d.value: s.as_dict() for d, s in lk.inspector.stats.items()}
                       if lk.inspector else None} for lk in self.links],
            "blocked": self.guard.blocked(),
            "upstream_active": self.failover.active,
            "failovers": self.failover.history[-20:],
        }

    async def kill_session(self, name: str) -> dict[str, Any]:
        killed = 0
        for link in list(self.links):
            if link.inspector is not None and link.inspector.session_name == name:
                link.close(Refusal(Reason.UNKNOWN_SESSION, "Session killed by an operator"), event=True)
                killed += 1
        return {"killed": killed}

    async def block_source(self, address: str, seconds: float | None = None) -> dict[str, Any]:
        self.guard.block(address, seconds)
        closed = 0
        for link in list(self.links):
            if link.source == address:
                link.close(Refusal(Reason.SOURCE_BLOCKED, "Source blocked by an operator"), event=True)
                closed += 1
        return {"blocked": address, "closed": closed}

    async def unblock_source(self, address: str) -> dict[str, Any]:
        return {"unblocked": self.guard.unblock(address)}

    async def failover_drill(self) -> dict[str, Any]:
        n = len(self.config.upstream.endpoints)
        fo = self.failover
        fo.pending_since = perf()
        fo.trigger = "drill"
        fo.active = (fo.active + 1) % n
        closed = 0
        for link in list(self.links):
            if link.ats is not None:
                link.close(Refusal(Reason.UPSTREAM_UNAVAILABLE, "Failover drill"), event=False)
                closed += 1
        self.recorder.submit([SecurityEvent(None, Outcome.INFO, f"Failover drill: now endpoint {fo.active}",
                                            session=None, kind="failover.drill")])
        return {"active": fo.active, "closed": closed}


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _certificate_dates(config: ProxyConfig) -> dict[str, tuple[float, float]]:
    """not_before / not_after (epoch seconds) of every certificate the proxy presents or trusts."""
    from cryptography import x509

    out: dict[str, tuple[float, float]] = {}
    for leg, files in (("proxy", config.tls), ("upstream", config.upstream.tls)):
        if files is None:
            continue
        for role, path in (("cert", files.cert), ("ca", files.ca)):
            try:
                with open(path, "rb") as f:
                    cert = x509.load_pem_x509_certificate(f.read())
            except (OSError, ValueError):
                continue
            out[f"{leg}.{role}"] = (cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())
    return out


def _revoked_serials(crl_path: Any) -> frozenset[int]:
    if not crl_path:
        return frozenset()
    from cryptography import x509

    with open(crl_path, "rb") as f:
        crl = x509.load_pem_x509_crl(f.read())
    return frozenset(r.serial_number for r in crl)


def _peer_serial(link: Link) -> int | None:
    transport = link.oms.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return None
    ident = tlsmod.peer_identity(sslobj)
    return ident.serial if ident else None


async def serve(config: ProxyConfig, reuseport_workers: int = 0) -> None:
    """Run until cancelled (SIGINT/SIGTERM)."""
    import gc
    import signal

    from .recorder import Recorder

    registry = CollectorRegistry()
    proxy = FixProxy(config, Recorder(registry=registry, jsonl=config.events_jsonl), registry)
    proxy.reuseport_workers = reuseport_workers
    await proxy.start()
    # What start-up built (dictionaries, plans, config) lives as long as the process: keep the
    # collector from walking it again at every full collection.
    gc.collect()
    gc.freeze()
    admin_server = None
    if config.admin is not None:
        from .admin import start_admin_server

        admin_server = await start_admin_server(config.admin.socket, proxy, config.admin.allowed_uids,
                                                 proxy.audit_admin)
    if config.metrics_listen is not None:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_listen[1], addr=config.metrics_listen[0], registry=registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if admin_server is not None:
            admin_server.close()
        await proxy.stop()


def run(config: ProxyConfig, *, reuseport_workers: int = 0) -> None:
    """Entry point for `fixproxy run` (and for each worker: `reuseport_workers` = their number, see
    fixproxy.workers): uvloop when installed."""
    if config.workers > 1 and not reuseport_workers:
        from .workers import supervise

        supervise(config, config.workers)
        return
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, reuseport_workers))
    else:
        uvloop.run(serve(config, reuseport_workers))
