"""The security KPIs (../shared/KPIS.md) as Prometheus metrics, computed off the FIX path.

What the hot path does for them is limited to integer additions per read: message counters live
in each inspector's `Stats`, proxy latency is added to bucket counts once per read and message
type, bytes are summed per read. This collector turns that state into metric families when
Prometheus scrapes, so an unscraped proxy pays nothing for its metrics.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from . import metrics as m

if TYPE_CHECKING:
    from .proxy import FixProxy

_BUCKETS = m.LATENCY_BUCKETS
_OUTCOMES = ("received", "forwarded", "refused", "dropped", "shadowed")


class LatencyStats:
    """Histogram of proxy latency per (direction, MsgType): last byte read -> write to the other
    leg. All messages of one read share one latency, so one bisect per read suffices."""

    __slots__ = ("series",)

    def __init__(self) -> None:
        # (direction, msg_type) -> [bucket counts..., +Inf count, sum]
        self.series: dict[tuple[str, bytes], list[float]] = {}

    def observe(self, direction: str, seconds: float, msg_types: list[bytes]) -> None:
        i = bisect_left(_BUCKETS, seconds)
        series = self.series
        n = len(msg_types)
        if n > 1 and msg_types.count(msg_types[0]) == n:  # one MsgType (the common read): one update
            kinds: list[bytes] = msg_types[:1]
        else:
            kinds, n = msg_types, 1
        for mt in kinds:
            row = series.get((direction, mt))
            if row is None:
                row = series[(direction, mt)] = [0.0] * (len(_BUCKETS) + 2)
            row[i] += n
            row[-1] += seconds * n


class AnomalyDetector:
    """Running mean and variance of a session's proxy latency (EWMA); an anomaly is raised when
    latency exceeds mean + k·sigma for n consecutive observations, after a warm-up. Anomalous
    observations do not update the baseline, so a sustained slowdown keeps being reported: again
    after every `repeat` further anomalous observations in the same run."""

    __slots__ = ("alpha", "anomalies", "k", "mean", "n", "repeat", "run", "seen", "var", "warmup")

    def __init__(self, *, k: float = 4.0, n: int = 5, warmup: int = 200, alpha: float = 0.02,
                 repeat: int = 1000) -> None:
        self.k = k
        self.n = n
        self.repeat = repeat
        self.warmup = warmup
        self.alpha = alpha
        self.mean = 0.0
        self.var = 0.0
        self.seen = 0
        self.run = 0
        self.anomalies = 0

    def observe(self, x: float) -> bool:
        """True when this observation completes a run of n anomalous ones, and again every
        `repeat` anomalous observations while the run goes on."""
        self.seen += 1
        if self.seen <= self.warmup:
            d = x - self.mean
            self.mean += d / self.seen
            self.var += (d * (x - self.mean) - self.var) / self.seen
            return False
        sigma = math.sqrt(max(self.var, 0.0))
        if x > self.mean + self.k * max(sigma, 1e-6):
            self.run += 1
            if self.run == self.n or (self.run > self.n and (self.run - self.n) % self.repeat == 0):
                self.anomalies += 1
                return True
            return False
        self.run = 0
        d = x - self.mean
        self.mean += self.alpha * d
        self.var = (1 - self.alpha) * (self.var + self.alpha * d * d)
        return False


class KpiCollector(Collector):
    """Reads the running proxy's state at scrape time."""

    def __init__(self, proxy: FixProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Any]:
        p = self.proxy
        now = time.monotonic()
        # ---- messages per session and direction (closed connections + live ones) ----
        totals: dict[tuple[str, str, str], float] = dict(p.closed_stats)
        for link in list(p.links):
            insp = link.inspector
            if insp is None or insp.state is None:
                continue
            name = insp.state.policy.name
            for d, st in insp.stats.items():
                for o in (*_OUTCOMES, "modified"):
                    key = (name, d.value, o)
                    totals[key] = totals.get(key, 0) + getattr(st, o)
        msgs = CounterMetricFamily(m.MESSAGES, "Messages by session, direction and outcome",
                                   labels=["session", "direction", "outcome"])
        in_flight = GaugeMetricFamily(m.AUDIT_IN_FLIGHT, "received - (forwarded + refused + dropped): 0 when "
                                      "every message is accounted for", labels=["session", "direction"])
        pairs = {(s, d) for s, d, _ in totals}
        for s, d in sorted(pairs):
            for o in _OUTCOMES:
                msgs.add_metric([s, d, o], totals.get((s, d, o), 0))
            in_flight.add_metric([s, d], totals.get((s, d, "received"), 0) - totals.get((s, d, "forwarded"), 0)
                                 - totals.get((s, d, "refused"), 0) - totals.get((s, d, "dropped"), 0))
        yield msgs
        yield in_flight
        modified = CounterMetricFamily(m.MODIFIED_FORWARDS, "Forwarded messages whose rewrite changed more than "
                                       "the translated sequence numbers", labels=["session"])
        for s in sorted({s for s, _ in pairs}):
            modified.add_metric([s], totals.get((s, "inbound", "modified"), 0)
                                + totals.get((s, "outbound", "modified"), 0))
        yield modified
        # ---- DDoS mitigation effectiveness ----
        hostile = sum(v for (_, _, o), v in totals.items() if o in ("refused", "dropped", "shadowed"))
        hostile += p.connections_refused
        shadowed = sum(v for (_, _, o), v in totals.items() if o == "shadowed")
        legit = sum(v for (_, _, o), v in totals.items() if o == "received") - sum(
            v for (_, _, o), v in totals.items() if o in ("refused", "dropped", "shadowed"))
        delivered = sum(v for (_, _, o), v in totals.items() if o == "forwarded") - shadowed
        g = GaugeMetricFamily(m.HOSTILE_BLOCKED_RATIO, "Share of hostile traffic (refused connections and "
                              "messages) that was blocked")
        g.add_metric([], 1.0 if hostile == 0 else (hostile - shadowed) / hostile)
        yield g
        g = GaugeMetricFamily(m.LEGITIMATE_DELIVERED_RATIO, "Share of legitimate messages delivered")
        g.add_metric([], 1.0 if legit <= 0 else min(1.0, delivered / legit))
        yield g
        # ---- sessions: up, connected time, encryption coverage ----
        up = GaugeMetricFamily(m.SESSION_UP, "1 while the session is logged on", labels=["session"])
        connected = CounterMetricFamily(m.SESSION_CONNECTED_SECONDS, "Seconds logged on", labels=["session"])
        conn_seconds = dict(p.connected_seconds)
        live: set[str] = set()
        tls_sessions = plain_sessions = 0
        for link in list(p.links):
            insp = link.inspector
            if insp is None or insp.state is None:
                continue
            name = insp.state.policy.name
            live.add(name)
            conn_seconds[name] = conn_seconds.get(name, 0.0) + (now - link.logged_on_at)
            if link.peer is not None and link.peer.tls:
                tls_sessions += 1
            else:
                plain_sessions += 1
        for policy in p.config.sessions:
            up.add_metric([policy.name], 1.0 if policy.name in live else 0.0)
            connected.add_metric([policy.name], conn_seconds.get(policy.name, 0.0))
        yield up
        yield connected
        cov = GaugeMetricFamily(m.ENCRYPTION_COVERAGE, "Share of sessions and bytes carried over TLS, per leg",
                                labels=["leg", "unit"])
        total_sessions = tls_sessions + plain_sessions
        oms_tls = not p.config.insecure
        ats_tls = not p.config.upstream.insecure
        cov.add_metric(["oms", "sessions"], 1.0 if total_sessions == 0 else tls_sessions / total_sessions)
        cov.add_metric(["ats", "sessions"], 1.0 if ats_tls else 0.0)
        # One listener and one upstream per proxy: every byte of a leg is encrypted or none is.
        for leg, enc in (("oms", oms_tls), ("ats", ats_tls)):
            cov.add_metric([leg, "bytes"], 1.0 if enc else 0.0)
        yield cov
        g = GaugeMetricFamily(m.UPTIME, "Seconds since the proxy started")
        g.add_metric([], now - p.started_at)
        yield g
        # ---- latency ----
        h = HistogramMetricFamily(m.PROXY_LATENCY, "Proxy latency: last byte read to write on the other leg",
                                  labels=["direction", "msg_type"])
        for (direction, mt), row in sorted(p.latency.series.items()):
            acc = 0.0
            buckets = []
            for bound, count in zip(_BUCKETS, row[:len(_BUCKETS)], strict=True):
                acc += count
                buckets.append((repr(bound), acc))
            acc += row[len(_BUCKETS)]
            buckets.append(("+Inf", acc))
            h.add_metric([direction, mt.decode("latin-1")], buckets, row[-1])
        yield h
        h = HistogramMetricFamily(m.ORDER_ROUND_TRIP, "Order round trip: NewOrderSingle to its first "
                                  "ExecutionReport, per ClOrdID")
        row = list(p.leak_guard.round_trips)  # bucket counts, +Inf, sum
        acc = 0.0
        buckets = []
        for bound, count in zip(_BUCKETS, row[:len(_BUCKETS)], strict=True):
            acc += count
            buckets.append((repr(bound), acc))
        buckets.append(("+Inf", acc + row[len(_BUCKETS)]))
        h.add_metric([], buckets, row[-1])
        yield h
        anomalies = CounterMetricFamily(m.LATENCY_ANOMALIES, "Latency anomalies (mean + k·sigma for n in a row)",
                                        labels=["session", "direction"])
        for (name, direction), det in sorted(p.anomaly.items()):
            anomalies.add_metric([name, direction], det.anomalies)
        yield anomalies
        # ---- leakage and blocking ----
        g = GaugeMetricFamily(m.LEAKAGE_INDEX, "Leak-relevant refusals per minute over the sliding window")
        g.add_metric([], p.leak_guard.index())
        yield g
        g = GaugeMetricFamily(m.SOURCES_BLOCKED, "Source addresses currently blocked")
        g.add_metric([], len(p.guard.blocked()))
        yield g
        # ---- certificates ----
        exp = GaugeMetricFamily(m.CERT_EXPIRY, "Seconds until the certificate expires", labels=["cert"])
        age = GaugeMetricFamily(m.CERT_AGE, "Seconds since the certificate was issued", labels=["cert"])
        wall = time.time()
        for name, (not_before, not_after) in sorted(p.certificates.items()):
            exp.add_metric([name], not_after - wall)
            age.add_metric([name], wall - not_before)
        yield exp
        yield age
