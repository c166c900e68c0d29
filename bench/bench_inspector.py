"""Per-message CPU cost of the whole sans-IO path the proxy runs per read: framing, syntax,
dictionary (off / lenient / strict), session checks (CompIDs, MsgSeqNum, policy, rate limit,
SendingTime) and the forwarding decision. No sockets: the floor under the asyncio layer.

Usage: python bench/bench_inspector.py [--messages N] [--runs R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fixproxy.audit import AuditTrail, generate_signing_key
from fixproxy.codec import encode
from fixproxy.dictionary import load_for_version
from fixproxy.kpis import AnomalyDetector, LatencyStats
from fixproxy.leakguard import LeakGuard
from fixproxy.policy import RateLimit, SessionPolicy, ValidationMode
from fixproxy.session import SessionInspector, SessionState, utc_timestamp


def run_once(mode: ValidationMode, n: int, guard: bool = True, instrumentation=None) -> float:
    policy = SessionPolicy(name="OMS1", begin_string="FIX.4.4", sender_comp_id="OMS1", target_comp_id="ATS",
                           validation=mode, rate_limit=RateLimit(rate=1e9, burst=10**9, disconnect_after=10**9))
    state = SessionState(policy)
    dd = load_for_version(b"FIX.4.4")

    def validator(p: SessionPolicy):  # the same wiring as fixproxy.proxy
        if p.validation is ValidationMode.OFF:
            return None
        return dd.validator(p.validation.value)

    insp = SessionInspector(lambda _m: state, validator=validator, leak_guard=LeakGuard() if guard else None)
    ts = utc_timestamp()

    def msg(seq: int, mt: str, *fields: tuple[int, object]) -> bytes:
        return encode("FIX.4.4", [(35, mt), (49, "OMS1"), (56, "ATS"), (34, seq), (52, ts), *fields])

    insp.from_initiator(msg(1, "A", (98, 0), (108, 30)))
    insp.from_acceptor(encode("FIX.4.4", [(35, "A"), (49, "ATS"), (56, "OMS1"), (34, 1), (52, ts), (98, 0),
                                          (108, 30)]))
    stream = b"".join(
        msg(i, "D", (11, f"ORD-{i:012d}"), (1, "ACCT-0001"), (21, "1"), (55, "VOD.L"), (54, "1"), (60, ts),
            (38, 10000), (40, "2"), (44, "123.45"), (59, "0"), (207, "XLON"), (15, "GBP"))
        for i in range(2, n + 2))
    chunks = [stream[i:i + 4096] for i in range(0, len(stream), 4096)]
    forwarded = 0
    results = []
    t0 = time.perf_counter()
    for c in chunks:
        res = insp.from_initiator(c, time.perf_counter())
        forwarded += len(res.to_acceptor)
        results.append(res)
    dt = time.perf_counter() - t0
    if forwarded != n:
        raise SystemExit(f"{mode.value}: forwarded {forwarded} of {n}")
    if instrumentation is not None:
        return instrumentation(results) / n * 1e6
    return dt / n * 1e6


def metrics_cost(results: list) -> float:
    return instrumentation_cost(results, audit=False)


def audit_cost(results: list) -> float:
    return instrumentation_cost(results, audit=True) - instrumentation_cost(results, audit=False)


def instrumentation_cost(results: list, audit: bool = True) -> float:
    """What fixproxy.proxy.Link.apply adds per read when everything is on: the latency histogram by
    MsgType, the session's anomaly detector, the audit record of the read, and the audit trail's
    flush (hashing, JSON, write; every 50 ms in the proxy, here every 20 reads)."""
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "audit.pem"
        generate_signing_key(key)
        trail = AuditTrail.open_or_resume(Path(tmp) / "audit", key, fsync="never")
        latency = LatencyStats()
        detector = AnomalyDetector()
        t0 = time.perf_counter()
        for i, res in enumerate(results):
            lat = time.perf_counter() - t0 if i else 0.00002
            latency.observe("inbound", lat, [m.msg_type for m in res.forwarded])
            detector.observe(lat)
            if audit:
                trail.append_messages("OMS1", "inbound", t0, list(res.forwarded))  # as the proxy does
                if i % 20 == 19:
                    trail.flush()
        if audit:
            trail.flush()
        dt = time.perf_counter() - t0
        trail.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    print(f"{'path (FIX 4.4 NewOrderSingle, ~200 B, 4 KiB reads)':55s} {'µs/msg median':>14s} {'min':>6s} "
          f"{'msg/s':>9s}")
    for mode, guard in ((ValidationMode.OFF, False), (ValidationMode.OFF, True), (ValidationMode.LENIENT, True),
                        (ValidationMode.STRICT, True)):
        xs = [run_once(mode, args.messages, guard) for _ in range(args.runs)]
        med = statistics.median(xs)
        label = f"inspector, dictionary {mode.value}, leak guard {'on' if guard else 'off'}"
        print(f"{label:55s} {med:14.2f} {min(xs):6.2f} {1e6 / med:9,.0f}")
    for label, cost in (("+ metrics (latency histogram, anomaly detector)", metrics_cost),
                        ("+ audit trail (record per read, hash, JSON, write)", audit_cost)):
        xs = [run_once(ValidationMode.STRICT, args.messages, True, cost) for _ in range(args.runs)]
        med = statistics.median(xs)
        print(f"{label:55s} {med:14.2f} {min(xs):6.2f} {'':>9s}")


if __name__ == "__main__":
    main()
