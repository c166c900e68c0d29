"""The latency benchmark (bench/run_bench.py) at a tiny size: it runs end to end, plain and TLS,
direct / relay / haproxy (installed by `make test`'s system-deps) / fixproxy, loses nothing and
writes its JSON. Not a timing test: no figure is
checked, only that every order sent arrived and every part worked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_without_loss_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_bench.py"), "--modes", "plain,tls",
         "--targets", "direct,relay,haproxy,fixproxy,fixproxy-w2", "--rates", "2000", "--duration", "0.3",
         "--sat-duration", "0.3",
         "--warmup", "0.1", "--idle-sessions", "0", "--profile", "none", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out.glob("*.json"))
    assert len(files) == 1, proc.stdout[-2000:]
    doc = json.loads(files[0].read_text())
    assert doc["lost"] == 0 and doc["errors"] == []
    cases = doc["cases"]
    assert {(c["mode"], c["load"], c["target"]) for c in cases} == {
        (mode, load, target) for mode in ("plain", "tls") for load in ("2k", "saturation")
        for target in ("direct", "relay", "haproxy", "fixproxy", "fixproxy-w2")}
    for c in cases:
        assert c["errors"] == [], c
        assert c["sent"] > 0 and c["received"] == c["sent"] and c["lost"] == 0, c
        assert c["latency_us"]["n"] > 0 and c["latency_us"]["p50"] is not None, c
        if c["target"] != "direct":
            assert c["cpu_s"][c["target"]] > 0, c  # the middle process's CPU was measured
    assert "vs_relay" in next(c for c in cases if c["target"] == "fixproxy")["ratios"]


def test_flood_bench_runs_and_every_legitimate_order_is_filled(tmp_path: Path) -> None:
    """bench/floods.py at a tiny size: fixproxy and each attacker in processes of their own; the
    legitimate session's orders all filled, the DDoS KPIs at 1.0. Latency is reported, not checked."""
    out = tmp_path / "floods.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "floods.py"), "--duration", "1", "--attackers", "1",
         "--scenarios", "quiet,connect,handshake,msgflood", "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [s["scenario"] for s in doc["scenarios"]] == ["quiet", "connect", "handshake", "msgflood"]
    for s in doc["scenarios"]:
        assert s["sent"] > 0 and s["filled"] == s["sent"] and s["missing"] == 0, s
        assert s["kpis"] == {"hostile_blocked_ratio": 1.0, "legitimate_delivered_ratio": 1.0}, s
        assert (s["attack"]["attempts"] > 0) == (s["scenario"] != "quiet"), s


def test_a_mode_that_fails_to_start_leaves_no_process_behind(tmp_path: Path, monkeypatch: Any) -> None:
    """start_mode stops what it had started when a later part fails (here haproxy, after the sink,
    the generator and the relay): none of them may outlive the failed start."""
    sys.path.insert(0, str(ROOT / "bench"))
    import run_bench

    args = run_bench.build_parser().parse_args(["--sessions", "1", "--profile", "none"])
    bench = run_bench.Bench(args, tmp_path)
    seen: list[Any] = []

    def haproxy_fails(m: Any) -> None:
        seen.append(m)
        assert m.middles["relay"].alive() and m.sink_proc.is_alive() and m.gen_proc.is_alive()
        raise RuntimeError("haproxy did not start")

    monkeypatch.setattr(bench, "start_haproxy", haproxy_fails)
    with pytest.raises(RuntimeError, match="haproxy did not start"):
        bench.start_mode("plain", ["direct", "relay", "haproxy"])
    (m,) = seen
    assert not m.middles["relay"].alive()
    assert not m.sink_proc.is_alive() and not m.gen_proc.is_alive()
