"""The sink: a minimal FIX acceptor standing in for the ATS (raw asyncio + uvloop, not QuickFIX:
QuickFIX would cost more per message than the proxy under test).

It answers Logon (with ResetSeqNumFlag when asked), TestRequest and Logout, and for every
NewOrderSingle takes the one-way latency: ``time.monotonic_ns()`` when its read arrived minus the
send time in ClOrdID. Samples go to a preallocated array; per session it counts messages and checks
that MsgSeqNum has no gap and no repeat. A SequenceReset-GapFill is what the proxy sends in place
of a message it refused: it is counted as a loss too.

Runs in its own process (``serve``), commanded over a ``multiprocessing`` pipe by the orchestrator:
``("case", capacity)`` clears the counters, ``("stats",)`` returns them (with exact percentiles),
``("stop",)`` ends it. ``received`` (shared memory) is its running count of orders, which the load
generator reads to bound its in-flight window and the orchestrator to know when all arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from array import array
from typing import Any

from fixproxy.proxy import ReadsIntoBuffer

from . import fix
from .stats import summarise

_now_ns = time.monotonic_ns
_VIEW = memoryview(bytearray(256 * 1024))  # every TLS connection's read buffer (one loop, one thread)


class CaseStats:
    """Counters of the case in progress (shared by every connection of the sink)."""

    def __init__(self, capacity: int) -> None:
        self.samples = array("q", [0]) * max(1, capacity)
        self.arrivals = array("q", [0]) * max(1, capacity)  # monotonic ns of each sample's read
        self.n = 0
        self.capacity = max(1, capacity)
        self.overflow = 0  # samples that did not fit (counted, not stored)
        self.orders: dict[bytes, int] = {}  # SenderCompID -> NewOrderSingles received (with warm-up)
        self.gaps = 0  # MsgSeqNum numbers skipped
        self.repeats = 0  # MsgSeqNum numbers seen again (or going back)
        self.gap_fills = 0  # SequenceReset-GapFill: a message refused on the way
        self.other: dict[str, int] = {}  # unexpected message types
        self.bad = 0  # reads the sink could not parse
        self.first_ns = 0
        self.last_ns = 0
        self.logons = 0
        self.logouts = 0
        self.connections = 0


class _SinkBase(asyncio.BaseProtocol):

    __slots__ = ("buf", "compid", "expected", "seq", "server", "transport")

    def __init__(self, server: Sink) -> None:
        self.server = server
        self.buf = b""
        self.compid = b""
        self.expected = 1
        self.seq = 1  # our next outgoing MsgSeqNum
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.case.connections += 1

    def data_received(self, data: bytes) -> None:
        now = _now_ns()
        buf = self.buf + data if self.buf else data
        st = self.server.case
        n = len(buf)
        pos = 0
        got = 0
        find = buf.find
        samples = st.samples
        arrivals = st.arrivals
        k = st.n
        cap = st.capacity
        expected = self.expected
        while True:
            end = find(b"\x0110=", pos)
            if end < 0 or end + 8 > n:
                break
            i = find(b"\x0135=", pos, end)
            if i < 0:
                st.bad += 1
                pos = end + 8
                continue
            if buf[i + 4:i + 6] == b"D\x01":
                # MsgSeqNum directly follows MsgType in what the generator (and the proxy) send,
                # but look for it rather than assume.
                j = find(b"\x0134=", pos, end) + 4
                seq = int(buf[j:find(b"\x01", j)])
                if seq != expected:
                    if seq > expected:
                        st.gaps += seq - expected
                    else:
                        st.repeats += 1
                expected = seq + 1
                j = find(b"\x0111=", i, end) + 4
                if buf[j] != 87:  # b"W": warm-up, counted but not sampled
                    dot = find(b".", j, end)
                    if k < cap:
                        samples[k] = now - int(buf[j:dot])
                        arrivals[k] = now
                        k += 1
                    else:
                        st.overflow += 1
                got += 1
            else:
                self.expected = expected
                self.admin(buf[pos:end + 8])
                expected = self.expected
            pos = end + 8
        self.expected = expected
        st.n = k
        self.buf = buf[pos:] if pos < n else b""
        if got:
            st.orders[self.compid] = st.orders.get(self.compid, 0) + got
            self.server.received[0] += got
            if not st.first_ns:
                st.first_ns = now
            st.last_ns = now

    def admin(self, msg: bytes) -> None:
        st = self.server.case
        mt = fix.msg_type(msg)
        seq_b = fix.field(msg, b"34")
        seq = int(seq_b) if seq_b and seq_b.isdigit() else 0
        if mt == b"A":
            self.compid = fix.field(msg, b"49") or b"?"
            reset = fix.field(msg, b"141") == b"Y"
            if reset:
                self.seq = 1
            self.expected = seq + 1
            st.logons += 1
            self.send(fix.logon(self.seq, fix.TARGET, self.compid, fix.SendingTime()(),
                                heartbeat=int(fix.field(msg, b"108") or b"30"), reset=reset))
            return
        if seq:
            if seq != self.expected:
                if seq > self.expected:
                    st.gaps += seq - self.expected
                else:
                    st.repeats += 1
            self.expected = seq + 1
        if mt == b"1":
            self.send(fix.heartbeat(self.seq, fix.TARGET, self.compid, fix.SendingTime()(), fix.field(msg, b"112")))
        elif mt == b"0":
            pass
        elif mt == b"5":
            st.logouts += 1
            self.send(fix.logout(self.seq, fix.TARGET, self.compid, fix.SendingTime()()))
            self.transport.close()
        elif mt == b"4":
            if fix.field(msg, b"123") == b"Y":
                st.gap_fills += 1
            new = fix.field(msg, b"36")
            if new and new.isdigit():
                self.expected = int(new)
        else:
            key = mt.decode("latin-1")
            st.other[key] = st.other.get(key, 0) + 1

    def send(self, data: bytes) -> None:
        self.seq += 1
        if not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.case.connections -= 1


class Sink:
    def __init__(self, received: Any) -> None:
        self.received = received
        self.case = CaseStats(1)

    def new_case(self, capacity: int) -> None:
        self.case = CaseStats(capacity)
        self.received[0] = 0

    def stats(self) -> dict[str, Any]:
        st = self.case
        lat = summarise(st.samples[:st.n])
        # The worst latency in each 100 ms of the case: one stall and a spread-out tail look alike in
        # the percentiles, not here.
        timeline: list[int] = []
        if st.n:
            t0 = st.arrivals[0]
            for i in range(st.n):
                w = (st.arrivals[i] - t0) // 100_000_000
                while len(timeline) <= w:
                    timeline.append(0)
                if st.samples[i] > timeline[w]:
                    timeline[w] = st.samples[i]
        return {
            "orders": sum(st.orders.values()), "orders_by_session": {k.decode(): v for k, v in st.orders.items()},
            "sampled": st.n, "overflow": st.overflow, "gaps": st.gaps, "repeats": st.repeats,
            "gap_fills": st.gap_fills, "other": st.other, "unparsed": st.bad, "logons": st.logons,
            "logouts": st.logouts, "first_ns": st.first_ns, "last_ns": st.last_ns, "latency_us": lat,
            "open_connections": st.connections,
            "worst_us_per_100ms": [round(x / 1000) for x in timeline],
        }


class SinkProtocol(_SinkBase, asyncio.Protocol):
    """Over plain TCP: uvloop reads into a buffer of its own and hands over bytes."""

    __slots__ = ()


class TlsSinkProtocol(ReadsIntoBuffer, _SinkBase):
    """Over TLS, reads into one buffer shared by every connection (one loop), as the relay and
    fixproxy do (fixproxy.proxy.ReadsIntoBuffer)."""

    __slots__ = ()
    view = _VIEW


def serve(conn: Any, received: Any, tls: dict[str, str] | None, host: str = "127.0.0.1") -> None:
    """Process entry point: listen, send ``("ready", port)``, then obey the pipe until ``stop``."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    ctx: ssl.SSLContext | None = None
    if tls is not None:
        from fixproxy import tls as tlsmod

        ctx = tlsmod.server_context(tls["cert"], tls["key"], tls["ca"])  # mutual TLS, as the ATS side
    sink = Sink(received)
    proto = SinkProtocol if ctx is None else TlsSinkProtocol
    server = loop.run_until_complete(loop.create_server(lambda: proto(sink), host, 0, ssl=ctx,
                                                        backlog=2048))
    port = server.sockets[0].getsockname()[1]
    done = loop.create_future()

    def on_command() -> None:
        try:
            cmd = conn.recv()
        except EOFError:
            cmd = ("stop",)
        try:
            if cmd[0] == "case":
                sink.new_case(int(cmd[1]))
                conn.send(("ok",))
            elif cmd[0] == "stats":
                conn.send(("stats", sink.stats()))
            elif cmd[0] == "stop" and not done.done():
                done.set_result(None)
        except Exception as exc:  # reported, never silent
            conn.send(("error", f"{type(exc).__name__}: {exc}"))

    loop.add_reader(conn.fileno(), on_command)
    conn.send(("ready", port, os.getpid()))
    try:
        loop.run_until_complete(done)
    finally:
        loop.remove_reader(conn.fileno())
        server.close()
        loop.close()
