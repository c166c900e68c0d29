"""Codec throughput benchmark (not a test): ``make bench-codec`` or ``python bench/bench_codec.py``.

Rows, each for a FIX 4.4 NewOrderSingle and ExecutionReport of about 200 bytes:
  decode              Decoder.feed: framing, BodyLength, CheckSum, 8/9/35 order, Message objects
  + check_syntax      ... and Message.check_syntax (tags, values, data fields, duplicates)
  + dictionary        ... and fixproxy.dictionary's strict validator (the inspector's call), when it exists
  quickfix            quickfix.Message(str, dd, validate) and dd.validate, for comparison (same NOS)

Method: a stream of N messages (distinct MsgSeqNum/ClOrdID) is fed in CHUNK-byte pieces, as a
socket would deliver it; one untimed warm-up run, then RUNS timed runs with time.perf_counter_ns,
the garbage collector off while timing (as timeit does). Reported: the median and the minimum
per-message time and the messages per second at the median. See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from fixgen import FIX44, Builder  # noqa: E402

from fixproxy.codec import Decoder, Message  # noqa: E402

try:
    from fixproxy import dictionary as _dictionary
except ImportError:  # not written yet
    _dictionary = None  # type: ignore[assignment]
try:
    import quickfix as _quickfix
except ImportError:
    _quickfix = None  # type: ignore[assignment]

SPECS = ROOT / "specs"


def build_stream(kind: str, n: int) -> list[bytes]:
    """`n` real-shaped FIX 4.4 messages of one kind, ~200 bytes each, distinct sequence numbers."""
    if kind == "NOS":
        b = Builder(FIX44, sender="OMS1", target="EXCH", seq=1000)
        return [b.new_order_single(f"ORD-{i:08d}", "AAPL", side="1", qty=100, price="150.25",
                                   parties=(("TRADER-9", "D", 11),)) for i in range(n)]
    if kind == "ER":
        b = Builder(FIX44, sender="EXCH", target="OMS1", seq=1000)
        return [b.execution_report(f"EX-{i:08d}", f"EXEC-{i:08d}", f"ORD-{i:08d}", "AAPL",
                                   qty=1000, last_qty=100, cum_qty=300) for i in range(n)]
    raise ValueError(kind)


def chunked(msgs: list[bytes], size: int) -> list[bytes]:
    stream = b"".join(msgs)
    return [stream[i:i + size] for i in range(0, len(stream), size)]


# -- the measured loops: each returns the number of messages it handled ---------------------------

def run_decode(chunks: list[bytes]) -> int:
    d = Decoder()
    n = 0
    for c in chunks:
        n += len(d.feed(c))
    return n


def run_syntax(chunks: list[bytes]) -> int:
    d = Decoder()
    n = 0
    for c in chunks:
        for m in d.feed(c):
            if m.check_syntax() is not None:  # type: ignore[union-attr]
                raise AssertionError(m)
            n += 1
    return n


def make_run_dictionary(dd: object) -> Callable[[list[bytes]], int]:
    check = dd.validator("strict")  # type: ignore[attr-defined]  # what the session inspector calls

    def run_dictionary(chunks: list[bytes]) -> int:
        d = Decoder()
        n = 0
        for c in chunks:
            for m in d.feed(c):
                assert isinstance(m, Message)
                if m.check_syntax() is not None:
                    raise AssertionError(m)
                r = check(m)
                if r is not None:
                    raise AssertionError(r)
                n += 1
        return n

    return run_dictionary


def measure(fn: Callable[[], int], n: int, runs: int) -> tuple[float, float]:
    """(median, min) nanoseconds per message over `runs` timed runs, after one warm-up."""
    if fn() != n:
        raise AssertionError(f"{fn.__name__}: expected {n} messages")
    per_msg = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            count = fn()
            elapsed = time.perf_counter_ns() - t0
        finally:
            gc.enable()
        if count != n:
            raise AssertionError(f"expected {n} messages, got {count}")
        per_msg.append(elapsed / n)
    return statistics.median(per_msg), min(per_msg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="messages per run (default 20000)")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per row (default 7)")
    ap.add_argument("--chunk", type=int, default=4096, help="bytes per feed() (default 4096)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = ap.parse_args(argv)
    n, runs = args.n, args.runs

    rows: list[dict[str, object]] = []
    notes: list[str] = []

    def add(name: str, kind: str, size: int, fn: Callable[[], int]) -> None:
        med, best = measure(fn, n, runs)
        rows.append({"row": name, "message": kind, "bytes": size, "median_us": med / 1000,
                     "min_us": best / 1000, "msgs_per_s": 1e9 / med})

    dd = None
    if _dictionary is not None:
        dd = _dictionary.load_for_version(FIX44)
    else:
        notes.append("dictionary: not available (fixproxy/dictionary.py missing)")

    streams = {kind: build_stream(kind, n) for kind in ("NOS", "ER")}
    for kind, msgs in streams.items():
        chunks = chunked(msgs, args.chunk)
        size = len(msgs[0])
        add("decode (framing + checksum)", kind, size, lambda c=chunks: run_decode(c))
        add("decode + check_syntax", kind, size, lambda c=chunks: run_syntax(c))
        if dd is not None:
            run_dictionary = make_run_dictionary(dd)
            add("decode + check_syntax + dictionary strict", kind, size,
                lambda c=chunks, f=run_dictionary: f(c))

    if _quickfix is not None:
        qf = _quickfix
        qdd = qf.DataDictionary(str(SPECS / "FIX44.xml"))
        texts = [m.decode("latin-1") for m in streams["NOS"]]
        size = len(streams["NOS"][0])

        def qf_parse(validate: bool) -> Callable[[], int]:
            def run() -> int:
                for s in texts:
                    qf.Message(s, qdd, validate)
                return len(texts)
            return run

        def qf_validate() -> int:
            for s in texts:
                qdd.validate(qf.Message(s, qdd, True))
            return len(texts)

        add("quickfix Message(str, dd, False)", "NOS", size, qf_parse(False))
        add("quickfix Message(str, dd, True)", "NOS", size, qf_parse(True))
        add("quickfix Message(str, dd, True) + dd.validate", "NOS", size, qf_validate)
    else:
        notes.append("quickfix: not available (pip install quickfix)")

    py = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"fixproxy codec benchmark -- {py} on {platform.system()} {platform.machine()}")
    print(f"{n} messages per run, fed in {args.chunk}-byte chunks; {runs} timed runs, median and min")
    print("NOTE: shared machine, timings are noisy: compare rows of the same run, not across runs.")
    print()
    header = f"{'row':<47} {'msg':<4} {'bytes':>5} {'msg/s (median)':>15} {'µs/msg median':>14} {'min':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['row']:<47} {r['message']:<4} {r['bytes']:>5} {r['msgs_per_s']:>15,.0f} "
              f"{r['median_us']:>14.2f} {r['min_us']:>7.2f}")
    for note in notes:
        print(note)

    if args.json:
        doc = {"python": py, "platform": platform.platform(), "machine": "shared (noisy)",
               "n": n, "runs": runs, "chunk_bytes": args.chunk, "rows": rows, "notes": notes}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
