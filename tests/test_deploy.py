"""deploy/: the Grafana dashboard and the Prometheus alert rules hold to the KPI catalogue.

- both files parse (the rules file with a small parser for the plain YAML subset it is written in;
  cross-checked with PyYAML when it is installed);
- every `fixproxy_*` name in any expression is declared in fixproxy/metrics.py and is a series a
  running proxy exposes (after some real traffic), with the right suffix for its type (`_total`
  for counters, `_bucket`/`_count`/`_sum` for histograms), label names it has, and histogram
  bounds (`le`) it uses;
- every catalogue row has a panel, in the dashboard row of its section, and every row with a
  default alert has an alert rule (`labels.kpi`), with the catalogue's threshold;
- when `promtool` is on PATH: the rules and every dashboard query are valid PromQL, and the alerts
  fire (and stay quiet) on synthetic series at the catalogue's thresholds.

"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from fixproxy import metrics as m
from fixproxy import tls as tlsmod
from fixproxy.demo import Stack
from fixproxy.session import utc_timestamp

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus-alerts.yml"
CATALOGUE = ROOT.parent / "shared" / "KPIS.md"
WAIT = 15.0

# Labels Prometheus adds at scrape time.
TARGET_LABELS = frozenset({"instance", "job"})
METRIC = re.compile(r"\bfixproxy_[a-z_]+\b")
SELECTOR = re.compile(r"\b(fixproxy_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
Families = dict[str, tuple[str, set[str], set[str]]]  # family -> (type, label names, `le` values)


# -- a parser for the YAML subset the rules file is written in -----------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.\-]*")


def _scalar(text: str, where: int) -> str:
    if text.startswith("'"):
        assert len(text) >= 2 and text.endswith("'"), f"line {where}: unterminated quote"
        inner = text[1:-1]
        assert "'" not in inner.replace("''", ""), f"line {where}: stray quote"
        return inner.replace("''", "'")
    assert _PLAIN.fullmatch(text), f"line {where}: quote this value: {text!r}"
    return text


def parse_yaml_subset(text: str) -> Any:
    """Block mappings, block sequences of mappings, single-quoted or plain word scalars,
    full-line comments. Anything else is an error, so what parses here means the same to YAML."""
    lines: list[tuple[int, str, int]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        body = raw.strip()
        if not body or body.startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        assert not raw[:indent].count("\t") and "\t" not in raw, f"line {n}: tab"
        lines.append((indent, body, n))

    def block(i: int, indent: int) -> tuple[Any, int]:
        return seq(i, indent) if lines[i][1].startswith("- ") else mapping(i, indent)

    def seq(i: int, indent: int) -> tuple[list[Any], int]:
        out = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            _, body, n = lines[i]
            lines[i] = (indent + 2, body[2:].lstrip(), n)  # the item's first key, at its keys' indent
            assert lines[i][1] == body[2:], f"line {n}: one space after '-'"
            item, i = mapping(i, indent + 2)
            out.append(item)
        return out, i

    def mapping(i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            _, body, n = lines[i]
            assert not body.startswith("- "), f"line {n}: a list item where a key was expected"
            key, sep, rest = body.partition(":")
            assert sep and re.fullmatch(r"[a-z_]+", key), f"line {n}: not a 'key: value' line"
            assert rest == "" or rest.startswith(" "), f"line {n}: one space after ':'"
            assert key not in out, f"line {n}: duplicate key {key}"
            i += 1
            if rest.strip():
                out[key] = _scalar(rest.strip(), n)
            else:
                assert i < len(lines) and lines[i][0] > indent, f"line {n}: {key} has no value"
                out[key], i = block(i, lines[i][0])
        assert i == len(lines) or lines[i][0] < indent, f"line {lines[i][2]}: bad indentation"
        return out, i

    value, end = block(0, lines[0][0])
    assert end == len(lines)
    return value


def test_yaml_subset_parser() -> None:
    doc = "a:\n  - b: 'x: ''y'' {{ $v }}'\n    c:\n      d: 0m\n  - b: w\n# c\ne: f\n"
    assert parse_yaml_subset(doc) == {"a": [{"b": "x: 'y' {{ $v }}", "c": {"d": "0m"}}, {"b": "w"}], "e": "f"}
    for bad in ("a: {x}\n", "a: 'x\n", "a:\n  b: c\n d: e\n", "a: b\na: c\n", "a: x: y\n", "a:\n\t- b: c\n"):
        with pytest.raises(AssertionError):
            parse_yaml_subset(bad)


# -- loading --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = parse_yaml_subset(ALERTS.read_text())
    assert set(doc) == {"groups"}
    out = []
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
        out += group["rules"]
    return out


@pytest.fixture(scope="module")
def catalogue() -> dict[str, tuple[str, str]]:
    """KPI row -> (section, default alert), from the catalogue's tables."""
    if not CATALOGUE.is_file():
        pytest.skip(f"{CATALOGUE} not found (shared/ beside the repository)")
    rows: dict[str, tuple[str, str]] = {}
    section = ""
    for line in CATALOGUE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| ") and not line.startswith("| KPI |"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = (section, cells[-1])
    assert len(rows) >= 19, rows
    return rows


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


def all_exprs(dashboard: dict[str, Any], rules: list[dict[str, Any]]) -> list[str]:
    return dashboard_exprs(dashboard) + [r["expr"] for r in rules]


def kpi_of(title: str) -> str:
    return title.split(": ", 1)[0]


# -- the files themselves -----------------------------------------------------------------------------


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert variables["instance"]["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard):
        assert p["title"] and set(p["gridPos"]) == {"h", "w", "x", "y"}, p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "text":
            assert p["options"]["content"]
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and METRIC.search(t["expr"]), (p["title"], t)
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])  # the instance picker applies
            assert t["expr"].count("(") == t["expr"].count(")") and t["expr"].count("[") == t["expr"].count("]")


def test_alert_rules_structure(rules: list[dict[str, Any]]) -> None:
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert re.fullmatch(r"Fixproxy[A-Za-z0-9]+", r["alert"])
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical")
        assert set(r["labels"]) == {"severity", "kpi"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert METRIC.search(r["expr"]) and r["expr"].count("(") == r["expr"].count(")")


def test_alert_rules_parse_the_same_with_pyyaml(rules: list[dict[str, Any]]) -> None:
    import yaml
    doc = yaml.safe_load(ALERTS.read_text())
    assert [r for g in doc["groups"] for r in g["rules"]] == rules


# -- the catalogue: every row has its panels and its alerts -------------------------------------------------


def test_every_catalogue_row_has_a_panel_in_its_section(dashboard: dict[str, Any],
                                                        catalogue: dict[str, tuple[str, str]]) -> None:
    covered: set[str] = set()
    section = None
    for p in dashboard["panels"]:
        if p["type"] == "row":
            section = p["title"]
            continue
        kpi = kpi_of(p["title"])
        assert kpi in catalogue, f"panel {p['title']!r} names no catalogue row"
        assert catalogue[kpi][0] == section, f"panel {p['title']!r} is under {section!r}"
        covered.add(kpi)
    assert set(catalogue) - covered == set()
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == list(
        dict.fromkeys(s for s, _ in catalogue.values()))


def test_every_catalogue_default_alert_has_a_rule(rules: list[dict[str, Any]],
                                                  catalogue: dict[str, tuple[str, str]]) -> None:
    alerted = {r["labels"]["kpi"] for r in rules}
    assert alerted <= set(catalogue), alerted - set(catalogue)
    wanted = {kpi for kpi, (_, alert) in catalogue.items() if alert not in ("—", "-", "")}
    assert wanted - alerted == set()
    assert alerted == wanted  # and none where the catalogue sets no threshold


# The catalogue's default thresholds, as they read in each rule.
THRESHOLDS = {
    "FixproxyUnauthenticatedAccessFromSource": ["by (instance, source)", "[1m])) > 5"],
    "FixproxyEncryptionCoverageBelow100": ["< 1"],
    "FixproxyLeakageIndexAboveZero": ["fixproxy_leakage_index) > 0"],
    "FixproxyBlockedDelivery": ['reason="leak_blocked_delivery"', "> 0"],
    "FixproxyAdminOperationRefused": ['outcome="refused"', "> 0"],
    "FixproxyChecksumFailures": ["[5m])) > 0"],
    "FixproxyQueuePoisoningAttempt": ["> 0"],
    "FixproxyConfigReloadFailed": ['outcome="refused"', "> 0"],
    "FixproxySessionUptimeBelow999": ["avg_over_time(fixproxy_session_up[1d]) < 0.999"],
    "FixproxyFailoverFailed": ['outcome="failed"', "> 0"],
    "FixproxyFailoverSlow": ['le="5.0"', "> 0"],
    "FixproxyLatencyAnomaly": ["> 0"],
    "FixproxyDdosHostileNotBlocked": ["< 0.99"],
    "FixproxyDdosLegitimateNotDelivered": ["< 1"],
    "FixproxyAuditInFlight": ["abs(fixproxy_audit_in_flight)) > 0"],
    "FixproxyTimeToDetectP99": ["histogram_quantile(0.99,", "> 1"],
    "FixproxyTimeToRespondP99": ["histogram_quantile(0.99,", "> 1"],
    "FixproxyCertificateExpiresSoon": ["< 7 * 86400"],
}


def test_alert_thresholds_are_the_catalogues(rules: list[dict[str, Any]]) -> None:
    by_name = {r["alert"]: r["expr"] for r in rules}
    for name, parts in THRESHOLDS.items():
        for part in parts:
            assert part in by_name[name], (name, part, by_name[name])


# -- the names: declared once, exposed by a running proxy ------------------------------------------------


def declared() -> set[str]:
    return {v for k, v in vars(m).items() if k.isupper() and isinstance(v, str) and v.startswith(m.PREFIX)
            and v != m.PREFIX}


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Families]]:
    """A running proxy after some real traffic: its text exposition and its metric families."""
    stack = Stack(tmp_path_factory.mktemp("deploy"), ["DEP1"], sessions={"DEP1": {}})
    try:
        stack.start(oms=False)
        pt = stack.proxy
        assert pt is not None and pt.proxy is not None
        proxy = pt.proxy
        raw = stack.raw_client("DEP1")
        try:
            assert raw.logon() is not None
            raw.new_order("DEP-1")
            assert raw.wait_for(lambda msg: msg.msg_type == b"8" and msg.get(b"39") == b"2", WAIT)
            raw.send("D", [(115, "OMS2"), (11, "DEP-2"), (21, "1"), (55, "VOD.L"), (54, "1"),
                           (60, utc_timestamp()), (38, 100), (40, "1")])  # spoofing: refused
            assert raw.wait_for(lambda msg: msg.msg_type == b"3", WAIT)
            raw.send_raw(raw.build("0")[:-4] + b"000\x01")  # bad checksum: dropped
        finally:
            raw.close()
        try:  # a handshake without a client certificate: refused
            with socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=WAIT) as sock, \
                    tlsmod.client_context(None, None, stack.pki.ca_cert).wrap_socket(
                        sock, server_hostname="localhost") as tls_sock:
                tls_sock.settimeout(WAIT)
                tls_sock.recv(1)
        except (ssl.SSLError, OSError):
            pass
        pt.call(proxy.reload())

        def scrape() -> tuple[str, Families]:
            proxy.recorder.flush()
            families: Families = {}
            for fam in proxy.registry.collect():
                labels = {k for s in fam.samples for k in s.labels if k != "le"}
                les = {s.labels["le"] for s in fam.samples if "le" in s.labels}
                collector = getattr(proxy.registry, "_names_to_collectors", {}).get(fam.name)
                labels |= set(getattr(collector, "_labelnames", ()))
                families[fam.name] = (fam.type, labels, les)
            return generate_latest(proxy.registry).decode(), families

        yield pt.sync(scrape)
    finally:
        stack.stop()


def _series(families: Families) -> dict[str, str]:
    """Series name as written in PromQL -> its family."""
    out = {}
    for name, (kind, _, _) in families.items():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(kind, [""])
        for suffix in suffixes:
            out[name + suffix] = name
    return out


def _family(series: str) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if series.endswith(suffix) and series[: -len(suffix)] in declared():
            return series[: -len(suffix)]
    return series


def test_every_metric_used_is_declared_and_exposed(
    dashboard: dict[str, Any], rules: list[dict[str, Any]],
    exposition: tuple[str, Families],
) -> None:
    text, families = exposition
    series = _series(families)
    used = {name for expr in all_exprs(dashboard, rules) for name in METRIC.findall(expr)}
    assert len(used) >= 30
    for name in sorted(used):
        family = _family(name)
        assert family in declared(), f"{name}: not declared in fixproxy/metrics.py"
        assert name in series, f"{name}: not a series of the running proxy ({families.get(family, ('absent',))[0]})"
        assert f"# TYPE {name} " in text or f"# TYPE {family} " in text, name  # in the scraped text too


def test_labels_and_buckets_used_exist(
    dashboard: dict[str, Any], rules: list[dict[str, Any]],
    exposition: tuple[str, Families],
) -> None:
    _, families = exposition
    exprs = all_exprs(dashboard, rules)
    seen = 0
    for expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            family = _family(name)
            assert family in families, f"{name}: not exposed by the running proxy"
            _, labels, les = families[family]
            parsed = MATCHER.findall(matchers)
            assert "".join(f'{k}{op}"{v}",' for k, op, v in parsed).rstrip(",") == re.sub(
                r"\s", "", matchers).rstrip(","), (expr, matchers)
            for label, _op, val in parsed:
                seen += 1
                if label == "le":
                    assert name.endswith("_bucket") and val in les, (expr, val, les)
                else:
                    assert label in labels | TARGET_LABELS, (expr, label, labels)
    assert seen > 40
    # `by (...)` groupings name labels the series have too.
    for expr in exprs:
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            names = {g.strip() for g in grouping.split(",")}
            inner = set(METRIC.findall(expr))
            known = set().union(*(families.get(_family(n), ("", set(), set()))[1] for n in inner))
            assert names <= known | TARGET_LABELS | {"le"}, (expr, names - known)


# -- promtool, when installed: valid PromQL, and alerts that fire where the catalogue says -----------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    done = _promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_checks_every_dashboard_query(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each query as a recording rule, Grafana's variables replaced by what they expand to."""
    records = []
    for i, expr in enumerate(dashboard_exprs(dashboard)):
        promql = (expr.replace("$__rate_interval", "1m").replace("$__range", "6h")
                  .replace('instance=~"$instance"', 'instance=~".*"'))
        assert "$" not in promql, promql
        records.append({"record": f"dashboard:query_{i}", "expr": promql})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": records}]}))  # JSON is YAML
    done = _promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def _alert(name: str, at: str, *fired: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    exp = [{"exp_labels": labels} | ({"exp_annotations": annotations} if annotations else {}) for labels in fired]
    return {"eval_time": at, "alertname": name, "exp_alerts": exp}


def _kpi(rules: list[dict[str, Any]], name: str) -> dict[str, str]:
    rule = next(r for r in rules if r["alert"] == name)
    return dict(rule["labels"])


@needs_promtool
def test_promtool_alerts_fire_at_the_catalogue_thresholds(rules: list[dict[str, Any]], tmp_path: Path) -> None:
    """Synthetic series (15 s apart) on both sides of each threshold; promtool evaluates the rules
    (a copy without annotations, but for one rule whose annotations are checked as rendered)."""
    rendered = "FixproxyUnauthenticatedAccessFromSource"
    bare = [r if r["alert"] == rendered else {k: v for k, v in r.items() if k != "annotations"} for r in rules]
    rules_path = tmp_path / "rules.yml"
    rules_path.write_text(json.dumps({"groups": [{"name": "fixproxy", "rules": bare}]}))
    unauth = 'fixproxy_unauthenticated_access_total{instance="p",source="%s",compid="",reason="tls_no_cert"}'
    series = [
        (unauth % "10.0.0.1", "0+2x20"),  # 8 a minute: above 5
        (unauth % "10.0.0.2", "0+1x20"),  # 4 a minute: not
        ('fixproxy_encryption_coverage_ratio{instance="p",leg="oms",unit="bytes"}', "1 1 0.5 0.5"),
        ('fixproxy_encryption_coverage_ratio{instance="p",leg="ats",unit="bytes"}', "1 1 1 1"),
        ('fixproxy_leakage_index{instance="p"}', "0 0 0.2 0.2"),
        ('fixproxy_leakage_events_total{instance="p",session="OMS2",reason="leak_blocked_delivery"}', "0 0 1 1"),
        ('fixproxy_checksum_failures_total{instance="p",session="OMS1",direction="inbound"}', "0 0 0 1 1"),
        ('fixproxy_ddos_hostile_blocked_ratio{instance="p"}', "1 0.995 0.98 0.98"),
        ('fixproxy_ddos_legitimate_delivered_ratio{instance="p"}', "1 1 0.999 0.999"),
        ('fixproxy_audit_in_flight{instance="p",session="OMS1",direction="inbound"}', "0 0 1+0x20"),
        ('fixproxy_certificate_expiry_seconds{instance="p",cert="proxy.cert"}', "691200 604000 604000"),  # 8 d, <7 d
        ('fixproxy_failover_recovery_seconds_count{instance="p"}', "0 0 1 1"),
        ('fixproxy_failover_recovery_seconds_bucket{instance="p",le="5.0"}', "0 0 0 0"),
        ('fixproxy_failover_recovery_seconds_bucket{instance="p",le="+Inf"}', "0 0 1 1"),
    ]
    # Time to detect: instance "fast" observes 0.1 s, "slow" 2 s, ten a scrape.
    for inst, fast in (("fast", True), ("slow", False)):
        for le in ("0.5", "1.0", "5.0", "+Inf"):
            grows = fast or le in ("5.0", "+Inf")
            series.append((f'fixproxy_time_to_detect_seconds_bucket{{instance="{inst}",le="{le}"}}',
                           "0+10x60" if grows else "0x60"))
    tests = [{
        "interval": "15s",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [
            _alert(rendered, "3m", _kpi(rules, rendered) | {"instance": "p", "source": "10.0.0.1"}, annotations={
                "summary": "More than 5 refused TLS handshakes or logons in a minute from 10.0.0.1",
                "description": "8 refused in the last minute on p: the source is blocked for auth.block_seconds "
                               "(event auth.bruteforce)."}),
            _alert("FixproxyEncryptionCoverageBelow100", "15s"),
            _alert("FixproxyEncryptionCoverageBelow100", "45s", _kpi(rules, "FixproxyEncryptionCoverageBelow100")
                   | {"instance": "p", "leg": "oms", "unit": "bytes"}),
            _alert("FixproxyLeakageIndexAboveZero", "15s"),
            _alert("FixproxyLeakageIndexAboveZero", "45s", _kpi(rules, "FixproxyLeakageIndexAboveZero")
                   | {"instance": "p"}),
            _alert("FixproxyBlockedDelivery", "45s", _kpi(rules, "FixproxyBlockedDelivery")
                   | {"instance": "p", "session": "OMS2"}),
            _alert("FixproxyChecksumFailures", "30s"),
            _alert("FixproxyChecksumFailures", "60s", _kpi(rules, "FixproxyChecksumFailures")
                   | {"instance": "p", "session": "OMS1", "direction": "inbound"}),
            _alert("FixproxyDdosHostileNotBlocked", "15s"),  # 99.5 %: not below 99 %
            _alert("FixproxyDdosHostileNotBlocked", "30s", _kpi(rules, "FixproxyDdosHostileNotBlocked")
                   | {"instance": "p"}),
            _alert("FixproxyDdosLegitimateNotDelivered", "15s"),
            _alert("FixproxyDdosLegitimateNotDelivered", "30s", _kpi(rules, "FixproxyDdosLegitimateNotDelivered")
                   | {"instance": "p"}),
            _alert("FixproxyAuditInFlight", "1m"),  # pending: for 2m
            _alert("FixproxyAuditInFlight", "3m", _kpi(rules, "FixproxyAuditInFlight")
                   | {"instance": "p", "session": "OMS1", "direction": "inbound"}),
            _alert("FixproxyCertificateExpiresSoon", "0s"),
            _alert("FixproxyCertificateExpiresSoon", "15s", _kpi(rules, "FixproxyCertificateExpiresSoon")
                   | {"instance": "p", "cert": "proxy.cert"}),
            _alert("FixproxyFailoverSlow", "45s", _kpi(rules, "FixproxyFailoverSlow") | {"instance": "p"}),
            _alert("FixproxyTimeToDetectP99", "10m", _kpi(rules, "FixproxyTimeToDetectP99") | {"instance": "slow"}),
        ],
    }]
    path = tmp_path / "alerts-test.yml"
    path.write_text(json.dumps({"rule_files": [str(rules_path)], "evaluation_interval": "15s", "tests": tests}))
    done = _promtool("test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
