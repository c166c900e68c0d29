"""Regenerate the sample captures of `fixproxy replay` (tests/test_replay.py reads them).

    PYTHONPATH=. python tests/data/captures/make_captures.py

- ``FIX.4.4-OMS1-ATS.messages.log``: a real QuickFIX message log. A `Stack` (fixproxy.demo: QuickFIX
  ATS behind TLS, fixproxy, QuickFIX OMS) trades: 48 limit orders (each filled), one stop order
  (it rests: the demo ATS fills only market and limit orders), a cancel of that stop order, and a
  status request for the first order. The OMS's ``*.messages.current.log`` is copied as it is.
- ``hostile-OMS2.pipe.log``: a ``|``-separated text capture of an OMS2 session (both directions,
  ISO timestamps) with hostile messages mixed in: a bad CheckSum, a MsgType the demo config does
  not allow (News, 35=B), a dictionary violation (Side 54=Z) and a spoofed OnBehalfOfCompID
  (115=OMS1). Built with the codec, with a fixed clock, so it is the same on every run.
- ``hostile-OMS2.raw``: the same messages as one raw SOH stream (no timestamps, no newlines).

The QuickFIX log differs on every run (times, ids); the hostile captures do not.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent.parent))

from fixproxy.codec import SOH, encode  # noqa: E402

QUICKFIX_LOG = HERE / "FIX.4.4-OMS1-ATS.messages.log"
HOSTILE_TEXT = HERE / "hostile-OMS2.pipe.log"
HOSTILE_RAW = HERE / "hostile-OMS2.raw"

LIMIT_ORDERS = 48


def make_quickfix_log() -> None:
    from fixproxy.demo import Stack

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), ["OMS1"], sessions={"OMS1": {}})
        with stack:
            oms = stack.oms["OMS1"]
            if not oms.wait_logged_on(20):
                raise SystemExit("OMS1 did not log on")
            for i in range(LIMIT_ORDERS):
                oms.send_new_order(f"CAP-{i:04d}", "VOD.L", "1" if i % 3 else "2", 100 + i, 10.5 + (i % 5) / 10)
            oms.send_new_order("CAP-STOP", "VOD.L", "2", 500, None, ord_type="3", extra=[(99, "9.5")])
            if not oms.wait_exec("CAP-STOP", "0", 20):
                raise SystemExit("the stop order was not acknowledged")
            oms.send_cancel("CAP-STOP-X", "CAP-STOP", "VOD.L", "2", 500)
            if not oms.wait_exec("CAP-STOP-X", "4", 20):
                raise SystemExit("the cancel was not acknowledged")
            oms.send_status("CAP-0000", "VOD.L", "2")
            done = oms.wait_for(lambda o: sum(1 for r in o.exec_reports if r.ord_status == "2") >= LIMIT_ORDERS
                                and any(r.exec_type == "I" for r in o.exec_reports), 20)
            if not done:
                raise SystemExit("not every order was answered")
        log = Path(tmp) / "oms-OMS1-log" / "FIX.4.4-OMS1-ATS.messages.current.log"
        shutil.copyfile(log, QUICKFIX_LOG)


# -- the hostile capture -------------------------------------------------------------------------

T0 = datetime(2026, 3, 2, 9, 30, 0, tzinfo=UTC).timestamp()


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%d-%H:%M:%S.%f")[:-3]


def hostile_messages() -> list[tuple[float, bytes]]:
    """(capture time, bytes) in capture order."""
    out: list[tuple[float, bytes]] = []
    seq = {"OMS2": 1, "ATS": 1}
    clock = [T0]

    def msg(sender: str, mtype: str, fields: list[tuple[int, str]], *, dt: float = 0.05) -> bytes:
        clock[0] += dt
        target = "ATS" if sender == "OMS2" else "OMS2"
        n = seq[sender]
        seq[sender] += 1
        raw = encode("FIX.4.4", [(35, mtype), (49, sender), (56, target), (34, n), (52, _ts(clock[0])), *fields])
        out.append((clock[0], raw))
        return raw

    def order(cl: str, *extra: tuple[int, str], side: str = "1") -> list[tuple[int, str]]:
        return [(11, cl), (21, "1"), (55, "VOD.L"), (54, side), (60, _ts(clock[0])), (38, "100"), (40, "2"),
                (44, "10.5"), *extra]

    def fills(cl: str, oid: str) -> None:
        common = [(37, oid), (11, cl)]
        tail = [(55, "VOD.L"), (54, "1"), (38, "100"), (40, "2")]
        msg("ATS", "8", [*common, (17, f"E{oid}a"), (150, "0"), (39, "0"), *tail, (151, "100"), (14, "0"),
                         (6, "0"), (60, _ts(clock[0]))], dt=0.001)
        msg("ATS", "8", [*common, (17, f"E{oid}b"), (150, "F"), (39, "2"), *tail, (151, "0"), (14, "100"),
                         (6, "10.5"), (60, _ts(clock[0])), (32, "100"), (31, "10.5")], dt=0.001)

    msg("OMS2", "A", [(98, "0"), (108, "30")])
    msg("ATS", "A", [(98, "0"), (108, "30")], dt=0.002)
    msg("OMS2", "D", order("HOST-0001"))
    fills("HOST-0001", "O1")
    # 1. a bad CheckSum: the last digits of 10= changed (the ATS of the capture ignored it)
    good = msg("OMS2", "D", order("HOST-0002"))
    cs = int(good[-4:-1])
    out[-1] = (out[-1][0], good[:-4] + b"%03d\x01" % ((cs + 7) % 256))
    msg("OMS2", "D", order("HOST-0003"))
    fills("HOST-0003", "O2")
    # 2. a MsgType the demo config does not allow inbound (News); the ATS answered 35=j
    news = msg("OMS2", "B", [(148, "hello"), (33, "1"), (58, "not an order")])
    msg("ATS", "j", [(45, news.split(b"\x0134=")[1].split(b"\x01")[0].decode()), (372, "B"), (380, "3"),
                     (58, "unsupported message type B")], dt=0.002)
    # 3. a data-dictionary violation: Side (54) has no value Z; the ATS's engine rejected it
    bad = msg("OMS2", "D", order("HOST-0004", side="Z"))
    msg("ATS", "3", [(45, bad.split(b"\x0134=")[1].split(b"\x01")[0].decode()), (371, "54"), (372, "D"),
                     (373, "5"), (58, "Value is incorrect (out of range) for this tag")], dt=0.002)
    # 4. a spoofed OnBehalfOfCompID: OMS2 claiming to act for OMS1; the ATS of the capture filled it
    msg("OMS2", "D", [(115, "OMS1"), *order("HOST-0005")])
    fills("HOST-0005", "O3")
    msg("OMS2", "D", order("HOST-0006"))
    fills("HOST-0006", "O4")
    msg("OMS2", "0", [], dt=1.0)
    msg("OMS2", "D", order("HOST-0007"))
    fills("HOST-0007", "O5")
    msg("OMS2", "5", [], dt=0.5)
    msg("ATS", "5", [], dt=0.002)
    return out


def make_hostile() -> None:
    messages = hostile_messages()
    lines = ["# fixproxy sample capture: OMS2 <-> ATS with hostile messages (see make_captures.py)"]
    for t, raw in messages:
        stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = raw.replace(SOH, b"|").decode()
        lines.append(f"{stamp} {text}")
    HOSTILE_TEXT.write_text("\n".join(lines) + "\n")
    HOSTILE_RAW.write_bytes(b"".join(raw for _, raw in messages))


def main() -> None:
    make_hostile()
    print(f"wrote {HOSTILE_TEXT.name} and {HOSTILE_RAW.name}")
    if "--hostile-only" not in sys.argv:
        t0 = time.monotonic()
        make_quickfix_log()
        print(f"wrote {QUICKFIX_LOG.name} ({time.monotonic() - t0:.1f} s)")


if __name__ == "__main__":
    main()
