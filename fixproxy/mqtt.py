"""Security events and KPI snapshots to an MQTT broker, off the FIX path.

Topics (``<instance>`` is ``[proxy] instance``):

* ``fixproxy/<instance>/events/<kind>``: one message per :class:`SecurityEvent`, payload
  ``SecurityEvent.to_json()``, QoS 1. ``<kind>`` is ``SecurityEvent.kind`` (``policy.msgtype_not_allowed``,
  ``auth.bruteforce``, ``session.logon``, ...), so a consumer subscribes to ``fixproxy/+/events/auth.#``
  or to ``fixproxy/<instance>/events/#``.
* ``fixproxy/<instance>/kpis``: ``kpi_snapshot()`` as JSON, QoS 1, retained, at connect and then every
  ``kpi_interval`` seconds. Not buffered: only the latest snapshot matters.

How an event travels. :meth:`MqttPublisher.sink` (a :class:`fixproxy.recorder.Recorder` sink) only
appends to a bounded deque and wakes a background task: it never waits for the broker and never
raises. The background task keeps one connection to the broker; while connected it publishes the
deque from its head, in order, up to ``window`` messages in flight, and removes an event only once
its publish has completed (the broker's PUBACK, at QoS 1). When the broker is unreachable the deque
keeps filling up to ``max_buffer`` events; what does not fit is counted (``stats["overflowed"]``)
and, once there is room again (after reconnecting), reported in order, at the place of the gap, as
one synthetic event of kind ``mqtt.overflow`` whose payload carries ``"count"``. Reconnection uses
exponential backoff with jitter (``backoff_initial`` doubling up to ``backoff_max``), and after a
reconnect the deque is drained in order.

Delivery is **at least once**: if the connection breaks after the broker received a message but
before its PUBACK reached us, the message is published again after the reconnect. A duplicate is
byte-identical to the original (``to_json`` is deterministic and ``time`` has microseconds), so
consumers that care deduplicate on the payload. Events still buffered when :meth:`stop` gives up
waiting (``drain_timeout``), or when the process dies, are lost; the JSON-lines file written by the
recorder is the durable record.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiomqtt

from . import tls as tlsmod
from .events import Outcome, SecurityEvent

if TYPE_CHECKING:
    from .config import MqttConfig

log = logging.getLogger("fixproxy.mqtt")

TOPIC_ROOT = "fixproxy"
OVERFLOW_KIND = "mqtt.overflow"
_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


def event_topic(instance: str, kind: str) -> str:
    """``fixproxy/<instance>/events/<kind>``; a kind can never add topic levels or wildcards."""
    return f"{TOPIC_ROOT}/{instance}/events/{kind.translate(_TOPIC_UNSAFE)}"


def kpi_topic(instance: str) -> str:
    return f"{TOPIC_ROOT}/{instance}/kpis"


def tls_context_from_config(cfg: MqttConfig) -> ssl.SSLContext:
    """The client context for ``[mqtt] tls = true``: the broker's certificate must chain to ``ca``
    (only that CA is trusted) and name ``host``; ``cert``/``key`` are presented if given. TLS 1.2
    (ECDHE + AEAD only) is accepted, for brokers without TLS 1.3."""
    assert cfg.ca is not None  # the config refuses tls = true without ca
    return tlsmod.client_context(cfg.cert, cfg.key, cfg.ca, min_version="TLSv1.2")


class _Overflow:
    """Marks, in the buffer, where events were lost because the buffer was full."""

    __slots__ = ("count", "event")

    def __init__(self, count: int) -> None:
        self.count = count
        self.event = SecurityEvent(
            None, Outcome.INFO,
            f"{count} security event(s) not published to MQTT: the buffer was full while the broker "
            f"was unreachable",
            session=None, kind=OVERFLOW_KIND)

    def payload(self) -> bytes:
        d = self.event.to_dict()
        d["count"] = self.count
        return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


class MqttPublisher:
    """Publishes security events and KPI snapshots; see the module docstring.

    ``stats`` (a fresh dict on each read): ``published`` (events and overflow reports acknowledged
    by the broker), ``buffered`` (waiting now), ``overflowed`` (events that did not fit, total),
    ``connected``, ``reconnects`` (successful connections after the first), ``last_error`` (the last
    connection or publish error, kept after reconnecting; None if there never was one),
    ``kpis_published``.

    ``qos=1`` (the default) gives the at-least-once delivery described above; with ``qos=0`` a
    publish counts as done once written to the socket, so what is in flight when the connection
    breaks is lost.
    """

    def __init__(self, host: str, port: int, instance: str, *, tls_context: ssl.SSLContext | None = None,
                 username: str | None = None, password: str | None = None, client_id: str | None = None,
                 max_buffer: int = 100_000, qos: int = 1, kpi_interval: float = 5.0,
                 kpi_snapshot: Callable[[], dict[str, Any]] | None = None, backoff_initial: float = 0.2,
                 backoff_max: float = 5.0, window: int = 64, timeout: float = 10.0, connect_timeout: float = 5.0,
                 keepalive: int = 30) -> None:
        if not instance or instance.translate(_TOPIC_UNSAFE) != instance:
            raise ValueError(f"instance must be a non-empty MQTT topic level without / + #, got {instance!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        if max_buffer < 1 or window < 1:
            raise ValueError("max_buffer and window must be at least 1")
        if not (kpi_interval > 0 and 0 < backoff_initial <= backoff_max and timeout > 0 and connect_timeout > 0):
            raise ValueError("kpi_interval, backoff_initial, timeouts must be positive, backoff_max >= backoff_initial")
        self.host = host
        self.port = port
        self.instance = instance
        self.tls_context = tls_context
        self.username = username
        self.password = password
        # A fixed default would make two proxies with the same instance name take the session over
        # from each other, reconnecting forever.
        self.client_id = client_id or f"fixproxy-{instance}-{secrets.token_hex(4)}"
        self.max_buffer = max_buffer
        self.qos = qos
        self.kpi_interval = kpi_interval
        self.kpi_snapshot = kpi_snapshot
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.window = window  # publishes in flight at once
        self.timeout = timeout  # for each publish (PUBACK): then the connection is given up
        # For CONNACK. A broker refusing our certificate after a TLS 1.3 handshake that looked fine
        # to us (its alert arrives with the first read) is only noticed when this runs out.
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive

        self._buf: deque[SecurityEvent | _Overflow] = deque()
        self._gap = 0  # events lost since the last overflow marker: reported when room appears
        self._topics: dict[str, str] = {}
        self._kpi_topic = kpi_topic(instance)
        self._wake: asyncio.Event | None = None  # created in start(), on the running loop
        self._task: asyncio.Task[None] | None = None
        self._published = 0
        self._overflowed = 0
        self._connected = False
        self._connecting = False  # a connection attempt is under way (stop() waits for its outcome)
        self._connections = 0
        self._last_error: str | None = None
        self._kpis_published = 0

    @classmethod
    def from_config(cls, cfg: MqttConfig, instance: str, *,
                    kpi_snapshot: Callable[[], dict[str, Any]] | None = None, **kwargs: Any) -> MqttPublisher:
        """The publisher an ``[mqtt]`` table describes (``instance``: ``[proxy] instance``)."""
        return cls(cfg.host, cfg.port, instance, tls_context=tls_context_from_config(cfg) if cfg.tls else None,
                   username=cfg.username, password=cfg.password, client_id=cfg.client_id,
                   max_buffer=cfg.max_buffer, kpi_interval=cfg.kpi_interval, kpi_snapshot=kpi_snapshot, **kwargs)

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "published": self._published,
            "buffered": len(self._buf),
            "overflowed": self._overflowed,
            "connected": self._connected,
            "reconnects": max(self._connections - 1, 0),
            "last_error": self._last_error,
            "kpis_published": self._kpis_published,
        }

    # -- the FIX side: never waits, never raises ---------------------------------------------------

    def sink(self, events: list[SecurityEvent]) -> None:
        """Recorder sink: O(1) per event, no I/O, no await. Call it on the event loop's thread."""
        try:
            buf = self._buf
            room = self.max_buffer - len(buf)
            if room >= len(events):
                buf.extend(events)
            else:
                room = max(room, 0)
                buf.extend(events[:room])
                lost = len(events) - room
                self._gap += lost
                self._overflowed += lost
            wake = self._wake
            if wake is not None and not wake.is_set():
                wake.set()
        except Exception:  # a broken sink must not break the recorder (which would log it anyway)
            with contextlib.suppress(Exception):
                log.exception("MQTT sink failed")

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        if self.tls_context is None and not _is_loopback(self.host):
            log.warning("MQTT to %s:%d without TLS: security events%s travel in clear", self.host, self.port,
                        " and the broker password" if self.password else "")
        self._wake = asyncio.Event()
        if self._buf:
            self._wake.set()
        self._connecting = True  # from now: stop() waits for the first attempt's outcome
        self._task = asyncio.create_task(self._run(), name="fixproxy-mqtt")

    async def stop(self, drain_timeout: float = 2.0) -> None:
        """Give the publisher up to ``drain_timeout`` seconds to publish what is buffered (unless the
        broker is known to be unreachable: then at once), then disconnect. What is still buffered is
        logged as lost."""
        task, self._task = self._task, None
        if task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while (self._buf and (self._connected or self._connecting) and loop.time() < deadline
               and not task.done()):
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._connected = self._connecting = False
        if self._buf or self._gap:
            log.warning("MQTT publisher stopped with %d event(s) unpublished (%d more overflowed unreported)",
                        sum(1 for i in self._buf if isinstance(i, SecurityEvent)), self._gap)

    # -- the background side -----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            client: aiomqtt.Client | None = None
            paho_error = _LastError()
            try:
                client = aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id, username=self.username,
                    password=self.password, tls_context=self.tls_context, clean_session=True,
                    timeout=self.connect_timeout, keepalive=self.keepalive, max_inflight_messages=self.window,
                    logger=paho_error.logger(),
                    # Small packets, many in flight: without this, Nagle and delayed ACKs cost ~40 ms a round.
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
                # aiomqtt warns above 10 pending calls; a full window is the normal case here.
                client.pending_calls_threshold = self.window + 10
                self._connecting = True
                async with client:
                    self._connecting = False
                    self._connected = True
                    self._connections += 1
                    delay = self.backoff_initial
                    log.info("MQTT connected to %s:%d (%d event(s) buffered)", self.host, self.port, len(self._buf))
                    await self._serve(client)
            except Exception as exc:  # MqttError above all; anything else must not end the task either
                error = f"{type(exc).__name__}: {exc}"
                if paho_error.message and paho_error.message not in error:
                    error += f" ({paho_error.message})"  # e.g. the TLS alert behind a CONNACK timeout
                if self._connected or self._last_error != error:
                    log.warning("MQTT broker %s:%d: %s; buffering, retrying", self.host, self.port, error)
                self._last_error = error
            finally:
                self._connected = self._connecting = False
                if client is not None:
                    _forget(client)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self.backoff_max)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Until the connection fails: drain, publish KPIs, watch for the broker going away."""
        tasks = [asyncio.create_task(self._watch(client)), asyncio.create_task(self._drain(client))]
        if self.kpi_snapshot is not None:
            tasks.append(asyncio.create_task(self._kpis(client)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        raise aiomqtt.MqttError("MQTT connection ended")

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # Nothing is subscribed: the iterator only ends, with MqttError, when the connection drops.
        # (A publish waiting for its PUBACK would otherwise only notice at its timeout.)
        async for _ in client.messages:
            pass

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the buffer from its head, up to ``window`` in flight (a sliding window: a new
        publish starts as soon as the oldest completes, which also keeps the broker's ACKs flowing).
        The head leaves the buffer only once its own publish has completed."""
        buf = self._buf
        wake = self._wake
        assert wake is not None
        inflight: deque[tuple[SecurityEvent | _Overflow, asyncio.Task[None]]] = deque()
        try:
            while True:
                # Tasks start in creation order, so the packets go out in buffer order. inflight
                # holds buf[0:len(inflight)]: only this loop removes from the buffer, at its head.
                while len(inflight) < self.window and len(inflight) < len(buf):
                    item = buf[len(inflight)]
                    task = asyncio.create_task(
                        client.publish(*self._message(item), qos=self.qos, timeout=self.timeout))
                    task.add_done_callback(_consume)
                    inflight.append((item, task))
                if not inflight:
                    wake.clear()
                    await wake.wait()
                    continue
                item, task = inflight[0]
                await task  # PUBACK received (QoS 1): the broker has it. MqttError: reconnect
                inflight.popleft()
                if buf[0] is not item:  # cannot happen: only this loop pops
                    raise RuntimeError("MQTT buffer changed under the drain")
                buf.popleft()
                self._published += 1
                if self._gap:
                    # Room again: the overflow report goes exactly where the gap is.
                    buf.append(_Overflow(self._gap))
                    self._gap = 0
        finally:
            for _, task in inflight:
                task.cancel()

    def _message(self, item: SecurityEvent | _Overflow) -> tuple[str, bytes]:
        if isinstance(item, _Overflow):
            return event_topic(self.instance, OVERFLOW_KIND), item.payload()
        topic = self._topics.get(item.kind)
        if topic is None:
            topic = self._topics[item.kind] = event_topic(self.instance, item.kind)
        return topic, item.to_json().encode()

    async def _kpis(self, client: aiomqtt.Client) -> None:
        assert self.kpi_snapshot is not None
        while True:
            try:
                payload = json.dumps(self.kpi_snapshot(), separators=(",", ":"), sort_keys=True, default=str)
            except Exception:
                log.exception("KPI snapshot failed")
            else:
                await client.publish(self._kpi_topic, payload.encode(), qos=self.qos, retain=True,
                                     timeout=self.timeout)
                self._kpis_published += 1
            await asyncio.sleep(self.kpi_interval)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished publish's exception: the drain acts on the first failure only."""
    if not task.cancelled():
        task.exception()


class _LastError(logging.Handler):
    """Keeps the last error aiomqtt/paho logged for one connection (say, the TLS alert that made a
    connect time out), for ``stats["last_error"]``; our own warning reports it, once."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.message = record.getMessage()

    def logger(self) -> logging.Logger:
        lg = logging.Logger("fixproxy.mqtt.client", logging.ERROR)  # not registered: one per connection
        lg.propagate = False
        lg.addHandler(self)
        return lg


def _forget(client: aiomqtt.Client) -> None:
    """aiomqtt 2.x may set an exception on its internal "disconnected" future that nobody awaits
    when a connection fails before CONNACK, and asyncio then logs "Future exception was never
    retrieved". Retrieve it (defensively: private attribute)."""
    fut = getattr(client, "_disconnected", None)
    if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
        fut.exception()
