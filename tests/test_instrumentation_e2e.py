"""Instrumentation end to end: real QuickFIX engines through fixproxy over mutual TLS, security
events published to a real mosquitto, a real audit trail on disk that verifies, and the proxy
failing closed when the trail cannot be written."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiomqtt
import pytest
from helpers import wait as _wait

from fixproxy.audit import generate_signing_key, verify
from fixproxy.demo import Stack
from fixproxy.reasons import Reason


class _Subscriber:
    """Collects what the broker delivers on fixproxy/<instance>/#, in a thread of its own."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        import threading

        self.messages: list[tuple[str, dict]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(host, port, topic)), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "subscriber did not connect"

    async def _run(self, host: str, port: int, topic: str) -> None:
        async with aiomqtt.Client(host, port, identifier=f"test-sub-{os.getpid()}") as client:
            await client.subscribe(topic, qos=1)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    async with asyncio.timeout(0.2):
                        async for msg in client.messages:
                            self.messages.append((str(msg.topic), json.loads(bytes(msg.payload))))
                except TimeoutError:
                    continue

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mosquitto_broker):
    work = tmp_path_factory.mktemp("instr")
    key = work / "audit-signing.pem"
    generate_signing_key(key)
    extra = f"""
[audit]
directory = "{work / 'audit'}"
signing_key = "{key}"
checkpoint_every = 50
checkpoint_seconds = 1.0

[mqtt]
host = "127.0.0.1"
port = {mosquitto_broker.port}
kpi_interval = 1.0
"""
    (work / "audit").mkdir()
    s = Stack(work, ["INS1"], sessions={"INS1": {}, "INS2": {"allowed_inbound": ["D"]}}, extra=extra)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_events_reach_mqtt_and_audit_trail_verifies(stack: Stack, mosquitto_broker) -> None:
    sub = _Subscriber("127.0.0.1", mosquitto_broker.port, "fixproxy/demo/#")
    try:
        oms = stack.oms["INS1"]
        assert oms.wait_logged_on(20)
        for i in range(10):
            oms.send_new_order(f"INS-{i}", "VOD.L", "1", 100, 10.5)
        assert oms.wait_for(lambda o: sum(1 for r in o.exec_reports if r[1] == "2") >= 10, 15)
        raw = stack.raw_client("INS2")
        assert raw.logon() is not None
        raw.send("H", [(11, "X"), (55, "VOD.L"), (54, "1")])  # not allowed for INS2
        assert raw.wait_for(lambda m: m.msg_type == b"3", 5) is not None
        raw.close()
        # the refusal is published on its kind's topic, and KPI snapshots arrive
        assert _wait(lambda: "fixproxy/demo/events/policy.msgtype_not_allowed" in sub.topics(), 10), sub.topics()
        assert _wait(lambda: "fixproxy/demo/kpis" in sub.topics(), 10)
        refusal = next(p for t, p in sub.messages if t.endswith("policy.msgtype_not_allowed"))
        assert refusal["reason"] == "msgtype_not_allowed" and refusal["session"] == "INS2"
        assert refusal["outcome"] == "refused" and refusal["msg_type"] == "H"
        kpis = next(p for t, p in sub.messages if t == "fixproxy/demo/kpis")
        assert kpis["instance"] == "demo" and "fixproxy_messages" in kpis
        # a checkpoint leaves the box as an event too
        assert _wait(lambda: any(t.endswith("audit.checkpoint") for t in sub.topics()), 10)
    finally:
        sub.stop()
    # the audit trail on disk: every forwarded order, the refusal, and it verifies
    proxy = stack.proxy.proxy
    stack.proxy.sync(lambda: proxy.audit.flush())
    result = verify(stack.workdir / "audit")
    assert result.ok, result.problem
    records = [json.loads(line) for f in sorted((stack.workdir / "audit").glob("audit-*.jsonl"))
               for line in f.read_text().splitlines() if line.strip()]
    kinds = {r["kind"] for r in records}
    assert {"messages", "config.loaded", "policy.msgtype_not_allowed"} <= kinds
    rows = [row for r in records if r["kind"] == "messages" for row in r["messages"]]
    assert sum(1 for row in rows if row[1] == "D" and row[3] == "forwarded") >= 10
    assert any(row[1] == "H" and row[3] == "refused" and row[4] == "msgtype_not_allowed" for row in rows)
    # every flush by the proxy that wrote records was timed (the event loop's time spent on it)
    reg = proxy.registry
    flushes = reg.get_sample_value("fixproxy_audit_flush_seconds_count")
    written = reg.get_sample_value("fixproxy_audit_records_total")
    assert flushes is not None and written is not None and 1 <= flushes <= written
    assert reg.get_sample_value("fixproxy_audit_flush_seconds_sum") > 0


def test_fail_closed_when_the_audit_trail_cannot_be_written(stack: Stack) -> None:
    """The trail's directory becomes unwritable: new orders are refused with a clear Reject and an
    alert; when it is writable again, orders flow (records kept pending are written, none lost)."""
    proxy = stack.proxy.proxy
    audit = proxy.audit
    oms = stack.oms["INS1"]
    assert oms.wait_logged_on(10)
    original_flush = audit.flush

    def failing_flush() -> None:
        audit.error = OSError(28, "No space left on device")  # what a full disk raises on write

    stack.proxy.sync(lambda: setattr(audit, "flush", failing_flush))
    try:
        assert _wait(lambda: proxy.audit_down, 5)
        before = len(oms.rejects)
        oms.send_new_order("INS-FC-1", "VOD.L", "1", 100, 10.5)
        assert oms.wait_for(lambda o: len(o.rejects) > before, 10)
        rej = oms.rejects[-1]
        assert "Audit trail unavailable" in (rej.get(58) or "")
        events = stack.proxy.events()
        assert any(e.kind == "audit.unavailable" for e in events)
        assert any(e.reason is Reason.AUDIT_UNAVAILABLE and e.outcome.value == "refused" for e in events)
    finally:
        def restore() -> None:
            audit.flush = original_flush
            audit.error = None

        stack.proxy.sync(restore)
    assert _wait(lambda: not proxy.audit_down, 5)
    oms.send_new_order("INS-FC-2", "VOD.L", "1", 100, 10.5)
    assert oms.wait_for(lambda o: any(r[0] == "INS-FC-2" and r[1] == "2" for r in o.exec_reports), 10)
    stack.proxy.sync(lambda: proxy.audit.flush())
    assert verify(Path(stack.workdir / "audit")).ok
