"""FIX 4.4 messages for the load generator and a minimal framer for the sink.

Every NewOrderSingle carries its send time, ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock
for every process of the machine), in ClOrdID (11) as ``<ns>.<MsgSeqNum>``; warm-up messages get
a ``W`` in front so the sink counts them (for loss) without sampling their latency. The timestamp
sits in a standard field, so the proxy's strict dictionary validation applies unchanged.
"""

from __future__ import annotations

import time

SOH = b"\x01"
BEGIN = b"FIX.4.4"
TARGET = b"ATS"
WARM = b"W"


class SendingTime:
    """UTCTimestamp with milliseconds, rebuilt at most once per millisecond (formatting it for
    every message would cost the load generator more than the message itself)."""

    __slots__ = ("_ms", "_value")

    def __init__(self) -> None:
        self._ms = -1
        self._value = b""

    def __call__(self) -> bytes:
        t = time.time()
        ms = int(t * 1000)
        if ms != self._ms:
            self._ms = ms
            self._value = time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(t)).encode() + b".%03d" % (ms % 1000)
        return self._value


def finish(body: bytes) -> bytes:
    """8=/9= in front, 10= behind."""
    msg = b"8=FIX.4.4\x019=%d\x01%b" % (len(body), body)
    return msg + b"10=%03d\x01" % (sum(msg) & 255)


def header(msg_type: bytes, seq: int, sender: bytes, target: bytes, sending_time: bytes) -> bytes:
    return b"35=%b\x0134=%d\x0149=%b\x0152=%b\x0156=%b\x01" % (msg_type, seq, sender, sending_time, target)


def logon(seq: int, sender: bytes, target: bytes, sending_time: bytes, *, heartbeat: int = 30,
          reset: bool = True) -> bytes:
    body = header(b"A", seq, sender, target, sending_time) + b"98=0\x01108=%d\x01" % heartbeat
    if reset:
        body += b"141=Y\x01"
    return finish(body)


def logout(seq: int, sender: bytes, target: bytes, sending_time: bytes) -> bytes:
    return finish(header(b"5", seq, sender, target, sending_time))


def heartbeat(seq: int, sender: bytes, target: bytes, sending_time: bytes, test_req_id: bytes | None) -> bytes:
    body = header(b"0", seq, sender, target, sending_time)
    if test_req_id is not None:
        body += b"112=%b\x01" % test_req_id
    return finish(body)


# The order's body after ClOrdID: a limit order with an account, a venue and a currency, so that the
# whole message is about 210 bytes (the size the ANCHORS.md figures were measured with).
_NOS_TAIL = (b"\x011=ACCT-000001\x0121=1\x0155=VOD.L\x0154=1\x0160=%b\x0138=10000\x0140=2\x0144=123.45"
             b"\x0159=0\x01528=A\x01207=XLON\x0115=GBP\x01")
_NOS = b"35=D\x0134=%d\x0149=%b\x0152=%b\x0156=ATS\x0111=%b%d.%d" + _NOS_TAIL


def new_order_single(seq: int, sender: bytes, sending_time: bytes, ts_ns: int, warm: bool = False) -> bytes:
    body = _NOS % (seq, sender, sending_time, WARM if warm else b"", ts_ns, seq, sending_time)
    msg = b"8=FIX.4.4\x019=%d\x01%b" % (len(body), body)
    return msg + b"10=%03d\x01" % (sum(msg) & 255)


def split_messages(buf: bytes) -> tuple[list[bytes], bytes]:
    """Complete messages in ``buf`` (by the ``<SOH>10=nnn<SOH>`` trailer) and the rest."""
    out = []
    pos = 0
    n = len(buf)
    while True:
        i = buf.find(b"\x0110=", pos)
        if i < 0 or i + 8 > n:
            return out, buf[pos:]
        out.append(buf[pos:i + 8])
        pos = i + 8


def field(msg: bytes, tag: bytes) -> bytes | None:
    """The first value of ``tag`` (header tags and the few the sink needs)."""
    key = b"\x01" + tag + b"="
    i = msg.find(key)
    if i < 0:
        return None
    i += len(key)
    j = msg.find(b"\x01", i)
    return msg[i:j]


def msg_type(msg: bytes) -> bytes:
    return field(msg, b"35") or b""
