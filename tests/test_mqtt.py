"""fixproxy.mqtt against a real mosquitto (tests/mosquitto.py): topics and payloads, retained KPIs,
a broker that goes away and comes back, overflow, TLS; and the [mqtt] config table."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mosquitto import Mosquitto, free_port
from prometheus_client import CollectorRegistry

from fixproxy import mqtt as mqttmod
from fixproxy.certs import DevPki
from fixproxy.config import ConfigError, MqttConfig, parse_config
from fixproxy.events import Direction, Outcome, SecurityEvent
from fixproxy.mqtt import OVERFLOW_KIND, MqttPublisher, tls_context_from_config
from fixproxy.reasons import Reason
from fixproxy.recorder import Recorder
from fixproxy.tls import client_context

FAST = {"backoff_initial": 0.05, "backoff_max": 0.3}  # reconnect quickly in tests


def event(i: int, *, kind: str | None = None, reason: Reason = Reason.MSGTYPE_NOT_ALLOWED) -> SecurityEvent:
    return SecurityEvent(reason, Outcome.REFUSED, f"evt-{i}", session="OMS1", direction=Direction.INBOUND,
                         source="127.0.0.1", msg_type=b"D", msg_seq_num=i, kind=kind)


class Collector:
    """A separate subscriber on ``topic``. ``durable``: a persistent session (clean_session=False)
    that reconnects by itself, so on a broker with persistence nothing is missed across a restart."""

    def __init__(self, broker: Mosquitto, topic: str, *, durable: bool = False, name: str = "collector") -> None:
        self.broker = broker
        self.topic = topic
        self.durable = durable
        self.identifier = f"{name}-{id(self):x}"
        self.messages: list[aiomqtt.Message] = []
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._subscribed.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.broker.host, self.broker.port, identifier=self.identifier,
                                          clean_session=not self.durable) as client:
                    await client.subscribe(self.topic, qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
            except aiomqtt.MqttError:
                if not self.durable:
                    raise
                await asyncio.sleep(0.05)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.messages if "/events/" in str(m.topic)]

    def details(self) -> list[str]:
        return [e["detail"] for e in self.events() if e["kind"] != OVERFLOW_KIND]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        await wait_until(predicate, timeout, lambda: f"{len(self.messages)} messages received")


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
                     what: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s {what()}")
        await asyncio.sleep(0.01)


@pytest.fixture
def persistent_broker(tmp_path: Path):
    """A broker of this test's own, to stop and restart; sessions survive the restart."""
    broker = Mosquitto(tmp_path / "broker", persistence=True).start()
    yield broker
    broker.stop()


# -- topics and payloads ---------------------------------------------------------------------------


async def test_events_arrive_on_their_topics_with_their_json(mosquitto_broker: Mosquitto) -> None:
    events = [event(0), event(1, kind="auth.bruteforce", reason=Reason.SOURCE_BLOCKED),
              SecurityEvent(None, Outcome.INFO, "logon", session="OMS1", kind="session.logon"),
              event(3, kind="odd/kind+#"), event(4)]
    async with Collector(mosquitto_broker, "fixproxy/topics/#") as sub:
        pub = MqttPublisher(mosquitto_broker.host, mosquitto_broker.port, "topics", **FAST)
        await pub.start()
        pub.sink(events[:2])
        pub.sink(events[2:])
        await pub.stop(drain_timeout=5)  # stop() publishes what is buffered first
        await sub.wait_until(lambda: len(sub.messages) == 5)
    assert [str(m.topic) for m in sub.messages] == [
        "fixproxy/topics/events/policy.msgtype_not_allowed",
        "fixproxy/topics/events/auth.bruteforce",
        "fixproxy/topics/events/session.logon",
        "fixproxy/topics/events/odd_kind__",  # a kind never adds topic levels or wildcards
        "fixproxy/topics/events/policy.msgtype_not_allowed",
    ]
    assert [m.payload for m in sub.messages] == [e.to_json().encode() for e in events]
    assert all(m.qos == 1 and not m.retain for m in sub.messages)
    first = json.loads(sub.messages[0].payload)
    assert first["reason"] == "msgtype_not_allowed" and first["msg_seq_num"] == 0 and first["session"] == "OMS1"
    assert pub.stats["published"] == 5 and pub.stats["buffered"] == 0 and pub.stats["overflowed"] == 0
    assert pub.stats["connected"] is False and pub.stats["reconnects"] == 0


async def test_kpi_snapshot_is_published_periodically_and_retained(mosquitto_broker: Mosquitto) -> None:
    calls = 0

    def snapshot() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"snapshot": calls, "sessions": {"OMS1": {"refused": 3}}}

    pub = MqttPublisher(mosquitto_broker.host, mosquitto_broker.port, "kpis", kpi_interval=0.1,
                        kpi_snapshot=snapshot, **FAST)
    async with Collector(mosquitto_broker, "fixproxy/kpis/kpis") as sub:
        await pub.start()
        await sub.wait_until(lambda: len(sub.messages) >= 3)
        # One snapshot at connect, then one per interval: 3 within a few tenths of a second.
        numbers = [json.loads(m.payload)["snapshot"] for m in sub.messages]
        assert numbers[:3] == [1, 2, 3]
        assert json.loads(sub.messages[0].payload)["sessions"] == {"OMS1": {"refused": 3}}
    await pub.stop()
    assert pub.stats["kpis_published"] == calls
    # Retained: a subscriber that arrives later gets the last snapshot at once, flagged retained.
    async with Collector(mosquitto_broker, "fixproxy/kpis/kpis", name="late") as late:
        await late.wait_until(lambda: len(late.messages) == 1, timeout=2)
    assert late.messages[0].retain
    assert json.loads(late.messages[0].payload)["snapshot"] == calls


async def test_as_a_recorder_sink(mosquitto_broker: Mosquitto) -> None:
    """Wired the way the proxy wires it: Recorder.add_sink(publisher.sink)."""
    recorder = Recorder(registry=CollectorRegistry(), flush_interval=0.01)
    pub = MqttPublisher(mosquitto_broker.host, mosquitto_broker.port, "recorder", **FAST)
    recorder.add_sink(pub.sink)
    async with Collector(mosquitto_broker, "fixproxy/recorder/#") as sub:
        await pub.start()
        await recorder.start()
        recorder.submit([event(1), event(2)])
        recorder.submit([event(3)])
        await sub.wait_until(lambda: len(sub.messages) == 3)
        await recorder.stop()
        await pub.stop()
    assert sub.details() == ["evt-1", "evt-2", "evt-3"]


async def test_a_failing_kpi_snapshot_is_logged_and_skipped(mosquitto_broker: Mosquitto,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def snapshot() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("metrics not ready")
        return {"n": calls}

    async with Collector(mosquitto_broker, "fixproxy/kpifail/kpis") as sub:
        pub = MqttPublisher(mosquitto_broker.host, mosquitto_broker.port, "kpifail", kpi_interval=0.05,
                            kpi_snapshot=snapshot, **FAST)
        await pub.start()
        pub.sink([event(1)])
        await sub.wait_until(lambda: len(sub.messages) >= 1)
        await pub.stop()
    assert json.loads(sub.messages[0].payload) == {"n": 2}
    assert "KPI snapshot failed" in caplog.text
    assert pub.stats["reconnects"] == 0 and pub.stats["published"] == 1  # the connection was kept


# -- the broker goes away ----------------------------------------------------------------------------


async def test_broker_restart_loses_nothing(persistent_broker: Mosquitto) -> None:
    broker = persistent_broker
    async with Collector(broker, "fixproxy/restart/#", durable=True) as sub:
        pub = MqttPublisher(broker.host, broker.port, "restart", **FAST)
        await pub.start()
        pub.sink([event(i) for i in range(100)])
        await sub.wait_until(lambda: len(set(sub.details())) == 100)

        broker.stop()
        await wait_until(lambda: not pub.stats["connected"], 5)
        for start in range(100, 600, 50):  # 500 events while the broker is down, as the recorder hands them
            pub.sink([event(i) for i in range(start, start + 50)])
        assert pub.stats["buffered"] == 500 and pub.stats["overflowed"] == 0
        await asyncio.sleep(0.3)  # a few failed reconnects
        assert pub.stats["last_error"] is not None and pub.stats["buffered"] == 500

        broker.restart()  # same port
        await sub.wait_until(lambda: len(set(sub.details())) == 600)
        await pub.stop()
    assert set(sub.details()) == {f"evt-{i}" for i in range(600)}
    stats = pub.stats
    assert stats["reconnects"] >= 1 and stats["buffered"] == 0 and stats["overflowed"] == 0
    assert stats["published"] >= 600  # at least once: a message whose PUBACK was lost is sent again


async def test_broker_dying_mid_drain_loses_nothing(persistent_broker: Mosquitto) -> None:
    broker = persistent_broker
    n = 5000
    async with Collector(broker, "fixproxy/middrain/#", durable=True) as sub:
        pub = MqttPublisher(broker.host, broker.port, "middrain", **FAST)
        await pub.start()
        await wait_until(lambda: pub.stats["connected"], 5)
        pub.sink([event(i) for i in range(n)])
        await wait_until(lambda: pub.stats["published"] >= 200, 5)
        broker.stop()  # while the drain has publishes in flight
        published_before = pub.stats["published"]
        assert published_before < n, "drained before the broker stopped: make n larger"
        await wait_until(lambda: not pub.stats["connected"], 5)
        broker.restart()
        await sub.wait_until(lambda: len(set(sub.details())) == n, timeout=15)
        await pub.stop()
    assert set(sub.details()) == {f"evt-{i}" for i in range(n)}
    assert pub.stats["reconnects"] >= 1 and pub.stats["buffered"] == 0


async def test_faults_between_proxy_and_broker_lose_nothing(persistent_broker: Mosquitto) -> None:
    """fixproxy's own fault proxy between the publisher and a real mosquitto: latency with jitter
    and sliced packets, then a blackhole (the broker seems alive but nothing comes back), then
    resets mid-drain. Every event arrives (at least once), none is lost within the buffer bound."""
    from fixproxy.faultproxy import FaultProxy

    broker = persistent_broker
    async with Collector(broker, "fixproxy/faulty/#", durable=True) as sub:
        with FaultProxy(0, broker.host, broker.port, seed=7) as fp:
            pub = MqttPublisher("127.0.0.1", fp.port, "faulty", keepalive=1, timeout=2.0, **FAST)
            await pub.start()
            await wait_until(lambda: pub.stats["connected"], 5)
            fp.set(latency=0.01, jitter=0.01, slice_bytes=5)
            pub.sink([event(i) for i in range(200)])
            await sub.wait_until(lambda: len(set(sub.details())) == 200, timeout=20)
            fp.reset_all()
            fp.set(blackhole=True)  # PUBACKs and PINGRESPs vanish: the client must notice and retry
            pub.sink([event(i) for i in range(200, 400)])
            await asyncio.sleep(1.0)
            assert len(set(sub.details())) < 400 or pub.stats["buffered"] > 0
            fp.reset_all()
            fp.reset_connections()
            await sub.wait_until(lambda: len(set(sub.details())) == 400, timeout=20)
            for round_ in range(3):  # resets while a drain is in flight
                base = 400 + round_ * 1000
                pub.sink([event(i) for i in range(base, base + 1000)])
                await wait_until(lambda b=base: len(set(sub.details())) > b + 50, 10)  # type: ignore[misc]
                fp.reset_connections()
            await sub.wait_until(lambda: len(set(sub.details())) == 3400, timeout=30)
            await pub.stop()
    assert set(sub.details()) == {f"evt-{i}" for i in range(3400)}
    assert pub.stats["reconnects"] >= 4 and pub.stats["overflowed"] == 0 and fp.resets >= 4


async def test_overflow_while_down_is_counted_and_reported(persistent_broker: Mosquitto) -> None:
    broker = persistent_broker
    async with Collector(broker, "fixproxy/overflow/#", durable=True) as sub:
        pub = MqttPublisher(broker.host, broker.port, "overflow", max_buffer=50, **FAST)
        await pub.start()
        await wait_until(lambda: pub.stats["connected"], 5)
        broker.stop()
        await wait_until(lambda: not pub.stats["connected"], 5)
        t0 = time.perf_counter()
        for start in range(0, 80, 10):
            pub.sink([event(i) for i in range(start, start + 10)])
        assert time.perf_counter() - t0 < 0.05  # nothing blocks
        assert pub.stats["buffered"] == 50 and pub.stats["overflowed"] == 30

        broker.restart()
        await sub.wait_until(lambda: any(e["kind"] == OVERFLOW_KIND for e in sub.events()))
        await pub.stop()
    events = sub.events()
    assert [e["detail"] for e in events[:50]] == [f"evt-{i}" for i in range(50)]  # the oldest are kept
    overflow = [e for e in events if e["kind"] == OVERFLOW_KIND]
    assert len(overflow) == 1 and events[50] == overflow[0]  # reported where the gap is
    assert overflow[0]["count"] == 30 and overflow[0]["detail"].startswith("30 security event(s) not published")
    assert str(sub.messages[50].topic) == "fixproxy/overflow/events/mqtt.overflow"
    assert pub.stats["overflowed"] == 30 and pub.stats["published"] == 51 and pub.stats["buffered"] == 0


async def test_sink_while_disconnected_returns_at_once_and_never_raises() -> None:
    pub = MqttPublisher("127.0.0.1", free_port(), "nobroker", max_buffer=20_000, **FAST)
    assert pub.sink([event(0)]) is None  # before start(): buffered
    await pub.start()
    await wait_until(lambda: pub.stats["last_error"] is not None, 5)  # connection refused
    batch = [event(i) for i in range(10_000)]
    t0 = time.perf_counter()
    result = pub.sink(batch)
    elapsed = time.perf_counter() - t0
    assert result is None and not inspect.isawaitable(result)
    assert elapsed < 0.05, elapsed
    pub.sink(batch)  # over max_buffer: counted, not raised
    pub.sink(None)  # type: ignore[arg-type]  # garbage: logged, not raised
    stats = pub.stats
    assert stats["buffered"] == 20_000 and stats["overflowed"] == 1 and stats["connected"] is False
    assert "refused" in stats["last_error"].lower() or "errno" in stats["last_error"].lower(), stats["last_error"]
    t0 = time.perf_counter()
    await pub.stop(drain_timeout=5)  # not connected: nothing to wait for
    assert time.perf_counter() - t0 < 1


# -- TLS -------------------------------------------------------------------------------------------


async def test_publish_over_tls(mosquitto_broker: Mosquitto, pki: DevPki) -> None:
    assert mosquitto_broker.tls_port is not None
    cfg = MqttConfig(host="localhost", port=mosquitto_broker.tls_port, tls=True, ca=pki.ca_cert)
    async with Collector(mosquitto_broker, "fixproxy/tls/#") as sub:
        pub = MqttPublisher.from_config(cfg, "tls", **FAST)
        await pub.start()
        pub.sink([event(i) for i in range(10)])
        await sub.wait_until(lambda: len(sub.messages) == 10)
        await pub.stop()
    assert sub.details() == [f"evt-{i}" for i in range(10)]
    assert pub.stats["last_error"] is None


async def test_mutual_tls_with_a_client_certificate(tmp_path: Path, pki: DevPki) -> None:
    with Mosquitto(tmp_path / "mtls", pki=pki, require_certificate=True) as broker:
        assert broker.tls_port is not None
        with_cert = MqttConfig(host="127.0.0.1", port=broker.tls_port, tls=True, ca=pki.ca_cert,
                               cert=pki.proxy_client_cert, key=pki.proxy_client_key)
        without = MqttConfig(host="127.0.0.1", port=broker.tls_port, tls=True, ca=pki.ca_cert)
        async with Collector(broker, "fixproxy/mtls/#") as sub:
            good = MqttPublisher.from_config(with_cert, "mtls", **FAST)
            # TLS 1.3: the client's handshake completes, the broker's alert comes with the first
            # read, and the connect fails at its CONNACK timeout.
            refused = MqttPublisher.from_config(without, "mtls", connect_timeout=0.5, **FAST)
            await good.start()
            await refused.start()
            good.sink([event(1)])
            refused.sink([event(2)])
            await sub.wait_until(lambda: len(sub.messages) == 1)
            await wait_until(lambda: refused.stats["last_error"] is not None, 5)
            await good.stop()
            await refused.stop()
        assert sub.details() == ["evt-1"]
        assert refused.stats["buffered"] == 1 and refused.stats["published"] == 0
        assert "CERTIFICATE_REQUIRED" in refused.stats["last_error"], refused.stats["last_error"]


async def test_tls_to_a_broker_of_another_ca_fails_and_keeps_buffering(
        mosquitto_broker: Mosquitto, foreign_pki: DevPki) -> None:
    assert mosquitto_broker.tls_port is not None
    ctx = client_context(None, None, foreign_pki.ca_cert, min_version="TLSv1.2")
    pub = MqttPublisher("localhost", mosquitto_broker.tls_port, "foreign", tls_context=ctx, **FAST)
    await pub.start()
    pub.sink([event(i) for i in range(5)])
    await wait_until(lambda: pub.stats["last_error"] is not None, 5)
    await asyncio.sleep(0.2)  # and it keeps failing, keeps buffering
    pub.sink([event(5)])
    stats = pub.stats
    await pub.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in stats["last_error"], stats["last_error"]
    assert stats["connected"] is False and stats["published"] == 0 and stats["buffered"] == 6
    assert stats["reconnects"] == 0


# -- API details -------------------------------------------------------------------------------------


def test_topics_and_constructor_checks() -> None:
    assert mqttmod.event_topic("demo", "auth.bruteforce") == "fixproxy/demo/events/auth.bruteforce"
    assert mqttmod.kpi_topic("demo") == "fixproxy/demo/kpis"
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError, match="instance"):
            MqttPublisher("localhost", 1883, bad)
    with pytest.raises(ValueError, match="qos"):
        MqttPublisher("localhost", 1883, "x", qos=3)
    # Two proxies with the same instance name must not take each other's MQTT session over.
    assert MqttPublisher("localhost", 1883, "x").client_id != MqttPublisher("localhost", 1883, "x").client_id
    assert MqttPublisher("localhost", 1883, "x", client_id="fixed").client_id == "fixed"


def test_config_defaults_are_the_publisher_defaults() -> None:
    params = inspect.signature(MqttPublisher).parameters
    cfg = MqttConfig(host="h")
    assert cfg.max_buffer == params["max_buffer"].default
    assert cfg.kpi_interval == params["kpi_interval"].default


# -- [mqtt] in the config file ---------------------------------------------------------------------

_BASE = """
[proxy]
listen = "127.0.0.1:0"
insecure = true
[upstream]
endpoints = ["127.0.0.1:9880"]
insecure = true
[[sessions]]
name = "OMS1"
begin_string = "FIX.4.4"
sender_comp_id = "OMS1"
target_comp_id = "ATS"
"""


def _load(mqtt: str, tmp_path: Path) -> Any:
    return parse_config(_BASE + "[mqtt]\n" + mqtt, tmp_path, "fixproxy.toml")


def _error(mqtt: str, tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(mqtt, tmp_path)
    return info.value


def test_config_mqtt_absent_and_defaults(tmp_path: Path) -> None:
    assert parse_config(_BASE, tmp_path, "fixproxy.toml").mqtt is None
    cfg = _load('host = "broker.example.com"', tmp_path).mqtt
    assert cfg == MqttConfig(host="broker.example.com")
    assert cfg.port == 1883 and cfg.tls is False and cfg.max_buffer == 100_000 and cfg.kpi_interval == 5.0


def test_config_mqtt_full(tmp_path: Path, pki: DevPki) -> None:
    cfg = _load(f"""host = "::1"
port = 8883
tls = true
ca = "{pki.ca_cert}"
cert = "{pki.proxy_client_cert}"
key = "{pki.proxy_client_key}"
username = "fixproxy"
password = "secret"
client_id = "fixproxy-demo"
max_buffer = 50
kpi_interval = 0.5
""", tmp_path).mqtt
    assert cfg == MqttConfig(host="::1", port=8883, tls=True, ca=pki.ca_cert, cert=pki.proxy_client_cert,
                             key=pki.proxy_client_key, username="fixproxy", password="secret",
                             client_id="fixproxy-demo", max_buffer=50, kpi_interval=0.5)
    ctx = tls_context_from_config(cfg)
    assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"
    pub = MqttPublisher.from_config(cfg, "demo")
    assert (pub.host, pub.port, pub.client_id, pub.max_buffer, pub.kpi_interval) == \
        ("::1", 8883, "fixproxy-demo", 50, 0.5)
    assert pub.tls_context is not None and pub.username == "fixproxy" and pub.password == "secret"


def test_config_relative_tls_paths(tmp_path: Path, pki: DevPki) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca_cert.read_bytes())
    cfg = _load('host = "localhost"\ntls = true\nca = "ca.pem"', tmp_path).mqtt
    assert cfg.ca == tmp_path / "ca.pem"


@pytest.mark.parametrize(("mqtt", "key", "problem"), [
    ("port = 1883", "mqtt.host", "missing"),
    ('host = "bad host"', "mqtt.host", "host name or an IP address"),
    ('host = "h"\nport = 0', "mqtt.port", "1-65535"),
    ('host = "h"\nport = 70000', "mqtt.port", "1-65535"),
    ('host = "h"\nport = "1883"', "mqtt.port", "1-65535"),
    ('host = "h"\ntls = "yes"', "mqtt.tls", "true or false"),
    ('host = "h"\ntls = true', "mqtt.ca", "required with tls = true"),
    ('host = "h"\nmax_buffer = 0', "mqtt.max_buffer", "positive integer"),
    ('host = "h"\nkpi_interval = -1', "mqtt.kpi_interval", "positive number"),
    ('host = "h"\nclient_id = "has space"', "mqtt.client_id", "1-64 characters"),
    ('host = "h"\nusername = ""', "mqtt.username", "must not be empty"),
    ('host = "h"\npassword = "p"', "mqtt.username", "only sent with a username"),
    ('host = "h"\nhots = "x"', "mqtt.hots", "unknown key (did you mean \"host\"?)"),
    ('host = "h"\nca = "missing.pem"', "mqtt.ca", "file not found"),
])
def test_config_mqtt_errors(mqtt: str, key: str, problem: str, tmp_path: Path) -> None:
    err = _error(mqtt, tmp_path)
    assert err.key == key, str(err)
    assert problem in err.problem, str(err)


def test_config_mqtt_tls_file_errors(tmp_path: Path, pki: DevPki, foreign_pki: DevPki) -> None:
    ca, cert, key = pki.ca_cert, pki.proxy_client_cert, pki.proxy_client_key
    err = _error(f'host = "h"\nca = "{ca}"', tmp_path)  # would be silently unused
    assert err.key == "mqtt.ca" and "only used with tls = true" in err.problem
    err = _error(f'host = "h"\ncert = "{cert}"\nkey = "{key}"', tmp_path)
    assert err.key == "mqtt.cert" and "only used with tls = true" in err.problem
    err = _error(f'host = "h"\ntls = true\nca = "{ca}"\ncert = "{cert}"', tmp_path)
    assert err.key == "mqtt.key" and "go together" in err.problem
    err = _error(f'host = "h"\ntls = true\nca = "{ca}"\nkey = "{key}"', tmp_path)
    assert err.key == "mqtt.cert" and "go together" in err.problem
    other_key = foreign_pki.proxy_client_key
    err = _error(f'host = "h"\ntls = true\nca = "{ca}"\ncert = "{cert}"\nkey = "{other_key}"', tmp_path)
    assert err.key == "mqtt.key" and "does not belong to the certificate" in err.problem
    err = _error(f'host = "h"\ntls = true\nca = "{key}"', tmp_path)
    assert err.key == "mqtt.ca" and "not a PEM certificate" in err.problem
    err = _error(f'host = "h"\ntls = true\nca = "{ca}"\ncert = "{cert}"\nkey = "{cert}"', tmp_path)
    assert err.key == "mqtt.key" and "not a PEM private key" in err.problem
