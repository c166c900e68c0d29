"""Floods against a running proxy while a legitimate QuickFIX OMS trades a steady stream.

Everything on 127.0.0.0/8 and bounded in count and time. For each flood: the legitimate session
gets every order filled, and the DDoS KPIs read 1.0 (hostile blocked, legitimate delivered). The
legitimate orders' latency (send -> fill, measured here) is printed next to a quiet baseline: it is
reported, never asserted (a noisy 2-core machine; the proxy, both QuickFIX engines and the
attackers share this process and its GIL).

Hostile sources other than 127.0.0.1 are other loopback addresses (the client socket is bound to
127.0.0.x before connecting), so the brute-force block they trigger never hits the legitimate OMS.
Blocks are lifted after each test.

`test_reader_that_never_reads_its_rejects`: the proxy's own answers toward a client that does not
read are flow-controlled too (reading from both legs pauses while a write buffer is full).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixproxy import demo
from fixproxy import tls as tlsmod
from fixproxy.demo import Stack
from fixproxy.rawclient import RawFixClient
from fixproxy.session import utc_timestamp

WAIT = 20.0
WRITE_BUFFER_LIMIT = 65536
SESSIONS: dict[str, dict[str, Any]] = {
    "LEGIT": {"rate": 1000.0, "burst": 500},
    "FLOOD": {"rate": 50.0, "burst": 20, "disconnect_after": 100},
    "SLOWR": {"rate": 100000.0, "burst": 100000, "disconnect_after": 100000},
    "DRIP": {},
    # Every order but the first refused (rate limited), never disconnected: the proxy's own Rejects.
    "REJECTED": {"rate": 0.001, "burst": 1, "disconnect_after": 1_000_000_000},
}
FIGURES: dict[str, str] = {}


def _tight_config(orig: Callable[..., str]) -> Callable[..., str]:
    """The demo config with short deadlines and a small write buffer (the slowloris and the
    non-reading client must hit them within the test's time)."""

    def text(*a: Any, **kw: Any) -> str:
        out = orig(*a, **kw)
        out = out.replace(
            "handshake_timeout = 3.0", f"handshake_timeout = 1.0\nwrite_buffer_limit = {WRITE_BUFFER_LIMIT}"
        )
        return out.replace('reject_style = "session_reject"', 'reject_style = "session_reject"\nlogon_timeout = 2.0')

    return text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("floods"), ["LEGIT"], sessions=SESSIONS, heartbeat=30)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "demo_config_text", _tight_config(demo.demo_config_text))
        try:
            s.start(oms=True)
            assert s.oms["LEGIT"].wait_logged_on(WAIT), "legitimate OMS did not log on"
            yield s
        finally:
            s.stop()
            if FIGURES:
                print("\n-- flood figures --")
                for k, v in FIGURES.items():
                    print(f"{k}: {v}")


@pytest.fixture(autouse=True)
def unblock(stack: Stack) -> Iterator[None]:
    yield
    assert stack.proxy is not None and stack.proxy.proxy is not None
    proxy = stack.proxy.proxy
    for src in list(stack.proxy.sync(lambda: list(proxy.guard.blocked()))):
        stack.proxy.call(proxy.unblock_source(src))


# -- helpers ----------------------------------------------------------------------------------------


def wait(predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def mark(stack: Stack) -> int:
    """Where the events file ends now (the recorder's in-memory window holds only 1,000)."""
    assert stack.proxy is not None
    stack.proxy.events()  # flushes
    return (stack.workdir / "events.jsonl").stat().st_size


def since(stack: Stack, offset: int) -> list[dict[str, Any]]:
    assert stack.proxy is not None
    stack.proxy.events()
    with (stack.workdir / "events.jsonl").open("rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def count(evs: list[dict[str, Any]], **match: Any) -> int:
    return sum(1 for e in evs if all(e.get(k) == v for k, v in match.items()))


def kpi(stack: Stack, name: str) -> float | None:
    assert stack.proxy is not None and stack.proxy.proxy is not None
    reg = stack.proxy.proxy.registry
    return stack.proxy.sync(lambda: reg.get_sample_value(name))  # type: ignore[no-any-return]


def assert_kpis(stack: Stack, label: str) -> None:
    blocked = kpi(stack, "fixproxy_ddos_hostile_blocked_ratio")
    delivered = kpi(stack, "fixproxy_ddos_legitimate_delivered_ratio")
    FIGURES[f"{label} KPIs"] = f"hostile_blocked={blocked} legitimate_delivered={delivered}"
    assert blocked == 1.0
    assert delivered == 1.0


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Trader:
    """The legitimate OMS: one order every `interval`, each waited for until filled (send -> fill
    latency recorded), in a thread while the flood runs."""

    n = 0

    def __init__(self, stack: Stack, label: str, interval: float = 0.02) -> None:
        self.oms = stack.oms["LEGIT"]
        self.label = label
        self.interval = interval
        self.latencies: list[float] = []
        self.sent = 0
        self.missing: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"trader-{label}", daemon=True)

    def _run(self) -> None:
        oms = self.oms
        while not self._stop.is_set():
            Trader.n += 1
            cl = f"L{Trader.n}"
            t0 = time.perf_counter()
            oms.send_new_order(cl, "VOD.L", "1", 100, 10.5)
            self.sent += 1
            if oms.wait_for(
                lambda o, cl=cl: any(
                    r.cl_ord_id == cl and r.ord_status == "2"  # type: ignore[misc]
                    for r in o.exec_reports[-8:]
                ),
                WAIT,
            ):
                self.latencies.append(time.perf_counter() - t0)
            else:
                self.missing.append(cl)
            rest = self.interval - (time.perf_counter() - t0)
            if rest > 0:
                self._stop.wait(rest)

    def __enter__(self) -> Trader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # a few orders after the flood as well
        self._stop.set()
        self._thread.join(WAIT + 5)

    def report(self, min_orders: int = 5) -> None:
        lat = sorted(self.latencies)
        assert self.sent >= min_orders, f"{self.label}: only {self.sent} orders sent"
        assert not self.missing, f"{self.label}: not filled: {self.missing[:5]} ({len(self.missing)})"
        assert len(lat) == self.sent
        p50 = statistics.median(lat) * 1e3
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
        FIGURES[f"{self.label} latency"] = f"n={len(lat)} p50={p50:.2f} ms p99={p99:.2f} ms max={lat[-1] * 1e3:.2f} ms"


def bound(addr: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((addr, 0))
    return s


# -- the cases --------------------------------------------------------------------------------------


def test_00_quiet_baseline(stack: Stack) -> None:
    with Trader(stack, "baseline") as t:
        time.sleep(3.0)
    t.report(min_orders=20)
    assert_kpis(stack, "baseline")


def test_connection_flood(stack: Stack) -> None:
    """2,000 TCP connects, as fast as possible: 400 from 127.0.0.1, the rest from 127.0.0.2-20.
    Each connects and closes (or is closed); the legitimate session is not disturbed."""
    assert stack.proxy is not None
    off = mark(stack)
    refused0 = stack.proxy.sync(lambda: stack.proxy.proxy.connections_refused)  # type: ignore[union-attr]
    sources = ["127.0.0.1"] * 4 + [f"127.0.0.{i}" for i in range(2, 21)]
    done = 0
    t0 = time.monotonic()
    with Trader(stack, "connection flood") as t:
        while done < 2000:
            for src in sources:
                s = bound(src) if src != "127.0.0.1" else socket.socket()
                s.settimeout(WAIT)
                try:
                    s.connect(("127.0.0.1", stack.proxy_port))
                except OSError:
                    pass
                finally:
                    s.close()
                done += 1
                if done >= 2000:
                    break
    elapsed = time.monotonic() - t0
    t.report()

    def refused() -> int:
        return stack.proxy.sync(lambda: stack.proxy.proxy.connections_refused) - refused0  # type: ignore[union-attr,no-any-return]

    wait(lambda: refused() >= 2000)
    evs = [e for e in since(stack, off) if e["outcome"] == "connection_refused"]
    by_reason: dict[str, int] = {}
    for e in evs:
        by_reason[e["reason"]] = by_reason.get(e["reason"], 0) + 1
    FIGURES["connection flood"] = f"2000 connects in {elapsed:.1f} s; {refused()} refused; refusal events {by_reason}"
    assert refused() == 2000  # every one of them
    assert len(evs) == 2000
    assert set(by_reason) <= {"tls_handshake_failed", "source_blocked", "handshake_timeout"}
    blocked = stack.proxy.sync(lambda: stack.proxy.proxy.guard.blocked())  # type: ignore[union-attr]
    assert "127.0.0.2" in blocked  # brute-force block on the flooding sources
    assert stack.oms["LEGIT"].logged_on()
    assert_kpis(stack, "connection flood")


def test_tls_handshake_flood_without_certificate(stack: Stack) -> None:
    """200 handshakes without a client certificate from 127.0.0.7: the first few refused as
    tls_no_cert, then the source is blocked (refused before TLS)."""
    src = "127.0.0.7"
    no_cert = tlsmod.client_context(None, None, stack.pki.ca_cert)
    off = mark(stack)
    refused = 0
    t0 = time.monotonic()
    with Trader(stack, "TLS handshake flood") as t:
        for _ in range(200):
            try:
                with bound(src) as raw:
                    raw.settimeout(WAIT)
                    raw.connect(("127.0.0.1", stack.proxy_port))
                    with no_cert.wrap_socket(raw, server_hostname="localhost") as s:
                        s.settimeout(WAIT)
                        if s.recv(1) == b"":
                            refused += 1
            except (ssl.SSLError, OSError):
                refused += 1
    elapsed = time.monotonic() - t0
    t.report()
    assert refused == 200
    new = wait(
        lambda: (
            [e for e in since(stack, off) if e["source"] == src and e["outcome"] == "connection_refused"]
            if count(since(stack, off), source=src, outcome="connection_refused") >= 200
            else None
        )
    )
    assert new, f"not every handshake recorded as refused: {since(stack, off)[-3:]}"
    assert count(since(stack, off), source=src, kind="auth.bruteforce") >= 1, "no brute-force block"
    no_cert_n = count(new, reason="tls_no_cert")
    blocked_n = count(new, reason="source_blocked")
    FIGURES["TLS handshake flood"] = (
        f"200 handshakes in {elapsed:.1f} s: {no_cert_n} tls_no_cert, then {blocked_n} source_blocked"
    )
    assert no_cert_n >= 1 and blocked_n >= 1 and no_cert_n + blocked_n == 200
    assert stack.proxy.sync(lambda: stack.proxy.proxy.guard.is_blocked(src))  # type: ignore[union-attr]
    assert stack.oms["LEGIT"].logged_on()
    assert_kpis(stack, "TLS handshake flood")


def test_slowloris(stack: Stack) -> None:
    """100 connections dripping one byte a second: 50 before TLS (from 127.0.0.21-22, the handshake
    deadline closes them) and 50 with a valid certificate dripping a Logon (from 127.0.0.23-24, the
    logon deadline closes them)."""
    assert stack.proxy is not None and stack.proxy.proxy is not None
    proxy = stack.proxy.proxy
    off = mark(stack)
    rss0 = rss_kb()
    socks: list[socket.socket] = []
    tls_socks: list[ssl.SSLSocket] = []
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32
    logon = RawFixClient.build(_Builder("DRIP"), "A", [(98, 0), (108, 30)])  # type: ignore[arg-type]
    ctx = stack.client_context("DRIP")
    with Trader(stack, "slowloris") as t:
        for i in range(50):
            s = bound(f"127.0.0.{21 + i % 2}")
            s.connect(("127.0.0.1", stack.proxy_port))
            socks.append(s)
        for i in range(50):
            raw = bound(f"127.0.0.{23 + i % 2}")
            raw.settimeout(WAIT)
            raw.connect(("127.0.0.1", stack.proxy_port))
            tls_socks.append(ctx.wrap_socket(raw, server_hostname="localhost"))
        peak = stack.proxy.sync(lambda: len(proxy.links))
        closed: set[int] = set()
        everyone: list[Any] = [*socks, *tls_socks]
        t0 = time.monotonic()
        pos = 0
        while len(closed) < len(everyone) and time.monotonic() - t0 < 15:
            for i, s in enumerate(everyone):
                if i in closed:
                    continue
                data = hello if i < 50 else logon
                try:
                    s.send(data[pos % len(data) : pos % len(data) + 1])
                except OSError:
                    closed.add(i)
            pos += 1
            r, _, _ = select.select([s for i, s in enumerate(everyone) if i not in closed], [], [], 1.0)
            for s in r:
                i = everyone.index(s)
                try:
                    s.setblocking(False)
                    if s.recv(1) == b"":
                        closed.add(i)
                except (ssl.SSLWantReadError, BlockingIOError):
                    pass
                except OSError:
                    closed.add(i)
                finally:
                    with contextlib.suppress(OSError):
                        s.setblocking(True)
                        s.settimeout(WAIT)
        took = time.monotonic() - t0
        for s in everyone:
            with contextlib.suppress(OSError):
                s.close()
    rss1 = rss_kb()
    t.report()
    new = since(stack, off)
    hs = count(new, reason="handshake_timeout")
    lg = count(new, reason="logon_timeout")
    FIGURES["slowloris"] = (
        f"{len(closed)}/100 closed within {took:.1f} s ({hs} handshake_timeout, {lg} "
        f"logon_timeout); links at peak {peak}; RSS {rss0} -> {rss1} kB"
    )
    assert len(closed) == 100
    assert hs >= 50 and lg >= 50
    assert rss1 - rss0 < 50_000
    assert wait(lambda: stack.proxy.sync(lambda: len(proxy.links)) <= 2)  # type: ignore[union-attr]
    assert_kpis(stack, "slowloris")


class _Builder:
    """Enough of a RawFixClient for `RawFixClient.build` (a Logon to drip, without a socket)."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.target = "ATS"
        self.begin_string = "FIX.4.4"
        self.seq = 1


def order_fields(cl: str) -> list[tuple[Any, Any]]:
    return [(11, cl), (21, "1"), (55, "VOD.L"), (54, "1"), (60, utc_timestamp()), (38, 100), (40, "2"), (44, "10.5")]


def test_message_flood_above_rate_limit(stack: Stack) -> None:
    off = mark(stack)
    with Trader(stack, "message flood") as t:
        raw = stack.raw_client("FLOOD")
        try:
            assert raw.logon() is not None
            burst = b"".join(raw.build("D", order_fields(f"F-{i}")) for i in range(2000))
            with contextlib.suppress(OSError):
                raw.send_raw(burst)
            closed = raw.closed_by_peer(WAIT)
        finally:
            raw.close()
    t.report()
    assert closed
    new = since(stack, off)
    limited = count(new, reason="rate_limited", session="FLOOD")
    flood = [e for e in new if e["reason"] == "flood" and e["session"] == "FLOOD"]
    delivered = sum(1 for m in stack.ats[0].messages("D", "FIX.4.4:ATS->FLOOD"))
    FIGURES["message flood"] = f"2000 orders: {delivered} reached the ATS, {limited} rate_limited, then flood"
    assert limited >= 100 and flood and flood[0]["outcome"] == "disconnected"
    assert delivered <= 40
    assert_kpis(stack, "message flood")


def test_reader_that_never_reads(stack: Stack) -> None:
    """A client logs on, sends orders and never reads its fills: the proxy's write buffer toward it
    stays bounded by write_buffer_limit (past it, reading from its ATS leg pauses), other sessions
    are unaffected. On loopback the kernel's socket buffers (SO_SNDBUF ~4 MB here) absorb a few
    thousand fills first, so whether the pause is reached is reported, not asserted."""
    assert stack.proxy is not None and stack.proxy.proxy is not None
    proxy = stack.proxy.proxy
    raw = stack.raw_client("SLOWR")
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rss0 = rss_kb()

    def link_state() -> tuple[int, bool] | None:
        def get() -> tuple[int, bool] | None:
            for lk in proxy.links:
                if lk.inspector is not None and lk.inspector.session_name == "SLOWR":
                    return lk.oms.transport.get_write_buffer_size(), lk.oms.full_since is not None
            return None

        return stack.proxy.sync(get)  # type: ignore[union-attr]

    try:
        assert raw.logon() is not None
        sent = 0
        max_buf = 0
        with Trader(stack, "non-reading client") as t:
            for _ in range(10):
                batch = b"".join(raw.build("D", order_fields(f"S-{sent + i}")) for i in range(500))
                raw.send_raw(batch)
                sent += 500
                time.sleep(0.1)
                st = link_state()
                assert st is not None
                max_buf = max(max_buf, st[0])
                if st[1]:
                    break
            time.sleep(1.0)
            st = link_state()
        rss1 = rss_kb()
        t.report()
        assert st is not None
        max_buf = max(max_buf, st[0])
        filled = len(stack.ats[0].messages("D", "FIX.4.4:ATS->SLOWR"))
        FIGURES["non-reading client"] = (
            f"{sent} orders sent ({filled} reached the ATS), proxy paused its ATS leg = {st[1]}, write buffer "
            f"toward the client max {max_buf} B (limit {WRITE_BUFFER_LIMIT}); "
            f"process RSS {rss0} -> {rss1} kB"
        )
        # Bounded: the limit plus at most one read's worth of fills from the ATS.
        assert max_buf <= WRITE_BUFFER_LIMIT + 256 * 1024
        assert_kpis(stack, "non-reading client")
    finally:
        raw.close()


def test_reader_that_never_reads_its_rejects(stack: Stack) -> None:
    """The same attack with messages the proxy answers itself (rate limited: a Reject each): 50,000
    orders, 7.5 MB, are read and answered although nobody reads the answers."""
    assert stack.proxy is not None and stack.proxy.proxy is not None
    proxy = stack.proxy.proxy
    raw = stack.raw_client("REJECTED")

    def write_buffer() -> int | None:
        def get() -> int | None:
            for lk in proxy.links:
                if lk.inspector is not None and lk.inspector.session_name == "REJECTED":
                    return lk.oms.transport.get_write_buffer_size()  # type: ignore[no-any-return]
            return None

        return stack.proxy.sync(get)  # type: ignore[union-attr]

    rss0 = rss_kb()
    try:
        assert raw.logon() is not None
        max_buf = 0
        for k in range(10):
            raw.send_raw(b"".join(raw.build("D", order_fields(f"R-{k}-{i}")) for i in range(5000)))
            max_buf = max(max_buf, write_buffer() or 0)
        time.sleep(0.5)
        max_buf = max(max_buf, write_buffer() or 0)
        FIGURES["non-reader of its Rejects"] = (
            f"50000 refused orders: write buffer toward the client max "
            f"{max_buf} B (limit {WRITE_BUFFER_LIMIT}); RSS {rss0} -> {rss_kb()} kB"
        )
        assert max_buf <= WRITE_BUFFER_LIMIT + 256 * 1024
    finally:
        raw.close()
