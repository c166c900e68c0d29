"""Every KPI of the catalogue (../shared/KPIS.md), driven with real traffic: real TLS, the real
proxy, a real QuickFIX ATS behind it, hostile clients (`RawFixClient`) and QuickFIX OMS engines in
front. Each test reads the metric the catalogue names from the proxy's own registry (the one
Prometheus scrapes) and checks that it moved as the catalogue says.

One `Stack` serves most of the module, one CompID per test (the ATS keeps sequence numbers per
session). Two more run where a KPI needs its own proxy: a plaintext one (encryption coverage below
100 %, on the same ATS) and one with two ATS endpoints (failover), which then also runs the
brute-force test with the default threshold, last.

What is not driven with real traffic, and why:
- a blocked delivery (ExecutionReport about to reach a session that does not own the order): the
  real ATS never misroutes, so it is driven through the SessionInspector in tests/test_leakguard.py;
- admin operations: the Stack's proxy has no admin socket, so the real admin channel
  (`start_admin_server`) is started on the proxy's loop as `fixproxy.proxy.serve` starts it: the
  proxy as its target, `proxy.audit_admin` as its audit hook;
- a latency anomaly needs a slow proxy: the test wraps the live inspector of one link with a sleep
  (fault injection into product internals, nothing else is patched);
- the audit-trail KPIs (audit gaps, verification failures, time to produce audit data, un-logged
  admin actions) are not covered here: they belong to the audit trail and its tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from helpers import NO_BRUTEFORCE, handshake_refused, wait

from fixproxy import metrics as m
from fixproxy import tls as tlsmod
from fixproxy.admin import admin_request, start_admin_server
from fixproxy.certs import issue_client_cert
from fixproxy.codec import Message
from fixproxy.config import parse_config
from fixproxy.demo import ProxyThread, Stack
from fixproxy.dictionary import load_for_version
from fixproxy.engines import OrderEntry, free_port
from fixproxy.events import Outcome, SecurityEvent
from fixproxy.kpis import AnomalyDetector, LatencyStats
from fixproxy.rawclient import RawFixClient
from fixproxy.reasons import Reason
from fixproxy.session import utc_timestamp

WAIT = 15.0  # generous: the machine is noisy; only outcomes are asserted
LOCAL = "127.0.0.1"

SESSIONS: dict[str, dict[str, Any]] = {
    "KENC": {},  # logged on while encryption coverage is read
    "KAUTH": {},  # impersonated with OMS2's certificate
    "KL1": {},  # leakage: owns the order
    "KL2": {},  # leakage: names KL1's order
    "KSRC": {},  # leakage: logs on from outside its allow-list
    "KCS": {},  # bad checksum
    "KPZ": {"allowed_inbound": ["D"]},  # poisoning: anything but NewOrderSingle is refused
    "KLAT": {},  # proxy latency, order round trip
    "KANOM": {},  # latency anomaly
    "KRATE": {"rate": 5, "burst": 5, "disconnect_after": 20},  # DDoS: rate limit, then flood
    "KUP": {},  # uptime: logon, logout
    "KTTD": {},  # time to detect / respond
    "KCFG": {},  # trades after refused reloads
    "KAUD": {},  # the last traffic before audit completeness is read
    "PLN": {},  # through the plaintext proxy (test_encryption_coverage_below_100_percent)
}
ANOMALY = "\n[anomaly]\nwarmup = 20\nn = 3\nk = 3\n"
# Refused handshakes count toward the brute-force block of 127.0.0.1: the shared proxy has a high
# threshold, the brute-force test uses the failover stack's default one.


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Loaded once per process and cached: loaded here, it does not land in the first Logon's
    # latency (which would then weigh on the anomaly detector's baseline).
    load_for_version(b"FIX.4.4")
    s = Stack(tmp_path_factory.mktemp("kpis"), list(SESSIONS), sessions=SESSIONS, extra=NO_BRUTEFORCE + ANOMALY)
    try:
        s.start(oms=False)
        yield s
    finally:
        s.stop()


# -- reading the metrics ----------------------------------------------------------------------------


def sample(stack: Stack, name: str, **labels: str) -> float | None:
    """One sample of the proxy's registry, read on the proxy's loop after the recorder is flushed
    (what `stack.proxy.events()` does): what a scrape would return now."""
    pt = stack.proxy
    assert pt is not None and pt.proxy is not None
    proxy = pt.proxy

    def read() -> float | None:
        proxy.recorder.flush()
        return proxy.registry.get_sample_value(name, labels)

    return pt.sync(read)


def value(stack: Stack, name: str, **labels: str) -> float:
    """A sample, 0 when it does not exist yet (a counter whose labels have not been seen)."""
    v = sample(stack, name, **labels)
    return 0.0 if v is None else v


def samples(stack: Stack, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` (all label sets)."""
    pt = stack.proxy
    assert pt is not None and pt.proxy is not None
    proxy = pt.proxy

    def read() -> list[tuple[dict[str, str], float]]:
        proxy.recorder.flush()
        return [(dict(s.labels), s.value) for fam in proxy.registry.collect() for s in fam.samples if s.name == name]

    return pt.sync(read)


def wait_value(stack: Stack, name: str, at_least: float, **labels: str) -> float:
    """Wait until the sample reaches `at_least` (the proxy records off the FIX path)."""
    wait(lambda: value(stack, name, **labels) >= at_least)
    got = value(stack, name, **labels)
    assert got >= at_least, f"{name}{labels} = {got}, expected >= {at_least}"
    return got


def events(stack: Stack, reason: Reason | None = None, *, kind: str | None = None) -> list[SecurityEvent]:
    assert stack.proxy is not None
    return [
        e for e in stack.proxy.events() if (reason is None or e.reason is reason) and (kind is None or e.kind == kind)
    ]


# -- FIX helpers --------------------------------------------------------------------------------------


def logged_on(stack: Stack, compid: str) -> RawFixClient:
    raw = stack.raw_client(compid)
    assert raw.logon() is not None, f"{compid}: no Logon answer"
    return raw


def order_fields(cl_ord_id: str, *extra: tuple[Any, Any], side: str = "1") -> list[tuple[Any, Any]]:
    return [*extra, (11, cl_ord_id), (21, "1"), (55, "VOD.L"), (54, side), (60, utc_timestamp()), (38, 100),
            (40, "2"), (44, "10.5")]


def filled(raw: RawFixClient, cl_ord_id: str) -> Message | None:
    return raw.wait_for(
        lambda msg: msg.msg_type == b"8" and msg.get(b"11") == cl_ord_id.encode() and msg.get(b"39") == b"2", WAIT
    )


def trade(raw: RawFixClient, cl_ord_id: str) -> Message:
    """One order, sent and filled before the next: each message its own read on both legs."""
    raw.send("D", order_fields(cl_ord_id))
    fill = filled(raw, cl_ord_id)
    assert fill is not None, f"{cl_ord_id} not filled"
    return fill


def reject_for(raw: RawFixClient, seq: int) -> Message | None:
    return raw.wait_for(lambda msg: msg.msg_type == b"3" and msg.get(b"45") == b"%d" % seq, WAIT)


def ats_key(compid: str) -> str:
    return f"FIX.4.4:ATS->{compid}"


# == Confidentiality ===================================================================================


def test_encryption_coverage_with_tls_on_both_legs(stack: Stack) -> None:
    raw = logged_on(stack, "KENC")
    try:
        assert wait(lambda: value(stack, m.SESSION_UP, session="KENC") == 1.0)
        for leg in ("oms", "ats"):
            for unit in ("sessions", "bytes"):
                assert sample(stack, m.ENCRYPTION_COVERAGE, leg=leg, unit=unit) == 1.0, (leg, unit)
    finally:
        raw.close()


def test_unauthenticated_access(stack: Stack) -> None:
    assert stack.proxy is not None
    ua = m.UNAUTHENTICATED_ACCESS + "_total"
    tls_refused = m.TLS_HANDSHAKES_REFUSED + "_total"
    no_cert = {"source": LOCAL, "compid": "", "reason": "tls_no_cert"}
    before = value(stack, ua, **no_cert), value(stack, tls_refused, source=LOCAL, reason="tls_no_cert")
    # 1. a TLS handshake without a client certificate
    for _ in range(2):
        assert handshake_refused(stack.proxy_port, tlsmod.client_context(None, None, stack.pki.ca_cert))
    wait_value(stack, ua, before[0] + 2, **no_cert)
    assert value(stack, tls_refused, source=LOCAL, reason="tls_no_cert") == before[1] + 2

    # 2. a valid certificate (OMS2's) claiming another CompID at Logon: counted per claimed CompID
    bound = {"source": LOCAL, "compid": "KAUTH", "reason": "compid_not_bound"}
    before_logons = value(stack, m.LOGONS_REFUSED + "_total", **bound)
    raw = stack.raw_client("OMS2", sender="KAUTH")
    try:
        raw.send("A", [(98, 0), (108, 30)])
        assert raw.closed_by_peer(WAIT)
    finally:
        raw.close()
    assert wait_value(stack, ua, 1, **bound) == 1.0
    assert value(stack, m.LOGONS_REFUSED + "_total", **bound) == before_logons + 1
    # A refused Logon is not a TLS handshake refusal.
    assert value(stack, tls_refused, source=LOCAL, reason="tls_no_cert") == before[1] + 2
    # With the shared stack's high threshold nothing is blocked (brute force: test_bruteforce_*).
    assert value(stack, m.SOURCES_BLOCKED) == 0.0


def test_information_leakage_cross_session_reference_and_spoofing(stack: Stack) -> None:
    leak = m.LEAKAGE_EVENTS + "_total"
    assert value(stack, m.LEAKAGE_INDEX) == 0.0
    kl1, kl2 = logged_on(stack, "KL1"), logged_on(stack, "KL2")
    try:
        order_id = trade(kl1, "LK-1").get(b"37")
        assert order_id is not None
        # KL2 asks to cancel KL1's order, by its ClOrdID and its OrderID: refused, never reaches the ATS.
        seq = kl2.seq
        kl2.send("F", [(41, "LK-1"), (37, order_id), (11, "KL2-C1"), (55, "VOD.L"), (54, "1"),
                       (60, utc_timestamp()), (38, 100)])
        rej = reject_for(kl2, seq)
        assert rej is not None and b"another session" in (rej.get(b"58") or b"")
        assert wait_value(stack, leak, 1, session="KL2", reason="leak_cross_session_ref") == 1.0
        assert value(stack, m.LEAKAGE_INDEX) > 0
        assert not stack.ats[0].messages("F", ats_key("KL2"))

        # The same ClOrdID used by KL2 for an order of its own is no reference to KL1's.
        trade(kl2, "LK-1")
        assert value(stack, leak, session="KL2", reason="leak_cross_session_ref") == 1.0

        # OnBehalfOfCompID naming another participant: spoofing, refused.
        index = value(stack, m.LEAKAGE_INDEX)
        seq = kl1.seq
        kl1.send("D", order_fields("LK-SPOOF", (115, "KL2")))
        rej = reject_for(kl1, seq)
        assert rej is not None and rej.get(b"371") == b"115"
        assert wait_value(stack, leak, 1, session="KL1", reason="spoofing") == 1.0
        assert value(stack, m.LEAKAGE_INDEX) > index
        assert not any(msg.get(11) == "LK-SPOOF" for msg in stack.ats[0].messages("D", ats_key("KL1")))
        # Nothing was about to be delivered to the wrong session (see tests/test_leakguard.py).
        assert value(stack, leak, session="KL2", reason="leak_blocked_delivery") == 0.0
    finally:
        kl1.close()
        kl2.close()

    # Access from an address outside the session's allow-list (a reload restricts KSRC to
    # 192.0.2.0/24; this client is 127.0.0.1): refused at Logon, and part of the index.
    pt = stack.proxy
    assert pt is not None and pt.proxy is not None
    text = stack.config_path.read_text()
    index = value(stack, m.LEAKAGE_INDEX)
    try:
        stack.config_path.write_text(text.replace('sender_comp_id = "KSRC"\n',
                                                  'sender_comp_id = "KSRC"\nallowed_sources = ["192.0.2.0/24"]\n'))
        pt.call(pt.proxy.reload())
        raw = stack.raw_client("KSRC")
        try:
            raw.send("A", [(98, 0), (108, 30)])
            assert raw.closed_by_peer(WAIT)
        finally:
            raw.close()
    finally:
        stack.config_path.write_text(text)
        pt.call(pt.proxy.reload())
    assert wait_value(stack, leak, 1, session="KSRC->ATS", reason="source_not_allowed") == 1.0
    assert value(stack, m.LEAKAGE_INDEX) > index
    assert value(stack, m.UNAUTHENTICATED_ACCESS + "_total", source=LOCAL, compid="KSRC",
                 reason="source_not_allowed") == 1.0


def test_privileged_access_admin_operations(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    pt = stack.proxy
    assert pt is not None and pt.proxy is not None
    proxy = pt.proxy
    ops, refused_ops = m.ADMIN_OPERATIONS + "_total", m.ADMIN_REFUSED + "_total"
    where = tmp_path_factory.mktemp("adm")
    uid = os.getuid()
    allowed = pt.call(start_admin_server(where / "ok.sock", proxy, [uid], proxy.audit_admin))
    other = pt.call(start_admin_server(where / "other.sock", proxy, [uid + 1], proxy.audit_admin))
    try:
        before = {k: value(stack, ops, operation=k[0], outcome=k[1])
                  for k in (("status", "ok"), ("unblock", "ok"), ("status", "refused"), ("kill", "refused"))}
        refused_before = value(stack, refused_ops, operation="kill")
        assert asyncio.run(admin_request(where / "ok.sock", "status"))["ok"]
        assert asyncio.run(admin_request(where / "ok.sock", "unblock", address="192.0.2.1")) == {
            "ok": True, "result": {"unblocked": False}}
        # An identity without the admin role: refused, counted, nothing done.
        assert asyncio.run(admin_request(where / "other.sock", "status")) == {"ok": False, "error": "not authorised"}
        assert asyncio.run(admin_request(where / "other.sock", "kill", session="KENC"))["ok"] is False
        for (op, outcome), n in (((("status", "ok")), 1), (("unblock", "ok"), 1), (("status", "refused"), 1),
                                 (("kill", "refused"), 1)):
            assert value(stack, ops, operation=op, outcome=outcome) == before[(op, outcome)] + n, (op, outcome)
        assert value(stack, refused_ops, operation="kill") == refused_before + 1
        refused = events(stack, kind="admin.refused")
        assert len(refused) >= 2 and all(f"uid {uid} " in e.detail for e in refused)
        assert value(stack, m.ADMIN_UNLOGGED + "_total") == 0.0
    finally:
        for srv in (allowed, other):
            srv.close()


# == Integrity =========================================================================================


def test_checksum_failures(stack: Stack) -> None:
    labels = {"session": "KCS", "direction": "inbound"}
    raw = logged_on(stack, "KCS")
    try:
        received = wait_value(stack, m.MESSAGES + "_total", 1, outcome="received", **labels)  # the Logon
        good = raw.build("D", order_fields("CS-1"))
        raw.send_raw(good[:-4] + b"000\x01")  # CheckSum 000: dropped (FIX: a garbled message is ignored)
        assert wait_value(stack, m.CHECKSUM_FAILURES + "_total", 1, **labels) == 1.0
        assert value(stack, m.MESSAGES + "_total", outcome="received", **labels) == received + 1
        assert value(stack, m.MESSAGES + "_total", outcome="dropped", **labels) == 1.0
        assert value(stack, m.CHECKSUM_FAILURES + "_total", session="KCS", direction="outbound") == 0.0
        # The rate the catalogue names: failures over messages received.
        ratio = value(stack, m.CHECKSUM_FAILURES + "_total", **labels) / value(
            stack, m.MESSAGES + "_total", outcome="received", **labels)
        assert ratio == 1 / (received + 1)
        assert value(stack, m.POISONING_ATTEMPTS + "_total", reason="bad_checksum", **labels) == 1.0
    finally:
        raw.close()


def test_queue_poisoning_attempts(stack: Stack) -> None:
    labels = {"session": "KPZ", "direction": "inbound"}
    poison = m.POISONING_ATTEMPTS + "_total"
    raw = logged_on(stack, "KPZ")
    try:
        # Refused and answered (GapFill to the ATS, Reject to the OMS): the session goes on.
        for mt, fields, why in (
            ("H", [(11, "PZ-1"), (55, "VOD.L"), (54, "1")], "msgtype_not_allowed"),
            ("D", order_fields("PZ-2", side="Z"), "invalid_value"),  # Side Z: a dictionary violation
            ("D", [("5x5", "1"), *order_fields("PZ-3")], "bad_tag"),
        ):
            seq = raw.seq
            raw.send(mt, fields)
            assert reject_for(raw, seq) is not None, why
            assert wait_value(stack, poison, 1, reason=why, **labels) == 1.0
        trade(raw, "PZ-OK")
        # Framing: BodyLength pointing short of the CheckSum. Dropped, the next message still read.
        good = raw.build("D", order_fields("PZ-4"))
        n = int(re.search(rb"\x019=(\d+)\x01", good).group(1))  # type: ignore[union-attr]
        raw.send_raw(good.replace(b"\x019=%d\x01" % n, b"\x019=%d\x01" % (n - 5), 1))
        assert wait_value(stack, poison, 1, reason="bad_body_length", **labels) == 1.0
        # Only these four were poisoning; the order that traded was not.
        got = {s["reason"]: v for s, v in samples(stack, poison) if s["session"] == "KPZ"}
        assert got == {"msgtype_not_allowed": 1.0, "invalid_value": 1.0, "bad_tag": 1.0, "bad_body_length": 1.0}
        assert not any(msg.get(11, "").startswith("PZ-") and msg.get(11) != "PZ-OK"
                       for msg in stack.ats[0].incoming() if msg.session == ats_key("KPZ"))
    finally:
        raw.close()


def test_configuration_change_failures(stack: Stack) -> None:
    pt = stack.proxy
    assert pt is not None and pt.proxy is not None
    reloads = m.CONFIG_RELOADS + "_total"
    ok, refused = value(stack, reloads, outcome="ok"), value(stack, reloads, outcome="refused")
    assert pt.call(pt.proxy.reload())["sessions"] == len(SESSIONS)
    assert value(stack, reloads, outcome="ok") == ok + 1
    text = stack.config_path.read_text()
    try:
        stack.config_path.write_text(text.replace("[upstream]", "[upstream\n"))  # not TOML
        with pytest.raises(Exception):  # noqa: B017 - any refusal; the metric is what is checked
            pt.call(pt.proxy.reload())
        stack.config_path.write_text(text.replace(str(stack.pki.proxy_server_key), str(stack.pki.ca_cert)))
        with pytest.raises(Exception):  # noqa: B017 - valid TOML, a certificate where the key should be
            pt.call(pt.proxy.reload())
    finally:
        stack.config_path.write_text(text)
    assert value(stack, reloads, outcome="refused") == refused + 2
    assert value(stack, reloads, outcome="ok") == ok + 1
    assert len(events(stack, kind="config.reload_failed")) >= 2
    # The proxy runs on with its configuration: a session still logs on and trades.
    raw = logged_on(stack, "KCFG")
    try:
        trade(raw, "CFG-1")
    finally:
        raw.close()


# == Availability and resilience =======================================================================


def test_proxy_latency_and_order_round_trip(stack: Stack) -> None:
    lat, rt = m.PROXY_LATENCY, m.ORDER_ROUND_TRIP
    before = (value(stack, lat + "_count", direction="inbound", msg_type="D"),
              value(stack, lat + "_count", direction="outbound", msg_type="8"),
              value(stack, rt + "_count"))
    raw = logged_on(stack, "KLAT")
    orders = 20
    try:
        for i in range(orders):
            trade(raw, f"LAT-{i}")
    finally:
        raw.close()
    inbound = value(stack, lat + "_count", direction="inbound", msg_type="D")
    outbound = value(stack, lat + "_count", direction="outbound", msg_type="8")
    assert inbound - before[0] == orders
    assert outbound - before[1] == 2 * orders  # a New and a Fill per order
    assert value(stack, lat + "_count", direction="inbound", msg_type="A") >= 1
    # Round trip NewOrderSingle -> first ExecutionReport: once per ClOrdID, not per report.
    assert value(stack, rt + "_count") - before[2] == orders
    for name, labels in ((lat, {"direction": "inbound", "msg_type": "D"}), (rt, {})):
        count = value(stack, name + "_count", **labels)
        assert value(stack, name + "_bucket", le="+Inf", **labels) == count
        assert value(stack, name + "_sum", **labels) > 0
        cumulative = [value(stack, name + "_bucket", le=repr(b), **labels) for b in m.LATENCY_BUCKETS]
        assert cumulative == sorted(cumulative) and cumulative[-1] <= count


def test_latency_anomaly_detection(stack: Stack) -> None:
    """[anomaly] warmup = 20, n = 3, k = 3. Steady traffic raises nothing; a proxy made slow (a
    sleep injected into this link's inspector, both directions) raises `latency.anomaly`."""
    pt = stack.proxy
    assert pt is not None and pt.proxy is not None
    proxy = pt.proxy
    anomalies = m.LATENCY_ANOMALIES + "_total"
    raw = logged_on(stack, "KANOM")
    try:
        for i in range(40):  # warm-up (20 reads), then a steady baseline
            trade(raw, f"AN-{i}")
        assert sample(stack, anomalies, session="KANOM", direction="inbound") == 0.0
        assert sample(stack, anomalies, session="KANOM", direction="outbound") == 0.0
        assert not [e for e in events(stack, kind="latency.anomaly") if e.session == "KANOM"]

        slow_reads = [0]

        def inject() -> tuple[Any, Any, Any]:
            link = next(lk for lk in proxy.links if lk.inspector and lk.inspector.session_name == "KANOM")
            insp = link.inspector
            original = insp.from_initiator, insp.from_acceptor

            def slow(read: Callable[..., Any]) -> Callable[..., Any]:
                def wrapper(data: bytes, received_at: float | None = None) -> Any:
                    slow_reads[0] += 1
                    time.sleep(0.05)  # the proxy's loop stalls 50 ms between read and write
                    return read(data, received_at)

                return wrapper

            insp.from_initiator, insp.from_acceptor = slow(original[0]), slow(original[1])
            return insp, *original

        insp, from_initiator, from_acceptor = pt.sync(inject)
        try:
            for i in range(3):
                trade(raw, f"AN-SLOW-{i}")
        finally:

            def restore() -> None:
                insp.from_initiator, insp.from_acceptor = from_initiator, from_acceptor

            pt.sync(restore)
        assert slow_reads[0] >= 3
        assert wait_value(stack, anomalies, 1, session="KANOM", direction="inbound") >= 1
        ev = next(e for e in events(stack, kind="latency.anomaly") if e.session == "KANOM")
        assert ev.outcome is Outcome.INFO and "above mean" in ev.detail
        trade(raw, "AN-AFTER")  # restored: the session trades on
    finally:
        raw.close()


def test_ddos_mitigation_effectiveness(stack: Stack) -> None:
    refused_before = value(stack, m.CONNECTIONS + "_total", leg="oms", outcome="refused")
    # Hostile: a connection refused (no client certificate), then a flood past the rate limit.
    assert handshake_refused(stack.proxy_port, tlsmod.client_context(None, None, stack.pki.ca_cert))
    raw = logged_on(stack, "KRATE")  # rate 5/s, burst 5, closed past 20 refusals in a row
    try:
        trade(raw, "DD-0")
        burst = b"".join(raw.build("D", order_fields(f"DD-FLOOD-{i}")) for i in range(200))
        with contextlib.suppress(OSError):  # the proxy may close while we are still writing
            raw.send_raw(burst)
        assert raw.closed_by_peer(WAIT)
    finally:
        raw.close()
    assert wait(lambda: events(stack, Reason.FLOOD))
    limited = value(stack, m.MESSAGES + "_total", session="KRATE", direction="inbound", outcome="refused")
    assert limited > 20

    # What the collector computes, from the exported counters.
    msgs = samples(stack, m.MESSAGES + "_total")

    def total(*outcomes: str) -> float:
        return sum(v for labels, v in msgs if labels["outcome"] in outcomes)

    refused_connections = value(stack, m.CONNECTIONS + "_total", leg="oms", outcome="refused")
    assert refused_connections >= refused_before + 1
    hostile = total("refused", "dropped", "shadowed") + refused_connections
    blocked = (hostile - total("shadowed")) / hostile
    legit = total("received") - total("refused", "dropped", "shadowed")
    delivered = min(1.0, (total("forwarded") - total("shadowed")) / legit)
    assert value(stack, m.HOSTILE_BLOCKED_RATIO) == blocked == 1.0
    assert value(stack, m.LEGITIMATE_DELIVERED_RATIO) == delivered == 1.0
    # The legitimate order before the flood reached the ATS; none past the limit did.
    ats_orders = {msg.get(11) for msg in stack.ats[0].messages("D", ats_key("KRATE"))}
    assert "DD-0" in ats_orders and len(ats_orders) < 200


def test_uptime_session_up_and_connected_time(stack: Stack) -> None:
    up, connected = m.SESSION_UP, m.SESSION_CONNECTED_SECONDS + "_total"
    assert sample(stack, up, session="KUP") == 0.0  # configured, never logged on
    assert sample(stack, connected, session="KUP") == 0.0
    raw = logged_on(stack, "KUP")
    try:
        assert wait(lambda: value(stack, up, session="KUP") == 1.0)
        trade(raw, "UP-1")
        first = wait(lambda: value(stack, connected, session="KUP"))
        assert first > 0
        raw.send("5", [(58, "bye")])
        assert raw.wait_for(lambda msg: msg.msg_type == b"5", WAIT) is not None
    finally:
        raw.close()
    assert wait(lambda: value(stack, up, session="KUP") == 0.0)
    closed = value(stack, connected, session="KUP")
    assert closed >= first
    assert value(stack, connected, session="KUP") == closed  # not counting while logged off
    assert value(stack, m.UPTIME) > closed


# == Accountability and response =======================================================================


def test_time_to_detect_and_respond(stack: Stack) -> None:
    ttd, ttr = m.TIME_TO_DETECT, m.TIME_TO_RESPOND
    before = value(stack, ttd + "_count"), value(stack, ttr + "_count")
    raw = logged_on(stack, "KTTD")
    try:
        for i in range(3):
            seq = raw.seq
            raw.send("D", order_fields(f"TT-{i}", side="Z"))  # refused: invalid Side
            assert reject_for(raw, seq) is not None
    finally:
        raw.close()
    assert wait_value(stack, ttd + "_count", before[0] + 3) >= before[0] + 3
    assert value(stack, ttr + "_count") >= before[1] + 3
    # The catalogue's threshold is p99 > 1 s; the mean of what was observed is well under it.
    for name in (ttd, ttr):
        count, total = value(stack, name + "_count"), value(stack, name + "_sum")
        assert 0 < total / count < 1.0, name


def test_certificate_expiry_and_rotation(stack: Stack) -> None:
    pt = stack.proxy
    assert pt is not None and pt.proxy is not None
    expiry = m.CERT_EXPIRY

    def not_after(path: Path) -> float:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()

    def check(cert: Path) -> None:
        got = sample(stack, expiry, cert="proxy.cert")
        assert got is not None and got > 0
        assert math.isclose(got, not_after(cert) - time.time(), abs_tol=60)

    check(stack.pki.proxy_server_cert)
    for name in ("proxy.ca", "upstream.cert", "upstream.ca"):
        assert value(stack, expiry, cert=name) > 7 * 86400
        assert value(stack, m.CERT_AGE, cert=name) >= 0
    # Rotation: a reload onto a certificate expiring in 3 days shows in the metric (and the alert
    # threshold, 7 days, is crossed); rotating back shows too.
    soon = datetime.now(UTC) + timedelta(days=3)
    cert, key = issue_client_cert(stack.pki, "KENC", name="proxy-rotated", not_after=soon, client_auth=False)
    text = stack.config_path.read_text()
    try:
        stack.config_path.write_text(text.replace(f'cert = "{stack.pki.proxy_server_cert}"', f'cert = "{cert}"')
                                     .replace(f'key = "{stack.pki.proxy_server_key}"', f'key = "{key}"'))
        pt.call(pt.proxy.reload())
        check(cert)
        assert value(stack, expiry, cert="proxy.cert") < 7 * 86400
    finally:
        stack.config_path.write_text(text)
        pt.call(pt.proxy.reload())
    check(stack.pki.proxy_server_cert)


def test_audit_completeness_nothing_in_flight(stack: Stack) -> None:
    """Last on the shared stack: every message any test sent is accounted for."""
    raw = logged_on(stack, "KAUD")
    try:
        trade(raw, "AUD-1")
        in_flight = samples(stack, m.AUDIT_IN_FLIGHT)
        msgs = samples(stack, m.MESSAGES + "_total")
    finally:
        raw.close()
    assert {s["session"] for s, _ in in_flight} >= {"KENC", "KL1", "KL2", "KCS", "KPZ", "KRATE"} & {
        s["session"] for s, _ in msgs}
    assert in_flight and all(v == 0 for _, v in in_flight), in_flight
    counts: dict[tuple[str, str], dict[str, float]] = {}
    for labels, v in msgs:
        counts.setdefault((labels["session"], labels["direction"]), {})[labels["outcome"]] = v
    for key, c in counts.items():
        assert c["received"] == c["forwarded"] + c["refused"] + c["dropped"], key
        assert c["shadowed"] <= c["forwarded"]


# == A plaintext proxy: encryption coverage below 100 % =================================================


def test_encryption_coverage_below_100_percent(stack: Stack) -> None:
    """A second proxy with `insecure = true` on both legs, to the same ATS engine's plaintext port."""
    port = free_port()
    text = f"""
[proxy]
instance = "plain"
listen = "{LOCAL}:{port}"
insecure = true

[upstream]
endpoints = ["{LOCAL}:{stack.ats_bridges[0].target_port}"]
insecure = true

[[sessions]]
name = "PLN"
begin_string = "FIX.4.4"
sender_comp_id = "PLN"
target_comp_id = "ATS"
"""
    plain = ProxyThread(parse_config(text, stack.workdir, str(stack.workdir / "plain.toml"))).start()
    try:
        assert plain.proxy is not None
        registry = plain.proxy.registry
        raw = RawFixClient(LOCAL, port, sender="PLN")
        try:
            assert raw.logon() is not None
            trade(raw, "PLN-1")
            got = plain.sync(lambda: {(leg, unit): registry.get_sample_value(m.ENCRYPTION_COVERAGE,
                                                                             {"leg": leg, "unit": unit})
                                      for leg in ("oms", "ats") for unit in ("sessions", "bytes")})
        finally:
            raw.close()
        assert got == {k: 0.0 for k in got} and len(got) == 4
    finally:
        plain.stop()
    # The TLS proxy's coverage is unchanged.
    assert value(stack, m.ENCRYPTION_COVERAGE, leg="oms", unit="bytes") == 1.0


# == Failover, then brute force: a stack with two ATS endpoints and the default threshold ===============


@pytest.fixture(scope="module")
def ha_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("kpis-ha"), ["KFO"], ats_count=2, sessions={"KFO": {}})
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _fills(oms: OrderEntry) -> set[str]:
    return {r.cl_ord_id for r in oms.exec_reports if r.ord_status == "2"}


def test_failover_drill_success_and_recovery_time(ha_stack: Stack) -> None:
    pt = ha_stack.proxy
    assert pt is not None and pt.proxy is not None
    oms = ha_stack.oms["KFO"]
    assert oms.wait_logged_on(WAIT)
    oms.send_new_order("FO-1", "VOD.L", "1", 100, 10.5)
    assert oms.wait_for(lambda: "FO-1" in _fills(oms), WAIT)
    assert value(ha_stack, m.SESSION_UP, session="KFO") == 1.0
    ok = m.FAILOVERS + "_total"
    assert value(ha_stack, ok, outcome="ok", trigger="drill") == 0.0

    logons = sum(1 for t in oms.event_texts() if t == "Received logon response")
    assert pt.call(pt.proxy.failover_drill()) == {"active": 1, "closed": 1}
    # QuickFIX reconnects by itself; the proxy takes it to the standby. Recovered = the first
    # message delivered to the standby (the Logon), without waiting for the OMS's next order.
    assert oms.wait_for(lambda: sum(1 for t in oms.event_texts() if t == "Received logon response") > logons
                        and oms.logged_on(), WAIT)
    assert wait_value(ha_stack, ok, 1, outcome="ok", trigger="drill") == 1.0
    assert value(ha_stack, m.FAILOVER_RECOVERY + "_count") == 1.0
    mttr = value(ha_stack, m.FAILOVER_RECOVERY + "_sum")
    assert 0 < mttr < 5.0  # the catalogue's threshold (MTTR > 5 s alerts)
    assert value(ha_stack, ok, outcome="failed", trigger="drill") == 0.0
    oms.send_new_order("FO-2", "VOD.L", "1", 100, 10.5)
    assert oms.wait_for(lambda: "FO-2" in _fills(oms), WAIT)
    assert value(ha_stack, m.FAILOVER_RECOVERY + "_count") == 1.0  # one loss, one recovery
    assert wait(lambda: value(ha_stack, m.SESSION_UP, session="KFO") == 1.0)
    assert value(ha_stack, m.SESSION_CONNECTED_SECONDS + "_total", session="KFO") > 0


def test_bruteforce_blocks_the_source(ha_stack: Stack) -> None:
    """Last: it blocks 127.0.0.1 on this proxy (default threshold: 5 refusals a minute)."""
    pt = ha_stack.proxy
    assert pt is not None and pt.proxy is not None
    assert value(ha_stack, m.SOURCES_BLOCKED) == 0.0
    no_cert = tlsmod.client_context(None, None, ha_stack.pki.ca_cert)
    for _ in range(6):
        assert handshake_refused(ha_stack.proxy_port, no_cert)
    ev = wait(lambda: next(iter(events(ha_stack, kind="auth.bruteforce")), None))
    assert ev is not None and ev.source == LOCAL
    assert value(ha_stack, m.SOURCES_BLOCKED) == 1.0
    assert value(ha_stack, m.UNAUTHENTICATED_ACCESS + "_total", source=LOCAL, compid="",
                 reason="tls_no_cert") == 6.0
    # Now even a valid certificate is turned away before TLS, and counted.
    assert handshake_refused(ha_stack.proxy_port, ha_stack.client_context("KFO"))
    assert wait_value(ha_stack, m.UNAUTHENTICATED_ACCESS + "_total", 1, source=LOCAL, compid="",
                      reason="source_blocked") == 1.0
    assert pt.call(pt.proxy.unblock_source(LOCAL)) == {"unblocked": True}
    assert value(ha_stack, m.SOURCES_BLOCKED) == 0.0


# == Sans-IO: the latency histogram and the anomaly detector ===========================================


def test_latency_stats_buckets() -> None:
    stats = LatencyStats()
    stats.observe("inbound", 0.00003, [b"D", b"D"])  # two messages in one read: one latency each
    stats.observe("inbound", 2.0, [b"D"])  # beyond the last bucket: +Inf
    row = stats.series[("inbound", b"D")]
    assert row[m.LATENCY_BUCKETS.index(0.00005)] == 2
    assert row[len(m.LATENCY_BUCKETS)] == 1
    assert sum(row[:-1]) == 3 and math.isclose(row[-1], 2.00006)
    # a read of several MsgTypes: each message counted under its own
    stats.observe("outbound", 0.0002, [b"8", b"8", b"9", b"8"])
    eight, nine = stats.series[("outbound", b"8")], stats.series[("outbound", b"9")]
    assert sum(eight[:-1]) == 3 and sum(nine[:-1]) == 1
    assert math.isclose(eight[-1], 0.0006) and math.isclose(nine[-1], 0.0002)


def _steady(i: int) -> float:
    return 100e-6 + (i % 7) * 3e-6  # 100-118 µs, deterministic jitter


def test_anomaly_detector_steady_series_raises_nothing() -> None:
    det = AnomalyDetector(k=3, n=3, warmup=20)
    assert not any(det.observe(_steady(i)) for i in range(2000))
    assert det.anomalies == 0
    assert 100e-6 < det.mean < 118e-6


def test_anomaly_detector_injected_delay() -> None:
    det = AnomalyDetector(k=3, n=3, warmup=20)
    for i in range(200):
        det.observe(_steady(i))
    mean = det.mean
    # n consecutive slow observations: the n-th raises, once per run.
    assert [det.observe(0.005) for _ in range(5)] == [False, False, True, False, False]
    assert det.anomalies == 1
    assert det.mean == mean  # anomalous observations do not move the baseline
    det.observe(_steady(0))  # back to normal: the run ends
    assert [det.observe(0.005) for _ in range(3)] == [False, False, True]
    assert det.anomalies == 2
    # Two slow ones between normal ones are no anomaly.
    for _ in range(5):
        det.observe(0.005)
        det.observe(0.005)
        det.observe(_steady(1))
    assert det.anomalies == 2


def test_anomaly_detector_reports_a_sustained_run_again() -> None:
    """A slowdown that goes on is not reported once and forgotten: every `repeat` anomalous reads
    of the same run raise again (an alert on the counter's rate stays on)."""
    det = AnomalyDetector(k=3, n=3, warmup=20, repeat=10)
    for i in range(200):
        det.observe(_steady(i))
    raised = [i for i in range(45) if det.observe(0.005)]
    assert raised == [2, 12, 22, 32, 42]  # the 3rd slow read, then every 10 more
    assert det.anomalies == 5
    det.observe(_steady(0))  # the run ends; a new one starts counting afresh
    assert [det.observe(0.005) for _ in range(3)] == [False, False, True]


def test_anomaly_detector_quiet_during_warmup() -> None:
    det = AnomalyDetector(k=3, n=3, warmup=20)
    series = [_steady(i) for i in range(10)] + [0.05] * 10
    assert not any(det.observe(x) for x in series)
    assert det.anomalies == 0 and det.seen == 20
