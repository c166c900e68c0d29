"""The load generator: N FIX sessions (blocking sockets, one thread), NewOrderSingles stamped with
their send time.

Two ways to send, both for a fixed duration after a short warm-up (warm-up orders are counted by
the sink, not sampled):

- open loop at a fixed total rate: message i is due at ``t0 + i / rate`` whatever the replies; a
  loop sends what is due, round-robin over the sessions (what falls due together for one session
  goes out in one write), then sleeps until the next is due. ``time.sleep`` overshoots by some tens
  of microseconds, so at 50k msg/s a few messages share a write; each carries the time it was
  written, not the time it was due, so a late generator shows as ``lag``, not as latency;
- saturation: as fast as possible with at most ``window`` orders in flight (sent, not yet counted by
  the sink through the shared ``received`` counter), ``batch`` orders per round.

Runs in its own process (``serve``), commanded over a pipe by the orchestrator: ``("case", spec)``
connects and logs on, ``("go",)`` sends, ``("finish",)`` logs out and reports anything unexpected
the far side sent (a Reject from the proxy, a Logout), ``("stop",)`` ends it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from typing import Any

from . import fix

_now = time.monotonic_ns


class Session:
    __slots__ = ("buf", "compid", "received", "sent", "seq", "sock")

    def __init__(self, compid: bytes, sock: socket.socket) -> None:
        self.compid = compid
        self.sock = sock
        self.seq = 1
        self.buf = b""
        self.sent = 0
        self.received: dict[str, int] = {}  # message types the far side sent, after the Logon reply

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, want: bytes, timeout: float) -> bytes | None:
        """Read messages until one of type ``want``; every other type is counted in ``received``."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.05)
        try:
            while True:
                msgs, self.buf = fix.split_messages(self.buf)
                for i, m in enumerate(msgs):
                    mt = fix.msg_type(m)
                    if mt == want:
                        self.buf = b"".join(msgs[i + 1:]) + self.buf
                        return m
                    key = mt.decode("latin-1")
                    self.received[key] = self.received.get(key, 0) + 1
                if time.monotonic() > deadline:
                    return None
                try:
                    data = self.sock.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                if not data:
                    return None
                self.buf += data
        finally:
            self.sock.settimeout(None)


def connect(spec: dict[str, Any], compid: str, contexts: dict[str, ssl.SSLContext]) -> Session:
    source = spec.get("sources", {}).get(compid)
    sock = socket.create_connection((spec["host"], spec["port"]), timeout=15,
                                    source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ctx = contexts.get(compid)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname=spec.get("server_hostname", "localhost"))
    s = Session(compid.encode(), sock)
    s.send(fix.logon(s.seq, s.compid, fix.TARGET, fix.SendingTime()(), heartbeat=spec.get("heartbeat", 30)))
    s.seq += 1
    reply = s.read_until(b"A", spec.get("logon_timeout", 15.0))
    if reply is None:
        raise ConnectionError(f"{compid}: no Logon reply (received {s.received or 'nothing'})")
    return s


def _contexts(spec: dict[str, Any]) -> dict[str, ssl.SSLContext]:
    tls = spec.get("tls")
    if not tls:
        return {}
    from fixproxy import tls as tlsmod

    return {c: tlsmod.client_context(cert, key, tls["ca"]) for c, (cert, key) in tls["clients"].items()}


def _send_round(sessions: list[Session], k: int, rr: int, warm: bool, now_ns: Any, sending_time: Any) -> int:
    """Send ``k`` orders round-robin from session ``rr``; one write per session. Returns the next rr."""
    n = len(sessions)
    nos = fix.new_order_single
    base, extra = divmod(k, n)
    for i in range(min(k, n)):
        s = sessions[(rr + i) % n]
        c = base + (1 if i < extra else 0)
        st = sending_time()
        ts = now_ns()
        seq = s.seq
        if c == 1:
            s.sock.sendall(nos(seq, s.compid, st, ts, warm))
        else:
            s.sock.sendall(b"".join([nos(q, s.compid, st, ts, warm) for q in range(seq, seq + c)]))
        s.seq = seq + c
        s.sent += c
    return (rr + k) % n


def run_paced(sessions: list[Session], rate: float, duration: float, warmup: float) -> dict[str, Any]:
    interval = 1e9 / rate
    warm = int(rate * warmup)
    total = warm + max(1, int(rate * duration))
    sending_time = fix.SendingTime()
    sent = 0
    rr = 0
    late_max = 0
    late_1ms = 0  # rounds that started more than 1 ms after their first message was due
    rounds = 0
    sleep = time.sleep
    t0 = _now()
    while sent < total:
        now = _now()
        due = int((now - t0) / interval) + 1
        if due > total:
            due = total
        k = due - sent
        if k > 0:
            late = now - (t0 + int(sent * interval))
            if late > late_max:
                late_max = late
            if late > 1_000_000:
                late_1ms += 1
            rounds += 1
            if sent < warm < due:  # the round straddles the end of the warm-up
                rr = _send_round(sessions, warm - sent, rr, True, _now, sending_time)
                rr = _send_round(sessions, due - warm, rr, False, _now, sending_time)
            else:
                rr = _send_round(sessions, k, rr, sent < warm, _now, sending_time)
            sent = due
        else:
            sleep((t0 + sent * interval - now) / 1e9)
    t1 = _now()
    return {"sent": sent, "warmup": warm, "t0_ns": t0, "t1_ns": t1, "rounds": rounds,
            "lag_max_us": late_max / 1000, "rounds_late_1ms": late_1ms}


def run_saturation(sessions: list[Session], duration: float, warmup: float, window: int, batch: int,
                   received: Any) -> dict[str, Any]:
    sending_time = fix.SendingTime()
    sent = 0
    warm = 0
    rr = 0
    full = 0  # rounds that found the window full
    rounds = 0
    sleep = time.sleep
    t0 = _now()
    t_warm = t0 + int(warmup * 1e9)
    t_end = t_warm + int(duration * 1e9)
    while True:
        now = _now()
        if now >= t_end:
            break
        room = window - (sent - received[0])
        if room < len(sessions):
            full += 1
            sleep(0.00002)
            continue
        k = min(room, batch)
        is_warm = now < t_warm
        rr = _send_round(sessions, k, rr, is_warm, _now, sending_time)
        sent += k
        if is_warm:
            warm += k
        rounds += 1
    t1 = _now()
    return {"sent": sent, "warmup": warm, "t0_ns": t0, "t1_ns": t1, "rounds": rounds, "window_full": full}


def serve(conn: Any, received: Any) -> None:
    """Process entry point: obey the pipe until ``stop``."""
    sessions: list[Session] = []
    spec: dict[str, Any] = {}
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            return
        try:
            if cmd[0] == "case":
                spec = cmd[1]
                for s in sessions:
                    with contextlib.suppress(OSError):
                        s.sock.close()
                contexts = _contexts(spec)
                sessions = []
                for c in spec["compids"]:  # appended one by one: a failure leaves none open behind it
                    sessions.append(connect(spec, c, contexts))
                conn.send(("ready", len(sessions)))
            elif cmd[0] == "go":
                if spec.get("rate"):
                    out = run_paced(sessions, spec["rate"], spec["duration"], spec["warmup"])
                else:
                    out = run_saturation(sessions, spec["duration"], spec["warmup"], spec["window"], spec["batch"],
                                         received)
                out["sent_by_session"] = {s.compid.decode(): s.sent for s in sessions}
                conn.send(("done", out))
            elif cmd[0] == "finish":
                logout_replies = 0
                for s in sessions:
                    try:
                        s.send(fix.logout(s.seq, s.compid, fix.TARGET, fix.SendingTime()()))
                        s.seq += 1
                    except OSError:
                        continue
                for s in sessions:
                    with contextlib.suppress(OSError):
                        if s.read_until(b"5", 5.0) is not None:
                            logout_replies += 1
                    with contextlib.suppress(OSError):
                        s.sock.close()
                unexpected: dict[str, int] = {}
                for s in sessions:
                    for k, v in s.received.items():
                        if k != "0":  # a Heartbeat is fine
                            unexpected[k] = unexpected.get(k, 0) + v
                sessions = []
                conn.send(("closed", {"logout_replies": logout_replies, "unexpected": unexpected}))
            elif cmd[0] == "stop":
                return
        except Exception as exc:
            if cmd[0] == "case":
                for s in sessions:
                    with contextlib.suppress(OSError):
                        s.sock.close()
                sessions = []
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
