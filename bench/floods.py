"""Legitimate latency under floods, with every attacker in a process of its own (`make bench-floods`).

fixproxy runs as `fixproxy run` in its own process (mutual TLS, the demo's session policies, the
brute-force block on), in front of a real QuickFIX matching engine. A legitimate OMS session trades
closed loop (send a NewOrderSingle, wait for its fill, next one every `--interval`) and records
send -> fill latency: first quietly, then while each attack runs in separate processes:

- connect:   TCP connect-and-close as fast as possible from 127.0.1.0/24 (many sources);
- handshake: TLS handshakes without a client certificate from 127.0.2.0/24;
- slowloris: connections that send one byte a second (before TLS, and a Logon dripped over TLS);
- msgflood:  a session logged on with its own certificate sending orders far above its rate limit,
             reconnecting each time the proxy disconnects it for flooding;
- nonreader: a session that sends orders and never reads its fills.

Reported per scenario: legitimate orders sent / filled (every one must be: anything else fails the
run), p50 / p99 / max, p99 as a multiple of the quiet baseline (the issue's target: within 2x), what
the attackers did, the proxy's RSS, and the DDoS KPIs read from its metrics endpoint. Timings are
reported, never asserted: this is a shared 2-core machine.

    python bench/floods.py [--duration 5] [--interval 0.005] [--attackers 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "bench"), str(ROOT)):  # loadgen (bench/loadgen/) and fixproxy, as run_bench.py does
    if _p not in sys.path:
        sys.path.insert(0, _p)

from loadgen import procs  # noqa: E402

from fixproxy.demo import Stack  # noqa: E402
from fixproxy.engines import free_port  # noqa: E402
from fixproxy.rawclient import RawFixClient  # noqa: E402

SCENARIOS = ("quiet", "connect", "handshake", "slowloris", "msgflood", "nonreader")
SESSIONS: dict[str, dict[str, Any]] = {
    "LEGIT": {"rate": 5000.0, "burst": 1000},
    "FLOOD": {"rate": 50.0, "burst": 20, "disconnect_after": 100},
    "DRIP": {},
    "SLOWR": {"rate": 100000.0, "burst": 100000, "disconnect_after": 100000},
}


# -- attackers (each `python bench/floods.py attack KIND ...` in its own process) -----------------------


def _bound(src: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    return s


def _attack(kind: str, port: int, duration: float, index: int, certs: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + duration
    done = refused = 0
    if kind == "connect":
        while time.monotonic() < deadline:
            s = _bound(f"127.0.1.{1 + (done * 7 + index) % 250}")
            with contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
            s.close()
            done += 1
    elif kind == "handshake":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(certs["ca"])
        ctx.check_hostname = False
        while time.monotonic() < deadline:
            try:
                with _bound(f"127.0.2.{1 + (done * 7 + index) % 250}") as raw:
                    raw.settimeout(5)
                    raw.connect(("127.0.0.1", port))
                    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                        if s.recv(1) == b"":
                            refused += 1
            except (ssl.SSLError, OSError):
                refused += 1
            done += 1
    elif kind == "slowloris":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(certs["ca"])
        ctx.check_hostname = False
        ctx.load_cert_chain(*certs["DRIP"])
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32
        logon = b"8=FIX.4.4\x019=70\x0135=A\x0149=DRIP\x0156=ATS\x0134=1\x0152=20240101-00:00:00\x0198=0\x01108=30\x01"
        conns: list[tuple[Any, bytes, int]] = []
        while time.monotonic() < deadline:
            while len(conns) < 100:  # keep 100 open: the proxy closes them at its deadlines
                try:
                    raw = _bound(f"127.0.3.{1 + (done * 7 + index) % 250}")
                    raw.settimeout(5)
                    raw.connect(("127.0.0.1", port))
                    if done % 2:
                        conns.append((ctx.wrap_socket(raw, server_hostname="localhost"), logon, 0))
                    else:
                        conns.append((raw, hello, 0))
                    done += 1
                except (ssl.SSLError, OSError):
                    refused += 1
                    done += 1
            alive = []
            for s, data, p in conns:
                try:
                    s.send(data[p % len(data): p % len(data) + 1])
                    alive.append((s, data, p + 1))
                except OSError:
                    refused += 1
                    s.close()
            conns = alive
            time.sleep(1.0)
        for s, _, _ in conns:
            s.close()
    elif kind in ("msgflood", "nonreader"):
        compid = "FLOOD" if kind == "msgflood" else "SLOWR"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(certs["ca"])
        ctx.check_hostname = False
        ctx.load_cert_chain(*certs[compid])
        n = 0
        while time.monotonic() < deadline:
            try:
                c = RawFixClient("127.0.0.1", port, ssl_context=ctx, sender=compid, source=f"127.0.4.{1 + index}")
            except OSError:
                time.sleep(0.2)
                continue
            try:
                if c.logon(extra=[(141, "Y")]) is None:
                    continue
                done += 1
                while time.monotonic() < deadline:
                    burst = b"".join(c.build("D", [(11, f"{compid}-{index}-{n + i}"), (21, "1"), (55, "VOD.L"),
                                                   (54, "1"), (60, "20240101-00:00:00"), (38, 100), (40, "2"),
                                                   (44, "10.5")]) for i in range(200))
                    n += 200
                    c.send_raw(burst)
                    if kind == "nonreader":
                        time.sleep(0.05)
            except OSError:
                refused += 1  # disconnected for flooding (msgflood), or the send timed out (nonreader)
            finally:
                c.close()
        done = n
    else:
        raise SystemExit(f"unknown attack {kind!r}")
    return {"kind": kind, "attempts": done, "refused_or_closed": refused}


# -- the legitimate trader -----------------------------------------------------------------------------


class Trader:
    def __init__(self, stack: Stack) -> None:
        self.client = stack.raw_client("LEGIT", source="127.0.0.1")
        assert self.client.logon(extra=[(141, "Y")]) is not None, "legitimate logon failed"
        self.n = 0

    def run(self, duration: float, interval: float) -> dict[str, Any]:
        c = self.client
        lat: list[float] = []
        missing = 0
        end = time.monotonic() + duration
        while time.monotonic() < end:
            self.n += 1
            cl = f"L{self.n}".encode()
            t0 = time.perf_counter()
            c.new_order(cl.decode())
            got = c.wait_for(lambda m, cl=cl: m.msg_type == b"8" and m.get(b"11") == cl and m.get(b"39") == b"2",
                             20.0)
            if got is None:
                missing += 1
            else:
                lat.append(time.perf_counter() - t0)
            c.received.clear()
            rest = interval - (time.perf_counter() - t0)
            if rest > 0:
                time.sleep(rest)
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6 if lat else None
        return {"sent": len(lat) + missing, "filled": len(lat), "missing": missing,
                "p50_us": statistics.median(lat) * 1e6 if lat else None, "p99_us": p99,
                "max_us": lat[-1] * 1e6 if lat else None}


def _kpis(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        for name in ("fixproxy_ddos_hostile_blocked_ratio", "fixproxy_ddos_legitimate_delivered_ratio"):
            if line.startswith(name + " "):
                out[name.removeprefix("fixproxy_ddos_")] = float(line.split()[1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    ap.add_argument("--interval", type=float, default=0.005, help="seconds between legitimate orders")
    ap.add_argument("--attackers", type=int, default=2, help="attacker processes per scenario")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--json", help="write the results here (default bench/results/floods-<time>.json)")
    args = ap.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not set(scenarios) <= set(SCENARIOS) or "quiet" not in scenarios:
        ap.error(f"--scenarios: from {','.join(SCENARIOS)}, quiet included")
    work = Path(tempfile.mkdtemp(prefix="fixfloods-"))
    metrics_port = free_port()
    extra = f"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    stack = Stack(work, ["LEGIT"], sessions=SESSIONS, extra=extra)
    proxy: subprocess.Popen[bytes] | None = None
    results: list[dict[str, Any]] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        stack.start(oms=False)
        assert stack.proxy is not None
        stack.proxy.stop()  # fixproxy gets a process of its own
        stack.proxy = None
        proxy = subprocess.Popen([sys.executable, "-m", "fixproxy.cli", "run", "--config", str(stack.config_path),
                                  "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=(work / "fixproxy.log").open("wb"))
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).close()
                break
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise SystemExit(f"fixproxy did not start: {(work / 'fixproxy.log').read_text()[-2000:]}")
            time.sleep(0.1)
        certs = {"ca": str(stack.pki.ca_cert), **{c: [str(x) for x in stack.pki.clients[c]] for c in SESSIONS}}
        trader = Trader(stack)
        trader.run(1.0, args.interval)  # warm-up
        print(f"fixproxy legitimate latency under floods -- {os.cpu_count()} CPUs; order every "
              f"{args.interval * 1e3:.1f} ms, {args.duration:.0f} s per scenario, {args.attackers} attacker processes")
        for sc in scenarios:
            attackers = []
            if sc != "quiet":
                for i in range(args.attackers):
                    attackers.append(subprocess.Popen(
                        [sys.executable, str(Path(__file__).resolve()), "attack", sc, "--port", str(stack.proxy_port),
                         "--duration", str(args.duration + 0.5), "--index", str(i), "--certs", json.dumps(certs)],
                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
                time.sleep(0.5)  # the attack is under way before the measurement starts
            res = trader.run(args.duration, args.interval)
            done = []
            for a in attackers:
                out, err = a.communicate(timeout=args.duration + 60)
                if a.returncode != 0:
                    raise SystemExit(f"attacker {sc} failed: {err.decode()[-1000:]}")
                done.append(json.loads(out.decode().strip().splitlines()[-1]))
            res.update({"scenario": sc, "proxy_rss_mib": round(procs.tree_rss_kib(proxy.pid) / 1024, 1),
                        "kpis": _kpis(metrics_port),
                        "attack": {"attempts": sum(d["attempts"] for d in done),
                                   "refused_or_closed": sum(d["refused_or_closed"] for d in done)}})
            results.append(res)
            base = results[0]["p99_us"]
            ratio = res["p99_us"] / base if res["p99_us"] and base else None
            res["p99_vs_quiet"] = round(ratio, 2) if ratio else None
            print(f"  {sc:<10} legit {res['filled']:>5}/{res['sent']:<5} filled  p50 {res['p50_us']:8.0f} µs  "
                  f"p99 {res['p99_us']:8.0f} µs ({ratio:.2f}x quiet)  max {res['max_us']:8.0f} µs  "
                  f"attack {res['attack']['attempts']:>7} attempts  RSS {res['proxy_rss_mib']} MiB  {res['kpis']}",
                  flush=True)
            time.sleep(1.5)  # slowloris connections and blocks wind down
    finally:
        if proxy is not None:
            proxy.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proxy.wait(15)
            if proxy.poll() is None:
                proxy.kill()
        stack.stop()
    out = Path(args.json) if args.json else ROOT / "bench" / "results" / f"floods-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"interval_s": args.interval, "duration_s": args.duration,
                               "attackers": args.attackers, "scenarios": results}, indent=1))
    print(f"wrote {out}")
    lost = [r for r in results if r["missing"]]
    if lost:
        print(f"FAILED: legitimate orders not filled: {[(r['scenario'], r['missing']) for r in lost]}")
        return 1
    print("ok: every legitimate order filled in every scenario")
    return 0


def attack_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--certs", required=True)
    a = ap.parse_args(argv)
    print(json.dumps(_attack(a.kind, a.port, a.duration, a.index, json.loads(a.certs))))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "attack":
        sys.exit(attack_main(sys.argv[2:]))
    sys.exit(main())

