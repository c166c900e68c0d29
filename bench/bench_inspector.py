"""Per-message CPU cost of the whole sans-IO path the proxy runs per read: framing, syntax,
dictionary (off / lenient / strict), session checks (CompIDs, MsgSeqNum, policy, rate limit,
SendingTime) and the forwarding decision. No sockets: the floor under the asyncio layer.

Usage: python bench/bench_inspector.py [--messages N] [--runs R]
"""

from __future__ import annotations

import argparse
import statistics
import time

from fixproxy.codec import encode
from fixproxy.dictionary import load_for_version
from fixproxy.policy import RateLimit, SessionPolicy, ValidationMode
from fixproxy.session import SessionInspector, SessionState, utc_timestamp


def run_once(mode: ValidationMode, n: int) -> float:
    policy = SessionPolicy(name="OMS1", begin_string="FIX.4.4", sender_comp_id="OMS1", target_comp_id="ATS",
                           validation=mode, rate_limit=RateLimit(rate=1e9, burst=10**9, disconnect_after=10**9))
    state = SessionState(policy)
    dd = load_for_version(b"FIX.4.4")

    def validator(p: SessionPolicy):  # the same wiring as fixproxy.proxy
        if p.validation is ValidationMode.OFF:
            return None
        return dd.validator(p.validation.value)

    insp = SessionInspector(lambda _m: state, validator=validator)
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
    t0 = time.perf_counter()
    for c in chunks:
        forwarded += len(insp.from_initiator(c).to_acceptor)
    dt = time.perf_counter() - t0
    if forwarded != n:
        raise SystemExit(f"{mode.value}: forwarded {forwarded} of {n}")
    return dt / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    print(f"{'path (FIX 4.4 NewOrderSingle, ~200 B, 4 KiB reads)':55s} {'µs/msg median':>14s} {'min':>6s} "
          f"{'msg/s':>9s}")
    for mode in (ValidationMode.OFF, ValidationMode.LENIENT, ValidationMode.STRICT):
        xs = [run_once(mode, args.messages) for _ in range(args.runs)]
        med = statistics.median(xs)
        print(f"{'inspector, dictionary ' + mode.value:55s} {med:14.2f} {min(xs):6.2f} {1e6 / med:9,.0f}")


if __name__ == "__main__":
    main()
